"""Confirmation before a check is called down: retries within a run, failure and success
thresholds, flapping and the adaptive interval, against a real HTTP target on loopback that fails
the requests it is told to."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from agent.app import Agent, build_agent
from agent.config.settings import load_config
from agent.errors import ConfigError
from agent.sdk.types import DEFAULT_CONFIRMATION, Check

from .helpers import FakeClock, serve, thread_server
from .test_once import QUIET, once
from .test_reload import running, wait_for_runs, write

pytestmark = pytest.mark.anyio

ENV = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}


class Target:
    """An HTTP target that answers 503 to the requests whose number (from 1) is in ``failing``,
    and 200 to the others; ``times`` notes the clock's monotonic time at each request."""

    def __init__(self, failing: set[int] | None = None, clock: FakeClock | None = None) -> None:
        self.failing = failing or set()
        self.count = 0
        self.clock = clock
        self.times: list[float] = []
        self.app = web.Application()
        self.app.router.add_get("/", self._handle)

    async def _handle(self, _: web.Request) -> web.Response:
        self.count += 1
        if self.clock is not None:
            self.times.append(self.clock.monotonic())
        if self.count in self.failing:
            return web.Response(status=503, text="unavailable")
        return web.Response(text="ok")


def http_check(port: int, name: str = "api", **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": "http", "target": f"http://127.0.0.1:{port}/", **fields}


def agent_for(checks: list[dict[str, Any]], clock: FakeClock | None = None) -> Agent:
    environ = {"VANTAGE_CHECKS": yaml.safe_dump({"checks": checks}), **ENV}
    return build_agent(load_config(environ), environ, clock=clock)


def metrics(agent: Agent) -> dict[str, list[tuple[dict[str, str], float]]]:
    """/metrics as the agent renders it: samples by name."""
    text = agent.telemetry.render_prometheus().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def value(agent: Agent, name: str, **labels: str) -> float | None:
    samples = metrics(agent).get(name, [])
    found = [v for sample_labels, v in samples if labels.items() <= sample_labels.items()]
    assert len(found) <= 1, found
    return found[0] if found else None


async def wait_for_attempts_to_end(agent: Agent) -> None:
    """Wait (real time, bounded) until no attempt is in flight: the probes' requests are real."""
    with anyio.fail_after(10):
        while agent.recorder.in_flight:
            await anyio.sleep(0.005)


async def drive(agent: Agent, clock: FakeClock, seconds: float, step: float = 0.25) -> None:
    """Move the fake clock forward by ``seconds`` in steps, letting each attempt end first."""
    for _ in range(round(seconds / step)):
        await wait_for_attempts_to_end(agent)
        await clock.advance(step)
    await wait_for_attempts_to_end(agent)


async def run_from_first_tick(agent: Agent, clock: FakeClock, seconds: float, step: float = 0.25) -> float:
    """Run the agent's scheduler on the fake clock from check ``api``'s first tick to ``seconds``
    after it (``drive``), then stop it and close its HTTP client; that first tick's time."""
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(agent.scheduler.run)
            await clock.advance(0)
            first = agent.scheduler.due("api")
            assert first is not None
            await drive(agent, clock, first - clock.monotonic() + seconds, step=step)
            tg.cancel_scope.cancel()
    finally:
        await agent.http.aclose()
    return first


# ---------------------------------------------------------------- retries


async def test_a_failed_attempt_is_re_tested_and_every_attempt_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = Target(failing={1, 2})
    async with serve(target.app) as port:
        agent = agent_for([http_check(port, retries=3, retry_delay="20ms", interval="10s", timeout="2s")])
        try:
            with caplog.at_level(logging.INFO, logger="vantage.checks"):
                await agent.scheduler.run_once()
        finally:
            await agent.http.aclose()
    assert target.count == 3  # two failures re-tested, the third attempt passed: no fourth
    runs = {(labels["attempt"], labels["result"]): v for labels, v in metrics(agent)["probe_runs_total"]}
    assert runs == {("1", "failure"): 1.0, ("2", "failure"): 1.0, ("3", "success"): 1.0}
    assert value(agent, "probe_success", check="api") == 1.0  # the last attempt's, as blackbox's
    assert value(agent, "vantage_check_up", check="api") == 1.0
    state = agent.recorder.states["api"]
    assert state.attempts == 3 and state.runs == 3 and state.failures == 2
    assert state.confirmed == "up" and state.consecutive_failures == 0
    assert not [r for r in caplog.records if "is failing" in r.getMessage()]


async def test_retries_stop_at_their_count_and_the_run_fails() -> None:
    target = Target(failing={1, 2, 3, 4})
    async with serve(target.app) as port:
        agent = agent_for([http_check(port, retries=2, retry_delay="10ms", interval="10s", timeout="2s")])
        try:
            await agent.scheduler.run_once()
        finally:
            await agent.http.aclose()
    assert target.count == 3
    assert agent.recorder.states["api"].confirmed == "down"
    assert value(agent, "probe_runs_total", attempt="3", result="failure") == 1.0
    assert value(agent, "probe_success", check="api") == 0.0
    assert value(agent, "vantage_check_up", check="api") == 0.0


async def test_no_retry_is_made_when_the_next_tick_comes_first_and_that_tick_runs() -> None:
    clock = FakeClock()
    target = Target(failing=set(range(1, 100)), clock=clock)
    async with serve(target.app) as port:
        agent = agent_for(
            [http_check(port, retries=3, retry_delay="4s", interval="10s", timeout="3s")], clock
        )
        first = await run_from_first_tick(agent, clock, 10.5)
    # Attempts at 0, 4 and 8 s; a re-test at 12 s would come after the tick at 10 s, which runs.
    assert [round(t - first, 3) for t in target.times] == [0.0, 4.0, 8.0, 10.0]
    runs = {labels["attempt"]: v for labels, v in metrics(agent)["probe_runs_total"]}
    assert runs == {"1": 2.0, "2": 1.0, "3": 1.0}
    assert value(agent, "vantage_runs_skipped_total", check="api") is None  # no tick skipped


async def test_a_run_waiting_to_re_test_holds_no_slot_of_the_concurrency_bound() -> None:
    clock = FakeClock()
    flaky, steady = Target(failing={1}, clock=clock), Target(clock=clock)
    async with serve(flaky.app) as flaky_port, serve(steady.app) as steady_port:
        checks = [
            http_check(flaky_port, "flaky", retries=1, retry_delay="5s", interval="60s", timeout="2s"),
            http_check(steady_port, "steady", interval="60s", timeout="2s"),
        ]
        environ = {"VANTAGE_CHECKS": yaml.safe_dump({"checks": checks}), "VANTAGE_CONCURRENCY": "1", **ENV}
        agent = build_agent(load_config(environ), environ, clock=clock)
        start = clock.monotonic()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(agent.scheduler.run_once)
                await drive(agent, clock, 6)
        finally:
            await agent.http.aclose()
    # One slot: the steady check runs while the flaky one waits for its re-test, not after it.
    assert [t - start for t in steady.times] == [0.0]
    assert [t - start for t in flaky.times] == [0.0, 5.0]
    assert agent.recorder.states["flaky"].attempts == 2


# ---------------------------------------------------------------- thresholds and flapping


async def test_thresholds_hold_the_confirmed_state(caplog: pytest.LogCaptureFixture) -> None:
    # Runs: ok, ok, fail, fail, fail, ok, ok.
    target = Target(failing={3, 4, 5})
    async with serve(target.app) as port:
        agent = agent_for(
            [http_check(port, failure_threshold=3, success_threshold=2, interval="10s", timeout="2s")]
        )
        state = agent.recorder.states["api"]
        seen = []
        try:
            with caplog.at_level(logging.INFO, logger="vantage.checks"):
                for _ in range(7):
                    await agent.scheduler.run_once()
                    seen.append(
                        (
                            state.confirmed,
                            value(agent, "vantage_check_up", check="api"),
                            value(agent, "vantage_check_state_changes_total", check="api"),
                            sum("is failing" in r.getMessage() for r in caplog.records),
                        )
                    )
        finally:
            await agent.http.aclose()
    assert seen == [
        ("pending", None, None, 0),  # 1 successful run of 2
        ("up", 1.0, 0.0, 0),  # the first confirmation is no change
        ("up", 1.0, 0.0, 0),  # 1 failed run of 3: nobody is told
        ("up", 1.0, 0.0, 0),
        ("down", 0.0, 1.0, 1),  # the third in a row
        ("down", 0.0, 1.0, 1),  # 1 successful run of 2
        ("up", 1.0, 2.0, 1),
    ]
    assert [r.getMessage() for r in caplog.records if "recovered" in r.getMessage()] == [
        "check api has recovered"
    ]
    failing = [r.getMessage() for r in caplog.records if "is failing" in r.getMessage()]
    assert failing == ["check api is failing (3 failed runs in a row): http_status: HTTP 503 (expected 2xx)"]


async def test_a_check_is_pending_until_confirmed_and_has_no_up_point_meanwhile() -> None:
    target = Target(failing={1})
    async with serve(target.app) as port:
        agent = agent_for([http_check(port, failure_threshold=2, interval="10s", timeout="2s")])
        try:
            await agent.scheduler.run_once()
            assert agent.recorder.states["api"].confirmed == "pending"
            assert value(agent, "vantage_check_up", check="api") is None
            assert value(agent, "probe_success", check="api") == 0.0  # the raw result is there
        finally:
            await agent.http.aclose()


async def test_flapping_becomes_one_and_decays_after_an_hour() -> None:
    clock = FakeClock()
    target = Target(failing={2, 4})  # ok, fail, ok, fail, ok: up, then 4 changes
    async with serve(target.app) as port:
        agent = agent_for([http_check(port, flap_threshold=3, interval="10s", timeout="2s")], clock)
        state = agent.recorder.states["api"]
        flapping = []
        try:
            for _ in range(5):
                await agent.scheduler.run_once()
                flapping.append(value(agent, "vantage_check_flapping", check="api"))
                await clock.advance(60)
            assert state.changes_last_hour == 4
            await clock.advance(3600)
            await agent.scheduler.run_once()
        finally:
            await agent.http.aclose()
    assert flapping == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert value(agent, "vantage_check_flapping", check="api") == 0.0
    assert state.changes_last_hour == 0 and not state.flapping
    assert value(agent, "vantage_check_state_changes_total", check="api") == 4.0


# ---------------------------------------------------------------- adaptive interval


async def test_a_failing_check_ticks_at_its_down_interval_then_back_on_its_grid() -> None:
    clock = FakeClock()
    target = Target(failing={1, 2}, clock=clock)
    async with serve(target.app) as port:
        agent = agent_for([http_check(port, interval="60s", down_interval="10s", timeout="2s")], clock)
        scheduler = agent.scheduler
        dues = []
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(scheduler.run)
                await clock.advance(0)
                first = scheduler.due("api")
                assert first is not None
                for runs in (1, 2, 3, 4):
                    due = scheduler.due("api")
                    assert due is not None
                    await clock.advance(due - clock.monotonic())
                    with anyio.fail_after(10):
                        while agent.recorder.states["api"].runs < runs or agent.recorder.in_flight:
                            await anyio.sleep(0.005)
                    await clock.advance(0)
                    dues.append(round((scheduler.due("api") or 0) - first, 6))
                tg.cancel_scope.cancel()
        finally:
            await agent.http.aclose()
    # fail → 10 s later, fail → 10 s later, ok (confirmed up) → its own grid, 60 s from the first.
    assert dues == [10.0, 20.0, 60.0, 120.0]
    assert [round(t - first, 6) for t in target.times] == [0.0, 10.0, 20.0, 60.0]


async def test_the_down_interval_holds_until_the_check_is_confirmed_up() -> None:
    clock = FakeClock()
    target = Target(failing={1}, clock=clock)
    async with serve(target.app) as port:
        agent = agent_for(
            [http_check(port, interval="60s", down_interval="10s", timeout="2s", success_threshold=2)], clock
        )
        first = await run_from_first_tick(agent, clock, 100, step=0.5)
    # fail; ok (1 of 2 to be up: still fast); ok (up) → back to the grid at 60 s.
    assert [round(t - first, 6) for t in target.times] == [0.0, 10.0, 20.0, 60.0]


# ---------------------------------------------------------------- shutdown, removal, reload


async def test_shutdown_during_a_retry_delay_ends_at_once() -> None:
    clock = FakeClock()
    target = Target(failing={1}, clock=clock)
    async with serve(target.app) as port:
        agent = agent_for(
            [http_check(port, retries=1, retry_delay="50s", interval="60s", timeout="2s")], clock
        )
        finished = []

        async def run() -> None:
            await agent.scheduler.run(drain_timeout=30)
            finished.append(clock.monotonic())

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await clock.advance(0)
                with anyio.fail_after(10):
                    while agent.recorder.states["api"].runs == 0:
                        await clock.advance(0.5)
                        await wait_for_attempts_to_end(agent)
                stopped = clock.monotonic()
                agent.scheduler.stop()
                # Neither the 50 s delay nor the 30 s drain is waited for: the clock stands still.
                with anyio.fail_after(10):
                    while not finished:
                        await clock.advance(0)
        finally:
            await agent.http.aclose()
    assert finished == [stopped]
    assert target.count == 1  # the re-test was never made
    assert agent.recorder.in_flight == 0 and agent.recorder.states["api"].runs == 1


async def test_removing_a_check_cuts_its_retry_delay() -> None:
    clock = FakeClock()
    target = Target(failing={1}, clock=clock)
    async with serve(target.app) as port:
        agent = agent_for(
            [http_check(port, retries=1, retry_delay="50s", interval="60s", timeout="2s")], clock
        )
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(agent.scheduler.run)
                with anyio.fail_after(10):
                    while agent.recorder.states["api"].runs == 0:
                        await clock.advance(0.5)
                        await wait_for_attempts_to_end(agent)
                with anyio.fail_after(10):
                    assert await agent.scheduler.remove(["api"], drain=30) == []
                assert agent.scheduler.names == []
                tg.cancel_scope.cancel()
        finally:
            await agent.http.aclose()
    assert target.count == 1


# ---------------------------------------------------------------- vantage once, validation


def test_once_re_tests_and_shows_the_attempts() -> None:
    target = Target(failing={1, 3})  # each command's first attempt fails
    with thread_server(target.app) as port:
        checks = [http_check(port, retries=2, retry_delay="10ms", interval="30s", timeout="2s")]
        result = once("--json", env={"VANTAGE_CHECKS": yaml.safe_dump({"checks": checks}), **QUIET})
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["results"][0]["attempts"] == 2
        table = once(env={"VANTAGE_CHECKS": yaml.safe_dump({"checks": checks}), **QUIET})
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split()[:4] == ["CHECK", "TYPE", "RESULT", "ATTEMPTS"]
    assert row.split()[:4] == ["api", "http", "ok", "2"]
    assert target.count == 4


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"retries": 11}, "field 'retries': must be at most 10"),
        ({"retries": 1, "retry_delay": "1m"}, "the retry delay (1m) must be below the interval (30s)"),
        ({"failure_threshold": 0}, "field 'failure_threshold': must be at least 1"),
        ({"down_interval": "5s"}, "the down interval (5s) must be above the timeout (10s)"),
        ({"down_interval": "30s"}, "the down interval (30s) must be below the interval (30s)"),
        ({"retrys": 2}, "unknown field 'retrys' in check 'api' (checks[0]): did you mean 'retries'?"),
    ],
)
def test_confirmation_settings_are_validated_in_the_users_words(fields: dict[str, Any], message: str) -> None:
    check = {"name": "api", "type": "http", "target": "http://127.0.0.1:1/", "interval": "30s", **fields}
    with pytest.raises(ConfigError) as raised:
        load_config({"VANTAGE_CHECKS": yaml.safe_dump({"checks": [check]})})
    assert message in str(raised.value)


