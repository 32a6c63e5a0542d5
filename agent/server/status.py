"""The agent's HTTP server: health, readiness, ``/metrics`` and the status API.

``serve_endpoints`` is the one builder of the agent's HTTP applications, for a single process
(``Server``, this module) and for a supervisor of worker processes (agent/process/workers.py)
alike: the routes, the separate inbound port, the body size limit and the connection limits are
decided there, once. Each side only brings its ``StatusEndpoints``: its own state, or its workers'
merged.

Every port the agent listens on (``VANTAGE_PORT``, ``VANTAGE_INBOUND_PORT``, the supervisor's) is
served by ``serve_app``, which holds each connection to two limits, so that a caller cannot make
the agent hold sockets and memory for ever:

- a header-read timeout: a connection that has not sent a complete request head within
  ``header_timeout`` seconds of opening, or of the end of its previous response (keep-alive), is
  closed;
- a cap on open connections: beyond ``max_connections``, a new connection is closed at once and
  counted (a warning when the cap is reached, a line when the connections are down to 3/4 of it).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hmac
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from aiohttp import web
from anyio.abc import TaskStatus

from agent.config.maintenance import Open
from agent.config.secrets import Redactor
from agent.errors import ConfigError
from agent.sdk.assertions import AssertionOutcome
from agent.sdk.durations import plural
from agent.sdk.probe import ProbeResult, StepResult
from agent.server.inbound import Inbound
from agent.telemetry.exposition import negotiate
from agent.telemetry.providers import Telemetry
from agent.telemetry.recorder import CheckState, Recorder

if TYPE_CHECKING:
    from agent.server.pages import Pages

__all__ = [
    "PROMETHEUS_TYPE",
    "Bound",
    "Listener",
    "Server",
    "StatusEndpoints",
    "authorized",
    "build_apps",
    "check_json",
    "reload_response",
    "serve_app",
    "serve_endpoints",
]

log = logging.getLogger("vantage.server")
_HEALTH_STALE = 30.0  # seconds without a scheduler turn before /healthz fails
HEADER_TIMEOUT = 10.0
MAX_CONNECTIONS = 512
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def authorized(request: web.Request, token: str | None) -> bool:
    """Whether the request carries the API token (always, when none is set)."""
    if token is None:
        return True
    header = request.headers.get("Authorization", "")
    given = header[7:] if header.startswith("Bearer ") else request.query.get("token", "")
    # Header bytes that are not UTF-8 reach us as lone surrogates: "surrogatepass" turns any text
    # into bytes, so such a header is simply a wrong token, never an exception.
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode())


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, seen through: notes when the connection ends."""

    __slots__ = ("_inner", "_limit")

    def __init__(self, inner: asyncio.Protocol, limit: _ConnectionLimit) -> None:
        self._inner, self._limit = inner, limit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._limit.release()
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _Refused(asyncio.Protocol):
    """A connection over the cap: closed as soon as it is made, before anything is read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # abort(): nothing is written, so nothing is waited for.
        getattr(transport, "abort", transport.close)()


class _ConnectionLimit:
    """The one adapter between aiohttp and the listening socket.

    aiohttp's server (``runner.server``) is a protocol factory: the listening socket calls it once
    per accepted connection. This factory passes each call on while fewer than ``cap`` connections
    are open, and otherwise hands back a protocol that closes the connection at once.

    The header-read timeout needs no code here: it is aiohttp's keep-alive timer
    (``keepalive_timeout``), which aiohttp 3.14 arms when a connection opens and again after each
    response, and which closes the connection when it fires while no complete request head has
    come. tests/faults/test_inbound_faults.py fails if aiohttp changes either behaviour.
    """

    def __init__(
        self, factory: Callable[[], asyncio.Protocol], cap: int, setting: str, refused: Callable[[], None]
    ) -> None:
        self._factory, self._cap, self._setting, self._on_refused = factory, cap, setting, refused
        self.open = 0
        self.refused = 0
        """Connections closed at once because ``cap`` were open, since the start."""
        self._full = False
        self._low = cap * 3 // 4
        self._refused_before = 0

    def __call__(self) -> asyncio.Protocol:
        if self.open >= self._cap:
            self.refused += 1
            if not self._full:
                self._full, self._refused_before = True, self.refused - 1
                log.warning(
                    "%s: %d connections are open, the most allowed; new ones are closed at once "
                    "(logged once until they are down to %d)",
                    self._setting,
                    self._cap,
                    self._low,
                )
            self._on_refused()
            return _Refused()
        self.open += 1
        return _Counted(self._factory(), self)

    def release(self) -> None:
        self.open -= 1
        # Well under the cap before saying so: at the cap, every close followed by a new
        # connection would otherwise log twice, and a flood sits at the cap.
        if self._full and self.open <= self._low:
            self._full = False
            closed = self.refused - self._refused_before
            log.info(
                "%s: down to %s; %s closed at the cap",
                self._setting,
                plural(self.open, "open connection"),
                f"{closed} was" if closed == 1 else f"{closed} were",
            )


async def serve_app(
    app: web.Application,
    host: str,
    port: int,
    *,
    setting: str = "VANTAGE_PORT",
    header_timeout: float = HEADER_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    refused: Callable[[], None] = lambda: None,
    sock: socket.socket | None = None,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until cancelled; ``task_status`` gets the bound port (``port`` may be 0).

    ``setting`` names the variable the port comes from, for the ConfigError raised when the port
    cannot be bound (in use, privileged, an address not on this machine). Connections are held to
    ``header_timeout`` and ``max_connections`` (see the module docstring); ``refused`` is called
    for each connection closed at the cap. With ``sock`` (a listening socket bound already, such
    as the one a supervisor hands its worker), ``host`` and ``port`` are not bound: ``sock`` is
    served.
    """
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=header_timeout)
    await runner.setup()
    server: asyncio.AbstractServer | None = None
    try:
        assert runner.server is not None
        limit = _ConnectionLimit(runner.server, max_connections, setting, refused)
        loop = asyncio.get_running_loop()
        try:
            if sock is not None:
                server = await loop.create_server(limit, sock=sock)
            else:
                server = await loop.create_server(limit, host, port, reuse_address=True)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"{setting}: port {port} on {host} is already in use") from None
            # asyncio words the error for one of the addresses tried; the errno says it plainly.
            if exc.errno is None or isinstance(exc, socket.gaierror):
                why = exc.strerror or str(exc)
            else:
                why = os.strerror(exc.errno)
            raise ConfigError(f"{setting}: port {port} on {host} cannot be bound: {why}") from None
        task_status.started(server.sockets[0].getsockname()[1] if server.sockets else port)
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            if server is not None:
                server.close()  # stop accepting; the runner closes the connections it holds
            await runner.cleanup()


