"""Worker processes: one agent process per CPU, each running its share of the checks.

A single event loop tops out below a thousand fresh-connection probes per second. With
``VANTAGE_WORKERS`` above 1, ``vantage run`` becomes a supervisor: it starts that many worker
processes (``vantage run`` with ``VANTAGE_WORKER=i/n``), each of which runs the checks that a
rendezvous hash gives it, exports its own OTLP (as its own ``service.instance.id``), and serves
its own endpoints on a loopback port. The supervisor serves the agent's port: ``/metrics`` merges
the workers' expositions (each series gains a ``worker`` label), ``/api/checks`` joins their
checks, ``/healthz`` and ``/readyz`` hold only while every worker's do.

SIGTERM or SIGINT is passed on to the workers, which drain and flush as a single agent does.
A worker that dies takes the supervisor down with status 1, so that the orchestrator restarts the
whole agent rather than leaving a share of the checks silently unprobed.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp
import anyio
from aiohttp import web
from anyio.abc import Process, TaskStatus

from .checks import CheckEntry
from .config import Config
from .inbound import Inbound, Route, inbound_checks, peer_route
from .plugin import SystemClock
from .scheduler import owner
from .server import PROMETHEUS_TYPE, authorized, serve_app

__all__ = ["merge_expositions", "supervise"]

log = logging.getLogger("vantage.workers")
_START_TIMEOUT = 60.0


@dataclass
class _Worker:
    index: int
    process: Process
    port: int = 0


def merge_expositions(texts: Sequence[tuple[str, str]]) -> str:
    """Merge Prometheus text expositions, labelling every sample with its source.

    ``texts`` holds ``(worker, text)`` pairs. Each metric family is written once, with the HELP and
    TYPE lines of its first appearance and the samples of every source, as the format requires.
    """
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for worker, text in texts:
        family = None
        label = f'worker="{worker}"'
        for line in text.splitlines():
            if line.startswith(("# HELP ", "# TYPE ")):
                family = line.split(" ", 3)[2]
                seen = headers.setdefault(family, [])
                samples.setdefault(family, [])
                if len(seen) < 2 and line not in seen:
                    seen.append(line)
            elif line and not line.startswith("#") and family is not None:
                samples[family].append(_with_label(line, label))
    out = []
    for family, lines in headers.items():
        out.extend(lines)
        out.extend(samples[family])
    return "\n".join(out) + "\n"


def _with_label(line: str, label: str) -> str:
    brace, space = line.find("{"), line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        closing = "," if line[brace + 1] != "}" else ""
        return f"{line[: brace + 1]}{label}{closing}{line[brace + 1 :]}"
    return f"{line[:space]}{{{label}}}{line[space:]}"


class _Supervisor:
    def __init__(self, config: Config, workers: list[_Worker]) -> None:
        self._config = config
        self._workers = workers
        token = config.settings.api_token
        self._token = token.get_secret_value() if token else None
        self.stopping = False
        self._session: aiohttp.ClientSession | None = None
        self._inbound_app: web.Application | None = None

    async def _fetch(
        self, worker: _Worker, path: str, headers: Mapping[str, str] | None = None
    ) -> tuple[int, str]:
        assert self._session is not None
        async with self._session.get(f"http://127.0.0.1:{worker.port}{path}", headers=headers) as response:
            return response.status, await response.text()

    async def _gather(self, path: str, headers: Mapping[str, str] | None = None) -> list[tuple[int, str]]:
        results: list[tuple[int, str]] = [(0, "")] * len(self._workers)

        async def one(i: int, worker: _Worker) -> None:
            try:
                results[i] = await self._fetch(worker, path, headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                results[i] = (0, f"worker {worker.index} did not answer: {exc}")

        async with anyio.create_task_group() as tg:
            for i, worker in enumerate(self._workers):
                tg.start_soon(one, i, worker)
        return results

    async def _health(self, request: web.Request) -> web.Response:
        results = await self._gather(request.path)
        ok = not self.stopping and all(status == 200 for status, _ in results)
        body = {"status": "ok" if ok else "unhealthy", "workers": [status for status, _ in results]}
        return web.json_response(body, status=200 if ok else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        results = await self._gather("/metrics")
        if not all(status == 200 for status, _ in results):
            raise web.HTTPServiceUnavailable(text="a worker did not answer\n")
        text = merge_expositions(
            [(str(w.index), body) for w, (_, body) in zip(self._workers, results, strict=True)]
        )
        return web.Response(text=text, headers={"Content-Type": PROMETHEUS_TYPE})

    async def _checks(self, request: web.Request) -> web.Response:
        if not authorized(request, self._token):
            raise web.HTTPUnauthorized(text="a valid bearer token is required\n")
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        path = request.path
        results = await self._gather(path, headers)
        if "name" in request.match_info:
            for status, body in results:
                if status == 200:
                    return web.Response(text=body, content_type="application/json")
            raise web.HTTPNotFound(text="no such check\n")
        checks = []
        for status, body in results:
            if status != 200:
                raise web.HTTPServiceUnavailable(text="a worker did not answer\n")
            checks.extend(json.loads(body)["checks"])
        return web.Response(text=json.dumps({"checks": checks}), content_type="application/json")

    def _inbound(self) -> Inbound | None:
        """The inbound endpoints, passing each request on to the worker (or replica) that runs its check."""
        config, settings = self._config, self._config.settings
        region = inbound_checks(config.entries, settings.region)
        if not region:
            return None

        def locate(entry: CheckEntry) -> Route:
            name, shard = entry.check.name, config.shard
            if shard.count > 1 and owner(name, shard.count) != shard.index:
                return peer_route(settings.peer_url, name, shard.count)
            worker = self._workers[owner(name, len(self._workers), "worker")]
            return Route(f"http://127.0.0.1:{worker.port}", local=True)

        return Inbound(
            entries=region,
            locate=locate,
            inbox=None,
            clock=SystemClock(),
            rate=settings.inbound_rate,
            trusted=settings.trusted_networks(),
        )

    def app(self) -> web.Application:
        settings = self._config.settings
        app = web.Application(client_max_size=int(settings.inbound_max_body))
        inbound = self._inbound()
        if inbound is not None and settings.inbound_port is None:
            inbound.add_routes(app)
        self._inbound_app = None
        if inbound is not None and settings.inbound_port is not None:
            self._inbound_app = web.Application(client_max_size=int(settings.inbound_max_body))
            inbound.add_routes(self._inbound_app)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/readyz", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/checks", self._checks)
        app.router.add_get("/api/checks/{name}", self._checks)
        return app

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        settings = self._config.settings
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as self._session:
            app = self.app()
            async with anyio.create_task_group() as tg:
                if self._inbound_app is not None:
                    assert settings.inbound_port is not None
                    await tg.start(serve_app, self._inbound_app, settings.host, settings.inbound_port)
                await serve_app(app, settings.host, settings.port, task_status=task_status)


async def _start(index: int, count: int, environ: Mapping[str, str]) -> _Worker:
    env = {
        **environ,
        "VANTAGE_WORKER": f"{index}/{count}",
        "VANTAGE_WORKERS": "1",
        "VANTAGE_PORT": "0",
        "VANTAGE_HOST": "127.0.0.1",
        # The supervisor limits the rate of inbound requests and passes them on from loopback.
        "VANTAGE_INBOUND_RATE": "off",
    }
    env.pop("VANTAGE_INBOUND_PORT", None)
    process = await anyio.open_process(
        [sys.executable, "-m", "agent", "run"], env=env, stdout=subprocess.PIPE, stderr=None
    )
    worker = _Worker(index, process)
    assert process.stdout is not None
    buffer = b""
    with anyio.fail_after(_START_TIMEOUT):
        while b"\n" not in buffer:
            chunk = await process.stdout.receive()
            buffer += chunk
    line = buffer.split(b"\n", 1)[0].decode()
    if not line.startswith("VANTAGE_WORKER_PORT="):
        raise RuntimeError(f"worker {index} did not announce its port: {line!r}")
    worker.port = int(line.split("=", 1)[1])
    return worker


async def supervise(config: Config, environ: Mapping[str, str]) -> int:
    """Run ``VANTAGE_WORKERS`` worker processes behind the agent's port; the exit status."""
    count = config.settings.worker_count()
    workers: list[_Worker] = []
    status = 0
    supervisor = _Supervisor(config, workers)
    # Open before the workers start: a signal during start-up is queued, not fatal.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        try:
            for index in range(count):
                workers.append(await _start(index, count, environ))
            async with anyio.create_task_group() as tg:
                port = await tg.start(supervisor.serve)
                log.info("vantage supervisor on port %d with %d worker processes", port, count)
                done = anyio.Event()

                async def watch(worker: _Worker) -> None:
                    nonlocal status
                    assert worker.process.stdout is not None
                    async for _ in worker.process.stdout:  # keep its stdout from filling up
                        pass
                    code = await worker.process.wait()
                    if not supervisor.stopping:
                        log.error("worker %d exited with status %s; stopping the agent", worker.index, code)
                        status = 1
                        supervisor.stopping = True
                        _signal_all(workers)
                    if all(w.process.returncode is not None for w in workers):
                        done.set()

                async def on_signal() -> None:
                    async for signum in signals:
                        log.info("received %s; stopping the workers", signal.Signals(signum).name)
                        supervisor.stopping = True
                        _signal_all(workers)

                for worker in workers:
                    tg.start_soon(watch, worker)
                tg.start_soon(on_signal)
                await done.wait()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                for worker in workers:
                    if worker.process.returncode is None:
                        worker.process.kill()
                        await worker.process.wait()
    log.info("vantage stopped")
    return status


def _signal_all(workers: list[_Worker]) -> None:
    for worker in workers:
        if worker.process.returncode is None:
            worker.process.send_signal(signal.SIGTERM)
