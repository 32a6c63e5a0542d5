"""OpenTelemetry providers and exporters, chosen by the standard ``OTEL_*`` variables.

The bare SDK exports nothing unless told; the agent's defaults work with no backend at all:

* metrics: ``prometheus`` (served by the agent itself on ``/metrics``, not on a second port),
  plus ``otlp`` as soon as an OTLP endpoint is set;

Metrics do not go through the SDK's ``MeterProvider``: the recorder keeps them in tables
(agent/telemetry/tables.py), which ``/metrics`` renders (agent/telemetry/exposition.py) and a thread
per metric exporter turns into the SDK's export data model for that exporter
(agent/telemetry/collection.py).
* traces: ``otlp`` as soon as an OTLP endpoint is set, else none.

``otlp`` means http/protobuf unless ``OTEL_EXPORTER_OTLP_PROTOCOL`` says ``grpc``, as the
specification (not the Python SDK) has it. Other names are looked up in OpenTelemetry's own
entry-point groups, so any installed exporter package can be chosen.

A telemetry backend cannot hurt the agent:

* the OTLP/HTTP exporters send through a :class:`~agent.telemetry.session.BoundedSession`: each
  request ends by its deadline however the backend trickles, and an answer is read up to 64 KiB,
  no further;
* every exporter is wrapped so that exports are counted with the cause of each failure
  (``refused``, ``timeout``, ``http 503``, ``oversized``, ``tls``, ``garbage``, ...): the SDK's
  ``force_flush`` says True even when an export failed. ``/readyz`` shows them
  (:meth:`Telemetry.health`), and the log gets one line when a signal starts failing (or its
  cause changes) and one when it recovers, instead of the SDK's lines for every retry;
* spans that the batch processor's full queue drops are counted (``vantage.spans.dropped``).

``OTEL_SDK_DISABLED=true`` is the specification's no-op SDK: no trace or metric exporter is built
(OTLP, console, any other), whatever the other variables say. ``/metrics`` is not an SDK exporter
but the agent's own page, rendered from its metric tables, as blackbox_exporter serves its probes'
results: it stays (unless ``OTEL_METRICS_EXPORTER`` leaves ``prometheus`` out), and ``/readyz``
says the SDK is off.

Every ``OTEL_*`` variable the agent or the SDK reads is checked first (:func:`validate_otel_env`):
a value the SDK would silently replace by its default, or print, is a :class:`ConfigError`.

What only an exporter needs is imported when one is built: the OTLP/HTTP session with ``requests``
(agent/telemetry/session.py), the metric exporters with the SDK's metric data model
(agent/telemetry/metric_exports.py). ``vantage run`` builds its OTLP/HTTP exporters after its
start-up (``build_telemetry(defer_exporters=True)``), so that none of it delays the first probe.
"""

from __future__ import annotations

import logging
import math
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib.metadata import PackageNotFoundError, distribution, entry_points
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from agent import __version__
from agent.config.secrets import Redactor
from agent.errors import ConfigError
from agent.sdk.urls import redact_url
from agent.telemetry._otel_sdk import CountingBatchSpanProcessor
from agent.telemetry.exposition import ExpositionCache, render
from agent.telemetry.sampling import RunSamplingProcessor
from agent.telemetry.spans import RunSpans
from agent.telemetry.tables import MetricTables

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import AggregationTemporality
    from opentelemetry.sdk.metrics.view import Aggregation

    from agent.telemetry.collection import MetricExport
    from agent.telemetry.session import BoundedSession

__all__ = [
    "ExportOutcome",
    "ExportStats",
    "Telemetry",
    "build_resource",
    "build_telemetry",
    "otel_secrets",
    "validate_otel_env",
]

log = logging.getLogger("vantage.telemetry")

SIGNALS = ("traces", "metrics")
# The exporter encodes a batch in its thread while holding the GIL; the SDK's 512 spans stall
# the event loop for tens of milliseconds, so the agent sends smaller batches unless told.
_SPAN_BATCH = 64
_SPAN_QUEUE = 2048  # the SDK's default
_PROTOCOLS = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
_OTLP_HTTP_DISTRIBUTION = "opentelemetry-exporter-otlp-proto-http"
# Above this many seconds an OTLP timeout was almost surely meant as milliseconds (the spec's unit).
_MAX_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class ExportOutcome:
    """What became of one HTTP request of an exporter: ``cause`` is empty on success."""

    cause: str = ""
    detail: str = ""


# ---------------------------------------------------------------- export outcomes


@dataclass
class _ExporterState:
    """One exporter's run of failures, for the log and ``/readyz``."""

    signal: str
    exporter: str
    endpoint: str
    failures: int = 0
    since: float | None = None
    cause: str = ""


