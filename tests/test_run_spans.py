"""A run's spans in the agent's light form (agent/telemetry/spans.py): built as the SDK's spans only
for who reads them, with the SDK's ids, sampler, propagators, resource, scope and limits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import propagate
from opentelemetry.baggage import set_baggage
from opentelemetry.context import Context, attach, detach
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanKind,
    Status,
    StatusCode,
    get_current_span,
    set_span_in_context,
)
from opentelemetry.trace.span import TraceState

from agent.app import build_agent
from agent.telemetry.sampling import STATE_CHANGED, RunSamplingProcessor
from agent.telemetry.spans import RunSpan, RunSpans

from .helpers import config_from
from .test_trace_sampling import SeededIds

ROOT = {"vantage.check.name": "x", "vantage.check.type": "http"}


class Spans:
    """RunSpans in front of a sampling (ratio 0) and an in-memory exporter, with an extra
    processor beside them."""

    def __init__(
        self,
        *,
        ratio: float = 0.0,
        sampler: Sampler = ALWAYS_ON,
        extras: bool = False,
        exporting: bool = True,
        limits: SpanLimits | None = None,
    ) -> None:
        self.exported, self.extra = InMemorySpanExporter(), InMemorySpanExporter()
        self.sampling = (
            RunSamplingProcessor([SimpleSpanProcessor(self.exported)], success_ratio=ratio)
            if exporting
            else None
        )
        self.spans = RunSpans(
            sampler=sampler,
            id_generator=SeededIds(4),
            resource=Resource.create({"service.name": "spans-test"}),
            scope=InstrumentationScope("vantage", "9.9"),
            limits=limits or SpanLimits(),
            sampling=self.sampling,
            extras=[SimpleSpanProcessor(self.extra)] if extras else [],
        )

    def run(self, *, failed: bool = False, changed: bool = False) -> tuple[RunSpan, RunSpan]:
        root = self.spans.start_run("check x", dict(ROOT))
        child = self.spans.start_span(root, "GET", SpanKind.CLIENT, {"http.request.method": "GET"})
        child.end()
        if changed:
            root.set_attribute(STATE_CHANGED, True)
        root.set_status(Status(StatusCode.ERROR, "HTTP 500") if failed else Status(StatusCode.OK))
        root.end()
        return root, child

    def names(self, exporter: InMemorySpanExporter | None = None) -> list[str]:
        return [span.name for span in (exporter or self.exported).get_finished_spans()]


def traceparent(span: RunSpan) -> list[str]:
    headers: dict[str, str] = {}
    span.inject(headers)
    return headers["traceparent"].split("-")


def test_a_kept_run_is_built_as_the_sdk_would_build_it() -> None:
    spans = Spans()
    root, child = spans.run(failed=True)
    built = list(spans.exported.get_finished_spans())
    assert [span.name for span in built] == ["GET", "check x"]  # in the order they ended
    client, top = built
    assert top.parent is None and client.parent is not None
    assert client.parent.span_id == top.context.span_id == root.span_id
    assert client.context.trace_id == top.context.trace_id == root.trace_id
    assert client.context.span_id == child.span_id
    assert (client.kind, top.kind) == (SpanKind.CLIENT, SpanKind.INTERNAL)
    assert top.status.status_code is StatusCode.ERROR and top.status.description == "HTTP 500"
    assert client.status.status_code is StatusCode.UNSET
    assert dict(top.attributes or {}) == ROOT
    assert top.resource.attributes["service.name"] == "spans-test"
    assert top.instrumentation_scope == InstrumentationScope("vantage", "9.9")
    assert top.context.trace_flags.sampled and not top.context.is_remote
    assert top.start_time is not None and top.end_time is not None and top.start_time <= top.end_time
    # The ids sent in traceparent are the built spans' ids.
    _, trace_id, span_id, flags = traceparent(child)
    assert (int(trace_id, 16), int(span_id, 16)) == (client.context.trace_id, client.context.span_id)
    assert int(flags, 16) & 1


def test_a_dropped_run_builds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    spans = Spans(ratio=0.0)
    built: list[RunSpan] = []
    build = RunSpans._build

    def counting(self: RunSpans, span: RunSpan) -> ReadableSpan:
        built.append(span)
        return build(self, span)

    monkeypatch.setattr(RunSpans, "_build", counting)
    for _ in range(10):
        spans.run()
    assert built == [] and spans.names() == []
    assert spans.sampling is not None
    counts = spans.sampling.counts()
    assert (counts.dropped, counts.spans_dropped, counts.waiting_runs) == (10, 20, 0)
    # A state change is kept whatever the ratio; a failure too.
    spans.run(changed=True)
    spans.run(failed=True)
    assert spans.names() == ["GET", "check x"] * 2
    assert len(built) == 4


def test_extra_processors_see_every_span_of_every_run() -> None:
    spans = Spans(ratio=0.0, extras=True)
    for _ in range(5):
        spans.run()
    assert spans.names(spans.extra) == ["GET", "check x"] * 5
    assert spans.names() == []
    # With no exporter at all the extra ones still see them all.
    alone = Spans(extras=True, exporting=False)
    alone.run()
    assert alone.names(alone.extra) == ["GET", "check x"]


def test_with_no_reader_nothing_is_recorded_but_ids_travel() -> None:
    spans = Spans(exporting=False)
    assert not spans.spans.recording
    root, child = spans.run(failed=True)
    assert not root.recording and not child.recording and root.attributes == {}
    _, trace_id, span_id, flags = traceparent(child)
    assert int(trace_id, 16) == root.trace_id and int(span_id, 16) == child.span_id != root.span_id
    assert not int(flags, 16) & 1  # not sampled, as the SDK's ALWAYS_OFF says


def test_the_sampler_decides_once_at_the_start_of_the_run() -> None:
    calls: list[tuple[Any, ...]] = []

    class Counting(Sampler):
        def __init__(self, inner: Sampler) -> None:
            self._inner = inner

        def should_sample(self, *args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            return self._inner.should_sample(*args, **kwargs)

        def get_description(self) -> str:
            return "counting"

    off = Spans(ratio=1.0, sampler=Counting(ALWAYS_OFF), extras=True)
    _, child = off.run(failed=True)
    assert len(calls) == 1 and calls[0][0] is None  # the root, with no parent
    assert off.names() == off.names(off.extra) == []
    assert not int(traceparent(child)[3], 16) & 1
    assert off.sampling is not None and off.sampling.counts().kept == 0

    # OTEL_TRACES_SAMPLER=traceidratio: the runs it samples are recorded, and kept at ratio 1.
    half = Spans(ratio=1.0, sampler=TraceIdRatioBased(0.5))
    roots = [half.run()[0] for _ in range(100)]
    sampled = {
        r.trace_id
        for r in roots
        if r.trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < TraceIdRatioBased(0.5).bound
    }
    assert {s.context.trace_id for s in half.exported.get_finished_spans()} == sampled
    assert 25 < len(sampled) < 75
    assert all((int(traceparent(r)[3], 16) & 1) == (r.trace_id in sampled) for r in roots)


def test_span_limits_apply_when_built() -> None:
    limits = SpanLimits(max_span_attributes=3, max_span_attribute_length=4, max_events=2)
    spans = Spans(ratio=1.0, limits=limits)
    root = spans.spans.start_run("check x", {"a": "123456", "b": 1})
    root.set_attribute("c", "x")
    root.set_attribute("d", "y")  # the fourth: the first goes, as in the SDK
    for n in range(3):
        root.add_event(f"e{n}", {"long": "abcdefgh"})
    root.end()
    (built,) = spans.exported.get_finished_spans()
    assert dict(built.attributes or {}) == {"b": 1, "c": "x", "d": "y"}
    assert built.dropped_attributes == 1
    assert [event.name for event in built.events] == ["e1", "e2"] and built.dropped_events == 1


def test_a_span_that_ends_after_its_root_follows_the_decision() -> None:
    spans = Spans(ratio=0.0)
    for failed in (True, False):
        root = spans.spans.start_run("check x", dict(ROOT))
        late = spans.spans.start_span(root, f"late {failed}", SpanKind.INTERNAL, {})
        root.set_status(Status(StatusCode.ERROR, "x") if failed else Status(StatusCode.OK))
        root.end()
        late.end()
    assert spans.names() == ["check x", "late True"]


def test_what_is_set_after_the_end_is_ignored_and_ok_is_final() -> None:
    spans = Spans(ratio=1.0)
    root = spans.spans.start_run("check x", dict(ROOT))
    root.set_status(Status(StatusCode.OK))
    root.set_status(Status(StatusCode.ERROR, "late"))
    root.end()
    root.set_attribute("after", 1)
    root.end()  # twice: once
    (built,) = spans.exported.get_finished_spans()
    assert built.status.status_code is StatusCode.OK and "after" not in (built.attributes or {})


class _Custom(TextMapPropagator):
    """A propagator of its own header: what OTEL_PROPAGATORS would install."""

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        span = get_current_span(context).get_span_context()
        setter.set(carrier, "x-custom-trace", f"{span.trace_id:032x}:{span.span_id:016x}")

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        return context or Context()

    @property
    def fields(self) -> set[str]:
        return {"x-custom-trace"}


@pytest.fixture
def custom_propagator() -> Iterator[None]:
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(_Custom())
    try:
        yield
    finally:
        propagate.set_global_textmap(before)


def test_the_configured_propagators_inject(custom_propagator: None) -> None:
    spans = Spans()
    root = spans.spans.start_run("check x", dict(ROOT))
    headers: dict[str, str] = {}
    root.inject(headers)
    assert headers == {"x-custom-trace": f"{root.trace_id:032x}:{root.span_id:016x}"}


def _as_the_propagator_writes(span: RunSpan) -> dict[str, str]:
    headers: dict[str, str] = {}
    propagate.inject(headers, context=set_span_in_context(NonRecordingSpan(span.context())))
    return headers


@pytest.mark.parametrize("state", [None, TraceState([("vendor", "a1"), ("other", "b2")])])
def test_the_default_propagators_written_directly_write_the_same(state: TraceState | None) -> None:
    """With the default propagators (tracecontext, baggage) a span writes its traceparent itself
    (cheaper than the composite's round): the headers are the propagators' own, tracestate too."""
    root = RunSpan(
        None,
        "r",
        SpanKind.INTERNAL,
        0x5BD66EF5095369C7B0D1F8F4BD33716A,
        0x1E42C2B2C3B4D5E6,
        None,
        1,
        state,
        {},
        0,
    )
    for flags in (0, 1):
        root.flags = flags
        headers: dict[str, str] = {}
        root.inject(headers)
        assert headers == _as_the_propagator_writes(root)
        assert headers["traceparent"] == f"00-5bd66ef5095369c7b0d1f8f4bd33716a-1e42c2b2c3b4d5e6-0{flags}"
        assert ("tracestate" in headers) is (state is not None)


def test_baggage_in_the_context_is_still_propagated() -> None:
    root = Spans().spans.start_run("check x", dict(ROOT))
    token = attach(set_baggage("tenant", "blue"))
    try:
        headers: dict[str, str] = {}
        root.inject(headers)
        assert headers == _as_the_propagator_writes(root)
        assert headers["baggage"] == "tenant=blue"
    finally:
        detach(token)


@pytest.mark.anyio
async def test_the_agent_builds_its_spans_with_its_resource_and_scope() -> None:
    memory = InMemorySpanExporter()
    checks = [{"name": "gone", "type": "tcp", "target": "127.0.0.1:1", "interval": "10s"}]
    agent = build_agent(
        config_from(checks), {"OTEL_TRACES_EXPORTER": "none"}, span_processors=[SimpleSpanProcessor(memory)]
    )
    try:
        await agent.scheduler.run_once()
    finally:
        await agent.http.aclose()
        agent.telemetry.shutdown(2)
    (root,) = [s for s in memory.get_finished_spans() if s.parent is None]
    assert root.resource is agent.telemetry.resource
    assert root.instrumentation_scope is not None and root.instrumentation_scope.name == "vantage"
    assert root.status.status_code is StatusCode.ERROR


@pytest.mark.anyio
@pytest.mark.parametrize("sampler", ["always_off", "always_on"])
async def test_otel_traces_sampler_and_limits_from_the_environment(
    sampler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK reads OTEL_TRACES_SAMPLER and the OTEL_* limits from os.environ; the runs' spans
    follow them."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "5")
    memory = InMemorySpanExporter()
    checks = [{"name": "limited", "type": "tcp", "target": "127.0.0.1:1", "interval": "10s"}]
    extra = SimpleSpanProcessor(memory)
    agent = build_agent(config_from(checks), {"OTEL_TRACES_EXPORTER": "none"}, span_processors=[extra])
    try:
        await agent.scheduler.run_once()
    finally:
        await agent.http.aclose()
        agent.telemetry.shutdown(2)
    roots = [s for s in memory.get_finished_spans() if s.parent is None]
    if sampler == "always_off":
        assert roots == []
        return
    (root,) = roots
    assert (root.attributes or {})["vantage.check.name"] == "limit"  # cut at 5 characters
