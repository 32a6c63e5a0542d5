"""The dns probe as blackbox_exporter's dns prober behaves, against local DNS servers (UDP, TCP and
DNS over TLS): rules on every section and on the whole record text, the query class, the phases,
the server's name lookup time, a closed UDP port refused at once, the local address and the address
metrics."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
import trustme

from agent.sdk import Reason

from .test_http_probe import run_checks

pytestmark = pytest.mark.anyio

Answer = Callable[[bytes], bytes]


def authoritative(wire: bytes) -> bytes:
    """The answers of blackbox_exporter's own authoritative test server."""
    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    question = query.question[0]
    name = question.name
    if question.rdtype == dns.rdatatype.SOA:
        records = [(name, 3600, "IN", "SOA", "ns.example.com. noc.example.com. 1000 7200 3600 1209600 3600")]
    elif question.rdtype == dns.rdatatype.MX:
        records = []  # no such records: an empty answer section
    elif question.rdclass == dns.rdataclass.CH and question.rdtype == dns.rdatatype.TXT:
        records = [(name, 3600, "CH", "TXT", '"goCHAOS"')]
    else:
        records = [(name, 3600, "IN", "A", "127.0.0.1")]
    for owner, ttl, rdclass, rdtype, data in records:
        response.answer.append(dns.rrset.from_text(owner, ttl, rdclass, rdtype, data))
    response.authority.append(
        dns.rrset.from_text_list(name, 7200, "IN", "NS", ["ns1.isp.net.", "ns2.isp.net."])
    )
    for owner, rdtype, data in (("ns1.isp.net.", "A", "127.0.0.1"), ("ns1.isp.net.", "AAAA", "::1")):
        response.additional.append(dns.rrset.from_text(owner, 7200, "IN", rdtype, data))
    response.additional.append(dns.rrset.from_text("ns2.isp.net.", 7200, "IN", "A", "127.0.0.2"))
    return response.to_wire()


