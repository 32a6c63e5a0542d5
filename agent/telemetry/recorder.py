"""The Recorder: the only place where probe results become spans, metric points and log lines."""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Hashable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

from agent.config.checks import CheckEntry
from agent.config.secrets import Redactor
from agent.net.http import RequestRecord
from agent.sdk.durations import format_duration
from agent.sdk.probe import AttributeValue, Clock, MetricKind, MetricSpec, ProbeResult, SpanHandle
from agent.sdk.urls import redact_url
from agent.telemetry.providers import ExportStats

__all__ = ["CORE_METRICS", "CheckState", "Recorder", "Run"]

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
    "Runs by outcome and failure reason",
    ("result", "reason"),
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
CORE_METRICS = (SUCCESS, DURATION, ALL_DURATIONS, RUNS, HTTP_REQUEST_DURATION)

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

_current_span: contextvars.ContextVar[trace.Span | None] = contextvars.ContextVar(
    "vantage_span", default=None
)


class _Span:
    """A SpanHandle backed by an OpenTelemetry span; every text it is given is redacted."""

    __slots__ = ("_redact", "_span")

    def __init__(self, span: trace.Span, redact: Redactor) -> None:
        self._span, self._redact = span, redact

    def _clean(self, attributes: Mapping[str, AttributeValue]) -> dict[str, AttributeValue]:
        return {k: self._redact(v) if isinstance(v, str) else v for k, v in attributes.items()}

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, self._redact(value) if isinstance(value, str) else value)

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        self._span.add_event(name, self._clean(attributes or {}))

    def fail(self, error_type: str, message: str) -> None:
        self._span.set_attribute("error.type", error_type)
        self._span.set_status(Status(StatusCode.ERROR, self._redact(message)))

    def inject(self, headers: MutableMapping[str, str]) -> None:
        propagate.inject(headers, context=trace.set_span_in_context(self._span))

    def end(self, end_time: float | None = None) -> None:
        self._span.end(None if end_time is None else int(end_time * 1e9))


class _RunTracer:
    """The Tracer of one run: child spans hang under the innermost span in use."""

    def __init__(self, tracer: trace.Tracer, root: trace.Span, redact: Redactor) -> None:
        self._tracer, self._root, self._redact = tracer, root, redact

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
        span = self._tracer.start_span(
            name,
            context=trace.set_span_in_context(parent),
            kind=SpanKind.CLIENT if client else SpanKind.INTERNAL,
            attributes={k: redact(v) if isinstance(v, str) else v for k, v in (attributes or {}).items()},
            start_time=None if start_time is None else int(start_time * 1e9),
        )
        return _Span(span, redact)

    @contextlib.contextmanager
    def use_span(self, span: SpanHandle) -> Iterator[None]:
        token = _current_span.set(span._span if isinstance(span, _Span) else None)
        try:
            yield
        finally:
            _current_span.reset(token)


@dataclass
class CheckState:
    """What the status API shows of one check."""

    entry: CheckEntry
    target: str
    runs: int = 0
    failures: int = 0
    skipped: int = 0
    consecutive_failures: int = 0
    last: ProbeResult | None = None
    last_time: float | None = None
    last_change: float | None = None

    def as_json(self, redact: Redactor) -> dict[str, Any]:
        check = self.entry.check
        last = None
        if self.last is not None:
            result = self.last
            last = {
                "success": result.success,
                "reason": result.reason.value if result.reason else None,
                "message": redact(result.message),
                "duration": result.duration,
                "time": self.last_time,
                "phases": dict(result.phases),
                "values": dict(result.values),
                "assertions": [
                    {
                        "assertion": redact(a.assertion),
                        "passed": a.passed,
                        "actual": redact(a.actual),
                        "message": redact(a.message),
                    }
                    for a in result.assertions
                ],
                "steps": [
                    {
                        "name": s.name,
                        "success": s.success,
                        "duration": s.duration,
                        "reason": s.reason.value if s.reason else None,
                        "message": redact(s.message),
                    }
                    for s in result.steps
                ],
            }
        return {
            "name": check.name,
            "type": check.type,
            "target": self.target,
            "interval": check.interval,
            "timeout": check.timeout,
            "labels": redact.deep(check.labels),
            "runs": self.runs,
            "failures": self.failures,
            "skipped": self.skipped,
            "consecutive_failures": self.consecutive_failures,
            "last_change": self.last_change,
            "last": last,
        }


