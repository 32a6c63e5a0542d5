"""Traces decided at the end of a run, in front of the export processors.

Every span of a run is recorded (the probe cannot know yet whether the run will fail), but instead
of going to the export processors as it ends, it waits with the other spans of its trace. When the
run's root span ends, last, the whole trace is decided at once:

* kept when the run failed (the root's status is ERROR: a failed or abandoned run);
* kept when the run changed the check's state, which the recorder says by setting
  :data:`STATE_CHANGED` (``vantage.state.changed=True``) on the root before ending it;
* otherwise, a successful run, kept when its trace id falls in ``success_ratio``, decided from the
  trace id exactly as the SDK's ``TraceIdRatioBased`` sampler decides (the low 64 bits of the id
  below ``ratio * 2**64``): the decision can be reproduced from the id the run sent in
  ``traceparent``, and a run kept by the ratio is the same run whichever agent or replica decided.

Kept spans go on to the export processors in the order they ended, the root last; dropped ones are
discarded and counted (:meth:`RunSamplingProcessor.counts`). Encoding and exporting a run's spans
costs far more CPU than buffering them (a list append), so a dropped run saves nearly all of it.

The runs' spans are the recorder's own light ones (agent/telemetry/spans.py), which call
:meth:`RunSamplingProcessor.open_run` and :meth:`RunSamplingProcessor.settle` and build the SDK's
spans only for what is passed on; as a SpanProcessor in the tracer provider it decides the same way
for spans started through the SDK's API.

What this does not change:

* The ids a run sends in ``traceparent`` are its own, whatever is decided later. The sampled flag
  there is set (every run is recorded until it ends), so a target's own trace can point to a run the
  agent then dropped.
* ``OTEL_TRACES_SAMPLER`` still decides at span start, as the SDK documents it; a span it does not
  sample never reaches a span processor, so this decision applies on top of its. The
  ``traceidratio`` samplers look at the same bits of the same id: with both set, a successful run is
  kept when its id is below the smaller of the two ratios (they do not multiply), and a failed run is
  kept only when the sampler had sampled it at its start.
* Spans that belong to no run (no root with :data:`RUN_ROOT` seen starting) pass straight on.

Memory is bounded: at most ``max_traces`` runs and ``max_spans`` spans wait at once; beyond either,
the oldest run waiting is evicted, its spans discarded and counted, and the spans of it that end later
(its root too) are discarded as well. A probe that never ends its root costs one slot until then.
The decisions of the last ``max_traces`` runs are remembered, so a span that ends after its root
follows its run's decision instead of passing on alone.

``on_start`` and ``on_end`` may be called from any thread; a lock guards the buffers, and the export
processors are called outside it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from time import time_ns
from typing import Any, Literal, TypeVar

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import StatusCode

__all__ = ["MAX_SPANS", "MAX_TRACES", "RUN_ROOT", "STATE_CHANGED", "RunSamplingProcessor", "SamplingCounts"]

RUN_ROOT = "vantage.check.name"
"""The attribute that marks a run's root span (``Recorder.start_run`` sets it at the start): a span
with it and no parent opens a run whose spans wait for its decision."""

STATE_CHANGED = "vantage.state.changed"
"""Root span attribute, ``True`` when the run changed its check's confirmed state (its first
confirmation, up to down, down to up: see the recorder); such a run keeps its trace whatever the
ratio. The recorder sets it before it ends the root span."""

MAX_TRACES = 4096
"""Runs waiting at most; the default ``VANTAGE_CONCURRENCY`` (256) runs at once use a few percent."""
MAX_SPANS = 16384
"""Spans waiting at most, over all runs: 8 times the export queue's default (2,048 spans)."""

_LOW_64_BITS = TraceIdRatioBased.TRACE_ID_LIMIT

_Kept = Literal["failed", "changed", "ratio"]
_T = TypeVar("_T")
_S = TypeVar("_S")


