"""What the HTTP client gained by running on libcurl, against real servers on loopback: content
encodings (brotli), HTTP/2 over TLS (ALPN, an ``h2`` server here), proxies (a small forward proxy
with CONNECT here), the handshake's version, cipher and verified chain, TLS 1.0 when asked for,
``valid_http_versions``, and the test resolver's map of names."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import h2.config
import h2.connection
import h2.events
import pytest
import trustme
from aiohttp import web
from opentelemetry.trace import SpanKind

from agent.net.http import HttpClientFactory
from agent.sdk import ProbeContext, Reason
from agent.sdk.http import HttpFailure, TLSOptions
from agent.sdk.testing import ProbeTester, RecordingTracer
from plugins.http import HttpProbe

from .helpers import serve
from .test_http_probe import http_check, run_checks

pytestmark = pytest.mark.anyio


def der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode())


@contextlib.asynccontextmanager
async def probe_context(resolve: dict[str, str] | None = None) -> AsyncIterator[ProbeContext]:
    """A run's context, as the agent builds it, whose HTTP client answers names from ``resolve``."""
    tester = ProbeTester(HttpProbe)
    tester.http = HttpClientFactory(user_agent="Vantage/test", resolve=resolve)
    check, _, config = tester.load({"name": "c", "target": "http://127.0.0.1/", "interval": "10s"})
    try:
        yield tester.context(check, config, RecordingTracer(config.redactor))
    finally:
        await tester.http.aclose()


def text_app(**responses: tuple[bytes, dict[str, str]]) -> web.Application:
    app = web.Application()
    for name, (body, headers) in responses.items():

        async def handler(
            _: web.Request, body: bytes = body, headers: dict[str, str] = headers
        ) -> web.Response:
            return web.Response(body=body, headers=headers)

        app.router.add_get(f"/{name}", handler)
    return app


# ---------------------------------------------------------------- content encodings


def brotli_stored(data: bytes) -> bytes:
    """A brotli stream (RFC 7932) of one uncompressed meta-block, written by hand so that the
    decoder is not checked against its own encoder: as valid a ``br`` body as any a server sends."""
    assert 0 < len(data) <= 1 << 16
    bits = [0]  # WBITS: a 16 KiB window
    bits += [0]  # ISLAST: no (an uncompressed meta-block is never the last)
    bits += [0, 0]  # MNIBBLES: 4
    bits += [(len(data) - 1) >> i & 1 for i in range(16)]  # MLEN - 1
    bits += [1]  # ISUNCOMPRESSED
    bits += [0] * (-len(bits) % 8)
    head = bytes(sum(bit << i for i, bit in enumerate(bits[n : n + 8])) for n in range(0, len(bits), 8))
    return head + data + bytes([0b11])  # ISLAST, ISLASTEMPTY


async def test_a_brotli_body_is_decoded() -> None:
    text = b'{"encoding": "br", "decoded": true}'
    app = text_app(br=(brotli_stored(text), {"Content-Encoding": "br", "Content-Type": "application/json"}))
    async with serve(app) as port, probe_context() as ctx, ctx.http() as client:
        exchange = await client.request("GET", f"http://127.0.0.1:{port}/br")
    assert exchange.status == 200
    assert exchange.body == text
    assert exchange.headers["Content-Encoding"] == "br"


async def test_the_request_asks_for_no_encoding_unless_it_says_so() -> None:
    """As blackbox_exporter's client: a server's answer to a plain request is what is measured."""
    seen: list[str | None] = []

    async def accept(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Accept-Encoding"))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", accept)
    async with serve(app) as port, probe_context() as ctx, ctx.http() as client:
        await client.request("GET", f"http://127.0.0.1:{port}/")
        await client.request("GET", f"http://127.0.0.1:{port}/", headers={"Accept-Encoding": "zstd"})
    assert seen == [None, "zstd"]