@dataclass
class Run:
    """One run in progress: its root span and the tracer its probe uses."""

    state: CheckState
    span: trace.Span
    tracer: _RunTracer
    attributes: dict[str, AttributeValue] = field(default_factory=dict)


# Tables of the agent as a whole, not keyed by check name.
_AGENT_WIDE = frozenset({INBOUND.name, LOOP_LAG.name})


class Recorder:
    """Turns runs into telemetry, keeps each check's last state and logs state changes."""

    def __init__(
        self,
        *,
        meter: Meter,
        tracer: trace.Tracer,
        redactor: Redactor,
        region: str,
        clock: Clock,
        log_runs: bool = False,
        export_stats: ExportStats | None = None,
    ) -> None:
        self._meter, self._tracer, self._redact = meter, tracer, redactor
        self.region, self._clock, self._log_runs = region, clock, log_runs
        self._instruments: dict[str, tuple[MetricSpec, Any]] = {}
        self._attrs: dict[str, dict[str, AttributeValue]] = {}
        self.states: dict[str, CheckState] = {}
        self.in_flight = 0
        self._export_stats = export_stats or ExportStats()
        # Handles to the agent's own instruments: the hot path records through them, not by name.
        self._success = self._instrument(SUCCESS)
        self._duration = self._instrument(DURATION)
        self._all_durations = self._instrument(ALL_DURATIONS)
        self._runs = self._instrument(RUNS)
        self._http_request_duration = self._instrument(HTTP_REQUEST_DURATION)
        self._lateness = self._instrument(LATENESS)
        self._skipped = self._instrument(SKIPPED)
        self._loop_lag = self._instrument(LOOP_LAG)
        self._inbound = self._instrument(INBOUND)
        # Observed at collection time from what the agent already counts.
        observed = (
            (IN_FLIGHT, meter.create_observable_gauge, self._observe_in_flight),
            (CHECKS, meter.create_observable_gauge, self._observe_checks),
            (EXPORT_FAILURES, meter.create_observable_counter, self._observe_export_failures),
            (SPANS_DROPPED, meter.create_observable_counter, self._observe_spans_dropped),
        )
        for spec, create, callback in observed:
            create(spec.name, [callback], spec.unit, spec.description)

    def _instrument(self, spec: MetricSpec) -> Any:
        known = self._instruments.get(spec.name)
        if known is not None:
            return known[1]
        meter = self._meter
        if spec.kind in (MetricKind.GAUGE, MetricKind.COUNTER):
            # Gauges (last values) and counters (running totals) are observed at collection time
            # from a table the runs update: a dict write per run instead of an SDK measurement,
            # which costs tens of microseconds each.
            table: dict[Hashable, tuple[Mapping[str, AttributeValue], float]] = {}

            def observe(_: CallbackOptions, table: dict[Hashable, Any] = table) -> list[Observation]:
                return [Observation(value, attrs) for attrs, value in list(table.values())]

            create = (
                meter.create_observable_gauge
                if spec.kind is MetricKind.GAUGE
                else meter.create_observable_counter
            )
            create(spec.name, [observe], spec.unit, spec.description)
            instrument: Any = table
        else:
            instrument = meter.create_histogram(
                spec.name,
                spec.unit,
                spec.description,
                explicit_bucket_boundaries_advisory=list(spec.buckets) if spec.buckets else None,
            )
        self._instruments[spec.name] = (spec, instrument)
        return instrument

    def register(self, entries: Sequence[CheckEntry]) -> None:
        """Prepare the instruments and label sets of the checks this agent runs."""
        for entry in entries:
            for spec in entry.probe.metrics:
                self._instrument(spec)
            check = entry.check
            target = redact_url(check.target, self._redact)
            self._attrs[check.name] = {
                **{k: self._redact(v) for k, v in check.labels.items()},
                "check": check.name,
                "type": check.type,
                "target": target,
                "region": self.region,
            }
            self.states[check.name] = CheckState(entry, target)

    def forget(self, name: str) -> None:
        """Drop a removed check: its state, its labels and its series in the metric tables that
        the recorder keeps (the SDK's histograms keep theirs; the engine's own tables will not)."""
        self.states.pop(name, None)
        self._attrs.pop(name, None)
        for spec, table in self._instruments.values():
            if spec.kind is MetricKind.HISTOGRAM or spec.name in _AGENT_WIDE:
                continue
            for slot in [slot for slot in table if isinstance(slot, tuple) and slot[:1] == (name,)]:
                del table[slot]

    def _observe_in_flight(self, _: CallbackOptions) -> list[Observation]:
        return [Observation(self.in_flight)]

    def _observe_checks(self, _: CallbackOptions) -> list[Observation]:
        return [Observation(len(self.states))]

    def _observe_export_failures(self, _: CallbackOptions) -> list[Observation]:
        failed = self._export_stats.failed
        return [Observation(failed.get(signal, 0), {"signal": signal}) for signal in ("traces", "metrics")]

    def _observe_spans_dropped(self, _: CallbackOptions) -> list[Observation]:
        return [Observation(self._export_stats.dropped.get("traces", 0))]

    def loop_lag(self, seconds: float) -> None:
        """The scheduler's measure of how starved the event loop is."""
        self._loop_lag[None] = ({}, seconds)

    def lateness(self, seconds: float) -> None:
        self._lateness.record(max(0.0, seconds))

    def skipped(self, entry: CheckEntry, cause: str) -> None:
        """A tick that did not run; see the scheduler's timeline for why."""
        state = self.states[entry.check.name]
        state.skipped += 1
        attrs = {**self._attrs[entry.check.name], "cause": cause}
        self._put(SKIPPED, self._skipped, 1, attrs, cause)

    def inbound(self, endpoint: str, outcome: str) -> None:
        """Count a request to ``/hooks`` or ``/heartbeat`` by what became of it."""
        previous = self._inbound.get((endpoint, outcome))
        self._inbound[(endpoint, outcome)] = (
            {"endpoint": endpoint, "outcome": outcome},
            (previous[1] if previous else 0.0) + 1,
        )

    def start_run(self, entry: CheckEntry) -> Run:
        """Open the root span of a run."""
        check = entry.check
        attrs = self._attrs[check.name]
        span = self._tracer.start_span(
            f"check {check.name}",
            context=trace.set_span_in_context(trace.INVALID_SPAN),
            kind=SpanKind.INTERNAL,
            attributes={
                "vantage.check.name": check.name,
                "vantage.check.type": check.type,
                "vantage.check.target": attrs["target"],
                "cloud.region": self.region,
                **{f"vantage.check.label.{k}": attrs[k] for k in check.labels},
            },
        )
        self.in_flight += 1
        return Run(self.states[check.name], span, _RunTracer(self._tracer, span, self._redact))

    def abandon_run(self, run: Run, why: str) -> None:
        """End a run that was cancelled before it had a result; it records no metric points."""
        self.in_flight -= 1
        run.span.set_status(Status(StatusCode.ERROR, why))
        run.span.end()

    def finish_run(self, run: Run, result: ProbeResult, requests: Sequence[RequestRecord] = ()) -> None:
        """Record a run's result, in this order: metric points, the root span's attributes and
        status, the check's state, and a log line when the state changed."""
        self.in_flight -= 1
        state = run.state
        outcome = {"result": "success" if result.success else "failure"}
        if result.reason is not None:
            outcome["reason"] = result.reason.value
        message = self._redact(result.message)
        self._record_metrics(state.entry, result, outcome, requests)
        self._end_span(run.span, result, outcome, message)
        previous = state.last
        changed = self._update_state(state, result)
        self._log_run(state.entry, result, outcome, message, previous, changed)

    def _record_metrics(
        self,
        entry: CheckEntry,
        result: ProbeResult,
        outcome: Mapping[str, str],
        requests: Sequence[RequestRecord],
    ) -> None:
        attrs = self._attrs[entry.check.name]
        duration = result.duration or 0.0
        self._put(SUCCESS, self._success, 1.0 if result.success else 0.0, attrs)
        self._put(DURATION, self._duration, duration, attrs)
        self._all_durations.record(duration, attrs)
        self._put(RUNS, self._runs, 1, {**attrs, **outcome}, (outcome["result"], result.reason))
        phase_metric = entry.probe.phase_metric
        if phase_metric and result.phases:
            for phase, seconds in result.phases.items():
                self._set(phase_metric, seconds, {**attrs, "phase": phase}, phase)
        for name, value in result.values.items():
            self._set(name, value, attrs)
        for sample in result.samples:
            # One series per label set, unless the sample names its series (see Sample.series).
            series = sample.series if sample.series is not None else tuple(sorted(sample.labels.items()))
            self._set(sample.metric, sample.value, {**attrs, **sample.labels}, series)
        request_duration = self._http_request_duration
        for request in requests:
            # The semantic convention's attributes only: one series per server, not per check.
            labels: dict[str, AttributeValue] = {
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
            request_duration.record(request.duration, labels)

    def _end_span(
        self, span: trace.Span, result: ProbeResult, outcome: Mapping[str, str], message: str
    ) -> None:
        span.set_attribute("vantage.result", outcome["result"])
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
            span.set_status(Status(StatusCode.OK))
        else:
            assert result.reason is not None
            span.set_attribute("error.type", result.reason.value)
            span.set_status(Status(StatusCode.ERROR, message))
        span.end()

    def _update_state(self, state: CheckState, result: ProbeResult) -> bool:
        """Count the run in the check's state; whether it went from passing to failing or back
        (or is the first)."""
        now = self._clock.time()
        previous = state.last
        state.runs += 1
        state.last, state.last_time = result, now
        if result.success:
            state.consecutive_failures = 0
        else:
            state.failures += 1
            state.consecutive_failures += 1
        changed = previous is None or previous.success != result.success
        if changed:
            state.last_change = now
        return changed

    def _log_run(
        self,
        entry: CheckEntry,
        result: ProbeResult,
        outcome: Mapping[str, str],
        message: str,
        previous: ProbeResult | None,
        changed: bool,
    ) -> None:
        check = entry.check
        duration = result.duration or 0.0
        fields = {
            "check": check.name,
            "type": check.type,
            "result": outcome["result"],
            "reason": outcome.get("reason", ""),
            "duration": round(duration, 6),
            "detail": message,
        }
        if changed and not result.success:
            log.warning("check %s is failing: %s: %s", check.name, outcome["reason"], message, extra=fields)
        elif changed and previous is not None:
            log.info("check %s has recovered", check.name, extra=fields)
        elif self._log_runs:
            log.info(
                "check %s %s%s in %s",
                check.name,
                outcome["result"],
                f" ({outcome['reason']}: {message})" if not result.success else "",
                format_duration(duration),
                extra=fields,
            )

    def _clean(self, attributes: Mapping[str, AttributeValue]) -> dict[str, AttributeValue]:
        return {k: self._redact(v) if isinstance(v, str) else v for k, v in attributes.items()}

    def _set(
        self, name: str, value: float, attrs: Mapping[str, AttributeValue], key: Hashable = None
    ) -> None:
        """Record a value of a metric (a counter adds it); ``key`` tells apart the series of a check."""
        known = self._instruments.get(name)
        if known is None:
            log.error("probe emitted %s, which is not among its metric specs; dropped", name)
            return
        self._put(*known, value, attrs, key)

    @staticmethod
    def _put(
        spec: MetricSpec,
        instrument: Any,
        value: float,
        attrs: Mapping[str, AttributeValue],
        key: Hashable = None,
    ) -> None:
        """Record a value through an instrument's handle: a gauge's table keeps it, a counter's adds it."""
        if spec.kind is MetricKind.GAUGE:
            instrument[(attrs["check"], key)] = (attrs, value)
        elif spec.kind is MetricKind.COUNTER:
            slot = (attrs["check"], key)
            previous = instrument.get(slot)
            instrument[slot] = (attrs, value + (previous[1] if previous else 0.0))
        else:
            instrument.record(value, attrs)