@dataclass
class ExportStats:
    """Export outcomes per signal, counted by the exporter wrappers (they run in SDK threads).

    Logs one line when an exporter starts failing (or its cause changes) and one when it recovers.
    """

    exported: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    """Spans (``traces``) dropped by a full export queue."""
    last_error: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    clock: Callable[[], float] = time.time
    _states: dict[tuple[str, str], _ExporterState] = field(default_factory=dict)

    def _state(self, signal: str, exporter: str, endpoint: str) -> _ExporterState:
        key = (signal, endpoint or exporter)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _ExporterState(signal, exporter, endpoint or exporter)
        return state

    def succeeded(self, signal: str, exporter: str = "", endpoint: str = "") -> None:
        """An export went through."""
        with self.lock:
            self.exported[signal] += 1
            state = self._state(signal, exporter, endpoint)
            recovered_after = state.failures if state.since is not None else 0
            state.failures, state.since, state.cause = 0, None, ""
        if recovered_after:
            log.info(
                "%s export to %s recovered after %d failed export%s",
                signal,
                state.endpoint,
                recovered_after,
                "" if recovered_after == 1 else "s",
                extra={"signal": signal, "endpoint": state.endpoint, "failed_exports": recovered_after},
            )

    def failed_with(
        self, signal: str, outcome: ExportOutcome, exporter: str = "", endpoint: str = ""
    ) -> None:
        """An export failed; ``outcome`` says why."""
        now = self.clock()
        with self.lock:
            self.failed[signal] += 1
            state = self._state(signal, exporter, endpoint)
            changed = state.since is None or state.cause != outcome.cause
            if state.since is None:
                state.since = now
            state.failures += 1
            state.cause = outcome.cause
            self.last_error[signal] = {
                "cause": outcome.cause,
                "detail": outcome.detail,
                "exporter": state.exporter,
                "endpoint": state.endpoint,
                "time": now,
            }
        if changed:
            log.warning(
                "%s export to %s failing: %s",
                signal,
                state.endpoint,
                outcome.cause,
                extra={
                    "signal": signal,
                    "endpoint": state.endpoint,
                    "cause": outcome.cause,
                    "detail": outcome.detail,
                },
            )

    def spans_dropped(self, count: int) -> None:
        with self.lock:
            self.dropped["traces"] += count

    def snapshot(self) -> dict[str, Any]:
        """Counts, the last error and the current run of failures of each signal."""
        with self.lock:
            failing: dict[str, dict[str, Any]] = {}
            for state in sorted(self._states.values(), key=lambda s: s.since or 0.0, reverse=True):
                if state.since is not None:
                    # With several failing exporters of one signal, the longest failing one is shown.
                    failing[state.signal] = {
                        "since": state.since,
                        "failed_exports": state.failures,
                        "cause": state.cause,
                        "exporter": state.exporter,
                        "endpoint": state.endpoint,
                    }
            return {
                "exported": dict(self.exported),
                "failed": dict(self.failed),
                "dropped": {"traces": self.dropped["traces"]},
                "last_error": {k: dict(v) for k, v in self.last_error.items()},
                "failing": failing,
            }


class _Outcomes:
    """Where a wrapper learns why its exporter failed (the session of an OTLP/HTTP exporter)."""

    def __init__(self, session: BoundedSession | None) -> None:
        self.session = session
        """Set later for a deferred exporter, when it is built."""

    def begin(self) -> None:
        if self.session is not None:
            self.session.take_outcome()

    def failure(self, exc: BaseException | None = None) -> ExportOutcome:
        outcome = self.session.take_outcome() if self.session is not None else None
        if outcome is not None and outcome.cause:
            return outcome
        if exc is not None:
            return ExportOutcome("error", f"the exporter raised {type(exc).__name__}")
        return ExportOutcome("error", "the exporter reported a failure")


class _CountingSpanExporter(SpanExporter):
    def __init__(
        self,
        inner: SpanExporter,
        name: str,
        stats: ExportStats,
        endpoint: str = "",
        outcomes: _Outcomes | None = None,
    ) -> None:
        self._inner, self._name, self._stats, self._endpoint = inner, name, stats, endpoint
        self._outcomes = outcomes or _Outcomes(None)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._outcomes.begin()
        try:
            result = self._inner.export(spans)
        except Exception as exc:  # an exporter bug must not kill the SDK's thread
            self._stats.failed_with("traces", self._outcomes.failure(exc), self._name, self._endpoint)
            return SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self._stats.succeeded("traces", self._name, self._endpoint)
        else:
            self._stats.failed_with("traces", self._outcomes.failure(), self._name, self._endpoint)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


# ---------------------------------------------------------------- the SDK's own log lines


class _RetryNoise(logging.Filter):
    """Drops the SDK's lines about each failed export and retry: ExportStats logs state changes."""

    MESSAGES = ("Transient error", "Failed to export", "Shutdown in progress, aborting retry")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.MESSAGES))


_SDK_EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
)
_RETRY_NOISE = _RetryNoise()


def _quiet_sdk_export_logs() -> None:
    # A logger's filters see only the records logged to it by name, not its children's.
    for name in _SDK_EXPORT_LOGGERS:
        logging.getLogger(name).addFilter(_RETRY_NOISE)


# ---------------------------------------------------------------- deferred exporters


class _Sessions:
    """The OTLP/HTTP exporters' sessions, told the deadline when the agent stops; a session made
    after that (a deferred exporter's, built to send what is left) is told it as it is added."""

    def __init__(self) -> None:
        self._sessions: list[BoundedSession] = []
        self._cutoff: float | None = None
        self._lock = threading.Lock()

    def add(self, session: BoundedSession) -> None:
        with self._lock:
            self._sessions.append(session)
            if self._cutoff is not None:
                session.stop_by(self._cutoff)

    def stop_by(self, cutoff: float) -> None:
        with self._lock:
            self._cutoff = cutoff
            for session in self._sessions:
                session.stop_by(cutoff)

    def __iter__(self) -> Iterator[BoundedSession]:
        with self._lock:
            return iter(list(self._sessions))

    def __len__(self) -> int:
        return len(self._sessions)