async def test_repeated_headers_are_kept_and_links_are_parsed() -> None:
    async def many(_: web.Request) -> web.Response:
        response = web.Response(text="ok")
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        response.headers.add("Link", '</v2/docs>; rel="deprecation alternate"')
        response.headers.add("Link", '<https://vendor.example/sunset>; rel="sunset", </next>; rel=next')
        return response

    app = web.Application()
    app.router.add_get("/v1/items", many)
    async with serve(app) as port, probe_context() as ctx, ctx.http() as client:
        exchange = await client.request("GET", f"http://127.0.0.1:{port}/v1/items")
    assert exchange.headers.getall("Set-Cookie") == ["a=1", "b=2"]
    base = f"http://127.0.0.1:{port}"
    assert exchange.links == {
        "deprecation": f"{base}/v2/docs",
        "alternate": f"{base}/v2/docs",
        "sunset": "https://vendor.example/sunset",
        "next": f"{base}/next",
    }
    assert exchange.http_version == "1.1"


# ---------------------------------------------------------------- HTTP/2 (ALPN)


class _H2Server(asyncio.Protocol):
    """Answers every request on an HTTP/2 connection with 200 and the path it asked for."""

    def __init__(self) -> None:
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                path = dict(event.headers)[b":path"]
                body = b"over h2: " + path
                self.conn.send_headers(
                    event.stream_id,
                    [
                        (":status", "200"),
                        ("content-length", str(len(body))),
                        ("x-seen", "one"),
                        ("x-seen", "two"),
                    ],
                )
                self.conn.send_data(event.stream_id, body, end_stream=True)
        self.transport.write(self.conn.data_to_send())


@contextlib.asynccontextmanager
async def h2_server(ca: trustme.CA) -> AsyncIterator[int]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("vendor.test").configure_cert(context)
    context.set_alpn_protocols(["h2"])
    server = await asyncio.get_running_loop().create_server(_H2Server, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_http2_over_tls_is_negotiated_by_alpn(ca: trustme.CA, ca_file: Path) -> None:
    names = {"vendor.test": "127.0.0.1"}
    async with h2_server(ca) as port, probe_context(names) as ctx:
        async with ctx.http(TLSOptions(ca_file=ca_file)) as client:
            exchange = await client.request("GET", f"https://vendor.test:{port}/h2?x=1")
    assert exchange.http_version == "2"
    assert exchange.body == b"over h2: /h2?x=1"
    assert exchange.headers.getall("X-Seen") == ["one", "two"]
    assert exchange.tls is not None and exchange.tls.version == "TLS 1.3"
    assert sum(exchange.phases.values()) > 0


async def test_valid_http_versions_fails_a_response_on_another_version(ca: trustme.CA, ca_file: Path) -> None:
    async with h2_server(ca) as port:
        target = f"https://vendor.test:{port}/"
        tls = {"ca_file": str(ca_file)}
        results, spans = await run_checks(
            [
                http_check("h2-ok", target, tls=tls, valid_http_versions=["HTTP/1.1", "HTTP/2.0"]),
                http_check("h1-only", target, tls=tls, valid_http_versions=["HTTP/1.1"]),
            ],
            names={"vendor.test": "127.0.0.1"},
        )
    assert results["h2-ok"].success, results["h2-ok"].message
    assert results["h2-ok"].values["probe.http.version"] == 2.0
    assert results["h1-only"].reason is Reason.ASSERTION
    assert results["h1-only"].message == (
        "the response came over HTTP/2.0, not one of valid_http_versions (HTTP/1.1)"
    )
    client = next(s for s in spans if s.kind is SpanKind.CLIENT)
    assert client.attributes is not None and client.attributes["network.protocol.version"] == "2"


def test_an_unknown_http_version_is_a_configuration_error() -> None:
    from agent.errors import ConfigError

    from .helpers import config_from

    with pytest.raises(ConfigError, match=r"unknown HTTP version 'HTTP/1\.2'"):
        config_from([http_check("c", "http://127.0.0.1/", valid_http_versions=["HTTP/1.2"])])


# ---------------------------------------------------------------- proxies


@dataclass
class Proxy:
    """What a forward proxy saw: each request line and its ``Proxy-Authorization``."""

    port: int = 0
    seen: list[tuple[str, str]] = field(default_factory=list)
    credentials: str | None = None
    """``user:password`` the proxy asks for (407 without it)."""


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.close()


@contextlib.asynccontextmanager
async def forward_proxy(credentials: str | None = None) -> AsyncIterator[Proxy]:
    """An HTTP forward proxy on loopback: absolute-form requests are passed on, ``CONNECT`` opens
    a tunnel; with ``credentials``, anything without the right ``Proxy-Authorization`` gets 407."""
    proxy = Proxy(credentials=credentials)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (ln.partition(":") for ln in lines[1:] if ln)
        }
        authorization = headers.get("proxy-authorization", "")
        proxy.seen.append((f"{method} {target}", authorization))
        if credentials and authorization != "Basic " + base64.b64encode(credentials.encode()).decode():
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            url = target.split("://", 1)[1]
            authority, _, path = url.partition("/")
            host, _, port = authority.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            kept = [ln for ln in lines[1:] if ln and not ln.lower().startswith(("proxy-", "connection:"))]
            up_writer.write(
                f"{method} /{path} HTTP/1.1\r\n".encode()
                + "\r\n".join([*kept, "Connection: close", "", ""]).encode("latin-1")
            )
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        await server.wait_closed()


