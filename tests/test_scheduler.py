"""The scheduler on a fake clock: spread, phase, fixed rate, no overlap, the concurrency bound."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter
from dataclasses import replace
from importlib.metadata import EntryPoint
from typing import Any

import anyio
import pytest
import yaml

from agent.app import Agent, build_agent
from agent.config.registry import Registry
from agent.config.settings import Shard, load_config
from agent.errors import ConfigError
from agent.schedule.scheduler import Scheduler
from agent.schedule.sharding import offset, owner, select
from agent.sdk import (
    Check,
    MetricSpec,
    Probe,
    ProbeContext,
    ProbeResult,
    ProbeSettings,
    Reason,
    SystemClock,
)

from .fakes import SleepProbe, entry_points
from .helpers import FakeClock

pytestmark = pytest.mark.anyio

ENV = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}


def make_agent(checks: list[dict[str, Any]], clock: FakeClock, **env: str) -> tuple[Agent, SleepProbe]:
    agent, registry = agent_with(checks, clock, **env)
    probe = registry.load("sleep")
    assert isinstance(probe, SleepProbe)
    return agent, probe


def agent_with(checks: list[dict[str, Any]], clock: FakeClock, **env: str) -> tuple[Agent, Registry]:
    """An agent on ``clock`` with the probe types of ``tests.fakes`` and of this module."""
    here = [EntryPoint(name, f"{__name__}:{cls}", "vantage.probes") for name, cls in LOCAL_PROBES.items()]
    registry = Registry([*entry_points(), *here])
    environ = {"VANTAGE_CHECKS": yaml.safe_dump({"checks": checks}), **ENV, **env}
    config = load_config(environ, registry=registry)
    return build_agent(config, environ, clock=clock), registry


def sleep_check(name: str, interval: float, seconds: float = 0.0, **settings: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "sleep",
        "target": "none",
        "interval": interval,
        "timeout": interval * 0.9,
        "settings": {"seconds": seconds, **settings},
    }


async def run_for(agent: Agent, clock: FakeClock, seconds: float) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(agent.scheduler.run)
        await clock.advance(seconds)
        tg.cancel_scope.cancel()


async def test_a_thousand_checks_spread_over_their_interval() -> None:
    clock = FakeClock()
    agent, probe = make_agent([sleep_check(f"check-{i}", 60) for i in range(1000)], clock)
    start = clock.monotonic()
    await run_for(agent, clock, 59.999)
    assert len(probe.starts) == 1000 and all(len(s) == 1 for s in probe.starts.values())
    buckets = Counter(int((s[0] - start) // 6) for s in probe.starts.values())
    # 100 expected per 6s bucket; a burst at one instant would put them all in one.
    assert sorted(buckets) == list(range(10))
    assert all(60 <= count <= 140 for count in buckets.values()), buckets


async def test_phase_is_deterministic_and_survives_restarts() -> None:
    assert offset("stripe", "eu-west-1") == offset("stripe", "eu-west-1")
    assert offset("stripe", "eu-west-1") != offset("stripe", "us-east-1")
    phases = []
    for start in (1000.0, 98765.4321):  # two "processes": different monotonic origins, same wall clock
        clock = FakeClock(start=start, wall=1_800_000_000.0 + start)
        agent, probe = make_agent([sleep_check("stripe", 30)], clock)
        await run_for(agent, clock, 95)
        phases.append([round(t % 30, 6) for t in probe.wall_starts["stripe"]])
    assert len(phases[0]) == 3 and len(set(phases[0] + phases[1])) == 1


async def test_fixed_rate_does_not_drift() -> None:
    clock = FakeClock()
    agent, probe = make_agent([sleep_check("steady", 0.7, seconds=0.3)], clock)
    await run_for(agent, clock, 700)
    starts = probe.starts["steady"]
    assert len(starts) >= 999
    worst = max(abs(t - (starts[0] + k * 0.7)) for k, t in enumerate(starts))
    assert worst < 1e-6


async def test_runs_due_close_together_start_together_never_far_from_their_tick() -> None:
    clock = FakeClock()
    agent, probe = make_agent([sleep_check(f"c{i}", 1.0) for i in range(200)], clock)
    await run_for(agent, clock, 10)
    early = 0
    for name, starts in probe.wall_starts.items():
        phase = offset(name, "local")
        for start in starts:
            ahead = (phase - start) % 1.0  # how long before its tick the run started
            ahead = 0.0 if ahead > 0.5 else ahead
            assert ahead <= 0.02 + 1e-9
            early += ahead > 0
    assert early > 0  # some runs were started with an earlier one, sharing its wake-up
    assert all(len(starts) == 10 for starts in probe.wall_starts.values())


async def test_a_run_longer_than_its_timeout_is_cut_at_the_timeout_and_the_next_tick_is_on_time() -> None:
    # interval 10s, timeout 9s, each run would take 25s; the fake clock drives the deadline too:
    #   tick 0 ── cut 9 (timeout) | tick 10 ── cut 19 | tick 20 ── ...   never a skip
    clock = FakeClock()
    agent, probe = make_agent([sleep_check("slow", 10, seconds=25)], clock)
    await run_for(agent, clock, 99.999)
    state = agent.recorder.states["slow"]
    starts = probe.starts["slow"]
    assert len(starts) == 10 and probe.max_per_check == 1
    assert {round(b - a, 6) for a, b in itertools.pairwise(starts)} == {10.0}
    assert state.skipped == 0
    assert state.runs == state.failures == 9  # the tenth is still in flight at the end
    assert state.last is not None and state.last.reason is Reason.TIMEOUT
    assert "no result within the timeout of 9s" in state.last.message
    # Cut at the timeout on the fake clock, not when the 25s sleep would have ended.
    assert state.last.duration == pytest.approx(9.0)
    assert probe.active == 0  # each cut run left its sleep (its finally ran) before the next tick


async def test_a_run_is_never_overlapped_and_skips_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two checks (interval 10s, timeout 9s) that hang, one probe slot: each run holds the slot 9s,
    # so a run that waited for it is still going at its check's next tick, which is skipped.
    #   a: tick 0 ── cut 9          | tick 10 waits ── starts 18 ── cut 27 | tick 20 skipped
    #   b: tick 3 waits ── starts 9 ── cut 18 | tick 13 skipped | ...
    clock = FakeClock()
    checks = [sleep_check("a", 10, seconds=3600), sleep_check("b", 10, seconds=3600)]
    agent, probe = make_agent(checks, clock, VANTAGE_CONCURRENCY="1")
    causes: list[str] = []
    skipped = agent.recorder.skipped
    monkeypatch.setattr(
        agent.recorder, "skipped", lambda entry, cause: (causes.append(cause), skipped(entry, cause))
    )
    await run_for(agent, clock, 99.999)
    assert probe.max_per_check == 1 and probe.max_active == 1
    states = [agent.recorder.states[name] for name in ("a", "b")]
    assert all(state.skipped > 0 for state in states)
    assert set(causes) == {"overlap"}
    # Every one of the ten ticks of each check either ran or was counted as skipped.
    assert all(9 <= state.runs + state.skipped <= 10 for state in states)
    assert all(s.last is not None and s.last.reason is Reason.TIMEOUT for s in states)


async def test_the_heartbeat_stays_fresh_between_rare_ticks() -> None:
    clock = FakeClock()
    agent, _ = make_agent([sleep_check("hourly", 3600)], clock)
    async with anyio.create_task_group() as tg:
        tg.start_soon(agent.scheduler.run)
        await clock.advance(1800)
        # /healthz fails after 30s without a turn of the loop; an hour between ticks must not.
        assert clock.monotonic() - agent.scheduler.heartbeat <= 5.0
        tg.cancel_scope.cancel()


async def test_a_rate_limited_check_backs_off_until_retry_after(caplog: pytest.LogCaptureFixture) -> None:
    # interval 10s, every run answers 429 with Retry-After: 25s
    #   run ─ 429 | skip | skip | run ─ 429 | skip | skip | run ...
    clock = FakeClock()
    agent, probe = make_agent([sleep_check("limited", 10, retry_after=25)], clock)
    with caplog.at_level(logging.INFO, logger="vantage.scheduler"):
        await run_for(agent, clock, 89.999)
    # Logged when each back-off starts and when it ends: three starts, two ends in 90s.
    said = [r.getMessage() for r in caplog.records if "back" in r.getMessage()]
    started = [m for m in said if m.startswith("check limited backs off for 25s, as the target asked (")]
    ended = [m for m in said if m == "check limited: back-off over, probing again"]
    assert (len(started), len(ended)) == (3, 2), said
    state = agent.recorder.states["limited"]
    gaps = {
        round(b - a, 6) for a, b in zip(probe.starts["limited"], probe.starts["limited"][1:], strict=False)
    }
    assert gaps == {30.0}
    assert state.runs == 3 and state.skipped == 6


async def test_concurrency_bound_holds_across_checks() -> None:
    clock = FakeClock()
    checks = [sleep_check(f"c{i}", 10, seconds=4) for i in range(10)]
    agent, probe = make_agent(checks, clock, VANTAGE_CONCURRENCY="3")
    await run_for(agent, clock, 30)
    assert probe.max_active == 3
    assert sum(len(s) for s in probe.starts.values()) >= 15  # the slots stay busy


async def test_a_crashing_probe_never_stops_another(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    agent, _ = make_agent([sleep_check("buggy", 5, crash=True), sleep_check("fine", 5)], clock)
    with caplog.at_level(logging.ERROR, logger="vantage.scheduler"):
        await run_for(agent, clock, 20)
    buggy, fine = agent.recorder.states["buggy"], agent.recorder.states["fine"]
    assert buggy.runs == 4 and buggy.last is not None
    assert buggy.last.reason is Reason.INTERNAL
    assert "RuntimeError: probe bug" in buggy.last.message
    assert fine.runs == 4 and fine.last is not None and fine.last.success
    crash_logs = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert len(crash_logs) == 1 and crash_logs[0].exc_info is not None


async def test_the_scheduler_enforces_the_timeout() -> None:
    registry = Registry(entry_points())
    environ = {
        "VANTAGE_CHECKS": yaml.safe_dump(
            {
                "checks": [
                    {
                        "name": "stuck",
                        "type": "sleep",
                        "target": "x",
                        "interval": 5,
                        "timeout": 1.0,
                        "settings": {"seconds": 3600},
                    }
                ]
            }
        ),
        **ENV,
    }
    agent = build_agent(load_config(environ, registry=registry), environ)  # the real clock
    await agent.scheduler.run_once()
    last = agent.recorder.states["stuck"].last
    assert last is not None and last.reason is Reason.TIMEOUT
    assert "no result within the timeout of 1s" in last.message


async def test_a_run_starved_by_the_agent_is_discarded_not_failed() -> None:
    registry = Registry(entry_points())
    check = {
        "name": "starved",
        "type": "sleep",
        "target": "x",
        "interval": 5,
        "timeout": 0.2,
        "settings": {"block": 0.5, "seconds": 1},
    }
    environ = {"VANTAGE_CHECKS": yaml.safe_dump({"checks": [check]}), **ENV}
    agent = build_agent(load_config(environ, registry=registry), environ)
    await agent.scheduler.run_once()
    state = agent.recorder.states["starved"]
    # The loop was blocked past the timeout: that says nothing of the target.
    assert state.last is None and state.runs == 0
    assert state.skipped == 1


async def test_a_stall_before_a_run_does_not_discard_its_timeout() -> None:
    # The event loop stalls (another check blocks it for 0.6 s of real time) before "late" starts;
    # then "late" times out on the fake clock. Only lag while a run is going says the agent
    # starved it: this timeout is the target's, and is recorded, not discarded as "overload".
    blocker = offset("blocker", "local")
    late = next(f"late-{i}" for i in range(1000) if offset(f"late-{i}", "local") > blocker + 0.01)
    clock = FakeClock()
    checks = [
        {**sleep_check("blocker", 10, block=0.6), "timeout": 5.0},
        {**sleep_check(late, 10, seconds=60), "timeout": 1.0},  # starved above 0.25 s of lag
    ]
    agent, probe = make_agent(checks, clock)
    await run_for(agent, clock, 9.9)
    assert probe.starts["blocker"][0] < probe.starts[late][0]
    assert agent.scheduler._lag.worst_since(0.0) > 0.25  # the stall was seen, before "late" ran
    state = agent.recorder.states[late]
    assert state.skipped == 0 and state.runs == 1
    assert state.last is not None and state.last.reason is Reason.TIMEOUT


async def test_spans_a_probe_writes_are_redacted() -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    registry = Registry(entry_points())
    check = {"name": "noted", "type": "sleep", "target": "x", "settings": {"note": "key ${NOTE_KEY}"}}
    environ = {"VANTAGE_CHECKS": yaml.safe_dump({"checks": [check]}), "NOTE_KEY": "s3cr3t-n0te", **ENV}
    exporter = InMemorySpanExporter()
    agent = build_agent(
        load_config(environ, registry=registry), environ, span_processors=[SimpleSpanProcessor(exporter)]
    )
    await agent.scheduler.run_once()
    step = next(s for s in exporter.get_finished_spans() if s.name == "note")
    assert step.attributes is not None and step.attributes["vantage.note"] == "key <redacted>"
    assert (
        step.events[0].attributes is not None
        and step.events[0].attributes["vantage.note"] == "key <redacted>"
    )
    assert step.status.description == "failed with key <redacted>"


# ---------------------------------------------------------------- a run's structure: task, queue, timer


async def test_a_run_due_while_every_slot_is_taken_waits_as_its_check_not_as_a_task() -> None:
    # 50 checks that hang, 3 slots: 3 runs are tasks, 47 wait in the queue and are nothing more.
    clock = FakeClock()
    agent, probe = make_agent(
        [sleep_check(f"c{i}", 10, seconds=3600) for i in range(50)], clock, VANTAGE_CONCURRENCY="3"
    )
    async with anyio.create_task_group() as tg:
        tasks_before = len(asyncio.all_tasks())
        tg.start_soon(agent.scheduler.run)
        await clock.advance(9.99)  # every check came due once; each run is cut at 9 s
        assert probe.max_active == 3 and probe.active == 3
        # The scheduler's own task and its lag monitor, and the three runs.
        assert len(asyncio.all_tasks()) - tasks_before <= 2 + 3
        tg.cancel_scope.cancel()
    assert probe.active == 0


async def test_runs_waiting_for_a_slot_start_in_the_order_they_came_due(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One slot, six runs due at once, 1 s each: started one after the other, first come first
    # started, each late by the time it waited for the slot.
    clock = FakeClock()
    names = ["f", "a", "e", "b", "d", "c"]
    agent, probe = make_agent(
        [sleep_check(name, 10, seconds=1) for name in names], clock, VANTAGE_CONCURRENCY="1"
    )
    late: list[float] = []
    monkeypatch.setattr(agent.recorder, "lateness", late.append)
    start = clock.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(agent.scheduler.run_once)
        await clock.advance(10)
    assert {name: [t - start for t in probe.starts[name]] for name in names} == {
        name: [float(i)] for i, name in enumerate(names)
    }
    assert late == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert probe.max_active == 1


async def test_run_once_holds_the_concurrency_bound_and_runs_every_check() -> None:
    clock = FakeClock()
    agent, probe = make_agent(
        [sleep_check(f"c{i}", 10, seconds=1) for i in range(20)], clock, VANTAGE_CONCURRENCY="4"
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(agent.scheduler.run_once)
        await clock.advance(6)
    assert probe.max_active == 4
    assert sorted(len(s) for s in probe.starts.values()) == [1] * 20
    assert all(agent.recorder.states[f"c{i}"].runs == 1 for i in range(20))


async def test_the_system_clock_calls_its_timer_unless_cancelled() -> None:
    clock = SystemClock()
    called: list[str] = []
    first = anyio.Event()
    clock.call_later(0.001, first.set)
    clock.call_later(0.002, lambda: called.append("kept"))
    cancelled = clock.call_later(0.001, lambda: called.append("cancelled"))
    cancelled.cancel()
    with anyio.fail_after(5):
        await first.wait()
        while not called:
            await anyio.sleep(0.001)
    assert called == ["kept"]


class NestedSettings(ProbeSettings):
    hold: float = 3600.0
    """How long the probe's two child tasks wait (on the injected clock)."""
    own_timeout: float = 0.0
    """Above zero: first wait an hour under a deadline of the probe's own, this long."""
    cleanup: bool = False
    """Catch the cancellation and wait again, as a 'graceful close' would."""
    keep: bool = False
    """Keep a value found before the wait (``ctx.keep_values``), filled after it was handed over."""