class StatusEndpoints(Protocol):
    """The handlers behind the status routes: a single agent's own, or a supervisor's, which
    merges its workers' answers."""

    async def healthz(self, request: web.Request) -> web.Response:
        """``/healthz``: the event loop and the scheduler are alive."""

    async def readyz(self, request: web.Request) -> web.Response:
        """``/readyz``: configuration loaded, scheduler running, the exporters' health."""

    async def metrics(self, request: web.Request) -> web.Response:
        """``/metrics``: the Prometheus exposition."""

    async def checks(self, request: web.Request) -> web.Response:
        """``/api/checks``: every check's last result (token-guarded)."""

    async def check(self, request: web.Request) -> web.Response:
        """``/api/checks/{name}``: one check's last result (token-guarded)."""

    async def reload(self, request: web.Request) -> web.Response:
        """``POST /-/reload``: reload the checks (token-guarded); see agent/reload.py."""


@dataclass(frozen=True)
class Listener:
    """Where and how the agent's ports are served."""

    host: str
    port: int
    inbound_port: int | None = None
    """A port of its own for the inbound endpoints, or None to serve them on ``port``."""
    max_body: int = 64 * 1024
    """The largest request body taken (``VANTAGE_INBOUND_MAX_BODY``)."""
    header_timeout: float = HEADER_TIMEOUT
    max_connections: int = MAX_CONNECTIONS
    sock: socket.socket | None = None
    """A listening socket bound already for ``port`` (a worker's, from its supervisor)."""


