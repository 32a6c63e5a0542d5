"""The tcp probe as blackbox_exporter's tcp prober behaves, against local line-protocol servers: an
expect reads lines until one matches, a send uses the groups the expect captured, STARTTLS inside
the dialogue, the local address, the address family fallback and the address metrics."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme

from agent.sdk import Reason

from .test_http_probe import run_checks

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def line_server(handler: Handler, host: str = "127.0.0.1") -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        with anyio.CancelScope(shield=True):
            await server.wait_closed()


def tcp(
    name: str, port: int, host: str = "127.0.0.1", timeout: str = "3s", **settings: Any
) -> dict[str, Any]:
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return {
        "name": name,
        "type": "tcp",
        "target": target,
        "interval": "10s",
        "timeout": timeout,
        "settings": settings,
    }


async def smtp(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tls: ssl.SSLContext | None = None
) -> None:
    """An ESMTP server's multi-line replies, with STARTTLS when it has a certificate."""
    writer.write(b"220-smtp.test ESMTP\r\n220-no UCE\r\n220 ready\r\n")
    await writer.drain()
    while line := await reader.readline():
        if line.startswith(b"EHLO"):
            offers = b"250-STARTTLS\r\n" if tls and not writer.get_extra_info("ssl_object") else b""
            writer.write(b"250-smtp.test greets you\r\n250-PIPELINING\r\n" + offers + b"250 SIZE 1000\r\n")
        elif line.startswith(b"STARTTLS") and tls:
            writer.write(b"220 go ahead\r\n")
            await writer.drain()
            await writer.start_tls(tls)
            continue
        elif line.startswith(b"QUIT"):
            tls_on = b" (over TLS)" if writer.get_extra_info("ssl_object") else b""
            writer.write(b"221 bye" + tls_on + b"\r\n")
            await writer.drain()
            return
        else:
            writer.write(b"500 what\r\n")
        await writer.drain()


EHLO = [
    {"expect": "^220 "},
    {"send": "EHLO vantage\r\n"},
    {"expect": "^250 "},
    {"send": "QUIT\r\n"},
    {"expect": "^221 "},
]


async def test_an_expect_reads_lines_until_one_matches_as_blackbox_does() -> None:
    async def irc(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for notice in (b"Looking up your hostname", b"Found your hostname", b"Checking Ident"):
            writer.write(b":irc.test NOTICE * :*** " + notice + b"\r\n")
        writer.write(b":irc.test 001 vantage :Welcome")  # the last line, without its newline
        await writer.drain()

    async with line_server(smtp) as mail, line_server(irc) as chat:
        results, _ = await run_checks(
            [
                tcp("ehlo", mail, dialogue=EHLO),
                tcp("irc", chat, dialogue=[{"expect": " 001 "}]),
                tcp("irc-missing", chat, dialogue=[{"expect": " 433 "}]),
            ]
        )
    assert results["ehlo"].success, results["ehlo"].message
    assert results["irc"].success, results["irc"].message
    missing = results["irc-missing"]
    assert missing.reason is Reason.ASSERTION
    assert missing.message == (
        "turn 1: the connection closed before a line matching ' 433 ' "
        "(4 lines read, the last ':irc.test 001 vantage :Welcome')"
    )
    assert missing.values["probe.failed_due_to_regex"] == 1


async def test_an_expect_is_bounded_in_lines_in_bytes_and_by_the_timeout() -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for n in range(1500):
            writer.write(b"noise %d\r\n" % n)
        await writer.drain()
        await reader.read()  # holds the connection open until the client closes it

    async def verbose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(40):
            writer.write(b"x" * 60_000 + b"\r\n")
            await writer.drain()
        await reader.read()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"554 go away\r\n")
        await writer.drain()
        await reader.read()

    async with line_server(chatty) as noise, line_server(verbose) as big, line_server(silent) as quiet:
        results, _ = await run_checks(
            [
                tcp("lines", noise, dialogue=[{"expect": "^220 "}]),
                tcp("bytes", big, dialogue=[{"expect": "^220 "}]),
                tcp("timeout", quiet, timeout="500ms", dialogue=[{"expect": "^220 "}]),
            ]
        )
    lines = results["lines"]
    assert lines.reason is Reason.ASSERTION
    assert lines.message == "turn 1: expected a line matching '^220 ' within 1000 lines, the last 'noise 999'"
    assert lines.values["probe.failed_due_to_regex"] == 1
    assert results["bytes"].reason is Reason.ASSERTION
    assert "expected a line matching '^220 ' within 1024 KiB" in results["bytes"].message
    timed_out = results["timeout"]
    assert timed_out.reason is Reason.TIMEOUT
    assert (
        "turn 1: waiting for a line matching '^220 ' (1 line read, the last '554 go away'))"
        in timed_out.message
    )
    # What the run found before its timeout cut it, as blackbox_exporter reports it.
    assert timed_out.values["probe.ip_protocol"] == 4 and timed_out.values["probe.ip_addr_hash"] == 3668918509
    assert "probe.dns.lookup_time" in timed_out.values


