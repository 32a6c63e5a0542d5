"""The metric tables exported through the SDK's OTLP exporter to a real receiver, decoded with the
official ``opentelemetry-proto`` messages: gauges, counters, histograms, cumulative and delta
temporality, and a collection split into bounded batches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from agent import __version__
from agent.app import Agent, build_agent
from agent.sdk.probe import ProbeResult, Sample
from agent.sdk.reasons import Reason
from agent.telemetry.collection import MetricExport

from .exposition import build, record
from .helpers import Received, attributes, config_from, otlp_http_receiver

CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Received]]:
    with otlp_http_receiver() as (endpoint, received):
        for var in ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "OTEL_EXPORTER_OTLP_ENDPOINT"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)  # the SDK's exporter reads it
        yield endpoint, received


def exporting(endpoint: str, monkeypatch: pytest.MonkeyPatch, **extra: str) -> Agent:
    for var, value in extra.items():
        monkeypatch.setenv(var, value)
    return build(
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_METRIC_EXPORT_INTERVAL="3600000",
        **extra,
    )


def metrics_of(request: Any) -> list[tuple[dict[str, Any], dict[str, Any], Any]]:
    """(resource attributes, scope, metric) of every metric in one export request."""
    return [
        (attributes(rm.resource.attributes), {"name": sm.scope.name, "version": sm.scope.version}, metric)
        for rm in request.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    ]


def points(received: Received, name: str, start: int = 0) -> dict[str, Any]:
    """The data points of metric ``name`` in the requests from ``start`` on, by check (or by the
    whole attribute set), and the metric's kind."""
    out: dict[str, Any] = {}
    with received.lock:
        requests = received.metrics[start:]
    for request in requests:
        for _, _, metric in metrics_of(request):
            if metric.name != name:
                continue
            kind = metric.WhichOneof("data")
            for point in getattr(metric, kind).data_points:
                attrs = attributes(point.attributes)
                key = attrs.get("check") or repr(sorted(attrs.items()))
                if name == "probe.runs":
                    key = f"{attrs['check']}/{attrs['result']}"
                out[key] = (metric, point)
    return out


