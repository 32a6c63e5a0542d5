"""The local targets both prober sets probe: one of each, for the whole session, on 127.0.0.1.

They run on an event loop of their own in a thread (aiohttp, asyncio line servers, a DNS server on
UDP and TCP) and in gRPC's own threads, so that blackbox_exporter (another process) and the agent
(the test's event loop) reach the same servers. ``Targets.values`` names what the case table's
templates refer to (``{http}``, ``{ca_file}``, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gzip
import socket
import ssl
import struct
import threading
import zlib
from collections.abc import Awaitable, Callable
from concurrent import futures
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import grpc
import trustme
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

BODY = b'{"status": "ok", "service": "payments", "version": "2.4.1"}\n'
LAST_MODIFIED = "Wed, 21 Oct 2026 07:28:00 GMT"
LAST_MODIFIED_EPOCH = 1792567680.0


def brotli_stored(data: bytes) -> bytes:
    """``data`` as a Brotli stream of one uncompressed meta-block (RFC 7932 §9.2): a valid stream
    that any decoder reads, made without an encoder."""
    assert 0 < len(data) <= 1 << 16
    header = (1 << 20) | ((len(data) - 1) << 4)  # WBITS=16, ISLAST=0, MNIBBLES=4, MLEN-1, uncompressed
    return header.to_bytes(3, "little") + data + b"\x03"  # then ISLAST, ISLASTEMPTY


def zstd_raw(data: bytes) -> bytes:
    """``data`` as a Zstandard frame of one raw block (RFC 8878): single segment, 1-byte size."""
    assert len(data) < 256
    block = (1 | (len(data) << 3)).to_bytes(3, "little")  # last block, raw
    return b"\x28\xb5\x2f\xfd" + b"\x20" + bytes([len(data)]) + block + data


def deflate_raw(data: bytes) -> bytes:
    """Raw DEFLATE (RFC 1951) without zlib's wrapper, as many servers send ``deflate``."""
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli_stored,
    "zstd": zstd_raw,
}


