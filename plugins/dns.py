"""The ``dns`` probe: one query of a chosen type to the system resolver or a given server, over UDP
with TCP fallback when the answer is truncated (dnspython does the protocol).

Metric names follow blackbox_exporter's dns prober. The target is the name to look up.
"""

from __future__ import annotations

import re
import socket
from enum import StrEnum
from typing import Literal

import dns.asyncquery
import dns.exception
import dns.flags
import dns.inet
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver
from pydantic import field_validator, model_validator

from agent.sdk import (
    AttributeValue,
    Check,
    MetricSpec,
    Probe,
    ProbeContext,
    ProbeResult,
    ProbeSettings,
    Reason,
)

from ._toolkit.net import ResolveFailed, map_exception, resolve, split_host_port

__all__ = ["DnsProbe", "DnsSettings"]

RecordType = Literal["A", "AAAA", "CNAME", "MX", "TXT", "NS", "SOA", "SRV", "CAA", "PTR"]


class AnswerOp(StrEnum):
    """How an answer rule compares the answers with its values."""

    CONTAINS = "contains"
    """Each value (a regular expression) is found in some answer."""
    EQUALS = "equals"
    """The answers are exactly the values, in any order, compared literally."""
    MATCHES = "matches"
    """Every answer is found by some value (a regular expression)."""
    NOT_MATCHES = "not_matches"
    """No answer is found by any value (a regular expression)."""


class AnswerRule(ProbeSettings):
    """A rule on the answer section, each record as text (``10 mx1.example.``)."""

    op: AnswerOp
    value: str | list[str]

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
    type: RecordType = "A"
    server: str | None = None
    """``host``, ``host:port``, an IPv6 literal or ``[v6]:port`` of the server to ask; the system
    resolver's first server if unset."""
    valid_rcodes: tuple[str, ...] = ("NOERROR",)
    answers: tuple[AnswerRule, ...] = ()
    recursion: bool = True

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
        MetricSpec.gauge("probe.dns.duration", "s", "Duration of the DNS probe by phase", "phase"),
        MetricSpec.gauge("probe.dns.lookup_time", "s", "Time taken for the DNS query"),
        MetricSpec.gauge("probe.dns.answer_rrs", "", "Records in the answer section"),
        MetricSpec.gauge("probe.dns.authority_rrs", "", "Records in the authority section"),
        MetricSpec.gauge("probe.dns.additional_rrs", "", "Records in the additional section"),
        MetricSpec.gauge("probe.dns.serial", "", "The SOA serial, when the answer has one"),
        MetricSpec.gauge("probe.dns.query_succeeded", "", "1 if a response was received"),
    )

    def validate_target(self, target: str) -> None:
        try:
            dns.name.from_text(target)
        except dns.exception.DNSException as exc:
            raise ValueError(f"{target!r} is not a DNS name: {exc}") from None

    async def run(self, check: Check, settings: DnsSettings, ctx: ProbeContext) -> ProbeResult:
        try:
            host, port = _server(settings.server)
        except dns.exception.DNSException as exc:
            return ProbeResult.failure(Reason.DNS, f"no DNS server to ask: {exc}")
        query = dns.message.make_query(check.target, dns.rdatatype.from_text(settings.type))
        if not settings.recursion:
            query.flags &= ~dns.flags.RD
        clock = ctx.clock
        started = clock.monotonic()
        phases: dict[str, float] = {}
        address = host
        if not dns.inet.is_address(host):
            ctx.stage = f"resolving the DNS server {host}"
            try:
                infos = await resolve(host, port, "auto", socket.SOCK_DGRAM)
            except ResolveFailed as exc:
                return ProbeResult.failure(
                    exc.reason,
                    f"cannot resolve the DNS server {host} ({exc.message})",
                    values={"probe.dns.query_succeeded": 0},
                )
            address = str(infos[0][4][0])
        phases["resolve"] = clock.monotonic() - started
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # an IPv6 literal in brackets
        ctx.stage = f"waiting for {where} to answer"
        try:
            response, used_tcp = await dns.asyncquery.udp_with_fallback(query, address, port=port)
        except (OSError, dns.exception.DNSException) as exc:
            reason, message = map_exception(exc, host=host, port=port)
            return ProbeResult.failure(
                reason, message, values={"probe.dns.query_succeeded": 0}, phases=phases
            )
        elapsed = clock.monotonic() - started
        phases["request"] = elapsed - phases["resolve"]
        answers = [rd.to_text() for rrset in response.answer for rd in rrset]
        values = {
            "probe.dns.query_succeeded": 1.0,
            "probe.dns.lookup_time": elapsed,
            "probe.dns.answer_rrs": float(len(answers)),
            "probe.dns.authority_rrs": float(sum(len(r) for r in response.authority)),
            "probe.dns.additional_rrs": float(sum(len(r) for r in response.additional)),
        }
        for rrset in (*response.answer, *response.authority):
            if rrset.rdtype == dns.rdatatype.SOA:
                values["probe.dns.serial"] = float(rrset[0].serial)
        rcode = dns.rcode.to_text(response.rcode())
        attributes: dict[str, AttributeValue] = {"vantage.dns.rcode": rcode, "vantage.dns.tcp": used_tcp}
        if rcode not in settings.valid_rcodes:
            return ProbeResult.failure(
                Reason.DNS,
                f"rcode {rcode} (expected {', '.join(settings.valid_rcodes)})",
                values=values,
                attributes=attributes,
                phases=phases,
            )
        for rule in settings.answers:
            problem = _judge(rule, answers)
            if problem:
                return ProbeResult.failure(
                    Reason.ASSERTION, problem, values=values, attributes=attributes, phases=phases
                )
        return ProbeResult(success=True, values=values, attributes=attributes, phases=phases)


def _server(server: str | None) -> tuple[str, int]:
    """``host``, ``host:port``, a bare IPv6 literal (``2001:db8::53``) or ``[v6]:port``."""
    if server is None:
        return str(dns.resolver.get_default_resolver().nameservers[0]), 53
    if dns.inet.is_address(server):  # an IP literal alone, IPv6 included: its colons are no port
        return server, 53
    return split_host_port(server, 53)


def _judge(rule: AnswerRule, answers: list[str]) -> str | None:
    values = [rule.value] if isinstance(rule.value, str) else rule.value
    shown = ", ".join(answers) or "no answers"
    match rule.op:
        case AnswerOp.CONTAINS if not all(any(re.search(v, a) for a in answers) for v in values):
            return f"the answers ({shown}) do not contain {values}"
        case AnswerOp.EQUALS if sorted(answers) != sorted(values):
            return f"the answers ({shown}) are not {values}"
        case AnswerOp.MATCHES if not all(any(re.search(v, a) for v in values) for a in answers):
            return f"not every answer ({shown}) matches {values}"
        case AnswerOp.NOT_MATCHES if any(re.search(v, a) for v in values for a in answers):
            return f"an answer ({shown}) matches {values}"
    return None
