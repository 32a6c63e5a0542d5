"""``OTEL_SDK_DISABLED=true``: no OpenTelemetry export at all (the specification's no-op SDK),
while the agent goes on probing, logging, serving its status page and its own ``/metrics``;
``/readyz`` says the exporters are off."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.errors import ConfigError
from agent.telemetry.providers import build_resource, build_telemetry, validate_otel_env

from .helpers import AgentProcess, otlp_http_receiver, wait_until
from .test_telemetry_wire import checks_for, fast_export, target  # noqa: F401 (a fixture)

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}


def telemetry(**environ: str) -> Any:
    return build_telemetry(environ, build_resource(environ, region="eu", version="1"))


@pytest.mark.parametrize("value", ["true", "TRUE", " True "])
def test_a_disabled_sdk_builds_no_exporter_but_keeps_the_prometheus_page(value: str) -> None:
    built = telemetry(OTEL_SDK_DISABLED=value, OTEL_TRACES_EXPORTER="otlp,console", **ENDPOINT)
    try:
        assert built.trace_exporters == [] and built.exports == [] and built.sampling is None
        assert built.metric_exporters == ["prometheus"] and built.exposition is not None
        health = built.health()
        assert health["sdk_disabled"] is True
        assert health["exporters"] == {"traces": [], "metrics": ["prometheus"]}
        assert "OTEL_SDK_DISABLED" in health["note"] and "/metrics" in health["note"]
    finally:
        built.shutdown(1)


def test_a_disabled_sdk_without_the_prometheus_exporter_serves_no_metrics_page() -> None:
    built = telemetry(OTEL_SDK_DISABLED="true", OTEL_METRICS_EXPORTER="otlp", **ENDPOINT)
    try:
        assert built.metric_exporters == [] and built.exposition is None
        assert "no /metrics" in built.health()["note"]
    finally:
        built.shutdown(1)


@pytest.mark.parametrize("value", ["false", "FALSE", ""])
def test_the_sdk_is_on_unless_told_true(value: str) -> None:
    built = telemetry(OTEL_SDK_DISABLED=value, **ENDPOINT)
    try:
        assert built.trace_exporters == ["otlp"] and built.metric_exporters == ["prometheus", "otlp"]
        assert "sdk_disabled" not in built.health()
    finally:
        built.shutdown(1)


@pytest.mark.parametrize("value", ["1", "yes", "on", "disabled"])
def test_a_value_that_is_neither_true_nor_false_is_refused(value: str) -> None:
    # The SDK would read it as false and say nothing: the agent says so before it starts.
    with pytest.raises(ConfigError, match=rf"OTEL_SDK_DISABLED: {value!r} is neither true nor false"):
        telemetry(OTEL_SDK_DISABLED=value, **ENDPOINT)


def test_a_misspelt_exporter_is_refused_with_the_sdk_disabled_too() -> None:
    # Off today, the same variables start the exporters once OTEL_SDK_DISABLED goes: a name that
    # would then stop the agent is refused now, not at the day the SDK is turned back on.
    environ = {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otpl", **ENDPOINT}
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER: unknown exporter 'otpl'"):
        validate_otel_env(environ)


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


def metric_checks(url: str) -> set[str]:
    """The checks with a ``probe_success`` on the page (none while the agent is not listening yet)."""
    try:
        _, body = get(url)
    except OSError:
        return set()
    return {
        sample.labels["check"]
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == "probe_success"
    }


@pytest.mark.slow
def test_a_disabled_sdk_sends_nothing_to_the_collector_and_the_agent_goes_on(
    target: tuple[int, list[str]],  # noqa: F811 (the fixture)
) -> None:
    port, _ = target
    with otlp_http_receiver() as (endpoint, received):
        agent = AgentProcess(checks_for(port), fast_export(endpoint, OTEL_SDK_DISABLED="true"))
        try:
            # The checks run and are served on /metrics (the agent's own page, not an OTel export).
            wait_until(
                lambda: metric_checks(agent.url("/metrics")) == {"vendor-ok", "vendor-broken"}, timeout=30
            )
            status, body = get(agent.url("/readyz"))
            ready = json.loads(body)
            assert status == 200 and ready["status"] == "ready"
            assert ready["telemetry"]["sdk_disabled"] is True
            assert ready["telemetry"]["exporters"] == {"traces": [], "metrics": ["prometheus"]}
            _, page = get(agent.url("/"))
            assert b"vendor-broken" in page  # the status page too
        finally:
            # A stop flushes what the exporters hold (tests/test_telemetry_wire.py sees it arrive):
            # with the SDK disabled there is nothing to flush, and nothing was sent before.
            assert agent.stop() == 0, agent.output
    assert received.traces == [] and received.metrics == []
    assert "check vendor-broken is failing" in agent.output  # logs go on
    assert "OTEL_SDK_DISABLED" in agent.output
