"""The ``tcp`` probe: connect, optionally start TLS, and hold a send/expect dialogue.

For services that speak a line protocol (SMTP banners, Redis ``PING``, a vendor's socket API):

    settings:
      tls: false
      dialogue:
        - expect: "^220 ([^ ]+)"     # read lines until one matches
        - send: "EHLO ${1}\\r\\n"     # ${1}: a group the expect just above captured
        - expect: "^250 "
        - send: "STARTTLS\\r\\n"
        - expect: "^220 "
        - starttls: true             # the TLS handshake, on the same connection
        - send: "QUIT\\r\\n"

An ``expect`` reads lines until one matches, as blackbox_exporter's ``query_response`` does (a
multi-line ``EHLO`` reply, the notices an IRC server sends first); it fails when the connection
closes first, and reads at most ``_MAX_LINES`` lines or ``_MAX_BYTES`` bytes for one turn.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass

from pydantic import Field, PrivateAttr, model_validator

from agent.sdk import (
    Check,
    MetricSpec,
    Probe,
    ProbeContext,
    ProbeResult,
    ProbeSettings,
    Reason,
    Sample,
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
from ._toolkit.sockets import ConnectFailed, SourceAddress, connect, for_source
from ._toolkit.tls import TLS_METRICS, handshake_values

__all__ = ["TcpProbe", "TcpSettings", "expand"]

_MAX_LINE = 64 * 1024
_MAX_LINES = 1000  # lines one expect reads before it gives up
_MAX_BYTES = 1024 * 1024  # bytes one expect reads before it gives up
_SHOWN = 200  # characters of a received line quoted in a failure
# Go's regexp.Expand template: $$, ${name}, $name (name: letters, digits, underscores).
_TEMPLATE = re.compile(r"\$(?:(\$)|\{(\w+)\}|(\w+))")


class Exchange(ProbeSettings):
    """One turn of the dialogue: text to send, a regex a line received must match, or the TLS
    handshake (``starttls: true``)."""

    send: str | None = None
    """Sent as written; right after an ``expect`` its groups are filled in (``${1}``, ``${name}``)."""
    expect: str | None = None
    starttls: bool = False

    _pattern: re.Pattern[str] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _one(self) -> Exchange:
        if (self.send is not None) + (self.expect is not None) + self.starttls != 1:
            raise ValueError("each dialogue turn has one of 'send', 'expect' or 'starttls: true'")
        if self.expect is not None:
            try:
                self._pattern = re.compile(self.expect)
            except re.error as exc:
                raise ValueError(
                    f"'expect' {self.expect!r} is not a valid regular expression: {exc}"
                ) from None
        return self


class TcpSettings(ProbeSettings):
    """Settings of a ``tcp`` check; the target is ``host:port``."""

    ip_family: IpFamily = "auto"
    ip_fallback: bool = False
    """Use the other family when the name has no address of ``ip_family``."""
    source_ip_address: SourceAddress | None = None
    """The local address to connect from."""
    tls: bool = False
    """Start TLS right after connecting (``tls_options`` for the CA, client certificate, ...)."""
    tls_options: TLSOptions = Field(default_factory=TLSOptions)
    dialogue: tuple[Exchange, ...] = ()

    @model_validator(mode="after")
    def _one_handshake(self) -> TcpSettings:
        upgrades = sum(turn.starttls for turn in self.dialogue)
        if upgrades and self.tls:
            raise ValueError("'starttls' upgrades a plain connection, and 'tls: true' starts TLS at once")
        if upgrades > 1:
            raise ValueError("a dialogue has at most one 'starttls' turn")
        return self


class TcpProbe(Probe[TcpSettings]):
    """Connects to ``host:port`` and talks the dialogue."""

    name = "tcp"
    Settings = TcpSettings
    phase_metric = "probe.tcp.duration"
    metrics = (
        MetricSpec.gauge("probe.tcp.duration", "s", "Duration of the TCP probe by phase", "phase"),
        LOOKUP_TIME,
        MetricSpec.gauge("probe.failed_due_to_regex", "", "1 if an expect found no line matching it"),
        *IP_METRICS,
        *TLS_METRICS,
    )

    def validate_target(self, target: str) -> None:
        split_host_port(target)

    async def run(self, check: Check, settings: TcpSettings, ctx: ProbeContext) -> ProbeResult:
        host, port = split_host_port(check.target)
        server_name = settings.tls_options.server_name or host
        clock = ctx.clock
        mark = clock.monotonic()
        phases: dict[str, float] = {}
        values: dict[str, float] = {"probe.failed_due_to_regex": 0.0}
        ctx.keep_values(values)  # what a run cut by its timeout found: filled as the run goes
        samples: list[Sample] = []
        ctx.stage = f"resolving {host}"
        try:
            addresses = await resolve(host, port, settings.ip_family, fallback=settings.ip_fallback)
        except ResolveFailed as exc:
            values["probe.dns.lookup_time"] = clock.monotonic() - mark
            return ProbeResult.failure(exc.reason, exc.message, values=values)
        phases["resolve"] = values["probe.dns.lookup_time"] = clock.monotonic() - mark
        mark = clock.monotonic()
        ctx.stage = f"connecting to {host}:{port}"
        try:
            usable = for_source(addresses, settings.source_ip_address, host)
        except ConnectFailed as exc:
            return ProbeResult.failure(exc.reason, exc.message, values=values, phases=phases)
        # As blackbox_exporter, the address metrics say which address was tried, connected or not.
        values.update(ip_values(str(usable[0][4][0])))
        try:
            sock, address = await connect(usable, settings.source_ip_address)
        except OSError as exc:
            return ProbeResult.failure(
                *map_exception(exc, host=host, port=port), values=values, phases=phases
            )
        values.update(ip_values(address))
        context = tls_context(settings.tls_options) if settings.tls else None
        if context is not None:
            ctx.stage = "in the TLS handshake"
        try:
            reader, writer = await asyncio.open_connection(
                sock=sock, ssl=context, limit=_MAX_LINE, server_hostname=server_name if context else None
            )
        except (OSError, asyncio.IncompleteReadError) as exc:
            sock.close()
            reason, message = map_exception(exc, host=host, port=port, handshake=True)
            return ProbeResult.failure(reason, message, values=values, phases=phases)
        if context is not None:
            _tls_recorded(ctx, writer.get_extra_info("ssl_object"), values, samples)
        phases["connect"] = clock.monotonic() - mark
        mark = clock.monotonic()
        try:
            problem = await _talk(settings, reader, writer, host, port, server_name, ctx, values, samples)
        finally:
            writer.close()
        phases["dialogue"] = clock.monotonic() - mark
        if problem is None:
            return ProbeResult(success=True, values=values, phases=phases, samples=tuple(samples))
        if problem.reason is Reason.ASSERTION:
            values["probe.failed_due_to_regex"] = 1.0
        return ProbeResult.failure(
            problem.reason, problem.message, values=values, phases=phases, samples=tuple(samples)
        )


@dataclass(frozen=True, slots=True)
class _Failed:
    """Why a dialogue stopped: a reason and a redacted message."""

    reason: Reason
    message: str


async def _talk(
    settings: TcpSettings,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    host: str,
    port: int,
    server_name: str,
    ctx: ProbeContext,
    values: dict[str, float],
    samples: list[Sample],
) -> _Failed | None:
    """The dialogue, turn by turn; the first turn that fails ends it. A ``starttls`` turn records
    its handshake's TLS metrics in ``values`` and ``samples``."""
    matched: re.Match[str] | None = None  # the expect just before this turn, if it was one
    for number, turn in enumerate(settings.dialogue, start=1):
        previous, matched = matched, None
        try:
            if turn.send is not None:
                text = turn.send if previous is None else expand(turn.send, previous)
                ctx.stage = f"turn {number}: sending"
                writer.write(text.encode())
                await writer.drain()
            elif turn.starttls:
                ctx.stage = f"turn {number}: in the TLS handshake"
                await writer.start_tls(tls_context(settings.tls_options), server_hostname=server_name)
                _tls_recorded(ctx, writer.get_extra_info("ssl_object"), values, samples)
            else:
                found = await _expect(reader, turn, number, ctx)
                if isinstance(found, _Failed):
                    return found
                matched = found
        except (OSError, asyncio.IncompleteReadError) as exc:
            reason, message = map_exception(exc, host=host, port=port, handshake=turn.starttls)
            return _Failed(reason, f"turn {number}: {message}")
    return None


