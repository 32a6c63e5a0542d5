"""The adapter to the OpenTelemetry SDK's private parts: the one module that reaches into them.

It reaches into three places, for want of a public API (SDK 1.45):

* ``BatchSpanProcessor._batch_processor._metrics``: the SDK counts the spans a full queue drops
  only in its opt-in self-metrics, by calling ``drop_items`` on that private metrics object.
  :class:`CountingBatchSpanProcessor` replaces it with a proxy that also counts them for the agent
  (``vantage.spans.dropped``); on an SDK without it, the agent logs a warning once and counts 0.
* ``MetricExporter._preferred_temporality`` and ``_preferred_aggregation``: an exporter states its
  preferences only to its constructor, and the SDK's own ``PeriodicExportingMetricReader`` reads
  them back from these attributes. The agent reads the OTLP exporters' preferences from the
  environment itself (``agent/telemetry/providers.py``); :func:`metric_preferences` reads them only
  for an exporter the agent knows nothing of (one installed by a third-party package), so that the
  agent's own collection (``agent/telemetry/collection.py``) sends it the temporality it asks for.
* ``OTLPMetricExporter._client.export(bytes)`` (and ``_shutdown``): the OTLP/HTTP metric exporter
  sends only what its own encoder made of the SDK's data model; the agent encodes its tables
  itself (``agent/telemetry/otlp_wire.py``) and :func:`otlp_http_sender` hands the bytes to the
  exporter's client, which sends them as the exporter would (endpoint, headers, compression,
  timeout, retries, its session). On an SDK without it, the agent logs a warning once and
  exports through ``export()``.

``tests/test_adapters.py`` fails, naming the attribute, on an SDK that moves or changes either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

if TYPE_CHECKING:  # the SDK's metric data model is imported only with a metric exporter
    from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricExporter
    from opentelemetry.sdk.metrics.view import Aggregation

__all__ = ["CountingBatchSpanProcessor", "DropSink", "metric_preferences", "otlp_http_sender"]

log = logging.getLogger("vantage.telemetry")


class DropSink(Protocol):
    """Where the count of dropped spans goes (``ExportStats``)."""

    def spans_dropped(self, count: int) -> None: ...


class _DropCounter:
    """Stands in for the batch processor's own metrics object and counts what it drops."""

    def __init__(self, inner: Any, stats: DropSink) -> None:
        self._inner, self._stats = inner, stats

    def register_queue_size(self, get_queue_size: Callable[[], int]) -> None:
        self._inner.register_queue_size(get_queue_size)

    def drop_items(self, count: int, error_type: str = "queue_full") -> None:
        if error_type == "queue_full":
            self._stats.spans_dropped(count)
        self._inner.drop_items(count, error_type)

    def finish_items(self, count: int) -> None:
        self._inner.finish_items(count)


class CountingBatchSpanProcessor(BatchSpanProcessor):
    """A BatchSpanProcessor whose full-queue drops are counted by ``stats.spans_dropped``.

    The SDK (1.45) counts them only in its opt-in self-metrics: its batch processor calls
    ``drop_items`` on a private metrics object, which this adapter replaces with a counting proxy.
    """

    def __init__(self, exporter: SpanExporter, stats: DropSink, **kwargs: Any) -> None:
        super().__init__(exporter, **kwargs)
        processor = getattr(self, "_batch_processor", None)
        metrics = getattr(processor, "_metrics", None)
        if processor is None or not callable(getattr(metrics, "drop_items", None)):
            log.warning("this OpenTelemetry SDK hides dropped spans; vantage.spans.dropped stays 0")
            return
        processor._metrics = _DropCounter(metrics, stats)


def metric_preferences(
    exporter: MetricExporter,
) -> tuple[dict[type, AggregationTemporality] | None, dict[type, Aggregation] | None]:
    """The temporality and aggregation ``exporter`` asks its reader for, as the SDK's own reader
    reads them (None: the reader's defaults)."""
    return exporter._preferred_temporality, exporter._preferred_aggregation


def otlp_http_sender(exporter: MetricExporter) -> Callable[[bytes], bool] | None:
    """Sends an encoded ``ExportMetricsServiceRequest`` through the OTLP/HTTP metric exporter's
    own client, as its ``export()`` sends what its encoder made; whether it went through. None
    (and a warning) on an SDK whose exporter has no such client."""
    client = getattr(exporter, "_client", None)
    export = getattr(client, "export", None)
    if not callable(export) or not hasattr(exporter, "_shutdown"):
        log.warning("this OpenTelemetry SDK's OTLP/HTTP metric exporter cannot send encoded requests")
        return None

    def send(data: bytes) -> bool:
        if exporter._shutdown:
            return False
        return bool(export(data).success)

    return send
