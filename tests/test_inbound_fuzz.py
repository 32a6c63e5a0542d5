"""Hostile requests at the inbound endpoints (hypothesis): no crash, no leaked information, bounded
memory; and a flood from one source that is cut off while the probes keep running."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import anyio
import pytest
from aiohttp import web
from anyio.from_thread import BlockingPortal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.sdk.types import CHECK_NAME as _NAME

from .helpers import serve
from .inbound import Running, running_agent

SECRET = "whsec_fuzz_0123456789abcdef"
TOKEN = "job-token-fuzz-0123456789"
CHECKS = [
    {
        "name": "hook",
        "type": "webhook",
        "target": "vendor.example",
        "interval": "1m",
        "timeout": "2s",
        "settings": {
            "mode": "passive",
            "window": "1h",
            "signature": {"scheme": "stripe", "secret": "${WHSEC}"},
            "assert": [{"source": "body", "path": "$.type", "op": "exists"}],
        },
    },
    {
        "name": "job",
        "type": "heartbeat",
        "target": "a job",
        "interval": "1m",
        "timeout": "2s",
        "settings": {"period": "1h", "token": "${JOB_TOKEN}"},
    },
]
MAX_BODY = 16 * 1024
CHECK_NAME = re.compile(_NAME)
ANSWERS = {200, 400, 401, 405, 413, 415}


@pytest.fixture(scope="module")
def portal() -> Iterator[BlockingPortal]:
    with anyio.from_thread.start_blocking_portal() as portal:
        yield portal


@pytest.fixture(scope="module")
def agent(portal: BlockingPortal) -> Iterator[Running]:
    """An agent serving its inbound endpoints from another thread, for synchronous hypothesis tests."""
    running = running_agent(
        CHECKS,
        WHSEC=SECRET,
        JOB_TOKEN=TOKEN,
        VANTAGE_INBOUND_RATE="off",
        VANTAGE_INBOUND_MAX_BODY=str(MAX_BODY),
    )
    with portal.wrap_async_context_manager(running) as agent:
        yield agent


header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)
header_names = st.sampled_from(
    [
        "Content-Type",
        "Stripe-Signature",
        "Authorization",
        "X-Vantage-Token",
        "X-Forwarded-For",
        "X-Vantage-Forwarded",
        "Content-Encoding",
        "X-Anything",
    ]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
bodies = st.one_of(
    st.binary(max_size=2048),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.builds(lambda n: b"[" * n + b"]" * n, st.integers(0, 5000)),  # deep nesting
    st.builds(lambda n: b"x" * n, st.integers(MAX_BODY - 10, MAX_BODY * 4)),  # around the limit
    st.builds(lambda m: f"status=fail&message={m}".encode(), st.text(max_size=300)),
)


def send(base: str, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    target = urlsplit(base)
    connection = http.client.HTTPConnection(target.hostname or "", target.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    endpoint=st.sampled_from(["hooks", "heartbeat"]),
    name=st.one_of(st.sampled_from(["hook", "job", "nope", ""]), st.text(max_size=300)),
    method=st.sampled_from(["GET", "POST", "PUT", "HEAD", "DELETE", "PATCH"]),
    headers=st.dictionaries(header_names, header_text, max_size=5),
    with_token=st.booleans(),
    body=bodies,
    query=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=100),
)
def test_hostile_requests(
    agent: Running,
    endpoint: str,
    name: str,
    method: str,
    headers: dict[str, str],
    with_token: bool,
    body: bytes,
    query: str,
) -> None:
    if with_token:
        headers = {**headers, "Authorization": f"Bearer {TOKEN}"}
    path = f"/{endpoint}/{quote(name, safe='')}?{quote(query, safe='=&')}"
    status, answer = send(agent.inbound, method, path, body, headers)
    assert status in ANSWERS | {404}, (status, answer)
    if status == 404:  # a path that cannot name a check is not routed at all
        assert not CHECK_NAME.match(name), name
    text = answer.decode("utf-8", "replace")
    assert SECRET not in text and TOKEN not in text
    if status == 401 and method != "HEAD":
        assert answer == b'{"error": "rejected"}'  # the same whether the check exists or not
    if status == 200:
        assert endpoint == "heartbeat" and name == "job" and with_token


def test_after_the_fuzz(agent: Running, portal: BlockingPortal) -> None:
    # Bounded memory: each check's inbox holds at most its newest requests, and only real checks have one.
    boxes = agent.agent.inbox._boxes
    assert set(boxes) <= {"hook", "job"}
    assert all(len(box) <= 256 for box in boxes.values())
    # The probes still run, and nothing hostile reaches a message unescaped.
    results = portal.call(agent.run_once)
    assert set(results) == {"hook", "job"}
    for result in results.values():
        assert result.reason is None or result.reason.value in ("job_failed", "assertion")
        assert result.message.isprintable() and len(result.message) < 300


@pytest.mark.anyio
async def test_a_flood_is_cut_off_and_probes_keep_running() -> None:
    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/", ok)
    async with serve(app) as port:
        checks: list[dict[str, Any]] = [
            CHECKS[1],
            {"name": "api", "type": "http", "target": f"http://127.0.0.1:{port}/", "timeout": "5s"},
        ]
        async with running_agent(checks, JOB_TOKEN=TOKEN, VANTAGE_INBOUND_RATE="50/second") as running:
            statuses: list[int] = []

            async def flood(session: aiohttp.ClientSession) -> None:
                for _ in range(40):
                    async with session.get(
                        f"{running.inbound}/heartbeat/job", params={"token": "x" * 20}
                    ) as r:
                        statuses.append(r.status)

            async with aiohttp.ClientSession() as session, anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(flood, session)
                results = await running.run_once()
            counted = dict(
                (labels["outcome"], value)
                for labels, value in running.metric("vantage_inbound_requests")
                if labels["endpoint"] == "heartbeat"
            )
    assert results["api"].success, results["api"].message
    assert statuses.count(429) >= 300  # 400 requests in well under a second, 50 allowed per second
    assert set(statuses) == {401, 429}
    assert counted["rate_limited"] == statuses.count(429)
    assert counted["rejected"] == statuses.count(401)
