"""The libcurl client (agent/net/curl.py) against real local servers: one hop, its phases, body cap,
headers, TLS from trustme, cancellation, failures mapped to reasons, many transfers on one loop."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import ssl
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme
from aiohttp import web

from agent.net.curl import CurlMulti, CurlRequest
from agent.sdk.failures import map_curl_error
from agent.sdk.http import HttpFailure, TLSOptions
from agent.sdk.reasons import Reason

from .helpers import serve

pytestmark = pytest.mark.anyio

PHASES = ["resolve", "connect", "tls", "processing", "transfer"]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


def plain_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", hello)
    return app


async def test_get_phases_are_consecutive_and_add_up_to_the_total() -> None:
    async with serve(plain_app()) as port:
        result = await CurlMulti.of_running_loop().perform(
            CurlRequest("GET", f"http://127.0.0.1:{port}/?q=1")
        )
    assert (result.status, result.body, result.truncated, result.http_version) == (
        200,
        b"hello",
        False,
        "1.1",
    )
    assert list(result.phases) == PHASES
    assert all(value >= 0 for value in result.phases.values())
    assert result.phases["tls"] == 0  # plain HTTP
    assert result.phases["connect"] > 0 and result.phases["processing"] > 0
    assert sum(result.phases.values()) == pytest.approx(result.duration, abs=1e-9)
    assert result.duration > 0


async def test_post_is_received_with_its_body_and_headers() -> None:
    seen: list[tuple[str, bytes, str | None]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append((request.method, await request.read(), request.headers.get("X-Token")))
        return web.Response(status=201)

    app = web.Application()
    app.router.add_post("/submit", echo)
    async with serve(app) as port:
        result = await CurlMulti.of_running_loop().perform(
            CurlRequest(
                "POST", f"http://127.0.0.1:{port}/submit", headers=[("X-Token", "abc")], body=b"x" * 5000
            )
        )
    assert result.status == 201
    assert seen == [("POST", b"x" * 5000, "abc")]


async def test_repeated_response_headers_are_all_kept_in_order() -> None:
    async def cookies(request: web.Request) -> web.Response:
        response = web.Response(text="ok")
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        response.headers.add("X-Other", "z")
        return response

    app = web.Application()
    app.router.add_get("/", cookies)
    async with serve(app) as port:
        result = await CurlMulti.of_running_loop().perform(CurlRequest("GET", f"http://127.0.0.1:{port}/"))
    assert [value for name, value in result.headers if name.lower() == "set-cookie"] == ["a=1", "b=2"]
    assert ("X-Other", "z") in result.headers


async def test_a_body_over_the_cap_is_cut_at_the_cap_and_not_read_further() -> None:
    stopped = anyio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            while True:  # until the client closes the connection
                await response.write(b"y" * 65536)
        finally:
            stopped.set()

    app = web.Application()
    app.router.add_get("/", endless)
    async with serve(app) as port:
        result = await CurlMulti.of_running_loop().perform(
            CurlRequest("GET", f"http://127.0.0.1:{port}/", max_body=100_000)
        )
        # The connection was closed at the cap: the endless writer fails (a hang here is the
        # per-test timeout, not a wall-time assertion).
        await stopped.wait()
    assert result.status == 200 and result.truncated
    assert result.body == b"y" * 100_000
    assert sum(result.phases.values()) == pytest.approx(result.duration, abs=1e-9)


async def test_cancellation_removes_the_transfer_and_leaks_no_socket() -> None:
    entered = anyio.Event()

    async def hang(request: web.Request) -> web.Response:
        entered.set()
        await anyio.sleep_forever()
        raise AssertionError

    app = web.Application()
    app.router.add_get("/", hang)
    multi = CurlMulti.of_running_loop()
    async with serve(app) as port:
        # One request first, so that anything libcurl opens once per multi handle is open already.
        await multi.perform(CurlRequest("GET", f"http://127.0.0.1:{port}/nothing"))
        before = open_fds()
        with anyio.move_on_after(0.5) as scope:
            await multi.perform(CurlRequest("GET", f"http://127.0.0.1:{port}/"))
        assert scope.cancelled_caught and entered.is_set()
        assert multi.transfers == 0 and multi.watched_sockets == 0
        assert open_fds() == before


async def test_tls_verified_against_a_trustme_ca(ca: trustme.CA, ca_file: Path) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf = ca.issue_cert("localhost")
    leaf.configure_cert(context)
    multi = CurlMulti.of_running_loop()
    async with serve(plain_app(), ssl_context=context) as port:
        url = f"https://localhost:{port}/"
        good = await multi.perform(CurlRequest("GET", url, tls=TLSOptions(ca_file=ca_file)))
        with pytest.raises(HttpFailure) as untrusted:
            await multi.perform(CurlRequest("GET", url))
        insecure = await multi.perform(CurlRequest("GET", url, tls=TLSOptions(insecure=True)))
        with pytest.raises(HttpFailure) as wrong_host:
            await multi.perform(
                CurlRequest("GET", f"https://127.0.0.1:{port}/", tls=TLSOptions(ca_file=ca_file))
            )
        sni = await multi.perform(
            CurlRequest(
                "GET", f"https://127.0.0.1:{port}/", tls=TLSOptions(ca_file=ca_file, server_name="localhost")
            )
        )
    assert good.status == 200 and good.phases["tls"] > 0
    assert sum(good.phases.values()) == pytest.approx(good.duration, abs=1e-9)
    # The chain as the server sent it, DER, leaf first (what TLSInfo.sent_chain holds).
    assert good.cert_chain[0] == ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    assert insecure.status == 200 and sni.status == 200
    assert untrusted.value.reason is Reason.TLS and "certificate" in untrusted.value.message
    assert wrong_host.value.reason is Reason.TLS


async def test_connection_refused_is_connect() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(HttpFailure) as failure:
            await CurlMulti.of_running_loop().perform(
                CurlRequest("GET", f"http://127.0.0.1:{port}/?token=s3cret")
            )
    assert failure.value.reason is Reason.CONNECT
    assert "s3cret" not in failure.value.message


def test_libcurl_codes_map_to_the_agents_reasons() -> None:
    assert map_curl_error(6, "Could not resolve host: nowhere.invalid")[0] is Reason.DNS
    assert map_curl_error(7, "Failed to connect")[0] is Reason.CONNECT
    assert map_curl_error(28, "Operation timed out")[0] is Reason.TIMEOUT
    cert = map_curl_error(60, "SSL certificate problem: unable to get local issuer certificate")
    handshake = map_curl_error(35, "OpenSSL SSL_connect: SSL_ERROR_SYSCALL")
    assert (cert[0], handshake[0]) == (Reason.TLS, Reason.TLS)
    assert "certificate" in cert[1] and "handshake" in handshake[1]
    assert map_curl_error(52, "Empty reply from server")[0] is Reason.PROTOCOL
    assert map_curl_error(27, "Out of memory")[0] is Reason.INTERNAL
    reason, message = map_curl_error(3, "URL rejected: http://h/p?token=s3cret")
    assert reason is Reason.PROTOCOL and "s3cret" not in message
    # libcurl's wrapping of OpenSSL's words goes; what was wrong stays.
    assert map_curl_error(60, "SSL certificate problem: certificate has expired", host="h") == (
        Reason.TLS,
        "TLS certificate of h rejected: certificate has expired",
    )
    assert map_curl_error(60, "SSL certificate OpenSSL verify result: self-signed certificate (18)")[1] == (
        "TLS certificate rejected: self-signed certificate"
    )
    # A status line that is not HTTP, and a header over libcurl's limit, are the response's fault.
    assert map_curl_error(1, "Received HTTP/0.9 when not allowed") == (
        Reason.PROTOCOL,
        "malformed HTTP response: no HTTP status line (the server answered something else than HTTP)",
    )
    assert map_curl_error(100, "") == (
        Reason.PROTOCOL,
        "malformed HTTP response: a header larger than libcurl accepts (100 KiB a line, 300 KiB in all)",
    )


async def test_fifty_concurrent_requests_on_one_loop_all_complete() -> None:
    multi = CurlMulti.of_running_loop()
    statuses: list[int] = []

    async with serve(plain_app()) as port:

        async def one() -> None:
            statuses.append((await multi.perform(CurlRequest("GET", f"http://127.0.0.1:{port}/"))).status)

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(one)
    assert statuses == [200] * 50
    assert multi.transfers == 0 and multi.watched_sockets == 0


async def test_transfers_cancelled_among_running_ones_leave_the_others_to_complete() -> None:
    # Finished transfers are collected when libcurl's count of running ones falls below ours:
    # cancelled ones, removed from both, must not hide a finished one or leave one waiting.
    async def hang(request: web.Request) -> web.Response:
        await anyio.sleep_forever()
        raise AssertionError

    app = plain_app()
    app.router.add_get("/hang", hang)
    multi = CurlMulti.of_running_loop()
    statuses: list[int] = []
    async with serve(app) as port:

        async def one(path: str) -> None:
            with anyio.move_on_after(0.3):
                statuses.append(
                    (await multi.perform(CurlRequest("GET", f"http://127.0.0.1:{port}{path}"))).status
                )

        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(one, "/hang" if i % 3 == 0 else "/")
    assert statuses == [200] * 20
    assert multi.transfers == 0 and multi.watched_sockets == 0


@pytest.mark.parametrize("epoll", [True, False], ids=["own epoll set", "the loop's readers"])
async def test_either_way_of_watching_sockets_completes_and_cancels_and_closes_clean(
    epoll: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux's own epoll set of the multi handle, or (elsewhere) a loop reader/writer per socket:
    finished, cancelled and failed transfers alike leave no socket watched, and close() leaves
    no descriptor open."""
    import agent.net.curl

    monkeypatch.setattr(agent.net.curl, "_EPOLL", epoll)

    async def hang(request: web.Request) -> web.Response:
        await anyio.sleep_forever()
        raise AssertionError

    app = plain_app()
    app.router.add_get("/hang", hang)
    outcomes: list[int | str] = []
    async with serve(app) as port:
        gc.collect()  # earlier tests' event loops, whose descriptors would close meanwhile
        before = open_fds()
        multi = CurlMulti(asyncio.get_running_loop())
        assert (multi._epoll is not None) is epoll

        async def one(path: str) -> None:
            with anyio.move_on_after(0.3):
                try:
                    outcomes.append(
                        (await multi.perform(CurlRequest("GET", f"http://127.0.0.1:{path}"))).status
                    )
                except HttpFailure as failure:
                    outcomes.append(failure.reason.value)

        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(one, f"{port}/hang" if i % 3 == 0 else f"{port}/" if i % 3 == 1 else "1/")
        assert multi.transfers == 0 and multi.watched_sockets == 0
        multi.close()
        multi.close()  # again, as harmless as it was before the epoll set (a caller's clean-up twice)
        await anyio.sleep(0.1)  # the server's ends of the cancelled requests close
        assert open_fds() == before
    assert sorted(outcomes, key=str) == [200] * 10 + ["connect"] * 10