def http_app() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="application/json")

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        headers = {"Retry-After": "30"} if code in (429, 503) else {}
        return web.Response(status=code, body=b"status\n", headers=headers)

    async def encoded(request: web.Request) -> web.Response:
        coding = request.match_info["coding"]
        encode = deflate_raw if coding == "deflate-raw" else ENCODERS[coding]
        coding = coding.removesuffix("-raw")
        return web.Response(
            body=encode(BODY),
            headers={
                "Content-Encoding": coding,
                "Content-Type": "application/json",
                "Vary": "Accept-Encoding",
            },
        )

    async def negotiated(request: web.Request) -> web.Response:
        # Encodes as the client asks (its first supported encoding), as most vendors do.
        for coding in (
            c.strip().split(";")[0] for c in request.headers.get("Accept-Encoding", "").split(",")
        ):
            if coding in ENCODERS:
                return web.Response(body=ENCODERS[coding](BODY), headers={"Content-Encoding": coding})
        return web.Response(body=BODY)

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for n in range(5):
            await response.write(f"chunk {n} of the stream\n".encode())
        await response.write_eof()
        return response

    async def gzip_chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Encoding": "gzip"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        data = gzip.compress(BODY * 20)
        for start in range(0, len(data), 100):
            await response.write(data[start : start + 100])
        await response.write_eof()
        return response

    async def redirect(request: web.Request) -> web.Response:
        left = int(request.match_info["n"])
        location = f"/redirect/{left - 1}" if left > 1 else "/ok"
        raise web.HTTPFound(location)

    async def redirect_to(request: web.Request) -> web.Response:
        code = int(request.query.get("code", "302"))
        return web.Response(status=code, headers={"Location": request.query.get("to", "/ok")})

    async def login(request: web.Request) -> web.Response:
        response = web.Response(status=302, headers={"Location": "/session"})
        response.set_cookie("session", "s-1234", path="/")
        return response

    async def session(request: web.Request) -> web.Response:
        if request.cookies.get("session") != "s-1234":
            return web.Response(status=401, body=b"no session\n")
        return web.Response(body=b"welcome back\n")

    async def cookies(request: web.Request) -> web.Response:
        response = web.Response(body=b"two cookies\n")
        response.set_cookie("first", "one")
        response.set_cookie("tracking", "abc123; evil")
        response.headers.add("X-Trace", "a")
        response.headers.add("X-Trace", "b-second")
        return response

    async def headers(request: web.Request) -> web.Response:
        return web.Response(
            body=BODY,
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "Cache-Control": "no-store",
                "Last-Modified": LAST_MODIFIED,
                "Strict-Transport-Security": "max-age=63072000",
            },
        )

    async def size(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * int(request.match_info["n"]))

    async def big(request: web.Request) -> web.Response:
        # Past the agent's default max_body (1 MiB), with what a regex looks for at the end.
        return web.Response(body=b"x" * (2 << 20) + b"\nEND-OF-EXPORT\n")

    async def lines(request: web.Request) -> web.Response:
        return web.Response(body=b"".join(f"line {n}: ok\n".encode() for n in range(5)))

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def method(request: web.Request) -> web.Response:
        body = await request.read()
        if request.method != "POST" or body != b'{"ping": true}':
            return web.Response(status=405, body=b"POST a ping\n")
        return web.Response(status=201, body=b'{"pong": true}\n')

    async def auth(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer t0ken":
            return web.Response(status=401, headers={"WWW-Authenticate": 'Bearer realm="api"'})
        return web.Response(body=BODY)

    async def basic(request: web.Request) -> web.Response:
        # "vendor:hunter2"
        if request.headers.get("Authorization") != "Basic dmVuZG9yOmh1bnRlcjI=":
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="api"'})
        return web.Response(body=BODY)

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response()

    async def via(request: web.Request) -> web.Response:
        if request.headers.get("X-Via-Proxy") != "1":
            return web.Response(status=403, body=b"through the proxy only\n")
        return web.Response(body=BODY)

    async def host(request: web.Request) -> web.Response:
        if request.headers.get("Host", "").split(":")[0] != "api.vendor.test":
            return web.Response(status=421, body=b"misdirected\n")
        return web.Response(body=BODY)

    async def html(request: web.Request) -> web.Response:
        return web.Response(
            body=b"<html><title>Maintenance</title><body>We are down for maintenance</body></html>\n",
            content_type="text/html",
        )

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_route("*", "/method", method)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/encoded/{coding}", encoded)
    app.router.add_get("/negotiated", negotiated)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/gzip-chunked", gzip_chunked)
    app.router.add_get("/redirect/{n}", redirect)
    app.router.add_route("*", "/redirect-to", redirect_to)
    app.router.add_get("/big", big)
    app.router.add_get("/lines", lines)
    app.router.add_get("/login", login)
    app.router.add_get("/session", session)
    app.router.add_get("/cookies", cookies)
    app.router.add_get("/headers", headers)
    app.router.add_get("/size/{n}", size)
    app.router.add_get("/empty", empty)
    app.router.add_get("/auth", auth)
    app.router.add_get("/basic", basic)
    app.router.add_get("/hang", hang)
    app.router.add_get("/html", html)
    app.router.add_get("/via", via)
    app.router.add_get("/host", host)
    return app


# ---------------------------------------------------------------- line servers

SMTP_EHLO = b"250-smtp.test greets you\r\n250-SIZE 35882577\r\n250-8BITMIME\r\n250-STARTTLS\r\n250 HELP\r\n"


async def smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tls: ssl.SSLContext) -> None:
    """An SMTP server: a multi-line banner, multi-line EHLO, STARTTLS, QUIT."""
    writer.write(b"220-smtp.test ESMTP ready\r\n220-no UCE\r\n220 smtp.test ESMTP\r\n")
    await writer.drain()
    while line := await reader.readline():
        verb = line.strip().upper()
        if verb.startswith(b"EHLO") or verb.startswith(b"HELO"):
            writer.write(SMTP_EHLO)
        elif verb == b"STARTTLS":
            writer.write(b"220 2.0.0 Ready to start TLS\r\n")
            await writer.drain()
            await writer.start_tls(tls)
        elif verb == b"QUIT":
            writer.write(b"221 2.0.0 bye\r\n")
            await writer.drain()
            return
        else:
            writer.write(b"500 unknown command\r\n")
        await writer.drain()


