"""The shared network helpers of the probes: blackbox_exporter's address metrics and the family fallback."""

from __future__ import annotations

import socket

import pytest

from plugins._toolkit.net import ResolveFailed, ip_values, resolve

pytestmark = pytest.mark.anyio


async def test_ip_values_match_blackbox_exporter() -> None:
    # The figures blackbox_exporter 0.23 reports for these addresses (FNV-1a over the packed bytes).
    assert ip_values("127.0.0.1") == {"probe.ip_protocol": 4.0, "probe.ip_addr_hash": 3668918509.0}
    assert ip_values("::ffff:127.0.0.1") == ip_values("127.0.0.1")
    assert ip_values("::1") == {"probe.ip_protocol": 6.0, "probe.ip_addr_hash": 1751717746.0}
    assert ip_values("fe80::1%eth0")["probe.ip_protocol"] == 6.0
    assert ip_values("") == {}
    assert ip_values("/run/agent.sock") == {}


async def test_family_is_a_requirement_unless_fallback_is_asked_for() -> None:
    with pytest.raises(ResolveFailed):
        await resolve("127.0.0.1", 80, "ipv6")
    infos = await resolve("127.0.0.1", 80, "ipv6", fallback=True)
    assert {info[0] for info in infos} == {socket.AF_INET}
    infos = await resolve("127.0.0.1", 80, "ipv4", fallback=True)
    assert {info[0] for info in infos} == {socket.AF_INET}