class _DeferredSpanExporter(SpanExporter):
    """An OTLP/HTTP span exporter built, with its session, after the start-up (:func:`_build_later`)
    or when it first exports, whichever comes first."""

    def __init__(
        self, environ: Mapping[str, str], name: str, outcomes: _Outcomes, sessions: _Sessions
    ) -> None:
        self._environ, self._name, self._outcomes, self._sessions = dict(environ), name, outcomes, sessions
        self._inner: SpanExporter | None = None
        self._lock = threading.Lock()
        self._closed = False

    def warm(self) -> None:
        """Build the exporter now, unless it was shut down."""
        if not self._closed:
            self._built()

    def _built(self) -> SpanExporter:
        with self._lock:
            if self._inner is None:
                exporter, _, outcomes = _exporter(self._environ, "traces", self._name)
                if outcomes.session is not None:
                    self._sessions.add(outcomes.session)
                    self._outcomes.session = outcomes.session
                self._inner = exporter
            return self._inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._built().export(spans)

    def shutdown(self) -> None:
        self._closed = True
        if self._inner is not None:
            self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True if self._inner is None else self._inner.force_flush(timeout_millis)


class _DeferredMetricExport:
    """A metric export whose exporter and collection are built after the start-up
    (:func:`_build_later`) or at its first collection (by its own thread one interval after the
    start, or by a flush or the shutdown), whichever comes first. From then on the export runs as
    it would have (its thread collects every interval).

    A build that fails (a bug: the environment was validated) is logged and counted as a failed
    export, and tried again at the next interval."""

    def __init__(
        self, build: Callable[[], MetricExport], interval: float, name: str, stats: ExportStats, target: str
    ) -> None:
        self._build, self.interval, self._name = build, interval, name
        self._stats, self._target = stats, target
        self.export: MetricExport | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"vantage-metrics-{name}-start", daemon=True)

    def _built(self) -> MetricExport | None:
        with self._lock:
            if self.export is None:
                try:
                    self.export = self._build()
                except Exception as exc:
                    log.exception("metrics exporter %s cannot be started", self._name)
                    outcome = ExportOutcome("error", f"the exporter cannot be started: {type(exc).__name__}")
                    self._stats.failed_with("metrics", outcome, self._name, self._target)
            return self.export

    def warm(self) -> None:
        """Build the export now, unless it was shut down."""
        if not self._stop.is_set():
            self._built()

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            export = self._built()
            if export is None:
                continue
            try:
                export.collect(export.timeout)
            except Exception:  # a bug here must not end the exports for good
                log.exception("metric collection failed")
            if not self._stop.is_set():
                export.start()  # its thread collects every interval from now
            return

    def collect(self, timeout: float) -> bool:
        """Collect and export now (building the export first); whether every batch went through."""
        export = self._built()
        return export is not None and export.collect(timeout)

    def shutdown(self, timeout: float) -> None:
        """Stop, export one last time and shut the exporter down, within ``timeout``; blocking."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()))
        export = self._built()
        if export is not None:
            export.shutdown(max(0.0, deadline - time.monotonic()))


# ---------------------------------------------------------------- Telemetry


@dataclass
class Telemetry:
    """The configured providers and metric exports; the composition root makes the tracer
    provider global."""

    tracer_provider: TracerProvider
    tables: MetricTables
    """What the recorder records metrics into, and every metric exporter reads."""
    stats: ExportStats
    trace_exporters: list[str]
    metric_exporters: list[str]
    resource: Resource
    spans: RunSpans
    """The recorder's tracer for runs: its spans become the SDK's only for those who read them."""
    exposition: ExpositionCache | None = None
    """``/metrics``, when the ``prometheus`` exporter is on."""
    exports: list[MetricExport | _DeferredMetricExport] = field(default_factory=list)
    """One per other metric exporter (OTLP, console, ...), each with its thread."""
    sessions: _Sessions = field(default_factory=lambda: _Sessions())
    """The OTLP/HTTP exporters' sessions, told the deadline when the agent stops."""
    sampling: RunSamplingProcessor | None = None
    """What decides at the end of each run which traces the exporters get (None: no trace exporter)."""
    sdk_disabled: bool = False
    """``OTEL_SDK_DISABLED=true``: no OpenTelemetry exporter was built."""

    def health(self) -> dict[str, Any]:
        """The exporters' state for ``/readyz``, by signal: what is configured, how many exports
        went through and failed, spans dropped, the last error with its cause, and, for a signal
        failing now, since when (epoch seconds), how many exports in a row and why."""
        sampling = {"sampling": asdict(self.sampling.counts())} if self.sampling else {}
        disabled = {"sdk_disabled": True, "note": _disabled_note(self.exposition is not None)}
        return (
            {"exporters": {"traces": self.trace_exporters, "metrics": self.metric_exporters}}
            | (disabled if self.sdk_disabled else {})
            | self.stats.snapshot()
            | sampling
        )

    def render_prometheus(self, *, openmetrics: bool = False) -> bytes:
        """The ``/metrics`` page, rendered now (not cached); blocking, call it in a thread."""
        body = bytearray()
        for piece in render(self.tables, self.resource.attributes, openmetrics=openmetrics):
            body += piece.encode()
        return bytes(body)

    def flush(self, timeout: float) -> bool:
        """Push what is buffered (spans) and export the metrics now; blocking, call it in a
        thread. Whether every export went through."""
        deadline = time.monotonic() + timeout
        ok = self.tracer_provider.force_flush(max(1, int(timeout * 1000)))
        for export in self.exports:
            ok = export.collect(max(0.0, deadline - time.monotonic())) and ok
        return ok

    def shutdown(self, timeout: float) -> None:
        """Flush and stop the exporters within ``timeout``, with one last metric export;
        blocking, call it in a thread.

        The OTLP/HTTP exporters get one try at what is buffered: requests end at the deadline and
        are not retried after it (the SDK would retry with back-off for its own export timeout)."""
        # A little before the caller gives up on this call: the exporters' threads note the outcome
        # and the providers return in time.
        deadline = time.monotonic() + timeout
        cutoff = deadline - min(0.5, timeout * 0.1)
        self.sessions.stop_by(cutoff)
        self.tracer_provider.shutdown()
        for export in self.exports:
            export.shutdown(max(0.0, cutoff - time.monotonic()))


