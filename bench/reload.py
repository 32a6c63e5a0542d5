"""A hot reload of a large check set: how long it takes, and how long it holds the event loop.

Run on demand (it prints figures; nothing asserts them):

    .venv/bin/python bench/reload.py [N]

Builds and serves an agent of N ``tcp`` checks (default 10,000; at most 100,000) from a checks file,
with the garbage collector and switch interval that ``vantage run`` sets, then reloads it twice:
the same file (nothing changes), and a file with 100 checks removed and 100 added. For each, the
reload's wall time and the worst delay of a 5 ms timer on the event loop meanwhile (the loading runs
in a thread; what holds the loop is the interpreter lock and applying the change). The checks probe
a closed port on loopback once an hour, so they cost next to nothing meanwhile.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import anyio
import yaml

from agent.app import build_agent, serve
from agent.config.settings import load_config


def document(names: list[str]) -> str:
    checks = [{"name": name, "type": "tcp", "target": "127.0.0.1:9"} for name in names]
    return yaml.safe_dump({"defaults": {"interval": "1h", "timeout": "5s"}, "checks": checks})


async def main(count: int) -> None:
    logging.getLogger("vantage").setLevel(logging.ERROR)  # every check fails: not a line each
    path = Path(tempfile.mkdtemp()) / "checks.yml"
    names = [f"c{i}" for i in range(count)]
    path.write_text(document(names))
    environ = {
        "VANTAGE_CHECKS_FILE": str(path),
        "VANTAGE_PORT": "0",
        "VANTAGE_HOST": "127.0.0.1",
        "VANTAGE_RELOAD_POLL_INTERVAL": "0",
        "OTEL_TRACES_EXPORTER": "none",
    }
    started = time.perf_counter()
    agent = build_agent(load_config(environ), environ)
    print(f"{count} checks loaded and built in {time.perf_counter() - started:.2f}s")
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)  # as run_agent() sets them
    sys.setswitchinterval(0.001)
    worst = 0.0

    async def watch_the_loop() -> None:
        nonlocal worst
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            worst = max(worst, time.perf_counter() - before - 0.005)

    assert agent.reloader is not None
    async with anyio.create_task_group() as tg:
        await tg.start(partial(serve, agent, handle_signals=False))
        tg.start_soon(watch_the_loop)
        changed = names[100:] + [f"n{i}" for i in range(100)]
        for label, new in (("the same file", names), ("100 removed, 100 added", changed)):
            path.write_text(document(new))
            await anyio.sleep(0.3)
            worst = 0.0
            started = time.perf_counter()
            result = await agent.reloader.reload("bench")
            print(
                f"reload of {label}: {time.perf_counter() - started:.2f}s ({result.status}, "
                f"+{len(result.added)} -{len(result.removed)}); the event loop's worst delay "
                f"{worst * 1000:.0f}ms"
            )
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main, min(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000, 100_000))
