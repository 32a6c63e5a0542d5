"""Benchmark: the targets of the engine issue (#12), on loopback, beside blackbox_exporter.

One invocation starts a local nginx (the probe target, and the OTLP sink: an empty 200 for every
export) and runs the scenarios asked for, in this order, each printing its figures:

``start``  cold start to first probe: wall time from spawning the agent (one http check, OTLP on)
           to its first request reaching a tiny loopback server that records the arrival, median
           of ``--starts`` (5). The check's interval is 100 ms, the shortest allowed, because the
           scheduler waits for the check's phase before its first tick: up to 100 ms of the figure
           is that wait, so the figure is an upper bound of the agent's own start-up. "Cold" is a
           new process; the page cache is warm after the first start.
``base``   an idle agent: one http check at 60 s, OTLP on, /metrics scraped every 15 s; its CPU
           (cores) over ``--base-seconds`` and its RSS. The sizing's base.
``cpu``    CPU per HTTP probe at ``--rate`` probes/s (300: that many checks at a 1 s interval,
           fresh TCP connection per probe), with the default telemetry (OTLP traces and metrics to
           the sink, /metrics scraped every 15 s), and Debian's blackbox_exporter driven at the same
           rate against the same nginx (one ``/probe`` request per probe, as Prometheus would; it
           opens a fresh connection per probe). Three runs per repeat, back to back, their order
           rotated from one repeat to the next: blackbox_exporter, the agent with its default
           tracing, the agent with every run traced (``VANTAGE_TRACE_SUCCESS_RATIO=1``). Each
           repeat gives the ratio of the agent's CPU per probe to blackbox_exporter's, for both
           agent runs; ``--repeat`` (3) repeats, each ratio printed, and the median.
``big``    ``--big`` (1,000) http checks at a 1 s interval in one process (``VANTAGE_WORKERS=1``),
           OTLP on, /metrics scraped every 15 s: start lateness p50/p99 (from the
           ``vantage_scheduler_lateness_seconds`` histogram's increase over the window,
           interpolated inside the bucket as Prometheus' histogram_quantile does), the share of
           runs started within 10 ms of their tick, runs done against expected, skipped runs by
           cause, discarded runs (cause ``overload``) and failed runs by reason.
``idle``   ``--idle`` (10,000) http checks at a 60 s interval, probing nginx, OTLP on, /metrics
           scraped every 15 s: RSS ``--idle-wait`` (130 s: two intervals) after the agent's port
           opened (and at one interval); then ``--idle-scrapes`` (3) more scrapes, each after 5 s
           without one: the agent's CPU time across the scrape (median; the agent keeps probing
           meanwhile, so the figure also shows it net of the CPU rate of the 5 s before) and the
           answer's size, on the wire and uncompressed.

Then the sizing, in the shape of Datadog's and Checkly's private-location sizing, from the figures
above (any it lacks are shown as n/a):

- base CPU (cores) and memory (MiB): the ``base`` agent's;
- CPU per 100 probes/s (cores): from ``cpu`` with the default tracing, per repeat
  (agent cores - base cores) / probes per second x 100, the median;
- memory per configured check (KiB): (``idle`` RSS after two intervals - base RSS) / checks;
- CPU per 1,000 configured checks (cores), what checks cost beyond their probes (their /metrics
  and OTLP share): (``idle`` agent cores over its second interval - base cores - its probes/s x
  the per-probe CPU) / checks x 1,000;
- and a cross-check: the ``big`` scenario's cores as this model predicts them, and as measured.

CPU is a process's user + system time from /proc; RSS is VmRSS. Every scraper of /metrics here asks
what Prometheus asks (OpenMetrics first, gzip). OTLP goes with ``OTEL_BSP_MAX_QUEUE_SIZE=8192`` (no
span dropped at 1,000 runs/s; drops are shown) and metric exports every ``--metric-interval``
seconds (60, the SDK's default: the default telemetry; a window as long as the interval holds
exactly one export, so ``--seconds`` and ``--big-seconds`` default to 60). A measured window
runs from one /metrics scrape to another, with one every 15 s between: with ``--seconds``
a multiple of 15 it holds exactly one scrape per 15 s (otherwise a few more). The agent measured is
this checkout's (``PYTHONPATH``); one without ``VANTAGE_TRACE_SUCCESS_RATIO`` traces every run in
both agent runs of ``cpu``, and the output says so.

    make bench                  # bench/setup.sh, then every scenario with the defaults
    .venv/bin/python bench/run.py [--only start,base,cpu,big,idle] [--rate 300] [--seconds 60]
        [--metric-interval 60] [--warmup 5] [--repeat 3] [--big 1000] [--big-seconds 60] [--idle 10000]
        [--idle-wait 130] [--idle-scrapes 3] [--starts 5] [--base-seconds 30] [--json [FILE]]
    .venv/bin/python bench/run.py --only cpu --seconds 15 --repeat 1   # one scenario, short

``--json`` writes every figure as JSON to FILE, or with no FILE to stdout (the tables then go to
stderr). With the defaults, the whole run takes about 17 minutes of wall time (cpu 11, idle 3,
big 1.5, base and start 1; an overloaded agent takes longer to scrape and to stop).

Needs Debian's nginx-light and prometheus-blackbox-exporter (bench/setup.sh installs them). Every
load loop is bounded in count and time; all traffic stays on 127.0.0.1. The figures are of this
machine at this moment: compare them only within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import harness
from harness import (
    ROOT,
    Samples,
    Scrape,
    agent_command,
    agent_env,
    blackbox,
    cpu_seconds,
    drive_blackbox,
    free_port,
    http_checks,
    nginx,
    process,
    quantile,
    rss_mib,
    scrape_full,
    total,
    tree_cpu,
    wait_port,
)

SCENARIOS = ("start", "base", "cpu", "big", "idle")
SCRAPE_EVERY = 15.0
FAMILIES = ("probe_runs", "vantage_")  # the families a window reads; the rest is not parsed
TRACE_ALL = {"VANTAGE_TRACE_SUCCESS_RATIO": "1"}
Figures = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Output


class Out:
    """The human-readable report: aligned tables, to stdout (or stderr when JSON goes to stdout)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def line(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> None:
        """Columns aligned: the first to the left, the others (figures) to the right."""
        widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

        def fmt(row: Sequence[str]) -> str:
            cells = [
                str(c).ljust(w) if i == 0 else str(c).rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            return indent + "  ".join(cells).rstrip()

        self.line(fmt(headers))
        for row in rows:
            self.line(fmt(row))

    def pairs(self, rows: Sequence[tuple[str, str]], indent: str = "  ") -> None:
        """A label and a value per line, the values lined up."""
        width = max(len(label) for label, _ in rows)
        for label, value in rows:
            self.line(f"{indent}{label.ljust(width)}  {value}")


def num(value: float | None, digits: int = 1, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "> 5 s (beyond the last bucket)" if unit == " ms" else "inf"
    return f"{value:,.{digits}f}{unit}"


# ---------------------------------------------------------------------------------------------
# Measured windows


@dataclass
class Window:
    """One measured stretch of an agent's life: from one /metrics scrape to another, with one every
    15 s between; CPU from just before the first scrape to just before the last, so the window
    pays for the scrapes in it and not for the one that closes it."""

    seconds: float
    cpu: float
    scrapes: int
    before: Samples
    after: Samples

    def delta(self, name: str, **labels: str) -> float:
        return total(self.after, name, **labels) - total(self.before, name, **labels)

    def by_label(self, name: str, label: str, **where: str) -> dict[str, int]:
        """The increase of a counter by one label's values, over the samples matching ``where``.
        A series that the OpenTelemetry SDK's cardinality limit folded into its overflow series
        has lost its labels: it is counted as "cardinality overflow"."""

        def group(samples: Samples) -> dict[str, float]:
            out: dict[str, float] = {}
            for labels, value in samples.get(name, []):
                overflow = labels.get("otel_metric_overflow") == "true"
                if not overflow and any(labels.get(k) != v for k, v in where.items()):
                    continue
                key = "cardinality overflow" if overflow else labels.get(label) or "none"
                out[key] = out.get(key, 0.0) + value
            return out

        now, then = group(self.after), group(self.before)
        return {key: round(value - then.get(key, 0.0)) for key, value in sorted(now.items())}

    def bucket(self, name: str, le: float) -> float:
        """A histogram bucket's increase, its bound compared as a number ("0.01", "1.0e-02")."""

        def count(samples: Samples) -> float:
            return sum(value for labels, value in samples.get(name, []) if float(labels["le"]) == le)

        return count(self.after) - count(self.before)

    @property
    def overflowed(self) -> bool:
        """Whether any of the agent's series hit the SDK's cardinality limit."""
        return any(
            labels.get("otel_metric_overflow") == "true"
            for samples in self.after.values()
            for labels, _ in samples
        )

    @property
    def runs(self) -> float:
        return self.delta("probe_runs_total")

    @property
    def cores(self) -> float:
        return self.cpu / self.seconds


def measure_window(pid: int, port: int, seconds: float) -> Window:
    cpu0, t0 = tree_cpu(pid), time.monotonic()
    before = scrape_full(port, FAMILIES).samples
    scrapes, end = 1, t0 + seconds
    while (at := t0 + SCRAPE_EVERY * scrapes) < end - 1:  # bounded: one scrape per 15 s
        time.sleep(max(0.0, at - time.monotonic()))
        scrape_full(port)
        scrapes += 1
    time.sleep(max(0.0, end - time.monotonic()))
    cpu1, t1 = tree_cpu(pid), time.monotonic()
    after = scrape_full(port, FAMILIES).samples
    return Window(t1 - t0, cpu1 - cpu0, scrapes, before, after)


@contextmanager
def agent(
    checks: list[dict[str, object]], sink: int, extra: dict[str, str] | None = None, timeout: float = 60
) -> Iterator[tuple[int, int, float]]:
    """A single-process agent with OTLP to the sink: (pid, port, seconds until its port opened)."""
    port = free_port()
    env = agent_env(port, checks, sink, extra=extra)
    started = time.monotonic()
    with process(agent_command(), env) as proc:
        wait_port(port, timeout)
        yield proc.pid, port, time.monotonic() - started


# ---------------------------------------------------------------------------------------------
# start


class FirstRequest:
    """A loopback HTTP server that records when the first request's bytes arrive."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.port = int(self._sock.getsockname()[1])
        self.arrived: float | None = None
        self._first = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FirstRequest:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():  # bounded by __exit__
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    data = conn.recv(65536)
                    if data and self.arrived is None:
                        self.arrived = time.monotonic()
                        self._first.set()
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    def wait_for_first(self, timeout: float) -> float | None:
        self._first.wait(timeout)
        return self.arrived


def scenario_start(out: Out, sink: int, starts: int) -> Figures:
    out.line(f"start: spawn to first probe, one http check at 100 ms, OTLP on; median of {starts}")
    times: list[float] = []
    for _ in range(starts):
        with FirstRequest() as server:
            check = {
                "name": "start",
                "type": "http",
                "target": f"http://127.0.0.1:{server.port}/",
                "interval": 0.1,
                "timeout": 0.09,
            }
            env = agent_env(free_port(), [check], sink)
            spawned = time.monotonic()
            with process(agent_command(), env):
                arrived = server.wait_for_first(30)
            if arrived is None:
                out.line("  no request reached the target within 30 s")
                return {"error": "no first request within 30 s"}
            times.append(arrived - spawned)
    median = statistics.median(times)
    out.pairs(
        [
            ("spawn to first request, median", f"{median * 1000:,.0f} ms  (target < 1,000 ms)"),
            ("each start", "  ".join(f"{t * 1000:,.0f}" for t in times) + " ms"),
            ("of which the check's phase", "at most 100 ms (its interval)"),
        ]
    )
    return {"seconds_median": median, "seconds": times, "phase_wait_max_seconds": 0.1}


# ---------------------------------------------------------------------------------------------
# base


def scenario_base(out: Out, target: str, sink: int, seconds: float, warmup: float) -> Figures:
    out.line(f"base: an idle agent, one http check at 60 s, OTLP on, {seconds:g} s measured")
    with agent(http_checks(1, 60.0, target), sink) as (pid, port, _):
        time.sleep(warmup)
        window = measure_window(pid, port, seconds)
        rss = rss_mib(pid)
    out.pairs(
        [
            (
                "CPU",
                f"{window.cores:.4f} cores  (/metrics scraped {window.scrapes}x in {window.seconds:.0f} s)",
            ),
            ("RSS", f"{rss:.1f} MiB"),
        ]
    )
    return {"cores": window.cores, "rss_mib": rss, "seconds": window.seconds, "scrapes": window.scrapes}


# ---------------------------------------------------------------------------------------------
# cpu


def agent_at_rate(target: str, sink: int, rate: int, seconds: float, warmup: float, traced: bool) -> Figures:
    with agent(http_checks(rate, 1.0, target), sink, TRACE_ALL if traced else None) as (pid, port, _):
        time.sleep(warmup)
        w = measure_window(pid, port, seconds)
        rss = rss_mib(pid)
    return {
        "probes_per_s": w.runs / w.seconds,
        "us_per_probe": w.cpu / max(w.runs, 1) * 1e6,
        "cores": w.cores,
        "failed": w.delta("probe_runs_total", result="failure"),
        "skipped": w.delta("vantage_runs_skipped_total"),
        "spans_dropped": w.delta("vantage_spans_dropped_total"),
        "export_failures": w.delta("vantage_export_failures_total"),
        "scrapes": w.scrapes,
        "seconds": w.seconds,
        "rss_mib": rss,
    }


def blackbox_at_rate(target: str, rate: int, seconds: float, warmup: float) -> Figures:
    with blackbox() as (port, pid):
        asyncio.run(drive_blackbox(port, target, rate, warmup))
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        ok, failed = asyncio.run(drive_blackbox(port, target, rate, seconds))
        cpu1, t1 = cpu_seconds(pid), time.monotonic()
        rss = rss_mib(pid)
    probes = ok + failed
    return {
        "probes_per_s": probes / (t1 - t0),
        "us_per_probe": (cpu1 - cpu0) / max(probes, 1) * 1e6,
        "cores": (cpu1 - cpu0) / (t1 - t0),
        "failed": failed,
        "seconds": t1 - t0,
        "rss_mib": rss,
    }


def knows_trace_ratio() -> bool | None:
    """Whether the agent under test has the VANTAGE_TRACE_SUCCESS_RATIO setting (None: unknown)."""
    code = (
        "from agent.config.settings import AgentSettings as S\nprint('trace_success_ratio' in S.model_fields)"
    )
    try:
        answer = subprocess.run(
            [sys.executable, "-c", code],
            env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return None
    return answer == "True"


def scenario_cpu(
    out: Out, target: str, sink: int, rate: int, seconds: float, warmup: float, repeat: int
) -> Figures:
    out.line(
        f"cpu: {rate} probes/s ({rate} http checks at 1 s), fresh connection per probe, {seconds:g} s "
        f"measured after {warmup:g} s, {repeat} repeats; agent: OTLP traces and metrics, /metrics "
        "every 15 s"
    )
    known = knows_trace_ratio()
    if known is False:
        out.line(
            "  NOTE: this agent has no VANTAGE_TRACE_SUCCESS_RATIO setting: it traces every run in "
            "both agent runs"
        )
    runs: list[Figures] = []
    order = ["blackbox", "default", "traced"]
    for index in range(repeat):
        figures: Figures = {"repeat": index + 1}
        for kind in order[index % 3 :] + order[: index % 3]:
            if kind == "blackbox":
                figures[kind] = blackbox_at_rate(target, rate, seconds, warmup)
            else:
                figures[kind] = agent_at_rate(target, sink, rate, seconds, warmup, kind == "traced")
        base = figures["blackbox"]["us_per_probe"]
        figures["ratio_default"] = figures["default"]["us_per_probe"] / base
        figures["ratio_traced"] = figures["traced"]["us_per_probe"] / base
        runs.append(figures)
    labels = {
        "blackbox": "blackbox_exporter",
        "default": "vantage, default tracing",
        "traced": "vantage, every run traced",
    }
    rows = []
    for figures in runs:
        for kind in order:
            f = figures[kind]
            ratio = figures.get(f"ratio_{kind}")
            rows.append(
                [
                    f"{figures['repeat']}  {labels[kind]}",
                    num(f["probes_per_s"]),
                    num(f["us_per_probe"], 0),
                    num(f["cores"], 3),
                    num(f["rss_mib"]),
                    str(round(f["failed"])),
                    "-" if kind == "blackbox" else str(round(f["skipped"])),
                    "-" if kind == "blackbox" else str(round(f["spans_dropped"])),
                    "-" if kind == "blackbox" else str(round(f["export_failures"])),
                    f"{ratio:.2f}x" if ratio is not None else "",
                ]
            )
    out.table(
        [
            "run",
            "probes/s",
            "CPU µs/probe",
            "cores",
            "RSS MiB",
            "failed",
            "skipped",
            "spans dropped",
            "export failures",
            "ratio",
        ],
        rows,
    )
    median_default = statistics.median(r["ratio_default"] for r in runs)
    median_traced = statistics.median(r["ratio_traced"] for r in runs)
    out.pairs(
        [
            (
                "ratio to blackbox_exporter, default tracing",
                " ".join(f"{r['ratio_default']:.2f}x" for r in runs)
                + f"; median {median_default:.2f}x (target <= 0.40x)",
            ),
            (
                "ratio to blackbox_exporter, every run traced",
                " ".join(f"{r['ratio_traced']:.2f}x" for r in runs) + f"; median {median_traced:.2f}x",
            ),
        ]
    )
    if any(r[k]["spans_dropped"] for r in runs for k in ("default", "traced")):
        out.line("  NOTE: spans were dropped: the agent's figure leaves out the cost of exporting them")
    return {
        "rate": rate,
        "runs": runs,
        "ratio_default_median": median_default,
        "ratio_traced_median": median_traced,
        "agent_knows_trace_success_ratio": known,
    }


# ---------------------------------------------------------------------------------------------
# big


def scenario_big(out: Out, target: str, sink: int, checks: int, seconds: float, warmup: float) -> Figures:
    out.line(
        f"big: {checks:,} http checks at 1 s in one process (VANTAGE_WORKERS=1), OTLP on, "
        f"/metrics every 15 s; {seconds:g} s measured after {warmup:g} s"
    )
    with agent(http_checks(checks, 1.0, target), sink, timeout=120) as (pid, port, _):
        time.sleep(warmup)
        w = measure_window(pid, port, seconds)
        rss = rss_mib(pid)
    expected = checks * w.seconds / 1.0
    started = w.delta("vantage_scheduler_lateness_seconds_count")
    on_time = w.bucket("vantage_scheduler_lateness_seconds_bucket", 0.01)
    skipped = w.by_label("vantage_runs_skipped_total", "cause")
    discarded = skipped.pop("overload", 0)
    failed = {r: c for r, c in w.by_label("probe_runs_total", "reason", result="failure").items() if c}
    figures: Figures = {
        "checks": checks,
        "lateness_p50_s": quantile(w.after, w.before, 0.50),
        "lateness_p99_s": quantile(w.after, w.before, 0.99),
        "started_within_10ms_share": on_time / started if started else float("nan"),
        "runs": w.runs,
        "expected": expected,
        "skipped_by_cause": skipped,
        "discarded": discarded,
        "failed_by_reason": failed,
        "spans_dropped": w.delta("vantage_spans_dropped_total"),
        "export_failures": w.delta("vantage_export_failures_total"),
        "cores": w.cores,
        "rss_mib": rss,
        "seconds": w.seconds,
        "scrapes": w.scrapes,
    }
    out.pairs(
        [
            ("start lateness p50", num(figures["lateness_p50_s"] * 1000, 1, " ms")),
            ("start lateness p99", num(figures["lateness_p99_s"] * 1000, 1, " ms") + "  (target < 10 ms)"),
            ("runs started within 10 ms", num(figures["started_within_10ms_share"] * 100, 2, " %")),
            (
                "runs done / expected",
                f"{w.runs:,.0f} / {expected:,.0f}  ({w.runs / expected * 100:.1f} %, "
                f"{w.runs / w.seconds:,.0f}/s)",
            ),
            (
                "skipped, by cause",
                ", ".join(f"{cause} {count:,}" for cause, count in skipped.items()) or "none",
            ),
            ("discarded (overload)", f"{discarded:,}"),
            ("failed, by reason", ", ".join(f"{r} {c:,}" for r, c in failed.items()) or "none"),
            (
                "OTLP",
                f"{figures['spans_dropped']:,.0f} spans dropped, "
                f"{figures['export_failures']:,.0f} exports failed",
            ),
            ("agent CPU, RSS", f"{w.cores:.2f} cores, {rss:.1f} MiB"),
        ]
    )
    if w.overflowed:
        out.line(
            "  NOTE: some of the agent's series hit the OpenTelemetry SDK's cardinality limit "
            '(otel_metric_overflow="true"): their labels are lost, their counts are in the totals'
        )
    figures["cardinality_overflow"] = w.overflowed
    return figures


# ---------------------------------------------------------------------------------------------
# idle


def attempt(port: int, families: tuple[str, ...] = ()) -> Scrape | str:
    """A scrape, or what went wrong with it: one failed scrape does not end a long scenario."""
    try:
        return scrape_full(port, families)
    except (OSError, RuntimeError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"


def scenario_idle(out: Out, target: str, sink: int, checks: int, wait: float, scrapes: int) -> Figures:
    out.line(
        f"idle: {checks:,} http checks at 60 s, probing, OTLP on, /metrics every 15 s; RSS {wait:g} s "
        f"after the port opened, then {scrapes} scrapes measured"
    )
    interval = 60.0
    mark_at = interval if wait >= interval + SCRAPE_EVERY else wait / 2
    errors: list[str] = []
    with agent(http_checks(checks, interval, target), sink, timeout=300) as (pid, port, port_open):
        opened = time.monotonic()
        rss_seen: list[tuple[float, float]] = []
        mark: tuple[float, float, Scrape | str] | None = None
        tick = 0
        while (at := opened + SCRAPE_EVERY * tick) < opened + wait:  # bounded: one per 15 s
            time.sleep(max(0.0, at - time.monotonic()))
            now, cpu = time.monotonic(), tree_cpu(pid)
            rss_seen.append((now - opened, rss_mib(pid)))
            if mark is None and now - opened >= mark_at:
                answer = attempt(port, FAMILIES)
                mark = (now, cpu, answer)
            else:
                answer = attempt(port)
            if isinstance(answer, str):
                errors.append(f"at {now - opened:.0f} s: {answer}")
            tick += 1
        time.sleep(max(0.0, opened + wait - time.monotonic()))
        now, cpu, rss = time.monotonic(), tree_cpu(pid), rss_mib(pid)
        end = attempt(port, FAMILIES)
        if isinstance(end, str):
            errors.append(f"at {now - opened:.0f} s: {end}")
        at_interval = min(rss_seen, key=lambda s: abs(s[0] - interval))
        measured: list[Figures] = []
        for _ in range(scrapes):  # bounded in count
            cpu_a, t_a = tree_cpu(pid), time.monotonic()
            time.sleep(5.0)
            cpu_b, t_b = tree_cpu(pid), time.monotonic()
            answer = attempt(port)
            cpu_c, t_c = tree_cpu(pid), time.monotonic()
            if isinstance(answer, str):
                errors.append(f"measured scrape: {answer}")
                continue
            background = (cpu_b - cpu_a) / (t_b - t_a)
            measured.append(
                {
                    "cpu_s": cpu_c - cpu_b,
                    "cpu_net_s": cpu_c - cpu_b - background * (t_c - t_b),
                    "wall_s": t_c - t_b,
                    "wire_bytes": answer.wire_bytes,
                    "text_bytes": answer.text_bytes,
                    "content_type": answer.content_type,
                    "encoding": answer.encoding,
                }
            )
    second = None
    if mark is not None and isinstance(end, Scrape) and isinstance(m_scrape := mark[2], Scrape):
        m_now, m_cpu, _ = mark
        window = Window(now - m_now, cpu - m_cpu, 0, m_scrape.samples, end.samples)
        second = {
            "seconds": window.seconds,
            "cores": window.cores,
            "probes_per_s": window.runs / window.seconds,
            "skipped": window.delta("vantage_runs_skipped_total"),
            "spans_dropped": window.delta("vantage_spans_dropped_total"),
            "export_failures": window.delta("vantage_export_failures_total"),
            "cardinality_overflow": window.overflowed,
        }
    scrape_cpu = statistics.median(m["cpu_s"] for m in measured) if measured else float("nan")
    scrape_net = statistics.median(m["cpu_net_s"] for m in measured) if measured else float("nan")
    figures = {
        "checks": checks,
        "wait_s": wait,
        "port_open_s": port_open,
        "rss_mib": rss,
        "rss_mib_at_one_interval": at_interval[1],
        "rss_mib_peak_seen": max([rss, *(r for _, r in rss_seen)]),
        "after_one_interval": second,
        "scrape_cpu_s_median": scrape_cpu,
        "scrape_cpu_net_s_median": scrape_net,
        "scrapes": measured,
        "scrape_errors": errors,
    }
    rows = [
        ("port open after", f"{port_open:.1f} s"),
        (f"RSS after {wait:g} s", f"{rss:.1f} MiB  (target < 100 MB = {100e6 / 2**20:.1f} MiB)"),
        (f"RSS after {at_interval[0]:.0f} s", f"{at_interval[1]:.1f} MiB"),
    ]
    if second:
        rows.append(
            (
                f"after {mark_at:g} s, over {second['seconds']:.0f} s",
                f"{second['probes_per_s']:,.1f} probes/s (expected {checks / interval:,.1f}), "
                f"{second['skipped']:,.0f} skipped, {second['cores']:.3f} cores; OTLP: "
                f"{second['spans_dropped']:,.0f} spans dropped, {second['export_failures']:,.0f} "
                "exports failed",
            )
        )
    if measured:
        m = measured[0]
        rows += [
            (
                "one /metrics scrape, CPU",
                f"{scrape_cpu:.3f} s median of {len(measured)} (target < 1 s); "
                f"net of the probing meanwhile {scrape_net:.3f} s",
            ),
            ("each scrape, CPU s", "  ".join(f"{x['cpu_s']:.3f}" for x in measured)),
            ("each scrape, wall s", "  ".join(f"{x['wall_s']:.3f}" for x in measured)),
            (
                "scrape size",
                f"{m['wire_bytes']:,} bytes on the wire ({m['encoding']}), {m['text_bytes']:,} "
                f"uncompressed; {m['content_type']}",
            ),
        ]
    out.pairs(rows)
    for error in errors:
        out.line(f"  a /metrics scrape failed, {error}")
    if second and second["cardinality_overflow"]:
        out.line(
            "  NOTE: some of the agent's series hit the OpenTelemetry SDK's cardinality limit "
            '(otel_metric_overflow="true"): their labels are lost, their counts are in the totals'
        )
    return figures


# ---------------------------------------------------------------------------------------------
# sizing


def sizing(out: Out, results: Figures) -> Figures:
    base, cpu, idle, big = (
        None if "error" in results.get(k, {"error": ""}) else results[k]
        for k in ("base", "cpu", "idle", "big")
    )
    base_cores = base["cores"] if base else None
    base_mib = base["rss_mib"] if base else None
    per_probe = None  # cores per probe/s
    if cpu and base_cores is not None:
        per_probe = statistics.median(
            (r["default"]["cores"] - base_cores) / r["default"]["probes_per_s"] for r in cpu["runs"]
        )
    per_check_mib = per_check_cores = None
    if idle and base_mib is not None:
        per_check_mib = (idle["rss_mib"] - base_mib) / idle["checks"]
    if idle and idle.get("after_one_interval") and base_cores is not None and per_probe is not None:
        second = idle["after_one_interval"]
        beyond = second["cores"] - base_cores - second["probes_per_s"] * per_probe
        per_check_cores = beyond / idle["checks"]

    def scaled(value: float | None, by: float) -> float | None:
        return None if value is None else value * by

    figures = {
        "base_cores": base_cores,
        "base_mib": base_mib,
        "cores_per_100_probes_per_s": scaled(per_probe, 100),
        "kib_per_configured_check": scaled(per_check_mib, 1024),
        "cores_per_1000_configured_checks": scaled(per_check_cores, 1000),
    }

    def predict(checks: int, interval: float) -> tuple[float | None, float | None]:
        cores = mib = None
        if base_cores is not None and per_probe is not None and per_check_cores is not None:
            cores = base_cores + checks / interval * per_probe + checks * per_check_cores
        if base_mib is not None and per_check_mib is not None:
            mib = base_mib + checks * per_check_mib
        return cores, mib

    out.line("sizing, one agent process (VANTAGE_WORKERS=1), default telemetry:")
    out.table(
        ["", "CPU (cores)", "memory"],
        [
            ["base (idle agent)", num(base_cores, 3), num(base_mib, 1, " MiB")],
            ["per 100 probes/s", num(figures["cores_per_100_probes_per_s"], 3), ""],
            [
                "per 1,000 configured checks",
                num(figures["cores_per_1000_configured_checks"], 3),
                num(scaled(per_check_mib, 1000), 1, " MiB"),
            ],
            ["per configured check", "", num(figures["kib_per_configured_check"], 1, " KiB")],
        ],
    )
    examples = []
    for checks, interval in ((100, 60.0), (1_000, 60.0), (10_000, 60.0), (1_000, 1.0)):
        cores, mib = predict(checks, interval)
        examples.append([f"{checks:,} checks at {interval:g} s", num(cores, 2), num(mib, 0, " MiB")])
        figures[f"predicted_{checks}_at_{interval:g}s"] = {"cores": cores, "mib": mib}
    out.line("  as this model gives it:")
    out.table(["", "CPU (cores)", "memory"], examples, indent="    ")
    if big:
        cores, mib = predict(big["checks"], 1.0)
        figures["big_measured"] = {"cores": big["cores"], "mib": big["rss_mib"]}
        out.line(
            f"  cross-check, {big['checks']:,} checks at 1 s: predicted {num(cores, 2)} cores, "
            f"{num(mib, 0, ' MiB')}; measured {big['cores']:.2f} cores, {big['rss_mib']:.0f} MiB "
            f"(at {big['runs'] / big['seconds']:,.0f} runs/s)"
        )
    for text in (
        "from: base = the base scenario;",
        "      per 100 probes/s = (cpu scenario's agent cores, default tracing - base) / probes/s x 100,",
        "      the median of the repeats;",
        "      per configured check memory = (idle RSS - base RSS) / checks;",
        "      per 1,000 configured checks CPU = (idle cores over its second interval - base",
        "      - idle probes/s x CPU per probe) / checks x 1,000",
    ):
        out.line("  " + text)
    return figures


# ---------------------------------------------------------------------------------------------


def describe() -> Figures:
    def run(args: list[str]) -> str:
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            return ""
        return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) else ""

    commit = run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"])
    bb = shutil.which("prometheus-blackbox-exporter") or "prometheus-blackbox-exporter"
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "commit": commit,
        "blackbox_exporter": run([bb, "--version"]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def run_scenario(name: str, out: Out, args: argparse.Namespace, sink: int) -> Figures:
    target = f"http://127.0.0.1:{sink}/"
    if name == "start":
        return scenario_start(out, sink, args.starts)
    if name == "base":
        return scenario_base(out, target, sink, args.base_seconds, args.warmup)
    if name == "cpu":
        return scenario_cpu(out, target, sink, args.rate, args.seconds, args.warmup, args.repeat)
    if name == "big":
        return scenario_big(out, target, sink, args.big, args.big_seconds, args.warmup)
    return scenario_idle(out, target, sink, args.idle, args.idle_wait, args.idle_scrapes)


def plain(value: Any) -> Any:
    """Strict JSON: NaN (no data) as null, an infinite quantile (beyond the last bucket) as "+Inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else "+Inf"
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(SCENARIOS), help="scenarios, comma-separated")
    parser.add_argument("--rate", type=int, default=300, help="cpu: probes per second")
    parser.add_argument("--seconds", type=float, default=60, help="cpu: measured seconds per run")
    parser.add_argument(
        "--metric-interval",
        type=float,
        default=60,
        help="seconds between OTLP metric exports (OTEL_METRIC_EXPORT_INTERVAL; 60 is the default)",
    )
    parser.add_argument("--warmup", type=float, default=5, help="seconds before a window starts")
    parser.add_argument("--repeat", type=int, default=3, help="cpu: repeats")
    parser.add_argument("--big", type=int, default=1000, help="big: checks at 1 s")
    parser.add_argument("--big-seconds", type=float, default=60, help="big: measured seconds")
    parser.add_argument("--idle", type=int, default=10_000, help="idle: checks at 60 s")
    parser.add_argument("--idle-wait", type=float, default=130, help="idle: seconds before RSS is read")
    parser.add_argument("--idle-scrapes", type=int, default=3, help="idle: scrapes measured")
    parser.add_argument("--starts", type=int, default=5, help="start: cold starts")
    parser.add_argument("--base-seconds", type=float, default=30, help="base: measured seconds")
    parser.add_argument(
        "--json", nargs="?", const="-", metavar="FILE", help="write every figure as JSON (stdout: -)"
    )
    args = parser.parse_args()
    harness.METRIC_INTERVAL = args.metric_interval
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")
    out = Out(sys.stderr if args.json == "-" else sys.stdout)
    for tool in ("nginx", "prometheus-blackbox-exporter"):
        if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists()):
            out.line(
                f"{tool} is missing: run bench/setup.sh (Debian's nginx-light, prometheus-blackbox-exporter)"
            )
            return 2
    machine = describe()
    out.line(
        f"{machine['cpus']} CPUs; Python {machine['python']}; agent {machine['commit'] or '?'}; "
        f"{machine['blackbox_exporter'] or 'blackbox_exporter ?'}; {machine['date']}"
    )
    results: Figures = {"machine": machine, "args": vars(args)}
    began = time.monotonic()
    with nginx() as port:
        for name in SCENARIOS:
            if name not in only:
                continue
            out.line()
            started = time.monotonic()
            try:
                results[name] = run_scenario(name, out, args, port)
            except Exception as exc:  # one scenario's failure leaves the others' figures
                out.line(f"  {name} FAILED: {type(exc).__name__}: {exc}")
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            results[name]["wall_s"] = time.monotonic() - started
    out.line()
    results["sizing"] = sizing(out, results)
    results["wall_s"] = time.monotonic() - began
    out.line(f"\nwall time {results['wall_s']:.0f} s")
    if args.json:
        text = json.dumps(plain(results), indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
