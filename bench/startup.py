"""Benchmark: cold start, from spawning ``python -m agent`` to its first probe request.

Starts a loopback HTTP server (the probe's target, and an OTLP/HTTP sink that answers every export
with an empty 200), then spawns the agent as a user would, with one ``http`` check against that
server (a YAML document in ``VANTAGE_CHECKS``, with a status assertion), N times, with and without
OTLP configured. For each run it measures, from the moment the
process is spawned:

* ``listening``: the agent's "listening on port" log line read on its stderr (the server is up
  and the scheduler is about to start);
* ``first probe``: the check's first request arriving at the target;
* ``CPU at first probe``: the agent's user and system CPU time when that request arrived, less
  sensitive than wall time to other work on the machine.

The check's interval is the smallest allowed (100 ms): the scheduler starts a check on its own
phase of the interval grid, so ``first probe`` includes 0-100 ms of waiting for that tick.

Also the import time of the agent, each in a fresh interpreter: ``import agent.cli`` (what every
command pays) and the modules ``vantage run`` loads for an http check (``agent.cli``,
``agent.app``, ``plugins.http``, with aiohttp imported first as ``vantage run`` imports it, in a
tree that has agent/server/_aiohttp.py), beside an interpreter that imports nothing.

With ``--idle 5,75``, instead: the memory of an idle agent (three http checks at 60 s against the
same server, OTLP on), its VmRSS and VmHWM (the peak) from ``/proc`` at each of those seconds after
the spawn, for each ``--source`` in turn, ``--runs`` times. 75 s is after the first metric export
(60 s), when the exporters built at their first export have been.

    .venv/bin/python bench/startup.py [--runs 7] [--source TREE ...] [--idle 5,75]

Prints figures only: median and range over the runs. Every loop is bounded in count and time;
all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import http.server
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
MAX_RUNS = 50
FIRST_PROBE_TIMEOUT = 30.0
# What ``vantage run`` imports for an http check, in the order it does (aiohttp first, through
# agent/server/_aiohttp.py where the tree has it).
RUN_IMPORTS = (
    "import agent.cli, importlib.util; "
    "importlib.util.find_spec('agent.server._aiohttp') is not None "
    "and __import__('agent.server._aiohttp', fromlist=['_']).import_aiohttp(); "
    "import agent.app, plugins.http"
)
CHECKS = """
checks:
  - name: startup
    type: http
    target: {target}
    interval: 100ms
    timeout: 90ms
    settings:
      assert:
        - {{source: status, op: in, value: [200]}}
"""


class Target(http.server.ThreadingHTTPServer):
    """The probe's target and the OTLP sink: records when each run's first probe arrives."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.arrived: dict[str, float] = {}
        self.changed = threading.Condition()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # an agent stopped mid-request (a broken pipe) is expected here, and not a figure

    def wait_for_probe(self, run: str, timeout: float) -> float | None:
        with self.changed:
            self.changed.wait_for(lambda: run in self.arrived, timeout)
            return self.arrived.get(run)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Target
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        now = time.monotonic()
        run = self.path.rpartition("/")[2]
        with self.server.changed:
            self.server.arrived.setdefault(run, now)
            self.server.changed.notify_all()
        self._answer(b'{"ok":true}', "application/json")

    def do_POST(self) -> None:  # OTLP/HTTP export: read it, answer an empty success
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(b"", "application/x-protobuf")

    def _answer(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def base_env(source: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VANTAGE_", "OTEL_"))}
    env["PYTHONPATH"] = str(source)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def agent_env(target: Target, run: str, source: Path, *, otlp: bool) -> dict[str, str]:
    # YAML, as a check file usually is (a JSON document would be read without loading PyYAML).
    checks = CHECKS.format(target=f"http://127.0.0.1:{target.port}/probe/{run}")
    env = base_env(source)
    env.update(
        VANTAGE_CHECKS=checks,
        VANTAGE_HOST="127.0.0.1",
        VANTAGE_PORT="0",
        VANTAGE_LOG_FORMAT="text",
        VANTAGE_SHUTDOWN_TIMEOUT="2s",
    )
    if otlp:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{target.port}"
    return env


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cold_start(target: Target, run: str, source: Path, *, otlp: bool) -> tuple[float, float, float]:
    """Seconds from spawn to the "listening" log line and to the first probe request, and the
    agent's CPU seconds then."""
    listening: list[float] = []

    def read(stream: object) -> None:
        assert hasattr(stream, "readline")
        for line in iter(stream.readline, b""):
            if not listening and b"listening on port" in line:
                listening.append(time.monotonic())

    env = agent_env(target, run, source, otlp=otlp)
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent"],
        env=env,
        cwd=source,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    reader = threading.Thread(target=read, args=(proc.stderr,), daemon=True)
    reader.start()
    try:
        arrived = target.wait_for_probe(run, FIRST_PROBE_TIMEOUT)
        if arrived is None:
            raise SystemExit(f"no probe within {FIRST_PROBE_TIMEOUT:.0f}s (exit status {proc.poll()})")
        cpu = cpu_seconds(proc.pid)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
    return (listening[0] - started if listening else float("nan")), arrived - started, cpu


IDLE_CHECKS = "checks:\n" + "".join(
    f"  - {{name: idle-{i}, type: http, target: '{{target}}/idle/{i}', interval: 60s}}\n" for i in range(3)
)


def memory(pid: int) -> tuple[float, float]:
    """VmRSS and VmHWM of a process, in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def idle_memory(target: Target, source: Path, at: list[float]) -> list[tuple[float, float]]:
    """An idle agent's (VmRSS, VmHWM) at each of ``at`` seconds after its spawn."""
    env = base_env(source)
    env.update(
        VANTAGE_CHECKS=IDLE_CHECKS.replace("{target}", f"http://127.0.0.1:{target.port}"),
        VANTAGE_HOST="127.0.0.1",
        VANTAGE_PORT="0",
        VANTAGE_LOG_LEVEL="warning",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{target.port}",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent"],
        env=env,
        cwd=source,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started, figures = time.monotonic(), []
    try:
        for seconds in at:  # bounded: one sample per time asked for
            time.sleep(max(0.0, started + seconds - time.monotonic()))
            if proc.poll() is not None:
                raise SystemExit(f"the idle agent exited (status {proc.returncode})")
            figures.append(memory(proc.pid))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return figures


def import_time(statement: str, source: Path) -> float:
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=base_env(source),
        cwd=source,
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip())


def interpreter_time(source: Path) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "pass"], env=base_env(source), cwd=source, check=True)
    return time.monotonic() - started