# ---------------------------------------------------------------- resource


def _env_resource(environ: Mapping[str, str]) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME``, parsed as the SDK parses them."""
    attributes: dict[str, str] = {}
    for item in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = unquote(value.strip())
    if environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = environ["OTEL_SERVICE_NAME"]
    return attributes


def build_resource(environ: Mapping[str, str], *, region: str, version: str, worker: Any = None) -> Resource:
    """The resource of every signal: service, instance, ``cloud.region`` and pod attributes.

    ``service.instance.id`` is the pod's (or host's) name, ``HOSTNAME`` or else the system's host
    name, so that a restart keeps its series; the SDK's detector would make a random UUID per
    process. ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME`` win over the agent's own values.
    In worker mode each worker appends ``-worker-<i>`` to the id, whichever set it: two processes
    under one id would mix their cumulative series.
    """
    ours: dict[str, str] = {
        "service.name": "vantage",
        "service.version": version,
        "service.instance.id": environ.get("HOSTNAME") or socket.gethostname(),
        "cloud.region": region,
    }
    for var, key in (
        ("POD_NAME", "k8s.pod.name"),
        ("POD_NAMESPACE", "k8s.namespace.name"),
        ("NODE_NAME", "k8s.node.name"),
    ):
        if environ.get(var):
            ours[key] = environ[var]
    detected = dict(Resource.create({}).attributes)
    detected.pop("service.instance.id", None)
    if str(detected.get("service.name", "")).startswith("unknown_service"):
        del detected["service.name"]
    attributes: dict[str, Any] = {**ours, **detected, **_env_resource(environ)}
    if worker is not None and worker.count > 1:
        attributes["service.instance.id"] = f"{attributes['service.instance.id']}-worker-{worker.index}"
    return Resource(attributes)


# ---------------------------------------------------------------- validation

_HEADER_VARS = tuple(f"OTEL_EXPORTER_OTLP_{s}HEADERS" for s in ("", "TRACES_", "METRICS_"))
_TIMEOUT_VARS = tuple(f"OTEL_EXPORTER_OTLP_{s}TIMEOUT" for s in ("", "TRACES_", "METRICS_"))
_COMPRESSION_VARS = tuple(f"OTEL_EXPORTER_OTLP_{s}COMPRESSION" for s in ("", "TRACES_", "METRICS_"))
# RFC 9110 token characters: what a header name may hold.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# What the SDK takes in a value: printable ASCII but '"', ',', ';' and '\' (and a space, which the
# specification forbids but the Python SDK accepts unencoded, as other SDKs do).
_HEADER_VALUE = re.compile(r"[\x20\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SAMPLERS = {
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
}
_LIMITS = (
    "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_SPAN_EVENT_COUNT_LIMIT",
    "OTEL_SPAN_LINK_COUNT_LIMIT",
    "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT",
)


def _headers(environ: Mapping[str, str], var: str) -> list[tuple[str, str]]:
    """The ``(name, raw value)`` pairs of a headers variable; a ConfigError never shows a value."""
    pairs = []
    for number, entry in enumerate(re.split(r"[ \t]*,[ \t]*", environ.get(var, "")), 1):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, value = entry.partition("=")
        how = "headers are a comma-separated list of name=value, values percent-encoded, e.g. "
        how += "Authorization=Basic%20<credentials>"
        if not sep:
            colon = " (it has a ':' where '=' belongs)" if ":" in entry else ""
            raise ConfigError(f"{var}: entry {number} is not name=value{colon}; {how}")
        name, value = name.strip(), value.strip()
        if not _TOKEN.fullmatch(name):
            colon = " (it has a ':' where '=' belongs)" if ":" in name else ""
            raise ConfigError(f"{var}: the name of entry {number} is not an HTTP header name{colon}; {how}")
        if not _HEADER_VALUE.fullmatch(value):
            raise ConfigError(
                f"{var}: the value of entry {number} holds characters that must be percent-encoded "
                f"(non-ASCII or control characters, '\"', ';' or '\\'); {how}"
            )
        if _BAD_ESCAPE.search(value):
            raise ConfigError(
                f"{var}: the value of entry {number} has a '%' that does not start a %XX escape; "
                "write a '%' itself as %25"
            )
        pairs.append((name, value))
    return pairs


def otel_secrets(environ: Mapping[str, str]) -> set[str]:
    """The secrets in the OTLP headers variables: each value as written and decoded, and the
    credentials after an authorization scheme (``Basic <credentials>``)."""
    secrets: set[str] = set()
    for var in _HEADER_VARS:
        for _, value in _headers(environ, var):
            for spelling in {value, unquote(value)}:
                secrets.add(spelling)
                _, sep, credentials = spelling.partition(" ")
                if sep and credentials.strip():
                    secrets.add(credentials.strip())
    return {s for s in secrets if s.strip()}


def _number(
    environ: Mapping[str, str],
    var: str,
    *,
    whole: bool,
    unit: str,
    minimum: float = 0.0,
    inclusive: bool = False,
    maximum: float = math.inf,
    unset_ok: bool = False,
) -> float | None:
    """The value of a numeric variable, or None when it is not set; a ConfigError names it."""
    raw = environ.get(var, "").strip()
    if not raw or (unset_ok and raw.lower() == "unset"):
        return None
    try:
        value = float(int(raw)) if whole else float(raw)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise ConfigError(f"{var}: {raw!r} is not {kind} of {unit}") from None
    low_ok = value >= minimum if inclusive else value > minimum
    if not (math.isfinite(value) and low_ok and value <= maximum):
        bound = f"at least {minimum:g}" if inclusive else f"above {minimum:g}"
        top = f" and at most {maximum:g}" if math.isfinite(maximum) else ""
        raise ConfigError(f"{var}: {raw} is out of range; it must be {bound}{top} ({unit})")
    return value


def sdk_disabled(environ: Mapping[str, str]) -> bool:
    """Whether ``OTEL_SDK_DISABLED`` is true (case-insensitive, as the specification has it). A
    value that is neither true nor false, which the SDK would read as false without a word, is a
    :class:`ConfigError`."""
    raw = environ.get("OTEL_SDK_DISABLED", "").strip()
    if raw.lower() in ("", "false"):
        return False
    if raw.lower() == "true":
        return True
    raise ConfigError(
        f"OTEL_SDK_DISABLED: {raw!r} is neither true nor false; true turns every OpenTelemetry "
        "exporter off (the checks still run and /metrics is still served)"
    )


def _disabled_note(metrics_page: bool) -> str:
    served = (
        "/metrics is served (the agent's own page, not an SDK exporter)" if metrics_page else "no /metrics"
    )
    return (
        f"OTEL_SDK_DISABLED=true: no OpenTelemetry export (traces, OTLP and other metric exporters); {served}"
    )


def _exporter_names(environ: Mapping[str, str], signal: str) -> list[str]:
    names = _configured_exporters(environ, signal)
    if sdk_disabled(environ):
        return ["prometheus"] if signal == "metrics" and "prometheus" in names else []
    return names


def _configured_exporters(environ: Mapping[str, str], signal: str) -> list[str]:
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


def _otlp_point(environ: Mapping[str, str], signal: str) -> str:
    """The entry-point name that ``otlp`` stands for: http/protobuf unless told grpc."""
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


def _point_name(environ: Mapping[str, str], signal: str, name: str) -> str:
    return _otlp_point(environ, signal) if name == "otlp" else name


def _installed(environ: Mapping[str, str], signal: str, name: str) -> None:
    """Raise ConfigError unless the exporter ``name`` is installed. The OTLP/HTTP exporters, which
    the agent builds itself, are looked for by their distribution: a scan of every installed
    distribution's entry points costs ~10 ms a signal of the start-up."""
    if _point_name(environ, signal, name) == "otlp_proto_http":
        try:
            distribution(_OTLP_HTTP_DISTRIBUTION)  # which declares the entry point
            return
        except PackageNotFoundError:
            pass
    _entry_point(environ, signal, name)


