"""The agent's HTTP server: health, readiness, ``/metrics`` and the status API."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Callable
from typing import Any

import anyio
from aiohttp import web
from anyio.abc import TaskStatus

from .inbound import Inbound
from .recorder import Recorder
from .secrets import Redactor
from .telemetry import Telemetry

__all__ = ["PROMETHEUS_TYPE", "Server", "authorized", "serve_app"]

_HEALTH_STALE = 30.0  # seconds without a scheduler turn before /healthz fails
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def authorized(request: web.Request, token: str | None) -> bool:
    """Whether the request carries the API token (always, when none is set)."""
    if token is None:
        return True
    header = request.headers.get("Authorization", "")
    given = header[7:] if header.startswith("Bearer ") else request.query.get("token", "")
    return hmac.compare_digest(given.encode(), token.encode())


async def serve_app(
    app: web.Application, host: str, port: int, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``app`` until cancelled; ``task_status`` gets the bound port (``port`` may be 0)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        task_status.started(sockets[0].getsockname()[1] if sockets else port)
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()


class Server:
    """Serves ``/healthz``, ``/readyz``, ``/metrics`` and ``/api/checks`` on the agent's port."""

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
    ) -> None:
        self.host, self.port = host, port
        self._inbound, self.inbound_port, self._max_body = inbound, inbound_port, max_body
        self._recorder, self._telemetry, self._redact = recorder, telemetry, redactor
        self._token = api_token
        self._alive = scheduler_alive
        self._version = version

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self._max_body)
        if self._inbound is not None and self.inbound_port is None:
            self._inbound.add_routes(app)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/checks", self._checks)
        app.router.add_get("/api/checks/{name}", self._check)
        return app

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Bind (a failure surfaces in the caller of ``tg.start``), serve until cancelled.

        With a separate inbound port, ``/hooks`` and ``/heartbeat`` are served there only, so that
        an ingress can expose them without the status endpoints; ``inbound_port`` becomes the port
        bound."""
        async with anyio.create_task_group() as tg:
            if self._inbound is not None and self.inbound_port is not None:
                inbound = web.Application(client_max_size=self._max_body)
                self._inbound.add_routes(inbound)
                self.inbound_port = await tg.start(serve_app, inbound, self.host, self.inbound_port)
            await serve_app(self.app(), self.host, self.port, task_status=task_status)

    async def _healthz(self, _: web.Request) -> web.Response:
        running, age = self._alive()
        ok = running and age < _HEALTH_STALE
        return web.json_response(
            {"status": "ok" if ok else "unhealthy", "scheduler_age": round(age, 3)},
            status=200 if ok else 503,
        )

    async def _readyz(self, _: web.Request) -> web.Response:
        running, _age = self._alive()
        body = {
            "status": "ready" if running else "not ready",
            "version": self._version,
            "checks": len(self._recorder.states),
            "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            "telemetry": self._telemetry.health(),
        }
        return web.json_response(body, status=200 if running else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        if self._telemetry.prometheus is None:
            raise web.HTTPNotFound(
                text="the prometheus metrics exporter is not enabled (OTEL_METRICS_EXPORTER)\n"
            )
        # Collecting every instrument is synchronous work; keep it off the event loop.
        body = await anyio.to_thread.run_sync(self._telemetry.render_prometheus)
        return web.Response(
            body=self._redact(body.decode()).encode(), headers={"Content-Type": PROMETHEUS_TYPE}
        )

    async def _checks(self, request: web.Request) -> web.Response:
        if not authorized(request, self._token):
            raise web.HTTPUnauthorized(text="a valid bearer token is required\n")
        states = [state.as_json(self._redact) for state in self._recorder.states.values()]
        return _json({"checks": states})

    async def _check(self, request: web.Request) -> web.Response:
        if not authorized(request, self._token):
            raise web.HTTPUnauthorized(text="a valid bearer token is required\n")
        state = self._recorder.states.get(request.match_info["name"])
        if state is None:
            raise web.HTTPNotFound(text="no such check\n")
        return _json(state.as_json(self._redact))


def _json(body: Any) -> web.Response:
    return web.Response(text=json.dumps(body, default=str), content_type="application/json")
