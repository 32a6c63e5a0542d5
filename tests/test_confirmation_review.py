"""Confirmation, reviewed: edge cases of the adaptive interval and of re-tests against the
scheduler's other rules, on a real HTTP target on loopback and the fake clock."""

from __future__ import annotations

import anyio
import pytest
import yaml
from aiohttp import web

from agent.app import build_agent
from agent.config.settings import load_config
from agent.errors import ConfigError
from agent.schedule.sharding import offset
from agent.sdk.reasons import Reason

from .helpers import FakeClock, serve
from .test_confirmation import ENV, Target, agent_for, drive, http_check, run_from_first_tick

pytestmark = pytest.mark.anyio


async def test_a_check_confirmed_up_on_a_fast_tick_that_is_also_a_grid_tick_runs_once_there() -> None:
    # interval 60 s, down_interval 10 s: the fast ticks after a failed run at 0 s are 10, 20, ...
    # and the one at 60 s is also the check's own grid tick. The run there that confirms the check
    # up sends it back to its grid: its next tick is 120 s, not the 60 s it has just run.
    clock = FakeClock()
    target = Target(failing=set(range(1, 7)), clock=clock)  # the runs at 0..50 s fail
    async with serve(target.app) as port:
        agent = agent_for([http_check(port, interval="60s", down_interval="10s", timeout="2s")], clock)
        first = await run_from_first_tick(agent, clock, 130, step=0.5)
    times = [round(t - first, 6) for t in target.times]
    assert times == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0]
    assert agent.recorder.states["api"].confirmed == "up"


def test_the_confirmation_holder_is_not_a_field_to_write() -> None:
    # Check keeps the confirmation fields in ``confirmation``; written by hand, it went past the
    # checks against the interval (a retry delay of 5 minutes on a 1-minute check was accepted).
    check = {
        "name": "api",
        "type": "http",
        "target": "http://127.0.0.1:1/",
        "interval": "60s",
        "confirmation": {"retries": 2, "retry_delay": "5m"},
    }
    with pytest.raises(ConfigError) as raised:
        load_config({"VANTAGE_CHECKS": yaml.safe_dump({"checks": [check]})})
    assert "unknown field 'confirmation' in check 'api' (checks[0])" in str(raised.value)
    assert "write retries, retry_delay" in str(raised.value)


def _names_ticking_apart(low: float, high: float, interval: float = 60.0) -> tuple[str, str]:
    """Two check names whose ticks (region "local") are ``low`` to ``high`` seconds apart."""
    first = "flaky"
    phase = offset(first, "local") * interval
    for n in range(10_000):
        name = f"slow{n}"
        if low <= (offset(name, "local") * interval - phase) % interval <= high:
            return first, name
    raise AssertionError("no name found")


