"""The vendor recipes (docs/recipes.md, examples/recipes/*.yaml): every file loads through the
agent's own loader with dummy secrets, and each runs end to end against a local fake of its vendor
on loopback: Stripe's test-mode payment and its signed webhook to the registered endpoint,
Shopify's passive HMAC-signed webhooks (one signed right, one wrong) and its call limit,
Salesforce's client-credentials token (cached, and fetched again once revoked), ShipEngine's rate
limit (a warning threshold, then a 429 that backs the check off)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from agent.config.settings import load_config
from agent.errors import ConfigError
from agent.sdk import Reason

from .helpers import serve
from .inbound import running_agent

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "examples" / "recipes").glob("*.yaml"))
SECRETS = {
    "STRIPE_SECRET_KEY": "sk_test_recipe_0123456789abcdef",
    "STRIPE_WEBHOOK_SECRET": "whsec_recipe_0123456789abcdef",
    "SHOPIFY_ADMIN_TOKEN": "shpat_recipe_0123456789abcdef",
    "SHOPIFY_WEBHOOK_SECRET": "shopify-recipe-secret-0123456789",
    "SALESFORCE_CLIENT_ID": "3MVG9recipe.client.id",
    "SALESFORCE_CLIENT_SECRET": "salesforce-recipe-secret-0123",
    "SHIPENGINE_API_KEY": "TEST_recipe_0123456789abcdef",
    # order-sync.yaml, run end to end in tests/test_heartbeat_recipe.py
    "ORDER_SYNC_PING_TOKEN": "order-sync-ping-0123456789",
    "SHOP_API_TOKEN": "shop-recipe-token-0123456789",
    "ERP_API_TOKEN": "erp-recipe-token-0123456789",
}


def recipe(name: str, base: str, fake: str, timeout: str | None = None) -> list[dict[str, Any]]:
    """The checks of ``examples/recipes/<name>.yaml``, the vendor's ``base`` URL pointed at the fake
    (and, for a webhook's wait, a shorter timeout): nothing else of the file is changed."""
    text = (ROOT / "examples" / "recipes" / f"{name}.yaml").read_text()
    assert base in text
    checks: list[dict[str, Any]] = yaml.safe_load(text.replace(base, fake))["checks"]
    if timeout is not None:
        for check in checks:
            check["timeout"] = timeout
    return checks


# ---------------------------------------------------------------- loaded as written


def test_there_are_five_recipes_each_in_the_docs() -> None:
    assert [path.stem for path in RECIPES] == ["order-sync", "salesforce", "shipengine", "shopify", "stripe"]
    docs = (ROOT / "docs" / "recipes.md").read_text()
    for path in RECIPES:
        assert f"(../examples/recipes/{path.name})" in docs, path.name


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.stem)
def test_each_recipe_loads_with_its_secrets_from_the_environment(path: Path) -> None:
    env = {"VANTAGE_CHECKS_FILE": str(path), "VANTAGE_PUBLIC_URL": "https://vantage.example", **SECRETS}
    config = load_config(env)
    assert len(config.entries) >= 2
    text = path.read_text()
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)\}", text)) - {"VANTAGE_PUBLIC_URL"}
    assert used and used <= set(SECRETS)
    for name in used:  # every secret is a reference: without its variable the file does not load
        with pytest.raises(ConfigError, match=name):
            load_config({k: v for k, v in env.items() if k != name})
    assert not any(value in text for value in SECRETS.values())


# ---------------------------------------------------------------- Stripe


def stripe_signature(body: bytes, secret: str) -> str:
    stamp = int(time.time())
    mac = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={mac}"