def test_defaults_give_confirmation_settings_and_a_check_overrides_them() -> None:
    document = {
        "defaults": {"retries": 2, "retry_delay": "2s", "failure_threshold": 3, "down_interval": "20s"},
        "checks": [
            {"name": "a", "type": "http", "target": "http://127.0.0.1:1/"},
            {"name": "b", "type": "http", "target": "http://127.0.0.1:1/", "retries": 0},
        ],
    }
    a, b = (e.check for e in load_config({"VANTAGE_CHECKS": yaml.safe_dump(document)}).entries)
    assert (a.retries, a.retry_delay, a.failure_threshold, a.down_interval) == (2, 2.0, 3, 20.0)
    assert (b.retries, b.failure_threshold) == (0, 3)


def test_confirmation_settings_cost_a_check_that_leaves_them_nothing() -> None:
    document = {
        "defaults": {"labels": {"team": "payments"}},
        "checks": [
            {"name": "a", "type": "http", "target": "http://127.0.0.1:1/"},
            {"name": "b", "type": "http", "target": "http://127.0.0.1:1/"},
            {"name": "c", "type": "http", "target": "http://127.0.0.1:1/", "retries": 2},
            {"name": "d", "type": "http", "target": "http://127.0.0.1:1/", "retries": 2},
        ],
    }
    a, b, c, d = (e.check for e in load_config({"VANTAGE_CHECKS": yaml.safe_dump(document)}).entries)
    # One shared object for the defaults, one for each set of settings written alike: no field of
    # its own per check (each would grow every check's attribute table).
    assert a.confirmation is b.confirmation is DEFAULT_CONFIRMATION
    assert c.confirmation is d.confirmation and c.retries == 2 and c.failure_threshold == 1
    assert len(vars(a)) == len(vars(c)) == len(Check.model_fields)
    assert a.model_dump()["confirmation"]["retries"] == 0


