"""Worker processes behind one port: the checks split between them, merged endpoints, shutdown."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import Request, urlopen

import aiohttp
import anyio
import pytest
from aiohttp import web
from anyio.abc import Process
from prometheus_client.parser import text_string_to_metric_families

from agent import __version__
from agent.app import build_agent
from agent.process.handover import LISTEN_FD, bind_loopback
from agent.process.workers import _Supervisor, _Worker, merge_expositions
from agent.server.status import Bound

from .helpers import AgentProcess, config_from, free_port, serve, thread_server, wait_until
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


# ---------------------------------------------------------------- the supervisor's endpoints, in process

CHECKS = [{"name": "c", "type": "tcp", "target": "127.0.0.1:9", "interval": "1s", "timeout": "900ms"}]


def fake_worker(readyz: dict[str, Any] | None) -> web.Application:
    """A worker's server: ready with the given /readyz JSON, or (None) stuck on every request."""

    async def stuck(_: web.Request) -> web.Response:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(_: web.Request) -> web.Response:
        return web.json_response(readyz)

    app = web.Application()
    app.router.add_get("/healthz", healthz if readyz is not None else stuck)
    app.router.add_get("/readyz", ready if readyz is not None else stuck)
    return app


@contextlib.asynccontextmanager
async def supervisor_of(*apps: web.Application, probe_timeout: float = 2.0) -> AsyncIterator[str]:
    """A supervisor's endpoints in front of these workers (real local servers); its base URL."""
    config = config_from(CHECKS, VANTAGE_PORT="0", VANTAGE_HOST="127.0.0.1", VANTAGE_WORKERS="2")
    async with contextlib.AsyncExitStack() as stack:
        ports = [await stack.enter_async_context(serve(app)) for app in apps]
        # Only the index and the port of a worker are read by the endpoints.
        workers = [_Worker(i, cast(Process, None), port) for i, port in enumerate(ports)]
        session = await stack.enter_async_context(aiohttp.ClientSession())
        supervisor = _Supervisor(config, workers, session, probe_timeout=probe_timeout)
        async with anyio.create_task_group() as tg:
            bound: Bound = await tg.start(supervisor.serve)
            yield f"http://127.0.0.1:{bound.port}"
            tg.cancel_scope.cancel()


async def fetch(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


WORKER_READY = {
    "status": "ready",
    "version": "1.0",
    "checks": 3,
    "event_loop": "asyncio",
    "telemetry": {"otlp": {"failures": 2, "last_error": "connection refused"}},
}


@pytest.mark.anyio
async def test_the_supervisors_readyz_shows_each_workers_exporters_and_its_own_status() -> None:
    other = {**WORKER_READY, "checks": 4, "telemetry": {"otlp": {"failures": 0}}}
    async with supervisor_of(fake_worker(WORKER_READY), fake_worker(other)) as url:
        status, body = await fetch(url + "/readyz")
    assert status == 200
    assert body["status"] == "ready" and body["checks"] == 7 and body["version"] == __version__
    assert body["supervisor"] == {"status": "running", "workers": 2, "restarts": 0}
    assert body["workers"] == [{"worker": 0, **WORKER_READY}, {"worker": 1, **other}]


@pytest.mark.anyio
async def test_a_stuck_worker_makes_health_and_readiness_fail_within_the_probe_bound() -> None:
    # Unbounded, the fan-out would wait for the session's 60 s: the guard below is far under it.
    async with supervisor_of(fake_worker(WORKER_READY), fake_worker(None), probe_timeout=0.5) as url:
        with anyio.fail_after(20):
            health, health_body = await fetch(url + "/healthz")
            ready, ready_body = await fetch(url + "/readyz")
    assert health == 503 and health_body == {"status": "unhealthy", "workers": [200, 0]}
    assert ready == 503 and ready_body["status"] == "not ready"
    assert ready_body["workers"][0] == {"worker": 0, **WORKER_READY}  # the details of the one answering
    stuck = ready_body["workers"][1]
    assert stuck["worker"] == 1 and stuck["status"] == "not answering"


@pytest.mark.anyio
async def test_a_worker_serves_on_the_socket_its_supervisor_bound_for_it() -> None:
    # The supervisor knows the port before the worker starts: it bound the socket itself.
    listener = bind_loopback()
    port = listener.getsockname()[1]
    handed = os.dup(listener.fileno())  # the worker's copy, as pass_fds gives it
    listener.close()
    config = config_from(CHECKS, VANTAGE_PORT=str(port), VANTAGE_HOST="127.0.0.1", VANTAGE_WORKER="0/2")
    environ = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none", LISTEN_FD: str(handed)}
    agent = build_agent(config, environ)
    try:
        async with anyio.create_task_group() as tg:
            assert await tg.start(agent.server.serve) == port
            status, body = await fetch(f"http://127.0.0.1:{port}/api/checks")
            assert status == 200 and [c["name"] for c in body["checks"]] == ["c"]
            tg.cancel_scope.cancel()
    finally:
        await agent.http.aclose()
    with pytest.raises(aiohttp.ClientConnectionError):  # the worker gone, its port is closed
        await fetch(f"http://127.0.0.1:{port}/healthz")


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
        with urlopen(Request(agent.url("/metrics"), headers={"Accept-Encoding": "gzip"})) as answer:
            assert answer.headers["Content-Encoding"] == "gzip"
            assert gzip.decompress(answer.read()).decode().count("probe_success{") == 8
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