PROXY_USER, PROXY_PASSWORD = "probe", "pr0xy-pa55word-Q9"


async def test_http_and_https_targets_go_through_the_proxy(ca: trustme.CA, ca_file: Path) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    app = text_app(hello=(b"hello", {}))
    async with (
        serve(app) as plain,
        serve(text_app(hello=(b"hello", {})), ssl_context=context) as secure,
        forward_proxy(f"{PROXY_USER}:{PROXY_PASSWORD}") as proxy,
    ):
        proxy_url = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{proxy.port}"
        results, spans = await run_checks(
            [
                http_check("plain", f"http://127.0.0.1:{plain}/hello", proxy_url=proxy_url),
                http_check(
                    "secure",
                    f"https://127.0.0.1:{secure}/hello",
                    proxy_url=proxy_url,
                    tls={"ca_file": str(ca_file)},
                ),
                http_check(
                    "wrong-password",
                    f"https://127.0.0.1:{secure}/hello",
                    proxy_url=f"http://{PROXY_USER}:not-{PROXY_PASSWORD}@127.0.0.1:{proxy.port}",
                    tls={"ca_file": str(ca_file)},
                ),
            ]
        )
    assert results["plain"].success, results["plain"].message
    assert results["secure"].success, results["secure"].message
    assert results["secure"].values["probe.http.ssl"] == 1
    basic = "Basic " + base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()
    assert (f"GET http://127.0.0.1:{plain}/hello", basic) in proxy.seen
    assert (f"CONNECT 127.0.0.1:{secure}", basic) in proxy.seen
    # A proxy that refuses the tunnel: no response from the target, the proxy's answer said why.
    wrong = results["wrong-password"]
    assert wrong.reason is Reason.CONNECT and "407" in wrong.message, wrong.message
    # The proxy's credentials (written into the check, not a ${...} secret) never leave.
    written = [str(r) for r in results.values()] + [str(s.attributes) + str(s.status) for s in spans]
    for text in written:
        assert PROXY_PASSWORD not in text
        assert base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode() not in text


def test_a_proxy_url_that_is_not_a_proxy_address_is_refused_without_quoting_it() -> None:
    from agent.errors import ConfigError

    from .helpers import config_from

    for bad in (
        f"socks5://u:{PROXY_PASSWORD}@127.0.0.1:1080",
        f"http://u:{PROXY_PASSWORD}@127.0.0.1:3128/path",
    ):
        with pytest.raises(ConfigError) as error:
            config_from([http_check("c", "http://127.0.0.1/", proxy_url=bad)])
        assert PROXY_PASSWORD not in str(error.value)


