"""Deprecation and sunset announcements, read from a vendor's response headers."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from aiohttp import web

from agent.sdk import Reason

from .helpers import config_from, counter_values, serve
from .test_http_probe import http_check, run_checks

pytestmark = pytest.mark.anyio

SUNSET = datetime(2027, 12, 1, tzinfo=UTC)
HEADERS = {
    "rfc": {
        "Deprecation": "@1700000000",
        "Sunset": format_datetime(SUNSET, usegmt=True),
        "Link": '<https://api.example/docs/deprecation>; rel="deprecation"; type="text/html", '
        '<https://api.example/docs/sunset>; rel="sunset"',
    },
    "legacy": {"Deprecation": "true"},
    "dated": {"Deprecation": "Sun, 11 Nov 2018 23:59:59 GMT"},
    "malformed": {"Deprecation": "soon", "Sunset": "tomorrow-ish"},
    "plain": {},
}


def vendor() -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        headers = dict(HEADERS[request.match_info["kind"]])
        if "in" in request.query:  # a sunset some days from now
            headers["Sunset"] = format_datetime(
                datetime.fromtimestamp(time.time() + float(request.query["in"]), UTC), usegmt=True
            )
        return web.json_response({"ok": True}, headers=headers)

    app = web.Application()
    app.router.add_get("/{kind}", handler)
    return app


async def test_deprecation_and_sunset_headers_become_metrics_and_an_event() -> None:
    async with serve(vendor()) as port:
        base = f"http://127.0.0.1:{port}"
        results, spans = await run_checks([http_check(kind, f"{base}/{kind}") for kind in HEADERS])
    rfc = results["rfc"]
    assert rfc.success
    assert rfc.values["probe.api.deprecated"] == 1
    assert rfc.values["probe.api.sunset_timestamp"] == SUNSET.timestamp()
    event = next(e for e in rfc.events if e.name == "api_deprecation")
    assert event.attributes["vantage.api.deprecated_at"] == "2023-11-14T22:13:20+00:00"
    assert event.attributes["vantage.api.deprecation_link"] == "https://api.example/docs/deprecation"
    assert event.attributes["vantage.api.sunset_link"] == "https://api.example/docs/sunset"
    root = next(s for s in spans if s.name == "check rfc")
    assert [e.name for e in root.events] == ["api_deprecation"]

    assert results["legacy"].values["probe.api.deprecated"] == 1
    assert "probe.api.sunset_timestamp" not in results["legacy"].values
    dated = next(e for e in results["dated"].events if e.name == "api_deprecation")
    assert dated.attributes["vantage.api.deprecated_at"] == "2018-11-11T23:59:59+00:00"
    assert results["plain"].values["probe.api.deprecated"] == 0
    assert results["plain"].events == ()


async def test_malformed_headers_are_counted_never_failed() -> None:
    async with serve(vendor()) as port:
        results, spans = await run_checks([http_check("bad", f"http://127.0.0.1:{port}/malformed")])
    bad = results["bad"]
    assert bad.success
    assert bad.values["probe.api.deprecated"] == 0
    assert sorted(s.labels["header"] for s in bad.samples if s.metric == "probe.http.malformed_headers") == [
        "Deprecation",
        "Sunset",
    ]
    problems = {e.attributes["vantage.header"]: e.attributes["vantage.problem"] for e in bad.events}
    assert "'soon' is neither @epoch, true nor an HTTP date" in str(problems["Deprecation"])
    assert "not an HTTP date" in str(problems["Sunset"])
    root = next(s for s in spans if s.name == "check bad")
    assert [e.name for e in root.events] == ["malformed_header", "malformed_header"]


async def test_fail_when_the_sunset_is_near() -> None:
    ten_days = 10 * 86400
    async with serve(vendor()) as port:
        target = f"http://127.0.0.1:{port}/legacy?in={ten_days}"
        results, _ = await run_checks(
            [
                http_check("near", target, fail_if_sunset_within="30d"),
                http_check("far-enough", target, fail_if_sunset_within="5d"),
            ]
        )
    near = results["near"]
    assert near.reason is Reason.ASSERTION
    assert "the API sunsets on" in near.message and "within fail_if_sunset_within (30d)" in near.message
    assert "in 9d23h" in near.message or "in 10d" in near.message
    assert results["far-enough"].success


async def test_malformed_header_counts_add_up_per_header() -> None:

    from agent.app import build_agent

    from .test_http_probe import TELEMETRY_ENV

    async with serve(vendor()) as port:
        agent = build_agent(
            config_from([http_check("bad", f"http://127.0.0.1:{port}/malformed")]), TELEMETRY_ENV
        )
        try:
            for _ in range(3):
                await agent.scheduler.run_once()
        finally:
            await agent.http.aclose()
    counts = counter_values(agent, "probe_http_malformed_headers", "header")
    assert counts == {"Deprecation": 3.0, "Sunset": 3.0}


def test_a_response_without_lifecycle_headers_reports_nothing_and_any_spelling_is_read() -> None:
    # parse_lifecycle answers a response with no Deprecation, Sunset or links at once; names are
    # looked up case-insensitively all the same.
    from multidict import CIMultiDict, CIMultiDictProxy

    from plugins._toolkit.headers import Lifecycle, parse_lifecycle

    assert parse_lifecycle(CIMultiDictProxy(CIMultiDict({"Server": "nginx"})), {}) == Lifecycle()
    sunset = "Sat, 31 Dec 2044 23:59:59 GMT"
    spelled = CIMultiDictProxy(CIMultiDict({"sunset": sunset, "deprecation": "true"}))
    found = parse_lifecycle(spelled, {})
    assert found.deprecated and found.sunset_at == datetime(2044, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
    linked = parse_lifecycle(CIMultiDictProxy(CIMultiDict()), {"sunset": "https://docs.example/sunset"})
    assert linked.links == {"sunset": "https://docs.example/sunset"}
