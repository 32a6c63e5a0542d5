"""The metric exporters other than ``/metrics``: imported only when one is configured, with the
SDK's metric export data model (``opentelemetry.sdk.metrics``) that they need.

:func:`build_metric_export` builds one: the exporter (an OTLP/HTTP one with its
:class:`~agent.telemetry.session.BoundedSession`), wrapped so that its exports are counted, and
the :class:`~agent.telemetry.collection.MetricExport` that collects the tables for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.metrics import Histogram
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.metrics.view import Aggregation, ExponentialBucketHistogramAggregation

from agent.telemetry import providers
from agent.telemetry._otel_sdk import metric_preferences, otlp_http_sender
from agent.telemetry.collection import MetricExport, temporality_of
from agent.telemetry.providers import ExportStats, _Outcomes

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from agent.telemetry.providers import _Sessions
    from agent.telemetry.tables import MetricTables

__all__ = ["CountingMetricExporter", "build_metric_export"]


class CountingMetricExporter(MetricExporter):
    """Counts the exports of ``inner``."""

    def __init__(
        self,
        inner: MetricExporter,
        name: str,
        stats: ExportStats,
        endpoint: str = "",
        outcomes: _Outcomes | None = None,
        sender: Callable[[bytes], bool] | None = None,
    ) -> None:
        super().__init__()
        self._inner, self._name, self._stats, self._endpoint = inner, name, stats, endpoint
        self._outcomes = outcomes or _Outcomes(None)
        self._sender = sender

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        self._outcomes.begin()
        try:
            result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception as exc:
            self._stats.failed_with("metrics", self._outcomes.failure(exc), self._name, self._endpoint)
            return MetricExportResult.FAILURE
        if result is MetricExportResult.SUCCESS:
            self._stats.succeeded("metrics", self._name, self._endpoint)
        else:
            self._stats.failed_with("metrics", self._outcomes.failure(), self._name, self._endpoint)
        return result

    def export_encoded(self, data: bytes, timeout_millis: float = 10_000) -> bool:
        """Send an encoded request through ``send`` (see :func:`otlp_http_sender`), counted as an
        ``export()`` is; whether it went through."""
        assert self._sender is not None
        self._outcomes.begin()
        try:
            ok = self._sender(data)
        except Exception as exc:
            self._stats.failed_with("metrics", self._outcomes.failure(exc), self._name, self._endpoint)
            return False
        if ok:
            self._stats.succeeded("metrics", self._name, self._endpoint)
        else:
            self._stats.failed_with("metrics", self._outcomes.failure(), self._name, self._endpoint)
        return ok

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def build_metric_export(
    environ: Mapping[str, str],
    name: str,
    *,
    tables: MetricTables,
    resource: Resource,
    scope: InstrumentationScope,
    stats: ExportStats,
    sessions: _Sessions,
    interval: float,
    timeout: float,
    note: bool = True,
) -> MetricExport:
    """The metric exporter ``name`` (``OTEL_METRICS_EXPORTER``) and its export, not started.
    Raises ConfigError when the exporter cannot be built. ``note``: warn when the exporter asks
    for exponential histograms (unless that was said at start-up already)."""
    exporter, target, outcomes = providers._exporter(environ, "metrics", name)
    if outcomes.session is not None:
        sessions.add(outcomes.session)
    preferences = providers._known_metric_preferences(environ, name) or metric_preferences(exporter)
    if note:
        _note_histogram_aggregation(name, preferences[1])
    # The OTLP/HTTP exporter's own encoder is most of a collection's cost: the agent encodes
    # for it (agent/telemetry/otlp_wire.py) and sends through its client.
    sender = (
        otlp_http_sender(exporter)
        if providers._point_name(environ, "metrics", name) == "otlp_proto_http"
        else None
    )
    counting = CountingMetricExporter(exporter, name, stats, target, outcomes, sender)
    return MetricExport(
        tables,
        resource,
        scope,
        counting,
        interval=interval,
        timeout=timeout,
        temporality=temporality_of(preferences[0]),
        name=name,
        send=counting.export_encoded if sender is not None else None,
    )


def _note_histogram_aggregation(name: str, aggregation: Mapping[type, Aggregation] | None) -> None:
    """Histograms are explicit-bucket tables: say so when an exporter asks for exponential ones."""
    if isinstance((aggregation or {}).get(Histogram), ExponentialBucketHistogramAggregation):
        providers._warn_exponential_histograms(name)
