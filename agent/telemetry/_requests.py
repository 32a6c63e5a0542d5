"""The adapter to the transport beneath ``requests``: the one module that subclasses its classes.

The SDK's OTLP/HTTP exporters send through a ``requests`` session, whose timeout applies to each
socket read: a backend that trickles its answer a byte at a time holds the exporter's thread as long
as it likes. To give every read and write only the time left before the request's deadline, this
module plugs into the stack that ``requests`` is built on, where none of it has a public hook:

* ``requests``: :class:`DeadlineAdapter` overrides ``HTTPAdapter.init_poolmanager`` and
  ``proxy_manager_for`` and sets the pool manager's ``pool_classes_by_scheme``, an undocumented
  attribute of urllib3's ``PoolManager``, to pools of its own;
* urllib3: those pools set ``HTTPConnectionPool.ConnectionCls``, and their connections override
  ``HTTPConnection.send`` and set ``response_class``, the attribute of ``http.client``'s
  connection that urllib3's ``getresponse`` builds its response from;
* ``http.client``: that response (``HTTPResponse(sock, debuglevel, method, url)``) replaces its
  undocumented ``fp`` (the file it parses the status line, headers and body from) with a reader
  that looks at the deadline before each socket read.

A ``SOCKS`` proxy's pools are left as they are. ``tests/test_adapters.py`` fails, naming the class
and attribute, on a ``requests``, urllib3 or Python that stops using any of them.
"""

from __future__ import annotations

import contextlib
import contextvars
import http.client
import io
import socket
import time
from collections.abc import Iterator
from typing import Any, Protocol

import requests.adapters
import urllib3.connection
import urllib3.connectionpool

__all__ = ["Cutoff", "DeadlineAdapter", "request_deadline"]

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "vantage_export_deadline", default=None
)
_session: contextvars.ContextVar[Cutoff | None] = contextvars.ContextVar(
    "vantage_export_session", default=None
)
_POLL = 0.25  # seconds a socket read waits before it looks at the deadline again


class Cutoff(Protocol):
    """A session that may be told to end every request by a time (``BoundedSession``)."""

    cutoff: float | None
    """Monotonic time past which no request runs, or None."""


@contextlib.contextmanager
def request_deadline(deadline: float | None, session: Cutoff) -> Iterator[None]:
    """Within the block, the sockets of ``session``'s requests wait until ``deadline`` (monotonic;
    None: no deadline), or its ``cutoff`` if that comes first, and no longer."""
    token = _deadline.set(deadline)
    session_token = _session.set(session)
    try:
        yield
    finally:
        _deadline.reset(token)
        _session.reset(session_token)


def _time_left() -> float | None:
    """Seconds left before the current request's deadline, or the shutdown cutoff of its session
    if that comes first; raises ``TimeoutError`` once it passed."""
    deadline = _deadline.get()
    if deadline is None:
        return None
    session = _session.get()
    if session is not None and session.cutoff is not None:
        deadline = min(deadline, session.cutoff)
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the export's deadline passed")
    return left


class _DeadlineReader(io.RawIOBase):
    """Reads a socket giving each read only the time left before the request's deadline.

    A per-read timeout alone never fires against a backend that sends a byte every half second.
    A read waits at most ``_POLL`` at a time, so that a deadline brought forward while it waits
    (the agent stopping) ends it too.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        # Held for its reference to the socket: http.client closes the connection's socket once the
        # response owns it, and the descriptor stays open while a file made from it is.
        self._file = sock.makefile("rb", buffering=0)

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._sock.fileno()

    def readinto(self, buffer: Any) -> int | None:
        while True:
            left = _time_left()
            self._sock.settimeout(None if left is None else min(left, _POLL))
            try:
                return self._sock.recv_into(buffer)
            except TimeoutError:
                if left is None or left > _POLL:
                    continue  # the deadline is not there yet: look at it again
                raise

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


class _DeadlineResponse(http.client.HTTPResponse):
    """``http.client``'s response (status line, headers and body) read through a _DeadlineReader."""

    def __init__(
        self, sock: socket.socket, debuglevel: int = 0, method: str | None = None, url: str | None = None
    ) -> None:
        super().__init__(sock, debuglevel, method, url)
        if _deadline.get() is not None:
            self.fp.close()
            self.fp = io.BufferedReader(_DeadlineReader(sock))


def _limit_send(sock: socket.socket | None) -> None:
    left = _time_left()
    if left is not None and sock is not None:
        sock.settimeout(left)


class _HTTPConnection(urllib3.connection.HTTPConnection):
    response_class = _DeadlineResponse

    def send(self, data: Any) -> None:
        _limit_send(self.sock)
        super().send(data)


class _HTTPSConnection(urllib3.connection.HTTPSConnection):
    response_class = _DeadlineResponse

    def send(self, data: Any) -> None:
        _limit_send(self.sock)
        super().send(data)


class _HTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS: dict[str, type[urllib3.connectionpool.HTTPConnectionPool]] = {"http": _HTTPPool, "https": _HTTPSPool}


class DeadlineAdapter(requests.adapters.HTTPAdapter):
    """Connection pools whose connections read through a _DeadlineResponse (SOCKS proxies excepted)."""

    def init_poolmanager(
        self,
        connections: int,
        maxsize: int,
        block: bool = requests.adapters.DEFAULT_POOLBLOCK,
        **pool_kwargs: Any,
    ) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _POOLS
        return manager
