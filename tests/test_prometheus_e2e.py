"""A real Prometheus (Debian's) scrapes a running agent and answers the alert rules' and the
dashboard's queries with real data."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from .deploy import ALERTS, DASHBOARD, dashboard_expressions, need
from .helpers import AgentProcess, free_port, thread_server, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def vendor() -> Iterator[int]:
    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def broken(_: web.Request) -> web.Response:
        return web.json_response({"error": "maintenance"}, status=503)

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/broken", broken)
    with thread_server(app) as port:
        yield port


def start_prometheus(config: Path, port: int, agent_port: int, data: Path) -> subprocess.Popen[bytes]:
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ALERTS)],
                "scrape_configs": [
                    {"job_name": "vantage", "static_configs": [{"targets": [f"127.0.0.1:{agent_port}"]}]}
                ],
            }
        )
    )
    return subprocess.Popen(
        [
            need("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def api(port: int, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{port}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def query(port: int, expression: str) -> dict[str, float]:
    """An instant query's result, by check (or by the whole label set when there is no check)."""
    data = api(port, "query", query=expression)
    return {
        sample["metric"].get("check", json.dumps(sample["metric"], sort_keys=True)): float(sample["value"][1])
        for sample in data["result"]
    }


def test_prometheus_answers_the_rules_and_the_dashboard(vendor: int, tmp_path: Path) -> None:
    need("prometheus")
    config, port = tmp_path / "prometheus.yml", free_port()
    checks = [
        {"name": "healthy", "type": "http", "target": f"http://127.0.0.1:{vendor}/ok", "interval": "1s"},
        {"name": "broken", "type": "http", "target": f"http://127.0.0.1:{vendor}/broken", "interval": "1s"},
    ]
    for check in checks:
        check["timeout"] = "900ms"
    agent = AgentProcess(checks, {"VANTAGE_REGION": "eu-west-1"})
    server = None
    try:
        wait_until(lambda: _ok(agent.url("/readyz")), timeout=30)
        server = start_prometheus(config, port, agent.port, tmp_path / "data")
        wait_until(lambda: _ok(f"http://127.0.0.1:{port}/-/ready"), timeout=30)
        # Enough scrapes for rates and increases over the last minute.
        wait_until(lambda: len(query(port, "count_over_time(probe_success[1m]) >= 6")) == 2, timeout=60)

        assert query(port, "probe_success") == {"healthy": 1.0, "broken": 0.0}
        # The success ratio the SLO alert computes: 1 for the healthy check, 0 for the broken one.
        ratio = (
            'sum by (check, region) (increase(probe_runs_total{result="success"}[1m]))'
            " / sum by (check, region) (increase(probe_runs_total[1m]))"
        )
        assert query(port, ratio) == {"healthy": 1.0}
        failing = 'sum by (check) (increase(probe_runs_total{result="failure", reason="http_status"}[1m]))'
        assert set(query(port, failing)) == {"broken"} and query(port, failing)["broken"] > 0
        p95 = "histogram_quantile(0.95, sum by (le, check) (rate(probe_all_duration_seconds_bucket[1m])))"
        latencies = query(port, p95)
        assert set(latencies) == {"healthy", "broken"} and all(0 < v < 1 for v in latencies.values())

        # Every dashboard query is valid PromQL that Prometheus evaluates; each panel's follows the
        # region variable, the agent's own panels too (its series carry the region).
        def concrete(expression: str, region: str) -> str:
            return (
                expression.replace("$region", region)
                .replace("$check", ".*")
                .replace("$vendor", ".*")
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m")
            )

        dashboard = json.loads(DASHBOARD.read_text())
        answered = {}
        for expression in dashboard_expressions(dashboard):
            if expression.startswith("label_values("):
                continue
            api(port, "query", query=concrete(expression, ".*"))
            answered[expression] = len(api(port, "query", query=concrete(expression, "eu-west-1"))["result"])
            assert api(port, "query", query=concrete(expression, "elsewhere"))["result"] == [], expression
        titles = {t["expr"]: p["title"] for p in dashboard["panels"] for t in p.get("targets", [])}
        with_data = {titles[e] for e, count in answered.items() if count}
        assert {"Success by check", "Run duration percentiles", "Event loop lag and lateness"} <= with_data
        assert "Exports failing, inbound requests" in with_data  # export failures: 0 per signal
        assert query(port, 'max by (check, region) (probe_success{region=~".*", check=~".*"})') == {
            "healthy": 1.0,
            "broken": 0.0,
        }

        # The alert rules load and evaluate; the broken check's alert is on its way (for: 5m).
        def evaluated() -> list[dict[str, Any]] | None:
            rules = [rule for group in api(port, "rules")["groups"] for rule in group["rules"]]
            done = all(rule["lastEvaluation"] > "2000" for rule in rules)
            return rules if done and any(r["alerts"] for r in rules) else None

        rules = wait_until(evaluated, timeout=30)
        assert {rule["name"] for rule in rules} == set(
            rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
        )
        assert all(rule["health"] == "ok" for rule in rules), [r for r in rules if r["health"] != "ok"]
        failing_alert = next(rule for rule in rules if rule["name"] == "VantageCheckFailing")
        assert [(a["labels"]["check"], a["state"]) for a in failing_alert["alerts"]] == [
            ("broken", "pending")
        ]
        assert failing_alert["alerts"][0]["labels"]["region"] == "eu-west-1"
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=20)
        agent.kill()


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False
