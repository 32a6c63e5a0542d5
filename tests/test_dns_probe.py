"""The dns probe against a local DNS server (UDP, with TCP for truncated answers) with set answers."""

from __future__ import annotations

import asyncio
import errno
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from agent.sdk import Reason

from .test_http_probe import run_checks

pytestmark = pytest.mark.anyio

ZONE: dict[tuple[str, str], list[str]] = {
    ("vendor.test.", "A"): ["127.0.0.1", "127.0.0.2"],
    ("example.test.", "SOA"): ["ns.example.test. admin.example.test. 2026112201 3600 600 86400 60"],
    ("big.test.", "TXT"): [f'"{"x" * 200} {n}"' for n in range(10)],
    ("odd.test.", "TXT"): ['"v=1 (beta+"'],  # not a valid regular expression as it stands
}


def answer(wire: bytes, over_tcp: bool) -> bytes:
    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    question = query.question[0]
    key = (question.name.to_text(), dns.rdatatype.to_text(question.rdtype))
    if key not in ZONE:
        response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()
    response.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", key[1], ZONE[key]))
    data = response.to_wire()
    if len(data) > 512 and not over_tcp:
        response.answer.clear()
        response.flags |= dns.flags.TC
        data = response.to_wire()
    return data


@asynccontextmanager
async def dns_server(host: str = "127.0.0.1") -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()

    class Udp(asyncio.DatagramProtocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.transport.sendto(answer(data, over_tcp=False), addr)

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            (size,) = struct.unpack("!H", await reader.readexactly(2))
            data = answer(await reader.readexactly(size), over_tcp=True)
            writer.write(struct.pack("!H", len(data)) + data)
            await writer.drain()
        finally:
            writer.close()

    # UDP and TCP on the same port: the UDP port the system picks may be taken for TCP by another
    # process meanwhile, so pick again when it is.
    for attempt in range(20):
        udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=(host, 0))
        port = udp.get_extra_info("sockname")[1]
        try:
            server = await asyncio.start_server(tcp, host, port)
            break
        except OSError as exc:
            udp.close()
            if exc.errno != errno.EADDRINUSE or attempt == 19:
                raise
    try:
        yield port
    finally:
        udp.close()
        server.close()
        with anyio.CancelScope(shield=True):
            await server.wait_closed()


def query(name: str, target: str, port: int, **settings: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "dns",
        "target": target,
        "interval": "10s",
        "timeout": "2s",
        "settings": {"server": f"127.0.0.1:{port}", **settings},
    }


async def test_answers_rcodes_serial_and_tcp_fallback() -> None:
    async with dns_server() as port:
        results, _ = await run_checks(
            [
                query("a", "vendor.test", port, answers=[{"op": "contains", "value": "^127\\.0\\.0\\.1$"}]),
                query("a-equals", "vendor.test", port, answers=[{"op": "equals", "value": ["127.0.0.1"]}]),
                query("nx", "missing.test", port),
                query("nx-ok", "missing.test", port, valid_rcodes=["NXDOMAIN"]),
                query("soa", "example.test", port, type="SOA"),
                query("big", "big.test", port, type="TXT"),
                query("by-name", "vendor.test", port, server=f"localhost:{port}"),
                query("no-server", "vendor.test", port, server="nowhere.invalid"),
            ]
        )
    a = results["a"]
    assert a.success, a.message
    assert a.values["probe.dns.answer_rrs"] == 2 and a.values["probe.dns.query_succeeded"] == 1
    assert results["a-equals"].reason is Reason.ASSERTION
    assert "are not ['127.0.0.1']" in results["a-equals"].message
    assert results["nx"].reason is Reason.DNS and results["nx"].message == "rcode NXDOMAIN (expected NOERROR)"
    assert results["nx-ok"].success
    assert results["soa"].values["probe.dns.serial"] == 2026112201
    big = results["big"]
    assert big.success and big.values["probe.dns.answer_rrs"] == 10
    assert big.attributes["vantage.dns.tcp"] is True
    # The server's own name is resolved first, and timed as its own phase.
    assert set(results["by-name"].phases) == {"resolve", "connect", "request"}, results["by-name"].message
    assert results["by-name"].success
    assert results["no-server"].reason is Reason.DNS
    assert results["no-server"].message.startswith("cannot resolve the DNS server nowhere.invalid")


def test_names_and_rcodes_are_checked_at_load() -> None:
    from agent.errors import ConfigError

    from .helpers import config_from

    with pytest.raises(ConfigError, match="'NOPE' is not a DNS rcode"):
        config_from(
            [{"name": "a", "type": "dns", "target": "vendor.test", "settings": {"valid_rcodes": ["NOPE"]}}]
        )
    with pytest.raises(ConfigError, match=r"field 'settings\.type'"):
        config_from([{"name": "a", "type": "dns", "target": "vendor.test", "settings": {"type": "BOGUS"}}])


async def test_an_ipv6_server_in_brackets_and_an_equals_rule_that_is_no_regex() -> None:
    async with dns_server("::1") as port:
        server = f"[::1]:{port}"
        rule, other = {"op": "equals", "value": '"v=1 (beta+"'}, {"op": "equals", "value": "(x"}
        results, _ = await run_checks(
            [
                query("v6", "vendor.test", port, server=server),
                # "equals" compares literally: a value that is no valid regular expression is fine.
                query("odd", "odd.test", port, server=server, type="TXT", answers=[rule]),
                query("odd-not", "odd.test", port, server=server, type="TXT", answers=[other]),
            ]
        )
    assert results["v6"].success, results["v6"].message
    assert results["v6"].values["probe.dns.answer_rrs"] == 2
    assert results["odd"].success, results["odd"].message
    assert results["odd-not"].reason is Reason.ASSERTION, results["odd-not"].message


def test_server_addresses_bare_ipv6_bracketed_or_host_port() -> None:
    from plugins.dns import _server

    assert _server("2001:db8::53") == ("2001:db8::53", 53)
    assert _server("[2001:db8::53]:5353") == ("2001:db8::53", 5353)
    assert _server("[2001:db8::53]") == ("2001:db8::53", 53)
    assert _server("192.0.2.53") == ("192.0.2.53", 53)
    assert _server("ns.example:5353") == ("ns.example", 5353)
    assert _server("ns.example") == ("ns.example", 53)


def test_regex_rules_and_server_addresses_are_checked_at_load() -> None:
    from agent.errors import ConfigError

    from .helpers import config_from

    def check(**settings: Any) -> list[dict[str, Any]]:
        return [{"name": "a", "type": "dns", "target": "vendor.test", "settings": settings}]

    with pytest.raises(ConfigError, match="is not a valid regular expression"):
        config_from(check(answers=[{"op": "matches", "value": "(beta"}]))
    with pytest.raises(ConfigError, match="is not host:port"):
        config_from(check(server="[2001:db8::53]:99999"))
    config_from(check(server="2001:db8::53", answers=[{"op": "equals", "value": "(beta"}]))