async def test_a_reload_keeps_the_confirmed_state_of_an_unchanged_check(tmp_path: Path) -> None:
    target = Target(failing=set(range(1, 10_000)))
    async with serve(target.app) as port:
        path = tmp_path / "checks.yml"
        down = http_check(port, "down", interval="300ms", timeout="250ms", failure_threshold=2)
        write(path, [down])
        async with running(path) as agent:
            await wait_for_runs(agent, "down", 2)
            state = agent.recorder.states["down"]
            assert state.confirmed == "down"
            write(path, [down, http_check(port, "other", interval="300ms", timeout="250ms")])
            assert agent.reloader is not None
            assert (await agent.reloader.reload("test")).added == ("other",)
            assert agent.recorder.states["down"] is state and state.confirmed == "down"
            await wait_for_runs(agent, "down", state.runs + 1)
            # Still down, not confirmed again: no change counted, no new "is failing".
            assert value(agent, "vantage_check_state_changes_total", check="down") == 0.0
            assert value(agent, "vantage_check_up", check="down") == 0.0


async def test_api_checks_and_the_status_page_show_the_confirmed_state() -> None:
    target = Target(failing={2, 3})  # ok; then a run of two failed attempts
    async with serve(target.app) as port:
        checks = [
            http_check(port, retries=1, retry_delay="10ms", failure_threshold=3, interval="10s", timeout="2s")
        ]
        environ = {
            "VANTAGE_CHECKS": yaml.safe_dump({"checks": checks}),
            "VANTAGE_HOST": "127.0.0.1",
            "VANTAGE_PORT": "0",
            **ENV,
        }
        agent = build_agent(load_config(environ), environ)
        try:
            async with anyio.create_task_group() as tg:
                server = await tg.start(agent.server.serve)
                await agent.scheduler.run_once()
                await agent.scheduler.run_once()
                async with aiohttp.ClientSession() as session:
                    async with session.get(f"http://127.0.0.1:{server}/api/checks/api") as response:
                        api = await response.json()
                    async with session.get(f"http://127.0.0.1:{server}/") as response:
                        index = await response.text()
                    async with session.get(f"http://127.0.0.1:{server}/checks/api") as response:
                        page = await response.text()
                tg.cancel_scope.cancel()
        finally:
            await agent.http.aclose()
    assert api["state"] == "failing"  # the last attempt's result
    assert api["confirmed"] == "up"  # 1 failed run of 3
    assert api["attempts"] == 2 and api["consecutive_failures"] == 1 and api["runs"] == 3
    assert api["flapping"] is False and api["state_changes_last_hour"] == 0
    assert api["confirmed_since"].endswith("Z")
    assert '<span class="state up">up</span> <span class="muted">1 of 3 failed</span>' in index
    assert "<dt>attempts, last run</dt><dd>2</dd>" in page
    assert "<dt>state changes 1 h</dt><dd>0</dd>" in page
