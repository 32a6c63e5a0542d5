"""The ``dns`` probe: one query of a chosen type and class to the system resolver or a given
server, over UDP (with a TCP retry when the answer is truncated), TCP, or TLS (DNS over TLS).

Metric names and phases follow blackbox_exporter's dns prober. The target is the name to look up;
``server`` is what blackbox calls the target. The probe opens its own sockets and leaves only the
message format to dnspython: a UDP socket is connected, so that a closed port (ICMP port
unreachable) fails the run at once as refused instead of waiting out the timeout.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
from collections.abc import Sequence
from enum import StrEnum
from typing import Any, Literal

import dns.exception
import dns.flags
import dns.inet
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset
from pydantic import Field, field_validator, model_validator

from agent.sdk import (
    AttributeValue,
    Check,
    MetricSpec,
    Probe,
    ProbeContext,
    ProbeResult,
    ProbeSettings,
    Reason,
    TLSOptions,
    tls_context,
)

from ._toolkit.net import (
    IP_METRICS,
    LOOKUP_TIME,
    IpFamily,
    ResolveFailed,
    ip_values,
    map_exception,
    resolve,
    split_host_port,
)
from ._toolkit.sockets import ConnectFailed, SourceAddress, connect, for_source

__all__ = ["DnsProbe", "DnsSettings", "record_text"]

AddrInfo = tuple[Any, Any, int, str, Any]
_MAX_DATAGRAMS = 16  # stray datagrams (not the answer to this query) read before giving up
_SHOWN = 10  # records quoted in a failure message


class AnswerOp(StrEnum):
    """How a rule compares a section's records with its values."""

    CONTAINS = "contains"
    """Each value (a regular expression) is found in some record (blackbox's
    ``fail_if_none_matches_regexp``, which passes when any of its regexes is found: one value
    joining them, ``(?:a)|(?:b)``)."""
    EQUALS = "equals"
    """The records are exactly the values, in any order, compared literally."""
    MATCHES = "matches"
    """There are records, and every record is found by some value (a regular expression); with one
    value per rule, blackbox's ``fail_if_not_matches_regexp``."""
    NOT_MATCHES = "not_matches"
    """No record is found by any value (blackbox's ``fail_if_matches_regexp``)."""
    ALL_MATCH = "all_match"
    """blackbox's ``fail_if_all_match_regexp``, with blackbox's verdict: the rule fails when some
    record is not found by every value ("Not all RRs matched regexp"); no records pass."""


class AnswerRule(ProbeSettings):
    """A rule on one section's records, each as text: its data (``10 mx1.example.``) or, with
    ``match_on: record``, the whole record as blackbox_exporter matches it
    (``example.com.<TAB>300<TAB>IN<TAB>MX<TAB>10 mx1.example.``)."""

    op: AnswerOp
    value: str | list[str]
    match_on: Literal["data", "record"] = "data"

    @model_validator(mode="after")
    def _regex(self) -> AnswerRule:
        if self.op is AnswerOp.EQUALS:
            return self  # compared literally: any text is a valid value
        for item in [self.value] if isinstance(self.value, str) else self.value:
            try:
                re.compile(item)
            except re.error as exc:
                raise ValueError(f"{item!r} is not a valid regular expression: {exc}") from None
        return self


class DnsSettings(ProbeSettings):
    type: str = "A"
    """Any record type dnspython knows (``A``, ``AAAA``, ``MX``, ``TXT``, ``SOA``, ``ANY``, ``DS``, ...)."""
    query_class: Literal["IN", "CH", "HS", "ANY"] = "IN"
    server: str | None = None
    """``host``, ``host:port``, an IPv6 literal or ``[v6]:port`` of the server to ask; the system
    resolver's first server if unset. Port 53, or 853 for ``transport: tls``."""
    transport: Literal["udp", "tcp", "tls"] = "udp"
    tls_options: TLSOptions = Field(default_factory=TLSOptions)
    """For ``transport: tls``; the name checked is ``server_name``, else the server's host."""
    ip_family: IpFamily = "auto"
    ip_fallback: bool = False
    source_ip_address: SourceAddress | None = None
    valid_rcodes: tuple[str, ...] = ("NOERROR",)
    answers: tuple[AnswerRule, ...] = ()
    authority: tuple[AnswerRule, ...] = ()
    additional: tuple[AnswerRule, ...] = ()
    recursion: bool = True

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        try:
            return dns.rdatatype.to_text(dns.rdatatype.from_text(value.upper()))
        except dns.exception.DNSException:
            raise ValueError(f"{value!r} is not a DNS record type (A, AAAA, MX, TXT, ...)") from None

    @field_validator("valid_rcodes")
    @classmethod
    def _rcodes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for code in value:
            try:
                dns.rcode.from_text(code)
            except dns.rcode.UnknownRcode:
                raise ValueError(f"{code!r} is not a DNS rcode (NOERROR, NXDOMAIN, SERVFAIL, ...)") from None
        return tuple(code.upper() for code in value)

    @field_validator("server")
    @classmethod
    def _server_address(cls, value: str | None) -> str | None:
        if value is not None:
            _server(value)  # ValueError names the value when it is not host, host:port or [v6]:port
        return value