@asynccontextmanager
async def stream_server(answer: Answer, tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """DNS over TCP (or TLS): length-prefixed messages."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            (size,) = struct.unpack("!H", await reader.readexactly(2))
            data = answer(await reader.readexactly(size))
            writer.write(struct.pack("!H", len(data)) + data)
            await writer.drain()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        with anyio.CancelScope(shield=True):
            await server.wait_closed()


@asynccontextmanager
async def datagram_server(answer: Answer, seen: list[str] | None = None) -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()

    class Udp(asyncio.DatagramProtocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            if seen is not None:
                seen.append(addr[0])
            self.transport.sendto(answer(data), addr)

    transport, _ = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
    try:
        yield transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


def query(
    name: str, port: int, target: str = "example.com", timeout: str = "3s", **settings: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "type": "dns",
        "target": target,
        "interval": "60s",
        "timeout": timeout,
        "settings": {"server": f"127.0.0.1:{port}", **settings},
    }


async def test_rules_on_every_section_as_blackbox_judges_them() -> None:
    """blackbox_exporter's TestAuthoritativeDNSResponse cases, with their verdicts."""

    def record(op: str, value: str | list[str]) -> dict[str, Any]:
        return {"op": op, "value": value, "match_on": "record"}

    cases: dict[str, tuple[dict[str, Any], bool]] = {
        "plain": ({}, True),
        "soa": ({"type": "SOA"}, True),
        "chaos": (
            {
                "type": "TXT",
                "query_class": "CH",
                "answers": [record("not_matches", ".*IN.*"), record("matches", ".*CH.*")],
            },
            True,
        ),
        "rcodes": ({"valid_rcodes": ["SERVFAIL", "NXDOMAIN"]}, False),
        "ttl-3600": ({"answers": [record("not_matches", ".*3600.*"), record("matches", ".*3600.*")]}, False),
        "ttl-7200": ({"answers": [record("not_matches", ".*7200.*"), record("matches", ".*7200.*")]}, False),
        "authority": ({"authority": [record("matches", "ns.*.isp.net")]}, True),
        "additional": ({"additional": [record("matches", "^ns.*.isp")]}, True),
        "additional-not": ({"additional": [record("not_matches", "^ns.*.isp")]}, False),
        # "Not all RRs matched regexp": the AAAA record of ns1 is not 127.0.0.*.
        "all-match": ({"additional": [record("all_match", ".*127.0.0.*")]}, False),
        "all-match-ok": ({"additional": [record("all_match", "^ns.\\.isp\\.net\\.\t7200\tIN\t")]}, True),
        "all-match-empty": ({"answers": [record("all_match", "nothing")], "type": "MX"}, True),
        "none-match": ({"additional": [record("contains", ".*127.0.0.3.*")]}, False),
        "none-match-ok": ({"additional": [record("contains", ".*127.0.0.2.*")]}, True),
    }
    async with datagram_server(authoritative) as port:
        results, _ = await run_checks(
            [query(name, port, **settings) for name, (settings, _) in cases.items()]
        )
    for name, (_, success) in cases.items():
        assert results[name].success is success, (name, results[name].message)
    plain = results["plain"].values
    counts = [plain[f"probe.dns.{section}_rrs"] for section in ("answer", "authority", "additional")]
    assert counts == [1, 2, 3]
    assert results["soa"].values["probe.dns.serial"] == 1000
    assert "probe.dns.serial" not in plain
    assert results["all-match"].message == (
        "not all of the additional records ('ns1.isp.net.\\t7200\\tIN\\tA\\t127.0.0.1', "
        "'ns1.isp.net.\\t7200\\tIN\\tAAAA\\t::1', 'ns2.isp.net.\\t7200\\tIN\\tA\\t127.0.0.2') "
        "match ['.*127.0.0.*'] (all_match)"
    )
    assert results["none-match"].reason is Reason.ASSERTION


async def test_the_record_text_is_go_s_and_matches_need_records() -> None:
    from plugins.dns import record_text

    rrset = dns.rrset.from_text("mail.example.", 300, "IN", "MX", "10 mx1.example.")
    assert record_text(rrset, rrset[0]) == "mail.example.\t300\tIN\tMX\t10 mx1.example."
    txt = dns.rrset.from_text("example.", 60, "CH", "TXT", '"a b" "c"')
    assert record_text(txt, txt[0]) == 'example.\t60\tCH\tTXT\t"a b" "c"'

    async with datagram_server(authoritative) as port:
        results, _ = await run_checks(
            [
                # blackbox: "fail_if_not_matches_regexp specified but no RRs returned".
                query("empty", port, type="MX", answers=[{"op": "matches", "value": ".*"}]),
                query("data", port, answers=[{"op": "equals", "value": "127.0.0.1"}]),
            ]
        )
    assert results["empty"].message == "no answer records to match ['.*']"
    assert results["data"].success, results["data"].message


async def test_phases_and_lookup_time_mean_what_they_mean_in_blackbox() -> None:
    async with datagram_server(authoritative) as port:
        results, _ = await run_checks(
            [query("literal", port), query("by-name", port, server=f"localhost:{port}", ip_family="ipv4")]
        )
    for name in ("literal", "by-name"):
        result = results[name]
        assert result.success, result.message
        assert set(result.phases) == {"resolve", "connect", "request"}
        # The lookup time is the server's name lookup, the resolve phase; the query is "request".
        assert result.values["probe.dns.lookup_time"] == result.phases["resolve"]
        assert result.values["probe.ip_protocol"] == 4
        assert result.values["probe.ip_addr_hash"] == 3668918509  # blackbox's figure for 127.0.0.1


async def test_a_closed_udp_port_is_refused_at_once_not_a_timeout() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # A timeout far longer than the run needs: a refused port fails with "connect", not "timeout".
    results, _ = await run_checks([query("closed", port, timeout="30s")])
    closed = results["closed"]
    assert closed.reason is Reason.CONNECT, closed.message
    assert closed.message == f"connection refused by 127.0.0.1:{port}"
    assert closed.values["probe.dns.query_succeeded"] == 0
    assert closed.values["probe.ip_protocol"] == 4  # the address asked, as blackbox reports it
    assert "connect" in closed.phases and "request" not in closed.phases


async def test_tcp_and_dns_over_tls(ca: trustme.CA, ca_file: Path) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("dns.test", "127.0.0.1").configure_cert(context)
    async with (
        stream_server(authoritative) as tcp_port,
        stream_server(authoritative, tls=context) as tls_port,
    ):
        trusted = {"ca_file": str(ca_file)}
        results, _ = await run_checks(
            [
                query("tcp", tcp_port, transport="tcp"),
                query("udp-to-tcp-only", tcp_port, transport="udp", timeout="1s"),
                query("tls", tls_port, transport="tls", tls_options=trusted),
                query(
                    "tls-name", tls_port, transport="tls", tls_options={**trusted, "server_name": "dns.test"}
                ),
                query("tls-untrusted", tls_port, transport="tls"),
                query(
                    "tls-wrong-name",
                    tls_port,
                    transport="tls",
                    tls_options={**trusted, "server_name": "x.test"},
                ),
            ]
        )
    for name in ("tcp", "tls", "tls-name"):
        result = results[name]
        assert result.success, (name, result.message)
        assert set(result.phases) == {"resolve", "connect", "request"}
        assert result.attributes["vantage.dns.tcp"] is True
        assert result.values["probe.dns.additional_rrs"] == 3
    # Nothing listens on that UDP port: refused.
    assert results["udp-to-tcp-only"].reason is Reason.CONNECT
    assert results["tls-untrusted"].reason is Reason.TLS
    assert results["tls-untrusted"].message.startswith("TLS certificate of 127.0.0.1 rejected: ")
    assert results["tls-wrong-name"].reason is Reason.TLS


async def test_source_address_and_family() -> None:
    seen: list[str] = []
    async with datagram_server(authoritative, seen) as port:
        results, _ = await run_checks(
            [
                query("from", port, source_ip_address="127.0.0.2"),
                query("wrong-family", port, source_ip_address="::1"),
                query("v6-only", port, ip_family="ipv6"),
                query("v6-or-v4", port, ip_family="ipv6", ip_fallback=True),
            ]
        )
    assert results["from"].success, results["from"].message
    assert seen[0] == "127.0.0.2"
    assert results["wrong-family"].reason is Reason.CONNECT
    assert results["wrong-family"].message.startswith("source_ip_address ::1 is IPv6")
    assert results["v6-only"].reason is Reason.DNS
    assert "probe.dns.lookup_time" in results["v6-only"].values
    assert results["v6-or-v4"].success and results["v6-or-v4"].values["probe.ip_protocol"] == 4


def test_new_settings_are_checked_at_load() -> None:
    from agent.errors import ConfigError

    from .helpers import config_from

    def check(**settings: Any) -> list[dict[str, Any]]:
        return [{"name": "a", "type": "dns", "target": "example.com", "settings": settings}]

    with pytest.raises(ConfigError, match="'BOGUS' is not a DNS record type"):
        config_from(check(type="BOGUS"))
    with pytest.raises(ConfigError, match=r"field 'settings\.query_class'"):
        config_from(check(query_class="XX"))
    with pytest.raises(ConfigError, match=r"field 'settings\.transport'"):
        config_from(check(transport="quic"))
    with pytest.raises(ConfigError, match="is not an IP address"):
        config_from(check(source_ip_address="ns.example"))
    with pytest.raises(ConfigError, match="is not a valid regular expression"):
        config_from(check(authority=[{"op": "all_match", "value": "(x"}]))
    with pytest.raises(ConfigError, match=r"field 'settings\.additional\[0\]\.match_on'"):
        config_from(check(additional=[{"op": "matches", "value": "x", "match_on": "owner"}]))
    config_from(
        check(type="ds", query_class="CH", transport="tls", authority=[{"op": "contains", "value": "x"}])
    )