@dataclass(frozen=True)
class Bound:
    """The ports bound: what was asked, or what the kernel picked for a port of 0."""

    port: int
    inbound_port: int | None


def build_apps(
    endpoints: StatusEndpoints, inbound: Inbound | None, listener: Listener, pages: Pages | None = None
) -> tuple[web.Application, web.Application | None]:
    """The application for the agent's port and, with a separate inbound port, the one for it.

    With a separate inbound port, ``/hooks`` and ``/heartbeat`` are served there only, so that an
    ingress can expose them without the status endpoints."""
    main = web.Application(client_max_size=listener.max_body)
    separate = None
    if inbound is not None:
        if listener.inbound_port is None:
            inbound.add_routes(main)
        else:
            separate = web.Application(client_max_size=listener.max_body)
            inbound.add_routes(separate)
    main.router.add_get("/healthz", endpoints.healthz)
    main.router.add_get("/readyz", endpoints.readyz)
    main.router.add_get("/metrics", endpoints.metrics)
    main.router.add_get("/api/checks", endpoints.checks)
    main.router.add_get("/api/checks/{name}", endpoints.check)
    main.router.add_post("/-/reload", endpoints.reload)
    if pages is not None:  # the status page and debug views (agent/server/pages.py)
        pages.add_routes(main)
    return main, separate


