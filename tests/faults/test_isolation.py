"""One check's fault stays that check's: a plugin raising any BaseException, a state directory that
cannot be written, a target whose bytes carry control characters.

What the user is promised: the faulty check reports ``internal`` (or goes on with its state in
memory) run after run on its schedule, the other checks keep succeeding, shutdown drains as usual,
the log says it once, and nothing a target sent reaches a log line or the status API raw.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
import yaml
from aiohttp import web

from agent.app import build_agent
from agent.config.registry import Registry
from agent.config.settings import load_config
from agent.sdk import (
    AssertionOutcome,
    Check,
    Probe,
    ProbeContext,
    ProbeResult,
    ProbeSettings,
    Reason,
    StepResult,
    visible,
)

from ..fakes import entry_points
from ..helpers import FakeClock, config_from, serve
from ..inbound import running_agent
from ..test_http_probe import TELEMETRY_ENV, http_check
from ..test_scheduler import ENV, make_agent, sleep_check

# ---------------------------------------------------------------- a plugin that raises anything

KINDS = ["CancelledError", "SystemExit", "KeyboardInterrupt", "BaseException", "group"]


def run_agent_loop(main: Any) -> None:
    """``anyio.run(main)``, failing the test (rather than ending the session) on an escape."""
    try:
        anyio.run(main, backend="asyncio")
    except BaseException as exc:  # any escape is the failure under test
        pytest.fail(f"{type(exc).__name__} escaped the agent: {exc!r}")


@pytest.mark.parametrize("kind", KINDS)
def test_a_plugin_raising_any_base_exception_fails_only_its_check(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Each run of "crashing" raises after 6 s; "healthy" sleeps 6 s and succeeds. Both every 10 s.
    clock = FakeClock()
    agent, probe = make_agent(
        [sleep_check("crashing", 10, seconds=6, raises=kind), sleep_check("healthy", 10, seconds=6)], clock
    )
    drained = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await agent.scheduler.run(drain_timeout=30)
                drained.append(clock.monotonic())

            tg.start_soon(run)
            await clock.advance(40)
            # Stop while a run of each is in flight (6 s of every 10 s: two such spans must overlap).
            for _ in range(40):
                if probe.active_per_check.get("crashing") and probe.active_per_check.get("healthy"):
                    break
                await clock.advance(0.5)
            assert probe.active_per_check["crashing"] == probe.active_per_check["healthy"] == 1
            agent.scheduler.stop()
            await clock.advance(7)  # the runs in flight end: one raising, one succeeding
            with anyio.fail_after(10):
                while not drained:
                    await anyio.sleep(0.01)

    with caplog.at_level(logging.ERROR, logger="vantage.scheduler"):
        run_agent_loop(main)
    crashing, healthy = agent.recorder.states["crashing"], agent.recorder.states["healthy"]
    # Every run started was recorded, the ones in flight at the stop included: drained, not cut.
    assert crashing.runs == len(probe.starts["crashing"]) >= 4
    assert healthy.runs == len(probe.starts["healthy"]) >= 4
    assert abs(crashing.runs - healthy.runs) <= 1  # both on their schedule
    assert crashing.failures == crashing.runs and healthy.failures == 0
    assert crashing.last is not None and crashing.last.reason is Reason.INTERNAL
    name = "BaseExceptionGroup" if kind == "group" else kind
    assert crashing.last.message.startswith(f"the probe crashed: {name}")
    crashes = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert len(crashes) == 1 and crashes[0].exc_info is not None  # once per check, with a traceback


def test_the_agents_own_cancellation_still_ends_a_run() -> None:
    # Shutdown with no time left to drain: the run in flight is cancelled and abandoned, not
    # recorded as a crash (the plugin's CancelledError handling must not swallow the agent's).
    clock = FakeClock()
    agent, probe = make_agent([sleep_check("long", 100, seconds=60)], clock)
    finished = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await agent.scheduler.run(drain_timeout=0.01)
                finished.append(True)

            tg.start_soon(run)
            for _ in range(250):
                if probe.active_per_check.get("long"):
                    break
                await clock.advance(0.5)
            agent.scheduler.stop()
            await clock.advance(0.02)  # the drain timeout is on the scheduler's clock, too
            with anyio.fail_after(10):
                while not finished:
                    await anyio.sleep(0.01)

    run_agent_loop(main)
    state = agent.recorder.states["long"]
    assert len(probe.starts["long"]) == 1
    assert state.runs == 0 and state.last is None


class SlipperySettings(ProbeSettings):
    pass


class SlipperyProbe(Probe[SlipperySettings]):
    """Turns the agent's cancellation into a CancelledError of its own making (as some libraries do)."""

    name = "slippery"
    Settings = SlipperySettings

    async def run(self, check: Check, settings: SlipperySettings, ctx: ProbeContext) -> ProbeResult:
        cancelled = False
        try:
            await anyio.sleep(30)
        except asyncio.CancelledError:
            cancelled = True
        if cancelled:  # raised outside the handler: no __context__ leads back to anyio's own
            raise asyncio.CancelledError("the plugin's own")
        return ProbeResult(success=True)


