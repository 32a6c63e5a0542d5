"""What the benchmarks share: the processes they run (nginx, blackbox_exporter, the agent), the
process figures they read from /proc, and /metrics scraped and read as a Prometheus server would.

Every wait is bounded in time and every load loop in count; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "ROOT",
    "Samples",
    "Scrape",
    "agent_command",
    "agent_env",
    "blackbox",
    "cpu_seconds",
    "drive_blackbox",
    "free_port",
    "http_checks",
    "nginx",
    "process",
    "quantile",
    "rss_mib",
    "runs",
    "scrape",
    "scrape_full",
    "total",
    "tree",
    "tree_cpu",
    "wait_port",
]

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
METRIC_INTERVAL = 60.0
"""Seconds between the agent's OTLP metric exports (``bench/run.py --metric-interval``)."""

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    keepalive_timeout 5;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        # The OTLP sink: an empty 200 is an empty export response, whatever the size of the export
        # (nginx's default limit of 1 MiB answered 413 to the metrics of 1,000 checks and more).
        location /v1/ {{ client_max_body_size 0; return 200; }}
        location / {{ default_type application/json; return 200 '{{"ok":true}}'; }}
    }}
}}
"""

BLACKBOX_CONF = """
modules:
  http_2xx:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
"""

# What Prometheus 2.x asks of a target (scrape/scrape.go): OpenMetrics first, compressed.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU time, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree(pid: int) -> list[int]:
    """A process and its children (the agent's worker processes, when there are any)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = [int(p) for p in children.read_text().split()] if children.exists() else []
    return [pid, *kids]


def tree_cpu(pid: int) -> float:
    return sum(cpu_seconds(p) for p in tree(pid))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@contextmanager
def process(args: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    # Output goes to a file: an unread pipe fills up and then blocks the process that writes to it.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        yield proc
    except BaseException:
        # What went wrong may be in the process's own words: show its last lines.
        log.seek(0)
        tail = log.read()[-3000:].decode(errors="replace").strip()
        if tail:
            print(f"--- the last output of {Path(args[0]).name} {' '.join(args[1:3])}:", file=sys.stderr)
            print(tail, file=sys.stderr)
        raise
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


Samples = dict[str, list[tuple[dict[str, str], float]]]


@dataclass
class Scrape:
    """One /metrics answer: its samples (of the families asked for), its size and its timing."""

    samples: Samples = field(default_factory=dict)
    wire_bytes: int = 0
    text_bytes: int = 0
    content_type: str = ""
    encoding: str = "identity"
    seconds: float = 0.0


def _keep(text: str, prefixes: Iterable[str]) -> str:
    """Only the lines of the families asked for: parsing all of a 10,000-check exposition in the
    benchmark would take the CPU that the agent is being measured on."""
    heads = tuple(prefixes)
    metas = tuple(f"# {kind} {p}" for kind in ("HELP", "TYPE", "UNIT") for p in heads)
    return "".join(
        line + "\n" for line in text.splitlines() if line.startswith(heads + metas) or line == "# EOF"
    )


def scrape_full(port: int, families: Iterable[str] | None = (), timeout: float = 120) -> Scrape:
    """Scrape /metrics as Prometheus does (its Accept header, gzip) and parse the families whose
    names start with one of ``families`` (all with None, none with an empty list)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics",
        headers={"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"},
    )
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
            content_type = response.headers.get("Content-Type", "")
            encoding = response.headers.get("Content-Encoding", "identity")
    except urllib.error.HTTPError as exc:
        said = " ".join(exc.read()[:300].decode(errors="replace").split())
        raise RuntimeError(
            f"/metrics answered {exc.code} after {time.monotonic() - started:.1f} s: {said}"
        ) from None
    seconds = time.monotonic() - started
    raw = gzip.decompress(body) if encoding == "gzip" else body
    out = Scrape(
        wire_bytes=len(body),
        text_bytes=len(raw),
        content_type=content_type,
        encoding=encoding,
        seconds=seconds,
    )
    if families is not None and not list(families):
        return out
    text = raw.decode()
    if families is not None:
        text = _keep(text, families)
    parse = openmetrics_families if content_type.startswith("application/openmetrics-text") else None
    for family in (parse or text_string_to_metric_families)(text):
        for sample in family.samples:
            out.samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def scrape(port: int, families: Iterable[str] | None = None) -> Samples:
    return scrape_full(port, families).samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a metric's samples, over those with the given label values."""
    return sum(
        value
        for have, value in samples.get(name, [])
        if all(have.get(key) == want for key, want in labels.items())
    )


def quantile(
    samples: Samples,
    before: Samples,
    q: float,
    name: str = "vantage_scheduler_lateness_seconds_bucket",
) -> float:
    """histogram_quantile (as Prometheus computes it: linear inside the bucket) over a histogram's
    increase between two scrapes. Above the highest finite bucket, that bucket's bound is returned
    as ``inf``: the histogram says no more."""

    def buckets(s: Samples) -> dict[float, float]:
        out: dict[float, float] = {}
        for labels, value in s.get(name, []):
            le = float(labels["le"])
            out[le] = out.get(le, 0.0) + value  # summed over label sets (and worker processes)
        return out

    now, then = buckets(samples), buckets(before)
    bounds = sorted(now)
    counts = [now[b] - then.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return float("nan")
    rank, lower, previous = q * counts[-1], 0.0, 0.0
    for bound, cumulative in zip(bounds, counts, strict=True):
        if cumulative >= rank:
            if bound == float("inf"):
                return float("inf")
            return lower + (bound - lower) * (rank - previous) / max(cumulative - previous, 1e-9)
        lower, previous = bound, cumulative
    return lower


def agent_env(
    port: int,
    checks: list[dict[str, object]],
    sink: int,
    otlp: bool = True,
    workers: int = 1,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The agent's environment: the checks (through a file: one environment variable holds at most
    128 KiB), its port, and OTLP traces and metrics to the nginx sink when ``otlp``.

    The agent measured is the one of this checkout (PYTHONPATH), whatever the virtualenv points at."""
    checks_file = Path(tempfile.mkdtemp(prefix="vantage-bench-")) / "checks.yaml"
    checks_file.write_text(yaml.safe_dump({"checks": checks}))
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "VANTAGE_CHECKS_FILE": str(checks_file),
        "VANTAGE_PORT": str(port),
        "VANTAGE_HOST": "127.0.0.1",
        "VANTAGE_CONCURRENCY": "1000",
        "VANTAGE_LOG_LEVEL": "warning",
        "VANTAGE_WORKERS": str(workers),
    }
    if otlp:
        env |= {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink}",
            # Room for every span of a 5 s batch at 1,000 runs/s: a dropped span would flatter the
            # agent. Metrics at METRIC_INTERVAL: the SDK's default 60 s unless the run asks for
            # more often (a measured window as long as the interval holds exactly one export).
            "OTEL_BSP_MAX_QUEUE_SIZE": "8192",
            "OTEL_METRIC_EXPORT_INTERVAL": str(int(METRIC_INTERVAL * 1000)),
        }
    return env | (extra or {})


def agent_command() -> list[str]:
    return [sys.executable, "-m", "agent", "run"]


def http_checks(count: int, interval: float, target: str, prefix: str = "bench") -> list[dict[str, object]]:
    """``count`` http checks of ``target``, a fresh connection per run (the probe's default, said
    here so that the benchmark keeps measuring it if the default changes)."""
    return [
        {
            "name": f"{prefix}-{i:05d}",
            "type": "http",
            "target": target,
            "interval": interval,
            "timeout": min(5.0, interval * 0.9),
            "settings": {"fresh_connection": True},
        }
        for i in range(count)
    ]


def runs(port: int) -> tuple[int, int]:
    """Runs and failed runs so far, from the status API (cheaper than rendering /metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/checks", timeout=60) as response:
        states = json.load(response)["checks"]
    return sum(s["runs"] for s in states), sum(s["failures"] for s in states)


@contextmanager
def nginx() -> Iterator[int]:
    """A local nginx on a free port: the probe target, and an OTLP sink that answers 200."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=tmp, port=port))
        with process([binary, "-c", str(conf), "-e", f"{tmp}/error.log"]):
            wait_port(port)
            yield port


@contextmanager
def blackbox() -> Iterator[tuple[int, int]]:
    """Debian's blackbox_exporter on a free port, with an http_2xx module: (port, pid)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "blackbox.yml"
        conf.write_text(BLACKBOX_CONF)
        args = [
            shutil.which("prometheus-blackbox-exporter") or "prometheus-blackbox-exporter",
            f"--config.file={conf}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ]
        with process(args) as proc:
            wait_port(port)
            yield port, proc.pid


async def drive_blackbox(port: int, target: str, rate: float, seconds: float) -> tuple[int, int]:
    """Ask blackbox_exporter for ``rate`` probes a second for ``seconds``, as Prometheus scrapes of
    ``/probe`` would (the driver keeps its connections to blackbox_exporter open; blackbox_exporter
    opens a fresh connection to the target for every probe). Returns (succeeded, failed)."""
    url = f"http://127.0.0.1:{port}/probe"
    params = {"module": "http_2xx", "target": target}
    ok = failed = 0
    count = int(rate * seconds)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=500)) as session:

        async def one() -> None:
            nonlocal ok, failed
            try:
                async with session.get(url, params=params) as response:
                    body = await response.text()
                    ok += "probe_success 1" in body
                    failed += "probe_success 1" not in body
            except aiohttp.ClientError:
                failed += 1

        start = time.monotonic()
        tasks = []
        for i in range(count):  # bounded in count, and by the deadline below
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.monotonic() - start > seconds * 2:
                break
            tasks.append(asyncio.create_task(one()))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    return ok, failed
