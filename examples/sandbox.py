"""A small "sandbox vendor": an example third-party API on loopback for ``make run`` and the docs.

It behaves like the APIs Vantage watches: a token-guarded list endpoint, a health endpoint, an
endpoint that is sometimes slow, one that fails now and then, a moved endpoint that redirects,
a CORS-aware endpoint, an OAuth token endpoint and a shipments API whose response shape changes now
and then, a rate-limited endpoint that answers 429 once its quota is spent, an old API
version that announces its deprecation and sunset, one that hangs past any sensible timeout; a
test-event endpoint that sends a Stripe-style signed webhook to the URL it is given, two systems
whose order data a sync job copies with some lag, and that job, which reports to the agent's
heartbeat endpoint (``AGENT_URL``) every few seconds; and the vendor's own status page, in the
Atlassian Statuspage format, which admits that order listings are slow.

    python examples/sandbox.py            # listens on 127.0.0.1:8099 (SANDBOX_PORT to change)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import os
import random
import secrets
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
from aiohttp import web

API_KEY = os.environ.get("SANDBOX_API_KEY", "sk_test_sandbox")
ALLOWED_ORIGIN = "https://shop.example"
WEBHOOK_SECRET = os.environ.get("SANDBOX_WEBHOOK_SECRET", "whsec_sandbox")
JOB_TOKEN = os.environ.get("SANDBOX_JOB_TOKEN", "sandbox-job-token-0123")
AGENT_URL = os.environ.get("AGENT_URL", "http://127.0.0.1:8080")
_counter = itertools.count()
_started = time.time()
_background: set[asyncio.Task[None]] = set()


async def charges(request: web.Request) -> web.Response:
    if request.headers.get("Authorization") != f"Bearer {API_KEY}":
        return web.json_response(
            {"error": {"type": "invalid_request_error", "message": "Invalid API key provided"}},
            status=401,
        )
    limit = min(int(request.query.get("limit", "3")), 10)
    data = [
        {
            "id": f"ch_{n:06d}",
            "object": "charge",
            "amount": 1000 + n,
            "currency": "eur",
            "paid": True,
        }
        for n in range(limit)
    ]
    return web.json_response({"object": "list", "data": data, "has_more": False})


async def health(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def orders(_: web.Request) -> web.Response:
    await asyncio.sleep(random.uniform(0.02, 0.3))
    return web.json_response({"orders": [{"id": "ord_1", "status": "shipped"}]})


async def flaky(_: web.Request) -> web.Response:
    if next(_counter) % 4 == 3:
        return web.json_response({"error": "upstream unavailable"}, status=503)
    return web.json_response({"status": "ok"})


async def legacy(_: web.Request) -> web.Response:
    raise web.HTTPMovedPermanently("/v1/health")


async def cors(request: web.Request) -> web.Response:
    headers = {}
    if request.headers.get("Origin") == ALLOWED_ORIGIN:
        headers["Access-Control-Allow-Origin"] = ALLOWED_ORIGIN
    return web.json_response({"status": "ok"}, headers=headers)


CLIENT_ID = "vantage"
CLIENT_SECRET = os.environ.get("SANDBOX_CLIENT_SECRET", "sandbox-client-secret")
_tokens: dict[str, float] = {}


async def oauth_token(request: web.Request) -> web.Response:
    # OAuth 2.0 client credentials (RFC 6749 4.4), secret in HTTP Basic or in the form.
    form = await request.post()
    basic = request.headers.get("Authorization", "")
    pair = base64.b64decode(basic[6:]).decode() if basic.startswith("Basic ") else ""
    ok = pair == f"{CLIENT_ID}:{CLIENT_SECRET}" or (
        form.get("client_id") == CLIENT_ID and form.get("client_secret") == CLIENT_SECRET
    )
    if not ok or form.get("grant_type") != "client_credentials":
        return web.json_response({"error": "invalid_client"}, status=401)
    token = secrets.token_urlsafe(24)
    _tokens[token] = time.time() + 300
    return web.json_response({"access_token": token, "token_type": "Bearer", "expires_in": 300})


async def shipments(request: web.Request) -> web.Response:
    token = request.headers.get("Authorization", "").removeprefix("Bearer ")
    if _tokens.get(token, 0) < time.time():
        return web.json_response({}, status=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    # Now and then a field changes type, as a vendor's silent breaking change would.
    weight: float | str = 1.5 if next(_counter) % 5 else "1.5 kg"
    return web.json_response({"shipments": [{"id": "shp_1", "weight": weight, "status": "in_transit"}]})


_window = {"start": 0.0, "used": 0}
QUOTA, WINDOW = 10, 60


async def quota(_: web.Request) -> web.Response:
    # Ten requests a minute, announced in X-RateLimit-* headers; then 429 until the window resets.
    now = time.time()
    if now - _window["start"] >= WINDOW:
        _window.update(start=now, used=0)
    reset = int(_window["start"] + WINDOW)
    if _window["used"] >= QUOTA:
        return web.json_response(
            {"error": "rate limit exceeded"},
            status=429,
            headers={"Retry-After": str(max(1, int(reset - now)))},
        )
    _window["used"] += 1
    headers = {
        "X-RateLimit-Limit": str(QUOTA),
        "X-RateLimit-Remaining": str(QUOTA - int(_window["used"])),
        "X-RateLimit-Reset": str(reset),
    }
    return web.json_response({"status": "ok"}, headers=headers)


async def legacy_orders(_: web.Request) -> web.Response:
    # An old API version that still works but announces its end, as vendors do (RFC 9745, RFC 8594).
    sunset = datetime.now(UTC).replace(microsecond=0) + timedelta(days=90)
    headers = {
        "Deprecation": f"@{int((sunset - timedelta(days=180)).timestamp())}",
        "Sunset": format_datetime(sunset, usegmt=True),
        "Link": '<https://sandbox.example/docs/migrate-to-v2>; rel="deprecation"',
    }
    return web.json_response({"orders": []}, headers=headers)


def _component(ident: str, name: str, status: str, position: int) -> dict[str, object]:
    return {"id": ident, "name": name, "status": status, "position": position, "group": False}


async def status_summary(_: web.Request) -> web.Response:
    """The vendor's status page (``/status/api/v2/summary.json``), as an Atlassian Statuspage page
    serves it: the orders API is degraded, as ``/v1/orders`` really is now and then."""
    now = datetime.now(UTC).isoformat()
    components = [
        _component("cmp0charges", "Charges API", "operational", 1),
        _component("cmp00orders", "Orders API", "degraded_performance", 2),
        _component("cmp0webhook", "Webhooks", "operational", 3),
    ]
    incident = {
        "id": "inc0slowordr",
        "name": "Slow responses from the orders API",
        "status": "monitoring",
        "impact": "minor",
        "created_at": datetime.fromtimestamp(_started, UTC).isoformat(),
        "updated_at": now,
        "components": [components[1]],
    }
    return web.json_response(
        {
            "page": {"id": "sandbox0page", "name": "Sandbox", "url": "http://127.0.0.1", "updated_at": now},
            "status": {"indicator": "minor", "description": "Minor Service Outage"},
            "components": components,
            "incidents": [incident],
            "scheduled_maintenances": [],
        }
    )


async def hang(_: web.Request) -> web.Response:
    await asyncio.sleep(3600)
    return web.json_response({})


async def _deliver(url: str, event: dict[str, object]) -> None:
    await asyncio.sleep(random.uniform(0.05, 0.4))
    body = json.dumps(event).encode()
    stamp = str(int(time.time()))
    mac = hmac.new(WEBHOOK_SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    headers = {"Stripe-Signature": f"t={stamp},v1={mac}", "Content-Type": "application/json"}
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=body, headers=headers) as answer,
        ):
            await answer.read()
    except aiohttp.ClientError:
        pass


async def test_event(request: web.Request) -> web.Response:
    """Like a payment vendor's "send test webhook": the event goes to ``notify_url``."""
    if request.headers.get("Authorization") != f"Bearer {API_KEY}":
        return web.json_response({"error": "invalid_api_key"}, status=401)
    order = await request.json()
    event = {"id": f"evt_{secrets.token_hex(6)}", "type": "charge.succeeded", "data": {"object": order}}
    task = asyncio.create_task(_deliver(str(order["notify_url"]), event))
    _background.add(task)
    task.add_done_callback(_background.discard)
    return web.json_response({"id": event["id"]}, status=201)


