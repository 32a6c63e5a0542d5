"""Testing a probe on its own, without the agent: what a probe's author imports in its tests.

A :class:`ProbeTester` runs one check of one probe type once, the way the agent's scheduler
would, and keeps what the run recorded::

    from agent.sdk.testing import ProbeTester

    async def test_ping(redis_port: int) -> None:
        async with ProbeTester(RedisPingProbe) as tester:
            result = await tester.run({"name": "cache", "target": f"127.0.0.1:{redis_port}"})
        assert result.success
        assert [step.name for step in tester.steps] == ["connect", "ping"]

What is real, and what is made for tests:

- The check goes through the agent's own loading (``load_config`` with a registry that holds
  only this probe type): defaults (``interval``, ``timeout``), ``${NAME}`` secret references
  (resolved from the tester's ``environ`` and registered with the redactor),
  ``validate_target``, and the probe's ``Settings`` model. A bad check raises
  :class:`ConfigError` with the message the agent would print. The probe class is loaded as its
  entry point would be, so it must be defined at module level and honour the plugin contract
  (a ``Settings`` that forbids unknown fields, a ``name``), or :class:`PluginError` is raised.
- The run's ``ProbeContext`` has the agent's HTTP client factory (fresh connections, phases
  timed), an ``Inbox`` the test can deliver to, the redactor and secrets of the check, and a
  :class:`RecordingTracer` instead of OpenTelemetry: spans and step spans are kept as plain
  :class:`RecordedSpan` data.
- Each check has its ``ctx.state``: the agent's own ``CheckSlots`` (``agent/state.py``), kept
  across the tester's runs of that check as the agent keeps it; :meth:`ProbeTester.forget` drops
  it, as the agent does when a check is removed, so that a test can show that the next run starts
  fresh.
- The check's ``timeout`` cuts the run, as the scheduler's does, into a ``timeout`` result that
  says what the run was doing (``ctx.stage``). The deadline is on the tester's clock, as the
  scheduler's is on its own: with a :class:`FakeClock`, a probe's sleeps reach it in no time.
- An exception out of ``run`` is raised here, where the agent would record it as reason
  ``internal``: in a test a crash should fail with its traceback. So does a result that emits a
  metric the probe did not declare (the agent would drop it with an error).
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import json
import logging
import secrets
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from importlib.metadata import EntryPoint
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.lowlevel
from pydantic import BaseModel

from agent import __version__
from agent.config.registry import GROUP, Registry
from agent.config.settings import Config, load_config
from agent.errors import ConfigError, PluginError
from agent.net.http import HttpClientFactory
from agent.sdk.probe import (
    AttributeValue,
    Check,
    Clock,
    Probe,
    ProbeContext,
    ProbeResult,
    ProbeState,
    SpanHandle,
    SystemClock,
)
from agent.server.inbox import Inbox
from agent.state import ProbeStates

if TYPE_CHECKING:
    from agent.net.http import RequestRecord

__all__ = [
    "ConfigError",
    "FakeClock",
    "PluginError",
    "ProbeTester",
    "RecordedEvent",
    "RecordedRun",
    "RecordedSpan",
    "RecordingTracer",
    "undeclared_metrics",
]

T = TypeVar("T")

STEP_ATTRIBUTE = "vantage.step"
"""The attribute ``ProbeContext.step`` puts on the spans it opens."""


class _FakeTimer:
    """A timer of :meth:`FakeClock.call_later`: ``callback`` is called once, at ``when``."""

    __slots__ = ("callback", "when")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback: Callable[[], object] | None = callback

    def cancel(self) -> None:
        self.callback = None


class FakeClock:
    """A clock the test sets: time stands still unless the test, or a sleep, moves it.

    ``sleep`` moves the clock forward by what it was asked and returns at once (after one
    checkpoint), as trio's ``MockClock`` does with ``autojump_threshold=0``: a probe that waits
    five seconds between polls runs in no time and reads the five seconds it waited. Deadlines
    (``move_on_after``, which the tester puts around a run for the check's timeout, and the timers
    of ``call_later``, with which the scheduler cuts a run) are on this clock too: a sleep that
    would pass one stops at it, and the guarded block is cancelled (the timer's callback called)
    there; a probe blocked on its network does not move the clock, so only the test's ``advance``
    can bring its deadline."""

    def __init__(self, monotonic: float = 1000.0, wall: float = 1_800_000_000.0) -> None:
        self._monotonic = monotonic
        self._wall = wall
        self._deadlines: list[tuple[float, anyio.CancelScope]] = []
        self._timers: list[_FakeTimer] = []

    def monotonic(self) -> float:
        return self._monotonic

    def time(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds``, cancelling the scopes whose deadline passed and
        calling the timers that fell due, in the order of their deadlines."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._monotonic += seconds
        self._wall += seconds
        for deadline, scope in self._deadlines:
            if deadline <= self._monotonic:
                scope.cancel()
        due = sorted((t for t in self._timers if t.when <= self._monotonic), key=lambda t: t.when)
        for timer in due:
            self._timers.remove(timer)
            if timer.callback is not None:
                timer.callback()

    def set_wall(self, wall: float) -> None:
        """Step the wall clock alone (NTP, a suspended VM); the monotonic clock does not move."""
        self._wall = wall

    async def sleep(self, seconds: float) -> None:
        wake = self._monotonic + max(0.0, seconds)
        first = min(
            (
                *(deadline for deadline, _ in self._deadlines),
                *(timer.when for timer in self._timers if timer.callback is not None),
            ),
            default=wake,
        )
        self.advance(max(0.0, min(wake, first) - self._monotonic))
        await anyio.lowlevel.checkpoint()

    @contextlib.contextmanager
    def move_on_after(self, seconds: float) -> Iterator[anyio.CancelScope]:
        """A cancel scope that this clock cancels ``seconds`` from now."""
        scope = anyio.CancelScope()
        entry = (self._monotonic + seconds, scope)
        self._deadlines.append(entry)
        if seconds <= 0:
            scope.cancel()
        try:
            with scope:
                yield scope
        finally:
            self._deadlines.remove(entry)

    def call_later(self, seconds: float, callback: Callable[[], object]) -> _FakeTimer:
        """Call ``callback`` when this clock reaches ``seconds`` from now (a sleep or ``advance``
        moving it there), unless the timer is cancelled first; never from inside this call."""
        timer = _FakeTimer(self._monotonic + max(0.0, seconds), callback)
        self._timers.append(timer)
        return timer


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event added to a span."""

    name: str
    attributes: Mapping[str, AttributeValue]


@dataclass(slots=True)
class RecordedSpan:
    """A span a probe opened (a step, an HTTP request), as plain data.

    ``parent_id`` is the ``span_id`` of the span it was opened under, or None for a child of the
    run's root span. Texts are redacted as the agent's spans redact them."""

    span_id: int
    name: str
    parent_id: int | None
    client: bool
    attributes: dict[str, AttributeValue]
    start_time: float
    events: list[RecordedEvent] = field(default_factory=list)
    end_time: float | None = None
    error_type: str | None = None
    """``error.type`` of a failed span (``fail``), else None."""
    error_message: str | None = None

    @property
    def ended(self) -> bool:
        return self.end_time is not None

    @property
    def step(self) -> str | None:
        """The step's name, for a span opened by ``ctx.step``."""
        value = self.attributes.get(STEP_ATTRIBUTE)
        return value if isinstance(value, str) else None


class _Handle:
    """The SpanHandle of a recorded span."""

    __slots__ = ("_tracer", "span")

    def __init__(self, tracer: RecordingTracer, span: RecordedSpan) -> None:
        self._tracer, self.span = tracer, span

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.span.attributes[key] = self._tracer.clean(value)

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        cleaned = {k: self._tracer.clean(v) for k, v in (attributes or {}).items()}
        self.span.events.append(RecordedEvent(name, cleaned))

    def fail(self, error_type: str, message: str) -> None:
        self.span.attributes["error.type"] = error_type
        self.span.error_type, self.span.error_message = error_type, self._tracer.redact(message)

    def inject(self, headers: MutableMapping[str, str]) -> None:
        headers["traceparent"] = f"00-{self._tracer.trace_id}-{self.span.span_id:016x}-01"

    def end(self, end_time: float | None = None) -> None:
        if self.span.end_time is None:
            self.span.end_time = self._tracer.now() if end_time is None else end_time


class RecordingTracer:
    """A ``Tracer`` that keeps the spans of one run in memory, in the order they were opened."""

    def __init__(self, redact: Callable[[str], str] = str, clock: Clock | None = None) -> None:
        self.spans: list[RecordedSpan] = []
        self.trace_id = secrets.token_hex(16)
        self._redact = redact
        self._clock = clock or SystemClock()
        self._ids = itertools.count(1)
        self._current: contextvars.ContextVar[int | None] = contextvars.ContextVar(
            f"recording-tracer-{id(self)}", default=None
        )

    @property
    def steps(self) -> list[RecordedSpan]:
        """The spans opened by ``ctx.step``."""
        return [span for span in self.spans if span.step is not None]

    def now(self) -> float:
        return self._clock.time()

    def redact(self, text: str) -> str:
        return self._redact(text)

    def clean(self, value: AttributeValue) -> AttributeValue:
        return self._redact(value) if isinstance(value, str) else value

    def start_span(
        self,
        name: str,
        *,
        client: bool = False,
        attributes: Mapping[str, AttributeValue] | None = None,
        start_time: float | None = None,
    ) -> SpanHandle:
        span = RecordedSpan(
            span_id=next(self._ids),
            name=name,
            parent_id=self._current.get(),
            client=client,
            attributes={k: self.clean(v) for k, v in (attributes or {}).items()},
            start_time=self.now() if start_time is None else start_time,
        )
        self.spans.append(span)
        return _Handle(self, span)

    @contextlib.contextmanager
    def use_span(self, span: SpanHandle) -> Iterator[None]:
        if not isinstance(span, _Handle) or span.span not in self.spans:
            raise TypeError("use_span() takes a span this tracer started")
        token = self._current.set(span.span.span_id)
        try:
            yield
        finally:
            self._current.reset(token)


@dataclass(frozen=True, slots=True)
class RecordedRun:
    """One run: the check as the agent parsed it, its context, its result and what it recorded."""

    check: Check
    settings: BaseModel
    context: ProbeContext
    tracer: RecordingTracer
    result: ProbeResult

    @property
    def spans(self) -> list[RecordedSpan]:
        return self.tracer.spans

    @property
    def steps(self) -> list[RecordedSpan]:
        return self.tracer.steps

    @property
    def requests(self) -> list[RequestRecord]:
        """The physical HTTP requests the run made through ``ctx.http()``."""
        return list(self.context.requests)


def undeclared_metrics(probe: Probe[Any], result: ProbeResult) -> list[str]:
    """The metric names ``result`` emits that ``probe.metrics`` does not declare, sorted.

    The agent drops each of them with an error in its log."""
    declared = {spec.name for spec in probe.metrics}
    emitted = {*result.values, *(sample.metric for sample in result.samples)}
    if result.phases and probe.phase_metric:
        emitted.add(probe.phase_metric)
    elif result.phases:
        emitted.add("phases (the probe has no phase_metric)")
    return sorted(emitted - declared)


class ProbeTester:
    """Runs checks of one probe type once each, as the agent would; see the module docstring.

    ``environ`` holds what the agent would read from its environment: the ``${NAME}`` secrets
    the checks refer to and ``VANTAGE_*`` settings (``VANTAGE_REGION``, ``VANTAGE_STATE_DIR``,
    ``VANTAGE_PUBLIC_URL``). ``resolve`` replaces the HTTP client's name resolution with a map of
    names to (loopback) addresses; a name not in it fails as a DNS failure would. Use it as
    ``async with``, so that the HTTP sessions are closed.
    """

    def __init__(
        self,
        probe: type[Probe[Any]],
        *,
        environ: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        inbox: Inbox | None = None,
        resolve: Mapping[str, str] | None = None,
    ) -> None:
        name = getattr(probe, "name", None)
        if not isinstance(name, str):
            raise PluginError(f"{probe.__qualname__} has no name: set the class attribute 'name'")
        if "<locals>" in probe.__qualname__:
            raise PluginError(
                f"{probe.__qualname__}: define the probe class at module level, where an entry point "
                "can name it"
            )
        self.name = name
        self.environ = dict(environ or {})
        self.clock: Clock = clock or SystemClock()
        self.inbox = inbox or Inbox()
        self.http = HttpClientFactory(user_agent=f"Vantage/{__version__}", resolve=resolve)
        self.last: RecordedRun | None = None
        # The agent's start, for round-trip probes' grace periods: the tester's own, for every run.
        self.started, self.started_monotonic = self.clock.time(), self.clock.monotonic()
        # One registry for the tester's life: the probe instance lives across runs, as in the agent.
        point = EntryPoint(name, f"{probe.__module__}:{probe.__qualname__}", GROUP)
        self._registry = Registry([point])
        # The agent's own per-check state (``agent/state.py``), kept across runs as the agent keeps it.
        self._states = ProbeStates()

    @classmethod
    def from_entry_point(cls, name: str, value: str, **kwargs: Any) -> ProbeTester:
        """A tester for the probe an entry point names (``name = "module:Class"`` in the
        ``vantage.probes`` group of a distribution's ``pyproject.toml``)."""
        point = EntryPoint(name, value, GROUP)
        loaded = Registry([point]).load(name)
        return cls(type(loaded), **kwargs)

    @property
    def probe(self) -> Probe[Any]:
        """The probe instance, loaded and checked as the agent's registry does."""
        return self._registry.load(self.name)

    def load(self, check: Mapping[str, Any]) -> tuple[Check, BaseModel, Config]:
        """Parse one check (``type`` defaults to this probe's) as the agent loads its check file."""
        document = {"type": self.name, **check}
        environ = {**self.environ, "VANTAGE_CHECKS": json.dumps({"checks": [document]})}
        config = load_config(environ, registry=self._registry)
        (entry,) = config.entries
        return entry.check, entry.settings, config

    def state(self, check: str) -> ProbeState:
        """The ``ctx.state`` of the check named ``check``: the same across runs until ``forget``."""
        return self._states.of(check)

    def forget(self, check: str) -> None:
        """Drop the state of the check named ``check``, as the agent does when it is removed."""
        self._states.drop(check)

    def context(self, check: Check, config: Config, tracer: RecordingTracer) -> ProbeContext:
        """The ProbeContext of one run of ``check``, built as the agent builds it."""
        settings = config.settings
        return ProbeContext(
            check=check,
            region=settings.region,
            clock=self.clock,
            log=logging.LoggerAdapter(logging.getLogger("vantage.probe"), {"check": check.name}),
            secrets=config.resolver,
            redact=config.redactor,
            tracer=tracer,
            http=self.http,
            state=self.state(check.name),
            inbox=self.inbox,
            state_dir=settings.state_dir,
            public_url=settings.public_url,
            started=self.started,
            started_monotonic=self.started_monotonic,
        )

    async def run(self, check: Mapping[str, Any]) -> ProbeResult:
        """Run ``check`` once and return its result; ``last`` keeps the run's record."""
        parsed, settings, config = self.load(check)
        tracer = RecordingTracer(config.redactor, self.clock)
        ctx = self.context(parsed, config, tracer)
        probe = self.probe
        started = self.clock.monotonic()
        result: object = None
        with self.clock.move_on_after(parsed.timeout) as scope:
            result = await probe.run(parsed, settings, ctx)
        if scope.cancelled_caught:
            result = ProbeResult.timed_out(parsed.timeout, ctx.stage)
        if not isinstance(result, ProbeResult):
            raise PluginError(f"{self.name}: run() returned {type(result).__name__}, not a ProbeResult")
        if result.duration is None:
            result = replace(result, duration=self.clock.monotonic() - started)
        self.last = RecordedRun(parsed, settings, ctx, tracer, result)
        if undeclared := undeclared_metrics(probe, result):
            raise PluginError(f"{self.name}: the result emits undeclared metrics: {', '.join(undeclared)}")
        return result

    def _last(self) -> RecordedRun:
        if self.last is None:
            raise RuntimeError("no check has run yet")
        return self.last

    @property
    def spans(self) -> list[RecordedSpan]:
        """The spans of the last run, in the order they were opened."""
        return self._last().spans

    @property
    def steps(self) -> list[RecordedSpan]:
        """The step spans (``ctx.step``) of the last run."""
        return self._last().steps

    @property
    def requests(self) -> list[RequestRecord]:
        """The HTTP requests of the last run."""
        return self._last().requests

    async def aclose(self) -> None:
        """Close the HTTP sessions."""
        await self.http.aclose()

    async def __aenter__(self) -> ProbeTester:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self.aclose()
