"""Benchmark: the metric tables, ``/metrics`` rendering and one OTLP collection.

Prints:

* the CPU microseconds per run of recording a typical HTTP run's metric points into the tables
  (5 phases, 7 values, a TLS version sample, one ``http.client.request.duration`` point), and of
  the whole ``finish_run`` (with spans off);
* the Python memory the tables hold once every check ran (tracemalloc);
* the CPU of one ``/metrics`` rendering with 1,000 and 10,000 checks (text, text gzipped,
  OpenMetrics, OpenMetrics gzipped; the median of ``--repeat``), the page's size, and the peak
  Python memory of a rendering (OpenMetrics, gzipped, as Prometheus asks). Each check's run has
  durations of its own, as real runs do, and the collector runs as in the agent (its start-up
  frozen, a young collection every 20,000 allocations);
* the peak Python memory (tracemalloc) and the CPU of one OTLP collection with the most checks, sent
  through the SDK's OTLP/HTTP exporter to a sink on 127.0.0.1 in bounded batches.

    PYTHONPATH=. .venv/bin/python bench/metrics.py [--checks 1000,10000] [--runs 20000] [--repeat 3]

Every loop is bounded in count; all traffic stays on 127.0.0.1. It asserts nothing about time.
"""

from __future__ import annotations

import argparse
import gc
import http.server
import os
import statistics
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import yaml

from agent.app import Agent, build_agent
from agent.config.settings import load_config
from agent.net.http import RequestRecord
from agent.sdk.probe import ProbeResult, Sample


def agent_with(checks: int, environ: dict[str, str]) -> Agent:
    document = {
        "checks": [
            {
                "name": f"check-{i:05d}",
                "type": "http",
                "target": f"https://api-{i % 50}.vendor.test/v1/things?key=x",
                "interval": "60s",
                "labels": {"team": f"team-{i % 7}"},
            }
            for i in range(checks)
        ]
    }
    config = load_config({"VANTAGE_CHECKS": yaml.safe_dump(document), "VANTAGE_REGION": "bench"})
    return build_agent(config, {"OTEL_TRACES_EXPORTER": "none", **environ})


RESULT = ProbeResult(
    success=True,
    duration=0.0421,
    phases={"resolve": 0.0001, "connect": 0.0003, "tls": 0.012, "processing": 0.025, "transfer": 0.0007},
    values={
        "probe.http.status_code": 200,
        "probe.http.content_length": 1234,
        "probe.http.version": 1.1,
        "probe.http.redirects": 0,
        "probe.http.ssl": 1,
        "probe.ssl.earliest_cert_expiry": 1_800_000_000.0,
        "probe.ssl.last_chain_expiry_timestamp": 1_800_000_000.0,
    },
    samples=(Sample("probe.tls.version_info", 1, {"version": "TLS 1.3"}, series="version"),),
)


def request_for(i: int) -> list[RequestRecord]:
    return [RequestRecord("GET", "https", f"api-{i % 50}.vendor.test", 443, 0.0421, 200, None, "1.1")]


def result_for(i: int) -> ProbeResult:
    """``RESULT`` with durations of its own, as real runs have: each a number that the rendering
    formats anew, where one result shared by every check would let it format each once."""
    spread = 1 + i / 7919
    return replace(
        RESULT,
        duration=RESULT.duration * spread,
        phases={phase: seconds * spread for phase, seconds in RESULT.phases.items()},
    )


def fill(agent: Agent) -> None:
    """One run per check, so that every series exists."""
    for i, entry in enumerate(agent.entries):
        run = agent.recorder.start_run(entry)
        agent.recorder.finish_run(run, result_for(i), request_for(i))