async def test_a_send_uses_the_groups_the_expect_before_it_captured() -> None:
    async def challenge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* notice first\r\n* HELLO nonce=k3x9 session=s-41\r\n")
        await writer.drain()
        line = await reader.readline()
        writer.write(b"OK\r\n" if line == b"LOGIN k3x9 s-41 $5\r\n" else b"BAD " + line)
        await writer.drain()

    captured = [
        {"expect": r"nonce=(?P<nonce>\w+) session=([\w-]+)"},
        {"send": "LOGIN ${nonce} $2 $$5\r\n"},
        {"expect": "^(OK|BAD)"},
        {"expect": "^OK"},
    ]
    # A send that does not follow an expect is sent as written.
    literal = [
        {"expect": "HELLO"},
        {"send": "x\r\n"},
        {"send": "LOGIN ${nonce} $2 $$5\r\n"},
        {"expect": "^OK"},
    ]
    async with line_server(challenge) as port:
        results, _ = await run_checks(
            [
                tcp("captured", port, dialogue=[*captured[:2], {"expect": "^OK"}]),
                tcp("literal", port, dialogue=literal),
            ]
        )
    assert results["captured"].success, results["captured"].message
    assert results["literal"].reason is Reason.ASSERTION
    assert results["literal"].message == "turn 4: expected a line matching '^OK', got 'BAD x'"


def test_expand_follows_go_regexp_expand() -> None:
    from plugins.tcp import expand

    found = re.search(r"(?P<host>\w+)\.(\w+)(x)?", "mail.test")
    assert found is not None
    assert expand("${1}-$2-${host}-$host", found) == "mail-test-mail-mail"
    assert expand("$3|$9|${nope}|$1x|${1}x", found) == "||||mailx"  # missing, absent, and "$1x" is group "1x"
    assert expand("$$1 costs $ 5 ${ and $", found) == "$1 costs $ 5 ${ and $"
    assert expand("$0 ${01}", found) == "mail.test "  # a leading zero makes it a name


