"""Benchmark: loading a large checks file (``vantage validate`` without the telemetry).

Writes a checks file of N http checks (default 50,000: a few dozen distinct settings blocks with
headers, an assertion and a secret reference, as a large generated file has them), then, each in
this process, times:

* ``yaml``: reading the document with libyaml's loader (``yaml.CSafeLoader``), with the agent's
  reader (``agent/config/_yaml.py``: libyaml, tags resolved once per distinct scalar, one walk to
  build the document, the garbage collector paused) and, unless ``--no-pure``, with the
  pure-Python one (``yaml.SafeLoader``, minutes for 50,000 checks);
* ``load``: ``load_config``, the whole of what ``vantage validate`` does before the telemetry
  (settings, the document, every check validated, its probe type and settings bound).

    .venv/bin/python bench/load.py [--checks 50000] [--runs 1] [--no-pure]

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


def best(runs: int, fn: object) -> tuple[float, float]:
    """The best wall time and the best CPU time (this process's) of ``runs`` calls of ``fn``: on a
    shared machine the CPU time is the steadier figure."""
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()  # type: ignore[operator]
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checks", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--no-pure", action="store_true", help="skip the pure-Python loader")
    args = parser.parse_args()
    count, runs = min(args.checks, MAX_CHECKS), max(1, min(args.runs, MAX_RUNS))

    import yaml

    from agent.config.settings import load_config

    text = document(count)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checks.yaml"
        path.write_text(text, encoding="utf-8")
        print(f"{count:,} checks, {len(text) / 1e6:.1f} MB of YAML; best of {runs}")
        readers: list[tuple[str, object]] = []
        if hasattr(yaml, "CSafeLoader"):
            readers.append(("libyaml (CSafeLoader)", lambda: yaml.load(text, Loader=yaml.CSafeLoader)))
        try:
            from agent.config._yaml import load_yaml
        except ImportError:  # a tree from before it
            pass
        else:
            readers.append(("the agent's (load_yaml)", lambda: load_yaml(text)))
        if not args.no_pure:
            readers.append(("pure-Python (SafeLoader)", lambda: yaml.load(text, Loader=yaml.SafeLoader)))
        for name, read in readers:
            wall, cpu = best(runs, read)
            print(f"  yaml   {name:28} {wall:8.2f} s wall {cpu:8.2f} s CPU", flush=True)
        environ = {"VANTAGE_CHECKS_FILE": str(path), "BENCH_TOKEN": "bench-token-value"}
        wall, cpu = best(runs, lambda: load_config(environ))
        print(f"  load   load_config, whole         {wall:8.2f} s wall {cpu:8.2f} s CPU", end="")
        print(f"  ({cpu / count * 1e6:,.0f} µs CPU per check)")


if __name__ == "__main__":
    main()
