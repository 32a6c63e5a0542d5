"""The Recorder: the only place where probe results become spans, metric points and log lines."""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Hashable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import SpanKind, Status, StatusCode

from agent.config.checks import CheckEntry
from agent.config.secrets import Redactor
from agent.net.http import RequestRecord
from agent.sdk.durations import format_duration
from agent.sdk.probe import AttributeValue, Clock, MetricKind, MetricSpec, ProbeResult, SpanHandle
from agent.sdk.urls import redact_url
from agent.telemetry.providers import ExportStats
from agent.telemetry.sampling import STATE_CHANGED
from agent.telemetry.spans import RunSpan, RunSpans
from agent.telemetry.tables import Attributes, MetricTables, Table

__all__ = ["CORE_METRICS", "DOWN", "PENDING", "UP", "CheckState", "Recorder", "Run"]

log = logging.getLogger("vantage.checks")

_SECONDS_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    30.0,
    60.0,
)
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_LATENESS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

SUCCESS = MetricSpec("probe.success", MetricKind.GAUGE, "", "1 if the last run succeeded, else 0")
DURATION = MetricSpec("probe.duration", MetricKind.GAUGE, "s", "Duration of the last run")
ALL_DURATIONS = MetricSpec(
    "probe.all.duration",
    MetricKind.HISTOGRAM,
    "s",
    "Durations of all runs",
    buckets=_SECONDS_BUCKETS,
)
RUNS = MetricSpec(
    "probe.runs",
    MetricKind.COUNTER,
    "{run}",
    "Attempts by outcome, failure reason and attempt (1 for a run's first, 2.. for its re-tests)",
    ("result", "reason", "attempt"),
)
HTTP_REQUEST_DURATION = MetricSpec(
    "http.client.request.duration",
    MetricKind.HISTOGRAM,
    "s",
    "Duration of HTTP client requests",
    (
        "http.request.method",
        "http.response.status_code",
        "server.address",
        "server.port",
        "url.scheme",
        "error.type",
        "network.protocol.version",
    ),
    _HTTP_BUCKETS,
)
CHECK_UP = MetricSpec(
    "vantage.check.up",
    MetricKind.GAUGE,
    "",
    "The confirmed state of the check: 1 up, 0 down (no point while it is pending)",
)
STATE_CHANGES = MetricSpec(
    "vantage.check.state_changes",
    MetricKind.COUNTER,
    "{change}",
    "Changes of the confirmed state of the check, up to down and back",
)
FLAPPING = MetricSpec(
    "vantage.check.flapping",
    MetricKind.GAUGE,
    "",
    "1 while the confirmed state changed at least flap_threshold times in the last hour, else 0",
)
CONFIRMATION_METRICS = (CHECK_UP, STATE_CHANGES, FLAPPING)
CORE_METRICS = (SUCCESS, DURATION, ALL_DURATIONS, RUNS, HTTP_REQUEST_DURATION, *CONFIRMATION_METRICS)

LATENESS = MetricSpec(
    "vantage.scheduler.lateness",
    MetricKind.HISTOGRAM,
    "s",
    "How long after its tick a run started",
    buckets=_LATENESS_BUCKETS,
)
SKIPPED = MetricSpec(
    "vantage.runs.skipped",
    MetricKind.COUNTER,
    "{run}",
    "Ticks skipped because the previous run of the check was still going",
    ("cause",),
)
IN_FLIGHT = MetricSpec("vantage.probes.in_flight", MetricKind.GAUGE, "{probe}", "Probes running now")
LOOP_LAG = MetricSpec(
    "vantage.event_loop.lag",
    MetricKind.GAUGE,
    "s",
    "The longest delay of the agent's event loop in the last 10 seconds",
)
CHECKS = MetricSpec("vantage.checks", MetricKind.GAUGE, "{check}", "Checks this agent runs")
INBOUND = MetricSpec(
    "vantage.inbound.requests",
    MetricKind.COUNTER,
    "{request}",
    "Requests to the inbound endpoints by outcome (no check label: the names come from callers)",
    ("endpoint", "outcome"),
)
EXPORT_FAILURES = MetricSpec(
    "vantage.export.failures",
    MetricKind.COUNTER,
    "{export}",
    "Telemetry exports that failed, by signal",
    ("signal",),
)
SPANS_DROPPED = MetricSpec(
    "vantage.spans.dropped",
    MetricKind.COUNTER,
    "{span}",
    "Spans dropped because the export queue was full",
)
AGENT_METRICS = (LATENESS, SKIPPED, IN_FLIGHT, LOOP_LAG, CHECKS, INBOUND, EXPORT_FAILURES, SPANS_DROPPED)