async def aiohttp_phases(url: str) -> tuple[dict[str, float], float, bytes]:
    """One fresh-connection GET through aiohttp, cut into the five phases by ``TraceConfig`` hooks,
    as the agent's aiohttp client did: (phases, duration, body)."""
    import time

    import aiohttp

    marks: dict[str, float] = {}

    def mark(name: str) -> Any:
        async def hook(*_: Any) -> None:
            marks.setdefault(name, time.perf_counter())

        return hook

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(mark("start"))
    trace.on_dns_resolvehost_end.append(mark("resolved"))
    trace.on_connection_create_start.append(mark("connect started"))
    trace.on_connection_create_end.append(mark("connected"))
    trace.on_request_end.append(mark("headers"))
    connector = aiohttp.TCPConnector(force_close=True, use_dns_cache=False)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as session:
        started = time.perf_counter()
        async with session.get(url) as response:
            body = await response.read()
        end = time.perf_counter()
    # No DNS for an IP literal: resolve ends where the connector starts connecting.
    resolved = marks.get("resolved", marks["connect started"])
    # aiohttp has no signal between TCP up and the TLS handshake: for http:// tls is zero.
    cuts = [marks["start"], resolved, marks["connected"], marks["connected"], marks["headers"], end]
    phases = {name: max(0.0, cuts[i + 1] - cuts[i]) for i, name in enumerate(PHASES)}
    return phases, end - started, body


