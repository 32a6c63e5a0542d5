"""The one HTTP verdict (plugins/_toolkit/verdict.py) as each probe type that makes HTTP requests
sees it: a 401 is ``auth`` and drops the cached OAuth token, a 429 is ``rate_limited`` and backs
the check off by the ``Retry-After`` the target sent (``ProbeResult.retry_after``)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from agent.app import build_agent
from agent.sdk import Reason

from .helpers import config_from, serve
from .test_http_auth import CLIENT_SECRET, Vendor, oauth, runs
from .test_http_probe import TELEMETRY_ENV

pytestmark = pytest.mark.anyio


class Limited:
    """An API that rate-limits every call with ``Retry-After: 30``."""

    def __init__(self) -> None:
        self.calls = 0

    async def limited(self, request: web.Request) -> web.Response:
        self.calls += 1
        return web.json_response({"error": "slow down"}, status=429, headers={"Retry-After": "30"})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.limited)
        return app


def flow_check(name: str, base: str, steps: list[dict[str, Any]], **settings: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "flow",
        "target": base,
        "interval": "10s",
        "timeout": "3s",
        "settings": {"steps": steps, **settings},
    }


async def test_a_401_in_a_flow_step_is_auth_and_drops_the_cached_token() -> None:
    vendor = Vendor()
    async with serve(vendor.app()) as port:
        check = flow_check(
            "orders-flow", f"http://127.0.0.1:{port}", [{"name": "list", "url": "/orders"}], auth=oauth(port)
        )
        agent = build_agent(config_from([check], CLIENT_SECRET=CLIENT_SECRET), TELEMETRY_ENV)
        state = agent.recorder.states["orders-flow"]
        try:
            await agent.scheduler.run_once()
            assert state.last is not None and state.last.success, state.last
            vendor.revoked.add(vendor.issued[0])  # the vendor revokes the token the agent holds
            await agent.scheduler.run_once()
            failed = state.last
            assert failed.reason is Reason.AUTH, failed.message
            assert failed.message.startswith("step 'list': HTTP 401: the credential was rejected")
            assert len(vendor.issued) == 1  # the revoked token was sent once more, no new one yet
            await agent.scheduler.run_once()
            # The 401 dropped the token: this run fetched a fresh one, and passed with it.
            assert len(vendor.issued) == 2
            assert state.last.success, state.last.message
        finally:
            await agent.http.aclose()


async def test_a_429_backs_off_a_flow_a_sync_and_a_webhook_trigger() -> None:
    limited = Limited()
    async with serve(limited.app()) as port:
        base = f"http://127.0.0.1:{port}"
        agent, _ = await runs(
            [
                flow_check("flow", base, [{"name": "create", "method": "POST", "url": "/orders"}]),
                {
                    "name": "sync",
                    "type": "sync",
                    "target": base,
                    "interval": "10s",
                    "timeout": "3s",
                    "settings": {"measure": "lag", "max_lag": "1m", "b": {"url": "/latest", "value": "$.at"}},
                },
                {
                    "name": "hook",
                    "type": "webhook",
                    "target": base,
                    "interval": "10s",
                    "timeout": "3s",
                    "settings": {
                        "token": "hook-token-123",
                        "trigger": {"steps": [{"name": "charge", "method": "POST", "url": "/charges"}]},
                        "correlation": {"path": "$.run"},
                    },
                },
            ]
        )
    states = agent.recorder.states
    assert limited.calls == 3
    for name, prefix in (
        ("flow", "step 'create': "),
        ("sync", "system B: "),
        ("hook", "trigger: step 'charge': "),
    ):
        last = states[name].last
        assert last.reason is Reason.RATE_LIMITED, (name, last.message)
        assert last.message == f"{prefix}HTTP 429: rate limited; backing off for 30s", name
        assert last.retry_after == 30, name


async def test_a_429_from_the_token_endpoint_is_rate_limited_and_backs_off() -> None:
    limited = Limited()
    async with serve(limited.app()) as port:
        check = {
            "name": "orders",
            "type": "http",
            "target": f"http://127.0.0.1:{port}/orders",
            "interval": "10s",
            "timeout": "3s",
            "settings": {"auth": oauth(port)},
        }
        agent, _ = await runs([check])
    last = agent.recorder.states["orders"].last
    assert limited.calls == 1  # the token request only: the API was not called without a token
    assert last.reason is Reason.RATE_LIMITED, last.message
    assert last.message == "token endpoint answered HTTP 429: slow down; backing off for 30s"
    assert last.retry_after == 30
