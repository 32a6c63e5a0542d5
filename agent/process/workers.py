"""Worker processes: one agent process per CPU, each running its share of the checks.

A single event loop tops out below a thousand fresh-connection probes per second. With
``VANTAGE_WORKERS`` above 1, ``vantage run`` becomes a supervisor: it starts that many worker
processes (``vantage run`` with ``VANTAGE_WORKER=i/n``), each of which runs the checks that a
rendezvous hash gives it, exports its own OTLP (as its own ``service.instance.id``), and serves
its own endpoints on a loopback port. The supervisor serves the agent's port: ``/metrics`` merges
the workers' expositions (each series gains a ``worker`` label), ``/api/checks`` joins their
checks, ``/healthz`` and ``/readyz`` hold only while every worker's do.

SIGTERM or SIGINT is passed on to the workers, which drain and flush as a single agent does, and
the whole agent stops within ``VANTAGE_SHUTDOWN_TIMEOUT``. A worker that dies is restarted with
back-off, while the other workers go on probing their shares; until it is back, ``/healthz`` and
``/readyz`` fail, so a worker that cannot stay up ends with the orchestrator restarting the pod.
Workers die with their supervisor (the parent-death signal), even when it is killed outright.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import aiohttp
import anyio
from aiohttp import web
from anyio.abc import Process, TaskStatus

from agent.config.checks import CheckEntry
from agent.config.durations import format_duration
from agent.config.settings import Config
from agent.schedule.sharding import WORKER_SALT, owner
from agent.sdk.probe import SystemClock
from agent.server.inbound import Inbound, Route, inbound_checks, peer_route
from agent.server.status import PROMETHEUS_TYPE, authorized, serve_app

__all__ = ["die_with_supervisor", "merge_expositions", "supervise"]

log = logging.getLogger("vantage.workers")
_START_TIMEOUT = 60.0
_WORKER_BUDGET = 0.8  # a worker's share of the shutdown budget
_SUPERVISOR_BUDGET = 0.95  # when the supervisor stops waiting for its workers and kills them
_SUPERVISOR_PID = "VANTAGE_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class _Worker:
    index: int
    process: Process
    port: int = 0
    started: float = 0.0


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
        self.restarts = 0
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
        text += (
            "# HELP vantage_worker_restarts_total Worker processes that died and were restarted\n"
            "# TYPE vantage_worker_restarts_total counter\n"
            f"vantage_worker_restarts_total {self.restarts}\n"
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
            worker = self._workers[owner(name, len(self._workers), WORKER_SALT)]
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
                    await tg.start(
                        partial(serve_app, setting="VANTAGE_INBOUND_PORT"),
                        self._inbound_app,
                        settings.host,
                        settings.inbound_port,
                    )
                await serve_app(
                    app, settings.host, settings.port, setting="VANTAGE_PORT", task_status=task_status
                )


async def _start(index: int, count: int, environ: Mapping[str, str], budget: float) -> _Worker:
    env = {
        **environ,
        "VANTAGE_WORKER": f"{index}/{count}",
        "VANTAGE_WORKERS": "1",
        "VANTAGE_PORT": "0",
        "VANTAGE_HOST": "127.0.0.1",
        # The supervisor limits the rate of inbound requests and passes them on from loopback.
        "VANTAGE_INBOUND_RATE": "off",
        # A worker stops within a share of the supervisor's budget, so that the supervisor, which
        # waits for it, keeps its own.
        "VANTAGE_SHUTDOWN_TIMEOUT": str(round(budget * _WORKER_BUDGET, 3)),
        _SUPERVISOR_PID: str(os.getpid()),
    }
    env.pop("VANTAGE_INBOUND_PORT", None)
    process = await anyio.open_process(
        [sys.executable, "-m", "agent", "run"], env=env, stdout=subprocess.PIPE, stderr=None
    )
    worker = _Worker(index, process)
    assert process.stdout is not None
    buffer = b""
    try:
        with anyio.fail_after(_START_TIMEOUT):
            while b"\n" not in buffer:
                buffer += await process.stdout.receive()
    except (anyio.EndOfStream, TimeoutError):
        await _end(process)
        raise RuntimeError(f"worker {index} did not start (status {process.returncode})") from None
    line = buffer.split(b"\n", 1)[0].decode(errors="replace")
    if not line.startswith("VANTAGE_WORKER_PORT="):
        await _end(process)
        raise RuntimeError(f"worker {index} did not announce its port: {line!r}")
    worker.port = int(line.split("=", 1)[1])
    worker.started = time.monotonic()
    return worker


async def _end(process: Process) -> None:
    with contextlib.suppress(ProcessLookupError):  # it may have exited already
        process.kill()
    await process.wait()


def die_with_supervisor(environ: Mapping[str, str]) -> None:
    """In a worker: ask the kernel to send SIGTERM when the supervisor dies, even by SIGKILL, so that
    no worker outlives it (and keeps probing, unwatched, beside its replacement)."""
    supervisor = environ.get(_SUPERVISOR_PID)
    if not supervisor or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("the parent-death signal cannot be set: %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != int(supervisor):
        # The supervisor died before the request was made: nobody would send the signal.
        os.kill(os.getpid(), signal.SIGTERM)


class _Restarts:
    """Back-off between restarts of a worker that keeps dying: 1 s, doubled up to 30 s, and back
    to 1 s once a worker has lived a minute."""

    FIRST, LAST, STABLE = 1.0, 30.0, 60.0

    def __init__(self) -> None:
        self.count = 0
        self._delay = self.FIRST

    def next_delay(self, lived: float) -> float:
        self.count += 1
        if lived >= self.STABLE:
            self._delay = self.FIRST
        delay, self._delay = self._delay, min(self._delay * 2, self.LAST)
        return delay


async def supervise(config: Config, environ: Mapping[str, str]) -> int:
    """Run ``VANTAGE_WORKERS`` worker processes behind the agent's port; the exit status.

    A worker that dies is restarted, with back-off (:class:`_Restarts`); meanwhile ``/healthz``
    and ``/readyz`` say the agent is unhealthy. SIGTERM and SIGINT are passed on to the workers;
    the supervisor waits for them within ``VANTAGE_SHUTDOWN_TIMEOUT`` and kills what is left.
    """
    count = config.settings.worker_count()
    budget = config.settings.shutdown_timeout
    workers: list[_Worker] = []
    supervisor = _Supervisor(config, workers)
    stopped = anyio.Event()
    # Open before the workers start: a signal during start-up is queued, not fatal.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        try:
            for index in range(count):
                workers.append(await _start(index, count, environ, budget))
            async with anyio.create_task_group() as tg:
                port = await tg.start(supervisor.serve)
                log.info("vantage supervisor on port %d with %d worker processes", port, count)

                async def keep(index: int) -> None:
                    restarts = _Restarts()
                    while True:
                        worker = workers[index]
                        assert worker.process.stdout is not None
                        async for _ in worker.process.stdout:  # keep its stdout from filling up
                            pass
                        code = await worker.process.wait()
                        if supervisor.stopping:
                            return
                        delay = restarts.next_delay(time.monotonic() - worker.started)
                        log.error(
                            "worker %d exited with status %s; restarting it in %s (restart %d)",
                            index,
                            code,
                            format_duration(delay),
                            restarts.count,
                        )
                        supervisor.restarts += 1
                        with anyio.move_on_after(delay):
                            await stopped.wait()
                        while not supervisor.stopping:
                            try:
                                workers[index] = await _start(index, count, environ, budget)
                                break
                            except (RuntimeError, OSError) as exc:
                                delay = restarts.next_delay(0.0)
                                log.error("%s; trying again in %s", exc, format_duration(delay))
                                with anyio.move_on_after(delay):
                                    await stopped.wait()
                        if supervisor.stopping:
                            return

                async def on_signal() -> None:
                    async for signum in signals:
                        name = signal.Signals(signum).name
                        if signum == signal.SIGHUP:
                            log.warning("received SIGHUP; the configuration is not reloaded, ignored")
                            continue
                        if supervisor.stopping:
                            continue
                        log.info("received %s; stopping the workers within %s", name, format_duration(budget))
                        supervisor.stopping = True
                        stopped.set()
                        _signal_all(workers)
                        tg.cancel_scope.deadline = anyio.current_time() + budget * _SUPERVISOR_BUDGET

                async def wait_for_workers() -> None:
                    await stopped.wait()
                    for worker in list(workers):
                        await worker.process.wait()
                    tg.cancel_scope.cancel()

                for index in range(count):
                    tg.start_soon(keep, index)
                tg.start_soon(on_signal)
                tg.start_soon(wait_for_workers)
        finally:
            with anyio.CancelScope(shield=True):
                for worker in workers:
                    if worker.process.returncode is None:
                        log.warning("worker %d did not stop in time; killed", worker.index)
                        await _end(worker.process)
    log.info("vantage stopped")
    return 0


def _signal_all(workers: list[_Worker]) -> None:
    for worker in workers:
        if worker.process.returncode is None:
            worker.process.send_signal(signal.SIGTERM)