class NestedProbe(Probe[NestedSettings]):
    """A plugin that uses anyio itself: a cancel scope of its own, and a task group of two children."""

    name = "nested"
    Settings = NestedSettings
    metrics = (MetricSpec.gauge("nested.found", "", "what the run found before it waited"),)

    def __init__(self) -> None:
        self.events: list[str] = []

    async def run(self, check: Check, settings: NestedSettings, ctx: ProbeContext) -> ProbeResult:
        async def child(index: int) -> None:
            try:
                await ctx.clock.sleep(settings.hold)
            finally:
                self.events.append(f"child {index} ended at {ctx.clock.monotonic() - started:g}")

        started = ctx.clock.monotonic()
        if settings.keep:
            found: dict[str, float] = {}
            ctx.keep_values(found)
            found["nested.found"] = 6.0  # kept as handed over: what is added later counts too
        if settings.own_timeout:
            with ctx.clock.move_on_after(settings.own_timeout) as scope:
                await ctx.clock.sleep(3600)
            self.events.append(f"own deadline caught: {scope.cancelled_caught}")
        try:
            with anyio.CancelScope():
                async with anyio.create_task_group() as tg:
                    tg.start_soon(child, 1)
                    tg.start_soon(child, 2)
        except asyncio.CancelledError:
            if settings.cleanup:
                self.events.append("cleaning up")
                await ctx.clock.sleep(3600)  # cut too: the run's timeout is still on
                self.events.append("cleaned up")
            raise
        return ProbeResult(success=True)