async def _expect(
    reader: asyncio.StreamReader, turn: Exchange, number: int, ctx: ProbeContext
) -> re.Match[str] | _Failed:
    """Lines read until one matches the turn's regex: its match, or why there was none."""
    pattern = turn._pattern
    assert pattern is not None
    wanted = f"a line matching {turn.expect!r}"
    lines = read = 0
    last = None
    ctx.stage = f"turn {number}: waiting for {wanted} (nothing read yet)"
    while lines < _MAX_LINES and read < _MAX_BYTES:
        try:
            raw = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            return _Failed(Reason.PROTOCOL, f"turn {number}: a line longer than {_MAX_LINE} bytes")
        except asyncio.IncompleteReadError as exc:
            raw = exc.partial  # the connection closed: a last line without its newline still counts
            if not raw:
                break
        lines, read = lines + 1, read + len(raw)
        last = raw.decode("utf-8", "replace").rstrip("\r\n")
        found = pattern.search(last)
        if found is not None:
            return found
        # What a timeout will say: the line read last, redacted and cut like any quoted line.
        seen = f"{_lines(lines)} read, the last {clip(last, _SHOWN, ctx.redact)!r}"
        ctx.stage = f"turn {number}: waiting for {wanted} ({seen})"
        if not raw.endswith(b"\n"):
            break
    if last is None:
        return _Failed(
            Reason.ASSERTION, f"turn {number}: the connection closed before {wanted} (got nothing)"
        )
    shown = clip(last, _SHOWN, ctx.redact)
    if lines >= _MAX_LINES or read >= _MAX_BYTES:
        limit = f"{_MAX_LINES} lines" if lines >= _MAX_LINES else f"{_MAX_BYTES // 1024} KiB"
        return _Failed(
            Reason.ASSERTION,
            ctx.redact(f"turn {number}: expected {wanted} within {limit}, the last {shown!r}"),
        )
    if lines == 1:
        # One line and the connection closed: the line is what the server said instead.
        return _Failed(Reason.ASSERTION, ctx.redact(f"turn {number}: expected {wanted}, got {shown!r}"))
    return _Failed(
        Reason.ASSERTION,
        ctx.redact(
            f"turn {number}: the connection closed before {wanted} ({_lines(lines)} read, the last {shown!r})"
        ),
    )


