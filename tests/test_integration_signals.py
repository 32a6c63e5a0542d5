"""The integration signals as the OTLP receiver decodes them from the agent process."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from email.utils import formatdate

import pytest
from aiohttp import web

from .helpers import AgentProcess, otlp_http_receiver, thread_server, wait_until

pytestmark = pytest.mark.slow

SUNSET = 1_900_000_000


@pytest.fixture
def vendor() -> Iterator[int]:
    issued: set[str] = set()

    async def token(request: web.Request) -> web.Response:
        if (
            request.headers.get("Authorization")
            != "Basic " + base64.b64encode(b"vantage:cl13nt-s3cret").decode()
        ):
            return web.json_response({"error": "invalid_client"}, status=401)
        value = f"tok-{len(issued)}-abcdef"
        issued.add(value)
        return web.json_response({"access_token": value, "token_type": "Bearer", "expires_in": 300})

    async def orders(request: web.Request) -> web.Response:
        if request.headers.get("Authorization", "").removeprefix("Bearer ") not in issued:
            return web.json_response({}, status=401)
        return web.json_response(
            {"orders": []},
            headers={
                "X-RateLimit-Limit": "100",
                "X-RateLimit-Remaining": "42",
                "X-RateLimit-Reset": "30",
                "Deprecation": "@1700000000",
                "Sunset": formatdate(SUNSET, usegmt=True),
                "Link": '<https://vendor.example/migrate>; rel="deprecation"',
            },
        )

    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_get("/v1/orders", orders)
    with thread_server(app) as port:
        yield port


def test_credentials_quota_and_deprecation_reach_the_receiver(vendor: int) -> None:
    check = {
        "name": "orders",
        "type": "http",
        "target": f"http://127.0.0.1:{vendor}/v1/orders",
        "interval": "1s",
        "timeout": "900ms",
        "settings": {
            "auth": {
                "type": "oauth2_client_credentials",
                "token_url": f"http://127.0.0.1:{vendor}/token",
                "client_id": "vantage",
                "client_secret": "${CLIENT_SECRET}",
            }
        },
    }
    with otlp_http_receiver() as (endpoint, received):
        agent = AgentProcess(
            [check],
            {
                "CLIENT_SECRET": "cl13nt-s3cret",
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_METRIC_EXPORT_INTERVAL": "300",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            },
        )
        started = time.time()
        try:
            wait_until(
                lambda: (
                    received.points("probe.api.deprecated")
                    and len([s for _, s in received.spans() if s.name == "check orders"]) >= 2
                ),
                timeout=30,
            )
            assert agent.stop() == 0, agent.output
        finally:
            agent.kill()
    values = {
        name: received.points(name)[-1][1]
        for name in (
            "probe.success",
            "probe.ratelimit.remaining",
            "probe.ratelimit.limit",
            "probe.ratelimit.reset",
            "probe.api.deprecated",
            "probe.api.sunset_timestamp",
            "probe.auth.token_expiry_timestamp",
        )
    }
    assert values["probe.success"] == 1
    assert (values["probe.ratelimit.remaining"], values["probe.ratelimit.limit"]) == (42, 100)
    assert values["probe.ratelimit.reset"] == 30
    assert values["probe.api.deprecated"] == 1 and values["probe.api.sunset_timestamp"] == SUNSET
    assert started + 300 - 5 <= values["probe.auth.token_expiry_timestamp"] <= time.time() + 300
    spans = [span for _, span in received.spans()]
    token_steps = [s for s in spans if s.name == "oauth2 token"]
    assert len(token_steps) == 1  # cached across runs
    post = next(s for s in spans if s.parent_span_id == token_steps[0].span_id)
    assert post.name == "POST"
    root = next(s for s in spans if s.name == "check orders")
    event = next(e for e in root.events if e.name == "api_deprecation")
    attributes = {kv.key: kv.value.string_value for kv in event.attributes}
    assert attributes["vantage.api.deprecation_link"] == "https://vendor.example/migrate"
    with received.lock:
        raw = b"".join(m.SerializeToString() for m in [*received.traces, *received.metrics])
    assert b"cl13nt-s3cret" not in raw and b"tok-0-abcdef" not in raw


def test_flow_steps_and_schema_drift_reach_the_receiver() -> None:
    state = {"n": 0}

    async def login(_: web.Request) -> web.Response:
        return web.json_response({"token": "flow-session-abcdef"})

    async def items(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer flow-session-abcdef":
            return web.json_response({}, status=401)
        state["n"] += 1
        # The shape changes from the third response on: "count" turns into a string.
        return web.json_response({"count": 3 if state["n"] < 3 else "3"})

    app = web.Application()
    app.router.add_post("/login", login)
    app.router.add_get("/items", items)
    with thread_server(app) as port, otlp_http_receiver() as (endpoint, received):
        checks = [
            {
                "name": "journey",
                "type": "flow",
                "target": f"http://127.0.0.1:{port}",
                "interval": "1s",
                "timeout": "900ms",
                "settings": {
                    "steps": [
                        {
                            "name": "login",
                            "method": "POST",
                            "url": "/login",
                            "extract": {"token": {"path": "$.token", "secret": True}},
                        },
                        {
                            "name": "items",
                            "url": "/items",
                            "headers": {"Authorization": "Bearer ${steps.login.token}"},
                        },
                    ]
                },
            },
            {
                "name": "shape",
                "type": "http",
                "target": f"http://127.0.0.1:{port}/items",
                "interval": "1s",
                "timeout": "900ms",
                "settings": {"headers": {"Authorization": "Bearer flow-session-abcdef"}, "schema_drift": {}},
            },
        ]
        agent = AgentProcess(
            checks,
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_METRIC_EXPORT_INTERVAL": "300",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            },
        )
        try:
            wait_until(lambda: received.points("probe.schema.drift"), timeout=30)
            assert agent.stop() == 0, agent.output
        finally:
            agent.kill()
    steps = {a["step"] for a, _ in received.points("probe.http.duration") if a["check"] == "journey"}
    assert steps == {"login", "items"}
    spans = [span for _, span in received.spans()]
    root = next(s for s in spans if s.name == "check journey")
    children = {s.name for s in spans if s.parent_span_id == root.span_id}
    assert children == {"login", "items"}
    drift = next(
        s for s in spans if s.name == "check shape" and any(e.name == "schema_drift" for e in s.events)
    )
    event = next(e for e in drift.events if e.name == "schema_drift")
    assert {kv.key: kv.value.string_value for kv in event.attributes}["vantage.schema.retyped"] == (
        "$.count (number → string)"
    )
    with received.lock:
        raw = b"".join(m.SerializeToString() for m in received.traces)
    assert b"flow-session-abcdef" not in raw