async def serve_endpoints(
    endpoints: StatusEndpoints,
    inbound: Inbound | None,
    listener: Listener,
    *,
    refused: Callable[[], None] = lambda: None,
    pages: Pages | None = None,
    task_status: TaskStatus[Bound] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Bind every port (a failure surfaces in the caller of ``tg.start``), serve until cancelled."""
    main, separate = build_apps(endpoints, inbound, listener, pages)

    def serve(
        app: web.Application, port: int, setting: str, sock: socket.socket | None = None
    ) -> functools.partial[Coroutine[Any, Any, None]]:
        return functools.partial(
            serve_app,
            app,
            listener.host,
            port,
            setting=setting,
            header_timeout=listener.header_timeout,
            max_connections=listener.max_connections,
            refused=refused,
            sock=sock,
        )

    async with anyio.create_task_group() as tg:
        inbound_port = None
        if separate is not None:
            assert listener.inbound_port is not None
            inbound_port = await tg.start(serve(separate, listener.inbound_port, "VANTAGE_INBOUND_PORT"))
        port = await tg.start(serve(main, listener.port, "VANTAGE_PORT", listener.sock))
        task_status.started(Bound(port, inbound_port))


class Server:
    """A single agent's status endpoints (``/healthz``, ``/readyz``, ``/metrics``,
    ``/api/checks``) and its inbound endpoints, served by ``serve_endpoints``."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        recorder: Recorder,
        telemetry: Telemetry,
        redactor: Redactor,
        api_token: str | None,
        scheduler_alive: Callable[[], tuple[bool, float]],
        version: str,
        inbound: Inbound | None = None,
        inbound_port: int | None = None,
        max_body: int = 64 * 1024,
        header_timeout: float = HEADER_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        sock: socket.socket | None = None,
        reload: Callable[[str], Awaitable[Mapping[str, Any]]] | None = None,
        pages: Pages | None = None,
        maintenance: InMaintenance | None = None,
    ) -> None:
        self.host, self.port = host, port
        self._maintenance = maintenance
        self._reload = reload
        self._pages = pages
        self._listener = Listener(host, port, inbound_port, max_body, header_timeout, max_connections, sock)
        self._inbound, self.inbound_port = inbound, inbound_port
        self._recorder, self._telemetry, self._redact = recorder, telemetry, redactor
        self._token = api_token
        self._alive = scheduler_alive
        self._version = version

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Bind (a failure surfaces in the caller of ``tg.start``), serve until cancelled;
        ``task_status`` gets the agent's port, and ``inbound_port`` becomes the inbound port bound."""
        async with anyio.create_task_group() as tg:
            bound: Bound = await tg.start(
                functools.partial(
                    serve_endpoints,
                    self,
                    self._inbound,
                    self._listener,
                    # Counted with the inbound requests: a full port is most often a flood of callers.
                    refused=lambda: self._recorder.inbound("connection", "refused"),
                    pages=self._pages,
                )
            )
            if self._pages is not None:
                tg.start_soon(self._pages.run)  # the history's writes to VANTAGE_STATE_DIR
            self.inbound_port = bound.inbound_port
            task_status.started(bound.port)

    async def healthz(self, request: web.Request) -> web.Response:
        running, age = self._alive()
        ok = running and age < _HEALTH_STALE
        return web.json_response(
            {"status": "ok" if ok else "unhealthy", "scheduler_age": round(age, 3)},
            status=200 if ok else 503,
        )

    async def readyz(self, request: web.Request) -> web.Response:
        running, _age = self._alive()
        body = {
            "status": "ready" if running else "not ready",
            "version": self._version,
            "checks": len(self._recorder.states),
            "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            "telemetry": self._telemetry.health(),
        }
        return web.json_response(body, status=200 if running else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        exposition = self._telemetry.exposition
        if exposition is None:
            raise web.HTTPNotFound(
                text="the prometheus metrics exporter is not enabled (OTEL_METRICS_EXPORTER)\n"
            )
        openmetrics, gzip = negotiate(
            request.headers.get("Accept", ""), request.headers.get("Accept-Encoding", "")
        )
        # Rendered on the loop a slice at a time, the probes' work going on between slices (in a
        # thread, it made probe starts late: ExpositionCache). Scrapes within the cache's window
        # share one rendering, which is let go of after it.
        rendering = await exposition.aget(openmetrics=openmetrics, gzip=gzip)
        asyncio.get_running_loop().call_later(exposition.fresh * 2, exposition.expire)
        headers = {"Content-Type": rendering.content_type, "Vary": "Accept, Accept-Encoding"}
        if rendering.gzipped:
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=rendering.body, headers=headers)

    async def checks(self, request: web.Request) -> web.Response:
        if not authorized(request, self._token):
            raise web.HTTPUnauthorized(text="a valid bearer token is required\n")
        states = [
            check_json(state, self._redact, self._maintenance) for state in self._recorder.states.values()
        ]
        return _json({"checks": states})

    async def check(self, request: web.Request) -> web.Response:
        if not authorized(request, self._token):
            raise web.HTTPUnauthorized(text="a valid bearer token is required\n")
        state = self._recorder.states.get(request.match_info["name"])
        if state is None:
            raise web.HTTPNotFound(text="no such check\n")
        return _json(check_json(state, self._redact, self._maintenance))

    async def reload(self, request: web.Request) -> web.Response:
        if not authorized(request, self._token):
            raise web.HTTPUnauthorized(text="a valid bearer token is required\n")
        if self._reload is None:
            raise web.HTTPNotFound(text="this agent cannot reload its checks\n")
        return reload_response(await self._reload("POST /-/reload"))


InMaintenance = Callable[[str], Open | None]
"""The maintenance window open for a check now, by its name (agent/config/maintenance.py)."""


