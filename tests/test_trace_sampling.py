"""Traces decided at the end of a run (agent/telemetry/sampling.py), with the SDK's real tracer
provider in front and an in-memory exporter behind; then through the agent to an OTLP receiver."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, Sampler, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode

from agent.app import build_agent
from agent.config.settings import AgentSettings, load_settings
from agent.errors import ConfigError
from agent.telemetry.sampling import RUN_ROOT, STATE_CHANGED, RunSamplingProcessor

from .helpers import attributes, config_from, otlp_http_receiver, serve

TELEMETRY_ENV = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}


class SeededIds(IdGenerator):
    """Random ids from a fixed seed: the same trace ids in every test run."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def generate_span_id(self) -> int:
        return self._random.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self._random.getrandbits(128) or 1


class Pipeline:
    """A tracer provider whose only processor is the sampler, in front of an in-memory exporter."""

    def __init__(self, ratio: float, sampler: Sampler = ALWAYS_ON, seed: int = 12, **limits: int) -> None:
        self.exporter = InMemorySpanExporter()
        self.sampling = RunSamplingProcessor(
            [SimpleSpanProcessor(self.exporter)], success_ratio=ratio, **limits
        )
        self.provider = TracerProvider(sampler=sampler, id_generator=SeededIds(seed))
        self.provider.add_span_processor(self.sampling)
        self.tracer = self.provider.get_tracer("test")

    def start_root(self, name: str = "x") -> trace.Span:
        """A run's root as Recorder.start_run opens it: no parent, the check's name attribute."""
        return self.tracer.start_span(
            f"check {name}",
            context=trace.set_span_in_context(trace.INVALID_SPAN),
            attributes={RUN_ROOT: name, "vantage.check.type": "http"},
        )

    def child(self, root: trace.Span, name: str = "GET") -> trace.Span:
        return self.tracer.start_span(name, context=trace.set_span_in_context(root), kind=SpanKind.CLIENT)

    def run(self, *, failed: bool = False, changed: bool | None = None, children: int = 2) -> int:
        """One whole run, children ending before the root; its trace id."""
        root = self.start_root()
        for index in range(children):
            self.child(root, f"GET {index}").end()
        if changed is not None:
            root.set_attribute(STATE_CHANGED, changed)
        root.set_status(Status(StatusCode.ERROR, "HTTP 500") if failed else Status(StatusCode.OK))
        root.end()
        return root.get_span_context().trace_id

    def exported(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def exported_traces(self) -> set[int]:
        return {span.context.trace_id for span in self.exported()}


def test_a_failed_run_keeps_every_span_in_the_order_they_ended() -> None:
    pipeline = Pipeline(ratio=0.0)
    root = pipeline.start_root()
    first = pipeline.child(root, "GET /login")
    step = pipeline.tracer.start_span("step pay", context=trace.set_span_in_context(root))
    nested = pipeline.child(step, "POST /pay")
    first.end()
    nested.end()
    step.end()
    assert pipeline.exported() == []  # nothing leaves before the run is decided
    assert pipeline.sampling.counts().waiting_spans == 3
    root.set_status(Status(StatusCode.ERROR, "HTTP 500"))
    root.end()

    assert [span.name for span in pipeline.exported()] == ["GET /login", "POST /pay", "step pay", "check x"]
    counts = pipeline.sampling.counts()
    assert (counts.kept_failed, counts.kept, counts.dropped, counts.spans_kept) == (1, 1, 0, 4)
    assert (counts.waiting_runs, counts.waiting_spans) == (0, 0)


def test_ratio_0_drops_every_success_and_ratio_1_keeps_every_run() -> None:
    none = Pipeline(ratio=0.0)
    for _ in range(20):
        none.run()
    assert none.exported() == []
    counts = none.sampling.counts()
    assert (counts.kept, counts.dropped, counts.spans_dropped) == (0, 20, 60)
    assert (counts.waiting_runs, counts.waiting_spans) == (0, 0)

    every = Pipeline(ratio=1.0)
    ids = [every.run() for _ in range(20)]
    assert every.exported_traces() == set(ids)
    assert len(every.exported()) == 60
    counts = every.sampling.counts()
    assert (counts.kept_ratio, counts.dropped, counts.spans_kept) == (20, 0, 60)


def test_a_run_that_changed_the_state_keeps_its_trace() -> None:
    pipeline = Pipeline(ratio=0.0)
    changed = pipeline.run(changed=True)
    pipeline.run(changed=False)
    pipeline.run()
    assert pipeline.exported_traces() == {changed}
    counts = pipeline.sampling.counts()
    assert (counts.kept_changed, counts.dropped) == (1, 2)
    # A failure that is also a change counts as a failure.
    failed = pipeline.run(failed=True, changed=True)
    assert pipeline.exported_traces() == {changed, failed}
    assert pipeline.sampling.counts().kept_failed == 1


def test_a_ratio_keeps_exactly_the_runs_whose_trace_ids_say_so() -> None:
    pipeline = Pipeline(ratio=0.25, seed=7)
    ids = [pipeline.run() for _ in range(400)]
    # The same decision as the SDK's TraceIdRatioBased sampler for the same id.
    sdk = TraceIdRatioBased(0.25)
    sampled = Decision.RECORD_AND_SAMPLE
    expected = {i for i in ids if sdk.should_sample(None, i, "check x").decision is sampled}
    assert pipeline.exported_traces() == expected
    assert all(pipeline.sampling.keeps_success(i) == (i in expected) for i in ids)
    assert pipeline.sampling.counts().kept_ratio == len(expected)
    assert 70 <= len(expected) <= 130  # about a quarter: the ids are random, only from a fixed seed

    # Reproducible from the id sent in traceparent, by anyone with the ratio.
    again = Pipeline(ratio=0.25, seed=7)
    root = again.start_root()
    headers: dict[str, str] = {}
    propagate.inject(headers, context=trace.set_span_in_context(root))
    root.end()
    sent = int(headers["traceparent"].split("-")[1], 16)
    assert sent == ids[0]
    assert (sent in again.exported_traces()) == again.sampling.keeps_success(sent) == (sent in expected)


def test_the_run_end_ratio_applies_on_top_of_otel_traces_sampler() -> None:
    # OTEL_TRACES_SAMPLER=traceidratio, OTEL_TRACES_SAMPLER_ARG=0.5: the sampler decides at the start.
    pipeline = Pipeline(ratio=0.25, sampler=TraceIdRatioBased(0.5), seed=3)
    successes = [pipeline.run() for _ in range(200)]
    failures = [pipeline.run(failed=True) for _ in range(200)]
    quarter, half = TraceIdRatioBased(0.25).bound, TraceIdRatioBased(0.5).bound
    low = TraceIdRatioBased.TRACE_ID_LIMIT
    # Both look at the same bits: a success is kept below the smaller bound, and a failure only when
    # the sampler sampled it at its start.
    assert pipeline.exported_traces() == {i for i in successes if i & low < quarter} | {
        i for i in failures if i & low < half
    }
    counts = pipeline.sampling.counts()
    assert counts.kept_failed == sum(1 for i in failures if i & low < half)
    assert counts.kept + counts.dropped == sum(1 for i in successes + failures if i & low < half)


def test_the_buffer_is_bounded_in_runs_and_the_oldest_is_evicted() -> None:
    pipeline = Pipeline(ratio=1.0, max_traces=2)
    hung = pipeline.start_root("hung")
    pipeline.child(hung).end()
    second, third = pipeline.start_root("b"), pipeline.start_root("c")  # the third evicts the first
    counts = pipeline.sampling.counts()
    assert (counts.evicted, counts.spans_evicted, counts.waiting_runs) == (1, 1, 2)
    for root in (second, third):
        root.end()
    assert {span.name for span in pipeline.exported()} == {"check b", "check c"}
    # What the evicted run ends later is discarded too, even a failure: a child, then its root.
    pipeline.child(hung).end()
    hung.set_status(Status(StatusCode.ERROR, "timeout"))
    hung.end()
    assert {span.name for span in pipeline.exported()} == {"check b", "check c"}
    counts = pipeline.sampling.counts()
    assert (counts.evicted, counts.spans_evicted, counts.kept_ratio) == (1, 3, 2)


def test_the_buffer_is_bounded_in_spans() -> None:
    pipeline = Pipeline(ratio=1.0, max_spans=10)
    done = pipeline.start_root("done")
    endless = pipeline.start_root("endless")
    pipeline.child(done).end()
    for _ in range(100):  # a probe that makes spans and never ends its root
        pipeline.child(endless).end()
        assert pipeline.sampling.counts().waiting_spans <= 10
    done.end()
    counts = pipeline.sampling.counts()
    # The oldest run went first (its child, and its root when it ended), then the endless one.
    assert counts.evicted == 2
    assert counts.spans_evicted == 1 + 100 + 1
    assert pipeline.exported() == []
    later = pipeline.run()
    assert pipeline.exported_traces() == {later}


def test_spans_outside_a_run_pass_straight_through() -> None:
    pipeline = Pipeline(ratio=0.0)
    lone = pipeline.tracer.start_span("reload configuration")  # a root without the run attribute
    child = pipeline.tracer.start_span("parse", context=trace.set_span_in_context(lone))
    child.end()
    assert [span.name for span in pipeline.exported()] == ["parse"]
    lone.end()
    assert [span.name for span in pipeline.exported()] == ["parse", "reload configuration"]
    counts = pipeline.sampling.counts()
    assert (counts.spans_passed, counts.kept, counts.dropped, counts.waiting_runs) == (2, 0, 0, 0)


def test_a_span_that_ends_after_its_root_follows_the_runs_decision() -> None:
    pipeline = Pipeline(ratio=0.0)
    for failed in (True, False):
        root = pipeline.start_root("late")
        straggler = pipeline.child(root, f"straggler failed={failed}")
        root.set_status(Status(StatusCode.ERROR, "x") if failed else Status(StatusCode.OK))
        root.end()
        straggler.end()
    assert [span.name for span in pipeline.exported()] == ["check late", "straggler failed=True"]
    counts = pipeline.sampling.counts()
    assert (counts.spans_kept, counts.spans_dropped, counts.spans_passed) == (2, 2, 0)


def test_runs_from_many_threads_at_once() -> None:
    pipeline = Pipeline(ratio=0.0, seed=5)
    failed: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(index: int) -> None:
        start.wait()
        for n in range(100):
            trace_id = pipeline.run(failed=(n + index) % 3 == 0, children=3)
            if (n + index) % 3 == 0:
                with lock:
                    failed.append(trace_id)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert pipeline.exported_traces() == set(failed)
    assert len(pipeline.exported()) == 4 * len(failed)
    counts = pipeline.sampling.counts()
    assert counts.kept_failed == len(failed) and counts.kept_failed + counts.dropped == 800
    assert counts.spans_kept + counts.spans_dropped == 3200
    assert (counts.evicted, counts.waiting_runs, counts.waiting_spans) == (0, 0, 0)
    # Within each kept trace the spans arrived in the order they ended, the root last.
    by_trace: dict[int, list[ReadableSpan]] = {}
    for span in pipeline.exported():
        by_trace.setdefault(span.context.trace_id, []).append(span)
    assert all(spans[-1].parent is None and len(spans) == 4 for spans in by_trace.values())


class Recording(SpanProcessor):
    def __init__(self, flushed: bool = True) -> None:
        self.calls: list[str] = []
        self._flushed = flushed

    def on_start(self, span: Span, parent_context: Any = None) -> None:
        self.calls.append(f"start {span.name}")

    def on_end(self, span: ReadableSpan) -> None:
        self.calls.append(f"end {span.name}")

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self.calls.append("flush")
        return self._flushed

    def shutdown(self) -> None:
        self.calls.append("shutdown")


def test_flush_and_shutdown_reach_every_export_processor() -> None:
    first, second = Recording(), Recording(flushed=False)
    sampling = RunSamplingProcessor([first, second], success_ratio=1.0)
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(sampling)
    tracer = provider.get_tracer("test")
    waiting = tracer.start_span("check x", attributes={RUN_ROOT: "x"})
    tracer.start_span("GET", context=trace.set_span_in_context(waiting)).end()
    assert sampling.force_flush(1000) is False  # the second said so
    assert first.calls == ["start check x", "start GET", "flush"]
    assert sampling.counts().waiting_spans == 1  # a run in progress is not flushed: not decided
    provider.shutdown()
    assert first.calls[-1] == second.calls[-1] == "shutdown"
    counts = sampling.counts()
    assert (counts.evicted, counts.spans_evicted, counts.waiting_runs) == (1, 1, 0)


@pytest.mark.parametrize("ratio", [-0.1, 1.5, float("nan")])
def test_a_ratio_outside_0_to_1_is_refused(ratio: float) -> None:
    with pytest.raises(ValueError, match="from 0 to 1"):
        RunSamplingProcessor([], success_ratio=ratio)


def load_settings_env(**environ: str) -> AgentSettings:
    return load_settings(environ)


def test_the_setting() -> None:
    assert load_settings_env().trace_success_ratio == 0.1
    assert load_settings_env(VANTAGE_TRACE_SUCCESS_RATIO="1").trace_success_ratio == 1.0
    assert load_settings_env(VANTAGE_TRACE_SUCCESS_RATIO=" 0.25 ").trace_success_ratio == 0.25
    for bad in ("1.5", "-0.1", "nan", "10%", "", "ten"):
        with pytest.raises(ConfigError) as raised:
            load_settings_env(VANTAGE_TRACE_SUCCESS_RATIO=bad)
        message = f"VANTAGE_TRACE_SUCCESS_RATIO: {bad!r} is not a ratio from 0 to 1"
        assert str(raised.value).startswith(message)


# ---------------------------------------------------------------- through the agent


@pytest.fixture
def receiver() -> Iterator[tuple[str, Any]]:
    with otlp_http_receiver() as found:
        yield found


@pytest.mark.anyio
async def test_through_the_agent_to_an_otlp_receiver(
    receiver: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real runs of the http probe at ratio 0: the kept traces decoded at the wire; an extra span
    processor sees every span of every run; every request carried its run's ids and its own span's
    id, kept or not."""
    endpoint, received = receiver
    sent: dict[str, list[tuple[int, int, str]]] = {"ok": [], "broken": []}

    async def answer(request: web.Request) -> web.Response:
        _, trace_id, span_id, flags = request.headers["traceparent"].split("-")
        sent[request.match_info["name"]].append((int(trace_id, 16), int(span_id, 16), flags))
        return web.Response(status=200 if request.match_info["name"] == "ok" else 500)

    environ = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "none"}
    environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"{endpoint}/v1/traces"
    for name, value in environ.items():
        monkeypatch.setenv(name, value)  # the SDK's exporters read os.environ
    memory = InMemorySpanExporter()
    app = web.Application()
    app.router.add_get("/{name}", answer)
    async with serve(app) as port:
        checks = [
            {"name": name, "type": "http", "target": f"http://127.0.0.1:{port}/{name}", "interval": "10s"}
            for name in ("ok", "broken")
        ]
        config = config_from(checks, VANTAGE_TRACE_SUCCESS_RATIO="0", **environ)
        agent = build_agent(config, environ, span_processors=[SimpleSpanProcessor(memory)])
        try:
            for _ in range(3):
                await agent.scheduler.run_once()
            assert agent.telemetry.flush(5)
        finally:
            await agent.http.aclose()
            agent.telemetry.shutdown(2)

    assert len(sent["ok"]) == len(sent["broken"]) == 3
    assert {flags for _, _, flags in sent["ok"] + sent["broken"]} == {"03"}  # sampled, random id
    # The extra processor saw every span of every run, with the ids sent.
    seen = list(memory.get_finished_spans())
    assert len(seen) == 12
    clients = {(s.context.trace_id, s.context.span_id) for s in seen if s.kind is SpanKind.CLIENT}
    assert clients == {(t, s) for t, s, _ in sent["ok"] + sent["broken"]}
    for span in seen:
        assert span.instrumentation_scope is not None and span.instrumentation_scope.name == "vantage"
        if span.kind is SpanKind.CLIENT:
            assert span.parent is not None and span.parent.span_id != span.context.span_id
    spans = [span for _, span in received.spans()]
    traces = {int.from_bytes(span.trace_id, "big") for span in spans}
    broken = {t for t, _, _ in sent["broken"]}
    # Every failed run arrived whole: its root with status ERROR and its client span.
    assert broken <= traces
    for trace_id in broken:
        mine = [s for s in spans if int.from_bytes(s.trace_id, "big") == trace_id]
        assert sorted(s.name for s in mine) == ["GET", "check broken"]
        root = next(s for s in mine if s.name == "check broken")
        assert root.status.code == root.status.STATUS_CODE_ERROR
        client = next(s for s in mine if s.name == "GET")
        assert client.parent_span_id == root.span_id
    # Successful runs at ratio 0 are dropped, but the first (a state change).
    assert traces == broken | {sent["ok"][0][0]}
    assert agent.telemetry.sampling is not None
    counts = agent.telemetry.sampling.counts()
    assert (counts.kept_failed, counts.kept_changed, counts.dropped) == (3, 1, 2)
    assert (counts.spans_kept, counts.spans_dropped, counts.waiting_runs) == (8, 4, 0)


@pytest.mark.anyio
async def test_the_agent_samples_what_its_exporters_send(
    receiver: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """build_telemetry puts the sampling in front of the OTLP exporter: at ratio 0, failures and
    the first run of each check (a state change) reach the receiver, other successes do not."""
    endpoint, received = receiver
    sent: dict[str, list[int]] = {"ok": [], "broken": []}

    async def answer(request: web.Request) -> web.Response:
        sent[request.match_info["name"]].append(int(request.headers["traceparent"].split("-")[1], 16))
        return web.Response(status=200 if request.match_info["name"] == "ok" else 500)

    environ = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "none"}
    environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"{endpoint}/v1/traces"
    for name, value in environ.items():
        monkeypatch.setenv(name, value)  # the SDK's exporters read os.environ
    app = web.Application()
    app.router.add_get("/{name}", answer)
    async with serve(app) as port:
        checks = [
            {"name": name, "type": "http", "target": f"http://127.0.0.1:{port}/{name}", "interval": "10s"}
            for name in ("ok", "broken")
        ]
        agent = build_agent(config_from(checks, VANTAGE_TRACE_SUCCESS_RATIO="0", **environ), environ)
        try:
            for _ in range(3):
                await agent.scheduler.run_once()
            assert agent.telemetry.flush(5)
        finally:
            await agent.http.aclose()
            agent.telemetry.shutdown(2)
    traces = {int.from_bytes(span.trace_id, "big") for _, span in received.spans()}
    assert traces == {sent["ok"][0], *sent["broken"]}
    first = [s for _, s in received.spans() if s.name == "check ok"]
    assert [attributes(s.attributes).get("vantage.state.changed") for s in first] == [True]
    assert agent.telemetry.sampling is not None
    counts = agent.telemetry.sampling.counts()
    assert (counts.kept_failed, counts.kept_changed, counts.dropped) == (3, 1, 2)
    assert agent.telemetry.health()["sampling"]["dropped"] == 2