class DnsProbe(Probe[DnsSettings]):
    """Asks one DNS question and judges the answer."""

    name = "dns"
    Settings = DnsSettings
    phase_metric = "probe.dns.duration"
    metrics = (
        MetricSpec.gauge(
            "probe.dns.duration",
            "s",
            "Duration of the DNS probe by phase: resolve, connect, request",
            "phase",
        ),
        LOOKUP_TIME,
        MetricSpec.gauge("probe.dns.answer_rrs", "", "Records in the answer section"),
        MetricSpec.gauge("probe.dns.authority_rrs", "", "Records in the authority section"),
        MetricSpec.gauge("probe.dns.additional_rrs", "", "Records in the additional section"),
        MetricSpec.gauge("probe.dns.serial", "", "The SOA serial, when the answer has one"),
        MetricSpec.gauge("probe.dns.query_succeeded", "", "1 if a response was received"),
        *IP_METRICS,
    )

    def validate_target(self, target: str) -> None:
        try:
            dns.name.from_text(target)
        except dns.exception.DNSException as exc:
            raise ValueError(f"{target!r} is not a DNS name: {exc}") from None

    async def run(self, check: Check, settings: DnsSettings, ctx: ProbeContext) -> ProbeResult:
        default_port = 853 if settings.transport == "tls" else 53
        try:
            host, port = _server(settings.server, default_port)
        except dns.exception.DNSException as exc:
            return ProbeResult.failure(Reason.DNS, f"no DNS server to ask: {exc}")
        query = dns.message.make_query(
            check.target,
            dns.rdatatype.from_text(settings.type),
            dns.rdataclass.from_text(settings.query_class),
        )
        if not settings.recursion:
            query.flags &= ~dns.flags.RD
        clock = ctx.clock
        mark = clock.monotonic()
        phases: dict[str, float] = {}
        values: dict[str, float] = {"probe.dns.query_succeeded": 0.0}
        ctx.stage = f"resolving the DNS server {host}"
        try:
            infos = await resolve(host, port, settings.ip_family, fallback=settings.ip_fallback)
            infos = for_source(infos, settings.source_ip_address, host)
        except (ResolveFailed, ConnectFailed) as exc:
            values["probe.dns.lookup_time"] = clock.monotonic() - mark
            message = exc.message
            if isinstance(exc, ResolveFailed):
                message = f"cannot resolve the DNS server {host} ({exc.message})"
            return ProbeResult.failure(exc.reason, message, values=values)
        phases["resolve"] = values["probe.dns.lookup_time"] = clock.monotonic() - mark
        # As blackbox_exporter, the address metrics say which address was asked, answered or not.
        values.update(ip_values(str(infos[0][4][0])))
        exchange = _Exchange(query, host, port, settings, ctx, phases)
        try:
            response, used_tcp = await exchange.run(infos)
        except _Unanswered as exc:
            message = f"no answer from {exchange.where}: {exc}"
            return ProbeResult.failure(Reason.DNS, message, values=values, phases=phases)
        except (OSError, EOFError, asyncio.IncompleteReadError, dns.exception.DNSException) as exc:
            reason, message = map_exception(exc, host=host, port=port, handshake=exchange.handshaking)
            return ProbeResult.failure(reason, message, values=values, phases=phases)
        values.update(ip_values(exchange.address or ""))  # the address that answered
        return _judged(settings, response, used_tcp, values, phases)


