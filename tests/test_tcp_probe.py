"""The tcp probe against a local line-protocol server (an SMTP-like banner dialogue), plain and TLS."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme

from agent.sdk import Reason

from .test_http_probe import run_checks

pytestmark = pytest.mark.anyio

SMTP = [{"expect": "^220 "}, {"send": "EHLO vantage\r\n"}, {"expect": "^250"}, {"send": "QUIT\r\n"}]


@asynccontextmanager
async def smtp_server(
    banner: bytes = b"220 smtp.test ESMTP\r\n", tls: ssl.SSLContext | None = None, close_early: bool = False
) -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(banner)
            await writer.drain()
            if close_early or not banner.startswith(b"220"):
                return
            while line := await reader.readline():
                if line.startswith(b"EHLO"):
                    writer.write(b"250 smtp.test greets you\r\n")
                elif line.startswith(b"QUIT"):
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    return
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        with anyio.CancelScope(shield=True):
            await server.wait_closed()


def tcp(name: str, port: int, **settings: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "tcp",
        "target": f"127.0.0.1:{port}",
        "interval": "10s",
        "timeout": "2s",
        "settings": settings,
    }


async def test_a_banner_dialogue() -> None:
    async with (
        smtp_server() as good,
        smtp_server(banner=b"554 go away\r\n") as rude,
        smtp_server(close_early=True) as short,
    ):
        results, _ = await run_checks(
            [
                tcp("good", good, dialogue=SMTP),
                tcp("rude", rude, dialogue=SMTP),
                tcp("short", short, dialogue=SMTP),
            ]
        )
    assert results["good"].success, results["good"].message
    assert set(results["good"].phases) == {"resolve", "connect", "dialogue"}
    assert results["good"].values["probe.failed_due_to_regex"] == 0
    assert results["rude"].reason is Reason.ASSERTION
    assert results["rude"].message == "turn 1: expected a line matching '^220 ', got '554 go away'"
    assert results["short"].reason is Reason.ASSERTION
    assert results["rude"].values["probe.failed_due_to_regex"] == 1
    assert (
        results["short"].message
        == "turn 3: the connection closed before a line matching '^250' (got nothing)"
    )


async def test_refused() -> None:
    async with smtp_server() as port:
        pass
    results, _ = await run_checks([tcp("closed", port)])
    assert results["closed"].reason is Reason.CONNECT


async def test_tls_then_dialogue(ca: trustme.CA, ca_file: Path) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    async with smtp_server(tls=context) as port:
        results, _ = await run_checks(
            [
                tcp("tls", port, tls=True, tls_options={"ca_file": str(ca_file)}, dialogue=SMTP),
                tcp("untrusted", port, tls=True, dialogue=SMTP),
            ]
        )
    assert results["tls"].success, results["tls"].message
    assert results["untrusted"].reason is Reason.TLS


def test_targets_and_dialogues_are_checked_at_load() -> None:
    from agent.errors import ConfigError

    from .helpers import config_from

    with pytest.raises(ConfigError, match=r"field 'target': 'smtp\.example' is not host:port"):
        config_from([{"name": "a", "type": "tcp", "target": "smtp.example"}])
    with pytest.raises(
        ConfigError, match="each dialogue turn has one of 'send', 'expect' or 'starttls: true'"
    ):
        config_from(
            [
                {
                    "name": "a",
                    "type": "tcp",
                    "target": "smtp.example:25",
                    "settings": {"dialogue": [{"send": "x", "expect": "y"}]},
                }
            ]
        )


async def test_the_same_failure_reads_the_same_in_the_tcp_tls_and_http_probes(ca: trustme.CA) -> None:
    """One failure map: an untrusted certificate and a refused port, as each probe type says them."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    async with smtp_server(tls=context) as port:
        async with smtp_server() as closed:
            pass  # a port nothing listens on any more
        target = f"127.0.0.1:{port}"
        tls_check = {"name": "tls", "type": "tls", "target": target, "interval": "10s", "timeout": "3s"}
        http = {**tls_check, "name": "http", "type": "http", "target": f"https://{target}/"}
        results, _ = await run_checks(
            [
                tcp("tcp", port, tls=True),
                tls_check,
                http,
                tcp("tcp-closed", closed),
                {**tls_check, "name": "tls-closed", "target": f"127.0.0.1:{closed}"},
            ]
        )
    rejected = "TLS certificate of 127.0.0.1 rejected: "
    for name in ("tcp", "tls", "http"):
        assert results[name].reason is Reason.TLS, (name, results[name].message)
        assert results[name].message.startswith(rejected), (name, results[name].message)
    refused = f"connection refused by 127.0.0.1:{closed}"
    for name in ("tcp-closed", "tls-closed"):
        assert results[name].reason is Reason.CONNECT, (name, results[name].message)
        assert results[name].message == refused, (name, results[name].message)