def _lines(count: int) -> str:
    return f"{count} line" if count == 1 else f"{count} lines"


def expand(template: str, match: re.Match[str]) -> str:
    """``template`` with ``$1``, ``${1}``, ``$name``, ``${name}`` replaced by the groups of
    ``match``, the way Go's ``regexp.Expand`` (blackbox_exporter's) does it: ``$$`` is a ``$``, a
    group that does not exist or did not take part is empty, and a ``$`` that starts no reference
    stays as it is. ``$1x`` names the group ``1x``: write ``${1}x``.
    """
    groups = match.re.groupindex

    def one(found: re.Match[str]) -> str:
        if found.group(1):
            return "$"
        name = found.group(2) or found.group(3)
        if name.isascii() and name.isdigit() and (name == "0" or not name.startswith("0")):
            number = int(name)
            return (match.group(number) or "") if number <= match.re.groups else ""
        return (match.group(name) or "") if name in groups else ""

    return _TEMPLATE.sub(one, template)


def _tls_recorded(
    ctx: ProbeContext, ssl_object: ssl.SSLObject | None, values: dict[str, float], samples: list[Sample]
) -> None:
    """Record the TLS metrics of the connection's handshake (``tls: true`` at connect, or a
    ``starttls`` turn) right after it, whatever the dialogue does next, as blackbox_exporter does:
    ``probe_ssl_earliest_cert_expiry``, ``probe_ssl_last_chain_expiry_timestamp_seconds`` (not for
    an ``insecure`` handshake), ``probe_tls_version_info``, ``probe_ssl_last_chain_info``."""
    figures, tls_samples = handshake_values(ctx, ssl_object)
    values.update(figures)
    samples[:] = tls_samples
