"""Targets, name resolution and the failure map, for the probes that open their own sockets.

``map_exception`` is the agent's one map from library exceptions to a reason and a message
(:mod:`agent.sdk.failures`, exported by the SDK); probes reach it through here.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from typing import Any, Literal
from urllib.parse import urlsplit

from agent.sdk import MetricSpec, Reason, cancellation, map_exception

__all__ = [
    "IP_METRICS",
    "LOOKUP_TIME",
    "IpFamily",
    "ResolveFailed",
    "cancellation",
    "check_proxy_url",
    "ip_values",
    "map_exception",
    "resolve",
    "socket_family",
    "split_host_port",
]

IpFamily = Literal["auto", "ipv4", "ipv6"]

IP_METRICS = (
    MetricSpec.gauge("probe.ip_protocol", "", "IP protocol of the address probed: 4 or 6"),
    MetricSpec.gauge(
        "probe.ip_addr_hash",
        "",
        "FNV-1a (32 bit) hash of the address probed, as blackbox_exporter computes it: "
        "it changes when the address does",
    ),
)
"""blackbox_exporter's ``probe_ip_protocol`` and ``probe_ip_addr_hash``, same meaning."""

LOOKUP_TIME = MetricSpec.gauge(
    "probe.dns.lookup_time", "s", "Time taken to resolve the target's name (the server's, for dns)"
)
"""blackbox_exporter's ``probe_dns_lookup_time_seconds``: in every prober, resolving the target's
name (for the dns probe, the server's), never the query itself."""


def ip_values(address: str) -> dict[str, float]:
    """``probe.ip_protocol`` and ``probe.ip_addr_hash`` for the address a probe connected to.

    The hash is FNV-1a over the address's bytes (4 for IPv4, 16 for IPv6), as blackbox_exporter
    hashes ``net.IP``, so the two agents give the same number for the same address. An address
    that does not parse (a Unix socket, an empty string) gives no values.
    """
    found = _ip_figures(address)
    if found is None:
        return {}
    return {"probe.ip_protocol": found[0], "probe.ip_addr_hash": found[1]}


@functools.lru_cache(maxsize=1024)
def _ip_figures(address: str) -> tuple[float, float] | None:
    # Kept per address: a check connects to the same few every run, and parsing one costs ~5 µs.
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    digest = 0x811C9DC5
    for byte in ip.packed:
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFFFFFF
    return float(ip.version), float(digest)


class ResolveFailed(Exception):
    """The target's name did not resolve: the reason and message of the run's failure."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def socket_family(ip_family: IpFamily) -> int:
    return {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}.get(ip_family, socket.AF_UNSPEC)


def split_host_port(target: str, default_port: int | None = None) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, or, with a ``default_port``, ``host`` alone; ``ValueError`` if not."""
    if target.startswith("[") and "]" in target:
        host, _, rest = target[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ("" if not rest else "bad")
    elif target.count(":") == 1:
        host, _, port = target.partition(":")
    else:
        host, port = target, ""
    if not port and default_port is not None:
        port = str(default_port)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{target!r} is not host:port")
    return host, int(port)


async def resolve(
    host: str,
    port: int | None,
    ip_family: IpFamily,
    kind: int = socket.SOCK_STREAM,
    *,
    fallback: bool = False,
) -> list[tuple[Any, Any, int, str, Any]]:
    """The addresses of ``host``, in the resolver's order; ``ResolveFailed`` when there are none.

    With ``fallback``, a name that has no address of ``ip_family`` resolves in the other family
    (blackbox_exporter's ``ip_protocol_fallback``); without it the family is a requirement.
    """
    loop = asyncio.get_running_loop()
    try:
        return await loop.getaddrinfo(host, port, family=socket_family(ip_family), type=kind)
    except socket.gaierror as exc:
        failure = map_exception(exc, host=host)
    if fallback and ip_family != "auto":
        other: IpFamily = "ipv6" if ip_family == "ipv4" else "ipv4"
        try:
            return await loop.getaddrinfo(host, port, family=socket_family(other), type=kind)
        except socket.gaierror:
            pass
    raise ResolveFailed(*failure) from None


def check_proxy_url(value: str | None) -> str | None:
    """A ``proxy_url`` setting, checked (a field validator's body): an http:// or https:// proxy's
    address, with credentials, host and port only. The URL is never quoted back in the error: it
    may carry the proxy's password."""
    if value is None:
        return None
    try:
        parsed = urlsplit(value)
        parsed.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError("proxy_url is not a URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError("proxy_url must be an http:// or https:// URL with a host")
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
        raise ValueError("proxy_url is a proxy's address: scheme, credentials, host and port only")
    return value