async def shop_latest_order(_: web.Request) -> web.Response:
    """The shop's newest order: one every ten seconds."""
    created = _started + (time.time() - _started) // 10 * 10
    return web.json_response(
        {
            "orders": [
                {
                    "id": 1000 + int(created - _started) // 10,
                    "created_at": datetime.fromtimestamp(created, UTC).isoformat(),
                }
            ]
        }
    )


async def erp_latest_import(_: web.Request) -> web.Response:
    """The ERP's copy: the sync job imports orders about half a minute late."""
    imported = _started + max(0.0, time.time() - _started - 30) // 10 * 10
    return web.json_response({"source_created_at": datetime.fromtimestamp(imported, UTC).isoformat()})


async def _sync_job() -> None:
    """The sync job between shop and ERP: it reports to the agent after each run."""
    async with aiohttp.ClientSession() as session:
        for run in itertools.count():
            await asyncio.sleep(3)
            status = "fail" if run % 20 == 19 else "ok"
            params = {"status": status, "duration": "0.8"}
            if status == "fail":
                params["message"] = "ERP answered 503 while importing orders"
            try:
                async with session.post(
                    f"{AGENT_URL}/heartbeat/sandbox-order-sync",
                    params=params,
                    headers={"Authorization": f"Bearer {JOB_TOKEN}"},
                ) as answer:
                    await answer.read()
            except aiohttp.ClientError:
                pass  # the agent is not up yet


async def _start_job(_: web.Application) -> None:
    task = asyncio.create_task(_sync_job())
    _background.add(task)


async def _stop_job(_: web.Application) -> None:
    for task in _background:
        task.cancel()


def app() -> web.Application:
    application = web.Application()
    application.on_startup.append(_start_job)
    application.on_cleanup.append(_stop_job)
    application.router.add_post("/v1/test-events", test_event)
    application.router.add_get("/shop/orders/latest", shop_latest_order)
    application.router.add_get("/erp/imports/latest", erp_latest_import)
    application.router.add_get("/v1/charges", charges)
    application.router.add_get("/v1/health", health)
    application.router.add_get("/v1/orders", orders)
    application.router.add_get("/v1/flaky", flaky)
    application.router.add_get("/legacy/health", legacy)
    application.router.add_get("/v1/cors", cors)
    application.router.add_get("/v1/hang", hang)
    application.router.add_get("/v0/orders", legacy_orders)
    application.router.add_get("/v1/quota", quota)
    application.router.add_post("/oauth/token", oauth_token)
    application.router.add_get("/v1/shipments", shipments)
    application.router.add_get("/status/api/v2/summary.json", status_summary)
    return application


if __name__ == "__main__":
    port = int(os.environ.get("SANDBOX_PORT", "8099"))
    web.run_app(
        app(),
        host="127.0.0.1",
        port=port,
        print=lambda _: print(f"sandbox vendor on http://127.0.0.1:{port}"),
    )
