"""A small "sandbox vendor": an example third-party API on loopback for ``make run`` and the docs.

It behaves like the APIs Vantage watches: a token-guarded list endpoint, a health endpoint, an
endpoint that is sometimes slow, one that fails now and then, a moved endpoint that redirects,
a CORS-aware endpoint, an OAuth token endpoint and a shipments API whose response shape changes now
and then, a rate-limited endpoint that answers 429 once its quota is spent, an old API
version that announces its deprecation and sunset, and one that
hangs past any sensible timeout.

    python examples/sandbox.py            # listens on 127.0.0.1:8099 (SANDBOX_PORT to change)
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import random
import secrets
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from aiohttp import web

API_KEY = os.environ.get("SANDBOX_API_KEY", "sk_test_sandbox")
ALLOWED_ORIGIN = "https://shop.example"
_counter = itertools.count()


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


async def hang(_: web.Request) -> web.Response:
    await asyncio.sleep(3600)
    return web.json_response({})


def app() -> web.Application:
    application = web.Application()
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
    return application


if __name__ == "__main__":
    port = int(os.environ.get("SANDBOX_PORT", "8099"))
    web.run_app(
        app(),
        host="127.0.0.1",
        port=port,
        print=lambda _: print(f"sandbox vendor on http://127.0.0.1:{port}"),
    )