@dataclass(frozen=True, slots=True)
class SamplingCounts:
    """What :class:`RunSamplingProcessor` has decided so far (counts since it started), and what
    waits for a decision now."""

    kept_failed: int = 0
    """Runs kept because they failed (root status ERROR)."""
    kept_changed: int = 0
    """Successful runs kept because they changed their check's state."""
    kept_ratio: int = 0
    """Successful runs kept by the ratio."""
    dropped: int = 0
    """Successful runs whose traces were discarded."""
    evicted: int = 0
    """Runs discarded undecided: the buffer was full, or the processor shut down before they ended."""
    spans_kept: int = 0
    spans_dropped: int = 0
    spans_evicted: int = 0
    """Spans of evicted runs, those waiting when evicted and those that ended afterwards."""
    spans_passed: int = 0
    """Spans that belong to no run, passed straight on."""
    waiting_runs: int = 0
    waiting_spans: int = 0

    @property
    def kept(self) -> int:
        """Runs whose traces were kept, for any reason."""
        return self.kept_failed + self.kept_changed + self.kept_ratio


class _Run:
    __slots__ = ("root", "spans")

    def __init__(self, root: int) -> None:
        self.root = root
        self.spans: list[Any] = []  # the SDK's ReadableSpans, or the recorder's own spans