class RaisesOwnCancelled(Probe[ProbeSettings]):
    """Raises a CancelledError of its own, with no timeout nor shutdown asking for it: a crash."""

    name = "own_cancel"
    Settings = ProbeSettings

    async def run(self, check: Check, settings: ProbeSettings, ctx: ProbeContext) -> ProbeResult:
        await ctx.clock.sleep(0.5)
        raise asyncio.CancelledError("the plugin's own")


class CleanupRaises(Probe[ProbeSettings]):
    """Cancelled, its cleanup fails with an exception of its own (a session that cannot close)."""

    name = "cleanup_raises"
    Settings = ProbeSettings

    async def run(self, check: Check, settings: ProbeSettings, ctx: ProbeContext) -> ProbeResult:
        try:
            await ctx.clock.sleep(3600)
        except asyncio.CancelledError:
            raise ConnectionResetError("closing the session failed") from None
        return ProbeResult(success=True)


SHARED = ProbeResult(success=True, message="the same object every run", values={"x": 1.0})


class SharedResult(Probe[ProbeSettings]):
    """Hands out one result object, made once, after a sleep that grows each run."""

    name = "shared_result"
    Settings = ProbeSettings

    def __init__(self) -> None:
        self.runs = 0

    async def run(self, check: Check, settings: ProbeSettings, ctx: ProbeContext) -> ProbeResult:
        self.runs += 1
        await ctx.clock.sleep(self.runs * 0.5)
        return SHARED


