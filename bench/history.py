"""Benchmark: the status page's history (agent/server/history.py), in-process.

Prints the CPU of ``History.record`` per run (a typical http run: five phases, seven values, one
request with nginx's eight response headers; making the result is measured apart and not counted),
the Python memory the history holds for ``--checks`` checks after ``--runs`` runs each (tracemalloc;
it includes each check's last result and requests, which the agent's recorder holds anyway), and
the CPU of the overview's ``summary`` and the debug view's ``runs`` per check.

    PYTHONPATH=. .venv/bin/python bench/history.py [--checks 10000] [--runs 30]

Every loop is bounded in count; nothing leaves the process. It asserts nothing about time.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from dataclasses import replace

from metrics import RESULT  # bench/metrics.py, beside this file

from agent.config.secrets import Redactor
from agent.net.http import RequestRecord
from agent.sdk.probe import ProbeResult
from agent.sdk.reasons import Reason
from agent.server.history import History

HEADERS = (
    ("server", "nginx/1.26.0"),
    ("date", "Sun, 29 Nov 2026 17:00:00 GMT"),
    ("content-type", "text/html"),
    ("content-length", "615"),
    ("last-modified", "Tue, 01 Oct 2024 10:00:00 GMT"),
    ("connection", "close"),
    ("etag", '"66fbc8a0-267"'),
    ("accept-ranges", "bytes"),
)
T0 = 1_800_000_000.0


def requests(i: int) -> list[RequestRecord]:
    return [
        RequestRecord("GET", "https", f"api-{i % 50}.vendor.test", 443, 0.0421, 200, None, "1.1", HEADERS)
    ]


def result(i: int) -> ProbeResult:
    """bench/metrics.py's typical http run, failed now and then (kept as the last failure)."""
    failed = i % 97 == 0
    return replace(
        RESULT,
        success=not failed,
        reason=Reason.HTTP_STATUS if failed else None,
        attributes={"http.response.status_code": 200, "server.address": f"api-{i % 50}.vendor.test"},
    )


def fill(history: History, checks: int, runs: int) -> int:
    n = 0
    for r in range(runs):
        for i in range(checks):
            history.record(
                f"check-{i:05d}", T0 + r * 60 + i * 0.006, result(i + r), requests(i), (i << 64) | r
            )
            n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=30, help="runs of each check")
    args = parser.parse_args()
    redact = Redactor(["s3cr3t-token-value", "another-secret-here"])

    start = time.process_time()
    for i in range(20_000):
        result(i), requests(i)
    making = (time.process_time() - start) / 20_000
    history = History(redact, clock=lambda: T0 + args.runs * 60)
    start = time.process_time()
    n = fill(history, args.checks, args.runs)
    per_run = (time.process_time() - start) / n - making
    print(
        f"History.record: {per_run * 1e6:.1f} us CPU a run ({n:,} runs; "
        f"making the result, {making * 1e6:.1f} us, apart)"
    )

    start = time.process_time()
    for i in range(0, args.checks, 10):
        history.summary(f"check-{i:05d}")
    each = (time.process_time() - start) / (args.checks / 10)
    print(f"summary (the overview, per check): {each * 1e6:.1f} us")
    start = time.process_time()
    for i in range(0, args.checks, 100):
        history.runs(f"check-{i:05d}")
    each = (time.process_time() - start) / (args.checks / 100)
    print(f"runs (the debug view, per check): {each * 1e6:.1f} us")

    del history
    gc.collect()
    tracemalloc.start()
    held = tracemalloc.get_traced_memory()[0]
    history = History(redact, clock=lambda: T0 + args.runs * 60)
    fill(history, args.checks, args.runs)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - held
    tracemalloc.stop()
    print(
        f"the history of {args.checks:,} checks after {args.runs} runs each: {held / 2**20:.1f} MiB "
        f"(tracemalloc), {held / args.checks:,.0f} bytes a check, its last result and requests included"
    )


if __name__ == "__main__":
    main()