class RunSamplingProcessor(SpanProcessor):
    """Holds each run's spans until its root ends, then passes the whole trace on to ``downstream``
    (the export processors) or discards it; see the module docstring for the rule.

    ``success_ratio`` (0 to 1) is ``VANTAGE_TRACE_SUCCESS_RATIO``: the share of successful runs, not
    state changes, that keep their traces; 1 keeps every run.
    """

    def __init__(
        self,
        downstream: Sequence[SpanProcessor],
        *,
        success_ratio: float,
        max_traces: int = MAX_TRACES,
        max_spans: int = MAX_SPANS,
    ) -> None:
        if not 0.0 <= success_ratio <= 1.0:
            raise ValueError(f"success_ratio must be from 0 to 1, not {success_ratio!r}")
        if max_traces < 1 or max_spans < 1:
            raise ValueError("max_traces and max_spans must be at least 1")
        self._downstream = tuple(downstream)
        self.success_ratio = success_ratio
        # TraceIdRatioBased's own bound: the same ids are kept as that sampler would sample.
        self._bound = TraceIdRatioBased.get_bound_for_rate(success_ratio)
        self._max_traces, self._max_spans = max_traces, max_spans
        self._lock = threading.Lock()
        self._waiting: OrderedDict[int, _Run] = OrderedDict()  # trace id → run, oldest first
        self._waiting_spans = 0
        # The last max_traces decisions, and apart (so that a stream of decisions does not push
        # them out) the last max_traces runs evicted: for the spans that end after them.
        self._decided: OrderedDict[int, bool] = OrderedDict()
        self._gone: OrderedDict[int, None] = OrderedDict()
        self._kept = {"failed": 0, "changed": 0, "ratio": 0}
        self._dropped = self._evicted = 0
        self._spans_kept = self._spans_dropped = self._spans_evicted = self._spans_passed = 0

    def keeps_success(self, trace_id: int) -> bool:
        """Whether a successful run with this trace id, not a state change, keeps its trace."""
        return trace_id & _LOW_64_BITS < self._bound

    @property
    def downstream(self) -> tuple[SpanProcessor, ...]:
        """The export processors that get the kept traces."""
        return self._downstream

    def open_run(self, trace_id: int, root_span_id: int) -> None:
        """A run starts (sampled at its start): its spans wait for its decision from now on."""
        with self._lock:
            self._waiting[trace_id] = _Run(root_span_id)
            while len(self._waiting) > self._max_traces:
                self._evict_oldest()

    def settle(
        self, trace_id: int, span_id: int, span: _S, *, failed: bool = False, changed: bool = False
    ) -> Sequence[_S]:
        """A span of a run has ended: what to pass on now, in order (often nothing).

        The span waits when its run is in progress; the run's root (``span_id`` the root's) decides
        the whole trace from ``failed`` and ``changed``; a span that ends after its run was decided
        follows that decision; a span of no run known passes straight on. The recorder calls this
        with its own spans (agent/telemetry/spans.py), :meth:`on_end` with the SDK's."""
        with self._lock:
            run = self._waiting.get(trace_id)
            if run is not None and span_id != run.root:
                # The hot path: a span of a run in progress.
                run.spans.append(span)
                self._waiting_spans += 1
                while self._waiting_spans > self._max_spans:
                    self._evict_oldest()
                return ()
            if run is None:
                kept = self._decided.get(trace_id)
                if kept is True:
                    self._spans_kept += 1
                elif kept is False:
                    self._spans_dropped += 1
                    return ()
                elif trace_id in self._gone:
                    self._spans_evicted += 1
                    return ()
                else:
                    self._spans_passed += 1
                return (span,)
            del self._waiting[trace_id]
            self._waiting_spans -= len(run.spans)
            run.spans.append(span)
            why = self._decide(trace_id, failed, changed)
            self._remember(self._decided, trace_id, why is not None)
            if why is None:
                self._dropped += 1
                self._spans_dropped += len(run.spans)
                return ()
            self._kept[why] += 1
            self._spans_kept += len(run.spans)
            return run.spans

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if span.parent is None:
            context = span.get_span_context()
            # A span the sampler recorded but did not sample (RECORD_ONLY) is not exported anyway.
            attributes = span.attributes  # a read-only view, empty rather than None
            if context.trace_flags.sampled and attributes is not None and RUN_ROOT in attributes:
                self.open_run(context.trace_id, context.span_id)
        for processor in self._downstream:
            processor.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None:
            self._forward((span,))
            return
        attributes = span.attributes
        spans = self.settle(
            context.trace_id,
            context.span_id,
            span,
            failed=span.status.status_code is StatusCode.ERROR,
            changed=attributes is not None and attributes.get(STATE_CHANGED) is True,
        )
        self._forward(spans)

    def _decide(self, trace_id: int, failed: bool, changed: bool) -> _Kept | None:
        """Why the run keeps its trace, or None to discard it."""
        if failed:
            return "failed"
        if changed:
            return "changed"
        return "ratio" if trace_id & _LOW_64_BITS < self._bound else None

    def _remember(self, memory: OrderedDict[int, _T], trace_id: int, value: _T) -> None:
        memory[trace_id] = value
        if len(memory) > self._max_traces:
            memory.popitem(last=False)

    def _evict_oldest(self) -> None:
        trace_id, run = self._waiting.popitem(last=False)
        self._waiting_spans -= len(run.spans)
        self._evicted += 1
        self._spans_evicted += len(run.spans)
        self._remember(self._gone, trace_id, None)

    def _forward(self, spans: Sequence[ReadableSpan]) -> None:
        for span in spans:
            for processor in self._downstream:
                processor.on_end(span)

    def counts(self) -> SamplingCounts:
        """The decisions so far and what is waiting now."""
        with self._lock:
            return SamplingCounts(
                kept_failed=self._kept["failed"],
                kept_changed=self._kept["changed"],
                kept_ratio=self._kept["ratio"],
                dropped=self._dropped,
                evicted=self._evicted,
                spans_kept=self._spans_kept,
                spans_dropped=self._spans_dropped,
                spans_evicted=self._spans_evicted,
                spans_passed=self._spans_passed,
                waiting_runs=len(self._waiting),
                waiting_spans=self._waiting_spans,
            )

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush the export processors within ``timeout_millis`` in all. Runs still in progress are
        not decided yet and stay waiting."""
        deadline = time_ns() + timeout_millis * 1_000_000
        flushed = True
        for processor in self._downstream:
            left = deadline - time_ns()
            if left <= 0:
                return False
            flushed = processor.force_flush(left // 1_000_000) and flushed
        return flushed

    def shutdown(self) -> None:
        """Discard the runs still waiting (counted as evicted) and shut the export processors down."""
        with self._lock:
            while self._waiting:
                self._evict_oldest()
        for processor in self._downstream:
            processor.shutdown()
