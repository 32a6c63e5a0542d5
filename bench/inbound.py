"""Benchmark: a flood at the inbound endpoints while the agent probes.

Runs the agent on 100 http checks a second (against a local aiohttp vendor) with a heartbeat
check and its inbound endpoints on their own port, then measures three phases of equal length:
quiet, a flood of badly authenticated pings from one source address, and the same flood spread
over 200 loopback source addresses (127.0.0.2-201, each under the per-source limit for longer).
For each it prints the inbound requests answered per second and their statuses, the agent's CPU
and memory, and the probes' start lateness p99, failures and skips: whether a flood starves the
probes.

    .venv/bin/python bench/inbound.py [--seconds 10] [--connections 64]

Every load loop is bounded in count and time; all traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time

import aiohttp
from harness import (
    agent_env,
    free_port,
    http_checks,
    process,
    quantile,
    rss_mib,
    runs,
    scrape,
    total,
    tree_cpu,
    wait_port,
)

VENDOR = """
from aiohttp import web
async def ok(_):
    return web.json_response({"ok": True})
app = web.Application()
app.router.add_get("/ok", ok)
web.run_app(app, host="127.0.0.1", port=%d, print=None)
"""
TOKEN = "bench-token-0123456789"
MAX_REQUESTS = 2_000_000


async def flood(port: int, seconds: float, connections: int, sources: int) -> collections.Counter[int]:
    """Bad-token pings from `connections` clients over `sources` loopback addresses."""
    statuses: collections.Counter[int] = collections.Counter()
    deadline = time.monotonic() + seconds
    url = f"http://127.0.0.1:{port}/heartbeat/job"

    async def client(index: int) -> None:
        source = f"127.0.0.{2 + index % sources}" if sources > 1 else "127.0.0.1"
        connector = aiohttp.TCPConnector(local_addr=(source, 0), limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            while time.monotonic() < deadline and sum(statuses.values()) < MAX_REQUESTS:
                async with session.get(url, params={"token": "wrong-token-000000"}) as response:
                    await response.read()
                    statuses[response.status] += 1

    await asyncio.gather(*(client(i) for i in range(connections)))
    return statuses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()

    vendor_port, port, inbound = free_port(), free_port(), free_port()
    checks = http_checks(100, 1.0, f"http://127.0.0.1:{vendor_port}/ok")
    checks.append(
        {"name": "job", "type": "heartbeat", "target": "a job", "settings": {"period": "1h", "token": TOKEN}}
    )
    env = agent_env(port, checks, 0, otlp=False) | {"VANTAGE_INBOUND_PORT": str(inbound)}
    with (
        process([sys.executable, "-c", VENDOR % vendor_port]),
        process([sys.executable, "-m", "agent", "run"], env) as agent,
    ):
        wait_port(vendor_port)
        wait_port(port)
        wait_port(inbound)
        time.sleep(3)
        print(
            f"{'phase':<22}{'answered/s':>11}{'statuses':>28}{'cpu %':>8}{'rss MiB':>9}"
            f"{'late p99 ms':>13}{'failed':>8}{'skipped':>9}"
        )
        for phase, sources in (("quiet", 0), ("flood, 1 source", 1), ("flood, 200 sources", 200)):
            before, (_, failed0), cpu0, t0 = (
                scrape(port),
                runs(port),
                tree_cpu(agent.pid),
                time.monotonic(),
            )
            if sources:
                statuses = asyncio.run(flood(inbound, args.seconds, args.connections, sources))
            else:
                time.sleep(args.seconds)
                statuses = collections.Counter()
            elapsed = time.monotonic() - t0
            after, (runs1, failed1), cpu1 = scrape(port), runs(port), tree_cpu(agent.pid)
            skipped = total(after, "vantage_runs_skipped_total") - total(before, "vantage_runs_skipped_total")
            shown = ", ".join(f"{code}: {count}" for code, count in sorted(statuses.items())) or "-"
            print(
                f"{phase:<22}{sum(statuses.values()) / elapsed:>11.0f}{shown:>28}"
                f"{(cpu1 - cpu0) / elapsed * 100:>8.0f}{rss_mib(agent.pid):>9.1f}"
                f"{quantile(after, before, 0.99) * 1000:>13.1f}{failed1 - failed0:>8}{skipped:>9.0f}"
            )
            del runs1
    return 0


if __name__ == "__main__":
    sys.exit(main())
