"""The redis_ping probe on its own, with agent.sdk.testing, against a small RESP server on loopback.

The server speaks just enough Redis for PING and AUTH; each test sets how it answers."""

from __future__ import annotations

import socket
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream
from vantage_redis import RedisPingProbe

from agent.sdk import Reason
from agent.sdk.testing import ConfigError, ProbeTester

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent.parent
PASSWORD = "correct-horse-battery-staple"


@dataclass
class FakeRedis:
    """A RESP server: ``password`` makes it require AUTH; ``reply`` overrides what PING gets."""

    password: str | None = None
    reply: bytes | None = None
    banner: bytes | None = None
    """Sent on connect, as a server of another protocol would (an SMTP greeting)."""
    hang_up: bool = False
    """Close the connection after the reply to PING."""
    commands: list[list[str]] = field(default_factory=list)

    async def serve(self, *, task_status: TaskStatus[int]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        async with listener:
            task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))
            await listener.serve(self._handle)

    async def _handle(self, stream: SocketStream) -> None:
        async with stream:
            if self.banner is not None:
                await stream.send(self.banner)
            reader = BufferedByteReceiveStream(stream)
            authenticated = self.password is None
            try:
                while True:
                    command = await _read_command(reader)
                    self.commands.append(command)
                    name = command[0].upper()
                    if name == "AUTH":
                        authenticated = command[-1] == self.password
                        await stream.send(
                            b"+OK\r\n" if authenticated else b"-WRONGPASS invalid username-password pair\r\n"
                        )
                    elif name == "PING" and not authenticated:
                        await stream.send(b"-NOAUTH Authentication required.\r\n")
                    elif name == "PING" and self.reply is not None:
                        await stream.send(self.reply)
                        if self.hang_up:
                            return
                    elif name == "PING" and len(command) == 2:
                        data = command[1].encode()
                        await stream.send(b"$%d\r\n%s\r\n" % (len(data), data))
                    elif name == "PING":
                        await stream.send(b"+PONG\r\n")
            except (anyio.IncompleteRead, anyio.BrokenResourceError, anyio.EndOfStream):
                pass


async def _read_command(reader: BufferedByteReceiveStream) -> list[str]:
    head = await reader.receive_until(b"\r\n", 1024)
    assert head.startswith(b"*"), head
    args = []
    for _ in range(int(head[1:])):
        size = await reader.receive_until(b"\r\n", 1024)
        args.append((await reader.receive_exactly(int(size[1:]) + 2))[:-2].decode())
    return args


@asynccontextmanager
async def redis(server: FakeRedis) -> AsyncIterator[int]:
    async with anyio.create_task_group() as tg:
        yield await tg.start(server.serve)
        tg.cancel_scope.cancel()


def check(port: int, **settings: Any) -> dict[str, Any]:
    return {
        "name": "cache",
        "target": f"127.0.0.1:{port}",
        "interval": "10s",
        "timeout": "2s",
        "settings": settings,
    }


async def test_a_server_that_answers_pong() -> None:
    server = FakeRedis()
    async with redis(server) as port, ProbeTester(RedisPingProbe) as tester:
        result = await tester.run(check(port))
    assert result.success, result.message
    assert server.commands == [["PING"]]
    assert set(result.phases) == {"connect", "ping"}
    assert [(s.name, s.error_type, s.ended) for s in tester.steps] == [
        ("connect", None, True),
        ("ping", None, True),
    ]


async def test_the_password_is_sent_and_never_shown() -> None:
    server = FakeRedis(password=PASSWORD)
    environ = {"REDIS_PASSWORD": PASSWORD}
    async with redis(server) as port, ProbeTester(RedisPingProbe, environ=environ) as tester:
        good = await tester.run(check(port, username="monitor", password="${REDIS_PASSWORD}"))
        assert [s.name for s in tester.steps] == ["connect", "auth", "ping"]
        bad = await tester.run(check(port, password="${REDIS_PASSWORD}-not"))
        auth_step = tester.steps[1]
    assert good.success, good.message
    assert server.commands[0] == ["AUTH", "monitor", PASSWORD]
    assert (bad.success, bad.reason) == (False, Reason.AUTH)
    assert "WRONGPASS" in bad.message
    assert (auth_step.name, auth_step.error_type) == ("auth", "auth")
    assert PASSWORD not in repr(bad) and PASSWORD not in repr(auth_step)


