"""A run's spans in the agent's own light form, made into SDK spans only for the runs that are kept.

Starting, filling and ending an SDK span costs tens of microseconds of Python (``Tracer.start_span``,
``Span.__init__``, attribute cleaning on every ``set_attribute``, the sampler, the context), and at
the default ``VANTAGE_TRACE_SUCCESS_RATIO`` nine successful runs in ten are then discarded. So a run
records its spans as plain :class:`RunSpan` objects (name, kind, ids, parent, times, a dict of
attributes, events, status) and the SDK's :class:`~opentelemetry.sdk.trace.ReadableSpan` is built
only for a span that someone will read:

* for the export processors, when the run is kept (:class:`~agent.telemetry.sampling.RunSamplingProcessor`
  decides when its root ends, as it decides for SDK spans), all of its spans in the order they ended;
* for the extra span processors given to ``build_telemetry`` (tests read spans in memory with them),
  every span of every run, as it ends.

What the SDK would do is kept:

* the ids come from the tracer provider's id generator, the trace id once per run and a span id per
  span, and they are the ones sent in ``traceparent`` (injected by the configured propagators,
  ``OTEL_PROPAGATORS``, from the span's context);
* the tracer provider's sampler (``OTEL_TRACES_SAMPLER``) is asked once per run, for its root, with
  no parent: a run it does not sample records nothing, and its ``traceparent`` says not sampled. Its
  children follow the root, as the SDK's parent-based samplers (the default) decide, and as the
  ratio samplers do for spans of the same trace id; its trace state and attributes go to the root;
* the resource, the instrumentation scope, and the span limits (``OTEL_SPAN_*``,
  ``OTEL_ATTRIBUTE_*``) applied at build time with the SDK's own ``SpanLimits`` and
  ``BoundedAttributes``. One difference when a count limit is reached: the SDK moves an attribute
  set twice to the end of its order, this keeps it where it was first set.

With no trace exporter and no extra span processor nothing is recorded or built at all; the ids are
still made, for ``traceparent`` (not sampled).

The recorder's spans belong to one run, which one task drives: they take no lock. The sampling's
buffers, shared by all runs, are guarded by its own lock.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from time import time_ns
from typing import Any

from opentelemetry import baggage, propagate, trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, SpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import Decision, Sampler
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import AttributeValue

from agent.telemetry.sampling import STATE_CHANGED, RunSamplingProcessor

__all__ = ["RunSpan", "RunSpans"]

_UNSET = Status(StatusCode.UNSET)
_OK = Status(StatusCode.OK)
_SAMPLED = TraceFlags.SAMPLED
_RANDOM = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)


class RunSpan:
    """One span of a run, as the agent records it: plain data until it is built.

    Every text it is given must already be redacted (the recorder's handle does it)."""

    __slots__ = (
        "_built",
        "_owner",
        "attributes",
        "end_time",
        "events",
        "flags",
        "kind",
        "name",
        "parent",
        "span_id",
        "start_time",
        "status",
        "trace_id",
        "trace_state",
    )

    def __init__(
        self,
        owner: RunSpans | None,
        name: str,
        kind: SpanKind,
        trace_id: int,
        span_id: int,
        parent: RunSpan | None,
        flags: int,
        trace_state: TraceState | None,
        attributes: dict[str, AttributeValue],
        start_time: int,
    ) -> None:
        self._owner = owner  # None: not recorded (the run was not sampled)
        self.name, self.kind = name, kind
        self.trace_id, self.span_id, self.parent = trace_id, span_id, parent
        self.flags, self.trace_state = flags, trace_state
        self.attributes = attributes
        self.events: list[tuple[str, Mapping[str, AttributeValue], int]] = []
        self.status = _UNSET
        self.start_time, self.end_time = start_time, 0
        self._built: ReadableSpan | None = None

    @property
    def recording(self) -> bool:
        """Whether what is set on the span is kept: the run was sampled and the span not ended."""
        return self._owner is not None and not self.end_time

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self._owner is not None and not self.end_time:
            self.attributes[key] = value

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue]) -> None:
        if self._owner is not None and not self.end_time:
            self.events.append((name, attributes, time_ns()))

    def set_status(self, status: Status) -> None:
        """As the SDK does: OK is final, and UNSET changes nothing."""
        if (
            self._owner is not None
            and not self.end_time
            and self.status.status_code is not StatusCode.OK
            and status.status_code is not StatusCode.UNSET
        ):
            self.status = status

    def context(self) -> SpanContext:
        return SpanContext(
            self.trace_id,
            self.span_id,
            is_remote=False,
            trace_flags=TraceFlags(self.flags),
            trace_state=self.trace_state,
        )

    def inject(self, headers: MutableMapping[str, str]) -> None:
        """W3C trace context (or what ``OTEL_PROPAGATORS`` asks for) of this span into ``headers``."""
        if _w3c_only(propagate.get_global_textmap()) and not baggage.get_all():
            # What the default propagators write, written here: a context, a span and the
            # composite's round cost ~6 µs a request (see _w3c_only).
            headers["traceparent"] = f"00-{self.trace_id:032x}-{self.span_id:016x}-{self.flags:02x}"
            if self.trace_state:
                headers["tracestate"] = self.trace_state.to_header()
            return
        propagate.inject(headers, context=trace.set_span_in_context(NonRecordingSpan(self.context())))

    def end(self, end_time: int | None = None) -> None:
        owner = self._owner
        if owner is None or self.end_time:
            return
        self.end_time = end_time or time_ns()
        owner.ended(self)


