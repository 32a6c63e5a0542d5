"""Hostile traffic at the agent's ports: header bytes that are not UTF-8, connections that never
finish their headers, more connections than the agent holds; and a port that is already taken.

What the user is promised: a uniform 401 and no traceback for a garbled credential, every
half-open connection closed after the header timeout while real requests keep being served, a
bounded number of connections, and one clear ConfigError naming the variable for a port in use.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from anyio.abc import SocketStream
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from agent.app import Agent, build_agent
from agent.errors import ConfigError
from agent.server.status import serve_app

from ..helpers import config_from, free_port
from ..inbound import TELEMETRY_ENV
from ..test_inbound_fuzz import CHECKS, SECRET, TOKEN

pytestmark = pytest.mark.anyio

API_TOKEN = "api-token-0123456789abcdef"
STANDARD = {
    "name": "std-hook",
    "type": "webhook",
    "target": "vendor.example",
    "interval": "1m",
    "timeout": "2s",
    "settings": {
        "mode": "passive",
        "window": "1h",
        "signature": {"scheme": "standard", "secret": "${WHSEC}"},
    },
}


@dataclass
class Ports:
    agent: Agent
    main: int
    inbound: int

    def counted(self, endpoint: str, outcome: str) -> float:
        text = self.agent.telemetry.render_prometheus().decode()
        return sum(
            sample.value
            for metric in text_string_to_metric_families(text)
            if metric.name == "vantage_inbound_requests"
            for sample in metric.samples
            if sample.name.endswith("_total")
            and sample.labels.get("endpoint") == endpoint
            and sample.labels.get("outcome") == outcome
        )


@contextlib.asynccontextmanager
async def agent_ports(checks: list[dict[str, Any]], **env: str) -> AsyncIterator[Ports]:
    """The agent's server with its inbound endpoints on their own port; yields both ports."""
    inbound = free_port()
    config = config_from(
        checks, VANTAGE_HOST="127.0.0.1", VANTAGE_PORT="0", VANTAGE_INBOUND_PORT=str(inbound), **env
    )
    agent = build_agent(config, TELEMETRY_ENV, span_processors=[SimpleSpanProcessor(InMemorySpanExporter())])
    try:
        async with anyio.create_task_group() as tg:
            main = await tg.start(agent.server.serve)
            yield Ports(agent, main, inbound)
            tg.cancel_scope.cancel()
    finally:
        await agent.http.aclose()


