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

* the OTLP/HTTP exporters send through a :class:`BoundedSession`: each request ends by its
  deadline however the backend trickles, and an answer is read up to 64 KiB, no further;
* every exporter is wrapped so that exports are counted with the cause of each failure
  (``refused``, ``timeout``, ``http 503``, ``oversized``, ``tls``, ``garbage``, ...): the SDK's
  ``force_flush`` says True even when an export failed. ``/readyz`` shows them
  (:meth:`Telemetry.health`), and the log gets one line when a signal starts failing (or its
  cause changes) and one when it recovers, instead of the SDK's lines for every retry;
* spans that the batch processor's full queue drops are counted (``vantage.spans.dropped``).

Every ``OTEL_*`` variable the agent or the SDK reads is checked first (:func:`validate_otel_env`):
a value the SDK would silently replace by its default, or print, is a :class:`ConfigError`.
"""

from __future__ import annotations

import errno
import http.client
import io
import logging
import math
import re
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import unquote

import requests
import requests.exceptions
import urllib3.exceptions
from opentelemetry.sdk import metrics as instruments
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.metrics.view import (
    Aggregation,
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from agent import __version__
from agent.config.secrets import Redactor
from agent.errors import ConfigError
from agent.sdk.urls import redact_url
from agent.telemetry._otel_sdk import CountingBatchSpanProcessor, metric_preferences, otlp_http_sender
from agent.telemetry._requests import DeadlineAdapter, request_deadline
from agent.telemetry.collection import MetricExport, temporality_of
from agent.telemetry.exposition import ExpositionCache, render
from agent.telemetry.sampling import RunSamplingProcessor
from agent.telemetry.spans import RunSpans
from agent.telemetry.tables import MetricTables

__all__ = [
    "MAX_ANSWER",
    "BoundedSession",
    "ExportAbandoned",
    "ExportOutcome",
    "ExportStats",
    "OversizedAnswer",
    "Telemetry",
    "build_resource",
    "build_telemetry",
    "export_cause",
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
# Above this many seconds an OTLP timeout was almost surely meant as milliseconds (the spec's unit).
_MAX_TIMEOUT_SECONDS = 300.0
# An OTLP answer is an Export*ServiceResponse: empty, or a partial-success count and message.
MAX_ANSWER = 64 * 1024
_CHUNK = 16 * 1024


# ---------------------------------------------------------------- the OTLP/HTTP session
#
# The SDK's exporters send through ``requests`` and read the whole answer into memory, with the
# timeout applying to each socket read: a backend that answers 200 with a 1 GiB body, or trickles
# its answer a byte at a time, holds the exporter's thread (and its memory) as long as it likes.
# The session below is handed to the exporters through their public ``session=`` argument; the
# transport beneath it, which gives each socket read only the time left, is an adapter to
# ``requests``, urllib3 and ``http.client`` (agent/telemetry/_requests.py).


class OversizedAnswer(requests.exceptions.RequestException):
    """The backend's answer is larger than an OTLP reply can be; it was not read to the end."""


class ExportAbandoned(requests.exceptions.RequestException):
    """The agent is stopping and its shutdown budget leaves no time for this request. Not a
    connection error, so the SDK does not retry it (nor wait out a back-off first)."""


