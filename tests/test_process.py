"""The vantage command as a user runs it: validate, once, plugins, secrets, and SIGTERM."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from aiohttp import web

from .helpers import AgentProcess, Received, otlp_http_receiver, thread_server, wait_until

pytestmark = pytest.mark.slow

SECRET = "sk_live_TOPSECRET_1234"


@pytest.fixture
def vendor() -> Iterator[tuple[int, dict[str, Any]]]:
    seen: dict[str, Any] = {"auth": [], "slow_started": threading.Event()}

    async def echo(request: web.Request) -> web.Response:
        seen["auth"].append(request.headers.get("Authorization", ""))
        body = {
            "you_sent": request.headers.get("Authorization"),
            "query": dict(request.query),
            "path": request.path,
        }
        return web.json_response(body)

    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def slow(_: web.Request) -> web.Response:
        seen["slow_started"].set()
        await asyncio.sleep(1.5)
        return web.json_response({"ok": True})

    async def hang(_: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response()

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]))

    app = web.Application()
    app.router.add_get("/echo/{rest:.*}", echo)
    app.router.add_get("/ok", ok)
    app.router.add_get("/slow", slow)
    app.router.add_get("/hang", hang)
    app.router.add_get("/status/{code}", status)
    with thread_server(app) as port:
        yield port, seen


def vantage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        env={"PATH": "", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_validate_accepts_and_rejects() -> None:
    good = yaml.safe_dump({"checks": [{"name": "a", "type": "http", "target": "https://api.example/"}]})
    result = vantage("validate", env={"VANTAGE_CHECKS": good, "VANTAGE_REGION": "eu"})
    assert result.returncode == 0, result.stderr
    assert "configuration OK: 1 check from VANTAGE_CHECKS; 1 run in region eu" in result.stdout

    bad = yaml.safe_dump({"checks": [{"name": "a", "type": "smtp", "target": "x"}]})
    result = vantage("validate", env={"VANTAGE_CHECKS": bad})
    assert result.returncode == 2
    assert (
        "field 'type': unknown probe type 'smtp'; available: "
        "dns, flow, grpc, heartbeat, http, icmp, statuspage, sync, tcp, tls, webhook" in result.stderr
    )

    result = vantage("run", env={"VANTAGE_CHECKS": good, "VANTAGE_PORT": "http"})
    assert result.returncode == 2  # `run` refuses too, before it probes anything
    assert "VANTAGE_PORT: Input should be a valid integer" in result.stderr

    result = vantage(
        "validate",
        env={
            "VANTAGE_CHECKS": good,
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "10000",
        },
    )
    assert result.returncode == 2 and "OTEL_EXPORTER_OTLP_TIMEOUT" in result.stderr


def test_once_prints_a_table_and_gates(vendor: tuple[int, dict[str, Any]]) -> None:
    port, _ = vendor
    passing = [{"name": "up", "type": "http", "target": f"http://127.0.0.1:{port}/ok"}]
    failing = [*passing, {"name": "down", "type": "http", "target": f"http://127.0.0.1:{port}/status/502"}]
    env = {"OTEL_METRICS_EXPORTER": "none", "VANTAGE_LOG_LEVEL": "error"}
    result = vantage("once", env={**env, "VANTAGE_CHECKS": yaml.safe_dump({"checks": passing})})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 0 failed" in result.stdout
    result = vantage("once", env={**env, "VANTAGE_CHECKS": yaml.safe_dump({"checks": failing})})
    assert result.returncode == 1
    row = next(line for line in result.stdout.splitlines() if line.startswith("down"))
    assert "FAIL" in row and "http_status" in row and "HTTP 502" in row
    assert "1 passed, 1 failed" in result.stdout


def test_plugins_lists_probe_types_and_settings() -> None:
    result = vantage("plugins", env={})
    assert result.returncode == 0
    assert "http  (plugins.http.HttpProbe)" in result.stdout
    assert "max_body" in result.stdout and "assert" in result.stdout


def get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def exported(received: Received) -> bytes:
    with received.lock:
        return b"".join(m.SerializeToString() for m in [*received.traces, *received.metrics])


def test_a_secret_never_leaves_the_agent(vendor: tuple[int, dict[str, Any]]) -> None:
    port, seen = vendor
    checks = [
        {
            "name": "leaky",
            "type": "http",
            "target": f"http://127.0.0.1:{port}/echo/${{VENDOR_KEY}}?key=${{VENDOR_KEY}}",
            "interval": "1s",
            "timeout": "900ms",
            "labels": {"hint": "${VENDOR_KEY}"},
            "settings": {
                "headers": {"Authorization": "Bearer ${VENDOR_KEY}"},
                # Fails, and the failure message would quote the body that echoes the key.
                "assert": [{"source": "body", "op": "contains", "value": "never there"}],
            },
        }
    ]
    api_token = "api-token-9876543"
    with otlp_http_receiver() as (endpoint, received):
        agent = AgentProcess(
            checks,
            {
                "VENDOR_KEY": SECRET,
                "VANTAGE_API_TOKEN": api_token,
                "VANTAGE_LOG_LEVEL": "debug",
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_METRIC_EXPORT_INTERVAL": "300",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            },
        )
        try:
            wait_until(lambda: received.spans() and received.points("probe.success"), timeout=30)
            status, _ = get(agent.url("/api/checks"))
            assert status == 401
            status, api = get(agent.url("/api/checks"), api_token)
            assert status == 200
            _, metrics = get(agent.url("/metrics"))
            assert agent.stop() == 0, agent.output
        finally:
            agent.kill()
    assert seen["auth"] and seen["auth"][0] == f"Bearer {SECRET}"  # the vendor did get the key
    state = json.loads(api)["checks"][0]
    assert state["last"]["reason"] == "assertion" and "<redacted>" in state["last"]["message"]
    for where, text in [("api", api), ("metrics", metrics), ("logs", agent.output)]:
        assert SECRET not in text, where
        assert api_token not in text, where
    assert SECRET.encode() not in exported(received)
    assert b"<redacted>" in exported(received)
    # One JSON object per line; the state change and the per-run lines name check, result, reason.
    lines = [json.loads(line) for line in agent.output.splitlines() if line.startswith("{")]
    runs = [line for line in lines if line.get("check") == "leaky"]
    assert runs[0]["level"] == "warning" and runs[0]["message"].startswith(
        "check leaky is failing: assertion"
    )
    assert {(r["result"], r["reason"]) for r in runs} == {("failure", "assertion")}
    assert all(isinstance(r["duration"], float) for r in runs)


def test_sigterm_drains_flushes_and_exits_zero(vendor: tuple[int, dict[str, Any]]) -> None:
    port, seen = vendor
    checks = [
        {
            "name": "slow",
            "type": "http",
            "target": f"http://127.0.0.1:{port}/slow",
            "interval": "10s",
            "timeout": "9s",
        },
        {
            "name": "stuck",
            "type": "http",
            "target": f"http://127.0.0.1:{port}/hang",
            "interval": "10s",
            "timeout": "9s",
        },
    ]
    with otlp_http_receiver() as (endpoint, received):
        agent = AgentProcess(
            checks,
            {
                "VANTAGE_SHUTDOWN_TIMEOUT": "5s",  # 3s to drain runs in flight, the rest to flush
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_METRIC_EXPORT_INTERVAL": "60000",  # nothing is exported before the shutdown flush
                "OTEL_BSP_SCHEDULE_DELAY": "60000",
            },
        )
        try:
            wait_until(lambda: get(agent.url("/readyz"))[0] == 200 if _up(agent) else False, timeout=30)
            wait_until(seen["slow_started"].is_set, timeout=20)  # the first tick lands within 10s
            assert agent.stop() == 0, agent.output
        finally:
            agent.kill()
    roots = {span.name: span for _, span in received.spans() if span.name.startswith("check ")}
    # The slow run finished during the drain and its result was flushed on the way out.
    assert {kv.key: kv.value.string_value for kv in roots["check slow"].attributes}[
        "vantage.result"
    ] == "success"
    assert {a["check"]: v for a, v in received.points("probe.success")}.get("slow") == 1
    if "check stuck" in roots:  # it started too: cancelled at the drain deadline, not a failed check
        assert "shutting down" in roots["check stuck"].status.message
    assert not any(a["check"] == "stuck" for a, _ in received.points("probe.runs"))
    assert "vantage stopped" in agent.output


def _up(agent: AgentProcess) -> bool:
    try:
        get(agent.url("/healthz"))
    except OSError:
        return False
    return True


@pytest.mark.slow
def test_healthcheck_command(vendor: tuple[int, dict[str, Any]]) -> None:
    port, _ = vendor
    check = {"name": "a", "type": "http", "target": f"http://127.0.0.1:{port}/ok", "interval": "5s"}
    agent = AgentProcess([check], {})
    try:
        wait_until(lambda: _up(agent), timeout=30)
        healthy = vantage("healthcheck", env={"VANTAGE_PORT": str(agent.port)})
        assert agent.stop() == 0, agent.output
    finally:
        agent.kill()
    gone = vantage("healthcheck", env={"VANTAGE_PORT": str(agent.port)})
    assert healthy.returncode == 0, healthy.stderr
    assert gone.returncode == 1
    assert f"the agent on port {agent.port} is not healthy" in gone.stderr
