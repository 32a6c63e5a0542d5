"""The webhook probe against a local vendor that takes a trigger and delivers a signed webhook to
the agent's inbound port: on time, never, twice, too late, badly signed, tampered with, wrong."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agent.app import build_agent
from agent.errors import ConfigError
from agent.sdk import Reason
from plugins._toolkit.signatures import Signature

from .fakes import SteppingClock
from .helpers import config_from, free_port, serve
from .inbound import TELEMETRY_ENV, Running, running_agent

pytestmark = pytest.mark.anyio

SECRET = "whsec_test_0123456789abcdef"
WAIT = 0.6
LATE = 1.2


def stripe_header(body: bytes, secret: str = SECRET, stamp: int | None = None) -> str:
    stamp = int(time.time()) if stamp is None else stamp
    mac = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={mac}"


def vendor() -> tuple[web.Application, list[dict[str, Any]]]:
    """A payment vendor: POST /v1/events makes it send a webhook to ``hook``, as ``scenario`` says."""
    triggered: list[dict[str, Any]] = []
    tasks: set[asyncio.Task[None]] = set()

    async def deliver(hook: str, body: bytes, signature: str, delay: float) -> None:
        await asyncio.sleep(delay)
        async with aiohttp.ClientSession() as session:
            headers = {"Stripe-Signature": signature, "Content-Type": "application/json"}
            async with session.post(hook, data=body, headers=headers) as response:
                await response.read()

    async def events(request: web.Request) -> web.Response:
        event = await request.json()
        triggered.append(event)
        run, scenario = event["run"], event["scenario"]
        kind = "charge.failed" if scenario == "wrong_payload" else "charge.succeeded"
        body = json.dumps({"type": kind, "data": {"object": {"metadata": {"run": run}}}}).encode()
        plan: list[tuple[bytes, str, float]] = {
            "ok": [(body, stripe_header(body), 0.05)],
            "never": [],
            "twice": [(body, stripe_header(body), 0.05), (body, stripe_header(body), 0.1)],
            "late": [(body, stripe_header(body), LATE)],
            "bad_signature": [(body, stripe_header(body, "whsec_rotated"), 0.05)],
            "tampered": [(body.replace(b"succeeded", b"refunded"), stripe_header(body), 0.05)],
            "wrong_payload": [(body, stripe_header(body), 0.05)],
        }[scenario]
        for payload, signature, delay in plan:
            task = asyncio.create_task(deliver(event["hook"], payload, signature, delay))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return web.json_response({"id": f"evt_{run[:8]}"}, status=201)

    async def stop(_: web.Application) -> None:
        for task in tasks:
            task.cancel()

    app = web.Application()
    app.router.add_post("/v1/events", events)
    app.on_cleanup.append(stop)
    return app, triggered


def webhook(name: str, vendor_port: int, scenario: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "webhook",
        "target": f"http://127.0.0.1:{vendor_port}",
        "interval": "1m",
        "timeout": "3s",
        "settings": {
            "trigger": {
                "steps": [
                    {
                        "name": "event",
                        "method": "POST",
                        "url": "/v1/events",
                        "json": {"run": "${run_id}", "hook": "${hook_url}", "scenario": scenario},
                        "assert": [{"source": "status", "op": "eq", "value": 201}],
                    }
                ]
            },
            "correlation": {"path": "$.data.object.metadata.run"},
            "signature": {"scheme": "stripe", "secret": "${WHSEC}"},
            "wait": f"{int(WAIT * 1000)}ms",
            "assert": [{"source": "body", "path": "$.type", "op": "eq", "value": "charge.succeeded"}],
        },
    }


SCENARIOS = ["ok", "never", "twice", "late", "bad_signature", "tampered", "wrong_payload"]


async def test_round_trips() -> None:
    app, triggered = vendor()
    async with serve(app) as port:
        checks = [webhook(scenario, port, scenario) for scenario in SCENARIOS]
        async with running_agent(checks, WHSEC=SECRET) as running:
            first = await running.run_once()
            await anyio.sleep(LATE - WAIT + 0.3)  # the late delivery and the second copy arrive
            second = await running.run_once()
            deliveries = running.metric("probe_webhook_deliveries")
            latency = running.metric("probe_webhook_delivery_seconds")
            exposition = running.agent.telemetry.render_prometheus().decode()
    # The trigger carried the run id and this check's hook URL under VANTAGE_PUBLIC_URL.
    ok_event = next(event for event in triggered if event["scenario"] == "ok")
    assert len(ok_event["run"]) == 32 and ok_event["hook"].endswith("/hooks/ok")

    assert first["ok"].success, first["ok"].message
    assert 0 < first["ok"].attributes["vantage.webhook.latency"] < WAIT
    assert first["twice"].success, first["twice"].message
    assert first["never"].reason is Reason.NOT_DELIVERED
    assert first["never"].message.startswith("no webhook carrying run id ")
    assert first["late"].reason is Reason.NOT_DELIVERED
    assert first["bad_signature"].reason is Reason.SIGNATURE
    assert "no v1 signature in the Stripe-Signature header matches the body" in first["bad_signature"].message
    assert first["tampered"].reason is Reason.SIGNATURE
    assert first["wrong_payload"].reason is Reason.ASSERTION
    assert "$.type" in first["wrong_payload"].message

    def count(check: str, outcome: str) -> float:
        return sum(
            value
            for labels, value in deliveries
            if labels.get("check") == check and labels.get("outcome") == outcome
        )

    assert count("ok", "matched") == 2  # one per run
    assert count("twice", "matched") == 2 and count("twice", "duplicate") == 1  # not a second success
    assert count("late", "late") == 1  # counted when it came, after the run gave up
    assert count("bad_signature", "rejected") == 2
    # The late delivery's latency is recorded, apart from the on-time ones.
    late = {
        labels["le"]: value
        for labels, value in latency
        if labels.get("check") == "late" and labels.get("timing") == "late" and "le" in labels
    }
    assert late["1.0"] == 0 and late["2.5"] == 1, late
    assert second["late"].reason is Reason.NOT_DELIVERED  # its second trigger was late too
    # The secret is in no exported metric; the delivery is a span in the run's trace.
    assert SECRET not in exposition
    spans = running.spans.get_finished_spans()
    delivery = next(s for s in spans if s.name == "webhook delivery")
    root = next(s for s in spans if s.context.span_id == delivery.parent.span_id)  # type: ignore[union-attr]
    assert root.name.startswith("check ")
    assert all(SECRET not in json.dumps(dict(s.attributes or {})) for s in spans)


async def test_inbound_rules() -> None:
    app, _ = vendor()
    async with serve(app) as port, running_agent([webhook("ok", port, "ok")], WHSEC=SECRET) as running:
        body = json.dumps({"data": {}}).encode()
        async with aiohttp.ClientSession() as session:

            async def post(path: str, data: bytes, **headers: str) -> tuple[int, str]:
                async with session.post(running.inbound + path, data=data, headers=headers) as response:
                    return response.status, await response.text()

            unknown = await post("/hooks/nope", body, **{"Stripe-Signature": stripe_header(body)})
            unsigned = await post("/hooks/ok", body)
            wrong_type = await post(
                "/hooks/ok",
                b"a=b",
                **{"Stripe-Signature": stripe_header(b"a=b"), "Content-Type": "text/plain"},
            )
            replayed = await post(
                "/hooks/ok",
                body,
                **{"Stripe-Signature": stripe_header(body, stamp=int(time.time()) - 3600)},
            )
            heartbeat_path = await post("/heartbeat/ok", body)
            async with session.get(running.inbound + "/hooks/ok") as response:
                get_status = response.status
            # The status endpoints are not on the inbound port.
            async with session.get(running.inbound + "/api/checks") as response:
                api_status = response.status
    # An unknown check and a bad signature look the same to the caller.
    assert unknown == unsigned == replayed == heartbeat_path == (401, '{"error": "rejected"}')
    assert wrong_type[0] == 415 and "content type 'text/plain' is not accepted" in wrong_type[1]
    assert get_status == 405
    assert api_status == 404


async def test_passive_window() -> None:
    check = {
        "name": "github-pushes",
        "type": "webhook",
        "target": "github.com/acme/shop",
        "interval": "1m",
        "timeout": "2s",
        "settings": {
            "mode": "passive",
            "window": "1s",
            "signature": {"scheme": "github", "secret": "${GITHUB_SECRET}"},
        },
    }
    secret = "It's a Secret to Everybody"
    async with running_agent([check], GITHUB_SECRET=secret) as running:

        async def push(body: bytes, key: str = secret) -> int:
            digest = hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
            headers = {"X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}
            async with aiohttp.ClientSession() as session:
                async with session.post(
                    f"{running.inbound}/hooks/github-pushes", data=body, headers=headers
                ) as r:
                    return r.status

        waiting = (await running.run_once())["github-pushes"]
        assert await push(b'{"ref": "main"}') == 200
        fresh = (await running.run_once())["github-pushes"]
        await anyio.sleep(1.2)
        assert await push(b'{"ref": "main"}', key="rotated") == 401
        rejected = (await running.run_once())["github-pushes"]
    assert waiting.success and waiting.attributes["vantage.webhook.first_window"] is True
    assert fresh.success and fresh.values["probe.webhook.age"] < 1
    assert rejected.reason is Reason.SIGNATURE
    assert "no valid delivery in the last 1s; the last one was" in rejected.message
    assert rejected.message.endswith("rejected: the X-Hub-Signature-256 signature does not match the body")


# ---------------------------------------------------------------- a wall clock that steps

HOOK_TOKEN = "hook-token-0123456789"


@contextlib.asynccontextmanager
async def agent_on(clock: SteppingClock, checks: list[dict[str, Any]]) -> AsyncIterator[Running]:
    """``running_agent`` on ``clock``, which the inbound endpoints use to stamp what they receive."""
    port = free_port()
    config = config_from(
        checks,
        HOOK_TOKEN=HOOK_TOKEN,
        VANTAGE_HOST="127.0.0.1",
        VANTAGE_PORT="0",
        VANTAGE_INBOUND_PORT=str(port),
        VANTAGE_PUBLIC_URL=f"http://127.0.0.1:{port}",
    )
    spans = InMemorySpanExporter()
    agent = build_agent(config, TELEMETRY_ENV, clock=clock, span_processors=[SimpleSpanProcessor(spans)])
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(agent.server.serve)
            yield Running(agent, spans, f"http://127.0.0.1:{port}")
            tg.cancel_scope.cancel()
    finally:
        await agent.http.aclose()


def passive(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "webhook",
        "target": "billing.example",
        "interval": "1m",
        "timeout": "2s",
        "settings": {"mode": "passive", "window": "10m", "token": "${HOOK_TOKEN}"},
    }


async def test_a_wall_clock_step_raises_no_false_not_delivered() -> None:
    # The window is measured on the monotonic clock: the wall clock jumping an hour ahead (NTP
    # after a suspend) changes nothing; only time that really passed makes a delivery overdue.
    clock = SteppingClock()
    async with agent_on(clock, [passive("delivered"), passive("silent")]) as running:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{running.inbound}/hooks/delivered",
                json={"event": "invoice.paid"},
                headers={"Authorization": f"Bearer {HOOK_TOKEN}"},
            ) as response,
        ):
            assert response.status == 200, await response.text()
        before = await running.run_once()
        await clock.advance(60)
        clock.step_wall(3600)
        stepped = await running.run_once()
        await clock.advance(541)  # 10m01s of real time since the delivery, and since the start
        late = await running.run_once()
    assert before["delivered"].success and before["silent"].success
    assert stepped["delivered"].success, stepped["delivered"].message
    assert stepped["delivered"].values["probe.webhook.age"] == 60.0
    assert stepped["silent"].success, stepped["silent"].message
    assert stepped["silent"].attributes["vantage.webhook.first_window"] is True
    assert late["delivered"].reason is Reason.NOT_DELIVERED
    assert late["delivered"].message == "no valid delivery in the last 10m; the last one was 10m1s ago"
    assert late["silent"].reason is Reason.NOT_DELIVERED
    assert late["silent"].message == (
        "no valid delivery in the last 10m; none since the agent started 10m1s ago"
    )


async def test_a_wall_clock_step_does_not_bend_a_delivery_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    # Once the check waits for its webhook, the wall clock steps an hour ahead while 250ms really
    # pass before the delivery: the latency (attribute, histogram, span) is the 250ms.
    clock = SteppingClock()
    triggered: list[dict[str, str]] = []

    async def events(request: web.Request) -> web.Response:
        triggered.append(await request.json())
        return web.json_response({}, status=201)

    app = web.Application()
    app.router.add_post("/v1/events", events)
    async with serve(app) as port:
        check = {
            "name": "charges",
            "type": "webhook",
            "target": f"http://127.0.0.1:{port}",
            "interval": "1m",
            "timeout": "10s",
            "settings": {
                "trigger": {
                    "steps": [
                        {
                            "name": "event",
                            "method": "POST",
                            "url": "/v1/events",
                            "json": {"run": "${run_id}", "hook": "${hook_url}"},
                        }
                    ]
                },
                "correlation": {"path": "$.data.run"},
                "token": "${HOOK_TOKEN}",
            },
        }
        async with agent_on(clock, [check]) as running:
            # The check waits on the inbox once it has noted when it triggered: that is the moment
            # to step the wall clock.
            inbox = running.agent.inbox
            waiting = anyio.Event()
            wait = inbox.wait

            async def wait_and_tell(name: str, sequence: int) -> None:
                waiting.set()
                await wait(name, sequence)

            monkeypatch.setattr(inbox, "wait", wait_and_tell)
            results: dict[str, Any] = {}

            async def run() -> None:
                results.update(await running.run_once())

            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await waiting.wait()
                clock.step_wall(3600)
                await clock.advance(0.25)
                [event] = triggered
                async with (
                    aiohttp.ClientSession() as session,
                    session.post(
                        event["hook"],
                        json={"data": {"run": event["run"]}},
                        headers={"Authorization": f"Bearer {HOOK_TOKEN}"},
                    ) as response,
                ):
                    assert response.status == 200, await response.text()
            exposition = running.agent.telemetry.render_prometheus().decode()
    result = results["charges"]
    assert result.success, result.message
    assert result.attributes["vantage.webhook.latency"] == 0.25
    assert result.values["probe.webhook.age"] == 0.0
    [line] = [
        line for line in exposition.splitlines() if line.startswith("probe_webhook_delivery_seconds_sum")
    ]
    assert 'timing="on_time"' in line and line.endswith(" 0.25"), line
    delivery = next(s for s in running.spans.get_finished_spans() if s.name == "webhook delivery")
    assert delivery.end_time is not None and delivery.start_time is not None
    assert (delivery.end_time - delivery.start_time) / 1e9 == pytest.approx(0.25, abs=1e-6)


def test_signature_schemes() -> None:
    # GitHub's published example: https://docs.github.com/webhooks/using-webhooks/validating-webhook-deliveries
    github = Signature.model_validate({"scheme": "github", "secret": "It's a Secret to Everybody"})
    known = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert github.verify({"X-Hub-Signature-256": known}, b"Hello, World!", 0) is None
    assert github.verify({"X-Hub-Signature-256": known}, b"Hello, World?", 0) is not None
    assert github.verify({}, b"", 0) == "no X-Hub-Signature-256 header"

    shopify = Signature.model_validate({"scheme": "shopify", "secret": "hush"})
    digest = base64.b64encode(hmac.new(b"hush", b"{}", hashlib.sha256).digest()).decode()
    assert shopify.verify({"X-Shopify-Hmac-Sha256": digest}, b"{}", 0) is None
    assert shopify.verify({"X-Shopify-Hmac-Sha256": "not base64!"}, b"{}", 0) == (
        "the X-Shopify-Hmac-Sha256 header is not base64"
    )

    custom = Signature.model_validate(
        {"secret": "k", "header": "X-Sig", "encoding": "hex", "prefix": "v1=", "algorithm": "sha512"}
    )
    mac = hmac.new(b"k", b"x", hashlib.sha512).hexdigest()
    assert custom.verify({"X-Sig": f"v1={mac}"}, b"x", 0) is None
    assert custom.verify({"X-Sig": mac}, b"x", 0) == "the X-Sig header does not start with 'v1='"

    stripe = Signature.model_validate({"scheme": "stripe", "secret": SECRET, "tolerance": "5m"})
    now = time.time()
    assert stripe.verify({"Stripe-Signature": stripe_header(b"{}", stamp=int(now))}, b"{}", now) is None
    # During a secret roll Stripe signs with both: either matches.
    both = (
        stripe_header(b"{}", "old_secret", int(now))
        + ","
        + stripe_header(b"{}", stamp=int(now)).split(",")[1]
    )
    assert stripe.verify({"Stripe-Signature": both}, b"{}", now) is None
    # The Standard Webhooks example (also Svix's): id, timestamp and body signed with a whsec_ key.
    standard = Signature.model_validate(
        {"scheme": "standard", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "tolerance": "5m"}
    )
    example = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,bm9ldHUjKzFob2NhbHJ3= v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    assert standard.verify(example, b'{"test": 2432232314}', 1614265330 + 60) is None
    assert standard.verify(example, b'{"test": 2432232315}', 1614265330) == (
        "no v1 signature in the webhook-signature header matches the body"
    )
    assert "from now" in (standard.verify(example, b'{"test": 2432232314}', 1614265330 + 3600) or "")
    stale = stripe_header(b"{}", stamp=int(now) - 600)
    said = stripe.verify({"Stripe-Signature": stale}, b"{}", now) or ""
    assert re.fullmatch(r"the signed timestamp is 10m(1s)? from now \(tolerance 5m\)", said), said


def test_settings_are_checked_at_load() -> None:
    base = {"name": "w", "type": "webhook", "target": "https://vendor.example"}
    with pytest.raises(ConfigError, match=r"set 'signature' .* or 'token'"):
        config_from([{**base, "settings": {"mode": "passive", "window": "1h"}}])
    with pytest.raises(ConfigError, match="active mode needs a 'trigger'"):
        config_from([{**base, "settings": {"token": "t" * 20}}])
    with pytest.raises(ConfigError, match="the 'hmac' scheme needs the 'header'"):
        config_from([{**base, "settings": {"mode": "passive", "window": "1h", "signature": {"secret": "x"}}}])
