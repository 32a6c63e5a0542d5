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
import asyncio
import contextlib
import enum
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

import anyio
from pydantic import BaseModel, ConfigDict

# ``clip`` lives beside the assertions, which need it and which this module imports.
from agent.sdk.assertions import (
    Assertion,
    AssertionOp,
    AssertionOutcome,
    AssertionSource,
    Subject,
    clip,
)
from agent.sdk.durations import Duration, format_duration, plural
from agent.sdk.http import (
    HttpClient,
    HttpClientFactory,
    HttpExchange,
    HttpFailure,
    TLSInfo,
    TLSOptions,
    tls_context,
)
from agent.sdk.reasons import Reason
from agent.sdk.types import (
    REDACTED,
    Check,
    Delivery,
    InboundRequest,
    Inbox,
    Redactor,
    SecretResolver,
)

if TYPE_CHECKING:
    import ssl

__all__ = [
    "REDACTED",
    "Assertion",
    "AssertionOp",
    "AssertionOutcome",
    "AssertionSource",
    "AttributeValue",
    "Check",
    "Clock",
    "Delivery",
    "Duration",
    "Event",
    "HttpClient",
    "HttpClientFactory",
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
    "ProbeState",
    "Reason",
    "Redactor",
    "Refusal",
    "RefusalKind",
    "Sample",
    "SecretResolver",
    "SpanHandle",
    "StateFile",
    "StepResult",
    "Subject",
    "SystemClock",
    "TLSInfo",
    "TLSOptions",
    "Tracer",
    "clip",
    "format_duration",
    "plural",
    "tls_context",
    "visible",
]

AttributeValue = str | bool | int | float
_state_log = logging.getLogger("vantage.state")

# C0 controls (newline and carriage return included), DEL, C1 controls, and the Unicode line and
# paragraph separators: what a target's bytes could use to colour a terminal, hide text or forge a
# line of the text log. Backslashes are left alone, so ordinary text reads as it did.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_control(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(text: str) -> str:
    """``text`` with every control character written as a visible escape (``\\x1b``, ``\\n``).

    ``ProbeResult``, its assertion outcomes and ``StepResult`` apply it to their messages
    themselves, so that nothing a target sent can reach a log line or the status API raw."""
    return _CONTROL.sub(_escape_control, text) if _CONTROL.search(text) else text


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

    ``snapshot``: each run's values and samples of the metric are the whole set for its check, so
    a series the latest run did not report is dropped (a vendor's component the page no longer
    lists; every series of it after a run that read nothing). Without it a series keeps its last
    value until the check is changed or removed, which is right for a set fixed by the check's
    settings and wrong for one that varies from run to run. For gauges whose labels come from
    what a run found; a probe's ``phase_metric`` is not one.
    """

    name: str
    kind: MetricKind
    unit: str
    description: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None
    snapshot: bool = False

    @classmethod
    def gauge(
        cls, name: str, unit: str, description: str, *labels: str, snapshot: bool = False
    ) -> MetricSpec:
        """A last-value gauge, the most common kind a probe emits."""
        return cls(name, MetricKind.GAUGE, unit, description, labels, snapshot=snapshot)

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
    request: str = ""
    """What the step sent, for a person: ``POST /oauth/token`` (its URL redacted, no query values)."""
    status: int | None = None
    """The response's status code; None when no response came (or the step did not run)."""
    assertions: tuple[AssertionOutcome, ...] = ()
    extracted: tuple[str, ...] = ()
    """The names of the values the step extracted (the values themselves may be secrets)."""

    def __post_init__(self) -> None:
        if _CONTROL.search(self.message) or _CONTROL.search(self.name) or _CONTROL.search(self.request):
            object.__setattr__(self, "message", visible(self.message))
            object.__setattr__(self, "name", visible(self.name))
            object.__setattr__(self, "request", visible(self.request))
        if self.assertions:
            object.__setattr__(self, "assertions", tuple(_visible_outcome(a) for a in self.assertions))