async def test_the_same_request_through_aiohttp_and_libcurl_has_the_same_phases() -> None:
    """Both definitions give the same five phases of one fresh-connection hop, consecutive and in
    the same order; the agent's client reports libcurl's. Where the definitions differ:

    - libcurl times in C at the socket, from the start of the transfer: ``resolve`` ends when its
      resolver answered (for an IP literal, almost nothing), ``connect`` when the TCP connect
      completed, ``tls`` when the handshake did, ``processing`` at the first byte of the response.
    - aiohttp's marks (taken here as the agent's old client took them, by ``TraceConfig`` hooks)
      are Python callbacks between steps of its connector: the Python between those events is
      charged to the phase that contains it (~80 µs of the connector's set-up went to ``resolve``
      for an IP literal), and without a private hook it cannot tell the TCP connect from the TLS
      handshake at all.
    - libcurl's ``processing`` ends at the first byte; aiohttp's when its parser has the whole head.
      libcurl's ``transfer`` ends at its last read of the body; aiohttp's when the caller has read
      the body through the stream reader.
    - libcurl's phases add up to its ``TOTAL_TIME`` exactly; aiohttp's duration also holds the
      Python around the hop that no phase holds, so its phases add up to at most the duration.

    No wall time is asserted: only the shape of each measurement.
    """
    async with serve(plain_app()) as port:
        url = f"http://127.0.0.1:{port}/"
        aio_phases, aio_duration, aio_body = await aiohttp_phases(url)
        through_curl = await CurlMulti.of_running_loop().perform(CurlRequest("GET", url))
    assert aio_body == through_curl.body == b"hello"
    for phases in (aio_phases, through_curl.phases):
        assert list(phases) == PHASES
        assert phases["tls"] == 0
        assert all(value >= 0 for value in phases.values())
    assert sum(through_curl.phases.values()) == pytest.approx(through_curl.duration, abs=1e-9)
    assert sum(aio_phases.values()) <= aio_duration


