"""CPU per run of the http probe, end to end through the agent's client, against a local nginx.

Run on demand (it prints figures; nothing asserts them):

    .venv/bin/python bench/probe_path.py [--runs N] [--concurrency C] [--repeat R] [--tree DIR ...]

Starts nginx (``harness.nginx()``, in its own process, so that its CPU is not counted), then, in a
fresh Python process per measurement, runs one http check (``GET /``, a 200 with a small JSON body,
a fresh connection each run, no assertions) N times, C runs at a time, on uvloop, as the agent
would: a ``ProbeContext`` per run (``ProbeTester.context``), ``HttpProbe.run``. The tracer is a
minimal one (ids and a ``traceparent``, nothing recorded), so that the figure is the probe's and
the client's own Python, libcurl and the kernel, not the telemetry's. Prints the process CPU time
(user + system) per run.

``--layer agent`` measures whole runs as the agent makes them instead: C http checks of that URL
wired by ``build_agent`` (the scheduler, the recorder and its metric tables, the run spans and
their sampling, OTLP traces exported to nginx, which answers 200), all C run together by
``Scheduler.run_once``, round after round. What it leaves out of the running agent: the ticking,
the HTTP server, ``/metrics``.

``--tree`` compares source trees (this one by default; ``git worktree``s or exported commits),
measured in turn, R rounds, against the same nginx: alternating, so that the noise of a shared
machine falls on both alike. Bounded: N is at most 50,000 and each measurement stops after 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MAX_RUNS = 50_000
MAX_SECONDS = 60.0


class _Span:
    __slots__ = ("span_id", "trace_id")

    def __init__(self, trace_id: str) -> None:
        self.trace_id, self.span_id = trace_id, secrets.token_hex(8)

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        pass

    def fail(self, error_type: str, message: str) -> None:
        pass

    def inject(self, headers: MutableMapping[str, str]) -> None:
        headers["traceparent"] = f"00-{self.trace_id}-{self.span_id}-01"

    def end(self, end_time: float | None = None) -> None:
        pass


class _Tracer:
    """Spans with ids and nothing else: the telemetry's cost is not this benchmark's."""

    def __init__(self) -> None:
        self.trace_id = secrets.token_hex(16)

    def start_span(
        self,
        name: str,
        *,
        client: bool = False,
        attributes: Mapping[str, Any] | None = None,
        start_time: float | None = None,
    ) -> _Span:
        return _Span(self.trace_id)

    @contextlib.contextmanager
    def use_span(self, span: _Span) -> Iterator[None]:
        yield


async def _measure_agent(url: str, runs: int, concurrency: int) -> dict[str, float]:
    """Whole runs through the agent's own parts (``build_agent``: scheduler, recorder, spans,
    metric tables, OTLP traces to the sink, the status page's history), ``concurrency`` checks
    run together (``run_once``) round after round."""
    import yaml

    from agent.app import build_agent
    from agent.config.settings import load_config

    checks = [
        {"name": f"bench-{i:04d}", "type": "http", "target": url, "interval": "1s", "timeout": "900ms"}
        for i in range(concurrency)
    ]
    environ = {
        "VANTAGE_CHECKS": yaml.safe_dump({"checks": checks}),
        "VANTAGE_CONCURRENCY": str(concurrency),
        "OTEL_EXPORTER_OTLP_ENDPOINT": url.rstrip("/"),  # nginx answers every export with a 200
    }
    os.environ.update(environ)  # the SDK's exporters read their endpoint from os.environ
    agent = build_agent(load_config(environ), environ)
    gc.freeze()  # as agent.app.run_agent does
    gc.set_threshold(20_000, 10, 10)
    try:
        for _ in range(max(1, 200 // concurrency)):  # warm up
            await agent.scheduler.run_once()
        done, deadline = 0, time.monotonic() + MAX_SECONDS
        cpu, wall = time.process_time(), time.perf_counter()
        while done < runs and time.monotonic() < deadline:
            await agent.scheduler.run_once()
            done += concurrency
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        failed = sum(state.failures for state in agent.recorder.states.values())
    finally:
        await agent.http.aclose()
        agent.telemetry.shutdown(2)
    return {"runs": done, "failed": failed, "cpu_us": cpu / done * 1e6, "wall_us": wall / done * 1e6}


async def _measure(url: str, runs: int, concurrency: int, layer: str) -> dict[str, float]:
    if layer == "agent":
        return await _measure_agent(url, runs, concurrency)
    from agent.net.curl import CurlMulti, CurlRequest
    from agent.sdk.testing import ProbeTester
    from plugins.http import HttpProbe

    async with ProbeTester(HttpProbe) as tester:
        check, settings, config = tester.load(
            {"name": "bench", "target": url, "interval": "1s", "timeout": "900ms"}
        )
        probe = tester.probe
        failed = 0

        async def one() -> None:
            nonlocal failed
            if layer == "curl":
                response = await CurlMulti.of_running_loop().perform(CurlRequest("GET", url))
                failed += response.status != 200
                return
            ctx = tester.context(check, config, _Tracer())  # type: ignore[arg-type]
            if layer == "client":
                async with ctx.http() as client:
                    exchange = await client.request("GET", url)
                failed += exchange.status != 200
                return
            result = await probe.run(check, settings, ctx)
            failed += not result.success

        for _ in range(200):  # warm up: imports, caches, the first connections
            await one()
        failed = 0
        done = 0
        deadline = time.monotonic() + MAX_SECONDS

        async def worker() -> None:
            nonlocal done
            while done < runs and time.monotonic() < deadline:
                done += 1
                await one()

        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"runs": done, "failed": failed, "cpu_us": cpu / done * 1e6, "wall_us": wall / done * 1e6}


def _worker(url: str, runs: int, concurrency: int, layer: str) -> None:
    import uvloop

    figures = uvloop.run(_measure(url, runs, concurrency, layer))
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tree", action="append", help="a source tree to measure (default: this one)")
    parser.add_argument(
        "--layer",
        choices=("agent", "probe", "client", "curl"),
        default="probe",
        help="whole runs through the agent's scheduler, recorder and spans (OTLP traces to nginx), "
        "the whole http probe run (default), the agent's client alone (ctx.http()), or bare "
        "CurlMulti.perform",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    runs, concurrency = min(args.runs, MAX_RUNS), max(1, args.concurrency)
    if args.worker:
        _worker(args.worker, runs, concurrency, args.layer)
        return

    from harness import nginx

    trees = [str(Path(tree).resolve()) for tree in args.tree or [str(HERE.parent)]]
    cpu: dict[str, list[float]] = {tree: [] for tree in trees}
    with nginx() as port:
        for round_ in range(args.repeat):
            for tree in trees:
                env = {**os.environ, "VANTAGE_BENCH_TREE": tree}
                command = [sys.executable, __file__, "--worker", f"http://127.0.0.1:{port}/"]
                command += ["--runs", str(runs), "--concurrency", str(concurrency), "--layer", args.layer]
                out = subprocess.run(
                    command,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=MAX_SECONDS + 60,
                    check=True,
                )
                figures = json.loads(out.stdout.strip().splitlines()[-1])
                cpu[tree].append(figures["cpu_us"])
                print(
                    f"round {round_ + 1} {tree}: {figures['runs']} runs ({figures['failed']} failed)"
                    f"  CPU {figures['cpu_us']:7.1f} µs/run  wall {figures['wall_us']:7.1f} µs/run",
                    flush=True,
                )
    for tree in trees:
        print(f"{tree}: median {statistics.median(cpu[tree]):7.1f} µs/run  min {min(cpu[tree]):7.1f}")


if __name__ == "__main__":
    sys.path.insert(0, os.environ.get("VANTAGE_BENCH_TREE", str(HERE.parent)))
    main()
