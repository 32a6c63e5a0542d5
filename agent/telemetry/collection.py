"""OTLP (and any other OpenTelemetry metric exporter): the tables turned into the SDK's export data
model at each interval, and handed to the exporter in bounded batches.

The exporter is whatever ``OTEL_METRICS_EXPORTER`` names (``otlp``, ``console``, an installed
package's entry point); it gets what the SDK's ``PeriodicExportingMetricReader`` would give it:
``MetricsData`` with the agent's resource and one scope (``vantage``), with ``Gauge``, ``Sum``
(monotonic) and ``Histogram`` (explicit buckets) metrics. The differences from the SDK's reader:

* there is no ``MeterProvider``: each collection reads the tables (agent/telemetry/tables.py);
* a collection goes out in batches of at most ``batch`` data points, one ``export()`` each, so
  that memory stays flat however many checks there are; between two batches, and every few
  hundred points while one is built, the thread sleeps, handing the interpreter lock back to the
  event loop. A failed batch ends the collection: the next one sends the totals again
  (cumulative), or the differences since what went through (delta);
* temporality: counters follow the exporter's preference for ``Counter``, histograms for
  ``Histogram``, gauges have none. Delta keeps, per series, what was last sent and when: a point
  is the difference since then, starting then; a series that did not change is not sent; a
  histogram's min and max are those of the values since it was last sent;
* histograms are always explicit-bucket, with the buckets of their ``MetricSpec`` (the same as on
  ``/metrics``): ``base2_exponential_bucket_histogram`` is not honoured (see docs/metrics.md).

The interval and timeout are ``OTEL_METRIC_EXPORT_INTERVAL`` (60000 ms) and
``OTEL_METRIC_EXPORT_TIMEOUT`` (30000 ms), as the SDK reads them; the timeout bounds a whole
collection, each batch getting what is left of it.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from agent.sdk.probe import MetricKind
from agent.telemetry.tables import HistogramPoint, MetricTables, Point, Table, attributes_of

if TYPE_CHECKING:
    from agent.telemetry.otlp_wire import Encoder

__all__ = ["BATCH", "CUMULATIVE", "MetricExport", "Send", "Temporality", "temporality_of"]

log = logging.getLogger("vantage.telemetry")

BATCH = 2000
"""Data points per ``export()`` call at most."""
_SLICE = 256  # data points built between two hand-overs of the interpreter lock
_PAUSE = 0.001  # the sleep between two batches

_ids = itertools.count()

Temporality = tuple[AggregationTemporality, AggregationTemporality]
"""The temporality of counters and of histograms."""
CUMULATIVE: Temporality = (AggregationTemporality.CUMULATIVE, AggregationTemporality.CUMULATIVE)


class _Batch:
    """Data points on their way to one ``export()``, by table, and the delta state that is kept
    once they went through. A data point is ``(attributes, extra, value, start)`` for a gauge,
    ``(series, start, value)`` for a counter,
    ``(series, start, count, sum, bucket counts, min, max)`` for a histogram."""

    def __init__(self, now: int) -> None:
        self.now = now
        self.points: dict[Table, list[tuple[Any, ...]]] = {}
        self.size = 0
        self.sent: list[tuple[Point | HistogramPoint, Any]] = []

    def add(self, table: Table, point: tuple[Any, ...]) -> None:
        points = self.points.get(table)
        if points is None:
            points = self.points[table] = []
        points.append(point)
        self.size += 1


Send = Callable[[bytes, float], bool]
"""Sends one encoded ``ExportMetricsServiceRequest`` within a timeout (ms); whether it went through."""


class MetricExport:
    """Collects the tables every ``interval`` seconds in a thread of its own and exports them.

    With ``send``, the batches are encoded by the agent (agent/telemetry/otlp_wire.py) and handed
    to ``send`` instead of the exporter's ``export()`` (the ``otlp_proto_http`` exporter, whose
    own encoder is most of a collection's cost); the exporter is still the one shut down."""

    def __init__(
        self,
        tables: MetricTables,
        resource: Resource,
        scope: InstrumentationScope,
        exporter: MetricExporter,
        *,
        interval: float = 60.0,
        timeout: float = 30.0,
        temporality: Temporality = CUMULATIVE,
        batch: int = BATCH,
        name: str = "",
        send: Send | None = None,
    ) -> None:
        self._tables, self._resource, self._scope = tables, resource, scope
        self.exporter = exporter
        self.interval, self.timeout, self.batch = interval, timeout, batch
        self._delta_counters = temporality[0] is AggregationTemporality.DELTA
        self._delta_histograms = temporality[1] is AggregationTemporality.DELTA
        self._temporality = temporality
        self._send_encoded = send
        self._envelope: tuple[bytes, bytes, str, str] | None = None
        if send is not None:
            # Imported only for an OTLP exporter (start-up imports what the exporters need).
            from agent.telemetry.otlp_wire import Encoder

            self._envelope = Encoder.envelope(resource, scope)
        self._encoder: Encoder | None = None
        self._id = next(_ids)
        self._lock = threading.Lock()  # one collection at a time: the thread's, a flush's
        self._stop = threading.Event()
        self._starting = threading.Lock()  # start() against shutdown(), never held while exporting
        self._thread = threading.Thread(
            target=self._run, name=f"vantage-metrics-{name or self._id}", daemon=True
        )
        self._started = False
        self.exports = 0
        """``export()`` calls made, for tests and the benchmark."""

    def start(self) -> None:
        # The deferred exporters are started from their builder thread, which may run while
        # shutdown() does: a stopped export starts no thread.
        with self._starting:
            if not self._started and not self._stop.is_set():
                self._thread.start()
                self._started = True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.collect(self.timeout)
            except Exception:  # a bug here must not end the exports for good
                log.exception("metric collection failed")

    def collect(self, timeout: float) -> bool:
        """Collect and export now, within ``timeout`` seconds; blocking. Whether every batch went
        through."""
        deadline = time.monotonic() + timeout
        if not self._lock.acquire(timeout=max(0.0, timeout)):
            return False  # a collection that is still going (a backend that hangs) has the time
        try:
            self._tables.refresh()
            now = time.time_ns()
            batch = _Batch(now)
            # One encoder for the whole collection: a check's attributes recur in every table.
            if self._envelope is not None:
                from agent.telemetry.otlp_wire import Encoder

                self._encoder = Encoder(*self._envelope)
            for built in self._points(now):
                table, point, sent = built
                batch.add(table, point)
                if sent is not None:
                    batch.sent.append(sent)
                if batch.size >= self.batch:
                    if not self._send(batch, deadline):
                        return False
                    batch = _Batch(now)
                    time.sleep(_PAUSE)
            return self._send(batch, deadline) if batch.size else True
        finally:
            self._encoder = None
            self._lock.release()

    def _send(self, batch: _Batch, deadline: float) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            log.warning(
                "metric collection stopped before its end: its time (OTEL_METRIC_EXPORT_TIMEOUT, or what "
                "is left of the shutdown budget) is spent"
            )
            return False
        self.exports += 1
        if self._send_encoded is not None:
            ok = self._send_encoded(self._encode(batch), left * 1000)
        else:
            data = MetricsData(
                [ResourceMetrics(self._resource, [ScopeMetrics(self._scope, self._metrics(batch), "")], "")]
            )
            ok = self.exporter.export(data, timeout_millis=left * 1000) is MetricExportResult.SUCCESS
        if not ok:
            return False
        for point, state in batch.sent:
            if point.sent is None:
                point.sent = {}
            point.sent[self._id] = state
            if isinstance(point, HistogramPoint):
                point.window_min, point.window_max = math.inf, -math.inf
        return True

    def _metrics(self, batch: _Batch) -> list[Metric]:
        """The batch in the SDK's export data model."""
        metrics = []
        counters, histograms = self._temporality
        now = batch.now
        for table, points in batch.points.items():
            spec = table.spec
            data: Any
            if table.kind is MetricKind.GAUGE:
                data = Gauge(
                    [
                        NumberDataPoint(a if e is None else {**a, **e}, start, now, v)
                        for a, e, v, start in points
                    ]
                )
            elif table.kind is MetricKind.COUNTER:
                numbers = [NumberDataPoint(attributes_of(p), start, now, v) for p, start, v in points]
                data = Sum(numbers, counters, True)
            else:
                bounds = table.bounds
                data = Histogram(
                    [
                        HistogramDataPoint(attributes_of(p), start, now, n, total, counts, bounds, low, high)
                        for p, start, n, total, counts, low, high in points
                    ],
                    histograms,
                )
            metrics.append(Metric(spec.name, spec.description, spec.unit, data))
        return metrics

    def _encode(self, batch: _Batch) -> bytes:
        """The batch as an encoded ``ExportMetricsServiceRequest``."""
        from agent.telemetry.otlp_wire import GAUGE, HISTOGRAM, SUM

        encoder = self._encoder
        assert encoder is not None
        counters, histograms = self._temporality
        now, metrics = batch.now, []
        for built, (table, points) in enumerate(batch.points.items()):
            spec = table.spec
            if table.kind is MetricKind.HISTOGRAM:
                bounds, histogram = table.bounds, encoder.histogram
                data = [
                    histogram(p.attrs, start, now, n, total, counts, bounds, low, high)
                    for p, start, n, total, counts, low, high in points
                ]
                metric = encoder.metric(spec.name, spec.description, spec.unit, HISTOGRAM, data, histograms)
            elif table.kind is MetricKind.COUNTER:
                number = encoder.number
                data = [number(p.attrs, p.extra, start, now, v) for p, start, v in points]
                metric = encoder.metric(spec.name, spec.description, spec.unit, SUM, data, counters)
            else:
                number = encoder.number
                data = [number(a, e, None, now, v) for a, e, v, _ in points]
                metric = encoder.metric(spec.name, spec.description, spec.unit, GAUGE, data)
            metrics.append(metric)
            if built % 4 == 3:
                time.sleep(0)  # hand the interpreter lock over (to the event loop)
        return encoder.request(metrics)

    def _points(self, now: int) -> Iterator[tuple[Table, tuple[Any, ...], tuple[Any, Any] | None]]:
        """Each data point to send, with the delta state to keep once it went through."""
        built = 0
        for table in self._tables.collected():
            kind = table.kind
            delta = self._delta_counters if kind is MetricKind.COUNTER else self._delta_histograms
            if kind is MetricKind.GAUGE:
                # Gauges have no delta state: their series as they are read, without a Point
                # made for a series kept as its bare value.
                for sample in table.samples():
                    built += 1
                    if built % _SLICE == 0:
                        time.sleep(0)
                    yield table, sample, None
                continue
            for point in table.points():
                built += 1
                if built % _SLICE == 0:
                    time.sleep(0)
                if kind is MetricKind.COUNTER:
                    value = point.value
                    if not delta:
                        yield table, (point, point.start, value), None
                        continue
                    last = point.sent.get(self._id) if point.sent else None
                    since, before = last if last is not None else (point.start, 0)
                    if last is not None and value == before:
                        continue
                    yield table, (point, since, value - before), (point, (now, value))
                else:
                    counts, total = list(point.counts), point.sum
                    count = sum(counts)
                    if not delta:
                        yield table, (point, point.start, count, total, counts, point.min, point.max), None
                        continue
                    last = point.sent.get(self._id) if point.sent else None
                    if last is None:
                        since, changes, change = point.start, counts, total
                    else:
                        since, before, before_sum = last
                        changes = [c - b for c, b in zip(counts, before, strict=True)]
                        change = total - before_sum
                    changed = sum(changes)
                    if changed == 0:
                        continue
                    low, high = point.window_min, point.window_max
                    if math.isinf(low) or math.isinf(high):  # read between a record's updates
                        low, high = point.min, point.max
                    yield (
                        table,
                        (point, since, changed, change, changes, low, high),
                        (point, (now, counts, total)),
                    )

    def shutdown(self, timeout: float) -> None:
        """Stop the thread, export one last time and shut the exporter down, within ``timeout``;
        blocking."""
        deadline = time.monotonic() + timeout
        with self._starting:
            self._stop.set()
            started = self._started
        if started:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        left = deadline - time.monotonic()
        if left > 0:
            try:
                self.collect(left)
            except Exception:
                log.exception("the last metric collection failed")
        self.exporter.shutdown(timeout_millis=max(1.0, (deadline - time.monotonic()) * 1000))


def temporality_of(preferred: Mapping[type, AggregationTemporality] | None) -> Temporality:
    """Counters' and histograms' temporality from an exporter's preferences (by SDK instrument
    class); cumulative unless it says otherwise."""
    from opentelemetry.sdk.metrics import Counter
    from opentelemetry.sdk.metrics import Histogram as HistogramInstrument

    preferred = preferred or {}
    return (
        preferred.get(Counter, AggregationTemporality.CUMULATIVE),
        preferred.get(HistogramInstrument, AggregationTemporality.CUMULATIVE),
    )
