"""The order-sync recipe (examples/recipes/order-sync.yaml, docs/recipes.md): a heartbeat says the
job ran, a sync check says the records really moved. Run as written (only the two systems' URLs
pointed at local fakes) on a fake clock, with a job that pings as the recipe's crontab line does:
a healthy run passes both; a run whose records the ERP silently drops passes the heartbeat and
fails the sync check; a run that "succeeds" at once fails the heartbeat (``runtime_short``); a job
that stops fails it (``stale``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from agent.sdk import ProbeResult, Reason

from .helpers import serve
from .test_heartbeat_runs import clocked_agent

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
SECRETS = {
    "ORDER_SYNC_PING_TOKEN": "order-sync-ping-0123456789",
    "SHOP_API_TOKEN": "shop-recipe-token-0123456789",
    "ERP_API_TOKEN": "erp-recipe-token-0123456789",
}
MINUTE = 60.0


class Systems:
    """The shop (system A) and the ERP (system B), as small HTTP APIs with bearer tokens."""

    def __init__(self) -> None:
        self.orders: list[dict[str, Any]] = []
        self.imported: list[dict[str, Any]] = []
        self.dropping = False
        """The ERP answers 200 to an import and keeps nothing (a field mapping rejects every record)."""

    def shop(self) -> web.Application:
        async def orders(request: web.Request) -> web.Response:
            if request.headers.get("Authorization") != f"Bearer {SECRETS['SHOP_API_TOKEN']}":
                return web.json_response({"error": "unauthorized"}, status=401)
            since = request.query.get("since", "")
            newest = sorted(self.orders, key=lambda order: order["created_at"], reverse=True)
            chosen = [order for order in newest if order["created_at"] > since]
            return web.json_response({"orders": chosen[: int(request.query.get("limit", "100"))]})

        app = web.Application()
        app.router.add_get("/api/orders", orders)
        return app

    def erp(self) -> web.Application:
        def authorized(request: web.Request) -> bool:
            return request.headers.get("Authorization") == f"Bearer {SECRETS['ERP_API_TOKEN']}"

        async def listing(request: web.Request) -> web.Response:
            if not authorized(request):
                return web.json_response({"error": "unauthorized"}, status=401)
            newest = sorted(self.imported, key=lambda item: item["source_created_at"], reverse=True)
            return web.json_response({"items": newest[: int(request.query.get("limit", "100"))]})

        async def take(request: web.Request) -> web.Response:
            if not authorized(request):
                return web.json_response({"error": "unauthorized"}, status=401)
            batch = await request.json()
            if not self.dropping:
                self.imported += [{"order": o["id"], "source_created_at": o["created_at"]} for o in batch]
            return web.json_response({"status": "accepted"})

        app = web.Application()
        app.router.add_get("/api/imports/orders", listing)
        app.router.add_post("/api/imports/orders", take)
        return app


def iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat()


async def test_the_heartbeat_says_the_job_ran_and_the_sync_check_that_records_moved() -> None:
    systems = Systems()
    async with serve(systems.shop()) as shop_port, serve(systems.erp()) as erp_port:
        text = (ROOT / "examples" / "recipes" / "order-sync.yaml").read_text()
        shop, erp = f"http://127.0.0.1:{shop_port}", f"http://127.0.0.1:{erp_port}"
        assert "https://shop.example.com" in text and "https://erp.example.com" in text
        text = text.replace("https://shop.example.com", shop).replace("https://erp.example.com", erp)
        checks = yaml.safe_load(text)["checks"]
        async with clocked_agent(checks, SECRETS) as running, aiohttp.ClientSession() as session:
            clock = running.clock  # the agent starts at 03:00 in Berlin; the job runs every 15 minutes
            cursor = ""
            systems.orders = [
                {"id": n, "created_at": iso(clock.time() - (10 - n) * MINUTE)} for n in range(2)
            ]
            systems.imported = [
                {"order": o["id"], "source_created_at": o["created_at"]} for o in systems.orders
            ]
            cursor = systems.orders[-1]["created_at"]

            async def order(minutes_ago: float) -> None:
                created = iso(clock.time() - minutes_ago * MINUTE)
                systems.orders.append({"id": len(systems.orders), "created_at": created})

            async def job(works_for: float) -> None:
                """The order-sync job as the recipe's crontab line runs it: start, work, end."""
                nonlocal cursor
                token = {"Authorization": f"Bearer {SECRETS['ORDER_SYNC_PING_TOKEN']}"}
                url = f"{running.inbound}/heartbeat/order-sync-job"
                rid = str(uuid.uuid4())
                async with session.get(f"{url}/start", params={"rid": rid}, headers=token) as response:
                    assert response.status == 200
                shop_auth = {"Authorization": f"Bearer {SECRETS['SHOP_API_TOKEN']}"}
                async with session.get(
                    f"{shop}/api/orders", params={"since": cursor}, headers=shop_auth
                ) as got:
                    batch = (await got.json())["orders"]
                erp_auth = {"Authorization": f"Bearer {SECRETS['ERP_API_TOKEN']}"}
                async with session.post(f"{erp}/api/imports/orders", json=batch, headers=erp_auth) as sent:
                    assert sent.status == 200
                cursor = max([cursor, *(o["created_at"] for o in batch)])
                await clock.advance(works_for)
                output = f"read {len(batch)} orders\nsent {len(batch)} orders to the ERP\n"
                async with session.post(
                    f"{url}/0", params={"rid": rid}, data=output, headers=token
                ) as response:
                    assert response.status == 200

            async def both() -> tuple[ProbeResult, ProbeResult]:
                await running.agent.scheduler.run_once()
                states = running.agent.recorder.states
                heartbeat, records = states["order-sync-job"].last, states["order-sync-records"].last
                assert heartbeat is not None and records is not None
                return heartbeat, records

            # 03:15: a healthy run copies two new orders.
            await clock.advance(15 * MINUTE)
            await order(10)
            await order(5)
            await job(40)
            healthy = await both()
            # 03:30, 03:45, 04:00: the job runs as usual and says it succeeded, but the ERP drops
            # every batch. The heartbeat stays green; the records stop moving, and once the ERP is
            # more than max_lag behind, the sync check says so.
            systems.dropping = True
            dropped = []
            for _ in range(3):
                await clock.advance(15 * MINUTE - 40)
                await order(12)
                await order(2)
                await job(40)
                dropped.append(await both())
            # 04:15: fixed, but the job "succeeds" at once (it read nothing: a wrong cursor, say).
            systems.dropping = False
            await clock.advance(15 * MINUTE - 40)
            await job(1)
            too_fast = (await both())[0]
            # The job stops: nothing by 04:30 + 5 minutes of grace.
            await clock.advance(21 * MINUTE)
            stopped = (await both())[0]
    heartbeat, records = healthy
    assert heartbeat.success and records.success, (heartbeat.message, records.message)
    assert records.values["probe.sync.lag"] == 0.0
    assert all(heartbeat.success for heartbeat, _ in dropped)
    # The ERP's newest order stays at 03:10 while the shop's is 03:28, 03:43, 03:58.
    assert [records.success for _, records in dropped] == [True, False, False]
    assert dropped[1][1].reason is Reason.STALE
    assert dropped[1][1].message == "system B is 33m behind A, more than 30m"
    assert too_fast.reason is Reason.RUNTIME_SHORT and too_fast.message.startswith(
        "the last run succeeded after 1s, less than min_runtime (5s)"
    )
    assert stopped.reason is Reason.STALE
    assert stopped.message.endswith(
        "one was expected by 2026-06-01 04:30 CEST (schedule '*/15 * * * *') (+5m grace)"
    )
