"""Rate limits: every family of vendor header, 429s, a quota threshold, and bad headers."""

from __future__ import annotations

import sys
import time

import pytest
from aiohttp import web

from agent.sdk import Reason
from plugins._toolkit.headers import RateLimitNames, http_date, parse_ratelimit

from .helpers import serve
from .test_http_probe import http_check, run_checks

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("headers", "remaining", "limit", "reset"),
    [
        ({"RateLimit": '"default";r=5;t=30', "RateLimit-Policy": '"default";q=100;w=60'}, 5, 100, 30),
        ({"RateLimit": "limit=100, remaining=50, reset=30"}, 50, 100, 30),
        (
            {"RateLimit-Limit": "100, 100;w=60", "RateLimit-Remaining": "7", "RateLimit-Reset": "12"},
            7,
            100,
            12,
        ),
        (
            {
                "X-RateLimit-Limit": "60",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(int(NOW + 40)),
            },
            0,
            60,
            40,
        ),
        (
            {
                "X-RateLimit-Limit": "60",
                "X-RateLimit-Remaining": "9",
                "X-RateLimit-Reset": str(int(NOW + 40) * 1000),
            },
            9,
            60,
            40,
        ),
        ({"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": "45"}, 3, None, 45),
        ({"X-Shopify-Shop-Api-Call-Limit": "32/40"}, 8, 40, None),
    ],
)
def test_each_header_family(
    headers: dict[str, str], remaining: float, limit: float | None, reset: float | None
) -> None:
    quota = parse_ratelimit(headers, NOW)
    assert (quota.remaining, quota.limit, quota.reset) == (remaining, limit, reset)
    assert quota.malformed == ()


def test_retry_after_in_seconds_or_as_a_date_and_custom_names() -> None:
    assert parse_ratelimit({"Retry-After": "120"}, NOW).wait == 120
    then = http_date("Fri, 15 Jan 2027 08:00:00 GMT")
    assert parse_ratelimit({"Retry-After": "Fri, 15 Jan 2027 08:00:30 GMT"}, then).retry_after == 30
    assert parse_ratelimit({"Retry-After": "999999"}, NOW).wait == 86400  # never more than a day
    names = RateLimitNames(remaining="X-Quota-Left", limit="X-Quota", reset="X-Quota-Reset")
    quota = parse_ratelimit({"X-Quota-Left": "1", "X-Quota": "10", "X-Quota-Reset": "5"}, NOW, names)
    assert (quota.remaining, quota.limit, quota.reset) == (1, 10, 5)
    assert parse_ratelimit({"X-Calls": "9/10"}, NOW, RateLimitNames(used_of_limit="X-Calls")).remaining == 1


def test_a_long_date_header_is_read_but_not_kept() -> None:
    """The parser reads a date's first words: a hostile target's date and 100 KB besides is a
    date. Dates are kept per text (the same Last-Modified run after run); a long one must not be,
    or a target sending a new one each run makes the agent hold 512 of them."""
    date = "Fri, 15 Jan 2027 08:00:00 GMT"
    long = date + " x" * 50_000
    held = sys.getrefcount(long)
    assert http_date(long) == http_date(date)
    assert sys.getrefcount(long) == held
    short = "Fri, 15 Jan 2027 08:00:01 GMT"
    assert http_date(short) == http_date(date) + 1


@pytest.mark.parametrize(
    ("headers", "header"),
    [
        ({"X-RateLimit-Remaining": "lots"}, "X-RateLimit-Remaining"),
        ({"X-RateLimit-Remaining": "-1"}, "X-RateLimit-Remaining"),
        ({"RateLimit": "garbage;;"}, "RateLimit"),
        ({"Retry-After": "soon"}, "Retry-After"),
        ({"X-Shopify-Shop-Api-Call-Limit": "50/40"}, "X-Shopify-Shop-Api-Call-Limit"),
    ],
)
def test_malformed_headers_are_named(headers: dict[str, str], header: str) -> None:
    quota = parse_ratelimit(headers, NOW)
    assert [name for name, _ in quota.malformed] == [header]


def vendor() -> web.Application:
    async def limited(request: web.Request) -> web.Response:
        if request.match_info["kind"] == "exhausted":
            return web.json_response({"error": "slow down"}, status=429, headers={"Retry-After": "30"})
        if request.match_info["kind"] == "low":
            return web.json_response(
                {},
                headers={
                    "X-RateLimit-Limit": "100",
                    "X-RateLimit-Remaining": "4",
                    "X-RateLimit-Reset": str(int(time.time()) + 60),
                },
            )
        return web.json_response({}, headers={"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "nope"})

    app = web.Application()
    app.router.add_get("/{kind}", limited)
    return app


@pytest.mark.anyio
async def test_the_probe_reports_429_thresholds_and_bad_headers() -> None:
    async with serve(vendor()) as port:
        base = f"http://127.0.0.1:{port}"
        results, _ = await run_checks(
            [
                http_check("exhausted", f"{base}/exhausted"),
                http_check("low", f"{base}/low", fail_if_ratelimit_below=0.1),
                http_check("low-ok", f"{base}/low", fail_if_ratelimit_below=0.02),
                http_check("bad", f"{base}/bad"),
            ]
        )
    exhausted = results["exhausted"]
    assert exhausted.reason is Reason.RATE_LIMITED
    assert exhausted.message == "HTTP 429: rate limited; backing off for 30s"
    assert exhausted.retry_after == 30
    low = results["low"]
    assert low.reason is Reason.RATE_LIMITED
    assert "quota at 4% (4 of 100 left), below fail_if_ratelimit_below (10%)" in low.message
    assert low.values["probe.ratelimit.remaining"] == 4 and low.values["probe.ratelimit.limit"] == 100
    assert 55 <= low.values["probe.ratelimit.reset"] <= 60
    assert results["low-ok"].success
    bad = results["bad"]
    assert bad.success and "probe.ratelimit.remaining" not in bad.values
    assert [s.labels["header"] for s in bad.samples if s.metric == "probe.http.malformed_headers"] == [
        "X-RateLimit-Remaining"
    ]


def test_a_response_without_rate_limit_headers_reports_nothing_and_any_spelling_is_read() -> None:
    # parse_ratelimit answers a response with none of the headers at once; names are looked up
    # case-insensitively all the same.
    from multidict import CIMultiDict, CIMultiDictProxy

    from plugins._toolkit.headers import RateLimit

    plain = CIMultiDictProxy(CIMultiDict({"Server": "nginx", "Content-Length": "11"}))
    assert parse_ratelimit(plain, 0.0) == RateLimit()
    assert parse_ratelimit(plain, 0.0, RateLimitNames()) == RateLimit()
    spelled = CIMultiDictProxy(CIMultiDict({"x-ratelimit-remaining": "5", "x-ratelimit-limit": "10"}))
    quota = parse_ratelimit(spelled, 0.0)
    assert (quota.remaining, quota.limit) == (5.0, 10.0)
    assert parse_ratelimit(CIMultiDictProxy(CIMultiDict({"retry-after": "7"})), 0.0).retry_after == 7.0
    vendor = CIMultiDictProxy(CIMultiDict({"Calls-Left": "3"}))
    own = parse_ratelimit(vendor, 0.0, RateLimitNames("Calls-Left"))
    assert own.remaining == 3.0