LOCAL_PROBES = {
    "nested": "NestedProbe",
    "own_cancel": "RaisesOwnCancelled",
    "cleanup_raises": "CleanupRaises",
    "shared_result": "SharedResult",
}


async def test_each_run_gets_its_own_duration_and_the_probes_result_is_left_alone() -> None:
    """The scheduler times a result that has no duration on a copy of it: a probe may return the
    same object every run."""
    clock = FakeClock()
    check = {"name": "same", "type": "shared_result", "target": "x", "interval": 10, "timeout": 5}
    agent, _ = agent_with([check], clock)
    seen: list[ProbeResult] = []
    agent.recorder.on_result = lambda name, ended, result, requests, trace: seen.append(result)
    await run_for(agent, clock, 30)
    assert [result.duration for result in seen[:2]] == [pytest.approx(0.5), pytest.approx(1.0)]
    for result in seen:
        assert result is not SHARED and result == replace(SHARED, duration=result.duration)
    assert SHARED.duration is None


def nested_check(name: str, timeout: float = 1.0, **settings: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "nested",
        "target": "x",
        "interval": 10,
        "timeout": timeout,
        "settings": settings,
    }


async def test_a_plugins_own_cancel_scope_and_task_group_work_inside_a_run() -> None:
    clock = FakeClock()
    agent, registry = agent_with([nested_check("own", timeout=5.0, own_timeout=0.5, hold=2)], clock)
    await run_for(agent, clock, 9.99)
    state = agent.recorder.states["own"]
    assert state.runs == 1 and state.last is not None and state.last.success, state.last
    assert state.last.duration == pytest.approx(2.5)
    probe = registry.load("nested")
    assert isinstance(probe, NestedProbe)
    assert probe.events == ["own deadline caught: True", "child 1 ended at 2.5", "child 2 ended at 2.5"]


