"""``vantage run`` builds its OTLP/HTTP exporters after its start-up, in a thread, or when they are
first used, not before the first probe (``build_agent(..., defer_exporters=True)``): what they
send, and when, is what the exporters built at start-up send, checked at a real OTLP receiver with
the official protobuf messages."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from agent.app import Agent, build_agent
from agent.telemetry import providers
from agent.telemetry.providers import _DeferredMetricExport, _Sessions
from agent.telemetry.session import BoundedSession

from .exposition import ENVIRON, record, scenario_checks
from .helpers import Received, config_from, otlp_http_receiver, wait_until


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Received]]:
    # Not built after the start-up unless a test says so: each test decides what builds them.
    monkeypatch.setattr(providers, "_BUILD_AFTER", 3600.0)
    with otlp_http_receiver() as (endpoint, received):
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", raising=False)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)  # the SDK's exporters read it
        yield endpoint, received


def deferred(endpoint: str, interval_ms: int = 3_600_000) -> Agent:
    environ = {
        **ENVIRON,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": str(interval_ms),
    }
    config = config_from(scenario_checks(), VANTAGE_REGION="eu-west-1")
    return build_agent(config, environ, defer_exporters=True)


def built(agent: Agent) -> tuple[bool, int]:
    """Whether the metric export was built, and how many exporters (each with its session) were."""
    (export,) = agent.telemetry.exports
    assert isinstance(export, _DeferredMetricExport)
    return export.export is not None, len(agent.telemetry.sessions)


def test_the_exporters_are_built_at_the_first_export_and_send_as_usual(
    receiver: tuple[str, Received],
) -> None:
    endpoint, received = receiver
    agent = deferred(endpoint)
    try:
        record(agent)
        assert built(agent) == (False, 0)
        assert agent.telemetry.flush(10)
        assert built(agent) == (True, 2)
        assert received.points("probe.runs") and received.spans()
        exported = agent.telemetry.health()["exported"]
        assert exported["metrics"] >= 1 and exported["traces"] >= 1
    finally:
        agent.telemetry.shutdown(5)


def test_an_agent_stopped_before_any_export_sends_what_it_has(receiver: tuple[str, Received]) -> None:
    endpoint, received = receiver
    agent = deferred(endpoint)
    record(agent)
    agent.telemetry.shutdown(5)
    assert received.points("probe.runs") and received.spans()
    # Built to send the last of it, told the shutdown's deadline as they were.
    sessions = list(agent.telemetry.sessions)
    assert len(sessions) == 2 and all(session.cutoff is not None for session in sessions)


def test_the_metric_export_keeps_its_interval(receiver: tuple[str, Received]) -> None:
    endpoint, received = receiver
    agent = deferred(endpoint, interval_ms=100)
    try:
        record(agent)
        # The first collection is the deferred export's (which builds it), the next ones its own thread's.
        wait_until(lambda: len(received.metrics) >= 3, timeout=20)
        (export,) = agent.telemetry.exports
        assert isinstance(export, _DeferredMetricExport) and export.export is not None
        assert export.export._thread.is_alive()
    finally:
        agent.telemetry.shutdown(5)


def test_the_exporters_are_built_after_the_start_up(
    receiver: tuple[str, Received], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, received = receiver
    monkeypatch.setattr(providers, "_BUILD_AFTER", 0.05)
    agent = deferred(endpoint)
    try:
        wait_until(lambda: built(agent) == (True, 2), timeout=20)
        assert not received.metrics and not received.traces  # built, nothing sent before its time
    finally:
        agent.telemetry.shutdown(5)


def test_a_session_added_after_the_shutdown_began_gets_its_deadline() -> None:
    sessions = _Sessions()
    early = BoundedSession()
    sessions.add(early)
    cutoff = time.monotonic() + 1
    sessions.stop_by(cutoff)
    late = BoundedSession()
    sessions.add(late)
    assert early.cutoff == late.cutoff == cutoff
