"""Credentials against a local OAuth token endpoint and an API that checks them."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from agent.app import build_agent
from agent.sdk import Reason

from .helpers import FakeClock, config_from, serve
from .test_http_probe import TELEMETRY_ENV, http_check

pytestmark = pytest.mark.anyio

CLIENT_ID, CLIENT_SECRET = "vantage", "s3cret-client/+="


def jwt(claims: dict[str, Any]) -> str:
    def part(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


class Vendor:
    """An OAuth token endpoint that issues JWTs, and an API that accepts only the tokens it issued."""

    def __init__(self, clock: FakeClock | None = None, lifetime: int = 3600, jwt_tokens: bool = True) -> None:
        self.clock, self.lifetime, self.jwt_tokens = clock, lifetime, jwt_tokens
        self.issued: list[str] = []
        self.forms: list[dict[str, str]] = []
        self.revoked: set[str] = set()

    def now(self) -> float:
        import time

        return self.clock.time() if self.clock else time.time()

    async def token(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        self.forms.append({k: str(v) for k, v in form.items()})
        expected = base64.b64encode(b"vantage:s3cret-client%2F%2B%3D").decode()
        basic_ok = request.headers.get("Authorization") == f"Basic {expected}"
        form_ok = form.get("client_id") == CLIENT_ID and form.get("client_secret") == CLIENT_SECRET
        if not (basic_ok or form_ok) or form.get("grant_type") != "client_credentials":
            return web.json_response(
                {"error": "invalid_client", "error_description": "Client authentication failed"}, status=401
            )
        exp = int(self.now()) + self.lifetime
        value = (
            jwt({"sub": CLIENT_ID, "exp": exp, "n": len(self.issued)})
            if self.jwt_tokens
            else f"opaque-{len(self.issued)}x"
        )
        self.issued.append(value)
        return web.json_response({"access_token": value, "token_type": "Bearer", "expires_in": self.lifetime})

    async def api(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ")
        if token not in self.issued or token in self.revoked:
            return web.json_response(
                {}, status=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )
        if request.path == "/admin":
            return web.json_response(
                {},
                status=403,
                headers={"WWW-Authenticate": 'Bearer error="insufficient_scope", scope="admin"'},
            )
        return web.json_response({"ok": True})

    async def echo(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "authorization": request.headers.get("Authorization"),
                "x_api_key": request.headers.get("X-Api-Key"),
                "query": dict(request.query),
            }
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/token", self.token)
        app.router.add_get("/orders", self.api)
        app.router.add_get("/admin", self.api)
        app.router.add_get("/echo", self.echo)
        return app


def oauth(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": "oauth2_client_credentials",
        "token_url": f"http://127.0.0.1:{port}/token",
        "client_id": CLIENT_ID,
        "client_secret": "${CLIENT_SECRET}",
        **extra,
    }


async def runs(checks: list[dict[str, Any]], times: int = 1) -> tuple[Any, list[Any]]:
    """Run the checks ``times`` times through one agent; its state and every span."""
    exporter = InMemorySpanExporter()
    agent = build_agent(
        config_from(checks, CLIENT_SECRET=CLIENT_SECRET),
        TELEMETRY_ENV,
        span_processors=[SimpleSpanProcessor(exporter)],
    )
    try:
        for _ in range(times):
            await agent.scheduler.run_once()
    finally:
        await agent.http.aclose()
    return agent, list(exporter.get_finished_spans())


async def test_client_credentials_token_is_cached_traced_and_its_expiry_exported() -> None:
    vendor = Vendor()
    async with serve(vendor.app()) as port:
        check = http_check(
            "orders",
            f"http://127.0.0.1:{port}/orders",
            auth=oauth(port, scopes=["orders:read"], audience="api", extra={"resource": "x"}),
        )
        agent, spans = await runs([check], times=3)
    state = agent.recorder.states["orders"]
    assert state.runs == 3 and state.failures == 0
    assert len(vendor.issued) == 1  # one token for three runs
    assert vendor.forms[0] == {
        "grant_type": "client_credentials",
        "resource": "x",
        "scope": "orders:read",
        "audience": "api",
    }
    exp = json.loads(base64.urlsafe_b64decode(vendor.issued[0].split(".")[1] + "=="))["exp"]
    assert state.last is not None and state.last.values["probe.auth.token_expiry_timestamp"] == exp
    step = next(s for s in spans if s.name == "oauth2 token")
    token_request = next(
        s for s in spans if s.parent is not None and s.parent.span_id == step.context.span_id
    )
    assert token_request.kind is SpanKind.CLIENT and token_request.attributes["http.request.method"] == "POST"
    assert all(vendor.issued[0] not in json.dumps(dict(s.attributes or {})) for s in spans)


async def test_client_secret_in_the_form_and_a_refused_secret() -> None:
    vendor = Vendor()
    async with serve(vendor.app()) as port:
        good = http_check("form", f"http://127.0.0.1:{port}/orders", auth=oauth(port, client_auth="form"))
        bad = http_check(
            "bad", f"http://127.0.0.1:{port}/orders", auth={**oauth(port), "client_secret": "wrong-secret"}
        )
        agent, _ = await runs([good, bad])
    assert agent.recorder.states["form"].last.success
    last = agent.recorder.states["bad"].last
    assert last.reason is Reason.AUTH
    assert last.message == "token endpoint answered HTTP 401: invalid_client (Client authentication failed)"


async def test_tokens_are_refreshed_before_they_expire_and_after_a_401() -> None:
    clock = FakeClock()
    vendor = Vendor(clock=clock, lifetime=3600, jwt_tokens=False)
    async with serve(vendor.app()) as port:
        check = http_check("orders", f"http://127.0.0.1:{port}/orders", auth=oauth(port))
        agent = build_agent(config_from([check], CLIENT_SECRET=CLIENT_SECRET), TELEMETRY_ENV, clock=clock)
        state = agent.recorder.states["orders"]
        try:
            # Runs at t=0, 2000 (80% of the life not yet gone) and 4000 (past it): two tokens.
            for _ in range(3):
                await agent.scheduler.run_once()
                clock.now += 2000
            assert len(vendor.issued) == 2
            assert state.last is not None and state.last.success
            assert state.last.values["probe.auth.token_expiry_timestamp"] == clock.time() - 2000 + 3600
            # A revoked token: the run fails as auth, and the next one fetches a new token.
            vendor.revoked.update(vendor.issued)
            await agent.scheduler.run_once()
            assert state.last.reason is Reason.AUTH
            await agent.scheduler.run_once()
            assert state.last.success
            assert len(vendor.issued) == 3
        finally:
            await agent.http.aclose()


async def test_401_and_403_are_auth_failures_with_distinct_messages() -> None:
    vendor = Vendor()
    async with serve(vendor.app()) as port:
        agent, _ = await runs(
            [
                http_check("no-token", f"http://127.0.0.1:{port}/orders"),
                http_check("no-scope", f"http://127.0.0.1:{port}/admin", auth=oauth(port)),
            ]
        )
    no_token, no_scope = agent.recorder.states["no-token"].last, agent.recorder.states["no-scope"].last
    assert no_token.reason is Reason.AUTH and no_scope.reason is Reason.AUTH
    assert no_token.message.startswith("HTTP 401: the credential was rejected")
    assert no_token.message.endswith("the API says invalid_token")
    assert no_scope.message.startswith("HTTP 403: the credential was accepted but lacks the permission")
    assert no_scope.message.endswith("the API says insufficient_scope")


async def test_basic_bearer_and_api_keys() -> None:
    vendor = Vendor()
    static = jwt({"exp": 1_900_000_000})
    async with serve(vendor.app()) as port:
        url = f"http://127.0.0.1:{port}/echo"
        agent, _ = await runs(
            [
                http_check(
                    "basic",
                    url,
                    auth={"type": "basic", "username": "ann", "password": "pw"},
                    **{
                        "assert": [
                            {
                                "source": "body",
                                "path": "$.authorization",
                                "op": "eq",
                                "value": "Basic " + base64.b64encode(b"ann:pw").decode(),
                            }
                        ]
                    },
                ),
                http_check("bearer", url, auth={"type": "bearer", "token": static}),
                http_check(
                    "key-header",
                    url,
                    auth={"type": "api_key", "name": "X-Api-Key", "value": "k-123"},
                    **{"assert": [{"source": "body", "path": "$.x_api_key", "op": "eq", "value": "k-123"}]},
                ),
                http_check(
                    "key-query",
                    url,
                    auth={"type": "api_key", "name": "key", "value": "k-456", "in": "query"},
                    **{"assert": [{"source": "body", "path": "$.query.key", "op": "eq", "value": "k-456"}]},
                ),
            ]
        )
    states = agent.recorder.states
    assert all(states[name].last.success for name in ("basic", "bearer", "key-header", "key-query")), {
        n: s.last.message for n, s in states.items()
    }
    assert states["bearer"].last.values["probe.auth.token_expiry_timestamp"] == 1_900_000_000