async def test_the_timeout_cuts_through_a_plugins_task_group_and_its_cleanup() -> None:
    # The run waits in its task group for an hour; its timeout is 1 s on the fake clock. The
    # children end there, and so does the plugin's cleanup that waits: the run is a timeout at 1 s.
    clock = FakeClock()
    agent, registry = agent_with(
        [nested_check("cut", cleanup=True), nested_check("later", timeout=3.0)], clock
    )
    await run_for(agent, clock, 9.99)
    probe = registry.load("nested")
    assert isinstance(probe, NestedProbe)
    for name, timeout in (("cut", 1.0), ("later", 3.0)):
        state = agent.recorder.states[name]
        assert state.runs == 1 and state.failures == 1 and state.skipped == 0
        assert state.last is not None and state.last.reason is Reason.TIMEOUT, state.last
        assert state.last.duration == pytest.approx(timeout)
    assert probe.events.count("cleaning up") == 1 and "cleaned up" not in probe.events
    assert sorted(e for e in probe.events if e.startswith("child")) == [
        "child 1 ended at 1",
        "child 1 ended at 3",
        "child 2 ended at 1",
        "child 2 ended at 3",
    ]
    # The next runs go on as usual: a timeout leaves nothing behind in the task.
    await run_for(agent, clock, 20)
    assert agent.recorder.states["cut"].runs >= 2


