"""The icmp probe: echo to 127.0.0.1, and in network namespaces of the test's own making, a target
that never answers and the three permission cases (datagram sockets, raw sockets, neither)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from typing import Any

import pytest

from agent.errors import ConfigError
from agent.sdk import Reason

from .helpers import ROOT, config_from
from .test_http_probe import run_checks

pytestmark = pytest.mark.anyio

OPEN_GROUPS = "echo '0 2147483647' > /proc/sys/net/ipv4/ping_group_range"


def icmp_allowed() -> str | None:
    """Which ICMP socket this process may open, or None."""
    for kind, name in ((socket.SOCK_DGRAM, "datagram"), (socket.SOCK_RAW, "raw")):
        try:
            socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP).close()
        except PermissionError:
            continue
        return name
    return None


def ping(name: str, target: str = "127.0.0.1", **settings: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "icmp",
        "target": target,
        "interval": "10s",
        "timeout": "3s",
        "settings": {"count": 3, "interval": "20ms", "reply_timeout": "500ms", **settings},
    }


async def test_echo_to_loopback() -> None:
    kind = icmp_allowed()
    if kind is None:
        pytest.skip("this process may open neither ICMP datagram nor raw sockets")
    results, _ = await run_checks(
        [ping("loopback", payload_size=100), ping("strict", max_rtt=0.000001), ping("by-name", "localhost")]
    )
    result = results["loopback"]
    assert result.success, result.message
    lookup = result.values.pop("probe.dns.lookup_time")
    assert lookup >= 0
    assert result.values == {
        "probe.icmp.packets_sent": 3,
        "probe.icmp.packets_received": 3,
        "probe.icmp.packet_loss_ratio": 0,
        "probe.icmp.reply_hop_limit": 64,  # Linux's default TTL, on the kernel's own echo reply
        "probe.ip_protocol": 4,
        "probe.ip_addr_hash": 3668918509,  # FNV-1a of 127.0.0.1, as blackbox_exporter hashes it
    }
    stats = {s.labels["stat"]: s.value for s in result.samples if s.metric == "probe.icmp.rtt"}
    assert set(stats) == {"min", "avg", "max", "stddev"}
    assert 0 < stats["min"] <= stats["avg"] <= stats["max"]
    assert set(result.phases) == {"resolve", "setup", "rtt"}
    assert result.attributes["vantage.icmp.socket"] == kind
    assert results["strict"].reason is Reason.ASSERTION
    assert results["strict"].message.endswith("ms, over 0.001 ms")
    assert results["by-name"].success, results["by-name"].message


class Sniffer:
    """A raw ICMP socket of the test's own that sees every IPv4 ICMP packet on this host, the
    probe's requests included, IP header and all."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.sock.setblocking(False)

    def echo_requests(self) -> list[tuple[str, str, int]]:
        """(source, destination, TTL) of the echo requests seen so far (bounded: what is queued)."""
        seen = []
        for _ in range(10_000):
            try:
                packet = self.sock.recv(65536)
            except BlockingIOError:
                break
            if packet[(packet[0] & 0x0F) * 4] == 8:
                seen.append((socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20]), packet[8]))
        self.sock.close()
        return seen


async def test_ttl_source_address_and_ipv6_hop_limit() -> None:
    if icmp_allowed() != "raw":
        pytest.skip("needs raw ICMP sockets, to see the requests the probe sends")
    sniffer = Sniffer()
    results, _ = await run_checks(
        [
            ping("ttl", ttl=7, count=1),
            ping("source", "127.0.0.3", source_ip_address="127.0.0.2", count=1),
            ping("v6", "::1", count=1),
            ping("wrong-family", "::1", source_ip_address="127.0.0.2", count=1),
            ping("foreign-source", source_ip_address="192.0.2.1", count=1),
        ]
    )
    requests = sniffer.echo_requests()
    assert ("127.0.0.1", "127.0.0.1", 7) in requests, requests
    assert [(src, ttl) for src, dst, ttl in requests if dst == "127.0.0.3"] == [("127.0.0.2", 64)]
    for name in ("ttl", "source", "v6"):
        assert results[name].success, (name, results[name].message)
        assert set(results[name].phases) == {"resolve", "setup", "rtt"}
    assert results["v6"].values["probe.icmp.reply_hop_limit"] == 64
    assert results["v6"].values["probe.ip_protocol"] == 6
    # A source address pins the family.
    assert results["wrong-family"].reason is Reason.CONNECT
    assert results["wrong-family"].message == (
        "source_ip_address 127.0.0.2 is IPv4, and ::1 has no address of that family (::1)"
    )
    assert results["foreign-source"].reason is Reason.CONNECT, results["foreign-source"].message