async def test_starttls_inside_the_dialogue(ca: trustme.CA, ca_file: Path) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)

    async def mail(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await smtp(reader, writer, tls=context)

    upgrade = [
        {"expect": "^220 "},
        {"send": "EHLO vantage\r\n"},
        {"expect": "^250-STARTTLS"},
        {"expect": "^250 "},
        {"send": "STARTTLS\r\n"},
        {"expect": "^220 "},
        {"starttls": True},
        {"send": "EHLO vantage\r\n"},
        {"expect": "^250 "},
        {"send": "QUIT\r\n"},
        {"expect": r"^221 bye \(over TLS\)"},
    ]
    async with line_server(mail) as port:
        results, _ = await run_checks(
            [
                tcp("starttls", port, dialogue=upgrade, tls_options={"ca_file": str(ca_file)}),
                tcp("untrusted", port, dialogue=upgrade),
            ]
        )
    assert results["starttls"].success, results["starttls"].message
    untrusted = results["untrusted"]
    assert untrusted.reason is Reason.TLS
    assert untrusted.message.startswith("turn 7: TLS certificate of 127.0.0.1 rejected: "), untrusted.message


async def test_source_address_family_fallback_and_address_metrics() -> None:
    peers: list[str] = []

    async def who(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername")[0])
        writer.write(b"hello\r\n")
        await writer.drain()

    async with line_server(who) as port, line_server(who, "::1") as port6:
        results, _ = await run_checks(
            [
                tcp("from", port, source_ip_address="127.0.0.2", dialogue=[{"expect": "hello"}]),
                tcp("v6", port6, host="::1"),
                tcp("wrong-family", port, source_ip_address="::1"),
                tcp("not-local", port, source_ip_address="192.0.2.1"),
                tcp("v6-only", port, ip_family="ipv6"),
                tcp("v6-or-v4", port, ip_family="ipv6", ip_fallback=True),
            ]
        )
    frm = results["from"]
    assert frm.success, frm.message
    assert "127.0.0.2" in peers
    assert frm.values["probe.ip_protocol"] == 4 and frm.values["probe.ip_addr_hash"] == 3668918509
    assert frm.values["probe.dns.lookup_time"] >= 0 and frm.phases["resolve"] >= 0
    assert results["v6"].values["probe.ip_protocol"] == 6
    assert results["v6"].values["probe.ip_addr_hash"] == 1751717746
    wrong = results["wrong-family"]
    assert wrong.reason is Reason.CONNECT
    assert (
        wrong.message
        == "source_ip_address ::1 is IPv6, and 127.0.0.1 has no address of that family (127.0.0.1)"
    )
    assert results["not-local"].reason is Reason.CONNECT
    assert results["not-local"].message.startswith(f"cannot connect to 127.0.0.1:{port}: ")
    assert results["not-local"].values["probe.ip_addr_hash"] == 3668918509  # tried, if not connected
    assert results["v6-only"].reason is Reason.DNS
    assert "probe.ip_protocol" not in results["v6-only"].values
    assert "probe.dns.lookup_time" in results["v6-only"].values
    assert results["v6-or-v4"].success and results["v6-or-v4"].values["probe.ip_protocol"] == 4


def test_dialogue_settings_are_checked_at_load_and_groups_survive_secret_resolution() -> None:
    from agent.errors import ConfigError
    from plugins.tcp import TcpSettings

    from .helpers import config_from

    def check(**settings: Any) -> list[dict[str, Any]]:
        return [{"name": "a", "type": "tcp", "target": "smtp.example:25", "settings": settings}]

    with pytest.raises(ConfigError, match="'starttls' upgrades a plain connection"):
        config_from(check(tls=True, dialogue=[{"starttls": True}]))
    with pytest.raises(ConfigError, match="at most one 'starttls' turn"):
        config_from(check(dialogue=[{"starttls": True}, {"starttls": True}]))
    with pytest.raises(ConfigError, match="each dialogue turn has one of"):
        config_from(check(dialogue=[{"starttls": False}]))
    with pytest.raises(ConfigError, match=r"'smtp\.example' is not an IP address"):
        config_from(check(source_ip_address="smtp.example"))
    # ${1} and ${name} are the probe's, not secret references; $${NAME} keeps an upper-case group.
    sends = ["AUTH ${1} ${nonce} $2", "HI $${TOKEN}", "PASS ${SMTP_PASSWORD}"]
    config = config_from(
        check(dialogue=[{"expect": "(x)"}, *({"send": text} for text in sends)]),
        SMTP_PASSWORD="s3cret-value",
    )
    settings = config.entries[0].settings
    assert isinstance(settings, TcpSettings)
    assert [turn.send for turn in settings.dialogue[1:]] == [
        "AUTH ${1} ${nonce} $2",
        "HI ${TOKEN}",
        "PASS s3cret-value",
    ]
