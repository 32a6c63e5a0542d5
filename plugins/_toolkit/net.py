"""Targets, name resolution and the failure map, for the probes that open their own sockets.

``map_exception`` is the agent's one map from library exceptions to a reason and a message
(:mod:`agent.sdk.failures`, exported by the SDK); probes reach it through here.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Literal

from agent.sdk import Reason, cancellation, map_exception

__all__ = [
    "IpFamily",
    "ResolveFailed",
    "cancellation",
    "map_exception",
    "resolve",
    "socket_family",
    "split_host_port",
]

IpFamily = Literal["auto", "ipv4", "ipv6"]


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
    host: str, port: int | None, ip_family: IpFamily, kind: int = socket.SOCK_STREAM
) -> list[tuple[Any, Any, int, str, Any]]:
    """The addresses of ``host``, in the resolver's order; ``ResolveFailed`` when there are none."""
    try:
        return await asyncio.get_running_loop().getaddrinfo(
            host, port, family=socket_family(ip_family), type=kind
        )
    except socket.gaierror as exc:
        raise ResolveFailed(*map_exception(exc, host=host)) from None