def _entry_point(environ: Mapping[str, str], signal: str, name: str) -> Any:
    group = f"opentelemetry_{signal}_exporter"
    point_name = _point_name(environ, signal, name)
    points = {p.name: p for p in entry_points(group=group)}
    if point_name not in points:
        # prometheus is the agent's own (/metrics), whether the SDK's package is installed or not.
        ours = {"none", "prometheus"} if signal == "metrics" else {"none"}
        choices = sorted({*points, *ours} - {"otlp_proto_http", "otlp_proto_grpc"})
        raise ConfigError(
            f"OTEL_{signal.upper()}_EXPORTER: unknown exporter {name!r}; installed: {', '.join(choices)}"
        )
    return points[point_name]


def _check_endpoints(environ: Mapping[str, str]) -> None:
    """An OTLP endpoint is a URL with its scheme, as the specification says: ``collector:4318``
    would otherwise fail at the first export, as a log line, rather than here."""
    for var in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        *(f"OTEL_EXPORTER_OTLP_{s.upper()}_ENDPOINT" for s in SIGNALS),
    ):
        value = environ.get(var, "").strip()
        if value and not re.match(r"^https?://[^/\s]", value, re.IGNORECASE):
            shown = value.rpartition("@")[2]  # never credentials in the user part
            raise ConfigError(
                f"{var}: {shown!r} has no scheme; write http://{shown} or https://{shown} "
                "(an OTLP endpoint is a URL with its scheme)"
            )


