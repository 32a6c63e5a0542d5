"""The ``icmp`` probe: echo requests to a host, with round-trip statistics, loss and the reply's hop
limit.

It uses unprivileged ICMP datagram sockets where the kernel allows them (Linux, when the agent's
group is in ``net.ipv4.ping_group_range``) and raw sockets otherwise (``CAP_NET_RAW``); when neither
is permitted every run fails with reason ``connect`` and a message that says how to allow one.
icmplib opens the socket (and says which permission is missing); the echo itself is written and
read here, so that the request's TTL and don't-fragment bit can be set and the reply's hop limit
read (``IP_RECVTTL`` / ``IPV6_RECVHOPLIMIT``, or the IPv4 header of a raw socket).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import re
import socket
import statistics
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

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

from ._toolkit.net import IP_METRICS, LOOKUP_TIME, IpFamily, ResolveFailed, ip_values, map_exception, resolve
from ._toolkit.sockets import ConnectFailed, SourceAddress, for_source

__all__ = ["IcmpProbe", "IcmpSettings"]

_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")
# Linux socket options the standard library does not name (linux/in.h, linux/in6.h).
_IP_MTU_DISCOVER, _IP_PMTUDISC_DO, _IP_RECVTTL = 10, 2, 12
_IPV6_DONTFRAG = getattr(socket, "IPV6_DONTFRAG", 62)
_ECHO: dict[int, tuple[int, int]] = {
    socket.AF_INET: (8, 0),
    socket.AF_INET6: (128, 129),
}  # (request, reply) types
_PAYLOAD = b"vantage synthetic monitoring "


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
    ip_fallback: bool = False
    """Resolve in the other IP family when the name has no address in ``ip_family``
    (blackbox_exporter's ``ip_protocol_fallback``)."""
    source_ip_address: SourceAddress | None = None
    """The local address to send from (blackbox's ``source_ip_address``)."""
    ttl: int | None = Field(default=None, ge=1, le=255)
    """IPv4 TTL / IPv6 hop limit of the requests (blackbox's ``ttl``); the system's default without it."""
    dont_fragment: bool = False
    """Set the don't-fragment bit (IPv4) or forbid fragmenting (IPv6): a request larger than the
    path's MTU then fails instead of arriving in pieces (blackbox's ``dont_fragment``)."""
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
            "probe.icmp.duration", "s", "Duration of the ICMP probe by phase (resolve, setup, rtt)", "phase"
        ),
        MetricSpec.gauge(
            "probe.icmp.rtt", "s", "Round-trip time of the replies by statistic", "stat", snapshot=True
        ),
        MetricSpec.gauge("probe.icmp.packets_sent", "", "Echo requests sent in the last run"),
        MetricSpec.gauge("probe.icmp.packets_received", "", "Echo replies received in the last run"),
        MetricSpec.gauge("probe.icmp.packet_loss_ratio", "", "Share of echo requests left unanswered"),
        MetricSpec.gauge("probe.icmp.reply_hop_limit", "", "Hop limit (IPv4 TTL) of the last echo reply"),
        *IP_METRICS,
        LOOKUP_TIME,
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
            infos = await resolve(
                check.target, None, settings.ip_family, socket.SOCK_RAW, fallback=settings.ip_fallback
            )
        except ResolveFailed as exc:
            lookup = {"probe.dns.lookup_time": clock.monotonic() - started}
            return ProbeResult.failure(exc.reason, exc.message, values=lookup)
        phases = {"resolve": clock.monotonic() - started}
        values = {"probe.dns.lookup_time": phases["resolve"]}
        try:
            infos = for_source(infos, settings.source_ip_address, check.target)
        except ConnectFailed as exc:
            return ProbeResult.failure(exc.reason, exc.message, phases=phases, values=values)
        address = str(infos[0][4][0])
        values.update(ip_values(address))
        ctx.stage = f"opening an ICMP socket for {address}"
        mark = clock.monotonic()
        try:
            pinger = self._open(address, infos[0][4], settings)
        except icmplib.ICMPLibError as exc:
            return ProbeResult.failure(*map_exception(exc, host=address), phases=phases, values=values)
        phases["setup"] = clock.monotonic() - mark
        ctx.stage = f"waiting for echo replies from {address}"
        try:
            with pinger.owner:
                echoes = await pinger.ping(settings)
        except OSError as exc:
            reason, message = map_exception(exc, host=address)
            if reason is Reason.CONNECT:
                message = f"cannot send ICMP to {address}: {exc.strerror or exc}"
            return ProbeResult.failure(reason, message, phases=phases, values=values)
        return _judged(echoes, address, settings, phases, values, self._privileged)

    def _open(self, address: str, destination: tuple[Any, ...], settings: IcmpSettings) -> _Pinger:
        """A socket of the kind this process may open, ``SocketPermissionError`` when none."""
        kinds = [self._privileged] if self._privileged is not None else [False, True]
        ip = ipaddress.ip_address(address)
        source = settings.source_ip_address
        for privileged in kinds:
            opener = icmplib.ICMPv4Socket if ip.version == 4 else icmplib.ICMPv6Socket
            try:
                icmp = opener(address=source, privileged=bool(privileged))
            except icmplib.SocketPermissionError:
                if privileged is kinds[-1]:
                    raise
                continue
            self._privileged = privileged
            sock = icmp.sock
            try:
                _configure(sock, settings)
            except OSError:
                sock.close()
                raise
            return _Pinger(icmp, sock, address, destination, bool(privileged))
        raise AssertionError("unreachable")