# ---------------------------------------------------------------- TLS


async def test_tls_version_cipher_and_the_verified_chain(ca: trustme.CA, ca_file: Path) -> None:
    intermediate = ca.create_child_ca()
    leaf = intermediate.issue_cert("vendor.test")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(context)  # sends the leaf and the intermediate
    names = {"vendor.test": "127.0.0.1"}
    url_of = "https://vendor.test:{}/hello".format
    async with (
        serve(text_app(hello=(b"hello", {})), ssl_context=context) as port,
        probe_context(names) as ctx,
    ):
        async with ctx.http(TLSOptions(ca_file=ca_file)) as client:
            verified = await client.request("GET", url_of(port))
        async with ctx.http(TLSOptions(insecure=True)) as client:
            insecure = await client.request("GET", url_of(port))
    sent = tuple(der(pem.bytes()) for pem in leaf.cert_chain_pems)
    assert verified.tls is not None and insecure.tls is not None
    assert verified.tls.version in ("TLS 1.2", "TLS 1.3") and verified.tls.cipher
    assert verified.tls.sent_chain == sent
    assert verified.tls.verified_chain == (*sent, der(ca.cert_pem.bytes()))
    assert verified.tls.last_chain_expiry is not None
    # Nothing verified: no verified chain and no chain expiry, but the sent chain is still read.
    assert insecure.tls.sent_chain == sent
    assert insecure.tls.verified_chain == ()
    assert insecure.tls.last_chain_expiry is None and insecure.tls.earliest_expiry is not None