_current_span: contextvars.ContextVar[RunSpan | None] = contextvars.ContextVar("vantage_span", default=None)


class _Span:
    """A SpanHandle backed by a span of the run (agent/telemetry/spans.py); every text it is given
    is redacted."""

    __slots__ = ("_redact", "_span")

    def __init__(self, span: RunSpan, redact: Redactor) -> None:
        self._span, self._redact = span, redact

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, self._redact(value) if isinstance(value, str) else value)

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        redact = self._redact
        self._span.add_event(
            name, {k: redact(v) if isinstance(v, str) else v for k, v in (attributes or {}).items()}
        )

    def fail(self, error_type: str, message: str) -> None:
        self._span.set_attribute("error.type", error_type)
        self._span.set_status(Status(StatusCode.ERROR, self._redact(message)))

    def inject(self, headers: MutableMapping[str, str]) -> None:
        self._span.inject(headers)

    def end(self, end_time: float | None = None) -> None:
        self._span.end(None if end_time is None else int(end_time * 1e9))


class _RunTracer:
    """The Tracer of one run: child spans hang under the innermost span in use."""

    __slots__ = ("_redact", "_root", "_spans")

    def __init__(self, spans: RunSpans, root: RunSpan, redact: Redactor) -> None:
        self._spans, self._root, self._redact = spans, root, redact

    def start_span(
        self,
        name: str,
        *,
        client: bool = False,
        attributes: Mapping[str, AttributeValue] | None = None,
        start_time: float | None = None,
    ) -> SpanHandle:
        parent = _current_span.get() or self._root
        redact = self._redact
        span = self._spans.start_span(
            parent,
            name,
            SpanKind.CLIENT if client else SpanKind.INTERNAL,
            {k: redact(v) if isinstance(v, str) else v for k, v in (attributes or {}).items()}
            if parent.recording
            else {},
            None if start_time is None else int(start_time * 1e9),
        )
        return _Span(span, redact)

    @contextlib.contextmanager
    def use_span(self, span: SpanHandle) -> Iterator[None]:
        token = _current_span.set(span._span if isinstance(span, _Span) else None)
        try:
            yield
        finally:
            _current_span.reset(token)


PENDING, UP, DOWN = "pending", "up", "down"
"""The confirmed states of a check (docs/configuration.md, *Confirmation*)."""
_HOUR = 3600.0
_CHANGES_KEPT = 1024
"""Times of confirmed changes kept per check (the last hour's, at most this many)."""
_ATTEMPTS = tuple(str(n) for n in range(12))  # the attempt label's values, made once
_REQUEST_LABELS = 4096
"""Label sets of ``http.client.request.duration`` kept made (one per series), before starting over."""


@dataclass(slots=True)
class CheckState:
    """What the status API shows of one check (its JSON: agent/server/status.py ``check_json``).

    ``runs``, ``failures`` and ``last`` count attempts (each is a recorded result); the streaks
    and the confirmed state count runs, by their outcome (their last attempt)."""

    entry: CheckEntry
    target: str
    runs: int = 0
    failures: int = 0
    skipped: int = 0
    consecutive_failures: int = 0
    """Failed runs in a row."""
    consecutive_successes: int = 0
    """Successful runs in a row."""
    last: ProbeResult | None = None
    last_time: float | None = None
    last_change: float | None = None
    attempts: int = 0
    """Attempts of the last run (so far, while it re-tests)."""
    confirmed: str = PENDING
    confirmed_since: float | None = None
    changes: list[float] | None = None
    """When the confirmed state changed within the last hour (None until it first does)."""
    flapping: bool = False

    @property
    def changes_last_hour(self) -> int:
        """Confirmed state changes in the hour before the last run ended (as ``flapping``)."""
        return 0 if self.changes is None else len(self.changes)


@dataclass
class Run:
    """One run in progress: its root span and the tracer its probe uses."""

    state: CheckState
    span: RunSpan
    tracer: _RunTracer
    attributes: dict[str, AttributeValue] = field(default_factory=dict)


_OK = Status(StatusCode.OK)