def test_cumulative_gauges_counters_and_histograms(
    receiver: tuple[str, Received], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, received = receiver
    agent = exporting(endpoint, monkeypatch)
    try:
        record(agent)
        assert agent.telemetry.flush(10)
        resource, scope, _ = metrics_of(received.metrics[0])[0]
        assert resource["service.instance.id"] == "golden-0" and resource["cloud.region"] == "eu-west-1"
        assert scope["name"] == "vantage"

        success = points(received, "probe.success")
        metric, point = success["api"]
        assert metric.WhichOneof("data") == "gauge" and metric.unit == "" and point.as_double == 1.0
        assert success["db"][1].as_double == 0.0
        assert attributes(point.attributes) == {
            "check": "api",
            "type": "http",
            "target": "https://api.vendor.test/v1/charges?key=",
            "region": "eu-west-1",
            "vendor": 'acme "quoted" \\ back',
        }
        runs = points(received, "probe.runs")
        metric, point = runs["db/failure"]
        assert metric.sum.is_monotonic and metric.sum.aggregation_temporality == CUMULATIVE
        assert metric.unit == "{run}" and point.as_double == 3.0
        assert attributes(point.attributes)["reason"] == "connect"
        assert runs["api/success"][1].as_double == 2.0
        first_start = point.start_time_unix_nano
        assert 0 < first_start <= point.time_unix_nano

        metric, point = points(received, "probe.all.duration")["db"]
        assert metric.unit == "s" and metric.histogram.aggregation_temporality == CUMULATIVE
        assert point.count == 3 and point.sum == pytest.approx(100.0101)
        assert list(point.explicit_bounds)[:2] == [0.005, 0.01] and len(point.bucket_counts) == 17
        assert point.bucket_counts[0] == 1 and point.bucket_counts[1] == 1 and point.bucket_counts[-1] == 1
        assert point.min == 0.0001 and point.max == 100.0
        http = points(received, "http.client.request.duration")
        assert sum(p.count for _, p in http.values()) == 3
        statuses = {attributes(p.attributes).get("http.response.status_code") for _, p in http.values()}
        assert statuses == {200, None}
        assert points(received, "vantage.inbound.requests")
        failures = points(received, "vantage.export.failures")
        assert {attributes(p.attributes)["signal"] for _, p in failures.values()} == {"traces", "metrics"}
        assert points(received, "vantage.checks")[repr([("region", "eu-west-1")])][1].as_int == 3

        # Cumulative: the next collection sends the totals, from the same start.
        seen = len(received.metrics)
        entry = next(e for e in agent.entries if e.check.name == "db")
        run = agent.recorder.start_run(entry)
        agent.recorder.finish_run(run, ProbeResult.failure(Reason.CONNECT, "refused", duration=0.02))
        assert agent.telemetry.flush(10)
        _, point = points(received, "probe.runs", seen)["db/failure"]
        assert point.as_double == 4.0 and point.start_time_unix_nano == first_start
        _, point = points(received, "probe.all.duration", seen)["db"]
        assert point.count == 4 and point.min == 0.0001 and point.max == 100.0
        assert "api/success" in points(received, "probe.runs", seen)
    finally:
        agent.telemetry.shutdown(5)


def test_delta_sends_differences_from_the_last_export(
    receiver: tuple[str, Received], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, received = receiver
    agent = exporting(endpoint, monkeypatch, OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE="delta")
    try:
        record(agent)
        assert agent.telemetry.flush(10)
        metric, point = points(received, "probe.runs")["db/failure"]
        assert metric.sum.aggregation_temporality == DELTA and point.as_double == 3.0
        first_time = point.time_unix_nano
        metric, hist = points(received, "probe.all.duration")["db"]
        assert metric.histogram.aggregation_temporality == DELTA and hist.count == 3

        seen = len(received.metrics)
        entry = next(e for e in agent.entries if e.check.name == "db")
        run = agent.recorder.start_run(entry)
        agent.recorder.finish_run(run, ProbeResult.failure(Reason.CONNECT, "refused", duration=0.02))
        agent.recorder.inbound("hooks", "accepted")
        assert agent.telemetry.flush(10)
        runs = points(received, "probe.runs", seen)
        _, point = runs["db/failure"]
        assert point.as_double == 1.0
        assert point.start_time_unix_nano == first_time < point.time_unix_nano
        assert "api/success" not in runs  # no change, nothing sent
        _, hist = points(received, "probe.all.duration", seen)["db"]
        assert hist.count == 1 and hist.sum == pytest.approx(0.02)
        assert hist.min == hist.max == 0.02
        assert sum(hist.bucket_counts) == 1 and hist.bucket_counts[2] == 1  # (0.01, 0.025]
        assert set(points(received, "probe.all.duration", seen)) == {"db"}
        inbound = points(received, "vantage.inbound.requests", seen)
        assert [p.as_double for _, p in inbound.values()] == [1.0]
        # Gauges have no temporality: every series goes.
        assert set(points(received, "probe.success", seen)) == {"api", "db", "hook"}
    finally:
        agent.telemetry.shutdown(5)


def test_a_large_collection_goes_out_in_bounded_batches(
    receiver: tuple[str, Received], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, received = receiver
    agent = exporting(endpoint, monkeypatch)
    try:
        record(agent)
        export = agent.telemetry.exports[0]
        export.batch = 7
        assert agent.telemetry.flush(10)
        sizes = []
        names: dict[str, int] = {}
        for request in received.metrics:
            size = 0
            for _, _, metric in metrics_of(request):
                kind = metric.WhichOneof("data")
                count = len(getattr(metric, kind).data_points)
                size += count
                names[metric.name] = names.get(metric.name, 0) + count
            sizes.append(size)
        assert len(sizes) > 3 and max(sizes) <= 7
        assert sum(sizes) == agent.telemetry.tables.series_count()
        assert names["probe.http.duration"] == 5 and names["probe.all.duration"] == 3
        assert agent.telemetry.health()["exported"] == {"metrics": len(sizes)}
    finally:
        agent.telemetry.shutdown(5)


def test_shutdown_exports_one_last_time(
    receiver: tuple[str, Received], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, received = receiver
    agent = exporting(endpoint, monkeypatch)
    record(agent)
    agent.telemetry.shutdown(5)
    assert points(received, "probe.success") and not agent.telemetry.exports[0]._thread.is_alive()


class _Keeping(MetricExporter):
    """Keeps what the SDK's encoder makes of each ``export()``."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        self.requests.append(encode_metrics(metrics_data))
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def _timeless(request: Any) -> Any:
    """The request with every time set to 1 (0 where it is absent): two collections' times differ."""
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in getattr(metric, metric.WhichOneof("data")).data_points:
                    point.time_unix_nano = 1 if point.time_unix_nano else 0
                    point.start_time_unix_nano = 1 if point.start_time_unix_nano else 0
    return request


@pytest.mark.parametrize("delta", [False, True], ids=["cumulative", "delta"])
def test_the_agents_own_encoding_decodes_as_the_sdks(delta: bool) -> None:
    """The requests the agent encodes for the OTLP/HTTP exporter (agent/telemetry/otlp_wire.py),
    decoded with the official messages, are those the SDK's encoder makes of the same batches."""
    agent = build(OTEL_METRICS_EXPORTER="prometheus")
    tables, resource = agent.telemetry.tables, agent.telemetry.resource
    scope = InstrumentationScope("vantage", __version__)
    kind = AggregationTemporality.DELTA if delta else AggregationTemporality.CUMULATIVE
    sdk, ours = _Keeping(), _Keeping()
    encoded: list[bytes] = []

    def send(data: bytes, timeout_millis: float) -> bool:
        encoded.append(data)
        return True

    exports = [
        MetricExport(tables, resource, scope, sdk, temporality=(kind, kind), batch=5),
        MetricExport(tables, resource, scope, ours, temporality=(kind, kind), batch=5, send=send),
    ]
    for _ in range(2):  # the second: differences since the first (delta), or totals again
        record(agent)
        for export in exports:
            assert export.collect(10)
    assert not ours.requests and len(encoded) == len(sdk.requests) > 4
    decoded = [_timeless(ExportMetricsServiceRequest.FromString(data)) for data in encoded]
    assert decoded == [_timeless(request) for request in sdk.requests]
    # What tells them apart survived: ints as ints, a gauge without a start, histogram's min/max.
    kinds = {m.name: m for r in decoded for _, _, m in metrics_of(r)}
    assert kinds["probe.http.status_code"].gauge.data_points[0].WhichOneof("value") == "as_int"
    assert kinds["probe.http.status_code"].gauge.data_points[0].start_time_unix_nano == 0
    assert kinds["probe.all.duration"].histogram.data_points[0].HasField("min")
    expected = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA if delta else CUMULATIVE
    assert (
        kinds["probe.runs"].sum.aggregation_temporality == expected and kinds["probe.runs"].sum.is_monotonic
    )


def test_the_otlp_http_exporter_gets_the_agents_encoding(
    receiver: tuple[str, Received], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, received = receiver
    agent = exporting(endpoint, monkeypatch)
    try:
        record(agent)
        export = agent.telemetry.exports[0]
        assert export._send_encoded is not None
        assert agent.telemetry.flush(10)
        assert agent.telemetry.health()["exported"] == {"metrics": export.exports}
        assert points(received, "probe.success")["api"][1].as_double == 1.0
    finally:
        agent.telemetry.shutdown(5)


@pytest.mark.parametrize("temporality", ["cumulative", "delta"])
def test_a_snapshot_metrics_dropped_series_are_no_longer_exported(
    receiver: tuple[str, Received], monkeypatch: pytest.MonkeyPatch, temporality: str
) -> None:
    """A vendor's component the latest run did not report (a ``snapshot`` metric) leaves the OTLP
    export as it leaves /metrics, and a run that reported none leaves nothing of the check's
    vendor series in the tables."""
    endpoint, received = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", temporality)
    check = {"name": "vendor", "type": "statuspage", "target": "http://127.0.0.1:9/"}
    config = config_from([check])
    agent = build_agent(
        config,
        {
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_METRIC_EXPORT_INTERVAL": "3600000",
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": temporality,
        },
    )
    (entry,) = agent.entries

    def finish(*components: tuple[str, float]) -> None:
        samples = tuple(Sample("probe.vendor.status", v, {"component": c}) for c, v in components)
        result = ProbeResult(success=True, values={"probe.vendor.indicator": 2.0}, samples=samples)
        if not components:
            result = ProbeResult.failure(Reason.PROTOCOL, "not a Statuspage summary")
        agent.recorder.finish_run(agent.recorder.start_run(entry), result)

    def exported(start: int) -> dict[str, float]:
        with received.lock:
            requests = received.metrics[start:]
        return {
            str(attributes(point.attributes)["component"]): point.as_double
            for request in requests
            for _, _, metric in metrics_of(request)
            if metric.name == "probe.vendor.status"
            for point in metric.gauge.data_points
        }

    tables = agent.telemetry.tables
    try:
        finish(("Payments API", 4.0), ("Webhooks", 0.0))
        assert agent.telemetry.flush(10)
        assert exported(0) == {"Payments API": 4.0, "Webhooks": 0.0}
        seen = len(received.metrics)
        finish(("Webhooks", 0.0))
        assert agent.telemetry.flush(10)
        assert exported(seen) == {"Webhooks": 0.0}
        finish()  # the page could not be read
        assert "vendor" not in tables.tables["probe.vendor.status"].checks
        assert "vendor" not in tables.tables["probe.vendor.indicator"].checks
        seen = len(received.metrics)
        assert agent.telemetry.flush(10)
        assert exported(seen) == {}
    finally:
        agent.telemetry.shutdown(5)