def in_namespace(setup: str, *, raw: bool, checks: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    """Run ``vantage once`` in a new network namespace after ``setup`` (as root); without ``raw``,
    as root without CAP_NET_RAW, so that raw ICMP sockets are refused (files stay readable, wherever
    the checkout is)."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"):
        pytest.skip("needs root, unshare and setpriv to make a network namespace")
    agent = [sys.executable, "-m", "agent", "once"]
    if not raw:
        agent = ["setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw", *agent]
    script = f'ip link set lo up && {setup} && exec "$@"'
    env = {
        **os.environ,
        "VANTAGE_CHECKS": json.dumps(checks),
        "VANTAGE_LOG_FORMAT": "json",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
    }
    completed = subprocess.run(
        ["unshare", "--net", "sh", "-c", script, "sh", *agent],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if "unshare failed" in completed.stderr or "Operation not permitted" in completed.stderr[:200]:
        pytest.skip(f"cannot make a network namespace here: {completed.stderr.strip()[:200]}")
    return completed


def failure_detail(completed: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = [json.loads(line) for line in completed.stderr.splitlines() if line.startswith("{")]
    return next(line for line in lines if line.get("result") == "failure")


@pytest.mark.slow  # runs the agent in a network namespace, as a subprocess
def test_datagram_sockets_without_privilege() -> None:
    checks = [ping("unprivileged"), ping("unprivileged-v6", "::1", ttl=5, dont_fragment=True)]
    completed = in_namespace(OPEN_GROUPS, raw=False, checks=checks)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "2 passed, 0 failed" in completed.stdout


@pytest.mark.slow  # runs the agent in a network namespace, as a subprocess
def test_neither_socket_is_permitted() -> None:
    completed = in_namespace("true", raw=False, checks=[ping("forbidden")])
    assert completed.returncode == 1, completed.stdout + completed.stderr
    detail = failure_detail(completed)
    assert detail["reason"] == "connect"
    assert detail["detail"].startswith(
        "ICMP is not permitted to this process: unprivileged ICMP sockets need its group (0) "
        "in net.ipv4.ping_group_range (now 1 0), and raw sockets need CAP_NET_RAW"
    )


@pytest.mark.slow  # runs the agent in a network namespace, as a subprocess
def test_a_host_that_never_answers() -> None:
    # A veth pair with nobody at 10.99.0.2 on the far end: its address never resolves, nothing replies.
    setup = (
        "ip link add vantage0 type veth peer name vantage1 && ip addr add 10.99.0.1/24 dev vantage0"
        " && ip link set vantage0 up && ip link set vantage1 up"
    )
    completed = in_namespace(setup, raw=True, checks=[ping("silent", "10.99.0.2", reply_timeout="100ms")])
    assert completed.returncode == 1, completed.stdout + completed.stderr
    detail = failure_detail(completed)
    assert detail["reason"] == "timeout"
    assert detail["detail"] == "no reply to 3 echo requests to 10.99.0.2"


def test_targets_are_checked_at_load() -> None:
    with pytest.raises(ConfigError, match=r"'10\.0\.0\.1:80' is not a host name or an IP address"):
        config_from([ping("a", "10.0.0.1:80")])
    with pytest.raises(ConfigError, match="count"):
        config_from([ping("a", count=0)])
    config_from([ping("a", "::1"), ping("b", "vendor.example.")])
    with pytest.raises(ConfigError, match=r"'gw\.local' is not an IP address"):
        config_from([ping("a", source_ip_address="gw.local")])
    with pytest.raises(ConfigError, match="ttl"):
        config_from([ping("a", ttl=0)])


@pytest.mark.slow  # runs the agent in a network namespace, as a subprocess
def test_dont_fragment_refuses_a_request_over_the_mtu() -> None:
    """blackbox's dont_fragment: a request larger than the path's MTU fails instead of going out
    in fragments (here the namespace's loopback, at an MTU of 1400)."""
    checks = [
        ping("whole", payload_size=2000, dont_fragment=True, count=1),
        ping("in-pieces", payload_size=2000, count=1),
    ]
    completed = in_namespace("ip link set lo mtu 1400", raw=True, checks=checks)
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "1 passed, 1 failed" in completed.stdout, completed.stdout
    detail = failure_detail(completed)
    assert detail["check"] == "whole", detail
    assert detail["reason"] == "connect"
    assert detail["detail"] == "cannot send ICMP to 127.0.0.1: Message too long"


async def test_ip_fallback() -> None:
    if icmp_allowed() is None:
        pytest.skip("this process may open neither ICMP datagram nor raw sockets")
    results, _ = await run_checks(
        [
            ping("strict", ip_family="ipv6", count=1),
            ping("fallback", ip_family="ipv6", ip_fallback=True, count=1),
        ]
    )
    assert results["strict"].reason is Reason.DNS, results["strict"].message
    assert results["fallback"].success, results["fallback"].message
    assert results["fallback"].values["probe.ip_protocol"] == 4
