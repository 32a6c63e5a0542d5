"""Benchmark: what a run's spans cost on the probe path.

Each run is what the recorder and the HTTP client do for one HTTP probe: ``start_run``, one CLIENT
span with its five attributes, ``inject`` (the ``traceparent`` header), two attributes set after the
response, its end, and ``finish_run`` (metric points, state, the root's attributes and status). The
trace exporter is OTLP, with its export replaced by one that discards the batch (no encoding, no
network): what is measured is the agent's side, up to the export processors' queue.

Prints, for each ``VANTAGE_TRACE_SUCCESS_RATIO`` asked for (0.1, the default, and 1: every run kept)
and with traces off (no trace exporter: ids for ``traceparent`` only), the CPU microseconds per run
of the event loop's thread (``time.thread_time``) and of the whole process (``time.process_time``,
the export processor's thread included).

    PYTHONPATH=. .venv/bin/python bench/spans.py [--runs 20000] [--repeat 3]

Bounded in count; no traffic at all. It asserts nothing about time. The best of ``--repeat`` rounds
is printed.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Sequence
from typing import Any

import yaml
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

import agent.telemetry.providers as providers
from agent.app import Agent, build_agent
from agent.config.settings import load_config
from agent.net.http import RequestRecord
from agent.sdk.probe import ProbeResult

CHECKS = 100
RESULT = ProbeResult(
    success=True,
    duration=0.0421,
    phases={"resolve": 0.0001, "connect": 0.0003, "tls": 0.012, "processing": 0.025, "transfer": 0.0007},
    values={"probe.http.status_code": 200, "probe.http.content_length": 1234, "probe.http.version": 1.1},
)


class _Discard(SpanExporter):
    """Takes every batch and does nothing with it."""

    exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        _Discard.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def _discarding_exporter(environ: Any, signal: str, name: str) -> Any:
    exporter, target, outcomes = _real_exporter(environ, signal, name)
    return (_Discard() if signal == "traces" else exporter), target, outcomes


_real_exporter = providers._exporter
providers._exporter = _discarding_exporter


def agent_with(ratio: str | None) -> Agent:
    document = {
        "checks": [
            {
                "name": f"check-{i:03d}",
                "type": "http",
                "target": f"https://api-{i % 10}.vendor.test/v1/things?key=x",
                "interval": "60s",
                "labels": {"team": f"team-{i % 7}"},
            }
            for i in range(CHECKS)
        ]
    }
    environ = {"VANTAGE_CHECKS": yaml.safe_dump(document), "VANTAGE_REGION": "bench"}
    otel = {"OTEL_METRICS_EXPORTER": "none", "OTEL_TRACES_EXPORTER": "none"}
    if ratio is not None:
        environ["VANTAGE_TRACE_SUCCESS_RATIO"] = ratio
        otel |= {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/v1/traces",
        }
    return build_agent(load_config(environ), otel)


def one_run(agent: Agent, i: int) -> None:
    recorder = agent.recorder
    entry = agent.entries[i % CHECKS]
    run = recorder.start_run(entry)
    host = f"api-{i % 10}.vendor.test"
    span = run.tracer.start_span(
        "GET",
        client=True,
        attributes={
            "http.request.method": "GET",
            "url.full": f"https://{host}/v1/things?key=REDACTED",
            "url.scheme": "https",
            "server.address": host,
            "server.port": 443,
        },
    )
    headers: dict[str, str] = {"User-Agent": "Vantage"}
    span.inject(headers)
    span.set_attribute("http.response.status_code", 200)
    span.set_attribute("network.protocol.version", "1.1")
    span.end()
    request = RequestRecord("GET", "https", host, 443, 0.0421, 200, None, "1.1")
    recorder.finish_run(run, RESULT, [request])


def measure(ratio: str | None, runs: int, repeat: int) -> tuple[float, float]:
    agent = agent_with(ratio)
    try:
        for i in range(CHECKS):  # the first run of each check is a state change: kept
            one_run(agent, i)
        best = (float("inf"), float("inf"))
        for _ in range(repeat):
            gc.collect()
            thread, process = time.thread_time(), time.process_time()
            for i in range(runs):
                one_run(agent, i)
            agent.telemetry.flush(10)  # the export thread's share of this round
            took = ((time.thread_time() - thread) / runs * 1e6, (time.process_time() - process) / runs * 1e6)
            best = min(best, took)
        return best
    finally:
        agent.telemetry.shutdown(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for label, ratio in (("traces off", None), ("ratio 0.1", "0.1"), ("ratio 1", "1")):
        thread, process = measure(ratio, args.runs, args.repeat)
        print(
            f"{label:<10}: {thread:6.1f} us CPU a run on the loop's thread, {process:6.1f} us in the process"
        )
    print(f"({args.runs} runs a round, best of {args.repeat}; spans exported: {_Discard.exported})")


if __name__ == "__main__":
    main()