def _judged(
    settings: DnsSettings,
    response: dns.message.Message,
    used_tcp: bool,
    values: dict[str, float],
    phases: dict[str, float],
) -> ProbeResult:
    """A response held to the check, in blackbox_exporter's order: the rcode, then the rules on the
    answer, authority and additional sections; the first that fails decides."""
    sections = {
        "answer": _records(response.answer),
        "authority": _records(response.authority),
        "additional": _records(response.additional),
    }
    values["probe.dns.query_succeeded"] = 1.0
    for section, records in sections.items():
        values[f"probe.dns.{section}_rrs"] = float(len(records))
    for rrset in response.answer:  # blackbox reads the serial from the answer section only
        if rrset.rdtype == dns.rdatatype.SOA:
            values["probe.dns.serial"] = float(rrset[0].serial)
    rcode = dns.rcode.to_text(response.rcode())
    attributes: dict[str, AttributeValue] = {"vantage.dns.rcode": rcode, "vantage.dns.tcp": used_tcp}
    if rcode not in settings.valid_rcodes:
        message = f"rcode {rcode} (expected {', '.join(settings.valid_rcodes)})"
        return ProbeResult.failure(Reason.DNS, message, values=values, attributes=attributes, phases=phases)
    rules = (
        *(("answer", rule) for rule in settings.answers),
        *(("authority", rule) for rule in settings.authority),
        *(("additional", rule) for rule in settings.additional),
    )
    for section, rule in rules:
        problem = _judge(rule, section, sections[section])
        if problem:
            return ProbeResult.failure(
                Reason.ASSERTION, problem, values=values, attributes=attributes, phases=phases
            )
    return ProbeResult(success=True, values=values, attributes=attributes, phases=phases)


class _Unanswered(Exception):
    """Messages came back, but none answers the query."""


class _Exchange:
    """One query and its response over the check's transport, timing the ``connect`` and
    ``request`` phases; ``address`` is the server address used, once a socket was opened."""

    def __init__(
        self,
        query: dns.message.Message,
        host: str,
        port: int,
        settings: DnsSettings,
        ctx: ProbeContext,
        phases: dict[str, float],
    ) -> None:
        self.query, self.host, self.port = query, host, port
        self.settings, self.ctx, self.phases = settings, ctx, phases
        self.address: str | None = None
        self.handshaking = False
        self.where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def run(self, infos: Sequence[AddrInfo]) -> tuple[dns.message.Message, bool]:
        """The response, and whether it came over TCP (or TLS)."""
        transport = self.settings.transport
        if transport != "udp":
            return await self._stream(infos, tls=transport == "tls"), True
        response = await self._datagram(infos)
        if not response.flags & dns.flags.TC:
            return response, False
        # Truncated: ask again over TCP, at the address that answered.
        used = [info for info in infos if str(info[4][0]) == self.address] or list(infos)
        return await self._stream(used, tls=False), True

    async def _datagram(self, infos: Sequence[AddrInfo]) -> dns.message.Message:
        loop = asyncio.get_running_loop()
        clock = self.ctx.clock
        mark = clock.monotonic()
        self.ctx.stage = f"connecting to {self.where} (UDP)"
        datagram = [(family, socket.SOCK_DGRAM, 0, name, address) for family, _, _, name, address in infos]
        sock, self.address = await connect(datagram, self.settings.source_ip_address)
        with sock:
            self.phases["connect"] = clock.monotonic() - mark
            mark = clock.monotonic()
            self.ctx.stage = f"waiting for {self.where} to answer"
            await loop.sock_sendall(sock, self.query.to_wire())
            for _ in range(_MAX_DATAGRAMS):
                # A connected socket: ECONNREFUSED here is the ICMP port unreachable of a closed port.
                data = await loop.sock_recv(sock, 65535)
                try:
                    response = dns.message.from_wire(data)
                except dns.exception.DNSException:
                    continue  # not a DNS message: a stray datagram
                if self.query.is_response(response):
                    self.phases["request"] = clock.monotonic() - mark
                    return response
            raise _Unanswered(f"{_MAX_DATAGRAMS} datagrams came, none the answer to the query")

    async def _stream(
        self, infos: Sequence[tuple[Any, Any, int, str, Any]], tls: bool
    ) -> dns.message.Message:
        clock = self.ctx.clock
        mark = clock.monotonic()
        self.ctx.stage = f"connecting to {self.where} ({'TLS' if tls else 'TCP'})"
        stream = [(family, socket.SOCK_STREAM, 0, name, address) for family, _, _, name, address in infos]
        sock, self.address = await connect(stream, self.settings.source_ip_address)
        context = tls_context(self.settings.tls_options) if tls else None
        self.handshaking = tls
        try:
            reader, writer = await asyncio.open_connection(
                sock=sock,
                ssl=context,
                server_hostname=(self.settings.tls_options.server_name or self.host) if tls else None,
            )
        except BaseException:
            sock.close()
            raise
        self.handshaking = False
        try:
            self.phases["connect"] = self.phases.get("connect", 0.0) + clock.monotonic() - mark
            mark = clock.monotonic()
            self.ctx.stage = f"waiting for {self.where} to answer"
            wire = self.query.to_wire()
            writer.write(struct.pack("!H", len(wire)) + wire)
            await writer.drain()
            (size,) = struct.unpack("!H", await reader.readexactly(2))
            response = dns.message.from_wire(await reader.readexactly(size))
            if not self.query.is_response(response):
                raise _Unanswered("the response does not answer the query")
            self.phases["request"] = self.phases.get("request", 0.0) + clock.monotonic() - mark
            return response
        finally:
            writer.close()