async def test_a_re_test_queued_for_a_slot_is_not_made_once_the_agent_stops() -> None:
    # One slot. "flaky" fails and waits 5 s to re-test; meanwhile "slow" takes the slot and hangs.
    # The re-test, due while the slot is taken, queues for it. The agent stops: a run waiting to
    # re-test ends at once, whether its delay is still running or it waits for a slot.
    clock = FakeClock()
    flaky_name, slow_name = _names_ticking_apart(1.0, 4.0)
    flaky = Target(failing={1}, clock=clock)
    release = anyio.Event()

    async def hang(_: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    slow = web.Application()
    slow.router.add_get("/", hang)
    async with serve(flaky.app) as flaky_port, serve(slow) as slow_port:
        checks = [
            http_check(flaky_port, flaky_name, retries=1, retry_delay="5s", interval="60s", timeout="2s"),
            http_check(slow_port, slow_name, interval="60s", timeout="30s"),
        ]
        environ = {"VANTAGE_CHECKS": yaml.safe_dump({"checks": checks}), "VANTAGE_CONCURRENCY": "1", **ENV}
        agent = build_agent(load_config(environ), environ, clock=clock)
        scheduler = agent.scheduler
        try:
            async with anyio.create_task_group() as tg:
                finished: list[float] = []

                async def run() -> None:
                    await scheduler.run(drain_timeout=60)
                    finished.append(clock.monotonic())

                tg.start_soon(run)
                await clock.advance(0)
                due = scheduler.due(flaky_name)
                assert due is not None
                # Up to the re-test's time: flaky failed, slow hangs in the slot, the re-test queued.
                with anyio.fail_after(10):
                    while clock.monotonic() < due + 5.5:
                        await clock.advance(0.25)
                        while agent.recorder.in_flight > (1 if clock.monotonic() > due + 1 else 0):
                            await anyio.sleep(0.005)
                assert agent.recorder.states[flaky_name].attempts == 1
                assert agent.recorder.states[slow_name].runs == 0  # hanging
                scheduler.stop()
                # slow's run times out in the drain and frees the slot.
                with anyio.fail_after(10):
                    while not finished:
                        await clock.advance(1)
                        await anyio.sleep(0.01)  # a re-test made meanwhile reaches its target
        finally:
            release.set()
            await agent.http.aclose()
    assert flaky.count == 1  # the re-test was not made after the agent stopped
    assert agent.recorder.states[flaky_name].attempts == 1


def test_a_check_that_does_not_re_test_is_not_refused_for_the_defaults_retry_delay() -> None:
    # defaults re-test the slow checks 10 s apart; a 5 s check says retries: 0. It never waits a
    # retry delay, so the defaults' 10 s (above its interval) is no reason to refuse it.
    document = {
        "defaults": {"retries": 1, "retry_delay": "10s"},
        "checks": [
            {"name": "slow", "type": "http", "target": "http://127.0.0.1:1/", "interval": "60s"},
            {"name": "fast", "type": "http", "target": "http://127.0.0.1:1/", "interval": "5s", "retries": 0},
        ],
    }
    config = load_config({"VANTAGE_CHECKS": yaml.safe_dump(document)})
    checks = {entry.check.name: entry.check for entry in config.entries}
    assert (checks["slow"].retries, checks["fast"].retries) == (1, 0)
    # One that re-tests is still held to it.
    document["checks"][1]["retries"] = 1
    with pytest.raises(ConfigError) as raised:
        load_config({"VANTAGE_CHECKS": yaml.safe_dump(document)})
    assert "check 'fast' (checks[1]), field 'retry_delay': the retry delay (10s) must be below" in str(
        raised.value
    )


async def test_a_check_removed_or_changed_while_its_tick_is_moved_keeps_no_trace_of_it() -> None:
    # A failed run moves the next tick to down_interval (10 s) after it. The check is then
    # changed (removed and added again, as a reload does): its moved tick is gone with it, and the
    # new one ticks from its own phase, once per tick. Then it is removed for good: no more runs.
    clock = FakeClock()
    target = Target(failing=set(range(1, 100)), clock=clock)
    async with serve(target.app) as port:
        agent = agent_for([http_check(port, interval="60s", down_interval="10s", timeout="2s")], clock)
        scheduler = agent.scheduler
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(scheduler.run)
                await clock.advance(0)
                first = scheduler.due("api")
                assert first is not None
                await drive(agent, clock, first - clock.monotonic() + 1)
                assert scheduler.due("api") == first + 10  # moved
                [entry] = agent.entries
                assert await scheduler.remove(["api"], drain=5) == []
                scheduler.add([entry])
                assert scheduler.due("api") == first + 60  # its phase, not the moved tick
                await drive(agent, clock, 60)
                assert scheduler.due("api") == first + 70  # failed again at 60 s: moved again
                assert await scheduler.remove(["api"], drain=5) == []
                await drive(agent, clock, 60)
                tg.cancel_scope.cancel()
        finally:
            await agent.http.aclose()
    assert [round(t - first, 6) for t in target.times] == [0.0, 60.0]


async def test_a_rate_limited_attempt_is_not_re_tested_even_without_retry_after() -> None:
    # A 429 without Retry-After (or a quota under fail_if_ratelimit_below) is a rate limit all
    # the same: re-testing it would only spend the quota the check watches.
    count = 0

    async def limited(_: web.Request) -> web.Response:
        nonlocal count
        count += 1
        return web.Response(status=429, text="slow down")

    app = web.Application()
    app.router.add_get("/", limited)
    async with serve(app) as port:
        agent = agent_for([http_check(port, retries=2, retry_delay="10ms", interval="30s", timeout="2s")])
        try:
            await agent.scheduler.run_once()
        finally:
            await agent.http.aclose()
    assert count == 1
    state = agent.recorder.states["api"]
    assert state.attempts == 1 and state.last is not None and state.last.reason is Reason.RATE_LIMITED
    assert state.confirmed == "down"  # the run's outcome still counts


async def test_a_rate_limited_check_does_not_tick_at_its_down_interval() -> None:
    # interval 60 s, down_interval 10 s: a failed run brings the next tick 10 s closer, but a
    # rate-limited one (a 429 without Retry-After) does not: probing faster only spends the quota.
    clock = FakeClock()
    count = 0
    times: list[float] = []

    async def handle(_: web.Request) -> web.Response:
        nonlocal count
        count += 1
        times.append(clock.monotonic())
        if count == 1:
            return web.Response(status=503)  # a failure: the next tick comes sooner
        return web.Response(status=429, text="slow down")

    app = web.Application()
    app.router.add_get("/", handle)
    async with serve(app) as port:
        agent = agent_for([http_check(port, interval="60s", down_interval="10s", timeout="2s")], clock)
        first = await run_from_first_tick(agent, clock, 125, step=0.5)
    # 503 at 0 s: fast; 429 at 10 s: back on the grid (60 s, 120 s), not every 10 s.
    assert [round(t - first, 6) for t in times] == [0.0, 10.0, 60.0, 120.0]
