"""The ``redis_ping`` probe: connect, ``AUTH`` when the check has credentials, ``PING``.

It speaks RESP (the Redis serialization protocol) over a TCP stream from anyio, and reads only
what a ``PING`` needs: simple strings (``+PONG``), errors (``-NOAUTH ...``), integers and bulk
strings. The run is three small steps in a fixed order, each timed as a phase and opened as a
step span; the first one that fails decides the reason. Library exceptions become reasons in one
place, :func:`_reason_of`.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream
from pydantic import Field, model_validator

from agent.sdk import (
    Check,
    MetricKind,
    MetricSpec,
    Probe,
    ProbeContext,
    ProbeResult,
    ProbeSettings,
    Reason,
    clip,
)

__all__ = ["RedisPingProbe", "RedisPingSettings"]

DEFAULT_PORT = 6379
_MAX_LINE = 64 * 1024  # no reply to PING or AUTH comes near this; a longer line is not Redis
_SHOWN = 200  # characters of a reply quoted in a failure
_AUTH_ERRORS = frozenset({"NOAUTH", "WRONGPASS", "NOPERM"})
T = TypeVar("T")


class RedisPingSettings(ProbeSettings):
    """Settings of a ``redis_ping`` check; the target is ``host[:port]``."""

    username: str | None = None
    """An ACL user (Redis 6 and later); needs ``password``."""
    password: str | None = None
    """Sent with ``AUTH``; write it as a reference (``${REDIS_PASSWORD}``), never in the file."""
    message: str | None = Field(default=None, min_length=1)
    """Send ``PING <message>`` and expect it echoed back, rather than ``PONG``."""

    @model_validator(mode="after")
    def _user_needs_password(self) -> RedisPingSettings:
        if self.username is not None and self.password is None:
            raise ValueError("'username' needs a 'password'")
        return self


class ServerError(Exception):
    """An error reply (``-WRONGPASS invalid username-password pair``)."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.code = line.split(" ", 1)[0]


class ProtocolError(Exception):
    """Bytes that are not a RESP reply."""


class Failed(Exception):
    """A step's failure, as the reason and message the result will carry."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def split_target(target: str) -> tuple[str, int]:
    """``host[:port]`` or ``[v6]:port`` into host and port; ValueError when it is neither."""
    host, port = target, str(DEFAULT_PORT)
    if target.startswith("["):
        host, sep, rest = target[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError("write an IPv6 target as [address]:port")
        port = rest[1:] or port
    elif target.count(":") == 1:
        host, port = target.split(":")
    elif ":" in target:
        raise ValueError("write an IPv6 target as [address]:port")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("a redis_ping target is host:port, with a port from 1 to 65535")
    return host, int(port)


def encode(*args: str) -> bytes:
    """A command as RESP: an array of bulk strings."""
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


async def read_reply(reader: BufferedByteReceiveStream) -> str | int | None:
    """One reply: a simple or bulk string, an integer, or None (a null bulk string).

    An error reply raises ServerError; anything that is not RESP raises ProtocolError."""
    line = (await reader.receive_until(b"\r\n", _MAX_LINE)).decode("utf-8", "replace")
    kind, rest = line[:1], line[1:]
    if kind == "+":
        return rest
    if kind == "-":
        raise ServerError(rest)
    if kind == ":" and rest.lstrip("-").isdigit():
        return int(rest)
    if kind == "$" and rest.lstrip("-").isdigit():
        size = int(rest)
        if size < 0:
            return None
        if size > _MAX_LINE:
            raise ProtocolError(f"a bulk reply of {size} bytes")
        data = await reader.receive_exactly(size + 2)
        return data[:-2].decode("utf-8", "replace")
    raise ProtocolError(f"not a RESP reply: {line!r}")


def _reason_of(exc: BaseException) -> Reason | None:
    """The one map from what the network and the server raise to a reason; None for a bug."""
    if isinstance(exc, socket.gaierror):
        return Reason.DNS
    if isinstance(exc, ServerError):
        return Reason.AUTH if exc.code in _AUTH_ERRORS else Reason.ASSERTION
    if isinstance(exc, ProtocolError | anyio.IncompleteRead | anyio.DelimiterNotFound | anyio.EndOfStream):
        return Reason.PROTOCOL
    if isinstance(exc, OSError | anyio.BrokenResourceError):
        return Reason.CONNECT
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ServerError):
        return f"the server answered -{exc}"
    if isinstance(exc, anyio.IncompleteRead | anyio.EndOfStream):
        return "the server closed the connection before its reply"
    if isinstance(exc, anyio.DelimiterNotFound):
        return f"a reply line longer than {_MAX_LINE} bytes"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


class RedisPingProbe(Probe[RedisPingSettings]):
    """Checks that a Redis server accepts a connection, the check's credentials, and ``PING``."""

    name = "redis_ping"
    Settings = RedisPingSettings
    phase_metric = "probe.redis.duration"
    metrics = (
        MetricSpec(
            "probe.redis.duration",
            MetricKind.GAUGE,
            "s",
            "Duration of each phase of a Redis PING (connect, auth, ping)",
            ("phase",),
        ),
    )

    def validate_target(self, target: str) -> None:
        split_target(target)

    async def run(self, check: Check, settings: RedisPingSettings, ctx: ProbeContext) -> ProbeResult:
        host, port = split_target(check.target)
        phases: dict[str, float] = {}

        async def step(name: str, stage: str, work: Callable[[], Awaitable[T]]) -> T:
            """Run one phase inside its step span; a failure becomes ``Failed``, raised once the
            span is closed (``ctx.step`` would mark it with the exception's type instead)."""
            ctx.stage = stage
            started = ctx.clock.monotonic()
            with ctx.step(name) as span:
                try:
                    return await work()
                except Exception as exc:
                    reason = _reason_of(exc)
                    if reason is None:
                        raise  # a bug: the agent records it as reason "internal"
                    detail = clip(_describe(exc), _SHOWN, ctx.redact)
                    failed = Failed(reason, ctx.redact(f"{stage}: {detail}"))
                    span.fail(reason.value, failed.message)
                finally:
                    phases[name] = ctx.clock.monotonic() - started
            raise failed

        try:
            stream: SocketStream = await step(
                "connect", f"connecting to {host}:{port}", lambda: anyio.connect_tcp(host, port)
            )
            async with stream:
                reader = BufferedByteReceiveStream(stream)

                async def call(*args: str) -> str | int | None:
                    await stream.send(encode(*args))
                    return await read_reply(reader)

                if settings.password is not None:
                    user = () if settings.username is None else (settings.username,)
                    auth = ("AUTH", *user, settings.password)
                    await step("auth", "waiting for the reply to AUTH", lambda: call(*auth))
                ping = ("PING", settings.message) if settings.message else ("PING",)
                reply = await step("ping", "waiting for the reply to PING", lambda: call(*ping))
        except Failed as failed:
            return ProbeResult.failure(failed.reason, failed.message, phases=phases)
        expected = settings.message or "PONG"
        if reply != expected:
            shown = clip(repr(reply), _SHOWN, ctx.redact)
            return ProbeResult.failure(
                Reason.ASSERTION, ctx.redact(f"PING answered {shown}, expected {expected!r}"), phases=phases
            )
        return ProbeResult(success=True, phases=phases)