async def test_client_certificate_and_minimum_version(ca: trustme.CA, ca_file: Path, tmp_path: Path) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    client = ca.issue_cert("client@example.test")
    cert_file, key_file = tmp_path / "client.pem", tmp_path / "client.key"
    client.cert_chain_pems[0].write_to_path(str(cert_file))
    client.private_key_pem.write_to_path(str(key_file))
    multi = CurlMulti.of_running_loop()
    async with serve(plain_app(), ssl_context=context) as port:
        url = f"https://localhost:{port}/"
        with_cert = await multi.perform(
            CurlRequest("GET", url, tls=TLSOptions(ca_file=ca_file, cert_file=cert_file, key_file=key_file))
        )
        with pytest.raises(HttpFailure) as without_cert:
            await multi.perform(CurlRequest("GET", url, tls=TLSOptions(ca_file=ca_file)))
        with pytest.raises(HttpFailure) as too_old:
            await multi.perform(
                CurlRequest(
                    "GET",
                    url,
                    tls=TLSOptions(
                        ca_file=ca_file, cert_file=cert_file, key_file=key_file, min_version="1.3"
                    ),
                )
            )
    assert with_cert.status == 200
    assert without_cert.value.reason is Reason.TLS, without_cert.value.message
    assert too_old.value.reason is Reason.TLS, too_old.value.message
    assert "handshake" in too_old.value.message


async def test_a_transfer_whose_figures_cannot_be_read_fails_its_request_and_frees_its_handle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reading a finished transfer's figures is the client's own code: when it raises, the request
    fails with that error at once (no wait for a timeout), the handle leaves the multi handle, and
    the next request (which reuses the handle) is served."""
    import agent.net.curl as curl_module

    original = curl_module._Transfer.read_info
    calls = 0

    def broken_once(self: Any, curl: Any, tls_used: bool) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("a certificate that will not decode")
        original(self, curl, tls_used)

    monkeypatch.setattr(curl_module._Transfer, "read_info", broken_once)
    multi = CurlMulti(asyncio.get_running_loop())
    try:
        async with serve(plain_app()) as port:
            with anyio.fail_after(10), pytest.raises(ValueError, match="will not decode"):
                await multi.perform(CurlRequest("GET", f"http://127.0.0.1:{port}/"))
            assert multi.transfers == 0
            result = await multi.perform(CurlRequest("GET", f"http://127.0.0.1:{port}/"))
        assert (result.status, result.body) == (200, b"hello")
    finally:
        multi.close()
