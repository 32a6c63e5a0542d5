"""The ``tcp`` probe: connect, optionally start TLS, and hold a send/expect dialogue.

For services that speak a line protocol (SMTP banners, Redis ``PING``, a vendor's socket API):

    settings:
      tls: false
      dialogue:
        - expect: "^220 "            # a regex the next line must match
        - send: "EHLO vantage\\r\\n"
        - expect: "^250"
        - send: "QUIT\\r\\n"
"""

from __future__ import annotations

import asyncio
import re

from pydantic import Field, PrivateAttr, model_validator

from agent.sdk import (
    Check,
    MetricKind,
    MetricSpec,
    Probe,
    ProbeContext,
    ProbeResult,
    ProbeSettings,
    Reason,
    TLSOptions,
    clip,
    tls_context,
)

from ._toolkit.net import IpFamily, map_exception, socket_family, split_host_port
from ._toolkit.tls import TLS_METRICS, handshake_values

__all__ = ["TcpProbe", "TcpSettings"]

_MAX_LINE = 64 * 1024
_SHOWN = 200  # characters of a received line quoted in a failure


class Exchange(ProbeSettings):
    """One turn of the dialogue: text to send, or a regex the next line received must match."""

    send: str | None = None
    expect: str | None = None

    _pattern: re.Pattern[str] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _one(self) -> Exchange:
        if (self.send is None) == (self.expect is None):
            raise ValueError("each dialogue turn has either 'send' or 'expect'")
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
    tls: bool = False
    """Start TLS right after connecting (``tls_options`` for the CA, client certificate, ...)."""
    tls_options: TLSOptions = Field(default_factory=TLSOptions)
    dialogue: tuple[Exchange, ...] = ()


class TcpProbe(Probe[TcpSettings]):
    """Connects to ``host:port`` and talks the dialogue."""

    name = "tcp"
    Settings = TcpSettings
    phase_metric = "probe.tcp.duration"
    metrics = (
        MetricSpec(
            "probe.tcp.duration", MetricKind.GAUGE, "s", "Duration of the TCP probe by phase", ("phase",)
        ),
        *TLS_METRICS,
    )

    def validate_target(self, target: str) -> None:
        split_host_port(target)

    async def run(self, check: Check, settings: TcpSettings, ctx: ProbeContext) -> ProbeResult:
        host, port = split_host_port(check.target)
        clock = ctx.clock
        started = clock.monotonic()
        phases: dict[str, float] = {}
        context = tls_context(settings.tls_options) if settings.tls else None
        ctx.stage = f"connecting to {host}:{port}"
        try:
            reader, writer = await asyncio.open_connection(
                host,
                port,
                family=socket_family(settings.ip_family),
                ssl=context,
                limit=_MAX_LINE,
                server_hostname=(settings.tls_options.server_name or host) if context else None,
            )
        except OSError as exc:  # DNS, connect and TLS failures alike
            return ProbeResult.failure(*map_exception(exc, host=host, port=port))
        phases["connect"] = clock.monotonic() - started
        # The handshake's figures, as blackbox_exporter records them: right after it, whatever follows.
        tls_figures, tls_samples = handshake_values(ctx, writer.get_extra_info("ssl_object"))
        try:
            for index, turn in enumerate(settings.dialogue):
                if turn.send is not None:
                    writer.write(turn.send.encode())
                    await writer.drain()
                    continue
                ctx.stage = f"waiting for a line matching {turn.expect!r}"
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.LimitOverrunError:
                    return ProbeResult.failure(
                        Reason.PROTOCOL,
                        f"a line longer than {_MAX_LINE} bytes",
                        phases=phases,
                        values=tls_figures,
                        samples=tls_samples,
                    )
                except asyncio.IncompleteReadError as exc:
                    got = clip(exc.partial.decode("utf-8", "replace"), _SHOWN, ctx.redact)
                    return ProbeResult.failure(
                        Reason.ASSERTION,
                        ctx.redact(
                            f"turn {index + 1}: the connection closed before a line matching "
                            f"{turn.expect!r} (got {got!r})"
                        ),
                        phases=phases,
                        values=tls_figures,
                        samples=tls_samples,
                    )
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                assert turn._pattern is not None
                if not turn._pattern.search(text):
                    return ProbeResult.failure(
                        Reason.ASSERTION,
                        ctx.redact(
                            f"turn {index + 1}: expected a line matching {turn.expect!r}, "
                            f"got {clip(text, _SHOWN, ctx.redact)!r}"
                        ),
                        phases=phases,
                        values=tls_figures,
                        samples=tls_samples,
                    )
        finally:
            writer.close()
        phases["dialogue"] = clock.monotonic() - started - phases["connect"]
        return ProbeResult(success=True, phases=phases, values=tls_figures, samples=tls_samples)
