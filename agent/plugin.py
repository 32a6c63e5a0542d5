"""The plugin contract: the only module a probe plugin imports.

A probe is a class with a ``name``, a pydantic ``Settings`` model for the ``settings`` block of its
checks, the ``metrics`` it may emit, and ``async def run(check, settings, ctx) -> ProbeResult``.
Probes never import OpenTelemetry: they return plain data and the agent's Recorder turns it into
spans and metric points. A failing target is data (``ProbeResult(success=False, reason=...)``),
never an exception; an exception out of ``run`` is recorded as reason ``internal``.

Third-party probes are ordinary Python distributions declaring an entry point in the
``vantage.probes`` group that names their ``Probe`` subclass.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import logging
import time
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

import anyio
from pydantic import BaseModel, ConfigDict

from .assertions import Assertion, AssertionOutcome, Subject
from .checks import Check
from .durations import Duration, format_duration
from .inbox import Delivery, InboundRequest, Inbox
from .reasons import Reason
from .secrets import Redactor, SecretResolver

if TYPE_CHECKING:
    from .http import HttpClientFactory

__all__ = [
    "Assertion",
    "AssertionOutcome",
    "AttributeValue",
    "Check",
    "Clock",
    "Delivery",
    "Duration",
    "Event",
    "HttpClient",
    "HttpExchange",
    "HttpFailure",
    "InboundRequest",
    "Inbox",
    "MetricKind",
    "MetricSpec",
    "Probe",
    "ProbeContext",
    "ProbeResult",
    "ProbeSettings",
    "Reason",
    "Sample",
    "SpanHandle",
    "StepResult",
    "Subject",
    "SystemClock",
    "TLSInfo",
    "TLSOptions",
    "Tracer",
    "format_duration",
    "tls_context",
    "tls_info",
]

AttributeValue = str | bool | int | float


class MetricKind(enum.StrEnum):
    GAUGE = "gauge"
    COUNTER = "counter"
    HISTOGRAM = "histogram"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A metric a probe may emit.

    ``name`` is the OpenTelemetry instrument name (``probe.http.status_code``); the Prometheus
    name is derived from it the way the Prometheus exporter does (dots to underscores, the unit as
    suffix, ``_total`` for counters). ``labels`` lists the attributes a sample adds beyond the
    check's own (``phase``, ``version``).
    """

    name: str
    kind: MetricKind
    unit: str
    description: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None

    @classmethod
    def gauge(cls, name: str, unit: str, description: str, *labels: str) -> MetricSpec:
        """A last-value gauge, the most common kind a probe emits."""
        return cls(name, MetricKind.GAUGE, unit, description, labels)

    @property
    def prometheus_name(self) -> str:
        base = self.name.replace(".", "_")
        suffix = {"s": "seconds", "By": "bytes"}.get(self.unit, "")
        if suffix and not base.endswith("_" + suffix):
            base += "_" + suffix
        if self.kind is MetricKind.COUNTER:
            base += "_total"
        return base


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of a metric with extra labels, e.g. ``probe_tls_version_info{version="TLS 1.3"}``."""

    metric: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)
    series: str | None = None
    """Which series of the check this is; by default the label set. Gauge samples that name the
    same series replace each other (a new TLS version replaces the old one)."""


@dataclass(frozen=True, slots=True)
class Event:
    """Something a run noticed, recorded as an event on its root span."""

    name: str
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StepResult:
    """The outcome of one step of a multi-step run."""

    name: str
    success: bool
    duration: float
    reason: Reason | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one run of a check found. Plain data; the Recorder turns it into telemetry.

    ``values`` maps a metric name from the probe's ``metrics`` to a number; ``samples`` carries
    values with extra labels; ``phases`` maps a phase name to seconds and is exported through the
    probe's ``phase_metric``; ``attributes`` go on the run's root span.
    """

    success: bool
    reason: Reason | None = None
    message: str = ""
    duration: float | None = None
    phases: Mapping[str, float] = field(default_factory=dict)
    values: Mapping[str, float] = field(default_factory=dict)
    samples: tuple[Sample, ...] = ()
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    assertions: tuple[AssertionOutcome, ...] = ()
    steps: tuple[StepResult, ...] = ()
    events: tuple[Event, ...] = ()
    retry_after: float | None = None
    """Seconds the target asked to be left alone; the scheduler skips the check's ticks until then."""

    def __post_init__(self) -> None:
        if not self.success and self.reason is None:
            raise ValueError("a failed ProbeResult needs a reason")

    @classmethod
    def failure(cls, reason: Reason, message: str, **kwargs: Any) -> ProbeResult:
        return cls(success=False, reason=reason, message=message, **kwargs)


class Clock(Protocol):
    """Time as the agent sees it; tests inject a fake one."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps, for durations and ticks."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch, for timestamps."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on this clock."""