@dataclass(frozen=True)
class ExportOutcome:
    """What became of one HTTP request of an exporter: ``cause`` is empty on success."""

    cause: str = ""
    detail: str = ""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and those it wraps: causes, contexts, and (as requests and urllib3 wrap them)
    the exceptions among its ``args`` and its ``reason``."""
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < 32:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        wrapped = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        todo.extend(e for e in wrapped if isinstance(e, BaseException))


_REFUSED = {errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH}


def export_cause(exc: BaseException, budget: float | None = None) -> ExportOutcome:
    """The cause of a failed request, as ``/readyz`` and the log name it: the one place where the
    exceptions of ``requests``, ``urllib3``, ``http.client``, ``ssl`` and ``socket`` become causes."""
    chain = list(_chain(exc))

    def having(*types: type[BaseException]) -> BaseException | None:
        return next((e for e in chain if isinstance(e, types)), None)

    if having(ExportAbandoned):
        return ExportOutcome("abandoned", "the agent stopped before the backend answered")
    if having(OversizedAnswer):
        return ExportOutcome("oversized", f"the answer was larger than {MAX_ANSWER} bytes")
    if having(ConnectionRefusedError) or any(isinstance(e, OSError) and e.errno in _REFUSED for e in chain):
        return ExportOutcome("refused", "the backend refused the connection or is unreachable")
    # urllib3's NewConnectionError derives from its ConnectTimeoutError; it is not a timeout.
    timeouts = (TimeoutError, requests.exceptions.Timeout, urllib3.exceptions.ReadTimeoutError)
    if having(*timeouts) or any(
        isinstance(e, urllib3.exceptions.ConnectTimeoutError)
        and not isinstance(e, urllib3.exceptions.NewConnectionError)
        for e in chain
    ):
        within = f" within {budget:.3g}s" if budget is not None else ""
        return ExportOutcome("timeout", f"no complete answer{within}")
    tls = having(
        ssl.SSLError, ssl.CertificateError, urllib3.exceptions.SSLError, requests.exceptions.SSLError
    )
    if tls is not None:
        verify = getattr(tls, "verify_message", None) or getattr(
            having(ssl.SSLCertVerificationError), "verify_message", None
        )
        return ExportOutcome("tls", f"TLS failed: {verify}" if verify else "the TLS handshake failed")
    if having(socket.gaierror, urllib3.exceptions.NameResolutionError):
        return ExportOutcome("dns", "the backend's name did not resolve")
    if having(http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
        return ExportOutcome("protocol", "the backend closed the connection without a complete answer")
    if having(
        http.client.BadStatusLine,
        http.client.LineTooLong,
        urllib3.exceptions.HeaderParsingError,
        requests.exceptions.InvalidHeader,
        requests.exceptions.ContentDecodingError,
    ):
        return ExportOutcome("garbage", "the answer is not HTTP")
    if having(
        http.client.HTTPException, urllib3.exceptions.ProtocolError, requests.exceptions.ConnectionError
    ):
        return ExportOutcome("protocol", "the answer broke off")
    return ExportOutcome("error", type(exc).__name__)


def _budget(timeout: Any) -> float | None:
    if isinstance(timeout, int | float):
        return float(timeout)
    if isinstance(timeout, tuple) and all(isinstance(t, int | float) for t in timeout):
        return float(sum(timeout))
    return None


class BoundedSession(requests.Session):
    """A ``requests`` session for the OTLP/HTTP exporters that no answer can hurt.

    * Each request ends by the ``timeout`` it is given (the SDK passes what is left of the export's
      budget): every socket read and write waits only for the time left, so an answer trickled a
      byte at a time fails as ``timeout`` at the deadline instead of holding the exporter's thread.
    * The answer's body is read up to ``max_answer`` bytes; beyond that the connection is closed
      and the request fails as ``oversized`` (an :class:`OversizedAnswer`, which the SDK does not
      retry).
    * The outcomes of each thread's requests, with the cause of each failure, are kept for the
      exporter's wrapper (:meth:`take_outcome`): the SDK's exporters only say SUCCESS or FAILURE.
    """

    def __init__(self, max_answer: int = MAX_ANSWER) -> None:
        super().__init__()
        self.max_answer = max_answer
        adapter = DeadlineAdapter()
        self.mount("http://", adapter)
        self.mount("https://", adapter)
        self._outcomes = threading.local()
        self.cutoff: float | None = None
        """Monotonic time past which no request runs: the end of the agent's shutdown budget."""

    def stop_by(self, cutoff: float) -> None:
        """From now on, end every request by ``cutoff`` (monotonic) and refuse new ones after it,
        as :class:`ExportAbandoned`: the SDK's retries and back-offs stop with it."""
        self.cutoff = cutoff

    def take_outcome(self) -> ExportOutcome | None:
        """What became of this thread's requests since the last call (None if it made none): the
        outcome of the last one, unless it timed out after an earlier one had a telling answer.

        The SDK retries within the export's budget and may send its last attempt with almost none
        of it left; that attempt's ``timeout`` says less than the ``http 503`` before it.
        """
        outcomes: list[ExportOutcome] = getattr(self._outcomes, "seen", [])
        self._outcomes.seen = []
        if not outcomes:
            return None
        last = outcomes[-1]
        if last.cause == "timeout":
            telling = (o for o in reversed(outcomes) if o.cause not in ("", "timeout"))
            return next(telling, last)
        return last

    def _note(self, outcome: ExportOutcome) -> None:
        seen: list[ExportOutcome] = getattr(self._outcomes, "seen", [])
        self._outcomes.seen = [*seen[-7:], outcome]  # bounded, should nobody take them

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        budget = _budget(kwargs.get("timeout"))
        if self.cutoff is not None:
            left = self.cutoff - time.monotonic()
            if left <= 0:
                abandoned = ExportAbandoned("the shutdown budget is spent", request=request)
                self._note(export_cause(abandoned, budget))
                raise abandoned
            budget = left if budget is None else min(budget, left)
            kwargs["timeout"] = budget
        if budget is not None and budget <= 0:
            # The SDK's last retry may come with nothing left (urllib3 would raise ValueError).
            spent = requests.exceptions.ConnectTimeout("nothing left of the export's budget", request=request)
            self._note(export_cause(spent, budget))
            raise spent
        kwargs["stream"] = True
        try:
            with request_deadline(None if budget is None else time.monotonic() + budget, self):
                response = super().send(request, **kwargs)
                self._read_body(response)
        except Exception as exc:
            cut = self.cutoff is not None and time.monotonic() >= self.cutoff
            self._note(
                ExportOutcome("abandoned", "the agent stopped first") if cut else export_cause(exc, budget)
            )
            if self.cutoff is not None:
                # The agent is stopping: one try at what is buffered, no retry after a back-off.
                raise ExportAbandoned("no retry while the agent stops", request=request) from exc
            raise
        status = response.status_code
        self._note(
            ExportOutcome()
            if 200 <= status < 400
            else ExportOutcome(f"http {status}", f"HTTP {status} {response.reason or ''}".strip())
        )
        return response

    def resolve_redirects(self, *args: Any, **kwargs: Any) -> Generator[requests.Response, None, None]:
        """No redirects: the exporters follow none, and ``requests`` would read a redirect's whole
        body, uncapped, to release its connection (even to only note where it points)."""
        yield from ()

    def _read_body(self, response: requests.Response) -> None:
        """Read the body up to the cap (within the deadline, as the socket reads are bounded) and
        keep it as the response's content."""
        raw = response.raw
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.max_answer:
            response.close()
            raise OversizedAnswer(f"Content-Length {length} is above {self.max_answer} bytes")
        body = bytearray()
        try:
            for chunk in raw.stream(_CHUNK, decode_content=True):
                body += chunk
                if len(body) > self.max_answer:
                    raise OversizedAnswer(f"the answer is larger than {self.max_answer} bytes")
        except OversizedAnswer:
            response.close()
            raise
        except urllib3.exceptions.ReadTimeoutError as exc:
            response.close()
            raise requests.exceptions.ReadTimeout(exc, request=response.request) from exc
        except urllib3.exceptions.SSLError as exc:
            response.close()
            raise requests.exceptions.SSLError(exc, request=response.request) from exc
        except urllib3.exceptions.DecodeError as exc:
            response.close()
            raise requests.exceptions.ContentDecodingError(exc, request=response.request) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            response.close()
            raise requests.exceptions.ChunkedEncodingError(exc, request=response.request) from exc
        raw.release_conn()
        # What the SDK may read (``content``, ``text``) comes from the capped copy.
        response.raw = io.BytesIO(bytes(body))


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
        self._session = self.session = session

    def begin(self) -> None:
        if self._session is not None:
            self._session.take_outcome()

    def failure(self, exc: BaseException | None = None) -> ExportOutcome:
        outcome = self._session.take_outcome() if self._session is not None else None
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


