"""The tls probe against local TLS servers with good and bad certificate chains, and STARTTLS."""

from __future__ import annotations

import asyncio
import datetime as dt
import socketserver
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from agent.errors import ConfigError
from agent.sdk import ProbeResult, Reason

from .helpers import config_from
from .test_http_probe import run_checks

pytestmark = pytest.mark.anyio

NOW = dt.datetime.now(dt.UTC)
Dialogue = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


def server_context(cert: trustme.LeafCert | None = None, **versions: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if cert is not None:
        cert.configure_cert(context)
    for name, version in versions.items():
        setattr(context, name, version)
    return context


@asynccontextmanager
async def tls_server(context: ssl.SSLContext, starttls: Dialogue | None = None) -> AsyncIterator[int]:
    """A server that handshakes (after ``starttls``, when given) and then waits for the client to leave."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if starttls is None or await starttls(reader, writer):
                if starttls is not None:
                    await writer.start_tls(context)
                await reader.read()
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context if starttls is None else None)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        with anyio.CancelScope(shield=True):
            await server.wait_closed()


@contextmanager
def blocking_tls_server(context: ssl.SSLContext) -> Iterator[int]:
    """A TLS server on blocking sockets: unlike asyncio's, it sends the alert of a failed handshake."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            try:
                with context.wrap_socket(self.request, server_side=True) as conn:
                    conn.recv(1)
            except (ssl.SSLError, OSError):
                pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def tls(name: str, port: int, ca_file: Path | None, **settings: Any) -> dict[str, Any]:
    options = settings.pop("tls", {})
    if ca_file is not None:
        options["ca_file"] = str(ca_file)
    return {
        "name": name,
        "type": "tls",
        "target": f"127.0.0.1:{port}",
        "interval": "10s",
        "timeout": "3s",
        "settings": {"tls": options, **settings},
    }


def fingerprint(cert: trustme.LeafCert) -> str:
    pem = cert.cert_chain_pems[0].bytes()
    return x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex()


def error(result: ProbeResult) -> str:
    return str(result.attributes["vantage.tls.error"])


async def test_chains_good_and_bad(ca: trustme.CA, ca_file: Path) -> None:
    stranger = trustme.CA()
    expired_at = NOW - dt.timedelta(days=3)
    valid_from = NOW + dt.timedelta(days=2)
    certs = {
        "good": ca.issue_cert("127.0.0.1", common_name="good.test"),
        "expired": ca.issue_cert("127.0.0.1", not_before=NOW - dt.timedelta(days=30), not_after=expired_at),
        "not_yet": ca.issue_cert("127.0.0.1", not_before=valid_from, not_after=NOW + dt.timedelta(days=90)),
        "wrong_host": ca.issue_cert("elsewhere.test"),
        "untrusted": stranger.issue_cert("127.0.0.1"),
    }
    self_signed = server_context()
    # A CA's own certificate and key make a self-signed server certificate.
    with trustme.Blob(stranger.cert_pem.bytes() + stranger.private_key_pem.bytes()).tempfile() as pem:
        self_signed.load_cert_chain(pem)
    async with AsyncExitStack() as stack:
        ports = {
            name: await stack.enter_async_context(tls_server(server_context(cert)))
            for name, cert in certs.items()
        }
        ports["self_signed"] = await stack.enter_async_context(tls_server(self_signed))
        results, spans = await run_checks([tls(name, port, ca_file) for name, port in ports.items()])

    good = results["good"]
    assert good.success, good.message
    assert error(good) == "none"
    assert set(good.phases) == {"resolve", "connect", "handshake"}
    assert good.values["probe.ssl.last_chain_expiry_timestamp"] > NOW.timestamp()
    leaf = next(s for s in good.samples if s.metric == "probe.ssl.last_chain_info")
    assert "CN=good.test" in leaf.labels["subject"]
    assert "O=trustme" in leaf.labels["issuer"]
    assert leaf.labels["subjectalternative"] == ""  # DNS names only, as blackbox: this one has an IP
    assert good.values["probe.ip_protocol"] == 4 and good.values["probe.ip_addr_hash"] == 3668918509
    assert good.values["probe.dns.lookup_time"] == good.phases["resolve"]
    assert leaf.labels["fingerprint_sha256"] == fingerprint(certs["good"])
    version = next(s for s in good.samples if s.metric == "probe.tls.version_info")
    assert version.labels["version"] == "TLS 1.3"
    assert any(s.metric == "probe.tls.cipher_info" and s.labels["cipher"] for s in good.samples)

    expected = {
        "expired": "expired",
        "not_yet": "not_yet_valid",
        "wrong_host": "hostname_mismatch",
        "untrusted": "untrusted",
        "self_signed": "untrusted",
    }
    for name, kind in expected.items():
        result = results[name]
        assert result.reason is Reason.TLS, (name, result.message)
        assert error(result) == kind, (name, result.message)
        # The rejected chain is still read: its dates are reported.
        assert "probe.ssl.earliest_cert_expiry" in result.values, name
        assert "probe.ssl.last_chain_expiry_timestamp" not in result.values, name
        assert any(s.metric == "probe.ssl.last_chain_info" for s in result.samples), name
    assert results["expired"].values["probe.ssl.earliest_cert_expiry"] == int(expired_at.timestamp())
    assert f"expired on {expired_at:%Y-%m-%d %H:%M} UTC" in results["expired"].message
    assert f"is valid from {valid_from:%Y-%m-%d %H:%M} UTC" in results["not_yet"].message
    assert "self-signed certificate" in results["self_signed"].message
    assert results["wrong_host"].message.endswith(
        "certificate is not valid for '127.0.0.1'. (it names elsewhere.test)"
    )

    expired_span = next(s for s in spans if s.name == "check expired")
    assert expired_span.attributes is not None
    assert expired_span.attributes["error.type"] == "tls"
    assert expired_span.attributes["vantage.tls.error"] == "expired"
    assert (
        expired_span.attributes["tls.server.not_after"]
        == dt.datetime.fromtimestamp(int(expired_at.timestamp()), dt.UTC).isoformat()
    )


async def test_assertions_on_expiry_version_issuer_and_pin(ca: trustme.CA, ca_file: Path) -> None:
    soon = ca.issue_cert("127.0.0.1", not_after=NOW + dt.timedelta(days=5))
    old_tls = server_context(ca.issue_cert("127.0.0.1"), maximum_version=ssl.TLSVersion.TLSv1_2)
    with blocking_tls_server(old_tls) as old_port:
        async with tls_server(server_context(soon)) as soon_port:
            results, _ = await run_checks(
                [
                    tls("days-ok", soon_port, ca_file, min_days_left=3),
                    tls("days-short", soon_port, ca_file, min_days_left=14),
                    tls("version-ok", old_port, ca_file, min_version="1.2"),
                    tls("version-old", old_port, ca_file, min_version="1.3"),
                    tls("handshake-old", old_port, ca_file, tls={"min_version": "1.3"}),
                    tls("issuer-ok", soon_port, ca_file, issuer="O=trustme"),
                    tls("issuer-wrong", soon_port, ca_file, issuer="O=Let's Encrypt"),
                    tls("pin-ok", soon_port, ca_file, fingerprints=[fingerprint(soon).upper()]),
                    tls("pin-wrong", soon_port, ca_file, fingerprints=["ab" * 32]),
                ]
            )
    for name in ("days-ok", "version-ok", "issuer-ok", "pin-ok"):
        assert results[name].success, (name, results[name].message)
    short = results["days-short"]
    assert short.reason is Reason.ASSERTION
    assert "expires in 5.0 days" in short.message or "expires in 4.9 days" in short.message
    assert results["version-old"].reason is Reason.TLS
    assert error(results["version-old"]) == "version"
    assert results["version-old"].message == "the server negotiated TLS 1.2, older than the required TLS 1.3"
    assert error(results["handshake-old"]) == "version"
    assert "no TLS version both sides accept" in results["handshake-old"].message
    assert results["issuer-wrong"].reason is Reason.ASSERTION
    assert results["pin-wrong"].reason is Reason.TLS
    assert error(results["pin-wrong"]) == "pin"
    assert fingerprint(soon) in results["pin-wrong"].message


async def smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"220-mail.test ESMTP\r\n220 ready\r\n")
    await reader.readline()
    writer.write(b"250-mail.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
    await reader.readline()
    writer.write(b"220 go ahead\r\n")
    await writer.drain()
    return True


async def smtp_without_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"220 mail.test ESMTP\r\n")
    await reader.readline()
    writer.write(b"250-mail.test\r\n250 PIPELINING\r\n")
    await writer.drain()
    await reader.readline()
    return False