async def test_shutdown_cancels_a_run_through_a_plugins_task_group() -> None:
    clock = FakeClock()
    agent, registry = agent_with([nested_check("held", timeout=9.0, cleanup=True)], clock)
    probe = registry.load("nested")
    assert isinstance(probe, NestedProbe)
    finished = []

    async def run() -> None:
        await agent.scheduler.run(drain_timeout=0.5)
        finished.append(clock.monotonic())

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        while agent.recorder.in_flight == 0:
            await clock.advance(0.5)
        agent.scheduler.stop()
        await clock.advance(1)
        with anyio.fail_after(10):
            while not finished:
                await anyio.sleep(0.01)
    state = agent.recorder.states["held"]
    assert state.runs == 0 and state.last is None  # abandoned, not a crash nor a timeout
    assert len([e for e in probe.events if e.startswith("child")]) == 2
    assert "cleaning up" in probe.events and "cleaned up" not in probe.events  # cut there too
    assert agent.recorder.in_flight == 0


async def test_a_plugin_whose_cleanup_fails_at_shutdown_does_not_end_the_scheduler_with_it() -> None:
    """At shutdown a run is abandoned whatever its plugin raises while it is cut: the scheduler
    returns from run() (so the agent goes on to flush its telemetry) instead of raising it."""
    clock = FakeClock()
    checks = [{"name": "c", "type": "cleanup_raises", "target": "x", "interval": 10, "timeout": 9.0}]
    agent, _ = agent_with(checks, clock)
    outcome: list[str] = []

    async def run() -> None:
        try:
            await agent.scheduler.run(drain_timeout=0.5)
            outcome.append("returned")
        except BaseException as exc:
            outcome.append(repr(exc))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        while agent.recorder.in_flight == 0:
            await clock.advance(0.5)
        agent.scheduler.stop()
        await clock.advance(1)
        with anyio.fail_after(10):
            while not outcome:
                await anyio.sleep(0.01)
    assert outcome == ["returned"]
    assert agent.recorder.states["c"].runs == 0 and agent.recorder.in_flight == 0  # abandoned


async def test_a_cancelled_error_nobody_asked_for_is_the_plugins_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    checks = [
        {"name": "rogue", "type": "own_cancel", "target": "x", "interval": 2, "timeout": 1},
        sleep_check("fine", 2),
    ]
    agent, _ = agent_with(checks, clock)
    with caplog.at_level(logging.ERROR, logger="vantage.scheduler"):
        await run_for(agent, clock, 9.99)
    rogue, fine = agent.recorder.states["rogue"], agent.recorder.states["fine"]
    assert rogue.runs == 5 and rogue.failures == 5
    assert rogue.last is not None and rogue.last.reason is Reason.INTERNAL
    assert rogue.last.message == "the probe crashed: CancelledError: the plugin's own"
    assert fine.runs == 5 and fine.failures == 0