def _visible_outcome(outcome: AssertionOutcome) -> AssertionOutcome:
    if (
        _CONTROL.search(outcome.actual)
        or _CONTROL.search(outcome.message)
        or _CONTROL.search(outcome.assertion)
    ):
        return replace(
            outcome,
            assertion=visible(outcome.assertion),
            actual=visible(outcome.actual),
            message=visible(outcome.message),
        )
    return outcome


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
        # Messages are often built from a target's bytes (a body, a banner, a header): control
        # characters are escaped here, once, so that every reader (logs, spans, the status API)
        # gets them harmless. The searches cost next to nothing when there is none.
        if _CONTROL.search(self.message):
            object.__setattr__(self, "message", visible(self.message))
        if self.assertions:
            object.__setattr__(self, "assertions", tuple(_visible_outcome(a) for a in self.assertions))
        search = _CONTROL.search
        for value in self.attributes.values():  # a loop, not any(): made for every result
            if isinstance(value, str) and search(value):
                attributes = {k: visible(v) if isinstance(v, str) else v for k, v in self.attributes.items()}
                object.__setattr__(self, "attributes", attributes)
                break

    @classmethod
    def failure(cls, reason: Reason, message: str, **kwargs: Any) -> ProbeResult:
        return cls(success=False, reason=reason, message=message, **kwargs)

    @classmethod
    def timed_out(cls, timeout: float, stage: str, values: Mapping[str, float] | None = None) -> ProbeResult:
        """The result of a run the check's timeout cut, saying what it was doing (``ctx.stage``),
        with the values it had found (``ctx.kept_values``)."""
        return cls.failure(
            Reason.TIMEOUT,
            f"no result within the timeout of {format_duration(timeout)} ({stage})",
            values=dict(values) if values else {},
        )


class Timer(Protocol):
    """A callback that a clock will call, until it is called off (``asyncio.TimerHandle`` is one)."""

    def cancel(self) -> None:
        """Call the callback off; nothing happens if it was already called."""


class Clock(Protocol):
    """Time as the agent sees it: ticks, sleeps and deadlines all come from here, so that a test
    that injects a fake clock drives timeouts as well as ticks."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps, for durations and ticks."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch, for timestamps."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on this clock."""

    def move_on_after(self, seconds: float) -> contextlib.AbstractContextManager[anyio.CancelScope]:
        """A cancel scope that cancels the block it guards ``seconds`` from now on this clock.

        As ``anyio.move_on_after``: the block's cancellation is caught at the scope's end, and the
        scope's ``cancel_called`` says whether the deadline (or anything else) cancelled it."""

    def call_later(self, seconds: float, callback: Callable[[], object]) -> Timer:
        """Call ``callback`` ``seconds`` from now on this clock (never from inside this call),
        unless the returned timer is cancelled first.

        The cheap deadline: one timer, no cancel scope. The scheduler cuts each run at its timeout
        with it (as ``loop.call_later``, which is what the real clock uses)."""


class SystemClock:
    """The real clocks: the event loop's own deadlines for ``sleep``, ``move_on_after`` and
    ``call_later``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    def move_on_after(self, seconds: float) -> contextlib.AbstractContextManager[anyio.CancelScope]:
        return anyio.move_on_after(seconds)

    def call_later(self, seconds: float, callback: Callable[[], object]) -> Timer:
        # The agent runs on asyncio (uvloop); anyio has no timer of this kind to use instead.
        return asyncio.get_running_loop().call_later(seconds, callback)


class RefusalKind(enum.Enum):
    """What is wrong with a genuine inbound request; its value is the HTTP status the caller gets."""

    UNREADABLE = 400
    """The body or the query cannot be read as the check expects."""
    CONTENT_TYPE = 415
    """The request's content type is not one the check takes."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why ``Probe.admit`` refuses a genuine inbound request: a kind, and words for the caller."""

    kind: RefusalKind
    message: str

    @property
    def status(self) -> int:
        """The HTTP status the caller gets."""
        return self.kind.value


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


class StateFile:
    """A file in which a probe keeps what must survive a restart, under ``ProbeContext.state_dir``.

    The state lives in the probe's memory; the file is its copy. ``write`` replaces the file whole
    (written aside, then renamed, so that a crash never leaves half of one) and never raises: when
    the directory is read-only, full or gone, the probe goes on with what it holds in memory, and
    the failure is logged once, as is the first write that works again. With no state directory
    (``path`` None), nothing is read or written.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.failing = False
        """Whether the last write failed."""

    def read(self) -> str | None:
        """The file's text, or None when there is none (or it cannot be read: logged)."""
        if self.path is None:
            return None
        try:
            return self.path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return None  # nothing kept yet (a write will say what is wrong with the directory)
        except (OSError, UnicodeDecodeError) as exc:
            _state_log.warning("cannot read %s (%s); starting without it", self.path, _why(exc))
            return None

    def write(self, text: str) -> bool:
        """Replace the file's content with ``text``; whether it worked."""
        if self.path is None:
            return True
        folder = self.path.parent
        temporary: str | None = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{self.path.name}.")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(temporary, self.path)
        except OSError as exc:
            if temporary is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
            if not self.failing:
                self.failing = True
                _state_log.warning(
                    "cannot write %s (%s); going on with the state in memory, which a restart "
                    "loses (logged once until a write works again)",
                    self.path,
                    _why(exc),
                )
            return False
        if self.failing:
            self.failing = False
            _state_log.info("%s is written again", self.path)
        return True


