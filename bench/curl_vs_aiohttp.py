"""CPU per fresh-connection GET through aiohttp, through libcurl, and through the agent's client.

Run on demand (it prints figures; nothing asserts them):

    .venv/bin/python bench/curl_vs_aiohttp.py [N] [--concurrency C]

Starts a local aiohttp server in a thread of its own (so that its CPU is not this loop's), then sends
N GETs through each client on this process's event loop (a bare aiohttp session that closes every
connection, as the agent's client did before it moved to libcurl; a bare libcurl transfer; and the
agent's own client, ``ctx.http()``, which is libcurl plus the span, phases and redirect handling),
each on a fresh TCP connection, C at a time,
and prints the process CPU time (``time.process_time``: user + system, every thread of the process,
the server's included, which is the same for both clients) per request, and the CPU time of the
client loop's thread alone (``time.thread_time``, the client without the server). Bounded: N is at most 20,000
and each client stops after 60 s of wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.net.curl import CurlMulti, CurlRequest
from agent.sdk.testing import ProbeTester, RecordingTracer
from plugins.http import HttpProbe

MAX_REQUESTS = 20_000
MAX_SECONDS = 60.0


def start_server() -> int:
    """Serve ``GET /`` on loopback from a thread with its own loop; returns the port."""
    ready: list[int] = []
    started = threading.Event()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/", hello)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ready.append(int(runner.addresses[0][1]))
        started.set()
        await asyncio.Event().wait()

    threading.Thread(target=asyncio.run, args=(main(),), daemon=True).start()
    started.wait(10)
    return ready[0]


async def measure(name: str, count: int, concurrency: int, one: Callable[[], Awaitable[None]]) -> None:
    for _ in range(20):  # warm up: imports, first connections
        await one()
    done = 0
    deadline = time.monotonic() + MAX_SECONDS
    cpu, own, wall = time.process_time(), time.thread_time(), time.perf_counter()

    async def worker() -> None:
        nonlocal done
        while done < count and time.monotonic() < deadline:
            done += 1
            await one()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, own = time.process_time() - cpu, time.thread_time() - own
    wall = time.perf_counter() - wall
    print(
        f"{name:8} {done:6d} requests  process CPU {cpu / done * 1e6:7.1f} µs/request"
        f"  client loop's thread {own / done * 1e6:7.1f} µs  wall {wall / done * 1e6:7.1f} µs"
    )


async def main(count: int, concurrency: int) -> None:
    port = start_server()
    url = f"http://127.0.0.1:{port}/"

    tester = ProbeTester(HttpProbe)
    check, _, config = tester.load({"name": "bench", "target": url, "interval": "10s", "timeout": "3s"})
    ctx = tester.context(check, config, RecordingTracer())

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True, use_dns_cache=False, limit=0),
        cookie_jar=aiohttp.DummyCookieJar(),
    )

    async def through_aiohttp() -> None:
        async with session.get(url) as response:
            async for _ in response.content.iter_chunked(64 * 1024):
                pass

    async def through_agent() -> None:
        async with ctx.http() as client:
            await client.request("GET", url)

    multi = CurlMulti.of_running_loop()

    async def through_curl() -> None:
        await multi.perform(CurlRequest("GET", url))

    try:
        await measure("aiohttp", count, concurrency, through_aiohttp)
        await measure("libcurl", count, concurrency, through_curl)
        await measure("agent", count, concurrency, through_agent)
    finally:
        await session.close()
        await tester.http.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", nargs="?", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(main(min(args.count, MAX_REQUESTS), max(1, args.concurrency)))
