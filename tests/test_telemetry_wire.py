"""The agent as a process, exporting to a real OTLP receiver (HTTP and gRPC) that decodes it."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from .helpers import AgentProcess, Received, otlp_grpc_receiver, otlp_http_receiver, thread_server, wait_until

pytestmark = pytest.mark.slow

SPAN_KIND_CLIENT, STATUS_OK, STATUS_ERROR = 3, 1, 2


@pytest.fixture
def target() -> Iterator[tuple[int, list[str]]]:
    """A vendor API on loopback that remembers the traceparent headers it was sent."""
    traceparents: list[str] = []

    async def ok(request: web.Request) -> web.Response:
        traceparents.append(request.headers.get("traceparent", ""))
        return web.json_response({"ok": True})

    async def broken(_: web.Request) -> web.Response:
        return web.json_response({"error": "down"}, status=503)

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/broken", broken)
    with thread_server(app) as port:
        yield port, traceparents


def checks_for(port: int) -> list[dict[str, Any]]:
    return [
        {
            "name": "vendor-ok",
            "type": "http",
            "target": f"http://127.0.0.1:{port}/ok?key=abc",
            "interval": "1s",
            "timeout": "800ms",
            "labels": {"vendor": "acme"},
        },
        {
            "name": "vendor-broken",
            "type": "http",
            "target": f"http://127.0.0.1:{port}/broken",
            "interval": "1s",
            "timeout": "800ms",
        },
    ]


def fast_export(endpoint: str, **extra: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test",
        "VANTAGE_REGION": "eu-test",
        **extra,
    }


def both_checks_exported(received: Received) -> bool:
    roots = {span.name for _, span in received.spans()}
    checks = {attrs.get("check") for attrs, _ in received.points("probe.success")}
    return {"check vendor-ok", "check vendor-broken"} <= roots and {"vendor-ok", "vendor-broken"} <= checks


def assert_export(received: Received, traceparents: list[str]) -> None:
    spans = received.spans()
    resource = spans[0][0]
    assert resource["service.name"] == "vantage"
    assert resource["cloud.region"] == "eu-test"
    assert resource["deployment.environment.name"] == "test"
    assert resource["service.version"]
    # The host's name (a pod's name in Kubernetes), not the SDK's random UUID, which would start new
    # series at every restart (the agent runs without HOSTNAME here).
    assert resource["service.instance.id"] == socket.gethostname()

    by_id = {span.span_id: span for _, span in spans}
    ok_root = next(s for _, s in spans if s.name == "check vendor-ok")
    attrs = {kv.key: kv.value.string_value for kv in ok_root.attributes}
    assert attrs["vantage.check.name"] == "vendor-ok"
    assert attrs["vantage.check.type"] == "http"
    assert attrs["vantage.check.target"].endswith("/ok?key=")  # query values never leave the agent
    assert attrs["vantage.result"] == "success"
    assert ok_root.status.code == STATUS_OK
    client = next(s for _, s in spans if s.parent_span_id == ok_root.span_id)
    assert client.kind == SPAN_KIND_CLIENT and client.name == "GET"
    client_attrs = {kv.key: kv.value for kv in client.attributes}
    assert client_attrs["http.request.method"].string_value == "GET"
    assert client_attrs["http.response.status_code"].int_value == 200
    assert client_attrs["server.address"].string_value == "127.0.0.1"
    # The request the vendor saw carried this very trace and span.
    sent = f"00-{ok_root.trace_id.hex()}-{client.span_id.hex()}-"
    assert any(header.startswith(sent) for header in traceparents)

    broken_root = next(s for _, s in spans if s.name == "check vendor-broken")
    assert broken_root.status.code == STATUS_ERROR
    assert "HTTP 503" in broken_root.status.message
    broken_attrs = {kv.key: kv.value.string_value for kv in broken_root.attributes}
    assert broken_attrs["error.type"] == "http_status"
    broken_client = next(s for s in by_id.values() if s.parent_span_id == broken_root.span_id)
    assert broken_client.status.code == STATUS_ERROR

    success = {a["check"]: v for a, v in received.points("probe.success")}
    assert success["vendor-ok"] == 1 and success["vendor-broken"] == 0
    ok_attrs = next(a for a, _ in received.points("probe.success") if a["check"] == "vendor-ok")
    assert ok_attrs == {
        "check": "vendor-ok",
        "type": "http",
        "target": ok_attrs["target"],
        "region": "eu-test",
        "vendor": "acme",
    }
    runs = {(a["check"], a["result"], a.get("reason")) for a, _ in received.points("probe.runs")}
    assert ("vendor-broken", "failure", "http_status") in runs and ("vendor-ok", "success", None) in runs
    phases = {a["phase"] for a, _ in received.points("probe.http.duration")}
    assert phases == {"resolve", "connect", "tls", "processing", "transfer"}
    statuses = {a["check"]: v for a, v in received.points("probe.http.status_code")}
    assert statuses == {"vendor-ok": 200, "vendor-broken": 503}
    assert received.points("http.client.request.duration")
    assert received.points("vantage.scheduler.lateness")
    units = received.metric_units()
    assert units["probe.duration"] == "s" and units["probe.all.duration"] == "s"
    assert units["http.client.request.duration"] == "s"


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_export_reaches_an_otlp_receiver(protocol: str, target: tuple[int, list[str]]) -> None:
    port, traceparents = target
    receiver = otlp_http_receiver if protocol == "http/protobuf" else otlp_grpc_receiver
    with receiver() as (endpoint, received):
        agent = AgentProcess(checks_for(port), fast_export(endpoint, OTEL_EXPORTER_OTLP_PROTOCOL=protocol))
        try:
            wait_until(lambda: both_checks_exported(received), timeout=30)
            assert agent.stop() == 0, agent.output
        finally:
            agent.kill()
        assert_export(received, traceparents)


def test_a_hung_backend_never_stops_probing(target: tuple[int, list[str]]) -> None:
    port, _ = target

    async def hang(_: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response()

    backend = web.Application()
    backend.router.add_post("/v1/traces", hang)
    backend.router.add_post("/v1/metrics", hang)
    with thread_server(backend) as backend_port:
        agent = AgentProcess(
            checks_for(port)[:1],
            fast_export(
                f"http://127.0.0.1:{backend_port}",
                OTEL_EXPORTER_OTLP_TIMEOUT="1",
                VANTAGE_SHUTDOWN_TIMEOUT="3s",
            ),
        )
        try:

            def ready() -> dict[str, Any] | None:
                try:
                    with urllib.request.urlopen(agent.url("/readyz"), timeout=2) as response:
                        body: dict[str, Any] = json.load(response)
                except OSError:
                    return None
                return body if sum(body["telemetry"]["failed"].values()) >= 2 else None

            body = wait_until(ready, timeout=40)
            assert body["status"] == "ready"
            telemetry = body["telemetry"]
            for signal in telemetry["failed"]:
                assert telemetry["last_error"][signal]["cause"] == "timeout"
                assert (
                    telemetry["last_error"][signal]["endpoint"]
                    == f"http://127.0.0.1:{backend_port}/v1/{signal}"
                )
            assert body["event_loop"] == "uvloop"
            runs_then = check_state(agent)["runs"]
            # The check keeps its schedule and its result: export trouble is not a failed check.
            state = wait_until(lambda: (s := check_state(agent))["runs"] >= runs_then + 3 and s, timeout=20)
            assert state["failures"] == 0
            assert agent.stop() == 0, agent.output
        finally:
            agent.kill()
        assert "not flushed" in agent.output or "vantage stopped" in agent.output


def check_state(agent: AgentProcess) -> dict[str, Any]:
    with urllib.request.urlopen(agent.url("/api/checks"), timeout=2) as response:
        state: dict[str, Any] = json.load(response)["checks"][0]
    return state