class SystemClock:
    """The real clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class SpanHandle(Protocol):
    """A span as probes and the HTTP client see it: no OpenTelemetry types leak out."""

    def set_attribute(self, key: str, value: AttributeValue) -> None: ...

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None: ...

    def fail(self, error_type: str, message: str) -> None:
        """Mark the span as failed with ``error.type`` and a status message."""

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """Write W3C trace context (``traceparent``) for this span into ``headers``."""

    def end(self, end_time: float | None = None) -> None: ...


class Tracer(Protocol):
    """Starts child spans of the current run; backed by the Recorder."""

    def start_span(
        self,
        name: str,
        *,
        client: bool = False,
        attributes: Mapping[str, AttributeValue] | None = None,
        start_time: float | None = None,
    ) -> SpanHandle:
        """A child span of the span in use; ``start_time`` (epoch seconds) backdates it."""

    @contextlib.contextmanager
    def use_span(self, span: SpanHandle) -> Iterator[None]:
        """Make ``span`` the parent of spans started inside the block."""
        yield


class ProbeSettings(BaseModel):
    """Base of a probe's ``Settings``: unknown fields are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


SettingsT = TypeVar("SettingsT", bound=BaseModel)


class ProbeContext:
    """What the agent hands a probe for one run."""

    def __init__(
        self,
        *,
        check: Check,
        region: str,
        clock: Clock,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger],
        secrets: SecretResolver,
        redact: Redactor,
        tracer: Tracer,
        http: HttpClientFactory,
        inbox: Inbox | None = None,
        state_dir: Path | None = None,
        public_url: str | None = None,
        started: float = 0.0,
    ) -> None:
        self.check = check
        self.region = region
        self.clock = clock
        self.log = log
        self.secrets = secrets
        self.redact = redact
        self.tracer = tracer
        self.inbox = inbox
        """Inbound requests to this agent's ``/hooks`` and ``/heartbeat`` endpoints, per check."""
        self.public_url = public_url
        """``VANTAGE_PUBLIC_URL``: where senders reach this agent's inbound endpoints, or None."""
        self.started = started
        """Wall-clock time the agent started: a round-trip probe's grace before a first delivery."""
        self.state_dir = state_dir
        """``VANTAGE_STATE_DIR``: where a probe keeps what must survive a restart, or None."""
        self._http = http
        self.requests: list[Any] = []
        """The physical HTTP requests of this run (``RequestRecord``), for the request-duration metric."""
        self.stage = "starting"
        """What the run is doing now, so that a timeout can say where it hung."""

    def http(
        self, tls: TLSOptions | None = None, *, fresh: bool = True, ip_family: str = "auto"
    ) -> HttpClient:
        """An HTTP client for this run.

        ``fresh`` (the default) opens a new connection with no DNS cache for every request, so every
        run measures DNS, connect and TLS; ``fresh=False`` keeps one pooled client per check.
        """
        return self._http.client(self, tls=tls, fresh=fresh, ip_family=ip_family)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[SpanHandle]:
        """A child span around one step of a multi-step run."""
        span = self.tracer.start_span(name, attributes={"vantage.step": name})
        try:
            with self.tracer.use_span(span):
                yield span
        except BaseException as exc:
            span.fail(type(exc).__name__, self.redact(str(exc)))
            raise
        finally:
            span.end()


class Probe(abc.ABC, Generic[SettingsT]):
    """Base class of every probe type."""

    name: ClassVar[str]
    Settings: ClassVar[type[BaseModel]]
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()
    phase_metric: ClassVar[str | None] = None
    """The metric (from ``metrics``, with a ``phase`` label) that ``ProbeResult.phases`` feed."""
    inbound: ClassVar[str | None] = None
    """``hooks`` or ``heartbeat`` for a probe whose checks receive requests at
    ``/{inbound}/{check}``; the agent then asks ``authenticate`` and ``admit`` about each."""

    def validate_target(self, target: str) -> None:
        """Raise ``ValueError`` when ``target`` cannot be probed by this type (checked at load)."""

    def authenticate(self, check: Check, settings: SettingsT, request: InboundRequest) -> str | None:
        """Why an inbound request for ``check`` is not genuine (bad signature, token), or None.

        The caller learns nothing from a refusal: it gets the same answer as for a check that does
        not exist. The problem is kept with the request in the Inbox, for the probe to report.
        """
        return "this check type takes no inbound requests"

    def admit(self, check: Check, settings: SettingsT, request: InboundRequest) -> str | None:
        """Why a genuine request cannot be used (its content type, say), or None; told to the caller."""
        return None

    @abc.abstractmethod
    async def run(self, check: Check, settings: SettingsT, ctx: ProbeContext) -> ProbeResult:
        """Probe the target once and describe what happened."""


# At the end: the HTTP client module needs the names above.
from .http import (  # noqa: E402
    HttpClient,
    HttpExchange,
    HttpFailure,
    TLSInfo,
    TLSOptions,
    tls_context,
    tls_info,
)