def show(label: str, values: list[float]) -> None:
    ms = [v * 1000 for v in values]
    print(f"{label:<44} median {statistics.median(ms):7.1f} ms   range {min(ms):7.1f} - {max(ms):7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help=f"repetitions (at most {MAX_RUNS})")
    parser.add_argument(
        "--source",
        type=Path,
        action="append",
        help="the agent's source tree to start (default: this checkout); given twice or more, "
        "the trees take turns in every repetition, so that they share the machine's load alike",
    )
    parser.add_argument(
        "--idle",
        metavar="SECONDS",
        help="measure an idle agent's memory at these seconds after its spawn (e.g. 5,75) instead",
    )
    args = parser.parse_args()
    runs = max(1, min(args.runs, MAX_RUNS))
    sources: list[Path] = [path.resolve() for path in args.source or [ROOT]]

    target = Target()
    threading.Thread(target=target.serve_forever, daemon=True).start()
    if args.idle:
        at = [float(s) for s in args.idle.split(",")][:10]
        print(f"an idle agent: 3 http checks at 60 s, OTLP on; VmRSS / VmHWM (peak) in MiB; {runs} runs each")
        try:
            for _ in range(runs):
                for source in sources:
                    row = idle_memory(target, source, at)
                    cells = "   ".join(
                        f"{s:g} s: {rss:.1f} / {hwm:.1f}" for s, (rss, hwm) in zip(at, row, strict=True)
                    )
                    print(f"{source}   {cells}", flush=True)
        finally:
            target.shutdown()
        return
    figures: dict[tuple[Path, str], list[float]] = {}

    def measure(source: Path, label: str, value: float) -> None:
        figures.setdefault((source, label), []).append(value)

    try:
        for k, source in enumerate(sources):
            # One unmeasured start first: the bytecode caches are written and the page cache is warm.
            cold_start(target, f"{k}-warm-up", source, otlp=True)
        for i in range(runs):
            for k, source in enumerate(sources):
                measure(source, "python -c pass", interpreter_time(source))
                measure(source, "import agent.cli", import_time("import agent.cli", source))
                measure(source, "import agent.cli, agent.app, plugins.http", import_time(RUN_IMPORTS, source))
                for otlp in (False, True):
                    name, slug = ("with OTLP", "otlp") if otlp else ("no OTLP", "no-otlp")
                    listening, probe, cpu = cold_start(target, f"{k}-{slug}-{i}", source, otlp=otlp)
                    measure(source, f"spawn -> listening ({name})", listening)
                    measure(source, f"spawn -> first probe ({name})", probe)
                    measure(source, f"CPU at first probe ({name})", cpu)
    finally:
        target.shutdown()
    print(f"{runs} runs each; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
    for source in sources:
        if len(sources) > 1:
            print(f"\n{source}")
        for (where, label), values in figures.items():
            if where == source:
                show(label, values)


if __name__ == "__main__":
    main()