async def irc(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """IRC-like: notices come first, then the numeric the client waits for; PING → PONG with its token."""
    writer.write(b":irc.test NOTICE * :*** Looking up your hostname\r\n")
    writer.write(b":irc.test NOTICE * :*** Found your hostname\r\n")
    await writer.drain()
    while line := await reader.readline():
        if line.startswith(b"NICK"):
            writer.write(b":irc.test 001 prober :Welcome to the test network\r\n")
            writer.write(b"PING :tok-8842\r\n")
        elif line.startswith(b"PONG :tok-8842"):
            writer.write(b":irc.test 376 prober :End of MOTD\r\n")
        elif line.startswith(b"QUIT"):
            return
        await writer.drain()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()


async def redis(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        if line.strip().upper() == b"PING":
            writer.write(b"+PONG\r\n")
        elif line.strip().upper().startswith(b"INFO"):
            writer.write(b"$40\r\n# Server\r\nredis_version:7.2.4\r\nrole:master\r\n\r\n")
        await writer.drain()


async def banner_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"SSH-2.0-OpenSSH_9.6p1 Debian-4\r\n")
    await writer.drain()
    await reader.read(1024)


async def rude(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Refuses service and ends its side at once: a clean end of stream for the client (the server
    reads what the client still sends until it closes, so that no reset races the client's read)."""
    writer.write(b"554 5.7.1 no service for you\r\n")
    writer.write_eof()
    while await reader.read(1024):
        pass


async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A forward proxy: absolute-form requests (plain HTTP, marked with ``X-Via-Proxy``) and
    ``CONNECT`` tunnels. Every name it is asked for is 127.0.0.1: it never leaves loopback."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    line, *headers = head.split("\r\n")
    method, target, version = line.split(" ")
    if method == "CONNECT":
        upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", int(target.rsplit(":", 1)[1]))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    else:
        url = urlsplit(target)
        upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", url.port or 80)
        kept = [h for h in headers if h and not h.lower().startswith(("proxy-", "connection:"))]
        path = url.path + (f"?{url.query}" if url.query else "")
        request = [f"{method} {path} {version}", *kept, "X-Via-Proxy: 1", "Connection: close", "", ""]
        upstream.write("\r\n".join(request).encode("latin-1"))

    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if sink.can_write_eof():
                with contextlib.suppress(OSError):
                    sink.write_eof()

    try:
        await asyncio.gather(pipe(reader, upstream), pipe(upstream_reader, writer))
    finally:
        upstream.close()


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1024)


# ---------------------------------------------------------------- DNS

Zone = dict[tuple[str, str], list[str]]

ZONE: Zone = {
    ("vendor.test.", "A"): ["127.0.0.1", "127.0.0.2"],
    ("vendor.test.", "AAAA"): ["::1"],
    ("vendor.test.", "MX"): ["10 mx1.vendor.test.", "20 mx2.vendor.test."],
    ("vendor.test.", "TXT"): ['"v=spf1 include:_spf.vendor.test ~all"', '"google-site-verification=abc"'],
    ("vendor.test.", "NS"): ["ns1.vendor.test.", "ns2.vendor.test."],
    ("vendor.test.", "SOA"): ["ns1.vendor.test. hostmaster.vendor.test. 2026112901 3600 600 86400 60"],
    ("vendor.test.", "CAA"): ['0 issue "letsencrypt.org"'],
    ("www.vendor.test.", "CNAME"): ["vendor.test."],
    ("_sip._tcp.vendor.test.", "SRV"): ["10 60 5060 sip.vendor.test."],
    ("big.vendor.test.", "TXT"): [f'"{"x" * 200} {n}"' for n in range(10)],
    ("version.bind.", "TXT/CH"): ['"conformance-dns 1.0"'],
}
AUTHORITY = ["ns1.vendor.test.", "ns2.vendor.test."]
GLUE = {"ns1.vendor.test.": "127.0.0.53", "ns2.vendor.test.": "127.0.0.54"}
SOA = "ns1.vendor.test. hostmaster.vendor.test. 2026112901 3600 600 86400 60"


def dns_answer(wire: bytes, over_tcp: bool) -> bytes:
    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    question = query.question[0]
    name = question.name.to_text().lower()
    kind = dns.rdatatype.to_text(question.rdtype)
    if question.rdclass == dns.rdataclass.CH:
        kind += "/CH"
    if name.startswith("servfail."):
        response.set_rcode(dns.rcode.SERVFAIL)
        return response.to_wire()
    if name.startswith("refused."):
        response.set_rcode(dns.rcode.REFUSED)
        return response.to_wire()
    records = ZONE.get((name, kind))
    alias = ZONE.get((name, "CNAME"))
    if records is None and alias and kind != "CNAME":
        # A CNAME to a name of the zone: the alias, then the target's records (RFC 1034 §4.3.2).
        response.answer.append(dns.rrset.from_text_list(question.name, 300, "IN", "CNAME", alias))
        target_records = ZONE.get((alias[0], kind), [])
        if target_records:
            response.answer.append(dns.rrset.from_text_list(alias[0], 300, "IN", kind, target_records))
        return response.to_wire()
    owner_known = any(owner == name for owner, _ in ZONE)
    if records is None:
        if not owner_known:
            response.set_rcode(dns.rcode.NXDOMAIN)
        # NXDOMAIN and NODATA both carry the zone's SOA in the authority section (RFC 2308).
        response.authority.append(dns.rrset.from_text_list("vendor.test.", 60, "IN", "SOA", [SOA]))
        return response.to_wire()
    rdclass = "CH" if kind.endswith("/CH") else "IN"
    response.answer.append(dns.rrset.from_text_list(question.name, 300, rdclass, kind.split("/")[0], records))
    if name.endswith("vendor.test.") and rdclass == "IN":
        response.authority.append(dns.rrset.from_text_list("vendor.test.", 3600, "IN", "NS", AUTHORITY))
        for ns, address in GLUE.items():
            response.additional.append(dns.rrset.from_text_list(ns, 3600, "IN", "A", [address]))
    data = response.to_wire()
    if len(data) > 512 and not over_tcp:
        response.answer.clear()
        response.authority.clear()
        response.additional.clear()
        response.flags |= dns.flags.TC
        data = response.to_wire()
    return data


# ---------------------------------------------------------------- the whole set


class Targets:
    """Every target, started by :meth:`start` and stopped by :meth:`stop`; see the module docstring."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.values: dict[str, str] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="conformance-targets", daemon=True
        )
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._grpc: list[grpc.Server] = []

    # -------------------------------------------------- certificates

    def _certificates(self) -> tuple[ssl.SSLContext, dict[str, ssl.SSLContext]]:
        ca = trustme.CA(organization_name="Conformance Test CA")
        other = trustme.CA(organization_name="Untrusted CA")
        ca_file = self.directory / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        self.values["ca_file"] = str(ca_file)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        leaf = ca.issue_cert(
            "127.0.0.1", "localhost", "api.vendor.test", not_after=now + dt.timedelta(days=90)
        )
        expired = ca.issue_cert(
            "127.0.0.1",
            not_before=now - dt.timedelta(days=60),
            not_after=now - dt.timedelta(days=1),
        )
        wrong_name = ca.issue_cert("other.test", not_after=now + dt.timedelta(days=30))
        untrusted = other.issue_cert("127.0.0.1", not_after=now + dt.timedelta(days=45))
        # The gRPC server's key and chain.
        self._grpc_pair = (leaf.private_key_pem.bytes(), b"".join(c.bytes() for c in leaf.cert_chain_pems))
        self.values["leaf_expiry"] = str(int((now + dt.timedelta(days=90)).timestamp()))
        client = ca.issue_cert("prober@vantage.test")
        client_pem = self.directory / "client.pem"
        client.private_key_and_cert_chain_pem.write_to_path(str(client_pem))
        self.values["client_cert"] = str(client_pem)

        def context(cert: trustme.LeafCert, **options: Any) -> ssl.SSLContext:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            cert.configure_cert(ctx)
            if options.get("max_tls12"):
                ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            if options.get("mtls"):
                ca.configure_trust(ctx)
                ctx.verify_mode = ssl.CERT_REQUIRED
            return ctx

        contexts = {
            "https": context(leaf),
            "https12": context(leaf, max_tls12=True),
            "https_expired": context(expired),
            "https_wrong_name": context(wrong_name),
            "https_untrusted": context(untrusted),
            "https_mtls": context(leaf, mtls=True),
        }
        return contexts["https"], contexts

    # -------------------------------------------------- servers

    def _run(self, coroutine: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)  # type: ignore[arg-type]

    async def _http(self, name: str, tls: ssl.SSLContext | None) -> None:
        runner = web.AppRunner(http_app(), handle_signals=False, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        self.values[name] = str(runner.addresses[0][1])
        self._closers.append(runner.cleanup)

    async def _line(self, name: str, handler: Any, tls: ssl.SSLContext | None = None) -> None:
        async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await handler(reader, writer)
            except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(guarded, "127.0.0.1", 0, ssl=tls)
        self.values[name] = str(server.sockets[0].getsockname()[1])

        async def close() -> None:
            server.close()

        self._closers.append(close)

    async def _dns(self) -> None:
        loop = asyncio.get_running_loop()

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                self.transport.sendto(dns_answer(data, over_tcp=False), addr)

        async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    (size,) = struct.unpack("!H", await reader.readexactly(2))
                    data = dns_answer(await reader.readexactly(size), over_tcp=True)
                    writer.write(struct.pack("!H", len(data)) + data)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                pass
            finally:
                writer.close()

        for attempt in range(20):  # UDP and TCP on one port
            udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
            port = udp.get_extra_info("sockname")[1]
            try:
                server = await asyncio.start_server(tcp, "127.0.0.1", port)
                break
            except OSError:
                udp.close()
                if attempt == 19:
                    raise
        self.values["dns"] = str(port)
        dot = await asyncio.start_server(tcp, "127.0.0.1", 0, ssl=self._tls)
        self.values["dns_tls"] = str(dot.sockets[0].getsockname()[1])

        async def close() -> None:
            udp.close()
            server.close()
            dot.close()

        self._closers.append(close)

    def _grpc_server(self, name: str, credentials: grpc.ServerCredentials | None) -> None:
        servicer = health.HealthServicer()
        servicer.set("payments.v1.Charges", health_pb2.HealthCheckResponse.SERVING)
        servicer.set("payments.v1.Refunds", health_pb2.HealthCheckResponse.NOT_SERVING)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        if credentials is None:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            port = server.add_secure_port("127.0.0.1:0", credentials)
        server.start()
        self.values[name] = str(port)
        self._grpc.append(server)

    def start(self) -> Targets:
        self._tls, contexts = self._certificates()
        self._thread.start()
        self._run(self._http("http", None))
        for name, context in contexts.items():
            self._run(self._http(name, context))
        self._run(self._line("smtp", lambda r, w: smtp(r, w, self._tls)))
        self._run(self._line("smtps", lambda r, w: smtp(r, w, self._tls), self._tls))
        self._run(self._line("irc", irc))
        self._run(self._line("echo", echo))
        self._run(self._line("echo_tls", echo, self._tls))
        self._run(self._line("echo_expired", echo, contexts["https_expired"]))
        self._run(self._line("echo_untrusted", echo, contexts["https_untrusted"]))
        self._run(self._line("redis", redis))
        self._run(self._line("ssh", banner_only))
        self._run(self._line("rude", rude))
        self._run(self._line("silent", silent))
        self._run(self._line("proxy", proxy))
        self._run(self._dns())
        self._grpc_server("grpc", None)
        self._grpc_server("grpc_tls", grpc.ssl_server_credentials([self._grpc_pair]))
        self.values["closed"] = str(closed_port())
        return self

    def stop(self) -> None:
        for server in self._grpc:
            server.stop(grace=None).wait(5)
        for close in reversed(self._closers):
            self._run(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, TCP or UDP (bound, read, released)."""
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        port = int(tcp.getsockname()[1])
        udp.bind(("127.0.0.1", port))
        return port