_calibrated: tuple[TextMapPropagator, bool] | None = None


def _w3c_only(textmap: TextMapPropagator) -> bool:
    """Whether ``textmap`` (the global propagator) writes a span's W3C ``traceparent`` and
    ``tracestate`` and nothing else when the context holds no baggage: the default
    (``tracecontext,baggage``) does. Found out once per propagator, by asking it to inject a known
    span; any other answer (``b3``, a custom propagator) keeps the propagator doing the writing."""
    global _calibrated
    if _calibrated is not None and _calibrated[0] is textmap:
        return _calibrated[1]
    known = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        is_remote=False,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vantage", "calibration")]),
    )
    written: dict[str, str] = {}
    try:
        textmap.inject(written, context=trace.set_span_in_context(NonRecordingSpan(known), Context()))
    except Exception:  # a propagator that cannot: it is left to fail where it is used, as before
        written = {}
    same = written == {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "vantage=calibration",
    }
    _calibrated = (textmap, same)
    return same


class RunSpans:
    """The agent's tracer for runs: makes :class:`RunSpan` objects and, when they end, builds the
    SDK's spans for those that someone reads (see the module docstring)."""

    def __init__(
        self,
        *,
        sampler: Sampler,
        id_generator: IdGenerator,
        resource: Resource,
        scope: InstrumentationScope,
        limits: SpanLimits,
        sampling: RunSamplingProcessor | None = None,
        extras: Sequence[SpanProcessor] = (),
    ) -> None:
        self._sampler, self._ids = sampler, id_generator
        self._resource, self._scope, self._limits = resource, scope, limits
        self._sampling, self._extras = sampling, tuple(extras)
        self.recording = sampling is not None or bool(self._extras)
        """Whether runs are recorded at all: with no reader, only ids are made, for traceparent."""
        self._random = _RANDOM if id_generator.is_trace_id_random() else 0

    def start_run(self, name: str, attributes: dict[str, AttributeValue]) -> RunSpan:
        """The root span of a new trace (``attributes`` redacted already); the sampler decides here."""
        trace_id = self._ids.generate_trace_id()
        span_id = self._ids.generate_span_id()
        if not self.recording:
            return RunSpan(None, name, SpanKind.INTERNAL, trace_id, span_id, None, self._random, None, {}, 0)
        result = self._sampler.should_sample(None, trace_id, name, SpanKind.INTERNAL, attributes)
        if result.decision is not Decision.RECORD_AND_SAMPLE:
            # RECORD_ONLY spans are never exported: not worth recording either.
            flags, state = self._random, result.trace_state
            return RunSpan(None, name, SpanKind.INTERNAL, trace_id, span_id, None, flags, state, {}, 0)
        if result.attributes:
            attributes = {**attributes, **result.attributes}
        if self._sampling is not None:
            self._sampling.open_run(trace_id, span_id)
        return RunSpan(
            self,
            name,
            SpanKind.INTERNAL,
            trace_id,
            span_id,
            None,
            _SAMPLED | self._random,
            result.trace_state,
            attributes,
            time_ns(),
        )

    def start_span(
        self,
        parent: RunSpan,
        name: str,
        kind: SpanKind,
        attributes: dict[str, AttributeValue],
        start_time: int | None = None,
    ) -> RunSpan:
        """A child of ``parent``, recorded when its run is."""
        span_id = self._ids.generate_span_id()
        owner = self if parent._owner is not None else None
        return RunSpan(
            owner,
            name,
            kind,
            parent.trace_id,
            span_id,
            parent,
            parent.flags,
            parent.trace_state,
            attributes if owner is not None else {},
            (start_time or time_ns()) if owner is not None else 0,
        )

    def ended(self, span: RunSpan) -> None:
        """Called by :meth:`RunSpan.end`: hand the span to the extra processors, and to the
        sampling, which may pass a whole trace on to the export processors."""
        for processor in self._extras:
            processor.on_end(self._build(span))
        sampling = self._sampling
        if sampling is None:
            return
        if span.parent is None:
            failed = span.status.status_code is StatusCode.ERROR
            changed = span.attributes.get(STATE_CHANGED) is True
            kept = sampling.settle(span.trace_id, span.span_id, span, failed=failed, changed=changed)
        else:
            kept = sampling.settle(span.trace_id, span.span_id, span)
        if kept:
            downstream = sampling.downstream
            for each in kept:
                built = self._build(each)
                for processor in downstream:
                    processor.on_end(built)

    def _build(self, span: RunSpan) -> ReadableSpan:
        built = span._built
        if built is not None:
            return built
        limits = self._limits
        events: Any = BoundedList(limits.max_events)
        for name, attributes, timestamp in span.events:
            events.append(
                Event(
                    name,
                    BoundedAttributes(
                        limits.max_event_attributes,
                        attributes,
                        immutable=True,
                        max_value_len=limits.max_attribute_length,
                    ),
                    timestamp,
                )
            )
        parent = span.parent
        built = span._built = ReadableSpan(
            span.name,
            context=span.context(),
            parent=parent.context() if parent is not None else None,
            resource=self._resource,
            attributes=BoundedAttributes(
                limits.max_span_attributes,
                span.attributes,
                immutable=True,
                max_value_len=limits.max_span_attribute_length,
            ),
            events=events,
            kind=span.kind,
            status=span.status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=self._scope,
        )
        return built
