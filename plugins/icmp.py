"""The ``icmp`` probe: echo requests to a host, with round-trip statistics and loss (icmplib does the
protocol).

It uses unprivileged ICMP datagram sockets where the kernel allows them (Linux, when the agent's
group is in ``net.ipv4.ping_group_range``) and raw sockets otherwise (``CAP_NET_RAW``); when neither
is permitted every run fails with reason ``connect`` and a message that says how to allow one.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import statistics

import icmplib
from pydantic import Field

from agent.sdk import (
    AttributeValue,
    Check,
    Duration,
    MetricSpec,
    Probe,
    ProbeContext,
    ProbeResult,
    ProbeSettings,
    Reason,
    Sample,
)

from ._toolkit.net import IpFamily, ResolveFailed, map_exception, resolve

__all__ = ["IcmpProbe", "IcmpSettings"]

_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")


class IcmpSettings(ProbeSettings):
    """Settings of an ``icmp`` check; the target is a host name or an IP address."""

    count: int = Field(default=3, ge=1, le=100)
    """Echo requests per run."""
    interval: Duration = 0.2
    """Time between echo requests."""
    reply_timeout: Duration = 1.0
    """How long to wait for each reply."""
    payload_size: int = Field(default=56, ge=0, le=65000)
    ip_family: IpFamily = "auto"
    max_loss: float | None = Field(default=None, ge=0, le=1)
    """Fail when more than this share of requests go unanswered; by default only when all do."""
    max_rtt: Duration | None = None
    """Fail (reason ``assertion``) when the average round trip is slower."""


class IcmpProbe(Probe[IcmpSettings]):
    """Pings the target ``count`` times."""

    name = "icmp"
    Settings = IcmpSettings
    phase_metric = "probe.icmp.duration"
    metrics = (
        MetricSpec.gauge(
            "probe.icmp.duration", "s", "Duration of the ICMP probe by phase (resolve, rtt)", "phase"
        ),
        MetricSpec.gauge("probe.icmp.rtt", "s", "Round-trip time of the replies by statistic", "stat"),
        MetricSpec.gauge("probe.icmp.packets_sent", "", "Echo requests sent in the last run"),
        MetricSpec.gauge("probe.icmp.packets_received", "", "Echo replies received in the last run"),
        MetricSpec.gauge("probe.icmp.packet_loss_ratio", "", "Share of echo requests left unanswered"),
    )

    def __init__(self) -> None:
        self._privileged: bool | None = None
        """Which socket kind works here: learnt on the first run, as it cannot change while we run."""

    def validate_target(self, target: str) -> None:
        try:
            ipaddress.ip_address(target)
        except ValueError:
            if not _HOSTNAME.fullmatch(target) or len(target) > 253:
                raise ValueError(f"{target!r} is not a host name or an IP address") from None

    async def run(self, check: Check, settings: IcmpSettings, ctx: ProbeContext) -> ProbeResult:
        clock = ctx.clock
        started = clock.monotonic()
        ctx.stage = f"resolving {check.target}"
        try:
            infos = await resolve(check.target, None, settings.ip_family, socket.SOCK_RAW)
        except ResolveFailed as exc:
            return ProbeResult.failure(exc.reason, exc.message)
        address = str(infos[0][4][0])
        phases = {"resolve": clock.monotonic() - started}
        ctx.stage = f"waiting for echo replies from {address}"
        try:
            host = await self._ping(address, settings)
        except icmplib.ICMPLibError as exc:
            return ProbeResult.failure(*map_exception(exc, host=address), phases=phases)
        rtts = [ms / 1000 for ms in host.rtts]
        values = {
            "probe.icmp.packets_sent": float(host.packets_sent),
            "probe.icmp.packets_received": float(host.packets_received),
            "probe.icmp.packet_loss_ratio": host.packet_loss,
        }
        attributes: dict[str, AttributeValue] = {
            "network.peer.address": address,
            "vantage.icmp.socket": "raw" if self._privileged else "datagram",
        }
        samples: tuple[Sample, ...] = ()
        if rtts:
            average = statistics.fmean(rtts)
            phases["rtt"] = average
            stats = {
                "min": min(rtts),
                "avg": average,
                "max": max(rtts),
                "stddev": statistics.pstdev(rtts),
            }
            samples = tuple(Sample("probe.icmp.rtt", value, {"stat": stat}) for stat, value in stats.items())
        lost = host.packets_sent - host.packets_received
        reason: Reason | None = None
        message = ""
        if not rtts:
            reason, message = Reason.TIMEOUT, f"no reply to {host.packets_sent} echo requests to {address}"
        elif settings.max_loss is not None and host.packet_loss > settings.max_loss:
            reason = Reason.ASSERTION
            message = (
                f"{lost} of {host.packets_sent} echo requests to {address} went unanswered "
                f"({host.packet_loss:.0%}, more than {settings.max_loss:.0%})"
            )
        elif settings.max_rtt is not None and phases["rtt"] > settings.max_rtt:
            reason = Reason.ASSERTION
            message = f"average round trip {phases['rtt'] * 1000:.1f} ms, over {settings.max_rtt * 1000:g} ms"
        return ProbeResult(
            success=reason is None,
            reason=reason,
            message=message,
            phases=phases,
            values=values,
            samples=samples,
            attributes=attributes,
        )

    async def _ping(self, address: str, settings: IcmpSettings) -> icmplib.Host:
        kinds = [self._privileged] if self._privileged is not None else [False, True]
        for privileged in kinds:
            try:
                host = await icmplib.async_ping(
                    address,
                    count=settings.count,
                    interval=settings.interval,
                    timeout=settings.reply_timeout,
                    privileged=privileged,
                    payload_size=settings.payload_size,
                )
            except icmplib.SocketPermissionError:
                if privileged is kinds[-1]:
                    raise
                continue
            self._privileged = privileged
            return host
        raise AssertionError("unreachable")
