"""Sockets that the probes open themselves: a chosen local address (blackbox_exporter's
``source_ip_address``) and the first of the resolved addresses that answers."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import AfterValidator

from agent.sdk import Reason

__all__ = ["ConnectFailed", "SourceAddress", "connect", "for_source"]

AddrInfo = tuple[Any, Any, int, str, Any]


def _source_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address (the local address to send from)") from None
    return value


SourceAddress = Annotated[str, AfterValidator(_source_address)]
"""An IPv4 or IPv6 address of this host to bind before connecting, checked at load."""


class ConnectFailed(Exception):
    """No address could be used: the run's reason and message, and the error behind it if any."""

    def __init__(self, reason: Reason, message: str, cause: OSError | None = None) -> None:
        super().__init__(message)
        self.reason, self.message, self.cause = reason, message, cause


def for_source(addresses: Sequence[AddrInfo], source: str | None, host: str) -> list[AddrInfo]:
    """The resolved ``addresses`` of ``host`` that a socket bound to ``source`` can reach: those of
    its family. ``ConnectFailed`` when none is."""
    if source is None:
        return list(addresses)
    family = socket.AF_INET6 if ipaddress.ip_address(source).version == 6 else socket.AF_INET
    usable = [info for info in addresses if info[0] == family]
    if not usable:
        shown = ", ".join(str(info[4][0]) for info in addresses)
        raise ConnectFailed(
            Reason.CONNECT,
            f"source_ip_address {source} is IPv{6 if family == socket.AF_INET6 else 4}, "
            f"and {host} has no address of that family ({shown})",
        )
    return usable


async def connect(addresses: Sequence[AddrInfo], source: str | None) -> tuple[socket.socket, str]:
    """A socket connected to the first of ``addresses`` that accepts, bound to ``source`` first
    when given, and the address it reached. A UDP socket is connected too, so that an ICMP port
    unreachable comes back as ``ECONNREFUSED`` on the next receive instead of going unseen.

    Raises the last ``OSError`` when no address accepts.
    """
    loop = asyncio.get_running_loop()
    problem: OSError | None = None
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            if source is not None:
                sock.bind((source, 0))
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            problem = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock, str(address[0])
    if problem is None:
        raise OSError("no address to connect to")
    raise problem
