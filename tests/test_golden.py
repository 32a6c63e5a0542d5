"""The telemetry contract: metric names, kinds, units and labels, pinned by a golden file.

A change to them is a deliberate act: rewrite the file with

    VANTAGE_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_golden.py
"""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
import trustme
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from agent.app import build_agent
from agent.app import serve as serve_agent
from agent.config.registry import Registry
from agent.reload import RELOAD_METRICS
from agent.telemetry.maintenance import MAINTENANCE
from agent.telemetry.recorder import AGENT_METRICS, CORE_METRICS

from .helpers import ROOT, config_from, serve
from .test_dns_probe import dns_server
from .test_grpc_probe import health_server

pytestmark = pytest.mark.anyio

GOLDEN = ROOT / "tests" / "golden" / "metrics.txt"
DOCS = ROOT / "docs" / "metrics.md"


def all_specs() -> list[Any]:
    registry = Registry()
    specs = [*CORE_METRICS, *AGENT_METRICS, *RELOAD_METRICS, MAINTENANCE]
    for name in registry.names():
        specs.extend(registry.load(name).metrics)
    return specs


async def scrape_running_agent(ca: trustme.CA, ca_file: Path) -> str:
    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def summary(_: web.Request) -> web.Response:  # an Atlassian Statuspage summary
        return web.Response(body=(ROOT / "tests/fixtures/statuspage/outage.json").read_bytes())

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/api/v2/summary.json", summary)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("vendor.test").configure_cert(context)
    with health_server() as grpc_port:
        return await _scrape(ca_file, app, context, grpc_port)


async def _scrape(ca_file: Path, app: web.Application, context: ssl.SSLContext, grpc_port: int) -> str:
    async with serve(app) as plain, serve(app, ssl_context=context) as tls, dns_server() as dns_port:
        config = config_from(
            [
                {
                    "name": "plain",
                    "type": "http",
                    "target": f"http://127.0.0.1:{plain}/ok",
                    "interval": "1s",
                    "timeout": "900ms",
                    "labels": {"vendor": "acme"},
                },
                {
                    "name": "tls",
                    "type": "http",
                    "target": f"https://vendor.test:{tls}/ok",
                    "interval": "1s",
                    "timeout": "900ms",
                    "settings": {"tls": {"ca_file": str(ca_file)}},
                },
                {
                    "name": "down",
                    "type": "http",
                    "target": "https://nowhere.test/",
                    "interval": "1s",
                    "timeout": "900ms",
                },
                {
                    "name": "cert",
                    "type": "tls",
                    "target": f"127.0.0.1:{tls}",
                    "interval": "1s",
                    "timeout": "900ms",
                    "settings": {"tls": {"ca_file": str(ca_file), "server_name": "vendor.test"}},
                },
                {
                    "name": "socket",
                    "type": "tcp",
                    "target": f"127.0.0.1:{plain}",
                    "interval": "1s",
                    "timeout": "900ms",
                },
                {
                    "name": "health",
                    "type": "grpc",
                    "target": f"127.0.0.1:{grpc_port}",
                    "interval": "1s",
                    "timeout": "900ms",
                },
                {
                    "name": "vendor-says",
                    "type": "statuspage",
                    "target": f"http://127.0.0.1:{plain}",
                    "interval": "1s",
                    "timeout": "900ms",
                    "labels": {"vendor": "acme"},
                },
                {
                    "name": "record",
                    "type": "dns",
                    "target": "example.test",
                    "interval": "1s",
                    "timeout": "900ms",
                    "settings": {"server": f"127.0.0.1:{dns_port}", "type": "SOA"},
                },
            ],
            VANTAGE_PORT="0",
            VANTAGE_HOST="127.0.0.1",
        )
        environ = {"OTEL_TRACES_EXPORTER": "none"}
        agent = build_agent(config, environ, resolve={"vendor.test": "127.0.0.1"})
        async with anyio.create_task_group() as tg:
            port = await tg.start(
                lambda task_status: serve_agent(agent, handle_signals=False, task_status=task_status)
            )
            with anyio.fail_after(20):
                while not all(state.runs for state in agent.recorder.states.values()):
                    await anyio.sleep(0.05)
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    assert response.status == 200
                    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                    text = await response.text()
            tg.cancel_scope.cancel()
    return text


def describe(text: str) -> list[str]:
    """One line per metric family: name, type and label names, as a dashboard depends on them."""
    lines = []
    for family in text_string_to_metric_families(text):
        labels: set[str] = set()
        for sample in family.samples:
            labels |= {k for k, v in sample.labels.items() if v != ""} - {"le"}
        if family.name == "target_info":
            labels = {"service_name", "service_version", "cloud_region"} & labels
        name = family.name + ("_total" if family.type == "counter" else "")
        lines.append(f"{name} {family.type} {','.join(sorted(labels))}")
    return sorted(lines)


def spec_lines() -> list[str]:
    return sorted(
        {f"{s.prometheus_name} {s.kind.value} otel={s.name} unit={s.unit or '-'}" for s in all_specs()}
    )


async def test_golden_telemetry_contract(ca: trustme.CA, ca_file: Path) -> None:
    exposed = describe(await scrape_running_agent(ca, ca_file))
    document = (
        "# Instruments: Prometheus name, kind, OpenTelemetry name and unit\n"
        + "\n".join(spec_lines())
        + "\n\n# Exposed on /metrics by an agent running http (plain, TLS, failing),"
        + " tls, tcp, dns, grpc and statuspage checks\n"
        + "\n".join(exposed)
        + "\n"
    )
    if os.environ.get("VANTAGE_UPDATE_GOLDEN"):
        GOLDEN.write_text(document)
    assert document == GOLDEN.read_text(), "telemetry changed; see this module's docstring"
    # Everything exposed is an instrument the agent declares.
    declared = {s.prometheus_name for s in all_specs()} | {"target_info"}
    assert {line.split()[0] for line in exposed} <= declared


def test_every_metric_is_documented_in_both_spellings() -> None:
    docs = DOCS.read_text()
    for spec in all_specs():
        assert re.search(rf"`{re.escape(spec.prometheus_name)}[`{{]", docs), spec.prometheus_name
        assert re.search(rf"`{re.escape(spec.name)}`", docs), spec.name