@pytest.mark.anyio
async def test_a_timeout_the_plugin_reraises_as_its_own_cancellation_is_still_a_timeout() -> None:
    from importlib.metadata import EntryPoint

    registry = Registry(
        [
            *entry_points(),
            EntryPoint("slippery", "tests.faults.test_isolation:SlipperyProbe", "vantage.probes"),
        ]
    )
    check = {"name": "slips", "type": "slippery", "target": "x", "interval": 5, "timeout": 0.2}
    environ = {"VANTAGE_CHECKS": yaml.safe_dump({"checks": [check]}), **ENV}
    agent = build_agent(load_config(environ, registry=registry), environ)
    await agent.scheduler.run_once()
    last = agent.recorder.states["slips"].last
    assert last is not None and last.reason is Reason.TIMEOUT, last


# ---------------------------------------------------------------- a state directory that cannot be written

V1 = {"data": [{"id": "ch_1", "amount": 5}]}
V2 = {"data": [{"amount": "5.00"}]}


@pytest.mark.anyio
async def test_a_state_dir_that_cannot_be_written_is_warned_once_and_probing_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A directory under a regular file: mkdir and writes fail (ENOTDIR) even for root.
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    state_dir = blocker / "sub"
    body: dict[str, Any] = V1

    async def vendor(_: web.Request) -> web.Response:
        return web.json_response(body)

    application = web.Application()
    application.router.add_get("/charges", vendor)
    async with serve(application) as port:
        check = http_check("watch", f"http://127.0.0.1:{port}/charges", schema_drift={"fail": True})
        agent = build_agent(config_from([check], VANTAGE_STATE_DIR=str(state_dir)), TELEMETRY_ENV)
        results = []
        try:
            with caplog.at_level(logging.INFO, logger="vantage"):
                for step in range(4):
                    if step == 2:  # the directory is repaired; the baseline kept in memory is written
                        blocker.unlink()
                        state_dir.mkdir(parents=True)
                    if step == 3:
                        body = V2
                    await agent.scheduler.run_once()
                    results.append(agent.recorder.states["watch"].last)
        finally:
            await agent.http.aclose()
    assert all(r is not None and r.success for r in results[:3]), [r and r.message for r in results]
    # The baseline lived in memory all along: the drift is still caught against it.
    assert results[3] is not None and results[3].reason is Reason.SCHEMA
    stored = json.loads((state_dir / "schema" / "watch.json").read_text())
    assert stored["shape"]["$.data[*].amount"] == ["number"]
    state_lines = [r for r in caplog.records if r.name == "vantage.state"]
    assert [(r.levelno, r.getMessage().split(" (")[0]) for r in state_lines] == [
        (logging.WARNING, f"cannot write {state_dir / 'schema' / 'watch.json'}"),
        (logging.INFO, f"{state_dir / 'schema' / 'watch.json'} is written again"),
    ]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.anyio
