"""A fixed scenario of runs recorded into an agent, for the exposition golden files.

``tests/golden/exposition.txt`` (text 0.0.4) and ``tests/golden/exposition.openmetrics.txt`` were
first written by the OpenTelemetry SDK's Prometheus exporter (``PrometheusMetricReader`` into a
``prometheus_client`` registry, SDK 1.45 / exporter 0.66b2 / prometheus_client 0.26) from this
scenario; the agent's own renderer must give the same bytes.
"""

from __future__ import annotations

from typing import Any

from agent.app import Agent, build_agent
from agent.net.http import RequestRecord
from agent.sdk.probe import ProbeResult, Sample
from agent.sdk.reasons import Reason

from .helpers import ROOT, config_from

GOLDEN_TEXT = ROOT / "tests" / "golden" / "exposition.txt"
GOLDEN_OPENMETRICS = ROOT / "tests" / "golden" / "exposition.openmetrics.txt"

ENVIRON = {"OTEL_TRACES_EXPORTER": "none", "HOSTNAME": "golden-0"}


def scenario_checks() -> list[dict[str, Any]]:
    return [
        {
            "name": "api",
            "type": "http",
            "target": "https://api.vendor.test/v1/charges?key=secret",
            "labels": {"vendor": 'acme "quoted" \\ back'},
        },
        {"name": "db", "type": "tcp", "target": "127.0.0.1:5432"},
        {
            "name": "hook",
            "type": "webhook",
            "target": "http://127.0.0.1:9",
            "settings": {"mode": "passive", "window": "5m", "token": "t0ken-value"},
        },
    ]


def build(**environ: str) -> Agent:
    """The scenario's agent; ``environ`` adds to (or overrides) its ``OTEL_*`` variables."""
    config = config_from(scenario_checks(), VANTAGE_REGION="eu-west-1")
    return build_agent(config, {**ENVIRON, **environ})


def record(agent: Agent) -> None:
    """Record the scenario's runs and the agent's own events."""
    recorder = agent.recorder
    entries = {entry.check.name: entry for entry in agent.entries}
    ok = ProbeResult(
        success=True,
        duration=0.123,
        phases={"resolve": 0.001, "connect": 0.002, "tls": 0.03, "processing": 0.05, "transfer": 0.0005},
        values={
            "probe.http.status_code": 200,
            "probe.http.version": 1.1,
            "probe.ssl.earliest_cert_expiry": 1_800_000_000.0,
            "probe.http.content_length": 12345678,
        },
        samples=(Sample("probe.tls.version_info", 1, {"version": "TLS 1.3"}, series="version"),),
    )
    failed = ProbeResult.failure(
        Reason.HTTP_STATUS, "HTTP 503", duration=2.5, values={"probe.http.status_code": 503}
    )
    requests = [
        RequestRecord("GET", "https", "api.vendor.test", 443, 0.1, 200, None, "1.1"),
        RequestRecord("GET", "https", "api.vendor.test", 443, 7.0, None, "timeout", None),
        RequestRecord("GET", "https", "api.vendor.test", 443, 0.004, 200, None, "1.1"),
    ]
    for result, sent in ((ok, requests[:1]), (failed, requests[1:2]), (ok, requests[2:])):
        run = recorder.start_run(entries["api"])
        recorder.finish_run(run, result, sent)
    for duration in (0.0001, 0.01, 100.0):
        run = recorder.start_run(entries["db"])
        recorder.finish_run(
            run,
            ProbeResult.failure(Reason.CONNECT, "refused", duration=duration, phases={"connect": duration}),
        )
    run = recorder.start_run(entries["hook"])
    recorder.finish_run(
        run,
        ProbeResult(
            success=True,
            duration=0.2,
            values={"probe.webhook.age": 12.5},
            samples=(
                Sample("probe.webhook.delivery", 0.75, {"timing": "on_time"}),
                Sample("probe.webhook.delivery", 30.0, {"timing": "late"}),
                Sample("probe.webhook.deliveries", 2, {"outcome": "matched"}),
            ),
        ),
    )
    for seconds in (0.0, 0.003, 0.04, 12.0):
        recorder.lateness(seconds)
    recorder.skipped(entries["db"], "overlap")
    recorder.skipped(entries["db"], "overlap")
    recorder.inbound("hooks", "accepted")
    recorder.inbound("heartbeat", "rejected")
    recorder.inbound("hooks", "accepted")
    recorder.loop_lag(0.0125)
