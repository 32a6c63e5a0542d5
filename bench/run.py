"""Benchmark: the agent against blackbox_exporter, on loopback, at the same probe rate.

Starts a local nginx (the probe target, and the OTLP sink for the agent's full telemetry), Debian's
prometheus-blackbox-exporter, and the agent, then prints for each: probes/s, CPU microseconds per
probe (process CPU time / probes), RSS, and for the agent the start lateness p50/p99.

    make bench                       # or: .venv/bin/python bench/run.py [--rate 200] [--seconds 20]

Needs Debian's nginx-light and prometheus-blackbox-exporter (bench/setup.sh installs them).
Every load loop is bounded in count and time; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

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
        location /v1/ {{ return 200; }}          # OTLP sink: an empty 200 is an empty export response
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree(pid: int) -> list[int]:
    """A process and its children (the agent's worker processes)."""
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


def scrape(port: int) -> Samples:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=120) as response:
        text = response.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def total(samples: Samples, name: str) -> float:
    return sum(value for _, value in samples.get(name, []))


def quantile(
    samples: Samples,
    before: Samples,
    q: float,
) -> float:
    """histogram_quantile over the lateness histogram's increase between two scrapes."""

    def buckets(s: Samples) -> dict[float, float]:
        out: dict[float, float] = {}
        for labels, value in s.get("vantage_scheduler_lateness_seconds_bucket", []):
            le = float(labels["le"])
            out[le] = out.get(le, 0.0) + value  # summed over worker processes
        return out

    now, then = buckets(samples), buckets(before)
    bounds = sorted(now)
    counts = [now[b] - then.get(b, 0.0) for b in bounds]
    count = counts[-1]
    if count <= 0:
        return float("nan")
    rank, lower, previous = q * count, 0.0, 0.0
    for bound, cumulative in zip(bounds, counts, strict=True):
        if cumulative >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - previous) / max(cumulative - previous, 1e-9)
        lower, previous = bound, cumulative
    return lower


def agent_env(
    port: int, checks: list[dict[str, object]], sink: int, otlp: bool = True, workers: int = 1
) -> dict[str, str]:
    # A big check set goes through a file: one environment variable holds at most 128 KiB.
    checks_file = Path(tempfile.mkdtemp(prefix="vantage-bench-")) / "checks.yaml"
    checks_file.write_text(yaml.safe_dump({"checks": checks}))
    env = {
        "PATH": os.environ.get("PATH", ""),
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
            "OTEL_BSP_MAX_QUEUE_SIZE": "8192",
            "OTEL_METRIC_EXPORT_INTERVAL": "10000",
        }
    return env


def http_checks(count: int, interval: float, target: str) -> list[dict[str, object]]:
    return [
        {
            "name": f"bench-{i:05d}",
            "type": "http",
            "target": target,
            "interval": interval,
            "timeout": min(5.0, interval * 0.9),
        }
        for i in range(count)
    ]


