"""OpenTelemetry providers and exporters, chosen by the standard ``OTEL_*`` variables.

The bare SDK exports nothing unless told; the agent's defaults work with no backend at all:

* metrics: ``prometheus`` (served by the agent itself on ``/metrics``, not on a second port),
  plus ``otlp`` as soon as an OTLP endpoint is set;
* traces: ``otlp`` as soon as an OTLP endpoint is set, else none.

``otlp`` means http/protobuf unless ``OTEL_EXPORTER_OTLP_PROTOCOL`` says ``grpc``, as the
specification (not the Python SDK) has it. Other names are looked up in OpenTelemetry's own
entry-point groups, so any installed exporter package can be chosen. Every exporter is wrapped so
that failed exports are counted: the SDK's ``force_flush`` says True even when an export failed.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from .errors import ConfigError

__all__ = ["ExportStats", "Telemetry", "build_resource", "build_telemetry"]

log = logging.getLogger("vantage.telemetry")

# The exporter encodes a batch in its thread while holding the GIL; the SDK's 512 spans stall
# the event loop for tens of milliseconds, so the agent sends smaller batches unless told.
_SPAN_BATCH = 64
_PROTOCOLS = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
# Above this many seconds an OTLP timeout was almost surely meant as milliseconds (the spec's unit).
_MAX_TIMEOUT_SECONDS = 300.0


@dataclass
class ExportStats:
    """Export outcomes per signal, counted by the exporter wrappers (they run in SDK threads)."""

    exported: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    last_error: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, signal: str, ok: bool, error: str = "") -> None:
        with self.lock:
            if ok:
                self.exported[signal] += 1
            else:
                self.failed[signal] += 1
                self.last_error[signal] = error


class _CountingSpanExporter(SpanExporter):
    def __init__(self, inner: SpanExporter, name: str, stats: ExportStats) -> None:
        self._inner, self._name, self._stats = inner, name, stats

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception as exc:  # an exporter bug must not kill the SDK's thread
            self._stats.note("traces", False, f"{self._name}: {type(exc).__name__}")
            return SpanExportResult.FAILURE
        ok = result is SpanExportResult.SUCCESS
        self._stats.note("traces", ok, "" if ok else f"{self._name}: export failed")
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _CountingMetricExporter(MetricExporter):
    def __init__(self, inner: MetricExporter, name: str, stats: ExportStats) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self._inner, self._name, self._stats = inner, name, stats

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        try:
            result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception as exc:
            self._stats.note("metrics", False, f"{self._name}: {type(exc).__name__}")
            return MetricExportResult.FAILURE
        ok = result is MetricExportResult.SUCCESS
        self._stats.note("metrics", ok, "" if ok else f"{self._name}: export failed")
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)


@dataclass
class Telemetry:
    """The configured providers; the composition root makes them global."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    stats: ExportStats
    trace_exporters: list[str]
    metric_exporters: list[str]
    prometheus: Any = None
    """The prometheus_client registry behind ``/metrics``, when the ``prometheus`` exporter is on."""

    def health(self) -> dict[str, Any]:
        """The exporters' state for ``/readyz``: what is configured and what became of the exports."""
        stats = self.stats
        with stats.lock:
            return {
                "exporters": {"traces": self.trace_exporters, "metrics": self.metric_exporters},
                "exported": dict(stats.exported),
                "failed": dict(stats.failed),
                "last_error": dict(stats.last_error),
            }

    def render_prometheus(self) -> bytes:
        """The ``/metrics`` page; blocking (it collects every instrument), so call it in a thread."""
        from prometheus_client import generate_latest

        return generate_latest(self.prometheus) if self.prometheus is not None else b""

    def flush(self, timeout: float) -> bool:
        """Push what is buffered; blocking, call it in a thread."""
        millis = max(1, int(timeout * 1000))
        ok = self.tracer_provider.force_flush(millis)
        return self.meter_provider.force_flush(millis) and ok

    def shutdown(self, timeout: float) -> None:
        """Flush and stop the exporters; blocking, call it in a thread."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown(timeout_millis=max(1, int(timeout * 1000)))


def build_resource(environ: Mapping[str, str], *, region: str, version: str, worker: Any = None) -> Resource:
    """The resource of every signal: service, instance, ``cloud.region`` and pod attributes.

    ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME`` win over the agent's own values.
    """
    ours: dict[str, str] = {
        "service.name": "vantage",
        "service.version": version,
        "service.instance.id": environ.get("HOSTNAME") or str(uuid.uuid4()),
        "cloud.region": region,
    }
    if worker is not None and worker.count > 1:
        # Each worker process is its own instance, or OTLP backends would mix their series.
        ours["service.instance.id"] += f"-worker-{worker.index}"
    for var, key in (
        ("POD_NAME", "k8s.pod.name"),
        ("POD_NAMESPACE", "k8s.namespace.name"),
        ("NODE_NAME", "k8s.node.name"),
    ):
        if environ.get(var):
            ours[key] = environ[var]
    detected = Resource.create({})
    if str(detected.attributes.get("service.name", "")).startswith("unknown_service"):
        detected = Resource({k: v for k, v in detected.attributes.items() if k != "service.name"})
    return Resource(ours).merge(detected)


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} is not a whole number") from None
    if value < 1:
        raise ConfigError(f"{name}: must be at least 1")
    return value


def _exporter_names(environ: Mapping[str, str], signal: str) -> list[str]:
    var = f"OTEL_{signal.upper()}_EXPORTER"
    raw = environ.get(var, "").strip()
    if raw:
        names = [n.strip().lower() for n in raw.split(",") if n.strip()]
        return [] if names == ["none"] else names
    has_endpoint = bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    )
    defaults = ["prometheus"] if signal == "metrics" else []
    return [*defaults, "otlp"] if has_endpoint else defaults


def _check_otlp_env(environ: Mapping[str, str], signal: str) -> str:
    for var in ("OTEL_EXPORTER_OTLP_TIMEOUT", f"OTEL_EXPORTER_OTLP_{signal.upper()}_TIMEOUT"):
        if var in environ:
            try:
                seconds = float(environ[var])
            except ValueError:
                raise ConfigError(f"{var}: {environ[var]!r} is not a number of seconds") from None
            if not 0 < seconds <= _MAX_TIMEOUT_SECONDS:
                raise ConfigError(
                    f"{var}: {environ[var]} is out of range; the OpenTelemetry Python SDK reads it in "
                    f"seconds (not milliseconds as the specification says), so use e.g. 10"
                )
    protocol = (
        environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "http/json":
        raise ConfigError(
            "OTEL_EXPORTER_OTLP_PROTOCOL: http/json is not supported by the OpenTelemetry Python SDK; "
            "use http/protobuf (the default) or grpc"
        )
    if protocol not in _PROTOCOLS:
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: unknown protocol {protocol!r}; use http/protobuf or grpc"
        )
    return _PROTOCOLS[protocol]


def _load_exporter(environ: Mapping[str, str], signal: str, name: str) -> Any:
    group = f"opentelemetry_{signal}_exporter"
    point_name = _check_otlp_env(environ, signal) if name == "otlp" else name
    points = {p.name: p for p in entry_points(group=group)}
    if point_name not in points:
        choices = sorted({*points, "none"} - {"otlp_proto_http", "otlp_proto_grpc"})
        raise ConfigError(
            f"OTEL_{signal.upper()}_EXPORTER: unknown exporter {name!r}; installed: {', '.join(choices)}"
        )
    try:
        return points[point_name].load()()
    except Exception as exc:
        raise ConfigError(
            f"OTEL_{signal.upper()}_EXPORTER: exporter {name!r} cannot be started: {exc}"
        ) from exc


def build_telemetry(
    environ: Mapping[str, str], resource: Resource, span_processors: Sequence[SpanProcessor] = ()
) -> Telemetry:
    """Providers with the exporters the environment asks for (see the module docstring).

    ``span_processors`` are added as they are (tests use it to read spans in memory).
    """
    stats = ExportStats()
    trace_names = _exporter_names(environ, "traces")
    metric_names = _exporter_names(environ, "metrics")

    # With no trace exporter, spans are not recorded at all (the sampler drops them at the start),
    # but their context still travels in each probe request's traceparent.
    recording = bool(trace_names or span_processors)
    tracer_provider = TracerProvider(resource=resource, sampler=None if recording else ALWAYS_OFF)
    for extra in span_processors:
        tracer_provider.add_span_processor(extra)
    batch = _env_int(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", _SPAN_BATCH)
    for name in trace_names:
        exporter = _load_exporter(environ, "traces", name)
        processor = BatchSpanProcessor(
            _CountingSpanExporter(exporter, name, stats), max_export_batch_size=batch
        )
        tracer_provider.add_span_processor(processor)

    readers: list[MetricReader] = []
    prometheus = None
    for name in metric_names:
        if name == "prometheus":
            # The SDK's own entry point starts a second server on localhost:9464; the agent
            # serves the same registry on its own port instead.
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import CollectorRegistry

            prometheus = CollectorRegistry(auto_describe=True)
            readers.append(PrometheusMetricReader(registry=prometheus, scope_info_enabled=False))
            continue
        exporter = _load_exporter(environ, "metrics", name)
        readers.append(PeriodicExportingMetricReader(_CountingMetricExporter(exporter, name, stats)))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    return Telemetry(tracer_provider, meter_provider, stats, trace_names, metric_names, prometheus)
