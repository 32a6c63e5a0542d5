"""Worker processes behind one port: the checks split between them, merged endpoints, shutdown."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import Request, urlopen

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from agent.process.workers import merge_expositions

from .helpers import AgentProcess, free_port, thread_server, wait_until
from .test_process import get

A = """# HELP probe_success 1 if the last run succeeded
# TYPE probe_success gauge
probe_success{check="a",region="x"} 1.0
# HELP vantage_checks Checks this agent runs
# TYPE vantage_checks gauge
vantage_checks 1.0
"""
B = """# HELP probe_success 1 if the last run succeeded
# TYPE probe_success gauge
probe_success{check="b",region="x"} 0.0
# HELP vantage_checks Checks this agent runs
# TYPE vantage_checks gauge
vantage_checks 2.0
"""


def test_merged_exposition_has_each_family_once_with_worker_labels() -> None:
    merged = merge_expositions([("0", A), ("1", B)])
    assert merged.count("# TYPE probe_success gauge") == 1
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    success = {(s.labels["check"], s.labels["worker"]): s.value for s in families["probe_success"].samples}
    assert success == {("a", "0"): 1.0, ("b", "1"): 0.0}
    checks = {s.labels["worker"]: s.value for s in families["vantage_checks"].samples}
    assert checks == {"0": 1.0, "1": 2.0}


@pytest.fixture
def target() -> Iterator[int]:
    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/ok", ok)
    with thread_server(app) as port:
        yield port


@pytest.mark.slow
def test_two_workers_split_the_checks_behind_one_port(target: int) -> None:
    checks = [
        {
            "name": f"c{i}",
            "type": "http",
            "target": f"http://127.0.0.1:{target}/ok?n={i}",
            "interval": "1s",
            "timeout": "900ms",
        }
        for i in range(8)
    ]
    agent = AgentProcess(checks, {"VANTAGE_WORKERS": "2", "VANTAGE_API_TOKEN": "tok-1234"})
    try:

        def all_ran() -> dict[str, int] | None:
            try:
                status, body = get(agent.url("/api/checks"), "tok-1234")
            except OSError:
                return None
            if status != 200:
                return None
            runs = {c["name"]: c["runs"] for c in json.loads(body)["checks"]}
            return runs if len(runs) == 8 and all(runs.values()) else None

        runs = wait_until(all_ran, timeout=30)
        assert sorted(runs) == [f"c{i}" for i in range(8)]  # every check once, in one worker
        assert get(agent.url("/api/checks"))[0] == 401
        assert get(agent.url("/healthz"))[0] == 200
        status, text = get(agent.url("/metrics"))
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(text)}
        owners = {s.labels["check"]: s.labels["worker"] for s in families["probe_success"].samples}
        assert sorted(owners) == [f"c{i}" for i in range(8)]
        assert set(owners.values()) == {"0", "1"}  # both workers have a share
        assert agent.stop() == 0, agent.output
    finally:
        agent.kill()
    assert "vantage stopped" in agent.output
    assert agent.output.count("received SIGTERM; stopping") >= 2  # each worker drained


@pytest.mark.slow
def test_the_supervisor_passes_inbound_requests_to_the_owning_worker() -> None:
    token = "job-token-0123456789"
    checks = [
        {
            "name": f"job-{i}",
            "type": "heartbeat",
            "target": "a job",
            "interval": "1s",
            "timeout": "900ms",
            "settings": {"period": "1h", "token": token},
        }
        for i in range(6)
    ]
    inbound = free_port()
    env = {"VANTAGE_WORKERS": "2", "VANTAGE_INBOUND_PORT": str(inbound), "VANTAGE_LOG_FORMAT": "text"}
    agent = AgentProcess(checks, env)
    try:
        wait_until(lambda: _status(agent.url("/healthz")) == 200, timeout=30)
        for i in range(6):
            query = urlencode({"token": token, "status": "fail", "message": f"from job {i}"})
            request = Request(f"http://127.0.0.1:{inbound}/heartbeat/job-{i}?{query}", method="POST")
            with urlopen(request, timeout=10) as response:
                assert response.status == 200

        def reported() -> dict[str, str] | None:
            checks = json.loads(get(agent.url("/api/checks"))[1])["checks"]
            messages = {c["name"]: (c.get("last") or {}).get("message", "") for c in checks}
            return messages if all(m.startswith("the job reported") for m in messages.values()) else None

        messages = wait_until(reported, timeout=30)
        assert messages == {f"job-{i}": f"the job reported a failure: from job {i}" for i in range(6)}
        # The inbound port serves only the inbound endpoints.
        assert _status(f"http://127.0.0.1:{inbound}/metrics") == 404
        assert agent.stop() == 0, agent.output
    finally:
        agent.kill()


def _status(url: str) -> int:
    try:
        with urlopen(url, timeout=5) as response:
            return int(response.status)
    except HTTPError as exc:
        return exc.code
    except OSError:
        return 0