def runs(port: int) -> tuple[int, int]:
    """Runs and failed runs so far, from the status API (cheaper than rendering /metrics)."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/checks", timeout=60) as response:
        states = json.load(response)["checks"]
    return sum(s["runs"] for s in states), sum(s["failures"] for s in states)


def measure_agent(
    checks: list[dict[str, object]],
    sink: int,
    seconds: float,
    warmup: float,
    workers: int = 1,
    otlp: bool = True,
) -> dict[str, float]:
    """Run the agent with OTLP export on, scraped every 15s as a Prometheus server would.

    With workers, CPU and memory are summed over the supervisor and its worker processes.
    """
    port = free_port()
    env = agent_env(port, checks, sink, otlp=otlp, workers=workers)
    with process([sys.executable, "-m", "agent", "run"], env) as proc:
        wait_port(port)
        time.sleep(warmup)
        before = scrape(port)
        (runs0, failed0), cpu0, t0 = runs(port), tree_cpu(proc.pid), time.monotonic()
        deadline = t0 + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(15.0, left))
            if deadline - time.monotonic() > 1:
                scrape(port)  # the scrape's cost is part of the agent's telemetry cost
        (runs1, failed1), cpu1, t1 = runs(port), tree_cpu(proc.pid), time.monotonic()
        after = scrape(port)
        rss = sum(rss_mib(pid) for pid in tree(proc.pid))
    probes = runs1 - runs0
    skipped = total(after, "vantage_runs_skipped_total") - total(before, "vantage_runs_skipped_total")
    return {
        "probes/s": probes / (t1 - t0),
        "cpu_us_per_probe": (cpu1 - cpu0) / max(probes, 1) * 1e6,
        "rss_mib": rss,
        "lateness_p50_ms": quantile(after, before, 0.50) * 1000,
        "lateness_p99_ms": quantile(after, before, 0.99) * 1000,
        "failed": failed1 - failed0,
        "skipped": skipped,
    }


async def drive_blackbox(port: int, target: str, rate: float, seconds: float) -> tuple[int, int]:
    """Ask blackbox_exporter for `rate` probes a second, as Prometheus scrapes would."""
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


def measure_blackbox(target: str, rate: float, seconds: float, warmup: float) -> dict[str, float]:
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
            asyncio.run(drive_blackbox(port, target, rate, warmup))
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            ok, failed = asyncio.run(drive_blackbox(port, target, rate, seconds))
            cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
            rss = rss_mib(proc.pid)
    probes = ok + failed
    return {
        "probes/s": probes / (t1 - t0),
        "cpu_us_per_probe": (cpu1 - cpu0) / max(probes, 1) * 1e6,
        "rss_mib": rss,
        "failed": failed,
    }


def measure_idle(count: int) -> dict[str, float]:
    port = free_port()
    checks = http_checks(count, 3600.0, "http://127.0.0.1:9/")
    env = agent_env(port, checks, 0, otlp=False)
    with process([sys.executable, "-m", "agent", "run"], env) as proc:
        wait_port(port, timeout=120)
        time.sleep(3)
        return {"checks": count, "rss_mib": rss_mib(proc.pid)}


@contextmanager
def nginx() -> Iterator[int]:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=tmp, port=port))
        with process([binary, "-c", str(conf), "-e", f"{tmp}/error.log"]):
            wait_port(port)
            yield port


def show(name: str, figures: dict[str, float]) -> None:
    cells = "  ".join(f"{k}={v:,.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    print(f"{name:<34} {cells}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=200, help="probes per second for the comparison")
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds per scenario")
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--big", type=int, default=1000, help="checks at a 1s interval for the lateness run")
    parser.add_argument("--idle", type=int, default=10_000, help="configured checks for the memory run")
    args = parser.parse_args()
    for tool in ("nginx", "prometheus-blackbox-exporter"):
        if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists()):
            print(
                f"{tool} is missing: run bench/setup.sh (Debian's nginx-light, prometheus-blackbox-exporter)"
            )
            return 2
    print(
        f"{os.cpu_count()} CPUs; Python {sys.version.split()[0]}; "
        f"rate {args.rate:g}/s for {args.seconds:g}s\n"
    )
    with nginx() as port:
        target = f"http://127.0.0.1:{port}/"
        blackbox = measure_blackbox(target, args.rate, args.seconds, args.warmup)
        show("blackbox_exporter", blackbox)
        agent = measure_agent(http_checks(int(args.rate), 1.0, target), port, args.seconds, args.warmup)
        show("vantage (full telemetry)", agent)
        print(
            f"{'':<34} cpu per probe vs blackbox_exporter: "
            f"{agent['cpu_us_per_probe'] / blackbox['cpu_us_per_probe']:.2f}x (target <= 0.65x)"
        )
        big = measure_agent(http_checks(args.big, 1.0, target), port, args.seconds, args.warmup)
        show(f"vantage, {args.big} checks @ 1s", big)
        big = measure_agent(http_checks(args.big, 1.0, target), port, args.seconds, args.warmup, workers=2)
        show(f"vantage, {args.big} checks @ 1s, 2 workers", big)
        big = measure_agent(
            http_checks(args.big, 1.0, target), port, args.seconds, args.warmup, workers=2, otlp=False
        )
        show("  the same, /metrics only (no OTLP)", big)
    show(f"vantage, {args.idle} idle checks", measure_idle(args.idle))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
