"""``/api/checks`` as a person and a tool read it: RFC 3339 times, durations to the millisecond, a
flow's steps with their requests, status codes, assertions and extractions, failure messages that
name an assertion once and say why a connection failed in plain words. Against a real agent and a
real vendor on loopback."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from agent.app import build_agent
from agent.sdk import Reason, map_curl_error, map_exception

from .helpers import config_from, serve
from .test_http_probe import TELEMETRY_ENV, http_check

pytestmark = pytest.mark.anyio

TOKEN = "tok_0123456789abcdef0123"
RFC3339_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def vendor() -> web.Application:
    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": TOKEN, "expires_in": 3600})

    async def orders(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({"orders": [{"id": "ord_1", "status": "pending"}]})

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    app.router.add_get("/v1/orders", orders)
    return app


def flow(name: str, base: str, wanted: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "flow",
        "target": base,
        "interval": "10s",
        "timeout": "3s",
        "settings": {
            "steps": [
                {
                    "name": "token",
                    "method": "POST",
                    "url": "/oauth/token",
                    "extract": {"access_token": {"path": "$.access_token", "secret": True}},
                },
                {
                    "name": "orders",
                    "url": "/v1/orders",
                    "headers": {"Authorization": "Bearer ${steps.token.access_token}"},
                    "assert": [
                        {"source": "status", "op": "eq", "value": 200},
                        {"source": "body", "path": "$.orders[0].status", "op": "eq", "value": wanted},
                    ],
                },
                {
                    "name": "after",
                    "url": "/v1/orders",
                    "headers": {"Authorization": "Bearer ${steps.token.access_token}"},
                },
            ]
        },
    }


async def api_checks(checks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Run each check once in a real agent; ``/api/checks`` by check name."""
    agent = build_agent(config_from(checks, VANTAGE_HOST="127.0.0.1", VANTAGE_PORT="0"), TELEMETRY_ENV)
    try:
        async with anyio.create_task_group() as tg:
            port = await tg.start(agent.server.serve)
            await agent.scheduler.run_once()
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/api/checks") as response,
            ):
                assert response.status == 200
                body = await response.json()
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/api/checks/{checks[0]['name']}") as response,
            ):
                one = await response.json()
            tg.cancel_scope.cancel()
    finally:
        await agent.http.aclose()
    by_name = {c["name"]: c for c in body["checks"]}
    assert one == by_name[checks[0]["name"]]  # one check reads as it does in the list
    return by_name


def milliseconds(value: float) -> bool:
    return round(value, 3) == value


async def test_times_are_rfc3339_and_durations_milliseconds() -> None:
    before = datetime.now(UTC)
    async with serve(vendor()) as port:
        checks = await api_checks([http_check("orders", f"http://127.0.0.1:{port}/v1/orders")])
    orders = checks["orders"]
    assert orders["state"] == "failing"  # no token: 401
    last = orders["last"]
    for stamp in (last["time"], orders["last_change"]):
        assert RFC3339_MS.match(stamp), stamp
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        assert before - timedelta(seconds=1) <= when <= datetime.now(UTC)
    assert (orders["interval"], orders["timeout"]) == (10.0, 3.0)
    assert 0 < last["duration"] and milliseconds(last["duration"])
    assert last["phases"] and all(milliseconds(seconds) for seconds in last["phases"].values())
    assert last["message"] == "HTTP 401: the credential was rejected (missing, invalid, expired or revoked)"


async def test_a_flow_shows_each_step_with_status_assertions_and_extractions() -> None:
    async with serve(vendor()) as port:
        base = f"http://127.0.0.1:{port}"
        checks = await api_checks([flow("good", base, "pending"), flow("bad", base, "shipped")])
    good, bad = checks["good"], checks["bad"]
    assert good["state"] == "passing" and good["last"]["success"]
    token, orders, after = good["last"]["steps"]
    assert (token["name"], token["request"], token["status"]) == ("token", f"POST {base}/oauth/token", 200)
    assert token["extracted"] == ["access_token"] and token["assertions"] == []
    assert (orders["request"], orders["status"], orders["success"]) == (f"GET {base}/v1/orders", 200, True)
    assert orders["assertions"] == [
        {"assertion": "status eq 200", "passed": True, "actual": "200", "message": ""},
        {
            "assertion": 'body $.orders[0].status eq "pending"',
            "passed": True,
            "actual": "pending",
            "message": "",
        },
    ]
    assert after["status"] == 200 and milliseconds(after["duration"])

    # The failing flow: its step names the failed assertion once; the step after it is skipped.
    assert bad["state"] == "failing"
    message = 'expected body $.orders[0].status eq "shipped", got pending'
    assert bad["last"]["message"] == f"step 'orders': {message}"
    _, orders, after = bad["last"]["steps"]
    assert (orders["status"], orders["success"], orders["reason"]) == (200, False, "assertion")
    assert orders["assertions"][1] == {
        "assertion": 'body $.orders[0].status eq "shipped"',
        "passed": False,
        "actual": "pending",
        "message": message,
    }
    assert (after["status"], after["message"]) == (None, "skipped: step 'orders' failed")
    # The extracted token is a secret: named, never shown.
    assert TOKEN not in str(checks)


