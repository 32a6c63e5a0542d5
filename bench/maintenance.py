"""Benchmark: what maintenance windows cost, with and without them.

Prints, for a set of ``http`` checks:

* the Python memory (tracemalloc) of the built agent, and how much of it the
  ``vantage_check_maintenance`` series at 0 of checks without a window hold (the second agent's
  figure is lower for being built second in the process);
* the CPU of working out ``vantage_check_maintenance`` at a collection (the first, then with the
  windows' answers kept), with no window, and with every check picked by a file-level window
  (half by a label selector, a cron window in Europe/Berlin; all by a name pattern, an absolute
  window);
* the CPU of one ``/metrics`` rendering in both cases.

    PYTHONPATH=. .venv/bin/python bench/maintenance.py [--checks 10000]

Every loop is bounded in count; nothing goes on the network. It asserts nothing about time.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from typing import Any

import yaml

from agent.app import Agent, build_agent
from agent.config.settings import load_config


def document(checks: int, windows: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "checks": [
            {
                "name": f"c{i}",
                "type": "http",
                "target": f"https://api{i % 50}.example/v1",
                "labels": {"vendor": "stripe" if i % 2 else "acme"},
            }
            for i in range(checks)
        ]
    }
    if windows:
        body["maintenance"] = [
            {"name": "weekly", "labels": {"vendor": "stripe"}, "cron": "0 2 * * SUN",
             "timezone": "Europe/Berlin", "duration": "2h"},
            {"name": "all", "checks": ["c*"], "start": "2026-12-01T01:00:00Z", "end": "2026-12-01T03:00:00Z"},
        ]  # fmt: skip
    return body


def build(checks: int, windows: bool) -> tuple[Agent, float]:
    environ = {"VANTAGE_CHECKS": yaml.safe_dump(document(checks, windows)), "OTEL_TRACES_EXPORTER": "none"}
    gc.collect()
    tracemalloc.start()
    agent = build_agent(load_config(environ), environ)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return agent, held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", type=int, default=10_000)
    checks = parser.parse_args().checks
    for windows in (False, True):
        agent, held = build(checks, windows)
        gauge = agent.maintenance_gauge
        assert gauge is not None
        label = "every check in a file-level window" if windows else "no window"
        print(f"{checks} checks, {label}: {held / 2**20:.1f} MiB (Python, tracemalloc)")
        if not windows:
            # The series at 0 of the checks without a window: one dict entry each in the table
            # (the value is the one 0.0 object). (Before a check's first run, the tables also
            # keep its series' start time from then on: its first run would.)
            table = agent.telemetry.tables.tables["vantage.check.maintenance"]
            print(f"  of which the series at 0: {sys.getsizeof(table.checks) / 2**20:.2f} MiB")
        for what in ("first", "kept", "kept"):
            started = time.process_time()
            gauge.refresh()
            spent = (time.process_time() - started) * 1000
            print(f"  vantage_check_maintenance at a collection ({what}): {spent:.2f} ms")
        started = time.process_time()
        agent.telemetry.render_prometheus()
        print(f"  one /metrics rendering: {(time.process_time() - started) * 1000:.0f} ms")
        del agent, gauge


if __name__ == "__main__":
    main()