async def test_a_reused_connection_reports_the_handshake_that_opened_it(
    ca: trustme.CA, ca_file: Path
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    async with serve(text_app(hello=(b"hello", {})), ssl_context=context) as port, probe_context() as ctx:
        exchanges = []
        for _ in range(2):
            async with ctx.http(TLSOptions(ca_file=ca_file), fresh=False) as client:
                exchanges.append(await client.request("GET", f"https://127.0.0.1:{port}/hello"))
    first, second = exchanges
    assert first.phases["tls"] > 0 and second.phases["tls"] == 0  # no second handshake
    assert first.tls is not None and second.tls == first.tls


def old_tls_server_context(ca: trustme.CA) -> ssl.SSLContext | None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():  # what the test is about: an old protocol, on purpose
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = ssl.TLSVersion.TLSv1
    except (ValueError, ssl.SSLError):
        return None
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


async def test_minimum_version_1_0_reaches_a_tls_1_0_server(ca: trustme.CA, ca_file: Path) -> None:
    context = old_tls_server_context(ca)
    if context is None:
        pytest.skip("this Python's OpenSSL cannot serve TLS 1.0")
    async with serve(text_app(hello=(b"hello", {})), ssl_context=context) as port, probe_context() as ctx:
        url = f"https://127.0.0.1:{port}/hello"
        async with ctx.http(TLSOptions(ca_file=ca_file, min_version="1.0")) as client:
            try:
                old = await client.request("GET", url)
            except HttpFailure as failure:
                if "unsupported protocol" in failure.message or "no protocols available" in failure.message:
                    pytest.skip(f"this machine's OpenSSL will not speak TLS 1.0: {failure.message}")
                raise
        async with ctx.http(TLSOptions(ca_file=ca_file)) as client:
            with pytest.raises(HttpFailure) as refused:
                await client.request("GET", url)
    assert old.status == 200 and old.tls is not None and old.tls.version == "TLS 1.0"
    assert refused.value.reason is Reason.TLS


# ---------------------------------------------------------------- the test resolver


async def test_names_come_from_the_map_and_others_fail_as_dns_without_a_query() -> None:
    async with (
        serve(text_app(hello=(b"hello", {}))) as port,
        probe_context({"vendor.test": "127.0.0.1"}) as ctx,
    ):
        async with ctx.http() as client:
            mapped = await client.request("GET", f"http://vendor.test:{port}/hello")
            literal = await client.request("GET", f"http://127.0.0.1:{port}/hello")
            with pytest.raises(HttpFailure) as unknown:
                await client.request("GET", f"http://elsewhere.test:{port}/hello")
    assert mapped.body == literal.body == b"hello"
    assert unknown.value.reason is Reason.DNS
    assert unknown.value.message == "DNS lookup of elsewhere.test failed: Name or service not known"
    assert not any(unknown.value.phases.values())  # nothing was timed: nothing was sent
    (record,) = [r for r in ctx.requests if r.host == "elsewhere.test"]
    assert record.error_type == "dns" and record.status is None


async def test_a_header_with_a_line_break_is_refused_not_sent() -> None:
    seen: list[Any] = []

    async def hello(request: web.Request) -> web.Response:
        seen.append(request)
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    async with serve(app) as port, probe_context() as ctx, ctx.http() as client:
        with pytest.raises(HttpFailure) as failure:
            await client.request("GET", f"http://127.0.0.1:{port}/", headers={"X-A": "1\r\nX-Injected: 2"})
    assert failure.value.reason is Reason.PROTOCOL and not seen


async def test_ip_family_limits_the_addresses_used() -> None:
    """``ipv6`` refuses the IPv4 address the name has: no address of the family, a DNS failure."""
    async with serve(text_app(hello=(b"hello", {}))) as port, probe_context({"v4.test": "127.0.0.1"}) as ctx:
        async with ctx.http(ip_family="ipv4") as client:
            v4 = await client.request("GET", f"http://v4.test:{port}/hello")
        async with ctx.http(ip_family="ipv6") as client:
            with pytest.raises(HttpFailure) as v6:
                await client.request("GET", f"http://v4.test:{port}/hello")
    assert v4.body == b"hello"
    assert v6.value.reason is Reason.DNS


async def test_proxy_credentials_with_reserved_and_non_ascii_characters() -> None:
    """Written raw or percent-encoded in the URL, they reach the proxy as the password they are."""
    password = "pä55 w@rd/é"
    async with serve(text_app(hello=(b"hello", {}))) as port, forward_proxy(f"probe:{password}") as proxy:
        async with probe_context() as ctx, ctx.http() as client:
            encoded = f"http://probe:{quote(password, safe='')}@127.0.0.1:{proxy.port}"
            exchange = await client.request("GET", f"http://127.0.0.1:{port}/hello", proxy_url=encoded)
            assert password not in ctx.redact(f"sent {password}")
    assert exchange.status == 200 and exchange.body == b"hello"


async def test_fresh_connections_do_a_full_handshake_every_time(ca: trustme.CA, ca_file: Path) -> None:
    """A fresh connection resumes no TLS session: every run pays (and times) a full handshake and
    sees the certificates, as blackbox_exporter's new transport per probe does. A resumed session
    would hide the chain (the server sends no certificate) and flatter the ``tls`` phase."""
    leaf = ca.issue_cert("vendor.test")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(context)
    names = {"vendor.test": "127.0.0.1"}
    async with (
        serve(text_app(hello=(b"hello", {})), ssl_context=context) as port,
        probe_context(names) as ctx,
    ):
        exchanges = []
        for _ in range(3):
            async with ctx.http(TLSOptions(ca_file=ca_file)) as client:
                exchanges.append(await client.request("GET", f"https://vendor.test:{port}/hello"))
    sent = tuple(der(pem.bytes()) for pem in leaf.cert_chain_pems)
    assert [e.tls.sent_chain if e.tls else None for e in exchanges] == [sent] * 3
    assert all(e.phases["tls"] > 0 for e in exchanges)
