"""The sync probe against two local APIs whose data diverge and converge."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from agent.errors import ConfigError
from agent.sdk import Reason

from .helpers import config_from, serve
from .test_http_probe import run_checks

pytestmark = pytest.mark.anyio


def system(state: dict[str, Any], token: str) -> web.Application:
    """An API serving ``state``; it wants ``Authorization: Bearer <token>``."""

    async def latest(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {token}":
            return web.json_response({"error": "unauthorized"}, status=401)
        if state.get("broken"):
            return web.Response(status=500, text="down")
        return web.json_response(state)

    app = web.Application()
    app.router.add_get("/latest", latest)
    return app


def sync(name: str, shop: int, erp: int, measure: str, **settings: Any) -> dict[str, Any]:
    a = {"url": "/latest", "auth": {"type": "bearer", "token": "${SHOP_TOKEN}"}}
    b = {"url": f"http://127.0.0.1:{erp}/latest", "auth": {"type": "bearer", "token": "${ERP_TOKEN}"}}
    a_settings = settings.pop("a", {})
    b.update(settings.pop("b", {}))
    sides = {"b": b} if a_settings is None else {"a": {**a, **a_settings}, "b": b}
    return {
        "name": name,
        "type": "sync",
        "target": f"http://127.0.0.1:{shop}",
        "interval": "1m",
        "timeout": "3s",
        "settings": {"measure": measure, **sides, **settings},
    }


def iso(seconds_ago: float) -> str:
    return datetime.fromtimestamp(time.time() - seconds_ago, UTC).isoformat()


async def test_diverge_and_converge() -> None:
    shop: dict[str, Any] = {}
    erp: dict[str, Any] = {}
    tokens = {"SHOP_TOKEN": "shop-secret", "ERP_TOKEN": "erp-secret"}
    async with serve(system(shop, "shop-secret")) as shop_port, serve(system(erp, "erp-secret")) as erp_port:
        checks = [
            sync(
                "lag",
                shop_port,
                erp_port,
                "lag",
                max_lag="5m",
                a={"value": "$.order.created_at"},
                b={"value": "$.last_import"},
            ),
            sync("now-lag", shop_port, erp_port, "lag", max_lag="5m", a=None, b={"value": "$.imported_ms"}),
            sync(
                "count",
                shop_port,
                erp_port,
                "drift",
                max_drift=2,
                a={"value": "$.count"},
                b={"value": "$.count"},
            ),
            sync(
                "revenue",
                shop_port,
                erp_port,
                "drift",
                max_drift=0.01,
                relative=True,
                a={"value": "$.revenue"},
                b={"value": "$.revenue"},
            ),
            sync(
                "customer",
                shop_port,
                erp_port,
                "record",
                fields={
                    "email": "$.customer.email",
                    "plan": {"a": "$.customer.plan", "b": "$.customer.tier"},
                },
            ),
        ]

        # In step: the copy is a minute behind, the numbers agree.
        shop.update(
            order={"created_at": iso(0)},
            count=100,
            revenue=1000.0,
            customer={"email": "a@shop.test", "plan": "pro"},
        )
        erp.update(
            last_import=iso(60),
            imported_ms=int((time.time() - 60) * 1000),
            count=99,
            revenue=1005.0,
            customer={"email": "a@shop.test", "tier": "pro"},
        )
        converged, _ = await run_checks(checks, **tokens)

        # The import stopped two hours ago; the copies drift apart.
        erp.update(
            last_import=iso(7200),
            imported_ms=int((time.time() - 7200) * 1000),
            count=90,
            revenue=900.0,
            customer={"email": "old@shop.test", "tier": "free"},
        )
        diverged, _ = await run_checks(checks, **tokens)

        erp["broken"] = True
        broken, _ = await run_checks(checks[:1], **tokens)
        del erp["broken"]
        wrong_token, _ = await run_checks(checks[:1], SHOP_TOKEN="stolen", ERP_TOKEN="erp-secret")

    for name, result in converged.items():
        assert result.success, (name, result.message)
    assert 59 <= converged["lag"].values["probe.sync.lag"] <= 62
    assert 59 <= converged["now-lag"].values["probe.sync.lag"] <= 62
    assert converged["count"].values["probe.sync.drift"] == 1
    assert converged["revenue"].values["probe.sync.drift"] == pytest.approx(0.005)
    assert converged["customer"].values["probe.sync.mismatched_fields"] == 0
    assert set(converged["lag"].phases) == {"a", "b"}

    assert diverged["lag"].reason is Reason.STALE
    assert diverged["lag"].message.startswith("system B is 2h") and diverged["lag"].message.endswith(
        "behind A, more than 5m"
    )
    assert diverged["now-lag"].reason is Reason.STALE and "behind now" in diverged["now-lag"].message
    assert diverged["count"].reason is Reason.ASSERTION
    assert diverged["count"].message == "A is 100 and B is 90: a drift of 10, more than 2"
    assert diverged["revenue"].message == "A is 1000 and B is 900: a drift of 10.00%, more than 1.00%"
    assert diverged["customer"].message == "the systems disagree on 2 of 2 fields: email, plan"

    assert broken["lag"].reason is Reason.HTTP_STATUS
    assert broken["lag"].message == "system B: HTTP 500 (expected 2xx)"
    assert wrong_token["lag"].reason is Reason.AUTH and wrong_token["lag"].message.startswith(
        "system A: HTTP 401: the credential was rejected"
    )


async def test_values_that_are_not_there_or_not_numbers() -> None:
    shop: dict[str, Any] = {"count": "many", "at": "yesterday-ish"}
    erp: dict[str, Any] = {"count": 3}
    async with serve(system(shop, "shop-secret")) as shop_port, serve(system(erp, "erp-secret")) as erp_port:
        checks = [
            sync(
                "nan",
                shop_port,
                erp_port,
                "drift",
                max_drift=1,
                a={"value": "$.count"},
                b={"value": "$.count"},
            ),
            sync(
                "missing",
                shop_port,
                erp_port,
                "drift",
                max_drift=1,
                a={"value": "$.nope"},
                b={"value": "$.count"},
            ),
            sync(
                "when", shop_port, erp_port, "lag", max_lag="1m", a={"value": "$.at"}, b={"value": "$.count"}
            ),
        ]
        results, _ = await run_checks(checks, SHOP_TOKEN="shop-secret", ERP_TOKEN="erp-secret")
    assert results["nan"].message == "system A: $.count is 'many', not a number"
    assert results["missing"].message == "system A: $.nope is not in the response"
    assert results["when"].message == "system A: $.at is 'yesterday-ish', not a timestamp"
    assert all(result.reason is Reason.ASSERTION for result in results.values())


def test_settings_are_checked_at_load() -> None:
    base = {"name": "s", "type": "sync", "target": "https://shop.example"}
    b = {"url": "/x", "value": "$.v"}
    with pytest.raises(ConfigError, match="'lag' needs 'max_lag'"):
        config_from([{**base, "settings": {"b": b}}])
    with pytest.raises(ConfigError, match="'drift' compares two systems"):
        config_from([{**base, "settings": {"measure": "drift", "max_drift": 1, "b": b}}])
    with pytest.raises(ConfigError, match="'record' needs the 'fields'"):
        config_from([{**base, "settings": {"measure": "record", "a": b, "b": b}}])
    with pytest.raises(ConfigError, match="is not a valid JSONPath"):
        config_from([{**base, "settings": {"max_lag": "1m", "b": {"url": "/x", "value": "$[?"}}}])
