"""The ``tls`` probe: complete a TLS handshake (directly, or after STARTTLS for SMTP, IMAP and POP3)
and report the certificate chain, even when it fails verification.

    - name: smtp-relay-cert
      type: tls
      target: smtp.example.com:587
      settings:
        starttls: smtp
        min_days_left: 14
        min_version: "1.2"
        issuer: "O=Let's Encrypt"
        fingerprints: ["5e:0b:...", ...]   # pins: one certificate of the chain must match

A certificate that fails verification is still read (by a second, unverified handshake), so an
expired or self-signed one is reported with its dates, subject and fingerprint, and the reason says
which way it failed: expired, not yet valid, hostname mismatch, untrusted chain, protocol version too
old, or another handshake failure (``vantage.tls.error`` on the span, ``probe_tls_error_info``).
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from agent.sdk import (
    AssertionOp,
    AssertionOutcome,
    AssertionSource,
    AttributeValue,
    Check,
    MetricSpec,
    Probe,
    ProbeContext,
    ProbeResult,
    ProbeSettings,
    Reason,
    Sample,
    TLSInfo,
    TLSOptions,
    clip,
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
from ._toolkit.tls import TLS_METRICS, Certificate, describe, socket_tls_info, tls_values

__all__ = ["TlsProbe", "TlsSettings"]

_MAX_LINE = 8 * 1024
_SHOWN = 200  # characters of a STARTTLS line quoted in a failure
_VERSIONS = {"1.0": "TLS 1.0", "1.1": "TLS 1.1", "1.2": "TLS 1.2", "1.3": "TLS 1.3"}
_ORDER = list(_VERSIONS.values())  # oldest first


class TlsError(StrEnum):
    """Which way a TLS check failed: the ``error`` label of ``probe_tls_error_info`` and the span's
    ``vantage.tls.error``."""

    NONE = "none"
    DNS = "dns"
    CONNECT = "connect"
    STARTTLS = "starttls"
    HANDSHAKE = "handshake"
    VERSION = "version"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    HOSTNAME_MISMATCH = "hostname_mismatch"
    UNTRUSTED = "untrusted"
    INVALID = "invalid"
    """Verification failed for another reason than the ones above."""
    PIN = "pin"


# OpenSSL's X509_V_ERR_* codes, grouped into the failures an operator acts on differently.
_VERIFY_KINDS = {
    9: TlsError.NOT_YET_VALID,
    10: TlsError.EXPIRED,
    62: TlsError.HOSTNAME_MISMATCH,
    64: TlsError.HOSTNAME_MISMATCH,
    2: TlsError.UNTRUSTED,
    18: TlsError.UNTRUSTED,
    19: TlsError.UNTRUSTED,
    20: TlsError.UNTRUSTED,
    21: TlsError.UNTRUSTED,
    27: TlsError.UNTRUSTED,
}
_VERIFY_FAILURES = frozenset(_VERIFY_KINDS.values())
_REJECTED_CHAIN = _VERIFY_FAILURES | {TlsError.INVALID}  # a chain worth reading unverified
_DATED = frozenset({TlsError.EXPIRED, TlsError.NOT_YET_VALID})
# Assertions whose failure is a TLS failure (reason ``tls``), by their ``source``.
_TLS_ASSERTIONS: dict[AssertionSource | None, TlsError] = {
    AssertionSource.VERSION: TlsError.VERSION,
    AssertionSource.PIN: TlsError.PIN,
}
# OpenSSL reasons for a handshake that found no protocol version both sides accept.
_VERSION_REASONS = {
    "UNSUPPORTED_PROTOCOL",
    "TLSV1_ALERT_PROTOCOL_VERSION",
    "NO_PROTOCOLS_AVAILABLE",
    "VERSION_TOO_LOW",
}


class TlsSettings(ProbeSettings):
    """Settings of a ``tls`` check; the target is ``host:port`` (``host`` alone means port 443)."""

    starttls: Literal["smtp", "imap", "pop3"] | None = None
    """Speak the protocol's plaintext opening and upgrade with STARTTLS (STLS for POP3)."""
    tls: TLSOptions = Field(default_factory=TLSOptions)
    ip_family: IpFamily = "auto"
    ip_fallback: bool = False
    """Resolve in the other IP family when the name has no address in ``ip_family``
    (blackbox_exporter's ``ip_protocol_fallback``)."""
    min_days_left: float | None = Field(default=None, ge=0)
    """Fail (reason ``assertion``) when a certificate the server sent expires within this many days."""
    min_version: Literal["1.0", "1.1", "1.2", "1.3"] | None = None
    """Fail (reason ``tls``) when the negotiated version is older."""
    issuer: str | None = None
    """A regex the leaf certificate's issuer (RFC 4514, ``CN=R11,O=Let's Encrypt,C=US``) must match."""
    fingerprints: tuple[str, ...] = ()
    """SHA-256 fingerprints (hex, colons optional); one certificate the server sent must match."""

    _issuer: re.Pattern[str] | None = PrivateAttr(default=None)

    @field_validator("fingerprints")
    @classmethod
    def _fingerprints(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        normal = tuple(item.replace(":", "").strip().lower() for item in value)
        for shown, item in zip(value, normal, strict=True):
            if not re.fullmatch(r"[0-9a-f]{64}", item):
                raise ValueError(f"{shown!r} is not a SHA-256 fingerprint (64 hex digits, colons optional)")
        return normal

    @model_validator(mode="after")
    def _compile(self) -> TlsSettings:
        if self.issuer is not None:
            try:
                self._issuer = re.compile(self.issuer)
            except re.error as exc:
                raise ValueError(
                    f"'issuer' {self.issuer!r} is not a valid regular expression: {exc}"
                ) from None
        return self


class _HandshakeFailed(Exception):
    """The TLS handshake (or what leads to it) failed; ``kind`` is its ``probe_tls_error_info`` label."""

    def __init__(self, reason: Reason, kind: TlsError, message: str) -> None:
        super().__init__(message)
        self.reason, self.kind, self.message = reason, kind, message


class TlsProbe(Probe[TlsSettings]):
    """Completes a TLS handshake and judges the certificate chain and the protocol."""

    name = "tls"
    Settings = TlsSettings
    phase_metric = "probe.tls.duration"
    metrics = (
        *TLS_METRICS,
        *IP_METRICS,
        LOOKUP_TIME,
        MetricSpec.gauge("probe.tls.duration", "s", "Duration of the TLS probe by phase", "phase"),
        MetricSpec.gauge("probe.tls.cipher_info", "", "The negotiated cipher suite", "cipher"),
        MetricSpec.gauge(
            "probe.tls.error_info",
            "",
            "Why the handshake or verification failed (error=none when it did not)",
            "error",
        ),
    )

    def validate_target(self, target: str) -> None:
        split_host_port(target, 443)

    async def run(self, check: Check, settings: TlsSettings, ctx: ProbeContext) -> ProbeResult:
        host, port = split_host_port(check.target, 443)
        server_name = settings.tls.server_name or host
        phases: dict[str, float] = {}
        net: dict[str, float] = {}
        try:
            info = await _handshake(
                host, port, server_name, tls_context(settings.tls), settings, ctx, phases, net
            )
        except _HandshakeFailed as failed:
            failed = await _deeper_failure(failed, host, port, server_name, settings, ctx)
            rejected = await _rejected_chain(failed.kind, host, port, server_name, settings, ctx)
            return _failed(failed, _Seen.of(rejected, net), phases, ctx.clock.time())
        return _judged(settings, info, _Seen.of(info, net), phases, ctx.clock.time())


@dataclass(frozen=True, slots=True)
class _Seen:
    """What a handshake showed of the server, verified or not: its figures, samples, span
    attributes and the chain it sent."""

    values: dict[str, float] = field(default_factory=dict)
    samples: tuple[Sample, ...] = ()
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    chain: list[Certificate] = field(default_factory=list)

    @classmethod
    def of(cls, info: TLSInfo | None, net: dict[str, float]) -> _Seen:
        """What ``info`` showed, with ``net``: the run's lookup time and the address probed."""
        if info is None:
            return cls(dict(net))
        values, tls_samples = tls_values(info)
        samples = (
            *tls_samples,
            Sample("probe.tls.cipher_info", 1.0, {"cipher": info.cipher}, series="cipher"),
        )
        chain = [describe(der) for der in info.sent_chain]
        attributes = _attributes(chain[0], info) if chain else {}
        return cls({**net, **values}, samples, attributes, chain)

    def result(
        self,
        kind: TlsError,
        reason: Reason | None,
        message: str,
        phases: dict[str, float],
        outcomes: Sequence[AssertionOutcome] = (),
    ) -> ProbeResult:
        return ProbeResult(
            success=reason is None,
            reason=reason,
            message=message,
            phases=phases,
            values=self.values,
            samples=(
                Sample("probe.tls.error_info", 1.0, {"error": kind.value}, series="error"),
                *self.samples,
            ),
            attributes={"vantage.tls.error": kind.value, **self.attributes},
            assertions=tuple(outcomes),
        )


async def _deeper_failure(
    failed: _HandshakeFailed, host: str, port: int, server_name: str, settings: TlsSettings, ctx: ProbeContext
) -> _HandshakeFailed:
    """OpenSSL checks the name before trust: a self-signed or untrusted certificate for another
    name is reported as the deeper problem, not as a name mismatch."""
    if failed.kind is not TlsError.HOSTNAME_MISMATCH:
        return failed
    try:
        await _handshake(host, port, server_name, _relaxed(settings.tls, True), settings, ctx, {}, {})
    except _HandshakeFailed as deeper:
        if deeper.kind in _VERIFY_FAILURES:
            also = failed.message.split(": ", 1)[-1]
            return _HandshakeFailed(failed.reason, deeper.kind, f"{deeper.message}; also {also}")
    return failed


async def _rejected_chain(
    kind: TlsError, host: str, port: int, server_name: str, settings: TlsSettings, ctx: ProbeContext
) -> TLSInfo | None:
    """The chain that failed verification, read again without verifying, for its dates and names."""
    if kind not in _REJECTED_CHAIN:
        return None
    ctx.stage = "reading the rejected certificate chain"
    try:
        unverified = await _handshake(
            host, port, server_name, _relaxed(settings.tls, False), settings, ctx, {}, {}
        )
    except _HandshakeFailed:
        return None
    return replace(unverified, verified_chain=())


def _failed(failed: _HandshakeFailed, seen: _Seen, phases: dict[str, float], now: float) -> ProbeResult:
    """A handshake that failed, its message told with what the rejected chain shows."""
    message = failed.message
    if seen.chain and failed.kind in _DATED:
        message += _dates(seen.chain, now)
    elif seen.chain and failed.kind is TlsError.HOSTNAME_MISMATCH:
        message += f" (it names {', '.join(seen.chain[0].sans) or seen.chain[0].subject})"
    return seen.result(failed.kind, failed.reason, message, phases)


def _judged(
    settings: TlsSettings, info: TLSInfo, seen: _Seen, phases: dict[str, float], now: float
) -> ProbeResult:
    """A verified handshake held to the check's assertions; the first that fails decides."""
    outcomes = _judge(settings, info, seen.chain, now)
    broken = next((o for o in outcomes if not o.passed), None)
    if broken is None:
        return seen.result(TlsError.NONE, None, "", phases, outcomes)
    kind = _TLS_ASSERTIONS.get(broken.source)
    if kind is None:
        return seen.result(TlsError.NONE, Reason.ASSERTION, broken.message, phases, outcomes)
    return seen.result(kind, Reason.TLS, broken.message, phases, outcomes)


async def _handshake(
    host: str,
    port: int,
    server_name: str,
    context: ssl.SSLContext,
    settings: TlsSettings,
    ctx: ProbeContext,
    phases: dict[str, float],
    net: dict[str, float],
) -> TLSInfo:
    """One handshake; ``phases`` gets its phases and ``net`` the lookup time and the address probed
    (blackbox_exporter's ``probe_dns_lookup_time_seconds``, ``probe_ip_protocol``, ``probe_ip_addr_hash``)."""
    clock = ctx.clock
    mark = clock.monotonic()
    ctx.stage = f"resolving {host}"
    try:
        addresses = await resolve(host, port, settings.ip_family, fallback=settings.ip_fallback)
    except ResolveFailed as exc:
        net["probe.dns.lookup_time"] = clock.monotonic() - mark
        raise _HandshakeFailed(exc.reason, TlsError.DNS, exc.message) from None
    phases["resolve"], mark = clock.monotonic() - mark, clock.monotonic()
    net["probe.dns.lookup_time"] = phases["resolve"]
    # As blackbox_exporter: the address tried, also when it refuses; then the one that answered.
    net.update(ip_values(str(addresses[0][4][0])))
    ctx.stage = f"connecting to {host}:{port}"
    reader, writer = await _connect(addresses, host, port)
    try:
        net.update(ip_values(str(writer.get_extra_info("peername")[0])))
        phases["connect"], mark = clock.monotonic() - mark, clock.monotonic()
        if settings.starttls:
            ctx.stage = f"negotiating STARTTLS ({settings.starttls})"
            await _STARTTLS[settings.starttls](reader, writer, ctx.redact)
            phases["starttls"], mark = clock.monotonic() - mark, clock.monotonic()
        ctx.stage = "in the TLS handshake"
        try:
            await writer.start_tls(context, server_hostname=server_name)
        except ssl.SSLCertVerificationError as exc:
            kind = _VERIFY_KINDS.get(exc.verify_code, TlsError.INVALID)
            raise _mapped(exc, kind, server_name) from None
        except ssl.SSLError as exc:
            if exc.reason in _VERSION_REASONS:
                raise _HandshakeFailed(
                    Reason.TLS,
                    TlsError.VERSION,
                    f"no TLS version both sides accept ({exc.reason}; this client accepts "
                    f"{_name(context.minimum_version)} and newer)",
                ) from None
            raise _mapped(exc, TlsError.HANDSHAKE, server_name) from None
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            raise _mapped(exc, TlsError.HANDSHAKE, server_name, handshake=True) from None
        phases["handshake"] = clock.monotonic() - mark
        return socket_tls_info(ctx, writer.get_extra_info("ssl_object"))
    finally:
        writer.close()


async def _connect(
    addresses: Sequence[tuple[Any, Any, int, str, Any]],
    host: str,
    port: int,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    problem: OSError | None = None
    for family, type_, proto, _, address in addresses:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            problem = exc
            continue
        return await asyncio.open_connection(sock=sock, limit=_MAX_LINE)
    if problem is None:
        raise _HandshakeFailed(
            Reason.CONNECT, TlsError.CONNECT, f"cannot connect to {host}:{port}: no address"
        )
    raise _mapped(problem, TlsError.CONNECT, host, port)


def _mapped(
    exc: BaseException, kind: TlsError, host: str, port: int | None = None, *, handshake: bool = False
) -> _HandshakeFailed:
    """The failure map's reason and message for ``exc``, with this probe's ``kind`` of error."""
    reason, message = map_exception(exc, host=host, port=port, handshake=handshake)
    return _HandshakeFailed(reason, kind, message)


_Redact = Callable[[str], str]


def _quoted(line: str, redact: _Redact) -> str:
    """A line as a failure quotes it: redacted, cut, then ``repr``-quoted."""
    return repr(clip(line, _SHOWN, redact))


async def _line(reader: asyncio.StreamReader, redact: _Redact) -> str:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise _HandshakeFailed(
            Reason.PROTOCOL, TlsError.STARTTLS, f"STARTTLS: a line longer than {_MAX_LINE} bytes"
        ) from None
    except asyncio.IncompleteReadError as exc:
        got = _quoted(exc.partial.decode("utf-8", "replace"), redact)
        raise _HandshakeFailed(
            Reason.PROTOCOL, TlsError.STARTTLS, f"STARTTLS: the server closed the connection ({got})"
        ) from None
    return line.decode("utf-8", "replace").rstrip("\r\n")


async def _smtp_reply(reader: asyncio.StreamReader, code: str, after: str, redact: _Redact) -> list[str]:
    lines = []
    while True:
        line = await _line(reader, redact)
        lines.append(line)
        if not line.startswith(code):
            raise _HandshakeFailed(
                Reason.PROTOCOL,
                TlsError.STARTTLS,
                f"STARTTLS: expected {code} {after}, got {_quoted(line, redact)}",
            )
        if line[3:4] != "-":
            return lines


async def _smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, redact: _Redact) -> None:
    await _smtp_reply(reader, "220", "as the greeting", redact)
    writer.write(b"EHLO vantage\r\n")
    extensions = await _smtp_reply(reader, "250", "after EHLO", redact)
    if not any(line[4:].strip().upper() == "STARTTLS" for line in extensions[1:]):
        raise _HandshakeFailed(
            Reason.PROTOCOL, TlsError.STARTTLS, "STARTTLS: the server does not offer STARTTLS after EHLO"
        )
    writer.write(b"STARTTLS\r\n")
    await _smtp_reply(reader, "220", "after STARTTLS", redact)


async def _imap(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, redact: _Redact) -> None:
    greeting = await _line(reader, redact)
    if not greeting.upper().startswith("* OK"):
        raise _HandshakeFailed(
            Reason.PROTOCOL,
            TlsError.STARTTLS,
            f"STARTTLS: expected '* OK' greeting, got {_quoted(greeting, redact)}",
        )
    writer.write(b"v1 STARTTLS\r\n")
    while not (line := await _line(reader, redact)).startswith("v1 "):
        continue
    if not line.upper().startswith("V1 OK"):
        raise _HandshakeFailed(
            Reason.PROTOCOL, TlsError.STARTTLS, f"STARTTLS refused: {_quoted(line, redact)}"
        )


async def _pop3(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, redact: _Redact) -> None:
    greeting = await _line(reader, redact)
    if not greeting.startswith("+OK"):
        raise _HandshakeFailed(
            Reason.PROTOCOL,
            TlsError.STARTTLS,
            f"STARTTLS: expected '+OK' greeting, got {_quoted(greeting, redact)}",
        )
    writer.write(b"STLS\r\n")
    line = await _line(reader, redact)
    if not line.startswith("+OK"):
        raise _HandshakeFailed(Reason.PROTOCOL, TlsError.STARTTLS, f"STLS refused: {_quoted(line, redact)}")


_STARTTLS = {"smtp": _smtp, "imap": _imap, "pop3": _pop3}


@lru_cache(maxsize=64)
def _relaxed(options: TLSOptions, verify: bool) -> ssl.SSLContext:
    """A context like ``tls_context(options)`` without the hostname check, and with no verification
    at all unless ``verify``: for telling failures apart and reading a rejected chain."""
    context = tls_context.__wrapped__(options)  # a new context, not the shared cached one
    context.check_hostname = False
    if not verify:
        context.verify_mode = ssl.CERT_NONE
    return context


def _name(version: ssl.TLSVersion) -> str:
    return {
        ssl.TLSVersion.TLSv1: "TLS 1.0",
        ssl.TLSVersion.TLSv1_1: "TLS 1.1",
        ssl.TLSVersion.TLSv1_2: "TLS 1.2",
        ssl.TLSVersion.TLSv1_3: "TLS 1.3",
    }.get(version, "any version")


def _judge(
    settings: TlsSettings, info: TLSInfo, chain: list[Certificate], now: float
) -> list[AssertionOutcome]:
    outcomes = []
    if settings.min_days_left is not None and chain:
        first = min(chain, key=lambda cert: cert.not_after)
        days = (first.not_after - now) / 86400
        outcomes.append(
            AssertionOutcome(
                f"days left >= {settings.min_days_left:g}",
                days >= settings.min_days_left,
                actual=f"{days:.1f}",
                message=f"the certificate {first.subject} expires in {days:.1f} days, on "
                f"{_date(first.not_after)} (at least {settings.min_days_left:g} required)",
                source=AssertionSource.EXPIRY,
                op=AssertionOp.GE,
            )
        )
    if settings.min_version is not None:
        wanted = _VERSIONS[settings.min_version]
        ok = info.version in _ORDER and _ORDER.index(info.version) >= _ORDER.index(wanted)
        outcomes.append(
            AssertionOutcome(
                f"version >= {wanted}",
                ok,
                actual=info.version,
                message=f"the server negotiated {info.version}, older than the required {wanted}",
                source=AssertionSource.VERSION,
                op=AssertionOp.GE,
            )
        )
    if settings._issuer is not None and chain:
        issuer = chain[0].issuer
        outcomes.append(
            AssertionOutcome(
                f"issuer matches {settings.issuer!r}",
                bool(settings._issuer.search(issuer)),
                actual=issuer,
                message=f"the certificate was issued by {issuer!r}, which does not match {settings.issuer!r}",
                source=AssertionSource.ISSUER,
                op=AssertionOp.MATCHES,
            )
        )
    if settings.fingerprints:
        sent = [cert.fingerprint_sha256 for cert in chain]
        outcomes.append(
            AssertionOutcome(
                "a certificate matches a pinned fingerprint",
                any(fingerprint in settings.fingerprints for fingerprint in sent),
                actual=", ".join(sent),
                message="no certificate the server sent matches a pinned fingerprint "
                f"(leaf {sent[0] if sent else '-'})",
                source=AssertionSource.PIN,
                op=AssertionOp.IN,
            )
        )
    return outcomes


def _attributes(leaf: Certificate, info: TLSInfo) -> dict[str, AttributeValue]:
    # OpenTelemetry's tls.* semantic conventions.
    return {
        "tls.protocol.version": info.version.removeprefix("TLS "),
        "tls.cipher": info.cipher,
        "tls.server.subject": leaf.subject,
        "tls.server.issuer": leaf.issuer,
        "tls.server.hash.sha256": leaf.fingerprint_sha256.upper(),
        "tls.server.not_after": datetime.fromtimestamp(leaf.not_after, UTC).isoformat(),
        "tls.server.not_before": datetime.fromtimestamp(leaf.not_before, UTC).isoformat(),
    }


def _dates(chain: list[Certificate], now: float) -> str:
    for cert in chain:
        if cert.not_after < now:
            return f" ({cert.subject} expired on {_date(cert.not_after)})"
        if cert.not_before > now:
            return f" ({cert.subject} is valid from {_date(cert.not_before)})"
    return ""


def _date(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")
