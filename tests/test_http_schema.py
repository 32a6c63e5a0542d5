"""Schema drift: a vendor whose response shape changes; baselines in memory, on disk, from a sample."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.app import build_agent
from agent.sdk import Reason
from plugins._toolkit.schema import shape

from .helpers import config_from, counter_values, serve
from .test_http_probe import TELEMETRY_ENV, http_check

pytestmark = pytest.mark.anyio

V1 = {"object": "list", "data": [{"id": "ch_1", "amount": 5}, {"id": "ch_2", "amount": 7}]}
V1_OTHER_VALUES = {"object": "list", "data": [{"id": "ch_9", "amount": 1}]}
V2 = {"object": "list", "data": [{"amount": "5.00", "currency": "eur"}]}


def test_shape_keeps_paths_and_types_not_values_or_lengths() -> None:
    assert (
        shape(V1)
        == shape(V1_OTHER_VALUES)
        == {
            "$": {"object"},
            "$.object": {"string"},
            "$.data": {"array"},
            "$.data[*]": {"object"},
            "$.data[*].id": {"string"},
            "$.data[*].amount": {"number"},
        }
    )


class Vendor:
    def __init__(self) -> None:
        self.body: dict[str, Any] = V1

    async def handler(self, _: web.Request) -> web.Response:
        return web.json_response(self.body)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/charges", self.handler)
        return app


async def run(checks: list[dict[str, Any]], vendor: Vendor, bodies: list[dict[str, Any]], **env: str) -> Any:
    agent = build_agent(config_from(checks, **env), TELEMETRY_ENV)
    results = []
    try:
        for body in bodies:
            vendor.body = body
            await agent.scheduler.run_once()
            results.append({name: state.last for name, state in agent.recorder.states.items()})
    finally:
        await agent.http.aclose()
    return results, counter_values(agent, "probe_schema_drift", "check")


async def test_drift_from_the_first_response_is_counted_noted_and_optionally_fails() -> None:
    vendor = Vendor()
    async with serve(vendor.app()) as port:
        url = f"http://127.0.0.1:{port}/charges"
        results, drift = await run(
            [
                http_check("watch", url, schema_drift={}),
                http_check("strict", url, schema_drift={"fail": True}),
            ],
            vendor,
            [V1, V1_OTHER_VALUES, V2, V2],
        )
    assert all(r["watch"].success and r["strict"].success for r in results[:2])  # same shape, new values
    assert results[2]["watch"].success  # counted, not failed
    event = next(e for e in results[2]["watch"].events if e.name == "schema_drift")
    assert event.attributes["vantage.schema.removed"] == "$.data[*].id"
    assert event.attributes["vantage.schema.retyped"] == "$.data[*].amount (number → string)"
    assert event.attributes["vantage.schema.added"] == "$.data[*].currency"
    strict = results[2]["strict"]
    assert strict.reason is Reason.SCHEMA
    assert strict.message == (
        "the response's shape changed: removed $.data[*].id; retyped $.data[*].amount (number → string); "
        "added $.data[*].currency"
    )
    assert results[3]["strict"].reason is Reason.SCHEMA  # the baseline is not replaced by the drift
    assert drift == {"watch": 2.0, "strict": 2.0}


async def test_the_baseline_survives_a_restart_with_a_state_dir(tmp_path: Path) -> None:
    vendor = Vendor()
    async with serve(vendor.app()) as port:
        check = http_check("watch", f"http://127.0.0.1:{port}/charges", schema_drift={"fail": True})
        first, _ = await run([check], vendor, [V1], VANTAGE_STATE_DIR=str(tmp_path))
        stored = json.loads((tmp_path / "schema" / "watch.json").read_text())
        assert stored["shape"]["$.data[*].amount"] == ["number"]
        # A new agent (a restart): the stored baseline, not the new response, is the reference.
        second, _ = await run([check], vendor, [V2], VANTAGE_STATE_DIR=str(tmp_path))
    assert first[0]["watch"].success
    assert second[0]["watch"].reason is Reason.SCHEMA


async def test_a_sample_file_is_the_baseline(tmp_path: Path) -> None:
    sample = tmp_path / "charges.json"
    sample.write_text(json.dumps(V2))
    vendor = Vendor()
    async with serve(vendor.app()) as port:
        check = http_check(
            "watch",
            f"http://127.0.0.1:{port}/charges",
            schema_drift={"baseline_file": str(sample), "fail": True},
        )
        results, _ = await run([check], vendor, [V1])
    assert results[0]["watch"].reason is Reason.SCHEMA
