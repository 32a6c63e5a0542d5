"""A secret that a cut would halve: what a message quotes of a target's bytes is redacted, then cut.

Messages quote a target's bytes (a body, a line, a header) cut to a length. Were they cut first, a
secret straddling the cut would be found by no redaction, and its first half would be written. Each
case here has a real loopback target send text whose secret straddles the cut (190 characters
before it where 200 are shown, 90 where 100 are), the secret registered as ``${CUT_SECRET}``, and
checks that no prefix of it of 4 or more characters is in the result, the spans or
``/api/checks``, while the quote still shows the text before the secret, cut with its "…".
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
import trustme
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agent.app import build_agent
from agent.config.secrets import MIN_SECRET_LENGTH, Redactor
from agent.sdk import ProbeResult, Reason, clip

from ..helpers import config_from, serve
from ..test_http_probe import TELEMETRY_ENV, http_check
from ..test_tcp_probe import tcp
from ..test_tls_probe import server_context, tls, tls_server

pytestmark = pytest.mark.anyio

SECRET = "Zq7cut-9f8e7d6c5b4a3210-secret"
ENV = {"CUT_SECRET": SECRET}
AUTH = {"Authorization": "Bearer ${CUT_SECRET}"}


def leaked(text: str) -> str | None:
    """The longest prefix of the secret, of 4 characters or more, found in ``text``."""
    found = [SECRET[:n] for n in range(MIN_SECRET_LENGTH, len(SECRET) + 1) if SECRET[:n] in text]
    return found[-1] if found else None


def written(result: ProbeResult) -> Iterator[str]:
    """Every text of a result that reaches a log, a span or the status API."""
    yield result.message
    for outcome in result.assertions:
        yield from (outcome.assertion, outcome.actual, outcome.message)
    for step in result.steps:
        yield from (step.name, step.message)
    for event in result.events:
        yield from (str(value) for value in event.attributes.values())
    yield from (str(value) for value in result.attributes.values())


def exported(span: ReadableSpan) -> Iterator[str]:
    yield span.status.description or ""
    yield from (str(value) for value in (span.attributes or {}).values())
    for event in span.events:
        yield from (str(value) for value in (event.attributes or {}).values())


def vendor() -> web.Application:
    """An API that quotes the caller's bearer token back: in a body, and in a malformed header."""

    def token(request: web.Request) -> str:
        return request.headers.get("Authorization", "").removeprefix("Bearer ")

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text="A" * 190 + token(request) + "B" * 100)

    async def deprecated(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={"Deprecation": "D" * 90 + token(request) + "E" * 50})

    app = web.Application()
    app.router.add_get("/echo", echo)
    app.router.add_get("/deprecated", deprecated)
    return app


@asynccontextmanager
async def line_server() -> AsyncIterator[int]:
    """A line protocol that refuses an ``AUTH`` by quoting it, the quote 190 characters in."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            given = (await reader.readline()).decode().strip().removeprefix("AUTH ")
            writer.write(f"535 {'A' * 186}{given}{'B' * 100}\r\n".encode())
            await writer.drain()  # and closes: an expect reads on until a line matches or the end
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        with anyio.CancelScope(shield=True):
            await server.wait_closed()


async def smtp_quoting_the_secret(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(f"554 {'A' * 186}{SECRET}{'B' * 100}\r\n".encode())
    await writer.drain()
    return False


async def run_with_api(
    checks: list[dict[str, Any]],
) -> tuple[dict[str, ProbeResult], list[ReadableSpan], dict[str, Any]]:
    """Run each check once; the results, the finished spans and ``/api/checks`` by check name."""
    config = config_from(checks, VANTAGE_HOST="127.0.0.1", VANTAGE_PORT="0", **ENV)
    spans = InMemorySpanExporter()
    agent = build_agent(config, TELEMETRY_ENV, span_processors=[SimpleSpanProcessor(spans)])
    try:
        async with anyio.create_task_group() as tg:
            port = await tg.start(agent.server.serve)
            await agent.scheduler.run_once()
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/api/checks") as response,
            ):
                api = await response.json()
            tg.cancel_scope.cancel()
    finally:
        await agent.http.aclose()
    results = {name: state.last for name, state in agent.recorder.states.items() if state.last}
    return results, list(spans.get_finished_spans()), {c["name"]: c for c in api["checks"]}


async def test_no_part_of_a_secret_straddling_a_cut_is_written(ca: trustme.CA, ca_file: Path) -> None:
    context = server_context(ca.issue_cert("127.0.0.1"))
    async with (
        serve(vendor()) as http_port,
        line_server() as tcp_port,
        tls_server(context, smtp_quoting_the_secret) as smtp_port,
    ):
        body_check = http_check("body", f"http://127.0.0.1:{http_port}/echo", headers=AUTH)
        body_check["settings"]["assert"] = [{"source": "body", "op": "eq", "value": "ok"}]
        results, spans, api = await run_with_api(
            [
                body_check,
                tcp("line", tcp_port, dialogue=[{"send": "AUTH ${CUT_SECRET}\r\n"}, {"expect": "^235 "}]),
                http_check("header", f"http://127.0.0.1:{http_port}/deprecated", headers=AUTH),
                # The secret is another check's: redaction covers every check of the agent.
                tls("starttls", smtp_port, ca_file, starttls="smtp"),
            ]
        )
    assert set(results) == {"body", "line", "header", "starttls"}
    leaks = {
        name: [leaked(text) for text in (*written(result), json.dumps(api[name])) if leaked(text)]
        for name, result in results.items()
    }
    assert leaks == {name: [] for name in results}
    assert [(span.name, leaked(text)) for span in spans for text in exported(span) if leaked(text)] == []

    # What is quoted still starts as the target's text did, and was cut where the secret began.
    body = results["body"]
    assert body.reason is Reason.ASSERTION
    assert body.assertions[0].actual == "A" * 190 + "<redacted>…"
    assert body.message == f'expected body eq "ok", got {"A" * 190}<redacted>…'
    line = results["line"]
    assert line.reason is Reason.ASSERTION
    assert line.message == (
        f"turn 2: expected a line matching '^235 ', got {'535 ' + 'A' * 186 + '<redacted>…'!r}"
    )
    header = results["header"]
    assert header.success, header.message
    problems = [dict(e.attributes) for e in header.events if e.name == "malformed_header"]
    assert problems == [
        {
            "vantage.header": "Deprecation",
            "vantage.problem": f"{'D' * 90 + '<redacted>…'!r} is neither @epoch, true nor an HTTP date",
        }
    ]
    starttls = results["starttls"]
    assert starttls.reason is Reason.PROTOCOL
    assert starttls.message == (
        f"STARTTLS: expected 220 as the greeting, got {'554 ' + 'A' * 186 + '<redacted>…'!r}"
    )


def test_clip_redacts_before_it_cuts() -> None:
    redact = Redactor([SECRET])
    straddling = "x" * 190 + SECRET + "y" * 100
    assert clip(straddling, 200, redact) == "x" * 190 + "<redacted>…"
    # Never half a marker: a cut that would fall inside one is made before it.
    assert clip("x" * 195 + SECRET + "y", 200, redact) == "x" * 195 + "…"
    assert clip("short " + SECRET, 200, redact) == "short <redacted>"
    assert clip("z" * 201, 200, redact) == "z" * 200 + "…"
    assert clip("z" * 200, 200, redact) == "z" * 200
