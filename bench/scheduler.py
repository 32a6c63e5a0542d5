"""CPU per run of the scheduler's own structure, and how late runs start, on uvloop.

Run on demand (it prints figures; nothing asserts them):

    .venv/bin/python bench/scheduler.py [--checks N] [--interval S] [--seconds S] [--concurrency C]
    .venv/bin/python bench/scheduler.py --burst N [--rounds R] [--concurrency C]

Every check runs a trivial probe (``run`` awaits ``asyncio.sleep(0)`` once and succeeds) through the
real ``Scheduler`` on the real clock, with a recorder and a probe context that do nothing, so what is
left is the scheduler: the timer heap, starting a run, the concurrency bound, the timeout and the
bookkeeping around the probe.

- Ticking (the default): N checks at a fixed interval for a bounded time (1,000 checks at 1 s for
  10 s: the issue's "1,000 checks at 1 s in one process" at the scheduler's level). Prints the
  process CPU time (``time.process_time``: user + system) per run, the runs per second, and the
  start lateness (start minus tick, as the recorder records it: a run started early with its batch
  counts as 0) at p50, p99 and worst.
- Burst (``--burst N``): ``run_once`` of N checks, R rounds, C in flight at most: every run queued
  at once behind the bound, so the figure is the start, the queue and the timeout without the
  idle loop between ticks.

Bounded: at most 20,000 checks and 60 s of ticking.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, cast

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config.checks import CheckEntry
from agent.schedule.scheduler import Scheduler
from agent.sdk.probe import Check, Probe, ProbeContext, ProbeResult, ProbeSettings, SystemClock

MAX_CHECKS = 20_000
MAX_SECONDS = 60.0
OK = ProbeResult(success=True, duration=0.0)


class TrivialProbe(Probe[ProbeSettings]):
    """Awaits once (so the run really suspends) and succeeds."""

    name = "trivial"
    Settings = ProbeSettings

    async def run(self, check: Check, settings: ProbeSettings, ctx: ProbeContext) -> ProbeResult:
        await asyncio.sleep(0)
        return OK


class StubContext:
    """The parts of a ProbeContext the scheduler reads."""

    requests = ()
    stage = "benchmark"

    @staticmethod
    def redact(text: str) -> str:
        return text


class StubRecorder:
    """The recorder calls the scheduler makes, kept as counts and lateness samples."""

    def __init__(self) -> None:
        self.late: list[float] = []
        self.finished = 0
        self.failed = 0
        self.abandoned = 0
        self.skips: Counter[str] = Counter()

    def loop_lag(self, seconds: float) -> None:
        pass

    def lateness(self, seconds: float) -> None:
        self.late.append(max(0.0, seconds))

    def skipped(self, entry: CheckEntry, cause: str) -> None:
        self.skips[cause] += 1

    def start_run(self, entry: CheckEntry, attempt: int = 1) -> None:
        return None

    def abandon_run(self, run: object, why: str) -> None:
        self.abandoned += 1

    def finish_run(
        self, run: object, result: ProbeResult, requests: object = (), *, attempt: int = 1, final: bool = True
    ) -> None:
        self.finished += 1
        self.failed += not result.success


def entries(count: int, interval: float) -> list[CheckEntry]:
    probe, settings = TrivialProbe(), ProbeSettings()
    return [
        CheckEntry(
            Check(name=f"c{i}", type="trivial", target="none", interval=interval, timeout=interval / 2),
            probe,
            settings,
        )
        for i in range(count)
    ]


def scheduler(count: int, interval: float, concurrency: int) -> tuple[Scheduler, StubRecorder]:
    recorder = StubRecorder()
    context = StubContext()
    return (
        Scheduler(
            entries(count, interval),
            recorder=cast(Any, recorder),
            context=lambda entry, run: cast(ProbeContext, context),
            clock=SystemClock(),
            region="bench",
            concurrency=concurrency,
        ),
        recorder,
    )


def percentile(samples: list[float], share: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def ticking(count: int, interval: float, seconds: float, concurrency: int) -> None:
    sched, recorder = scheduler(count, interval, concurrency)
    task = asyncio.get_running_loop().create_task(sched.run(drain_timeout=interval))
    await asyncio.sleep(interval)  # the first interval: every check reaches its phase
    recorder.late.clear()
    finished, cpu, wall = recorder.finished, time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    runs = recorder.finished - finished
    sched.stop()
    await task
    late_ms = [x * 1000 for x in recorder.late]
    print(
        f"ticking: {count} checks every {interval:g}s for {wall:.1f}s, concurrency {concurrency}: "
        f"{runs} runs ({runs / wall:.0f}/s), {cpu * 1e6 / max(runs, 1):.1f} µs CPU per run "
        f"(process {cpu:.2f}s); lateness p50 {percentile(late_ms, 0.5):.2f} ms, "
        f"p99 {percentile(late_ms, 0.99):.2f} ms, worst {max(late_ms, default=float('nan')):.2f} ms; "
        f"failed {recorder.failed}, skipped {dict(recorder.skips) or 0}"
    )


async def burst(count: int, rounds: int, concurrency: int) -> None:
    sched, recorder = scheduler(count, 60.0, concurrency)
    await sched.run_once()  # warm up
    times = []
    for _ in range(rounds):
        cpu = time.process_time()
        await sched.run_once()
        times.append((time.process_time() - cpu) * 1e6 / count)
    print(
        f"burst: {count} runs x {rounds} rounds, concurrency {concurrency}: "
        f"{statistics.median(times):.1f} µs CPU per run (median; rounds {min(times):.1f}-{max(times):.1f}); "
        f"failed {recorder.failed}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checks", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=256)  # VANTAGE_CONCURRENCY
    parser.add_argument("--burst", type=int, default=0, help="run_once of N checks, not ticking")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    count = min(args.burst or args.checks, MAX_CHECKS)
    if args.burst:
        uvloop.run(burst(count, max(1, min(args.rounds, 50)), args.concurrency))
    else:
        uvloop.run(ticking(count, args.interval, min(args.seconds, MAX_SECONDS), args.concurrency))


if __name__ == "__main__":
    main()