async def test_heartbeats_go_on_in_memory_when_the_state_dir_cannot_be_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    check = {
        "name": "job",
        "type": "heartbeat",
        "target": "a job",
        "interval": "1m",
        "timeout": "2s",
        "settings": {"period": "1h", "token": "${JOB_TOKEN}"},
    }
    token = "job-token-0123456789"
    with caplog.at_level(logging.INFO, logger="vantage"):
        async with (
            running_agent([check], JOB_TOKEN=token, VANTAGE_STATE_DIR=str(blocker / "sub")) as running,
            aiohttp.ClientSession() as session,
        ):
            results = []
            for _ in range(3):
                async with session.get(f"{running.inbound}/heartbeat/job", params={"token": token}) as r:
                    assert r.status == 200
                results.append((await running.run_once())["job"])
    assert all(r.success and "probe.heartbeat.age" in r.values for r in results)
    warnings = [r.getMessage() for r in caplog.records if r.name == "vantage.state"]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"cannot write {blocker / 'sub' / 'heartbeat-job.json'}"
    )


# ---------------------------------------------------------------- control characters from a target

HOSTILE = "\x00\x1b[31mred\r\nFAKE LOG LINE"
ESCAPED = "\\x00\\x1b[31mred\\r\\nFAKE LOG LINE"
CONTROLS = "\x00\x1b\r\n"


def test_results_escape_control_characters_where_they_are_made() -> None:
    outcome = AssertionOutcome("body contains", False, HOSTILE, f"got {HOSTILE}")
    step = StepResult(f"step{HOSTILE}", False, 0.1, Reason.ASSERTION, HOSTILE)
    result = ProbeResult.failure(
        Reason.ASSERTION, HOSTILE, assertions=(outcome,), steps=(step,), attributes={"a": HOSTILE, "n": 1}
    )
    assert result.message == ESCAPED
    assert result.assertions[0].actual == ESCAPED and result.assertions[0].message == f"got {ESCAPED}"
    assert result.steps[0].message == ESCAPED and result.steps[0].name == f"step{ESCAPED}"
    assert result.attributes == {"a": ESCAPED, "n": 1}
    assert visible("\x7f\x85\u2028\ttab") == "\\x7f\\x85\\u2028\\ttab"
    clean = ProbeResult(success=True, message="plain text, a \\ backslash, ünïcödé")
    assert clean.message == "plain text, a \\ backslash, ünïcödé"
    assert visible(ESCAPED) == ESCAPED  # escaping twice changes nothing


@pytest.mark.anyio
async def test_a_targets_control_characters_reach_the_api_and_log_escaped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def hostile(_: web.Request) -> web.Response:
        return web.Response(body=HOSTILE.encode(), content_type="text/plain")

    application = web.Application()
    application.router.add_get("/", hostile)
    async with serve(application) as port:
        check = http_check(
            "hostile",
            f"http://127.0.0.1:{port}/",
            **{"assert": [{"source": "body", "op": "contains", "value": "ok"}]},
        )
        agent = build_agent(config_from([check], VANTAGE_HOST="127.0.0.1", VANTAGE_PORT="0"), TELEMETRY_ENV)
        try:
            with caplog.at_level(logging.INFO, logger="vantage"):
                async with anyio.create_task_group() as tg:
                    api = await tg.start(agent.server.serve)
                    await agent.scheduler.run_once()
                    async with (
                        aiohttp.ClientSession() as session,
                        session.get(f"http://127.0.0.1:{api}/api/checks") as response,
                    ):
                        text = await response.text()
                    tg.cancel_scope.cancel()
        finally:
            await agent.http.aclose()
    last = json.loads(text)["checks"][0]["last"]
    assert last["reason"] == "assertion"
    assert ESCAPED in last["message"] and ESCAPED in last["assertions"][0]["actual"]
    shown = [last["message"], *(a[key] for a in last["assertions"] for key in ("actual", "message"))]
    assert not [text for text in shown if any(c in text for c in CONTROLS)]
    failing = [r.getMessage() for r in caplog.records if "is failing" in r.getMessage()]
    assert len(failing) == 1 and ESCAPED in failing[0]
    assert not any(c in failing[0] for c in CONTROLS)