def validate_otel_env(environ: Mapping[str, str]) -> None:
    """Check every ``OTEL_*`` variable that the agent or the SDK reads, as :func:`build_telemetry`
    does first; a supervisor calls it before it starts workers. Raises :class:`ConfigError` naming
    the variable (and never showing a header's value)."""
    _check_endpoints(environ)
    sdk_disabled(environ)
    for signal in SIGNALS:
        # The names as configured, the SDK disabled or not: turned back on, they must work.
        for name in _configured_exporters(environ, signal):
            if name != "prometheus" or signal != "metrics":
                _installed(environ, signal, name)
    for var in _TIMEOUT_VARS:
        try:
            _number(environ, var, whole=False, unit="seconds", maximum=_MAX_TIMEOUT_SECONDS)
        except ConfigError:
            raise ConfigError(
                f"{var}: {environ[var]!r} is not a number of seconds in (0, {_MAX_TIMEOUT_SECONDS:g}]; the "
                "OpenTelemetry Python SDK reads it in seconds (not milliseconds as the specification "
                "says), so use e.g. 10"
            ) from None
    for var in _COMPRESSION_VARS:
        value = environ.get(var, "").strip().lower()
        if value and value not in ("none", "gzip", "deflate"):
            raise ConfigError(f"{var}: unknown compression {value!r}; use none, gzip or deflate")
    for var in _HEADER_VARS:
        _headers(environ, var)
    for var in ("OTEL_METRIC_EXPORT_INTERVAL", "OTEL_METRIC_EXPORT_TIMEOUT"):
        _number(environ, var, whole=False, unit="milliseconds")
    for var in ("OTEL_BSP_SCHEDULE_DELAY", "OTEL_BSP_EXPORT_TIMEOUT"):
        _number(environ, var, whole=True, unit="milliseconds")
    queue = _number(environ, "OTEL_BSP_MAX_QUEUE_SIZE", whole=True, unit="spans")
    batch = _number(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", whole=True, unit="spans")
    if batch is not None and batch > (queue or _SPAN_QUEUE):
        raise ConfigError(
            f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE: {batch:g} is larger than the queue "
            f"(OTEL_BSP_MAX_QUEUE_SIZE, {queue or _SPAN_QUEUE:g})"
        )
    for var in _LIMITS:
        _number(environ, var, whole=True, unit="a limit, or 'unset'", inclusive=True, unset_ok=True)
    sampler = environ.get("OTEL_TRACES_SAMPLER", "")
    if sampler and sampler.lower() not in _SAMPLERS:
        raise ConfigError(
            f"OTEL_TRACES_SAMPLER: unknown sampler {sampler!r}; use one of {', '.join(sorted(_SAMPLERS))}"
        )
    if sampler.lower().endswith("traceidratio"):
        _number(environ, "OTEL_TRACES_SAMPLER_ARG", whole=False, unit="a ratio", inclusive=True, maximum=1.0)


# ---------------------------------------------------------------- building


def _otlp_endpoint(environ: Mapping[str, str], signal: str) -> str:
    """The endpoint the SDK's OTLP/HTTP exporter sends ``signal`` to, as it resolves it."""
    endpoint = environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    if endpoint:
        return endpoint
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
    return f"{base.removesuffix('/')}/v1/{signal}"


def _credential_provider(environ: Mapping[str, str], signal: str) -> bool:
    return bool(
        environ.get("OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER")
        or environ.get(f"OTEL_PYTHON_EXPORTER_OTLP_HTTP_{signal.upper()}_CREDENTIAL_PROVIDER")
    )


_Preferences = tuple["dict[type, AggregationTemporality] | None", "dict[type, Aggregation] | None"]
_OTLP_POINTS = frozenset(_PROTOCOLS.values())


def _otlp_metric_preferences(environ: Mapping[str, str], point_name: str) -> _Preferences:
    """The temporality and aggregation the OTLP metric exporter ``point_name`` prefers, read from
    ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`` and
    ``OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION`` as the SDK (1.45) reads them: an
    unknown value means the default (the exporter itself logs that it ignored it)."""
    from opentelemetry.sdk import metrics as instruments
    from opentelemetry.sdk.metrics.export import AggregationTemporality
    from opentelemetry.sdk.metrics.view import (
        ExplicitBucketHistogramAggregation,
        ExponentialBucketHistogramAggregation,
    )

    cumulative, delta = AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA
    preference = (
        environ.get("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "CUMULATIVE").upper().strip()
    )
    # Counter, UpDownCounter, Histogram, ObservableCounter, ObservableUpDownCounter, ObservableGauge.
    chosen = {
        "DELTA": (delta, cumulative, delta, delta, cumulative, cumulative),
        "LOWMEMORY": (delta, cumulative, delta, cumulative, cumulative, cumulative),
    }.get(preference, (cumulative,) * 6)
    kinds = (
        instruments.Counter,
        instruments.UpDownCounter,
        instruments.Histogram,
        instruments.ObservableCounter,
        instruments.ObservableUpDownCounter,
        instruments.ObservableGauge,
    )
    aggregation: Aggregation = (
        ExponentialBucketHistogramAggregation()
        if _exponential_histograms(environ, point_name)
        else ExplicitBucketHistogramAggregation()
    )
    return dict(zip(kinds, chosen, strict=True)), {instruments.Histogram: aggregation}


def _exponential_histograms(environ: Mapping[str, str], point_name: str) -> bool:
    """Whether ``OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION`` asks the OTLP metric
    exporter ``point_name`` for exponential histograms."""
    histogram = environ.get(
        "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION", "explicit_bucket_histogram"
    )
    if point_name != "otlp_proto_grpc":  # the SDK's gRPC exporter alone reads it case-sensitively
        histogram = histogram.strip().lower()
    return histogram == "base2_exponential_bucket_histogram"


def _known_metric_preferences(environ: Mapping[str, str], name: str) -> _Preferences | None:
    """The preferences the agent gives the metric exporter ``name`` (its constructor's public
    arguments), or None for an exporter it knows nothing of."""
    point_name = _point_name(environ, "metrics", name)
    if point_name in _OTLP_POINTS:
        return _otlp_metric_preferences(environ, point_name)
    if point_name == "console":
        return (None, None)  # the reader's defaults, as the console exporter has them
    return None


def _target(environ: Mapping[str, str], signal: str, name: str) -> str:
    """What an exporter's failures are logged under: an OTLP/HTTP exporter's endpoint (redacted),
    any other's name."""
    if _point_name(environ, signal, name) == "otlp_proto_http":
        return redact_url(_otlp_endpoint(environ, signal))
    return name


def _deferrable(environ: Mapping[str, str], signal: str, name: str) -> bool:
    """Whether the exporter may be built when it first exports: an OTLP/HTTP exporter, whose
    constructor reads only what :func:`validate_otel_env` checked (a credential provider, which it
    loads from an entry point, is not deferred)."""
    return _point_name(environ, signal, name) == "otlp_proto_http" and not _credential_provider(
        environ, signal
    )


def _exporter(environ: Mapping[str, str], signal: str, name: str) -> tuple[Any, str, _Outcomes]:
    """An exporter instance, the target its failures are logged under, and where their causes are.

    The OTLP/HTTP exporters are the agent's to build (it gives them their session); any other is
    its entry point's."""
    point_name = _point_name(environ, signal, name)
    point = None if point_name == "otlp_proto_http" else _entry_point(environ, signal, name)
    target = _target(environ, signal, name)
    known = _known_metric_preferences(environ, name) if signal == "metrics" else None
    options: dict[str, Any] = (
        {} if known is None else {"preferred_temporality": known[0], "preferred_aggregation": known[1]}
    )
    try:
        if point is None:
            from agent.telemetry.session import BoundedSession

            # A credential provider brings its own session, which the SDK uses only if given none.
            session = None if _credential_provider(environ, signal) else BoundedSession()
            if signal == "traces":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                return OTLPSpanExporter(session=session), target, _Outcomes(session)
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            return OTLPMetricExporter(session=session, **options), target, _Outcomes(session)
        return point.load()(**options), target, _Outcomes(None)
    except Exception as exc:
        raise ConfigError(
            f"OTEL_{signal.upper()}_EXPORTER: exporter {name!r} cannot be started: {exc}"
        ) from exc


def build_telemetry(
    environ: Mapping[str, str],
    resource: Resource,
    span_processors: Sequence[SpanProcessor] = (),
    *,
    redactor: Redactor | None = None,
    trace_success_ratio: float = 1.0,
    defer_exporters: bool = False,
) -> Telemetry:
    """Providers with the exporters the environment asks for (see the module docstring).

    Validates the environment first (:func:`validate_otel_env`). ``redactor`` learns the values
    of the OTLP headers as secrets. ``span_processors`` get every span of every run (tests use it to
    read spans in memory), and are added to the tracer provider as they are. The trace exporters get
    the traces of the runs that
    :class:`~agent.telemetry.sampling.RunSamplingProcessor` keeps, successful runs at
    ``trace_success_ratio`` (``VANTAGE_TRACE_SUCCESS_RATIO``).

    With ``defer_exporters`` (``vantage run``), the OTLP/HTTP exporters are built in a thread a
    second after this returns, or when first used if that comes first, not before the first probe:
    what they import (protobuf, the OTLP encoders, ``requests``, the SDK's metric data model) is a
    fifth of the agent's start-up.
    """
    validate_otel_env(environ)
    if redactor is not None:
        for secret in otel_secrets(environ):
            redactor.add(secret)
    _quiet_sdk_export_logs()
    stats = ExportStats()
    trace_names = _exporter_names(environ, "traces")
    metric_names = _exporter_names(environ, "metrics")
    disabled = sdk_disabled(environ)
    if disabled:
        log.info("%s", _disabled_note("prometheus" in metric_names))

    # With no trace exporter, spans are not recorded at all (the sampler drops them at the start),
    # but their context still travels in each probe request's traceparent.
    recording = bool(trace_names or span_processors)
    limits = SpanLimits()  # OTEL_SPAN_* and OTEL_ATTRIBUTE_*, read as the SDK reads them
    tracer_provider = TracerProvider(
        resource=resource, sampler=None if recording else ALWAYS_OFF, span_limits=limits
    )
    for extra in span_processors:
        tracer_provider.add_span_processor(extra)
    queue = int(_number(environ, "OTEL_BSP_MAX_QUEUE_SIZE", whole=True, unit="spans") or _SPAN_QUEUE)
    batch = int(
        _number(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", whole=True, unit="spans")
        or min(_SPAN_BATCH, queue)
    )
    sessions = _Sessions()
    deferred: list[_DeferredSpanExporter | _DeferredMetricExport] = []
    exporting: list[SpanProcessor] = []
    for name in trace_names:
        exporter: SpanExporter
        if defer_exporters and _deferrable(environ, "traces", name):
            outcomes = _Outcomes(None)
            exporter = _DeferredSpanExporter(environ, name, outcomes, sessions)
            deferred.append(exporter)
            target = _target(environ, "traces", name)
        else:
            exporter, target, outcomes = _exporter(environ, "traces", name)
            if outcomes.session is not None:
                sessions.add(outcomes.session)
        processor = CountingBatchSpanProcessor(
            _CountingSpanExporter(exporter, name, stats, target, outcomes),
            stats,
            max_queue_size=queue,
            max_export_batch_size=batch,
        )
        exporting.append(processor)
    # Each run's spans wait in front of the exporters until the run ends and is decided. The runs'
    # spans are the recorder's own (RunSpans), built as SDK spans only when kept; the provider (and
    # the same sampling in it) serves any span started through the SDK's API.
    sampling = RunSamplingProcessor(exporting, success_ratio=trace_success_ratio) if exporting else None
    if sampling is not None:
        tracer_provider.add_span_processor(sampling)
    scope = InstrumentationScope("vantage", __version__)
    spans = RunSpans(
        sampler=tracer_provider.sampler,
        id_generator=tracer_provider.id_generator,
        resource=resource,
        scope=scope,
        limits=limits,
        sampling=sampling,
        extras=span_processors,
    )

    tables = MetricTables(redactor)
    exposition = None
    exports: list[MetricExport | _DeferredMetricExport] = []
    interval = _number(environ, "OTEL_METRIC_EXPORT_INTERVAL", whole=False, unit="milliseconds") or 60_000.0
    timeout = _number(environ, "OTEL_METRIC_EXPORT_TIMEOUT", whole=False, unit="milliseconds") or 30_000.0
    for name in metric_names:
        if name == "prometheus":
            # The SDK's own entry point starts a second server on localhost:9464; the agent
            # serves /metrics on its own port instead.
            exposition = ExpositionCache(tables, resource.attributes)
            continue
        build = partial(
            _build_metric_export,
            environ,
            name,
            tables=tables,
            resource=resource,
            scope=scope,
            stats=stats,
            sessions=sessions,
            interval=interval / 1000,
            timeout=timeout / 1000,
        )
        export: MetricExport | _DeferredMetricExport
        if defer_exporters and _deferrable(environ, "metrics", name):
            if _exponential_histograms(environ, _point_name(environ, "metrics", name)):
                _warn_exponential_histograms(name)
            export = _DeferredMetricExport(
                partial(build, note=False), interval / 1000, name, stats, _target(environ, "metrics", name)
            )
            deferred.append(export)
        else:
            export = build()
        export.start()
        exports.append(export)
    if deferred:
        _build_later(deferred)
    return Telemetry(
        tracer_provider,
        tables,
        stats,
        trace_names,
        metric_names,
        resource,
        spans,
        exposition,
        exports,
        sessions,
        sampling,
        disabled,
    )


def _build_metric_export(environ: Mapping[str, str], name: str, **kwargs: Any) -> MetricExport:
    from agent.telemetry.metric_exports import build_metric_export

    return build_metric_export(environ, name, **kwargs)


def _warn_exponential_histograms(name: str) -> None:
    """Histograms are explicit-bucket tables: said when an exporter asks for exponential ones."""
    log.warning(
        "metrics exporter %s: OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION asks for "
        "base2_exponential_bucket_histogram; the agent's histograms are exported with their "
        "explicit buckets (docs/metrics.md)",
        name,
    )


_BUILD_AFTER = 1.0
"""Seconds after the telemetry is built that its deferred exporters are: after the first probe of
a check with a short interval, well before a shutdown needs them (building them then would spend
the shutdown budget on imports)."""


def _build_later(deferred: Sequence[_DeferredSpanExporter | _DeferredMetricExport]) -> None:
    """Build the deferred exporters in a thread of their own, ``_BUILD_AFTER`` seconds from now.
    Their imports hold the interpreter lock a millisecond at a time (``sys.setswitchinterval``),
    so the event loop starts its runs on time meanwhile."""

    def build() -> None:
        time.sleep(_BUILD_AFTER)
        for exporter in deferred:
            try:
                exporter.warm()
            except Exception:  # the exporter tries again when it is used, and says why then
                log.exception("an exporter could not be built after start-up")

    threading.Thread(target=build, name="vantage-exporters", daemon=True).start()


def __getattr__(name: str) -> Any:
    """The OTLP/HTTP session's names, from the module that holds them (agent/telemetry/session.py),
    imported with ``requests`` only when asked for."""
    if name in ("MAX_ANSWER", "BoundedSession", "ExportAbandoned", "OversizedAnswer", "export_cause"):
        from agent.telemetry import session

        return getattr(session, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