async def test_a_server_that_wants_a_password_the_check_does_not_give() -> None:
    async with redis(FakeRedis(password=PASSWORD)) as port, ProbeTester(RedisPingProbe) as tester:
        result = await tester.run(check(port))
    assert (result.reason, result.message) == (
        Reason.AUTH,
        "waiting for the reply to PING: the server answered -NOAUTH Authentication required.",
    )


@pytest.mark.parametrize(
    ("reply", "reason", "words"),
    [
        (b"-LOADING Redis is loading the dataset in memory\r\n", Reason.ASSERTION, "LOADING"),
        (b"+PANG\r\n", Reason.ASSERTION, "PING answered 'PANG', expected 'PONG'"),
        (b"PONG\r\n", Reason.PROTOCOL, "not a RESP reply"),
        (b"+PO", Reason.PROTOCOL, "closed the connection before its reply"),
    ],
)
async def test_replies_that_are_not_pong(reply: bytes, reason: Reason, words: str) -> None:
    server = FakeRedis(reply=reply, hang_up=True)
    async with redis(server) as port, ProbeTester(RedisPingProbe) as tester:
        result = await tester.run(check(port))
    assert (result.success, result.reason) == (False, reason)
    assert words in result.message


async def test_ping_with_a_message_expects_its_echo() -> None:
    async with redis(FakeRedis()) as port, ProbeTester(RedisPingProbe) as tester:
        echoed = await tester.run(check(port, message="vantage"))
    async with redis(FakeRedis(reply=b"$4\r\nPONG\r\n")) as port, ProbeTester(RedisPingProbe) as tester:
        other = await tester.run(check(port, message="vantage"))
    assert echoed.success, echoed.message
    assert (other.reason, other.message) == (Reason.ASSERTION, "PING answered 'PONG', expected 'vantage'")


async def test_another_protocol_is_not_redis() -> None:
    server = FakeRedis(banner=b"220 smtp.test ESMTP\r\n")
    async with redis(server) as port, ProbeTester(RedisPingProbe) as tester:
        result = await tester.run(check(port))
    assert (result.reason, tester.steps[-1].error_type) == (Reason.PROTOCOL, "protocol")


async def test_nothing_listening() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        async with ProbeTester(RedisPingProbe) as tester:
            result = await tester.run(check(port))
    assert (result.reason, set(result.phases)) == (Reason.CONNECT, {"connect"})
    assert result.message.startswith(f"connecting to 127.0.0.1:{port}: ")


async def test_a_server_that_never_answers_is_cut_at_the_timeout() -> None:
    async def silent(*, task_status: TaskStatus[int]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        async with listener:
            task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))
            await listener.serve(hold)

    async def hold(stream: SocketStream) -> None:
        async with stream:
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tg, ProbeTester(RedisPingProbe) as tester:
        port = await tg.start(silent)
        result = await tester.run({**check(port), "interval": "1s", "timeout": "200ms"})
        tg.cancel_scope.cancel()
    assert (result.reason, result.message) == (
        Reason.TIMEOUT,
        "no result within the timeout of 200ms (waiting for the reply to PING)",
    )


@pytest.mark.parametrize(
    ("target", "settings", "words"),
    [
        ("127.0.0.1:6379", {"pasword": "x"}, "settings.pasword"),
        ("127.0.0.1:6379", {"username": "monitor"}, "'username' needs a 'password'"),
        ("::1", {}, "write an IPv6 target as [address]:port"),
        ("127.0.0.1:0", {}, "a port from 1 to 65535"),
    ],
)
async def test_bad_checks_are_refused_as_the_agent_refuses_them(
    target: str, settings: dict[str, Any], words: str
) -> None:
    async with ProbeTester(RedisPingProbe) as tester:
        with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
            await tester.run({"name": "cache", "target": target, "settings": settings})


async def test_the_declared_entry_point_names_the_probe() -> None:
    project = tomllib.loads((HERE / "pyproject.toml").read_text())
    points = project["project"]["entry-points"]["vantage.probes"]
    assert points == {"redis_ping": "vantage_redis:RedisPingProbe"}
    async with (
        redis(FakeRedis()) as port,
        ProbeTester.from_entry_point("redis_ping", points["redis_ping"]) as tester,
    ):
        result = await tester.run(check(port))
    assert result.success, result.message
