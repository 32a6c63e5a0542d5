"""What a supervisor hands its worker, and how the worker takes it: no line on stdout to parse.

The supervisor binds each worker's loopback listening socket itself, before the worker starts, so
that it knows the worker's port from the first instant. The socket is passed to the worker as an
open file descriptor (``pass_fds``), named in ``VANTAGE_LISTEN_FD``; the worker serves on it instead
of binding one. The supervisor then waits for the worker's ``/healthz`` to learn that it is up.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

__all__ = ["LISTEN_FD", "bind_loopback", "inherited_socket"]

LISTEN_FD = "VANTAGE_LISTEN_FD"
"""The variable naming the descriptor of the listening socket a worker was handed."""

_BACKLOG = 128


def bind_loopback() -> socket.socket:
    """A listening TCP socket on 127.0.0.1 and a port the kernel picks, for one worker."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def inherited_socket(environ: Mapping[str, str]) -> socket.socket | None:
    """In a worker: the listening socket its supervisor handed it, or None when not a worker."""
    fd = environ.get(LISTEN_FD)
    if not fd:
        return None
    sock = socket.socket(fileno=int(fd))
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise RuntimeError(f"{LISTEN_FD}={fd} is not a stream socket")
    return sock