async def exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes (aiohttp's client would refuse to send these headers) and read the answer."""
    with anyio.fail_after(10):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(request)
            answer = b""
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    answer += await stream.receive()
    return answer


def raw_request(method: str, path: str, *headers: bytes, body: bytes = b"") -> bytes:
    head = [f"{method} {path} HTTP/1.1".encode(), b"Host: agent", b"Connection: close"]
    head += [f"Content-Length: {len(body)}".encode(), *headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def status_and_body(answer: bytes) -> tuple[int, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


# ---------------------------------------------------------------- credentials that are not UTF-8

NOW = str(int(time.time())).encode()
GARBLED = [
    ("heartbeat/job", b"Authorization: Bearer \xff\xfe" + TOKEN.encode()),
    ("heartbeat/job", b"Authorization: \xc3\x28"),
    ("heartbeat/job", b"X-Vantage-Token: " + TOKEN.encode() + b"\x80"),
    ("heartbeat/job", b"X-Anything: \xed\xa0\x80"),  # an encoded surrogate is not UTF-8 either
    ("hooks/hook", b"Stripe-Signature: t=" + NOW + b",v1=\xff\xfe"),
    ("hooks/hook", b"Authorization: Bearer \xff"),
    ("hooks/std-hook", b"webhook-id: msg_\xff", b"webhook-timestamp: " + NOW, b"webhook-signature: v1,AAAA"),
    ("hooks/std-hook", b"webhook-id: msg_1", b"webhook-timestamp: " + NOW, b"webhook-signature: v1,\xff\xfe"),
]
# Valid UTF-8, but not what the scheme expects: "²" passes str.isdigit() and breaks int().
ODD = [
    ("hooks/hook", "Stripe-Signature: t=²,v1=aa".encode()),
    ("hooks/std-hook", b"webhook-id: msg_1", "webhook-timestamp: ²".encode(), b"webhook-signature: v1,AAAA"),
]


async def test_credentials_that_are_not_utf8_get_the_uniform_401(caplog: pytest.LogCaptureFixture) -> None:
    checks = [*CHECKS, STANDARD]
    body = b'{"type": "charge.succeeded"}'
    with caplog.at_level(logging.DEBUG):
        async with agent_ports(checks, WHSEC=SECRET, JOB_TOKEN=TOKEN, VANTAGE_INBOUND_RATE="off") as ports:
            answers = []
            for path, *headers in GARBLED + ODD:
                content = (b"Content-Type: application/json",) if path.startswith("hooks") else ()
                request = raw_request("POST", f"/{path}", *headers, *content, body=body)
                answers.append((path, headers, status_and_body(await exchange(ports.inbound, request))))
            job = ports.agent.inbox.after("job", 0)
            rejected = ports.counted("heartbeat", "rejected") + ports.counted("hooks", "rejected")
    for path, headers, answer in answers:
        assert answer == (401, b'{"error": "rejected"}'), (path, headers, answer)
    # Kept for the probe to report, with a reason that shows nothing of the bytes.
    assert [d.problem for d in job] == [
        "the Authorization header is not UTF-8",
        "the Authorization header is not UTF-8",
        "the X-Vantage-Token header is not UTF-8",
        "the X-Anything header is not UTF-8",
    ]
    assert rejected == len(GARBLED + ODD)
    tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert tracebacks == []


async def test_the_status_api_token_that_is_not_utf8_is_refused_not_crashed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG):
        async with agent_ports(CHECKS, WHSEC=SECRET, JOB_TOKEN=TOKEN, VANTAGE_API_TOKEN=API_TOKEN) as ports:
            garbled = await exchange(
                ports.main, raw_request("GET", "/api/checks", b"Authorization: Bearer \xff")
            )
            good = await exchange(
                ports.main, raw_request("GET", "/api/checks", f"Authorization: Bearer {API_TOKEN}".encode())
            )
    assert status_and_body(garbled)[0] == 401
    assert status_and_body(good)[0] == 200
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []


# ---------------------------------------------------------------- half-open connections and the cap


async def hello(_: web.Request) -> web.Response:
    return web.Response(text="hello")


def app() -> web.Application:
    application = web.Application()
    application.router.add_get("/", hello)
    return application


async def wait_for_close(stream: SocketStream) -> bytes:
    """What the server sent before it closed the connection."""
    got = b""
    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
        while True:
            got += await stream.receive()
    return got


async def test_slow_header_connections_are_closed_while_requests_are_served() -> None:
    # 200 callers each send half a request head and then nothing, as a slowloris does; another
    # finishes a request and then idles on its kept-alive connection. With a 1 s header timeout all
    # of them are closed, and a real request meanwhile is served.
    slow: list[SocketStream] = []
    closed: list[bytes] = []
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            serve = functools.partial(
                serve_app, app(), "127.0.0.1", 0, header_timeout=1.0, max_connections=400
            )
            port = await tg.start(serve)
            for _ in range(200):
                stream = await anyio.connect_tcp("127.0.0.1", port)
                await stream.send(b"GET / HTTP/1.1\r\nHost: agent\r\nX-Slow: ")
                slow.append(stream)
            idle = await anyio.connect_tcp("127.0.0.1", port)
            await idle.send(b"GET / HTTP/1.1\r\nHost: agent\r\n\r\n")
            first = await idle.receive()
            async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/") as r:
                served = r.status, await r.text()
            await idle.send(b"GET / HTTP/1.1\r\n")  # the next request's head, never finished
            for stream in [*slow, idle]:
                closed.append(await wait_for_close(stream))
                await stream.aclose()
            tg.cancel_scope.cancel()
    assert served == (200, "hello")
    assert first.startswith(b"HTTP/1.1 200")
    assert len(closed) == 201 and set(closed) == {b""}  # closed, and nothing was answered


async def test_connections_over_the_cap_are_closed_at_once(caplog: pytest.LogCaptureFixture) -> None:
    refused: list[int] = []
    held: list[SocketStream] = []
    with caplog.at_level(logging.INFO, logger="vantage.server"), anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            serve = functools.partial(
                serve_app,
                app(),
                "127.0.0.1",
                0,
                setting="VANTAGE_INBOUND_PORT",
                header_timeout=30.0,
                max_connections=5,
                refused=lambda: refused.append(1),
            )
            port = await tg.start(serve)
            request = b"GET / HTTP/1.1\r\nHost: agent\r\n\r\n"
            for _ in range(5):  # five kept-alive connections, each surely accepted: it was answered
                stream = await anyio.connect_tcp("127.0.0.1", port)
                await stream.send(request)
                assert (await stream.receive()).startswith(b"HTTP/1.1 200")
                held.append(stream)
            over = []
            for _ in range(3):
                async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                    with contextlib.suppress(anyio.BrokenResourceError):
                        await stream.send(request)
                    over.append(await wait_for_close(stream))
            await held.pop().aclose()
            # Once the server has seen that close, a new connection is served again; the warning
            # state ends when the connections are down to 3 (3/4 of the cap).
            for _attempt in range(100):
                async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                    with contextlib.suppress(anyio.BrokenResourceError):
                        await stream.send(request)
                    answer = await _first(stream)
                if answer.startswith(b"HTTP/1.1 200"):
                    break
                await anyio.sleep(0.05)
            before_recovery = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
            for stream in held:
                await stream.aclose()
            for _ in range(100):
                if any("down to" in r.getMessage() for r in caplog.records):
                    break
                await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    assert over == [b"", b"", b""]
    assert answer.startswith(b"HTTP/1.1 200")
    assert len(refused) == 3 + _attempt
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "VANTAGE_INBOUND_PORT: 5 connections are open, the most allowed; new ones are closed at once "
        "(logged once until they are down to 3)"
    ]
    assert before_recovery == []  # one close at the cap is no recovery: no line per connection
    recovered = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert recovered == [
        f"VANTAGE_INBOUND_PORT: down to 3 open connections; {len(refused)} were closed at the cap"
    ]


async def _first(stream: SocketStream) -> bytes:
    """The first bytes the server sends, or b"" when it closes the connection first."""
    try:
        return await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return b""


# ---------------------------------------------------------------- a port already in use


def config_error(message: str) -> pytest.RaisesGroup[ConfigError]:
    """A ConfigError saying exactly ``message``, inside the task groups' exception groups."""
    return pytest.RaisesGroup(
        pytest.RaisesExc(ConfigError, check=lambda error: str(error) == message), flatten_subgroups=True
    )


@contextlib.contextmanager
def port_in_use() -> Iterator[int]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        yield holder.getsockname()[1]
    finally:
        holder.close()


async def test_a_port_in_use_is_a_config_error_naming_the_variable() -> None:
    with port_in_use() as port:
        with config_error(f"VANTAGE_INBOUND_PORT: port {port} on 127.0.0.1 is already in use"):
            async with anyio.create_task_group() as tg:
                await tg.start(
                    functools.partial(serve_app, app(), "127.0.0.1", port, setting="VANTAGE_INBOUND_PORT")
                )
        # Server.serve names the variable of the port it could not bind: the main or the inbound one.
        for variable, env in (
            ("VANTAGE_PORT", {"VANTAGE_PORT": str(port)}),
            ("VANTAGE_INBOUND_PORT", {"VANTAGE_PORT": "0", "VANTAGE_INBOUND_PORT": str(port)}),
        ):
            config = config_from(CHECKS, VANTAGE_HOST="127.0.0.1", WHSEC=SECRET, JOB_TOKEN=TOKEN, **env)
            agent = build_agent(config, TELEMETRY_ENV)
            try:
                with config_error(f"{variable}: port {port} on 127.0.0.1 is already in use"):
                    async with anyio.create_task_group() as tg:
                        await tg.start(agent.server.serve)
            finally:
                await agent.http.aclose()


async def test_an_address_that_cannot_be_bound_says_why() -> None:
    # 192.0.2.1 (TEST-NET-1) is on no interface here: bind() fails, and nothing is sent anywhere.
    why = os.strerror(errno.EADDRNOTAVAIL)
    with config_error(f"VANTAGE_PORT: port 0 on 192.0.2.1 cannot be bound: {why}"):
        async with anyio.create_task_group() as tg:
            await tg.start(functools.partial(serve_app, app(), "192.0.2.1", 0))