def fake_stripe() -> tuple[web.Application, dict[str, Any]]:
    """Stripe in test mode: a PaymentIntent confirmed with pm_card_visa succeeds, and its events go
    to the one endpoint registered for the account (``state["endpoint"]``), signed with its secret."""
    app = web.Application()
    state: dict[str, Any] = {"endpoint": "", "secret": SECRETS["STRIPE_WEBHOOK_SECRET"], "created": []}
    ids = itertools.count(1)
    tasks: set[asyncio.Task[None]] = set()

    def authorized(request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {SECRETS['STRIPE_SECRET_KEY']}"

    async def send(event: dict[str, Any]) -> None:
        body = json.dumps(event).encode()
        headers = {
            "Stripe-Signature": stripe_signature(body, state["secret"]),
            "Content-Type": "application/json",
        }
        await asyncio.sleep(0.05)
        async with (
            aiohttp.ClientSession() as session,
            session.post(state["endpoint"], data=body, headers=headers),
        ):
            pass

    def event(intent: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": f"evt_{next(ids)}",
            "object": "event",
            "type": "payment_intent.succeeded",
            "livemode": False,
            "data": {"object": intent},
        }

    async def payment_intents(request: web.Request) -> web.Response:
        if not authorized(request):
            return web.json_response({"error": {"type": "invalid_request_error"}}, status=401)
        form = await request.post()
        assert request.headers["Idempotency-Key"] == form["metadata[vantage_run]"]
        assert (form["payment_method"], form["confirm"]) == ("pm_card_visa", "true")
        amount = int(str(form["amount"]))
        intent = {"id": f"pi_{next(ids):08d}", "object": "payment_intent", "amount_received": amount}
        intent |= {"status": "succeeded", "livemode": False}
        state["created"].append(intent["id"])
        # Another integration's payment on the same account first: the check must skip its event.
        other = {**intent, "id": f"pi_{next(ids):08d}"}
        for each in (other, intent):
            task = asyncio.create_task(send(event(each)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return web.json_response(intent)

    async def balance(request: web.Request) -> web.Response:
        if not authorized(request):
            return web.json_response({"error": {"type": "invalid_request_error"}}, status=401)
        return web.json_response({"object": "balance", "livemode": False, "available": []})

    async def stop(_: web.Application) -> None:
        for task in tasks:
            task.cancel()

    app.router.add_post("/v1/payment_intents", payment_intents)
    app.router.add_get("/v1/balance", balance)
    app.on_cleanup.append(stop)
    return app, state


async def test_stripe_a_test_payment_comes_back_as_its_signed_webhook() -> None:
    app, state = fake_stripe()
    async with serve(app) as port:
        checks = recipe("stripe", "https://api.stripe.com", f"http://127.0.0.1:{port}", timeout="3s")
        async with running_agent(checks, **SECRETS) as running:
            state["endpoint"] = f"{running.inbound}/hooks/stripe-payment-webhook"
            results = await running.run_once()
            assert results["stripe-balance"].success, results["stripe-balance"].message
            webhook = results["stripe-payment-webhook"]
            assert webhook.success, webhook.message
            assert [s.status for s in webhook.steps] == [200]
            outcomes = {
                labels["outcome"]: value for labels, value in running.metric("probe_webhook_deliveries")
            }
            assert outcomes == {"matched": 1.0, "unmatched": 1.0}

            # The signing secret rolled in the dashboard, not in the agent: reason signature.
            state["secret"] = "whsec_rolled_0123456789abcdef"
            webhook = (await running.run_once())["stripe-payment-webhook"]
            assert webhook.reason is Reason.SIGNATURE, webhook.message
    assert len(state["created"]) == 2


# ---------------------------------------------------------------- Shopify


def shopify_hmac(body: bytes, secret: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


async def test_shopify_passive_webhooks_are_judged_by_their_hmac_and_the_call_limit_by_its_bucket() -> None:
    used = {"calls": 10}

    async def shop(request: web.Request) -> web.Response:
        assert request.headers["X-Shopify-Access-Token"] == SECRETS["SHOPIFY_ADMIN_TOKEN"]
        headers = {"X-Shopify-Shop-Api-Call-Limit": f"{used['calls']}/40"}
        return web.json_response({"shop": {"myshopify_domain": "acme-shop.myshopify.com"}}, headers=headers)

    app = web.Application()
    app.router.add_get("/admin/api/2024-10/shop.json", shop)
    async with serve(app) as port:
        checks = recipe("shopify", "https://acme-shop.myshopify.com/admin", f"http://127.0.0.1:{port}/admin")
        async with running_agent(checks, **SECRETS) as running, aiohttp.ClientSession() as session:
            hook = f"{running.inbound}/hooks/shopify-orders-webhook"
            order = json.dumps({"id": 820982911946154508, "email": "jon@example.com"}).encode()
            headers = {
                "Content-Type": "application/json",
                "X-Shopify-Topic": "orders/create",
                "X-Shopify-Shop-Domain": "acme-shop.myshopify.com",
            }
            right = shopify_hmac(order, SECRETS["SHOPIFY_WEBHOOK_SECRET"])
            wrong = shopify_hmac(order, "another-apps-secret-0123456789")
            statuses = []
            for signature in (right, wrong):
                sent = {**headers, "X-Shopify-Hmac-Sha256": signature}
                async with session.post(hook, data=order, headers=sent) as response:
                    statuses.append(response.status)
            assert 200 <= statuses[0] < 300 and statuses[1] == 401, statuses
            results = await running.run_once()
            assert results["shopify-orders-webhook"].success, results["shopify-orders-webhook"].message
            assert [a.passed for a in results["shopify-orders-webhook"].assertions] == [True, True, True]
            outcomes = {
                labels["outcome"]: value for labels, value in running.metric("probe_webhook_deliveries")
            }
            assert outcomes == {"accepted": 1.0, "rejected": 1.0}
            admin = results["shopify-admin-api"]
            assert admin.success and admin.values["probe.ratelimit.remaining"] == 30, admin.message

            used["calls"] = 36  # 4 of 40 left: under the recipe's 20%
            admin = (await running.run_once())["shopify-admin-api"]
            assert admin.reason is Reason.RATE_LIMITED, admin.message


# ---------------------------------------------------------------- Salesforce


def fake_salesforce() -> tuple[web.Application, list[str]]:
    """A My Domain with a connected app that has the client credentials flow on; the tokens it
    issued (the revoked ones are in ``tokens`` after a "revoked" mark)."""
    app = web.Application()
    tokens: list[str] = []

    def valid(request: web.Request) -> bool:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        live = tokens[tokens.index("revoked") + 1 :] if "revoked" in tokens else tokens
        return given in live

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        if (form.get("grant_type"), form.get("client_id"), form.get("client_secret")) != (
            "client_credentials",
            SECRETS["SALESFORCE_CLIENT_ID"],
            SECRETS["SALESFORCE_CLIENT_SECRET"],
        ):
            return web.json_response({"error": "invalid_client"}, status=400)
        tokens.append(f"00Dxx0000001gPL!AR8AQ{len(tokens):04d}token")
        # As Salesforce answers: no expires_in; the token lives until the session policy ends it.
        return web.json_response(
            {
                "access_token": tokens[-1],
                "instance_url": str(request.url.origin()),
                "token_type": "Bearer",
            }
        )

    async def limits(request: web.Request) -> web.Response:
        if not valid(request):
            return web.json_response([{"errorCode": "INVALID_SESSION_ID"}], status=401)
        return web.json_response({"DailyApiRequests": {"Max": 15000, "Remaining": 14990}})

    async def query(request: web.Request) -> web.Response:
        if not valid(request):
            return web.json_response([{"errorCode": "INVALID_SESSION_ID"}], status=401)
        assert request.query["q"] == "SELECT Id FROM Account LIMIT 1"
        return web.json_response({"totalSize": 1, "done": True, "records": [{"Id": "001xx000003DGb2AAG"}]})

    app.router.add_post("/services/oauth2/token", token)
    app.router.add_get("/services/data/v61.0/limits", limits)
    app.router.add_get("/services/data/v61.0/query", query)
    return app, tokens


async def test_salesforce_client_credentials_token_is_cached_and_fetched_again_once_revoked() -> None:
    app, tokens = fake_salesforce()
    async with serve(app) as port:
        checks = recipe("salesforce", "https://acme.my.salesforce.com", f"http://127.0.0.1:{port}")
        async with running_agent(checks, **SECRETS) as running:
            first = await running.run_once()
            assert all(r.success for r in first.values()), {n: r.message for n, r in first.items()}
            fetched = len(tokens)
            second = await running.run_once()
            assert all(r.success for r in second.values())
            assert len(tokens) == fetched  # the tokens were kept, not asked for each run

            tokens.append("revoked")  # an admin revoked the app's sessions: every token so far is invalid
            revoked = await running.run_once()
            assert {r.reason for r in revoked.values()} == {Reason.AUTH}
            assert "HTTP 401: the credential was rejected" in revoked["salesforce-limits"].message
            again = await running.run_once()
            assert all(r.success for r in again.values()), {n: r.message for n, r in again.items()}
            assert len(tokens) > fetched + 1
    exported = "".join(span.to_json() for span in running.spans.get_finished_spans())
    assert "salesforce-limits" in exported
    assert not [token for token in tokens if token != "revoked" and token in exported]


# ---------------------------------------------------------------- ShipEngine


async def test_shipengine_rate_limit_warns_then_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    quota = {"limit": 200, "remaining": 150, "retry_after": 0}

    def headers() -> dict[str, str]:
        return {
            "X-Rate-Limit-Limit": str(quota["limit"]),
            "X-Rate-Limit-Remaining": str(quota["remaining"]),
            "X-Rate-Limit-Reset": "40",
        }

    async def carriers(request: web.Request) -> web.Response:
        assert request.headers["API-Key"] == SECRETS["SHIPENGINE_API_KEY"]
        if quota["retry_after"]:
            body = {"errors": [{"error_code": "rate_limit_exceeded"}]}
            return web.json_response(body, status=429, headers={"Retry-After": str(quota["retry_after"])})
        return web.json_response({"carriers": [{"carrier_id": "se-123890"}]}, headers=headers())

    async def estimate(request: web.Request) -> web.Response:
        wanted = await request.json()
        assert wanted["carrier_ids"] == ["se-123890"] and wanted["weight"] == {"value": 1, "unit": "pound"}
        return web.json_response(
            [{"shipping_amount": {"currency": "usd", "amount": 9.37}}], headers=headers()
        )

    app = web.Application()
    app.router.add_get("/v1/carriers", carriers)
    app.router.add_post("/v1/rates/estimate", estimate)
    async with serve(app) as port:
        checks = recipe("shipengine", "https://api.shipengine.com", f"http://127.0.0.1:{port}")
        async with running_agent(checks, **SECRETS) as running:
            results = await running.run_once()
            assert all(r.success for r in results.values()), {n: r.message for n, r in results.items()}
            carriers_run = results["shipengine-carriers"]
            assert (
                carriers_run.values["probe.ratelimit.remaining"],
                carriers_run.values["probe.ratelimit.limit"],
            ) == (
                150,
                200,
            )

            quota["remaining"] = 20  # 10% left: under the recipe's 20%, before the 429s begin
            low = (await running.run_once())["shipengine-carriers"]
            assert low.reason is Reason.RATE_LIMITED
            assert (
                low.message == "rate-limit quota at 10% (20 of 200 left), below fail_if_ratelimit_below (20%)"
            )

            quota["retry_after"] = 30
            with caplog.at_level(logging.INFO):
                limited = (await running.run_once())["shipengine-carriers"]
            assert limited.reason is Reason.RATE_LIMITED and limited.retry_after == 30, limited.message
            assert limited.message == "HTTP 429: rate limited; backing off for 30s"
    # The lines docs/recipes.md quotes for the back-off's start.
    said = [r.getMessage() for r in caplog.records]
    assert "check shipengine-carriers backs off for 30s, as the target asked (rate_limited)" in said, said


def test_correlate_to_must_name_what_the_trigger_extracts() -> None:
    checks = recipe("stripe", "https://api.stripe.com", "https://api.stripe.com")
    checks[1]["settings"]["correlate_to"] = "${steps.create.intent}"
    env = {"VANTAGE_CHECKS": yaml.safe_dump({"checks": checks}), "VANTAGE_PUBLIC_URL": "https://x.example"}
    with pytest.raises(
        ConfigError, match=r"'correlate_to': \$\{steps.create.intent\} names nothing step 'create'"
    ):
        load_config({**env, **SECRETS})
