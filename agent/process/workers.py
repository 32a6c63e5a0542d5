"""Worker processes: one agent process per CPU, each running its share of the checks.

A single event loop tops out below a thousand fresh-connection probes per second. With
``VANTAGE_WORKERS`` above 1, ``vantage run`` becomes a supervisor: it starts that many worker
processes (``vantage run`` with ``VANTAGE_WORKER=i/n``), each of which runs the checks that a
rendezvous hash gives it, exports its own OTLP (as its own ``service.instance.id``), and serves
its own endpoints on a loopback socket that the supervisor binds and hands it (agent/process/
handover.py), so that the supervisor knows each worker's port before it starts, and learns that it
is up from its ``/healthz``. The supervisor serves the agent's port with the same builder as a single
agent (``serve_endpoints``): ``/metrics`` merges the workers' expositions (each series gains a
``worker`` label), ``/api/checks`` joins their checks, ``/healthz`` and ``/readyz`` hold only while
every worker's do, and a worker that does not answer them within ``_PROBE_TIMEOUT`` counts as down;
``/readyz`` shows each worker's own answer (its exporters' health) beside the supervisor's.

The supervisor reloads the checks (SIGHUP, ``POST /-/reload``, a change of the checks file, which
only it watches) by asking every worker to reload (``POST /-/reload`` on the worker's port): each
worker validates and applies the set itself, with the loader of start-up, and answers with a
fingerprint of the set it loaded. When they differ (the file changed while the workers read it)
or some failed and some did not, the supervisor asks again, so that every process ends with the
same set; then it loads the set itself, for the routing of inbound requests. A set that does not
validate fails in every worker alike, each keeping its checks and exporting
``vantage_config_last_reload_successful`` 0 (agent/reload.py).

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
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp
import anyio
from aiohttp import web
from anyio.abc import Process, TaskStatus

from agent import __version__
from agent.config.checks import CheckEntry
from agent.config.settings import Config, load_config
from agent.errors import ConfigError, PluginError
from agent.process.handover import LISTEN_FD, bind_loopback
from agent.reload import FileWatch, digest
from agent.schedule.sharding import WORKER_SALT, owner
from agent.sdk.durations import format_duration, plural
from agent.sdk.probe import SystemClock
from agent.server._aiohttp import wait_for_certificates
from agent.server.inbound import Inbound, Route, inbound_checks, peer_route
from agent.server.pages import Pages, WorkersSource
from agent.server.status import (
    PROMETHEUS_TYPE,
    Bound,
    Listener,
    authorized,
    reload_response,
    serve_endpoints,
)

__all__ = ["die_with_supervisor", "merge_expositions", "supervise"]

log = logging.getLogger("vantage.workers")
_START_TIMEOUT = 60.0
_REQUEST_TIMEOUT = 60.0  # /metrics and /api/checks from a worker
_PROBE_TIMEOUT = 2.0  # /healthz and /readyz from a worker: a stuck one is down, not waited for
_START_POLL = 0.05
_WORKER_BUDGET = 0.8  # a worker's share of the shutdown budget
_SUPERVISOR_BUDGET = 0.95  # when the supervisor stops waiting for its workers and kills them
_SUPERVISOR_PID = "VANTAGE_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_RELOAD_ATTEMPTS = 3  # asks of every worker before a reload that does not agree is given up


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
    """The supervisor's status endpoints: its workers' answers, merged."""

    def __init__(
        self,
        config: Config,
        workers: list[_Worker],
        session: aiohttp.ClientSession,
        *,
        probe_timeout: float = _PROBE_TIMEOUT,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._config = config
        self._workers = workers
        self._session = session
        self._probe_timeout = probe_timeout
        token = config.settings.api_token
        self._token = token.get_secret_value() if token else None
        self.stopping = False
        self.restarts = 0
        self._region = inbound_checks(config.entries, config.settings.region)
        """The checks the inbound endpoints know; a reload updates it in place."""
        self._reloading = anyio.Lock()
        self._environ = dict(os.environ if environ is None else environ)
        """What the workers' configuration is read from: the supervisor loads the same."""
        path, poll = config.settings.checks_file, config.settings.reload_poll_interval
        self.watch = FileWatch(path) if path is not None and poll > 0 else None

    async def _fetch(self, worker: _Worker, path: str, headers: Mapping[str, str] | None) -> tuple[int, str]:
        url = f"http://127.0.0.1:{worker.port}{path}"
        async with self._session.get(url, headers=headers) as response:
            return response.status, await response.text()

    async def _gather(
        self, path: str, headers: Mapping[str, str] | None = None, *, probe: bool = False
    ) -> list[tuple[int, str]]:
        """Every worker's answer to ``path``, in order; status 0 for one that did not answer.

        For a ``probe`` (``/healthz``, ``/readyz``), a worker has ``probe_timeout`` to answer: the
        orchestrator asking wants an answer in seconds, and a stuck worker is a worker down."""
        results: list[tuple[int, str]] = [(0, "")] * len(self._workers)
        bound = self._probe_timeout if probe else None

        async def one(i: int, worker: _Worker) -> None:
            try:
                with anyio.fail_after(bound):
                    results[i] = await self._fetch(worker, path, headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                results[i] = (0, f"worker {worker.index} did not answer: {exc!r}")

        async with anyio.create_task_group() as tg:
            for i, worker in enumerate(self._workers):
                tg.start_soon(one, i, worker)
        return results

    async def healthz(self, request: web.Request) -> web.Response:
        results = await self._gather("/healthz", probe=True)
        ok = not self.stopping and all(status == 200 for status, _ in results)
        body = {"status": "ok" if ok else "unhealthy", "workers": [status for status, _ in results]}
        return web.json_response(body, status=200 if ok else 503)

    async def readyz(self, request: web.Request) -> web.Response:
        results = await self._gather("/readyz", probe=True)
        ok = not self.stopping and all(status == 200 for status, _ in results)
        workers = [_worker_readiness(w.index, *r) for w, r in zip(self._workers, results, strict=True)]
        body = {
            "status": "ready" if ok else "not ready",
            "version": __version__,
            "supervisor": {
                "status": "stopping" if self.stopping else "running",
                "workers": len(self._workers),
                "restarts": self.restarts,
            },
            "checks": sum(w["checks"] for w in workers if isinstance(w.get("checks"), int)),
            "workers": workers,
        }
        return web.json_response(body, status=200 if ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
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
        response = web.Response(text=text, headers={"Content-Type": PROMETHEUS_TYPE})
        # The merged page is text 0.0.4 (OpenMetrics is negotiated by each worker, not here); it
        # is compressed when the scraper accepts it, as a worker's own page is.
        response.enable_compression()
        return response

    def _authorization(self, request: web.Request) -> dict[str, str] | None:
        if not authorized(request, self._token):
            raise web.HTTPUnauthorized(text="a valid bearer token is required\n")
        return {"Authorization": f"Bearer {self._token}"} if self._token else None

    async def checks(self, request: web.Request) -> web.Response:
        results = await self._gather(request.path, self._authorization(request))
        checks = []
        for status, body in results:
            if status != 200:
                raise web.HTTPServiceUnavailable(text="a worker did not answer\n")
            checks.extend(json.loads(body)["checks"])
        return web.Response(text=json.dumps({"checks": checks}), content_type="application/json")

    async def check(self, request: web.Request) -> web.Response:
        results = await self._gather(request.path, self._authorization(request))
        for status, body in results:
            if status == 200:
                return web.Response(text=body, content_type="application/json")
        raise web.HTTPNotFound(text="no such check\n")

    async def reload(self, request: web.Request) -> web.Response:
        if not authorized(request, self._token):
            raise web.HTTPUnauthorized(text="a valid bearer token is required\n")
        return reload_response(await self.reload_checks("POST /-/reload"))

    async def reload_checks(self, cause: str) -> dict[str, Any]:
        """Have every worker reload the checks until they agree on the set (see the module
        docstring); the outcome, with each worker's answer. Reloads are serialised."""
        async with self._reloading:
            if self.stopping:
                return {"status": "stopping", "cause": cause, "error": "the agent is stopping"}
            answers: list[dict[str, Any]] = []
            for _attempt in range(_RELOAD_ATTEMPTS):
                if self.watch is not None:
                    self.watch.mark()
                answers = await self._reload_workers()
                outcome = await self._agreed(answers)
                if outcome is not None:
                    outcome |= {"cause": cause, "workers": answers}
                    self._log_reload(outcome)
                    return outcome
                log.info("the workers loaded different checks (the file changed meanwhile); reloading again")
            error = "the workers did not load the same checks; their sets may differ until the next reload"
            log.error("the checks were not reloaded (%s): %s", cause, error)
            return {"status": "failed", "cause": cause, "error": error, "workers": answers}

    async def _reload_workers(self) -> list[dict[str, Any]]:
        """Every worker's answer to ``POST /-/reload``; a worker that did not answer says so."""
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        answers: list[dict[str, Any]] = [{}] * len(self._workers)

        async def one(i: int, worker: _Worker) -> None:
            url = f"http://127.0.0.1:{worker.port}/-/reload"
            try:
                async with self._session.post(url, headers=headers) as response:
                    answer = await response.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                answer = {"status": "not answering", "error": f"{type(exc).__name__}: {exc}"}
            answers[i] = {"worker": worker.index, **(answer if isinstance(answer, dict) else {})}

        async with anyio.create_task_group() as tg:
            for i, worker in enumerate(self._workers):
                tg.start_soon(one, i, worker)
        return answers

    async def _agreed(self, answers: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The reload's outcome when the workers agree (all refused the set, or all loaded the
        same one, which the supervisor then loads for its routing), else None: ask again.

        A worker that does not answer (restarting) is left out: it loads the file as it starts."""
        answered = [a for a in answers if a.get("status") not in ("not answering", "stopping")]
        failed = [a for a in answered if a.get("status") == "failed"]
        if answered and len(failed) == len(answered):
            return {"status": "failed", "error": failed[0].get("error", "")}
        digests = {a.get("digest") for a in answered}
        if failed or len(digests) > 1:
            return None
        try:
            config, fingerprint = await anyio.to_thread.run_sync(self._load, abandon_on_cancel=True)
        except (ConfigError, PluginError):
            return None  # broken since the workers read it: ask them again
        if digests and digests != {fingerprint}:
            return None
        self._config = config
        self._region.clear()
        self._region.update(inbound_checks(config.entries, config.settings.region))
        changed = any(a.get("status") == "reloaded" for a in answered)
        return {"status": "reloaded" if changed else "unchanged", "digest": fingerprint}

    def _load(self) -> tuple[Config, str]:
        """The checks as the workers load them, and their fingerprint (in a thread)."""
        config = load_config(self._environ, self._config.registry, self._config.redactor)
        return config, digest(config.entries)

    def _log_reload(self, outcome: Mapping[str, Any]) -> None:
        if outcome["status"] == "failed":
            log.error(
                "the checks were not reloaded (%s); every worker keeps its checks: %s",
                outcome["cause"],
                outcome["error"],
            )
        else:
            log.info("checks reloaded (%s) by every worker: %s", outcome["cause"], outcome["status"])

    async def watch_file(self, poll: float) -> None:
        """Reload whenever the checks file changes; runs until cancelled."""
        assert self.watch is not None
        while True:
            await anyio.sleep(poll)
            if self.watch.changed():
                await self.reload_checks(f"{self.watch.path} changed")

    def _inbound(self) -> Inbound | None:
        """The inbound endpoints, passing each request on to the worker (or replica) that runs its check."""
        config, settings = self._config, self._config.settings
        region = self._region
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

    async def serve(self, *, task_status: TaskStatus[Bound] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve the agent's port (and inbound port) as a single agent would, until cancelled."""
        settings = self._config.settings
        listener = Listener(
            settings.host, settings.port, settings.inbound_port, int(settings.inbound_max_body)
        )
        # The status page from the workers' /api/status, with the supervisor's own token.
        auth = {"Authorization": f"Bearer {self._token}"} if self._token else None
        pages = Pages(
            WorkersSource(lambda path: self._gather(path, auth)),
            token=self._token,
            title=f"Vantage · {settings.region}",
            group_by=settings.status_group_by,
            trace_template=settings.trace_url_template,
        )
        await serve_endpoints(self, self._inbound(), listener, pages=pages, task_status=task_status)


def _worker_readiness(index: int, status: int, body: str) -> dict[str, Any]:
    """One worker's ``/readyz`` answer as the supervisor shows it: its own JSON, with its index."""
    try:
        answer = json.loads(body) if status else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return {"worker": index, "status": "not answering", "error": body[:200] or f"HTTP {status}"}
    return {"worker": index, **answer}


async def _start(
    index: int, count: int, environ: Mapping[str, str], budget: float, session: aiohttp.ClientSession
) -> _Worker:
    """Start worker ``index`` on a socket bound here, and wait until its ``/healthz`` says it is up."""
    listener = bind_loopback()
    port = listener.getsockname()[1]
    env = {
        **environ,
        "VANTAGE_WORKER": f"{index}/{count}",
        "VANTAGE_WORKERS": "1",
        "VANTAGE_PORT": str(port),
        "VANTAGE_HOST": "127.0.0.1",
        LISTEN_FD: str(listener.fileno()),
        # The supervisor limits the rate of inbound requests and passes them on from loopback.
        "VANTAGE_INBOUND_RATE": "off",
        # The supervisor watches the checks file and has every worker reload (_Supervisor.reload_checks).
        "VANTAGE_RELOAD_POLL_INTERVAL": "0",
        # A worker stops within a share of the supervisor's budget, so that the supervisor, which
        # waits for it, keeps its own.
        "VANTAGE_SHUTDOWN_TIMEOUT": str(round(budget * _WORKER_BUDGET, 3)),
        _SUPERVISOR_PID: str(os.getpid()),
    }
    env.pop("VANTAGE_INBOUND_PORT", None)
    try:
        process = await anyio.open_process(
            [sys.executable, "-m", "agent", "run"],
            env=env,
            pass_fds=(listener.fileno(),),
            stdout=None,
            stderr=None,
        )
    finally:
        listener.close()  # the worker holds its own copy; once it is gone, connecting is refused
    worker = _Worker(index, process, port)
    try:
        await _wait_for_worker(worker, session)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _end(process)
        raise
    worker.started = time.monotonic()
    return worker


async def _wait_for_worker(worker: _Worker, session: aiohttp.ClientSession) -> None:
    """Wait until the worker's ``/healthz`` answers 200; RuntimeError if it exits or takes longer
    than ``_START_TIMEOUT``."""
    url = f"http://127.0.0.1:{worker.port}/healthz"
    with anyio.move_on_after(_START_TIMEOUT):
        while worker.process.returncode is None:
            if await _healthy(session, url):
                return
            await anyio.sleep(_START_POLL)
    raise RuntimeError(f"worker {worker.index} did not start (status {worker.process.returncode})")


async def _healthy(session: aiohttp.ClientSession, url: str) -> bool:
    """One ``/healthz`` request, bounded: the socket listens from the start, so a request made before
    the worker serves waits in its backlog; the bound lets the caller look for an exit meanwhile."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError), anyio.fail_after(_PROBE_TIMEOUT):
        async with session.get(url) as response:
            return response.status == 200
    return False


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
    stopped = anyio.Event()
    await wait_for_certificates()
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_REQUEST_TIMEOUT))
    supervisor = _Supervisor(config, workers, session, environ=environ)

    async def start(index: int) -> _Worker:
        return await _start(index, count, environ, budget, session)

    # Open before the workers start: a signal during start-up is queued, not fatal.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        try:
            for index in range(count):
                workers.append(await start(index))
            async with anyio.create_task_group() as tg:
                bound: Bound = await tg.start(supervisor.serve)
                log.info(
                    "vantage supervisor on port %d with %s",
                    bound.port,
                    plural(count, "worker process", "worker processes"),
                )
                for index in range(count):
                    tg.start_soon(_keep, index, workers, supervisor, stopped, start)
                hangup = partial(tg.start_soon, supervisor.reload_checks, "SIGHUP")
                tg.start_soon(
                    _on_signals, signals, supervisor, workers, stopped, tg.cancel_scope, budget, hangup
                )
                if supervisor.watch is not None:
                    tg.start_soon(supervisor.watch_file, config.settings.reload_poll_interval)
                tg.start_soon(_wait_for_workers, workers, stopped, tg.cancel_scope)
        finally:
            with anyio.CancelScope(shield=True):
                await _kill_the_rest(workers)
                await session.close()
    log.info("vantage stopped")
    return 0


async def _on_signals(
    signals: AsyncIterator[int],
    supervisor: _Supervisor,
    workers: list[_Worker],
    stopped: anyio.Event,
    scope: anyio.CancelScope,
    budget: float,
    hangup: Callable[[], object] = lambda: None,
) -> None:
    """SIGTERM/SIGINT: pass it on to the workers and give them ``budget``; SIGHUP: ``hangup``
    (every worker reloads the checks)."""
    async for signum in signals:
        if signum == signal.SIGHUP:
            if not supervisor.stopping:
                log.info("received SIGHUP; reloading the checks in every worker")
                hangup()
            continue
        if supervisor.stopping:
            continue
        name = signal.Signals(signum).name
        log.info("received %s; stopping the workers within %s", name, format_duration(budget))
        supervisor.stopping = True
        stopped.set()
        _signal_all(workers)
        scope.deadline = anyio.current_time() + budget * _SUPERVISOR_BUDGET


async def _wait_for_workers(workers: list[_Worker], stopped: anyio.Event, scope: anyio.CancelScope) -> None:
    """Once stopping, end the supervisor's task group when every worker has exited."""
    await stopped.wait()
    for worker in list(workers):
        await worker.process.wait()
    scope.cancel()


async def _kill_the_rest(workers: list[_Worker]) -> None:
    for worker in workers:
        if worker.process.returncode is None:
            log.warning("worker %d did not stop in time; killed", worker.index)
            await _end(worker.process)


async def _keep(
    index: int,
    workers: list[_Worker],
    supervisor: _Supervisor,
    stopped: anyio.Event,
    start: Callable[[int], Awaitable[_Worker]],
) -> None:
    """Restart worker ``index`` whenever it dies, with back-off, until the supervisor stops."""
    restarts = _Restarts()
    while True:
        worker = workers[index]
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
                workers[index] = await start(index)
                break
            except (RuntimeError, OSError) as exc:
                delay = restarts.next_delay(0.0)
                log.error("%s; trying again in %s", exc, format_duration(delay))
                with anyio.move_on_after(delay):
                    await stopped.wait()
        if supervisor.stopping:
            return


def _signal_all(workers: list[_Worker]) -> None:
    for worker in workers:
        if worker.process.returncode is None:
            worker.process.send_signal(signal.SIGTERM)
