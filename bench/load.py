"""Benchmark: loading a large checks file (``vantage validate`` without the telemetry).

Writes a checks file of N http checks (default 50,000: a few dozen distinct settings blocks with
headers, an assertion and a secret reference, as a large generated file has them), then, each in
this process, times:

* ``yaml``: reading the document with libyaml's loader (``yaml.CSafeLoader``, what the agent
  uses when PyYAML has it) and with the pure-Python one (``yaml.SafeLoader``);
* ``load``: ``load_config``, the whole of what ``vantage validate`` does before the telemetry
  (settings, the document, every check validated, its probe type and settings bound).

    .venv/bin/python bench/load.py [--checks 50000] [--runs 1]

Prints figures only (best of the runs). Nothing is sent anywhere.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

MAX_CHECKS = 1_000_000
MAX_RUNS = 10


def document(count: int) -> str:
    """A checks file of ``count`` http checks, written as a person (or a generator) writes YAML."""
    lines = ["defaults: {interval: 60s, timeout: 10s, labels: {team: payments}}", "checks:"]
    for i in range(count):
        lines += [
            f"  - name: vendor-{i:06d}",
            "    type: http",
            f"    target: https://api-{i % 97}.example/v1/items?page={i}",
            f"    labels: {{vendor: vendor-{i % 41}}}",
            "    settings:",
            "      headers:",
            '        Authorization: "Bearer ${BENCH_TOKEN}"',
            f"        X-Shard: shard-{i % 31}",
            "      assert:",
            "        - {source: status, op: in, value: [200, 204]}",
            "        - {source: response_time, op: lt, value: 2s}",
        ]
    return "\n".join(lines) + "\n"


def best(runs: int, fn: object) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checks", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    count, runs = min(args.checks, MAX_CHECKS), max(1, min(args.runs, MAX_RUNS))

    import yaml

    from agent.config.settings import load_config

    text = document(count)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checks.yaml"
        path.write_text(text, encoding="utf-8")
        print(f"{count:,} checks, {len(text) / 1e6:.1f} MB of YAML; best of {runs}")
        loaders = [("pure-Python (SafeLoader)", yaml.SafeLoader)]
        if hasattr(yaml, "CSafeLoader"):
            loaders.insert(0, ("libyaml (CSafeLoader)", yaml.CSafeLoader))
        for name, loader in loaders:
            seconds = best(runs, lambda loader=loader: yaml.load(text, Loader=loader))
            print(f"  yaml   {name:26} {seconds:8.2f} s")
        environ = {"VANTAGE_CHECKS_FILE": str(path), "BENCH_TOKEN": "bench-token-value"}
        seconds = best(runs, lambda: load_config(environ))
        print(f"  load   load_config, whole       {seconds:8.2f} s  ({seconds / count * 1e6:.0f} µs per check)")


if __name__ == "__main__":
    main()