async def test_failure_messages_read_plainly() -> None:
    async with serve(vendor()) as port:
        pass  # closed again: nothing listens there now
    async with serve(vendor()) as open_port:
        base = f"http://127.0.0.1:{open_port}"
        checks = await api_checks(
            [
                http_check("refused", f"http://127.0.0.1:{port}/"),
                http_check("slow", f"{base}/oauth/token")
                | {
                    "settings": {
                        "method": "POST",
                        "assert": [{"source": "response_time", "op": "lt", "value": "0s"}],
                    }
                },
                http_check("status", f"{base}/oauth/token")
                | {
                    "settings": {
                        "method": "POST",
                        "assert": [{"source": "status", "op": "in", "value": [201, 204]}],
                    }
                },
            ]
        )
    assert checks["refused"]["last"]["message"] == f"connection refused by 127.0.0.1:{port}"
    slow = checks["slow"]["last"]["message"]
    assert re.fullmatch(r"expected response_time lt 0ms, got \d+(\.\d+)?(ms|µs|s)", slow), slow
    assert checks["status"]["last"]["message"] == "HTTP 200 (expected status in [201, 204])"


async def test_what_a_target_sent_wrong_reads_plainly() -> None:
    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>maintenance</html>", content_type="text/html")

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    app = vendor()
    app.router.add_get("/html", html)
    app.router.add_get("/loop", loop)
    async with serve(app) as port:
        base = f"http://127.0.0.1:{port}"
        schema = {"type": "object", "required": ["has_more"]}
        checks = await api_checks(
            [
                http_check("html", f"{base}/html")
                | {"settings": {"assert": [{"source": "body", "path": "$.id", "op": "exists"}]}},
                http_check("token", f"{base}/oauth/token")
                | {
                    "settings": {
                        "method": "POST",
                        "assert": [{"source": "body", "op": "schema", "value": schema}],
                    }
                },
                {"name": "plain", "type": "tls", "target": f"127.0.0.1:{port}", "timeout": "3s"},
                http_check("https-to-plain", f"https://127.0.0.1:{port}/v1/orders"),
                http_check("loop", f"{base}/loop") | {"settings": {"max_redirects": 1}},
            ]
        )
    messages = {name: check["last"]["message"] for name, check in checks.items()}
    assert messages["html"] == "body $.id exists: the body is not JSON (expecting value at byte 0)"
    assert messages["token"] == "expected body matches schema, but at $: 'has_more' is a required property"
    assert messages["plain"] == (
        "TLS handshake failed: the server did not answer in TLS (a plain-text port?) (WRONG_VERSION_NUMBER)"
    )
    assert messages["https-to-plain"] == messages["plain"]
    assert messages["loop"] == f"gave up after 1 redirect (… {base}/loop → {base}/loop)"


@pytest.mark.parametrize(
    ("exc", "port", "message"),
    [
        # asyncio's own wording of a refused connection, and of one refused on every address tried.
        (
            ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 9)"),
            9,
            "connection refused by 127.0.0.1:9",
        ),
        (
            OSError(
                "Multiple exceptions: [Errno 111] Connect call failed ('::1', 9), [Errno 111] Connect failed"
            ),
            9,
            "connection refused by 127.0.0.1:9",
        ),
        (
            OSError(
                "Multiple exceptions: [Errno 111] Connect call failed, [Errno 101] Network is unreachable"
            ),
            9,
            "cannot connect to 127.0.0.1:9: connection refused; network is unreachable",
        ),
        (ConnectionResetError(104, "Connection reset by peer"), 443, "connection reset by 127.0.0.1:443"),
        (OSError(113, "No route to host"), 22, "no route to host 127.0.0.1:22"),
        (OSError(71, "Protocol error"), 22, "cannot connect to 127.0.0.1:22: protocol error"),
    ],
)
def test_a_failed_connection_reads_as_its_errno_says(exc: OSError, port: int, message: str) -> None:
    assert map_exception(exc, host="127.0.0.1", port=port) == (Reason.CONNECT, message)
    assert (
        map_exception(ConnectionRefusedError(111, "x"), host="::1", port=9)[1]
        == "connection refused by [::1]:9"
    )
    # libcurl's "Could not connect to server", with the errno it keeps beside it.
    curl = "Failed to connect to 127.0.0.1 port 9 after 0 ms: Could not connect to server"
    assert map_curl_error(7, curl, os_errno=111) == (Reason.CONNECT, "connection refused by 127.0.0.1:9")
    assert map_curl_error(7, curl) == (Reason.CONNECT, "cannot connect to 127.0.0.1:9")