@pytest.mark.parametrize("method", ["run", "run_once"])
async def test_a_bug_outside_the_probe_ends_the_scheduler_with_it(method: str) -> None:
    # The probe's exceptions are its check's results; the scheduler's or the recorder's own are
    # bugs, raised from run() after the other runs were cancelled, as a task group would.
    clock = FakeClock()
    agent, probe = make_agent([sleep_check("bad", 10), sleep_check("other", 10, seconds=3600)], clock)

    def context(entry: Any, run: Any) -> ProbeContext:
        if entry.check.name == "bad":
            raise RuntimeError("a bug in the context")
        return agent.scheduler._context(entry, run)

    scheduler = Scheduler(
        agent.entries, recorder=agent.recorder, context=context, clock=clock, region="local", concurrency=4
    )
    raised: list[BaseException] = []

    async def run() -> None:
        try:
            await getattr(scheduler, method)()
        except RuntimeError as exc:
            raised.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await clock.advance(10)
    assert [str(exc) for exc in raised] == ["a bug in the context"]
    assert probe.active == 0


def test_regions_filter_checks() -> None:
    registry = Registry(entry_points())
    checks = [
        {"name": "everywhere", "type": "sleep", "target": "x"},
        {"name": "eu-only", "type": "sleep", "target": "x", "regions": ["eu-west-1"]},
    ]
    config = load_config({"VANTAGE_CHECKS": yaml.safe_dump({"checks": checks})}, registry=registry)
    assert [e.check.name for e in select(config.entries, "eu-west-1", Shard())] == ["everywhere", "eu-only"]
    assert [e.check.name for e in select(config.entries, "us-east-1", Shard())] == ["everywhere"]


def test_each_check_runs_in_exactly_one_shard() -> None:
    names = [f"check-{i}" for i in range(3000)]
    for count in (1, 2, 3, 5):
        owners = [owner(name, count) for name in names]
        spread = Counter(owners)
        assert sorted(spread) == list(range(count))
        assert all(abs(n - 3000 / count) < 3000 / count * 0.15 for n in spread.values()), spread


def test_adding_a_shard_moves_only_its_share() -> None:
    names = [f"check-{i}" for i in range(3000)]
    before = {name: owner(name, 3) for name in names}
    after = {name: owner(name, 4) for name in names}
    moved = [name for name in names if before[name] != after[name]]
    # Rendezvous hashing: a check either stays or moves to the new shard, about 1/4 of them.
    assert all(after[name] == 3 for name in moved)
    assert 0.18 < len(moved) / len(names) < 0.32


def test_shard_auto_reads_the_statefulset_ordinal() -> None:
    registry = Registry(entry_points())
    base = {"VANTAGE_CHECKS": "checks: []", "VANTAGE_SHARD": "auto"}
    config = load_config(
        {**base, "HOSTNAME": "vantage-eu-west-1-2", "VANTAGE_REPLICAS": "3"}, registry=registry
    )
    assert config.shard == Shard(2, 3)
    with pytest.raises(ConfigError, match="needs VANTAGE_REPLICAS"):
        load_config({**base, "HOSTNAME": "vantage-eu-west-1-2"}, registry=registry)
    with pytest.raises(ConfigError, match="ending in '-<ordinal>'"):
        load_config({**base, "HOSTNAME": "laptop", "VANTAGE_REPLICAS": "3"}, registry=registry)
    with pytest.raises(ConfigError, match="not below VANTAGE_REPLICAS=2"):
        load_config({**base, "HOSTNAME": "vantage-2", "VANTAGE_REPLICAS": "2"}, registry=registry)


async def test_a_run_cut_by_its_timeout_reports_the_values_it_kept() -> None:
    # blackbox_exporter reports what it resolved before its deadline; so does a cut run here.
    clock = FakeClock()
    agent, _ = agent_with([nested_check("kept", keep=True), nested_check("bare")], clock)
    await run_for(agent, clock, 9.99)
    kept, bare = agent.recorder.states["kept"].last, agent.recorder.states["bare"].last
    assert kept is not None and kept.reason is Reason.TIMEOUT
    assert dict(kept.values) == {"nested.found": 6.0}
    assert "no result within the timeout of 1s" in kept.message
    assert bare is not None and bare.reason is Reason.TIMEOUT and not bare.values
