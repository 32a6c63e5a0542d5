"""The flow probe: login, create, delete against a local vendor, with extraction and cleanup."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from opentelemetry.trace import StatusCode

from agent.errors import ConfigError
from agent.sdk import Reason

from .helpers import config_from, serve
from .test_http_probe import run_checks

pytestmark = pytest.mark.anyio


class Shop:
    def __init__(self, fail_create: bool = False) -> None:
        self.fail_create = fail_create
        self.orders: dict[str, dict[str, Any]] = {}
        self.sessions: set[str] = set()
        self.logged_out = 0
        self.idempotency: list[str] = []

    async def login(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body != {"user": "probe", "password": "pw-secret"}:
            return web.json_response({"error": "bad login"}, status=401)
        token = f"sess-{len(self.sessions)}-tokenvalue"
        self.sessions.add(token)
        return web.json_response({"token": token})

    def authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization", "").removeprefix("Bearer ") in self.sessions

    async def create(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return web.json_response({}, status=401)
        if self.fail_create:
            return web.json_response({"error": "boom"}, status=500)
        self.idempotency.append(request.headers.get("Idempotency-Key", ""))
        order_id = f"ord_{len(self.orders) + 1}"
        self.orders[order_id] = await request.json()
        return web.json_response({"id": order_id}, status=201, headers={"Location": f"/orders/{order_id}"})

    async def delete(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return web.json_response({}, status=401)
        self.orders.pop(request.match_info["id"], None)
        return web.Response(status=204)

    async def logout(self, request: web.Request) -> web.Response:
        self.logged_out += 1
        return web.Response(status=204)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/login", self.login)
        app.router.add_post("/orders", self.create)
        app.router.add_delete("/orders/{id}", self.delete)
        app.router.add_post("/logout", self.logout)
        return app


def flow(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": "checkout",
        "type": "flow",
        "target": f"http://127.0.0.1:{port}",
        "interval": "10s",
        "timeout": "3s",
        "settings": {
            "vars": {"sku": "sku-42"},
            "steps": [
                {
                    "name": "login",
                    "method": "POST",
                    "url": "/login",
                    "json": {"user": "probe", "password": "${SHOP_PASSWORD}"},
                    "extract": {"token": {"path": "$.token", "secret": True}},
                },
                {
                    "name": "create",
                    "method": "POST",
                    "url": "/orders",
                    "headers": {"Authorization": "Bearer ${steps.login.token}", "Idempotency-Key": "${uuid}"},
                    "json": {"sku": "${vars.sku}"},
                    "assert": [{"source": "status", "op": "eq", "value": 201}],
                    "extract": {
                        "order_id": {"source": "header", "name": "Location", "regex": "/orders/(\\w+)"}
                    },
                },
                {
                    "name": "delete",
                    "method": "DELETE",
                    "url": "/orders/${vars.order_id}",
                    "headers": {"Authorization": "Bearer ${steps.login.token}"},
                    "assert": [{"source": "status", "op": "eq", "value": 204}],
                },
                {
                    "name": "logout",
                    "method": "POST",
                    "url": "/logout",
                    "always": True,
                    "assert": [{"source": "status", "op": "eq", "value": 204}],
                },
            ],
            **extra,
        },
    }


async def test_a_three_step_flow_with_extraction_and_cleanup() -> None:
    shop = Shop()
    async with serve(shop.app()) as port:
        results, spans = await run_checks([flow(port)], SHOP_PASSWORD="pw-secret")
    result = results["checkout"]
    assert result.success, result.message
    assert [s.name for s in result.steps] == ["login", "create", "delete", "logout"]
    assert all(s.success for s in result.steps)
    assert shop.orders == {} and shop.logged_out == 1  # created, then deleted
    assert len(shop.idempotency[0]) == 36  # a fresh uuid
    step_spans = {s.name: s for s in spans if s.name in ("login", "create", "delete", "logout")}
    root = next(s for s in spans if s.name == "check checkout")
    assert all(s.parent is not None and s.parent.span_id == root.context.span_id for s in step_spans.values())
    labelled = {
        (s.labels["step"], s.labels["phase"]) for s in result.samples if s.metric == "probe.http.duration"
    }
    assert ("create", "processing") in labelled and ("logout", "transfer") in labelled
    statuses = {s.labels["step"]: s.value for s in result.samples if s.metric == "probe.http.status_code"}
    assert statuses == {"login": 200, "create": 201, "delete": 204, "logout": 204}
    # The session token was marked secret: it never reaches a span.
    for span in spans:
        assert "tokenvalue" not in str(dict(span.attributes or {}))


async def test_a_failing_step_names_itself_skips_the_rest_but_runs_cleanup() -> None:
    shop = Shop(fail_create=True)
    async with serve(shop.app()) as port:
        results, spans = await run_checks([flow(port)], SHOP_PASSWORD="pw-secret")
    result = results["checkout"]
    assert result.reason is Reason.HTTP_STATUS
    assert result.message.startswith("step 'create': HTTP 500")
    assert [(s.name, s.success) for s in result.steps] == [
        ("login", True),
        ("create", False),
        ("delete", False),
        ("logout", True),
    ]
    assert result.steps[2].message == "skipped: step 'create' failed"
    assert shop.logged_out == 1  # the always-step ran
    create = next(s for s in spans if s.name == "create")
    assert create.status.status_code is StatusCode.ERROR


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("/orders/${steps.nope.id}", "names no earlier step"),
        ("/orders/${steps.login.nope}", "names nothing step 'login' extracts"),
        ("/orders/${vars.later}", "names no variable of the check or an earlier step"),
        ("/orders/${whatever}", "is not a template"),
    ],
)
def test_bad_templates_are_configuration_errors(url: str, message: str) -> None:
    check = {
        "name": "f",
        "type": "flow",
        "target": "https://shop.example",
        "settings": {
            "steps": [
                {"name": "login", "url": "/login", "extract": {"token": {"path": "$.token"}}},
                {"name": "next", "url": url},
                {"name": "later", "url": "/x", "extract": {"later": {"path": "$.x"}}},
            ]
        },
    }
    with pytest.raises(ConfigError, match="step 'next', url: "):
        config_from([check])
    with pytest.raises(ConfigError) as caught:
        config_from([check])
    assert message in str(caught.value)