class _CountingMetricExporter(MetricExporter):
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
    exports: list[MetricExport] = field(default_factory=list)
    """One per other metric exporter (OTLP, console, ...), each with its thread."""
    sessions: list[BoundedSession] = field(default_factory=list)
    """The OTLP/HTTP exporters' sessions, told the deadline when the agent stops."""
    sampling: RunSamplingProcessor | None = None
    """What decides at the end of each run which traces the exporters get (None: no trace exporter)."""

    def health(self) -> dict[str, Any]:
        """The exporters' state for ``/readyz``, by signal: what is configured, how many exports
        went through and failed, spans dropped, the last error with its cause, and, for a signal
        failing now, since when (epoch seconds), how many exports in a row and why."""
        sampling = {"sampling": asdict(self.sampling.counts())} if self.sampling else {}
        return (
            {"exporters": {"traces": self.trace_exporters, "metrics": self.metric_exporters}}
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
        for session in self.sessions:
            session.stop_by(cutoff)
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
    for signal in SIGNALS:
        for name in _exporter_names(environ, signal):
            if name != "prometheus" or signal != "metrics":
                _entry_point(environ, signal, name)
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


_Preferences = tuple[dict[type, AggregationTemporality] | None, dict[type, Aggregation] | None]
_OTLP_POINTS = frozenset(_PROTOCOLS.values())


def _otlp_metric_preferences(environ: Mapping[str, str], point_name: str) -> _Preferences:
    """The temporality and aggregation the OTLP metric exporter ``point_name`` prefers, read from
    ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`` and
    ``OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION`` as the SDK (1.45) reads them: an
    unknown value means the default (the exporter itself logs that it ignored it)."""
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
    histogram = environ.get(
        "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION", "explicit_bucket_histogram"
    )
    if point_name != "otlp_proto_grpc":  # the SDK's gRPC exporter alone reads it case-sensitively
        histogram = histogram.strip().lower()
    aggregation: Aggregation = (
        ExponentialBucketHistogramAggregation()
        if histogram == "base2_exponential_bucket_histogram"
        else ExplicitBucketHistogramAggregation()
    )
    return dict(zip(kinds, chosen, strict=True)), {instruments.Histogram: aggregation}


def _known_metric_preferences(environ: Mapping[str, str], name: str) -> _Preferences | None:
    """The preferences the agent gives the metric exporter ``name`` (its constructor's public
    arguments), or None for an exporter it knows nothing of."""
    point_name = _point_name(environ, "metrics", name)
    if point_name in _OTLP_POINTS:
        return _otlp_metric_preferences(environ, point_name)
    if point_name == "console":
        return (None, None)  # the reader's defaults, as the console exporter has them
    return None


def _exporter(environ: Mapping[str, str], signal: str, name: str) -> tuple[Any, str, _Outcomes]:
    """An exporter instance, the target its failures are logged under, and where their causes are."""
    point = _entry_point(environ, signal, name)
    target = name
    known = _known_metric_preferences(environ, name) if signal == "metrics" else None
    options: dict[str, Any] = (
        {} if known is None else {"preferred_temporality": known[0], "preferred_aggregation": known[1]}
    )
    try:
        if point.name == "otlp_proto_http":
            target = redact_url(_otlp_endpoint(environ, signal))
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
) -> Telemetry:
    """Providers with the exporters the environment asks for (see the module docstring).

    Validates the environment first (:func:`validate_otel_env`). ``redactor`` learns the values
    of the OTLP headers as secrets. ``span_processors`` get every span of every run (tests use it to
    read spans in memory), and are added to the tracer provider as they are. The trace exporters get
    the traces of the runs that
    :class:`~agent.telemetry.sampling.RunSamplingProcessor` keeps, successful runs at
    ``trace_success_ratio`` (``VANTAGE_TRACE_SUCCESS_RATIO``).
    """
    validate_otel_env(environ)
    if redactor is not None:
        for secret in otel_secrets(environ):
            redactor.add(secret)
    _quiet_sdk_export_logs()
    stats = ExportStats()
    trace_names = _exporter_names(environ, "traces")
    metric_names = _exporter_names(environ, "metrics")

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
    sessions: list[BoundedSession] = []
    exporting: list[SpanProcessor] = []
    for name in trace_names:
        exporter, target, outcomes = _exporter(environ, "traces", name)
        sessions.extend([outcomes.session] if outcomes.session else [])
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
    exports: list[MetricExport] = []
    interval = _number(environ, "OTEL_METRIC_EXPORT_INTERVAL", whole=False, unit="milliseconds") or 60_000.0
    timeout = _number(environ, "OTEL_METRIC_EXPORT_TIMEOUT", whole=False, unit="milliseconds") or 30_000.0
    for name in metric_names:
        if name == "prometheus":
            # The SDK's own entry point starts a second server on localhost:9464; the agent
            # serves /metrics on its own port instead.
            exposition = ExpositionCache(tables, resource.attributes)
            continue
        exporter, target, outcomes = _exporter(environ, "metrics", name)
        sessions.extend([outcomes.session] if outcomes.session else [])
        preferences = _known_metric_preferences(environ, name) or metric_preferences(exporter)
        _note_histogram_aggregation(name, preferences[1])
        # The OTLP/HTTP exporter's own encoder is most of a collection's cost: the agent encodes
        # for it (agent/telemetry/otlp_wire.py) and sends through its client.
        sender = (
            otlp_http_sender(exporter)
            if _entry_point(environ, "metrics", name).name == "otlp_proto_http"
            else None
        )
        counting = _CountingMetricExporter(exporter, name, stats, target, outcomes, sender)
        export = MetricExport(
            tables,
            resource,
            scope,
            counting,
            interval=interval / 1000,
            timeout=timeout / 1000,
            temporality=temporality_of(preferences[0]),
            name=name,
            send=counting.export_encoded if sender is not None else None,
        )
        export.start()
        exports.append(export)
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
    )


def _note_histogram_aggregation(name: str, aggregation: Mapping[type, Aggregation] | None) -> None:
    """Histograms are explicit-bucket tables: say so when an exporter asks for exponential ones."""
    if isinstance((aggregation or {}).get(instruments.Histogram), ExponentialBucketHistogramAggregation):
        log.warning(
            "metrics exporter %s: OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION asks for "
            "base2_exponential_bucket_histogram; the agent's histograms are exported with their "
            "explicit buckets (docs/metrics.md)",
            name,
        )
