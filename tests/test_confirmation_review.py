"""Confirmation, reviewed: edge cases of the adaptive interval and of re-tests against the
scheduler's other rules, on a real HTTP target on loopback and the fake clock."""

from __future__ import annotations

import anyio
import pytest
import yaml

from agent.config.settings import load_config
from agent.errors import ConfigError

from .helpers import FakeClock, serve
from .test_confirmation import Target, agent_for, drive, http_check

pytestmark = pytest.mark.anyio


async def test_a_check_confirmed_up_on_a_fast_tick_that_is_also_a_grid_tick_runs_once_there() -> None:
    # interval 60 s, down_interval 10 s: the fast ticks after a failed run at 0 s are 10, 20, ...
    # and the one at 60 s is also the check's own grid tick. The run there that confirms the check
    # up sends it back to its grid: its next tick is 120 s, not the 60 s it has just run.
    clock = FakeClock()
    target = Target(failing=set(range(1, 7)), clock=clock)  # the runs at 0..50 s fail
    async with serve(target.app) as port:
        agent = agent_for([http_check(port, interval="60s", down_interval="10s", timeout="2s")], clock)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(agent.scheduler.run)
                await clock.advance(0)
                first = agent.scheduler.due("api")
                assert first is not None
                await drive(agent, clock, first - clock.monotonic() + 130, step=0.5)
                tg.cancel_scope.cancel()
        finally:
            await agent.http.aclose()
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