def rss() -> int:
    """The process's resident set size, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu() -> float:
    return time.process_time()


def recording(runs: int) -> None:
    agent = agent_with(100, {"OTEL_METRICS_EXPORTER": "prometheus"})
    fill(agent)
    recorder, entries = agent.recorder, agent.entries
    outcome = {"result": "success", "attempt": "1"}
    requests = [request_for(i) for i in range(len(entries))]
    record = recorder._record_metrics  # the metric part of finish_run alone
    start = cpu()
    for n in range(runs):
        i = n % len(entries)
        record(entries[i], RESULT, outcome, requests[i])
    tables = (cpu() - start) / runs * 1e6
    start = cpu()
    for n in range(runs // 4):
        i = n % len(entries)
        run = recorder.start_run(entries[i])
        recorder.finish_run(run, RESULT, requests[i])
    whole = (cpu() - start) / (runs // 4) * 1e6
    print(f"recording one HTTP run's metric points into the tables: {tables:.1f} us CPU ({runs} runs)")
    print(f"start_run + finish_run (spans off, metric points included): {whole:.1f} us CPU")


def rendering(agent: Agent, repeat: int) -> None:
    checks = len(agent.entries)
    cache = agent.telemetry.exposition
    assert cache is not None
    series = agent.telemetry.tables.series_count()
    for label, openmetrics, gzip in (
        ("text", False, False),
        ("text, gzip", False, True),
        ("OpenMetrics", True, False),
        ("OpenMetrics, gzip", True, True),  # as Prometheus asks
    ):
        took = []
        for _ in range(repeat):  # bounded in count
            gc.collect()
            start = cpu()
            page = cache.get(openmetrics=openmetrics, gzip=gzip)
            took.append(cpu() - start)
            cache.expire()
            cache.fresh = -1.0  # the next rendering is made anew
        print(
            f"/metrics, {checks:>6,} checks ({series:,} series), {label:<17}: "
            f"{statistics.median(took) * 1000:6.1f} ms CPU (median of {repeat}; "
            f"{min(took) * 1000:.0f}-{max(took) * 1000:.0f}), {len(page.body) / 1e6:5.1f} MB"
        )
    gc.collect()
    tracemalloc.start()
    held = tracemalloc.get_traced_memory()[0]
    cache.get(openmetrics=True, gzip=True)
    peak = tracemalloc.get_traced_memory()[1] - held
    tracemalloc.stop()
    print(
        f"/metrics, {checks:>6,} checks, OpenMetrics gzipped: peak Python memory {peak / 2**20:.1f} MiB "
        "during the rendering (tracemalloc, above what the process held)"
    )


class _Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    received = 0

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        remaining = length
        while remaining:
            remaining -= len(self.rfile.read(min(remaining, 1 << 16)))
        type(self).received += length
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def sink() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def exporting(checks: int, endpoint: str) -> Agent:
    """An agent with ``checks`` checks, /metrics and OTLP metrics to ``endpoint``, one run each."""
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint  # the SDK's exporter reads it
    agent = agent_with(
        checks,
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_METRICS_EXPORTER": "prometheus,otlp",
            "OTEL_METRIC_EXPORT_INTERVAL": "3600000",
        },
    )
    gc.collect()
    gc.freeze()  # what the agent built before its first run, as it does (agent/app.py)
    tracemalloc.start()
    fill(agent)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    series = agent.telemetry.tables.series_count()
    print(
        f"the tables, {checks:>6,} checks ({series:,} series): {held / 2**20:.1f} MiB of Python memory "
        f"(tracemalloc, one run of each check), {held / series:.0f} bytes a series"
    )
    return agent


def otlp(agent: Agent) -> None:
    checks = len(agent.entries)
    export = agent.telemetry.exports[0]
    series = agent.telemetry.tables.series_count()
    gc.collect()
    start, calls, sent = cpu(), export.exports, _Sink.received
    assert export.collect(300)
    took = cpu() - start
    batches, sent = export.exports - calls, _Sink.received - sent
    gc.collect()
    rss_before = rss()
    assert export.collect(300)
    rss_after = rss()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    assert export.collect(300)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    print(
        f"OTLP collection, {checks:,} checks ({series:,} data points, {batches} export() calls of at most "
        f"{export.batch}): {took * 1000:.0f} ms CPU, peak Python memory {peak / 2**20:.1f} MiB "
        f"(tracemalloc), {sent / 1e6:.1f} MB of protobuf; process RSS {rss_before / 2**20:.0f} MiB before "
        f"a collection, {rss_after / 2**20:.0f} MiB after"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", default="1000,10000", help="check counts for /metrics")
    parser.add_argument("--runs", type=int, default=20_000, help="runs recorded for the per-run figure")
    parser.add_argument("--repeat", type=int, default=3, help="renderings measured of each kind")
    options = parser.parse_args()
    sys.setswitchinterval(0.001)  # as the agent runs (agent/app.py), and its collector's threshold
    gc.set_threshold(20_000, 10, 10)
    recording(options.runs)
    counts = [int(c) for c in options.checks.split(",")]
    with sink() as endpoint:
        for checks in counts:
            agent = exporting(checks, endpoint)
            rendering(agent, options.repeat)
            if checks == max(counts):
                otlp(agent)
            agent.telemetry.exports[0].exporter.shutdown()
            del agent
            gc.collect()


if __name__ == "__main__":
    main()
