"""The heartbeat probe: a job script that pings and then stops, failures it reports, tokens, and
the last ping remembered across a restart."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from agent.app import build_agent
from agent.errors import ConfigError
from agent.sdk import Reason

from .fakes import SteppingClock
from .helpers import config_from, free_port
from .inbound import TELEMETRY_ENV, running_agent

pytestmark = pytest.mark.anyio

TOKEN = "job-token-0123456789"

JOB = textwrap.dedent(
    """
    import sys, time, urllib.request
    url, token, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for n in range(count):
        request = urllib.request.Request(f"{url}?status=ok&duration=0.{n}", method="POST", data=b"",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        time.sleep(0.1)
    """
)


def heartbeat(name: str, **settings: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "heartbeat",
        "target": f"{name} job",
        "interval": "1m",
        "timeout": "2s",
        "settings": {"period": "400ms", "grace": "100ms", "token": "${JOB_TOKEN}", **settings},
    }


@pytest.mark.slow  # starts the job script as a process
async def test_a_job_that_pings_and_then_stops() -> None:
    async with running_agent([heartbeat("sync-job")], JOB_TOKEN=TOKEN) as running:
        url = f"{running.inbound}/heartbeat/sync-job"
        job = await anyio.open_process([sys.executable, "-c", JOB, url, TOKEN, "5"])
        with anyio.fail_after(20):  # the interpreter starts, then pings every 100 ms
            await running.agent.inbox.wait("sync-job", 1)
        alive = (await running.run_once())["sync-job"]
        await job.wait()
        assert job.returncode == 0
        await anyio.sleep(0.7)
        stopped = (await running.run_once())["sync-job"]
        pings = running.metric("probe_heartbeat_pings")
    assert alive.success, alive.message
    assert alive.values["probe.heartbeat.age"] < 0.5
    assert stopped.reason is Reason.STALE
    assert stopped.message.startswith("the last ping was ")
    assert stopped.message.endswith("ago; one is expected every 400ms (+100ms grace)")
    assert stopped.values["probe.heartbeat.job_duration"] == 0.4  # what the last ping said
    assert sum(value for labels, value in pings if labels["status"] == "ok") == 5


async def test_reported_failures_tokens_and_formats() -> None:
    async with running_agent([heartbeat("etl")], JOB_TOKEN=TOKEN) as running:
        url = f"{running.inbound}/heartbeat/etl"
        async with aiohttp.ClientSession() as session:

            async def ping(method: str = "POST", **kwargs: Any) -> tuple[int, str]:
                async with session.request(method, url, **kwargs) as response:
                    return response.status, await response.text()

            bearer = {"Authorization": f"Bearer {TOKEN}"}
            assert (await ping("GET", params={"token": TOKEN}))[0] == 200
            text = {"X-Vantage-Token": TOKEN, "Content-Type": "text/plain"}
            assert (await ping(headers=text, data=b"all good"))[0] == 200
            assert (await ping(headers={"X-Vantage-Token": TOKEN}, data=b"\x00"))[0] == 415
            assert (await ping("GET", params={"token": "wrong-token-000000"}))[0] == 401
            assert (await ping("GET"))[0] == 401
            assert await ping(headers=bearer, json=[1, 2]) == (
                400,
                '{"error": "the JSON body is not an object"}',
            )
            assert (await ping(headers=bearer, params={"status": "maybe"}))[0] == 400
            assert (await ping(headers=bearer, params={"duration": "nan"}))[0] == 400
            deep = b"[" * 100_000 + b"]" * 100_000  # nested past the JSON decoder's recursion limit
            json_headers = {**bearer, "Content-Type": "application/json"}
            assert await ping(headers=json_headers, data=deep) == (400, '{"error": "the body is not JSON"}')
            ok = (await running.run_once())["etl"]
            message = "row 17: duplicate key\n\x1b[31mINJECTED\x1b[0m " + "x" * 500
            assert (await ping(headers=bearer, json={"status": "fail", "message": message}))[0] == 200
            failed = (await running.run_once())["etl"]
    assert ok.success, ok.message
    assert failed.reason is Reason.JOB_FAILED
    assert failed.message.startswith("the job reported a failure: row 17: duplicate key [31mINJECTED [0m x")
    assert "\n" not in failed.message and "\x1b" not in failed.message and len(failed.message) < 260


async def test_the_last_ping_survives_a_restart(tmp_path: Path) -> None:
    check = heartbeat("nightly", period="1h")
    async with running_agent([check], JOB_TOKEN=TOKEN, VANTAGE_STATE_DIR=str(tmp_path)) as running:
        async with aiohttp.ClientSession() as session:
            url = f"{running.inbound}/heartbeat/nightly"
            async with session.get(url, params={"token": TOKEN}) as response:
                assert response.status == 200
        first = (await running.run_once())["nightly"]
    async with running_agent([check], JOB_TOKEN=TOKEN, VANTAGE_STATE_DIR=str(tmp_path)) as running:
        after_restart = (await running.run_once())["nightly"]
    assert first.success
    assert "probe.heartbeat.age" in after_restart.values  # known without a new ping
    assert "vantage.heartbeat.first_period" not in after_restart.attributes
    # The state directory also holds the status page's history (status-history.sqlite3).
    names = [path.name async for path in anyio.Path(tmp_path).iterdir()]
    assert [name for name in names if name.startswith("heartbeat-")] == ["heartbeat-nightly.json"]


async def test_no_ping_at_all() -> None:
    async with running_agent([heartbeat("never", period="200ms", grace="0s")], JOB_TOKEN=TOKEN) as running:
        waiting = (await running.run_once())["never"]
        await anyio.sleep(0.3)
        stale = (await running.run_once())["never"]
    assert waiting.success and waiting.attributes["vantage.heartbeat.first_period"] is True
    assert stale.reason is Reason.STALE and stale.message.startswith("no ping since the agent started ")


def test_settings_are_checked_at_load() -> None:
    with pytest.raises(ConfigError, match="at least 16 characters"):
        config_from([heartbeat("a", token="short")])
    with pytest.raises(ConfigError, match="'period' must be positive"):
        config_from([heartbeat("a", period=0, token=TOKEN)])


@pytest.mark.slow  # starts the job script as a process
def test_job_script_runs_standalone() -> None:
    # The job script itself is valid Python (a broken script would make the tests above vacuous).
    compile(JOB, "job", "exec")
    assert subprocess.run([sys.executable, "-c", "import urllib.request"], check=False).returncode == 0


async def test_replicas_pass_pings_on_to_the_owner() -> None:
    # Two replicas on their own loopback addresses; a job may ping either.
    checks = [heartbeat(f"job-{n}", period="1h") for n in range(6)]
    port = free_port()
    env = {"JOB_TOKEN": TOKEN, "VANTAGE_PEER_URL": f"http://127.0.0.1{{shard}}:{port}"}
    async with (
        running_agent(checks, "127.0.0.10", port, VANTAGE_SHARD="0/2", **env) as first,
        running_agent(checks, "127.0.0.11", port, VANTAGE_SHARD="1/2", **env) as second,
    ):
        owners = {name: 0 for name in first.agent.recorder.states} | {
            name: 1 for name in second.agent.recorder.states
        }
        assert sorted(owners) == [f"job-{n}" for n in range(6)] and set(owners.values()) == {0, 1}
        async with aiohttp.ClientSession() as session:
            for name in owners:
                url = f"{first.inbound}/heartbeat/{name}"
                params = {"token": TOKEN, "status": "fail", "message": f"from {name}"}
                async with session.post(url, params=params) as response:
                    assert response.status == 200, await response.text()
            bad = {"token": "wrong-token-0000000"}
            async with session.post(f"{first.inbound}/heartbeat/job-1", params=bad) as response:
                refused = response.status, await response.text()
        results = {**await first.run_once(), **await second.run_once()}
    for name in owners:
        assert results[name].reason is Reason.JOB_FAILED, (name, results[name].message)
        assert results[name].message == f"the job reported a failure: from {name}"
    assert refused == (401, '{"error": "rejected"}')


async def test_a_wall_clock_step_raises_no_false_stale() -> None:
    # Ages are measured on the monotonic clock: the wall clock jumping an hour ahead (NTP after a
    # suspend) changes nothing; only time that really passed makes a heartbeat stale.
    clock = SteppingClock()
    port = free_port()
    config = config_from(
        [heartbeat("pinged", period="10m", grace="0s"), heartbeat("silent", period="10m", grace="0s")],
        JOB_TOKEN=TOKEN,
        VANTAGE_HOST="127.0.0.1",
        VANTAGE_PORT="0",
        VANTAGE_INBOUND_PORT=str(port),
    )
    agent = build_agent(config, TELEMETRY_ENV, clock=clock)

    async def run_once() -> dict[str, Any]:
        await agent.scheduler.run_once()
        return {name: state.last for name, state in agent.recorder.states.items()}

    try:
        async with anyio.create_task_group() as tg:
            await tg.start(agent.server.serve)
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{port}/heartbeat/pinged"
                async with session.get(url, params={"token": TOKEN}) as response:
                    assert response.status == 200
            before = await run_once()
            await clock.advance(60)
            clock.step_wall(3600)
            stepped = await run_once()
            await clock.advance(541)  # 10m01s of real time since the ping
            late = await run_once()
            tg.cancel_scope.cancel()
    finally:
        await agent.http.aclose()
    assert before["pinged"].success and before["silent"].success
    assert stepped["pinged"].success, stepped["pinged"].message
    assert stepped["pinged"].values["probe.heartbeat.age"] == 60.0
    assert (
        stepped["silent"].success and stepped["silent"].attributes["vantage.heartbeat.first_period"] is True
    )
    assert late["pinged"].reason is Reason.STALE
    assert late["pinged"].message == "the last ping was 10m1s ago; one is expected every 10m"
    assert late["silent"].reason is Reason.STALE
    assert late["silent"].message == "no ping since the agent started 10m1s ago"