def _why(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


class ProbeSettings(BaseModel):
    """Base of a probe's ``Settings``: unknown fields are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


SettingsT = TypeVar("SettingsT", bound=BaseModel)
StateT = TypeVar("StateT")


class ProbeState(Protocol):
    """What a probe keeps for one check between its runs, in the agent's keeping: ``ctx.state``.

    One object per class per check: ``ctx.state.get(TokenCache)`` is the same object in every run
    of the check, made on first use (by ``factory``, else by calling ``kind``), and it goes when the
    check is removed from the configuration. One probe instance serves every check of its type, so
    what belongs to one check lives here, never in a dictionary on the probe keyed by check name.
    The agent's implementation is ``agent/state.py``, which ``agent.sdk.testing`` hands a test too.
    """

    def get(self, kind: type[StateT], factory: Callable[[], StateT] | None = None) -> StateT:
        """The check's ``kind`` object, made by ``factory()`` (or ``kind()``) on first use."""
        ...


class ProbeContext:
    """What the agent hands a probe for one run.

    It holds only data and protocol-typed parts (``Clock``, ``SecretResolver``, ``Redactor``,
    ``Tracer``, ``HttpClientFactory``, ``ProbeState``, ``Inbox``): the agent builds it from its
    implementations in ``agent/app.py``, and ``agent.sdk.testing`` from the same ones for a test."""

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
        state: ProbeState,
        inbox: Inbox | None = None,
        state_dir: Path | None = None,
        public_url: str | None = None,
        started: float = 0.0,
        started_monotonic: float | None = None,
    ) -> None:
        self.check = check
        self.region = region
        self.clock = clock
        self.log = log
        self.secrets = secrets
        self.redact = redact
        self.tracer = tracer
        self.state = state
        """What the probe keeps for this check between runs (``ctx.state.get(Kind)``); the agent
        drops it when the check goes."""
        self.inbox = inbox
        """Inbound requests to this agent's ``/hooks`` and ``/heartbeat`` endpoints, per check."""
        self.public_url = public_url
        """``VANTAGE_PUBLIC_URL``: where senders reach this agent's inbound endpoints, or None."""
        self.started = started
        """Wall-clock time the agent started, for showing; measure ages from ``started_monotonic``."""
        self.started_monotonic = (
            started_monotonic
            if started_monotonic is not None
            else clock.monotonic() - max(0.0, clock.time() - started)
        )
        """The agent's start on the monotonic clock: a round-trip probe's grace before a first
        delivery is measured from it, so that a step of the wall clock cannot shorten it."""
        self.state_dir = state_dir
        """``VANTAGE_STATE_DIR``: where a probe keeps what must survive a restart, or None."""
        self._http = http
        self.requests: list[Any] = []
        """The physical HTTP requests of this run (``RequestRecord``), for the request-duration metric."""
        self.stage = "starting"
        """What the run is doing now, so that a timeout can say where it hung."""
        self.kept_values: Mapping[str, float] | None = None
        """What the run has found so far (``keep_values``), for the result of a run its timeout cuts."""

    def keep_values(self, values: Mapping[str, float]) -> None:
        """Keep ``values`` (the address resolved, the lookup time) for the run's result should its
        timeout cut it: that failure then reports them, as blackbox_exporter reports what it found
        before the deadline. The mapping is kept as it is, not copied: a probe may hand over the
        dictionary it goes on filling, and a run that keeps nothing costs nothing. The values go
        through the probe's ``metrics`` as a result's do."""
        self.kept_values = values

    def http(
        self,
        tls: TLSOptions | None = None,
        *,
        fresh: bool = True,
        ip_family: str = "auto",
        proxy_url: str | None = None,
    ) -> HttpClient:
        """An HTTP client for this run.

        ``fresh`` (the default) opens a new connection with no DNS cache for every request, so every
        run measures DNS, connect and TLS; ``fresh=False`` reuses the connections libcurl keeps.
        ``proxy_url`` sends the requests through an HTTP(S) proxy (CONNECT for https targets).
        """
        return self._http.client(self, tls=tls, fresh=fresh, ip_family=ip_family, proxy_url=proxy_url)

    def tls_info(self, ssl_object: ssl.SSLObject | ssl.SSLSocket) -> TLSInfo:
        """Version, cipher and certificate chains of a handshake the probe made itself (the ``tls``
        probe's ``start_tls``): what ``HttpExchange.tls`` says of an HTTP client's."""
        return self._http.tls_info(ssl_object)

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

    def admit(self, check: Check, settings: SettingsT, request: InboundRequest) -> Refusal | None:
        """Why a genuine request cannot be used (its content type, say), or None; told to the
        caller, with the status its kind says."""
        return None

    @abc.abstractmethod
    async def run(self, check: Check, settings: SettingsT, ctx: ProbeContext) -> ProbeResult:
        """Probe the target once and describe what happened."""
