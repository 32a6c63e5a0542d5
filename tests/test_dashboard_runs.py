"""The dashboard's success ratio counts runs, not attempts: a real Prometheus scrapes an agent
whose check needs a re-test on every run (its first attempt fails, its re-test passes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp import web

from .deploy import DASHBOARD, need
from .helpers import ROOT, AgentProcess, free_port, thread_server, wait_until
from .test_prometheus_e2e import _ok, query, start_prometheus

pytestmark = pytest.mark.slow


def test_the_success_ratio_counts_a_run_re_tested_to_a_pass_as_a_pass(tmp_path: Path) -> None:
    need("prometheus")
    count = 0

    async def every_other(_: web.Request) -> web.Response:
        nonlocal count
        count += 1
        return web.Response(status=503 if count % 2 else 200)

    app = web.Application()
    app.router.add_get("/", every_other)
    dashboard = json.loads(DASHBOARD.read_text())
    [panel] = [p for p in dashboard["panels"] if p["title"] == "Success ratio (range)"]
    [target] = panel["targets"]
    ratio = target["expr"].replace("$region", ".*").replace("$check", ".*").replace("$__range", "1m")
    with thread_server(app) as target_port:
        check = {
            "name": "flaky",
            "type": "http",
            "target": f"http://127.0.0.1:{target_port}/",
            "interval": "1s",
            "timeout": "400ms",
            "retries": 1,
            "retry_delay": "100ms",
        }
        agent = AgentProcess([check], {"VANTAGE_REGION": "eu-west-1", "PYTHONPATH": str(ROOT)})
        config, port = tmp_path / "prometheus.yml", free_port()
        server = None
        try:
            wait_until(lambda: _ok(agent.url("/readyz")), timeout=30)
            server = start_prometheus(config, port, agent.port, tmp_path / "data")
            wait_until(lambda: _ok(f"http://127.0.0.1:{port}/-/ready"), timeout=30)
            wait_until(lambda: len(query(port, "count_over_time(probe_success[1m]) >= 10")) == 1, timeout=60)
            attempts = query(port, 'sum by (check) (increase(probe_runs_total{result="failure"}[1m]))')
            assert attempts["flaky"] > 0  # every run's first attempt failed
            # Every run passed (on its re-test): the ratio is that of runs, about 1, not the
            # attempts' 0.5 (a scrape between a run's two attempts is all that moves it).
            assert query(port, ratio)["flaky"] > 0.9
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=30)
            agent.stop()
