"""The dashboard's panels read runs and confirmations as issue 15 defines them, answered by a real
Prometheus scraping a real agent: the success ratio counts runs (not attempts), and the confirmed
state shows a check that runs but is not confirmed yet as pending."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from .deploy import DASHBOARD, need
from .helpers import ROOT, AgentProcess, free_port, thread_server, wait_until
from .test_prometheus_e2e import _ok, query, start_prometheus

pytestmark = pytest.mark.slow


def panel_query(title: str) -> str:
    """The one query of the panel ``title``, for every region and check, over a minute."""
    dashboard = json.loads(DASHBOARD.read_text())
    [panel] = [p for p in dashboard["panels"] if p["title"] == title]
    [target] = panel["targets"]
    expression = str(target["expr"])
    return expression.replace("$region", ".*").replace("$check", ".*").replace("$__range", "1m")


@contextlib.contextmanager
def scraped(checks: list[dict[str, Any]], tmp_path: Path) -> Iterator[int]:
    """An agent (this tree's code) running ``checks``, scraped every second by a Prometheus:
    its port, once every check has ten scrapes of ``probe_success``."""
    need("prometheus")
    agent = AgentProcess(checks, {"VANTAGE_REGION": "eu-west-1", "PYTHONPATH": str(ROOT)})
    config, port = tmp_path / "prometheus.yml", free_port()
    server = None
    try:
        wait_until(lambda: _ok(agent.url("/readyz")), timeout=30)
        server = start_prometheus(config, port, agent.port, tmp_path / "data")
        wait_until(lambda: _ok(f"http://127.0.0.1:{port}/-/ready"), timeout=30)
        enough = "count_over_time(probe_success[1m]) >= 10"
        wait_until(lambda: len(query(port, enough)) == len(checks), timeout=60)
        yield port
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        agent.stop()


def test_the_success_ratio_counts_a_run_re_tested_to_a_pass_as_a_pass(tmp_path: Path) -> None:
    count = 0

    async def every_other(_: web.Request) -> web.Response:
        nonlocal count
        count += 1
        return web.Response(status=503 if count % 2 else 200)

    app = web.Application()
    app.router.add_get("/", every_other)
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
        with scraped([check], tmp_path) as port:
            attempts = query(port, 'sum by (check) (increase(probe_runs_total{result="failure"}[1m]))')
            assert attempts["flaky"] > 0  # every run's first attempt failed
            # Every run passed (on its re-test): the ratio is that of runs, about 1, not the
            # attempts' 0.5 (a scrape between a run's two attempts is all that moves it).
            assert query(port, panel_query("Success ratio (range)"))["flaky"] > 0.9


def test_the_confirmed_state_shows_a_check_not_yet_confirmed_as_pending(tmp_path: Path) -> None:
    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def broken(_: web.Request) -> web.Response:
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/broken", broken)
    with thread_server(app) as target_port:
        url = f"http://127.0.0.1:{target_port}"
        checks = [
            {"name": "healthy", "type": "http", "target": f"{url}/ok", "interval": "1s", "timeout": "400ms"},
            # Failing, but 100 failed runs in a row are needed to call it down: pending meanwhile.
            {
                "name": "unconfirmed",
                "type": "http",
                "target": f"{url}/broken",
                "interval": "1s",
                "timeout": "400ms",
                "failure_threshold": 100,
            },
        ]
        with scraped(checks, tmp_path) as port:
            assert query(port, "vantage_check_up") == {"healthy": 1.0}
            assert query(port, panel_query("Confirmed state")) == {"healthy": 1.0, "unconfirmed": -1.0}
    dashboard = json.loads(DASHBOARD.read_text())
    [panel] = [p for p in dashboard["panels"] if p["title"] == "Confirmed state"]
    [values] = [m["options"] for m in panel["fieldConfig"]["defaults"]["mappings"] if m["type"] == "value"]
    assert values["-1"]["text"] == "pending"