async def imap(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n")
    tag = (await reader.readline()).split(b" ")[0]
    writer.write(tag + b" OK Begin TLS negotiation now\r\n")
    await writer.drain()
    return True


async def pop3(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"+OK POP3 ready\r\n")
    assert await reader.readline() == b"STLS\r\n"
    writer.write(b"+OK Begin TLS\r\n")
    await writer.drain()
    return True


async def test_starttls(ca: trustme.CA, ca_file: Path) -> None:
    context = server_context(ca.issue_cert("127.0.0.1"))
    async with (
        tls_server(context, smtp) as smtp_port,
        tls_server(context, smtp_without_tls) as bare_port,
        tls_server(context, imap) as imap_port,
        tls_server(context, pop3) as pop3_port,
    ):
        results, _ = await run_checks(
            [
                tls("smtp", smtp_port, ca_file, starttls="smtp"),
                tls("bare", bare_port, ca_file, starttls="smtp"),
                tls("imap", imap_port, ca_file, starttls="imap"),
                tls("pop3", pop3_port, ca_file, starttls="pop3"),
            ]
        )
    for name in ("smtp", "imap", "pop3"):
        assert results[name].success, (name, results[name].message)
        assert set(results[name].phases) == {"resolve", "connect", "starttls", "handshake"}
    assert results["bare"].reason is Reason.PROTOCOL
    assert results["bare"].message == "STARTTLS: the server does not offer STARTTLS after EHLO"


async def test_not_tls_at_all_and_refused(ca_file: Path) -> None:
    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(plain, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    closed = await asyncio.start_server(plain, "127.0.0.1", 0)
    closed_port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()
    try:
        results, _ = await run_checks([tls("plain", port, ca_file), tls("closed", closed_port, ca_file)])
    finally:
        server.close()
        await server.wait_closed()
    assert results["plain"].reason is Reason.TLS
    assert error(results["plain"]) == "handshake"
    assert results["closed"].reason is Reason.CONNECT
    # The address tried is reported also when it refused, as blackbox_exporter does.
    assert results["closed"].values["probe.ip_protocol"] == 4


def test_settings_are_checked_at_load() -> None:
    def check(**settings: Any) -> dict[str, Any]:
        return {"name": "a", "type": "tls", "target": "mail.example:25", "settings": settings}

    with pytest.raises(ConfigError, match="'zz' is not a SHA-256 fingerprint"):
        config_from([check(fingerprints=["zz"])])
    with pytest.raises(ConfigError, match="'issuer' '\\(' is not a valid regular expression"):
        config_from([check(issuer="(")])
    with pytest.raises(ConfigError, match="is not host:port"):
        config_from([{"name": "a", "type": "tls", "target": "mail.example:smtp"}])
    config_from([{"name": "a", "type": "tls", "target": "example.com"}])


async def test_ip_family_is_a_requirement_unless_it_may_fall_back(ca: trustme.CA, ca_file: Path) -> None:
    """blackbox's preferred_ip_protocol with ip_protocol_fallback: 127.0.0.1 has no IPv6 address."""
    async with tls_server(server_context(ca.issue_cert("127.0.0.1"))) as port:
        results, _ = await run_checks(
            [
                tls("strict", port, ca_file, ip_family="ipv6"),
                tls("fallback", port, ca_file, ip_family="ipv6", ip_fallback=True),
            ]
        )
    strict, fallback = results["strict"], results["fallback"]
    assert strict.reason is Reason.DNS, strict.message
    assert error(strict) == "dns"
    assert "probe.dns.lookup_time" in strict.values and "probe.ip_protocol" not in strict.values
    assert fallback.success, fallback.message
    assert fallback.values["probe.ip_protocol"] == 4