def check_json(
    state: CheckState, redact: Redactor, maintenance: InMaintenance | None = None
) -> dict[str, Any]:
    """One check as ``/api/checks`` shows it (documented in docs/configuration.md, *The status API*).

    For a person as much as for a tool: times in RFC 3339 (UTC, "Z", milliseconds), durations in
    seconds rounded to the millisecond, a flow's steps with what each sent, its status code, its
    assertions and the names of what it extracted. Every text a target or a vendor wrote is redacted.
    """
    check = state.entry.check
    last = state.last
    if last is None:
        verdict = "pending"
    else:
        verdict = "passing" if last.success else "failing"
    return {
        "name": check.name,
        "type": check.type,
        "target": state.target,
        "labels": redact.deep(check.labels),
        "interval": _seconds(check.interval),
        "timeout": _seconds(check.timeout),
        "state": verdict,
        "runs": state.runs,
        "failures": state.failures,
        "skipped": state.skipped,
        "consecutive_failures": state.consecutive_failures,
        "last_change": _rfc3339(state.last_change),
        "confirmed": state.confirmed,
        "confirmed_since": _rfc3339(state.confirmed_since),
        "flapping": state.flapping,
        "state_changes_last_hour": state.changes_last_hour,
        "attempts": state.attempts,
        "last": None if last is None else _result_json(last, state.last_time, redact),
        "maintenance": _maintenance_json(maintenance, check.name, redact),
    }


def _maintenance_json(
    maintenance: InMaintenance | None, name: str, redact: Redactor
) -> dict[str, Any] | None:
    """The window open now (``null`` when none is): its name, reason, since and until."""
    found = maintenance(name) if maintenance is not None else None
    return None if found is None else redact.deep(found.as_json())


def _result_json(result: ProbeResult, at: float | None, redact: Redactor) -> dict[str, Any]:
    return {
        "time": _rfc3339(at),
        "success": result.success,
        "reason": result.reason.value if result.reason else None,
        "message": redact(result.message),
        "duration": _seconds(result.duration),
        "phases": _phases(result.phases),
        # Figures as the probe measured them, less float noise (0.30000000000000004).
        "values": {name: round(value, 6) for name, value in result.values.items()},
        "assertions": [_assertion_json(a, redact) for a in result.assertions],
        "steps": [_step_json(s, redact) for s in result.steps],
    }


def _step_json(step: StepResult, redact: Redactor) -> dict[str, Any]:
    return {
        "name": step.name,
        "request": redact(step.request),
        "status": step.status,
        "success": step.success,
        "duration": _seconds(step.duration),
        "reason": step.reason.value if step.reason else None,
        "message": redact(step.message),
        "assertions": [_assertion_json(a, redact) for a in step.assertions],
        "extracted": list(step.extracted),
    }


def _assertion_json(outcome: AssertionOutcome, redact: Redactor) -> dict[str, Any]:
    return {
        "assertion": redact(outcome.assertion),
        "passed": outcome.passed,
        "actual": redact(outcome.actual),
        "message": redact(outcome.message),
    }


def _rfc3339(timestamp: float | None) -> str | None:
    """``2026-11-29T12:06:35.125Z``: RFC 3339 in UTC, to the millisecond."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seconds(value: float | None) -> float | None:
    """Seconds to the millisecond: what a person reads, and finer than a run's timing means."""
    return None if value is None else round(value, 3)


def _phases(phases: Mapping[str, float]) -> dict[str, float | None]:
    return {name: _seconds(seconds) for name, seconds in phases.items()}


def reload_response(answer: Mapping[str, Any]) -> web.Response:
    """A reload's answer: 200 when it was applied (or changed nothing), 500 with the reason when
    the new checks were refused (as Prometheus answers), 503 while the agent stops."""
    status = {"failed": 500, "stopping": 503}.get(answer.get("status", ""), 200)
    return web.json_response(dict(answer), status=status)


def _json(body: Any) -> web.Response:
    return web.Response(text=json.dumps(body, default=str), content_type="application/json")
