"""Benchmark: what redaction costs on the agent's hot paths.

Every log line, status API answer and span message goes through the Redactor, which matches each
secret in all the spellings the agent may write (raw, percent- and form-encoded, JSON- and
repr-escaped, base64). Prints microseconds per call for a typical JSON log line and a 4 KB text,
with a number of secrets like a real configuration's, and the time one recompile takes when an
OAuth refresh adds a token.

    .venv/bin/python bench/redact.py [--secrets 20] [--rounds 20000]

Runs in-process, touches no network.
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config.secrets import Redactor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--secrets", type=int, default=20, help="secrets the redactor knows")
    parser.add_argument("--rounds", type=int, default=20_000)
    args = parser.parse_args()

    secrets = [f"sk_live_{i:04d}_abcdefghijklmnopqrstuvwxyz" for i in range(args.secrets)]
    secrets.append('apk+Key==/é"x')  # characters that every encoder escapes differently
    redactor = Redactor(secrets)
    line = json.dumps(
        {
            "time": "2026-11-29T06:00:00.000+00:00",
            "level": "warning",
            "logger": "vantage.checks",
            "message": "check stripe-charges is failing: http_status: HTTP 503 (expected 2xx)",
            "check": "stripe-charges",
        }
    )
    text = ("x" * 63 + "\n") * 64
    leaky = line.replace("HTTP 503", "apk%2BKey%3D%3D%2F%C3%A9%22x")
    assert "<redacted>" in redactor(leaky), "the benchmark's secret was not found"

    def per_call(fn: object, rounds: int) -> float:
        return timeit.timeit(fn, number=rounds) / rounds * 1e6  # type: ignore[arg-type]

    def refresh(index: list[int] = [0]) -> None:  # noqa: B006 - a counter kept between calls
        index[0] += 1
        redactor.add(f"ya29.token-{index[0]:08d}-abcdefghijklmnop", ephemeral=True)
        redactor(line)

    rows = [
        (f"log line ({len(line)} B), nothing to redact", lambda: redactor(line), args.rounds),
        ("log line with a percent-encoded secret", lambda: redactor(leaky), args.rounds),
        ("4 KB of text", lambda: redactor(text), args.rounds // 10),
        ("an OAuth token added, then a line (a recompile)", refresh, 200),
    ]
    print(f"{len(secrets)} secrets")
    for label, fn, rounds in rows:
        print(f"  {label:<50} {per_call(fn, rounds):9.1f} µs")


if __name__ == "__main__":
    main()