def _configure(sock: socket.socket, settings: IcmpSettings) -> None:
    """TTL, don't-fragment and the hop limit of replies, on a new ICMP socket."""
    if sock.family == socket.AF_INET:
        if settings.ttl is not None:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, settings.ttl)
        if settings.dont_fragment:
            sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO)
        sock.setsockopt(socket.IPPROTO_IP, _IP_RECVTTL, 1)
    else:
        if settings.ttl is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, settings.ttl)
        if settings.dont_fragment:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_DONTFRAG, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
    sock.setblocking(False)


@dataclass(slots=True)
class _Echoes:
    """What the echo requests of one run brought back."""

    sent: int = 0
    rtts: list[float] = field(default_factory=list)
    hop_limit: int | None = None


@dataclass(slots=True)
class _Pinger:
    """Echo requests on one ICMP socket, replies matched by identifier, sequence and sender."""

    owner: icmplib.ICMPv4Socket | icmplib.ICMPv6Socket
    """icmplib's socket, which closes ``sock`` when it goes: kept while ``sock`` is used."""
    sock: socket.socket
    address: str
    destination: tuple[Any, ...]
    """The socket address to send to (an IPv6 one carries its scope)."""
    privileged: bool

    async def ping(self, settings: IcmpSettings) -> _Echoes:
        echoes = _Echoes()
        ident = random.getrandbits(16)  # a raw socket sees every echo reply: ours carry this
        payload = (_PAYLOAD * (settings.payload_size // len(_PAYLOAD) + 1))[: settings.payload_size]
        for sequence in range(settings.count):
            if sequence:
                await asyncio.sleep(settings.interval)
            packet = _echo_request(self.sock.family, ident, sequence, payload)
            sent = time.perf_counter()
            self.sock.sendto(packet, self.destination)
            echoes.sent += 1
            hop_limit = await self._wait_for_reply(ident, sequence, sent + settings.reply_timeout)
            if hop_limit is not None:
                echoes.rtts.append(time.perf_counter() - sent)
                if hop_limit >= 0:
                    echoes.hop_limit = hop_limit
        return echoes

    async def _wait_for_reply(self, ident: int, sequence: int, deadline: float) -> int | None:
        """The reply's hop limit (-1 when the kernel did not give it), or None if none came in time."""
        loop = asyncio.get_running_loop()
        while (remaining := deadline - time.perf_counter()) > 0:
            readable: asyncio.Future[None] = loop.create_future()
            loop.add_reader(self.sock.fileno(), _wake, readable)
            try:
                await asyncio.wait_for(readable, remaining)
            except TimeoutError:
                return None
            finally:
                loop.remove_reader(self.sock.fileno())
            for _ in range(64):  # what is queued now, bounded: a busy host sends others' echoes too
                try:
                    data, ancillary, _, sender = self.sock.recvmsg(65536, 256)
                except BlockingIOError:
                    break
                hop_limit = self._match(data, ancillary, sender, ident, sequence)
                if hop_limit is not None:
                    return hop_limit
        return None

    def _match(
        self,
        data: bytes,
        ancillary: list[tuple[int, int, bytes]],
        sender: tuple[str, ...],
        ident: int,
        sequence: int,
    ) -> int | None:
        """The hop limit of ``data`` if it is the reply to ``sequence``, else None."""
        hop_limit = -1
        for level, kind, value in ancillary:
            if (level, kind) in (
                (socket.IPPROTO_IP, socket.IP_TTL),
                (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT),
            ):
                hop_limit = int.from_bytes(value[:4], sys.byteorder)  # a C int
        if self.sock.family == socket.AF_INET and self.privileged:
            if len(data) < 20:
                return None
            if hop_limit < 0:
                hop_limit = data[8]  # a raw IPv4 socket reads the IP header too
            data = data[(data[0] & 0x0F) * 4 :]
        if len(data) < 8 or ipaddress.ip_address(sender[0].split("%")[0]) != ipaddress.ip_address(
            self.address
        ):
            return None
        kind_, code, _, got_ident, got_sequence = struct.unpack("!BBHHH", data[:8])
        if kind_ != _ECHO[self.sock.family][1] or code != 0 or got_sequence != sequence:
            return None
        if self.privileged and got_ident != ident:  # a datagram socket's kernel sets and filters it
            return None
        return hop_limit


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _echo_request(family: int, ident: int, sequence: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHH", _ECHO[family][0], 0, 0, ident, sequence)
    if family == socket.AF_INET6:
        return header + payload  # the kernel computes the ICMPv6 checksum
    checksum = _checksum(header + payload)
    return struct.pack("!BBHHH", _ECHO[family][0], 0, checksum, ident, sequence) + payload


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def _judged(
    echoes: _Echoes,
    address: str,
    settings: IcmpSettings,
    phases: dict[str, float],
    values: dict[str, float],
    privileged: bool | None,
) -> ProbeResult:
    rtts = echoes.rtts
    received = len(rtts)
    loss = (echoes.sent - received) / echoes.sent if echoes.sent else 1.0
    values = {
        **values,
        "probe.icmp.packets_sent": float(echoes.sent),
        "probe.icmp.packets_received": float(received),
        "probe.icmp.packet_loss_ratio": loss,
    }
    if echoes.hop_limit is not None:
        values["probe.icmp.reply_hop_limit"] = float(echoes.hop_limit)
    attributes: dict[str, AttributeValue] = {
        "network.peer.address": address,
        "vantage.icmp.socket": "raw" if privileged else "datagram",
    }
    samples: tuple[Sample, ...] = ()
    if rtts:
        average = statistics.fmean(rtts)
        phases["rtt"] = average
        stats = {"min": min(rtts), "avg": average, "max": max(rtts), "stddev": statistics.pstdev(rtts)}
        samples = tuple(Sample("probe.icmp.rtt", value, {"stat": stat}) for stat, value in stats.items())
    lost = echoes.sent - received
    reason: Reason | None = None
    message = ""
    if not rtts:
        reason, message = Reason.TIMEOUT, f"no reply to {echoes.sent} echo requests to {address}"
    elif settings.max_loss is not None and loss > settings.max_loss:
        reason = Reason.ASSERTION
        message = (
            f"{lost} of {echoes.sent} echo requests to {address} went unanswered "
            f"({loss:.0%}, more than {settings.max_loss:.0%})"
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