class Recorder:
    """Turns runs into telemetry, keeps each check's last state and logs state changes.

    Metric points are written into the metric tables (agent/telemetry/tables.py) in place: the
    series of a check are keyed by its name, the agent's own series (inbound requests, loop lag,
    lateness, ``http.client.request.duration``, which has one series per server) by none.
    """

    def __init__(
        self,
        *,
        tables: MetricTables,
        spans: RunSpans,
        redactor: Redactor,
        region: str,
        clock: Clock,
        log_runs: bool = False,
        export_stats: ExportStats | None = None,
    ) -> None:
        self._tables, self._spans, self._redact = tables, spans, redactor
        self.region, self._clock, self._log_runs = region, clock, log_runs
        self._attrs: dict[str, dict[str, AttributeValue]] = {}
        self._roots: dict[str, tuple[str, dict[str, AttributeValue], dict[str, AttributeValue]]] = {}
        """Each check's root span name and attributes but the attempt's (made at its first run)."""
        self._request_labels: dict[tuple[Any, ...], dict[str, AttributeValue]] = {}
        """The label set of each ``http.client.request.duration`` series, made at its first request."""
        self._outcomes: dict[tuple[str, Any, str], tuple[str, Any, str]] = {}
        self._snapshots: dict[type, tuple[Table, ...]] = {}
        """The tables of each probe type's ``snapshot`` metrics (only of the types that have some):
        after a run, the series of its check that the run did not report are dropped from them."""
        """Each (result, reason, attempt) key of ``probe.runs``, one object kept by every check's series."""
        self.states: dict[str, CheckState] = {}
        self.in_flight = 0
        self._export_stats = export_stats or ExportStats()
        self.on_result: Callable[[str, float, ProbeResult, Sequence[RequestRecord], int], None] | None = None
        """Called with each run's check name, end time, result, requests and trace id, after the
        rest is recorded (the status page's history, agent/server/history.py)."""
        # Handles to the agent's own tables: the hot path records through them, not by name.
        self._success = tables.declare(SUCCESS)
        self._duration = tables.declare(DURATION)
        self._all_durations = tables.declare(ALL_DURATIONS)
        self._runs = tables.declare(RUNS)
        self._check_up = tables.declare(CHECK_UP)
        self._state_changes = tables.declare(STATE_CHANGES)
        self._flapping = tables.declare(FLAPPING)
        self._http_request_duration = tables.declare(HTTP_REQUEST_DURATION)
        self._lateness = tables.declare(LATENESS)
        self._skipped = tables.declare(SKIPPED)
        self._loop_lag = tables.declare(LOOP_LAG)
        self._inbound = tables.declare(INBOUND)
        # The agent's own series carry its region, as its checks' do: a dashboard or a rule
        # filters both by the same label (the resource's cloud.region reaches only target_info).
        self._agent_attrs: Attributes = {"region": region}
        # Observed at collection time from what the agent already counts.
        tables.observe(IN_FLIGHT, lambda: [(self._agent_attrs, self.in_flight)])
        tables.observe(CHECKS, lambda: [(self._agent_attrs, len(self.states))])
        tables.observe(EXPORT_FAILURES, self._observe_export_failures)
        tables.observe(
            SPANS_DROPPED, lambda: [(self._agent_attrs, self._export_stats.dropped.get("traces", 0))]
        )

    def register(self, entries: Sequence[CheckEntry]) -> None:
        """Prepare the metric tables and label sets of the checks this agent runs."""
        for entry in entries:
            snapshots = tuple(
                table for spec in entry.probe.metrics if (table := self._tables.declare(spec)).spec.snapshot
            )
            if snapshots:
                self._snapshots[type(entry.probe)] = snapshots
            check = entry.check
            target = redact_url(check.target, self._redact)
            self._roots.pop(check.name, None)
            self._attrs[check.name] = {
                **{k: self._redact(v) for k, v in check.labels.items()},
                "check": check.name,
                "type": check.type,
                "target": target,
                "region": self.region,
            }
            self._tables.bind(check.name, self._attrs[check.name])
            self.states[check.name] = CheckState(entry, target)

    def forget(self, name: str) -> None:
        """Drop a removed check: its state, its labels and every series of it in the metric
        tables, histograms included."""
        self.states.pop(name, None)
        self._attrs.pop(name, None)
        self._roots.pop(name, None)
        self._tables.forget(name)

    def _observe_export_failures(self) -> list[tuple[Attributes, float]]:
        failed = self._export_stats.failed
        signals = ("traces", "metrics")
        return [({**self._agent_attrs, "signal": signal}, failed.get(signal, 0)) for signal in signals]

    def loop_lag(self, seconds: float) -> None:
        """The scheduler's measure of how starved the event loop is."""
        self._loop_lag.set(None, None, self._agent_attrs, seconds)

    def lateness(self, seconds: float) -> None:
        self._lateness.record(None, None, self._agent_attrs, max(0.0, seconds))

    def skipped(self, entry: CheckEntry, cause: str) -> None:
        """A tick that did not run; see the scheduler's timeline for why."""
        name = entry.check.name
        state = self.states[name]
        state.skipped += 1
        self._skipped.add(name, cause, {**self._attrs[name], "cause": cause}, 1)

    def inbound(self, endpoint: str, outcome: str) -> None:
        """Count a request to ``/hooks`` or ``/heartbeat`` by what became of it."""
        attributes = {**self._agent_attrs, "endpoint": endpoint, "outcome": outcome}
        self._inbound.add(None, (endpoint, outcome), attributes, 1)

    def start_run(self, entry: CheckEntry, attempt: int = 1) -> Run:
        """Open the root span of an attempt (a run's first, or a re-test: each has its own)."""
        check = entry.check
        name = check.name
        root = self._roots.get(name)
        if root is None:
            attrs = self._attrs[name]
            root = self._roots[name] = (
                f"check {name}",
                {
                    "vantage.check.name": name,
                    "vantage.check.type": check.type,
                    "vantage.check.target": attrs["target"],
                    "cloud.region": self.region,
                },
                {f"vantage.check.label.{k}": attrs[k] for k in check.labels},
            )
        span_name, head, labels = root
        span = self._spans.start_run(span_name, {**head, "vantage.attempt": attempt, **labels})
        self.in_flight += 1
        return Run(self.states[name], span, _RunTracer(self._spans, span, self._redact))

    def abandon_run(self, run: Run, why: str) -> None:
        """End a run that was cancelled before it had a result; it records no metric points."""
        self.in_flight -= 1
        run.span.set_status(Status(StatusCode.ERROR, why))
        run.span.end()

    def finish_run(
        self,
        run: Run,
        result: ProbeResult,
        requests: Sequence[RequestRecord] = (),
        *,
        attempt: int = 1,
        final: bool = True,
    ) -> None:
        """Record an attempt's result, in this order: metric points, the check's state, the root
        span's attributes and status (with ``vantage.state.changed`` when the confirmed state
        changed, which keeps the run's trace), and a log line when the confirmed state changed.

        ``attempt`` is 1 for a run's first, 2.. for its re-tests; ``final`` says the run ends with
        it (no re-test follows): its outcome is the run's, which the confirmed state counts."""
        self.in_flight -= 1
        state = run.state
        outcome = {
            "result": "success" if result.success else "failure",
            "attempt": _ATTEMPTS[attempt] if attempt < len(_ATTEMPTS) else str(attempt),
        }
        if result.reason is not None:
            outcome["reason"] = result.reason.value
        message = self._redact(result.message)
        self._record_metrics(state.entry, result, outcome, requests)
        self._update_state(state, result, attempt)
        previous = state.confirmed
        changed = final and self._confirm(state, result.success)
        self._end_span(run.span, result, outcome, message, changed)
        self._log_run(state.entry, result, outcome, message, previous, changed, attempt)
        if self.on_result is not None:
            self.on_result(
                state.entry.check.name, state.last_time or 0.0, result, requests, run.span.trace_id
            )

    def _record_metrics(
        self,
        entry: CheckEntry,
        result: ProbeResult,
        outcome: Mapping[str, str],
        requests: Sequence[RequestRecord],
    ) -> None:
        name = entry.check.name
        attrs = self._attrs[name]
        duration = result.duration or 0.0
        self._success.set(name, None, attrs, 1.0 if result.success else 0.0)
        self._duration.set(name, None, attrs, duration)
        self._all_durations.record(name, None, attrs, duration)
        ran = (outcome["result"], result.reason, outcome["attempt"])
        self._runs.put_derived(name, self._outcomes.setdefault(ran, ran), attrs, outcome, 1)
        phase_metric = entry.probe.phase_metric
        if phase_metric and result.phases:
            phases = self._tables.tables.get(phase_metric)
            if phases is None:
                log.error("probe emitted %s, which is not among its metric specs; dropped", phase_metric)
            else:
                for phase, seconds in result.phases.items():
                    phases.put_derived(name, phase, attrs, {"phase": phase}, seconds)
        tables = self._tables.tables
        for metric, value in result.values.items():  # as _set does, a dozen times a run
            table = tables.get(metric)
            if table is None:
                log.error("probe emitted %s, which is not among its metric specs; dropped", metric)
                continue
            table.put(name, None, attrs, value)
        for sample in result.samples:
            # One series per label set, unless the sample names its series (see Sample.series).
            series = sample.series if sample.series is not None else tuple(sorted(sample.labels.items()))
            table = tables.get(sample.metric)
            if table is None:
                log.error("probe emitted %s, which is not among its metric specs; dropped", sample.metric)
                continue
            table.put_labelled(name, series, attrs, sample.labels, sample.value)
        snapshots = self._snapshots.get(type(entry.probe))
        if snapshots is not None:
            self._retain(name, snapshots, result)
        request_duration = self._http_request_duration
        request_labels = self._request_labels
        for request in requests:
            key = (
                request.method,
                request.host,
                request.port,
                request.scheme,
                request.status,
                request.protocol_version,
                request.error_type,
            )
            labels = request_labels.get(key)
            if labels is None:
                if len(request_labels) >= _REQUEST_LABELS:
                    request_labels.clear()
                # The semantic convention's attributes only: one series per server, not per check.
                labels = request_labels[key] = {
                    "http.request.method": request.method,
                    "server.address": request.host,
                    "server.port": request.port,
                    "url.scheme": request.scheme,
                }
                if request.status is not None:
                    labels["http.response.status_code"] = request.status
                if request.protocol_version:
                    labels["network.protocol.version"] = request.protocol_version
                if request.error_type:
                    labels["error.type"] = request.error_type
            request_duration.record(None, key, labels, request.duration)

    def _end_span(
        self, span: RunSpan, result: ProbeResult, outcome: Mapping[str, str], message: str, changed: bool
    ) -> None:
        if not span.recording:
            return  # a run the sampler did not sample, or no one reads traces
        span.set_attribute("vantage.result", outcome["result"])
        if changed:
            # Read by the trace sampling (agent/telemetry/sampling.py) when the span ends.
            span.set_attribute(STATE_CHANGED, True)
        span.set_attribute("vantage.duration", result.duration or 0.0)
        for key, attribute in result.attributes.items():
            span.set_attribute(key, self._redact(attribute) if isinstance(attribute, str) else attribute)
        for event in result.events:
            span.add_event(event.name, self._clean(event.attributes))
        for outcome_ in result.assertions:
            if not outcome_.passed:
                span.add_event(
                    "assertion_failed",
                    {
                        "vantage.assertion": self._redact(outcome_.assertion),
                        "vantage.assertion.message": self._redact(outcome_.message),
                    },
                )
        if result.success:
            span.set_status(_OK)
        else:
            assert result.reason is not None
            span.set_attribute("error.type", result.reason.value)
            span.set_status(Status(StatusCode.ERROR, message))
        span.end()

    def _update_state(self, state: CheckState, result: ProbeResult, attempt: int) -> None:
        """Count the attempt in the check's state (``last_change``: the last attempt's result
        went from passing to failing or back, or is the first)."""
        now = self._clock.time()
        previous = state.last
        state.runs += 1
        state.attempts = attempt
        state.last, state.last_time = result, now
        if not result.success:
            state.failures += 1
        if previous is None or previous.success != result.success:
            state.last_change = now

    def _confirm(self, state: CheckState, success: bool) -> bool:
        """Count a run's outcome towards the confirmed state; whether that state changed (its
        first confirmation included, which is not counted as a change).

        ``down`` after ``failure_threshold`` failed runs in a row, ``up`` after
        ``success_threshold`` successful ones; ``pending`` until either."""
        check = state.entry.check
        if success:
            state.consecutive_failures = 0
            state.consecutive_successes += 1
            new = UP if state.consecutive_successes >= check.success_threshold else None
        else:
            state.consecutive_successes = 0
            state.consecutive_failures += 1
            new = DOWN if state.consecutive_failures >= check.failure_threshold else None
        if state.changes is not None:
            self._note_flapping(state, None)
        if new is None or new is state.confirmed:
            return False
        name = check.name
        attrs = self._attrs[name]
        now = self._clock.time()
        first = state.confirmed is PENDING
        state.confirmed, state.confirmed_since = new, now
        self._check_up.set(name, None, attrs, 1.0 if new is UP else 0.0)
        if first:
            # The series start at the first confirmation, from zero: a rule's increase() sees the
            # first change.
            self._state_changes.add(name, None, attrs, 0)
            self._flapping.set(name, None, attrs, 0.0)
        else:
            self._state_changes.add(name, None, attrs, 1)
            self._note_flapping(state, now)
        return True

    def _note_flapping(self, state: CheckState, change: float | None) -> None:
        """Keep the last hour's changes (with ``change``, a new one) and set the flapping gauge."""
        now = self._clock.time()
        changes = state.changes
        if changes is None:
            changes = state.changes = []
        if change is not None:
            changes.append(change)
            if len(changes) > _CHANGES_KEPT:
                del changes[0]
        while changes and changes[0] <= now - _HOUR:
            del changes[0]
        flapping = len(changes) >= state.entry.check.flap_threshold
        if flapping != state.flapping:
            state.flapping = flapping
            name = state.entry.check.name
            self._flapping.set(name, None, self._attrs[name], 1.0 if flapping else 0.0)
            fields = {"check": name, "type": state.entry.check.type, "changes": len(changes)}
            if flapping:
                log.warning(
                    "check %s is flapping: its confirmed state changed %d times in the last hour",
                    name,
                    len(changes),
                    extra=fields,
                )
            else:
                log.info("check %s is no longer flapping", name, extra=fields)

    def _log_run(
        self,
        entry: CheckEntry,
        result: ProbeResult,
        outcome: Mapping[str, str],
        message: str,
        previous: str,
        changed: bool,
        attempt: int,
    ) -> None:
        if not (changed or self._log_runs):
            return  # most runs: no line, so no fields to make
        check = entry.check
        duration = result.duration or 0.0
        fields = {
            "check": check.name,
            "type": check.type,
            "result": outcome["result"],
            "reason": outcome.get("reason", ""),
            "duration": round(duration, 6),
            "detail": message,
            "attempt": attempt,
        }
        # A re-test or a confirmation that took more than one run says so.
        tries = f" (attempt {attempt})" if attempt > 1 else ""
        if changed and not result.success:
            runs = check.failure_threshold
            confirmed = f" ({runs} failed runs in a row)" if runs > 1 else ""
            log.warning(
                "check %s is failing%s: %s: %s%s",
                check.name,
                confirmed,
                outcome["reason"],
                message,
                tries,
                extra=fields,
            )
        elif changed and previous is not PENDING:
            log.info("check %s has recovered%s", check.name, tries, extra=fields)
        elif self._log_runs and result.success:
            log.info("check %s succeeded in %s%s", check.name, format_duration(duration), tries, extra=fields)
        elif self._log_runs:
            log.info(
                "check %s failed in %s: %s: %s%s",
                check.name,
                format_duration(duration),
                outcome["reason"],
                message,
                tries,
                extra=fields,
            )

    def _clean(self, attributes: Mapping[str, AttributeValue]) -> dict[str, AttributeValue]:
        return {k: self._redact(v) if isinstance(v, str) else v for k, v in attributes.items()}

    @staticmethod
    def _retain(check: str, tables: tuple[Table, ...], result: ProbeResult) -> None:
        """Drop from ``tables`` (``snapshot`` metrics) the series of ``check`` that ``result`` did
        not report: the keys are those :meth:`_record_metrics` recorded them by."""
        for table in tables:
            metric = table.spec.name
            keys: set[Hashable] = {
                sample.series if sample.series is not None else tuple(sorted(sample.labels.items()))
                for sample in result.samples
                if sample.metric == metric
            }
            if metric in result.values:
                keys.add(None)
            table.retain(check, keys)

    def _set(self, metric: str, check: str, key: Hashable, attrs: Attributes, value: float) -> None:
        """Record a value of a probe's metric (a counter adds it, a histogram counts it); ``key``
        tells apart the series of a check."""
        table: Table | None = self._tables.tables.get(metric)
        if table is None:
            log.error("probe emitted %s, which is not among its metric specs; dropped", metric)
            return
        table.put(check, key, attrs, value)