def _server(server: str | None, default_port: int = 53) -> tuple[str, int]:
    """``host``, ``host:port``, a bare IPv6 literal (``2001:db8::53``) or ``[v6]:port``."""
    if server is None:
        return str(dns.resolver.get_default_resolver().nameservers[0]), default_port
    if dns.inet.is_address(server):  # an IP literal alone, IPv6 included: its colons are no port
        return server, default_port
    return split_host_port(server, default_port)


class _Record:
    """A record as the two texts a rule can match: its data, and the whole record."""

    __slots__ = ("data", "record")

    def __init__(self, data: str, record: str) -> None:
        self.data, self.record = data, record


def _records(rrsets: list[dns.rrset.RRset]) -> list[_Record]:
    return [_Record(rdata.to_text(), record_text(rrset, rdata)) for rrset in rrsets for rdata in rrset]


def record_text(rrset: dns.rrset.RRset, rdata: Any) -> str:
    """A record as Go's ``dns.RR.String()`` writes it, which blackbox_exporter's regexes match:
    owner, TTL, class, type and data, separated by tabs (``example.com.\\t300\\tIN\\tA\\t192.0.2.1``)."""
    return "\t".join(
        (
            rrset.name.to_text(),
            str(rrset.ttl),
            dns.rdataclass.to_text(rrset.rdclass),
            dns.rdatatype.to_text(rrset.rdtype),
            rdata.to_text(),
        )
    )


def _judge(rule: AnswerRule, section: str, records: list[_Record]) -> str | None:
    values = [rule.value] if isinstance(rule.value, str) else rule.value
    texts = [record.record if rule.match_on == "record" else record.data for record in records]
    shown = ", ".join(repr(text) if "\t" in text else text for text in texts[:_SHOWN]) or "none"
    if len(texts) > _SHOWN:
        shown += f", and {len(texts) - _SHOWN} more"
    records_are = f"the {section} records ({shown})"
    match rule.op:
        case AnswerOp.CONTAINS if not all(any(re.search(v, t) for t in texts) for v in values):
            return f"{records_are} do not contain {values}"
        case AnswerOp.EQUALS if sorted(texts) != sorted(values):
            return f"{records_are} are not {values}"
        case AnswerOp.MATCHES if not texts:
            return f"no {section} records to match {values}"
        case AnswerOp.MATCHES if not all(any(re.search(v, t) for v in values) for t in texts):
            return f"not every one of {records_are} matches {values}"
        case AnswerOp.NOT_MATCHES if any(re.search(v, t) for v in values for t in texts):
            return f"one of {records_are} matches {values}"
        case AnswerOp.ALL_MATCH if not all(re.search(v, t) for v in values for t in texts):
            return f"not all of {records_are} match {values} (all_match)"
    return None
