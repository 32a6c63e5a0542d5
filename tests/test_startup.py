"""What the agent imports to start: the probe types its checks use and the libraries its
configuration needs, nothing more (``bench/startup.py`` measures the time; no test here does).

A fresh interpreter does what ``vantage run`` does before its first probe (load the configuration,
build the agent) for a configuration with one http check, and reports its ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from .helpers import ROOT

pytestmark = pytest.mark.slow  # each test starts an interpreter

OTHER_TYPES = ("dns", "flow", "grpc", "heartbeat", "icmp", "sync", "tcp", "tls", "webhook")
# Libraries, and the probe types' modules, that only some configurations need.
ONLY_WHEN_USED = {
    "jsonpath": "a JSONPath in an assertion, extraction or sync check",
    "jsonschema": "a schema assertion or an OpenAPI document",
    "referencing": "an OpenAPI document",
    "dns": "a dns check",
    "icmplib": "an icmp check",
    "grpc": "a grpc check, or OTLP over gRPC",
    "grpc_health": "a grpc check",
    "limits": "inbound endpoints (a webhook or heartbeat check)",
    **{f"plugins.{name}": f"a {name} check" for name in OTHER_TYPES},
}
# What the OTLP exporters need: ``vantage run`` builds them when they first export (after the
# first probe), so none of it is imported at start-up even with OTLP configured.
UNTIL_THE_FIRST_EXPORT = {
    "opentelemetry.exporter.otlp": "an OTLP exporter, built at its first export",
    "requests": "the OTLP/HTTP exporters' session, built with them",
    "urllib3": "the OTLP/HTTP exporters' session, built with them",
    "google.protobuf": "the OTLP encoders, built with the exporters",
    "opentelemetry.sdk.metrics": "a metric exporter's data model, built with it",
    "agent.telemetry.collection": "a metric exporter's collection, built with it",
    "pydantic_settings": "nothing (the agent's settings are a plain pydantic model)",
}

# Imported at start-up today although the configuration does not need them, by module. This is
# debt, paid in the module named (an import at the use site), and the list may only shrink: a
# module that is no longer imported fails the test until its entry goes.
DEBT: dict[str, str] = {}

HTTP_ONLY = {
    "checks": [
        {
            "name": "charges",
            "type": "http",
            "target": "http://127.0.0.1:9/v1/charges",
            "settings": {"assert": [{"source": "status", "op": "in", "value": [200]}]},
        }
    ]
}

START = """
import json, os, sys
import agent.cli
from agent.server._aiohttp import import_aiohttp

import_aiohttp()  # as ``vantage run`` does first
from agent.app import build_agent
from agent.config.settings import load_config

from agent.telemetry import providers

providers._BUILD_AFTER = 3600  # what the start-up imports, not the exporters built a second later
agent = build_agent(load_config(os.environ), os.environ, defer_exporters=True)  # as ``vantage run``
print(json.dumps(sorted(sys.modules)))
print(json.dumps([agent.telemetry.trace_exporters, agent.telemetry.metric_exporters]))
sys.stdout.flush()
os._exit(0)  # the exporters' threads are not stopped: nothing is left to wait for
"""


def run(code: str, **env: str) -> list[str]:
    """The lines a fresh interpreter prints running ``code``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("VANTAGE_", "OTEL_"))}
    environ.update(PYTHONPATH=str(ROOT), **env)
    out = subprocess.run(
        [sys.executable, "-c", code], env=environ, cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def imported(code: str, **env: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code`` (its first JSON line)."""
    lines = [line for line in run(code, **env) if line.startswith("[")]
    return set(json.loads(lines[0]))


def loaded(modules: set[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in modules)


def check(modules: set[str], lazy: dict[str, str]) -> None:
    wrong = [
        f"{name} (needed only for {why})"
        for name, why in lazy.items()
        if name not in DEBT and loaded(modules, name)
    ]
    assert not wrong, "imported at start-up without need:\n" + "\n".join(wrong)
    paid = [name for name in lazy if name in DEBT and not loaded(modules, name)]
    assert not paid, f"debt paid: remove {paid} from DEBT in tests/test_startup.py"


@pytest.mark.parametrize("otlp", [False, True], ids=["no-otlp", "otlp"])
def test_an_http_only_configuration_loads_only_what_it_uses(otlp: bool) -> None:
    env = {"VANTAGE_CHECKS": yaml.safe_dump(HTTP_ONLY), "VANTAGE_PORT": "0"}
    if otlp:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:9"
    lines = [line for line in run(START, **env) if line.startswith("[")]
    modules, (traces, metrics) = set(json.loads(lines[0])), json.loads(lines[1])
    # Not vacuous: the agent was built, with its http probe and, when asked, OTLP.
    assert {"agent.app", "plugins.http", "aiohttp.web"} <= modules
    assert (traces, metrics) == ((["otlp"], ["prometheus", "otlp"]) if otlp else ([], ["prometheus"]))
    check(modules, {**ONLY_WHEN_USED, **UNTIL_THE_FIRST_EXPORT})


def test_the_exporters_built_at_start_up_load_what_they_need() -> None:
    # The other side of the deferral: built at once (``vantage validate``, ``once``), the OTLP
    # exporters do load their modules, so the test above shows the deferral, not an import gone.
    code = START.replace("defer_exporters=True", "defer_exporters=False")
    modules = imported(
        code, VANTAGE_CHECKS=yaml.safe_dump(HTTP_ONLY), OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9"
    )
    assert all(loaded(modules, name) for name in UNTIL_THE_FIRST_EXPORT if name != "pydantic_settings")


def test_the_command_line_loads_the_agent_only_for_the_commands_that_run_it() -> None:
    # ``vantage healthcheck`` runs every few seconds in a container: it needs none of the agent.
    modules = imported("import json, sys, agent.cli; print(json.dumps(sorted(sys.modules)))")
    assert "agent.cli" in modules
    assert not {
        m for m in ("pydantic", "aiohttp", "anyio", "agent.sdk", "agent.config") if loaded(modules, m)
    }


def test_aiohttp_is_imported_without_loading_certificates() -> None:
    # aiohttp builds its client's SSL contexts when imported, each loading the system's CA
    # certificates; ``vantage run`` defers the loading until an aiohttp client needs them
    # (agent/server/_aiohttp.py). When an aiohttp stops building them at import, this test fails
    # (nothing deferred) and the adapter can go.
    code = """
import json, ssl
import anyio
from agent.server._aiohttp import deferred, import_aiohttp, wait_for_certificates

import_aiohttp()
import aiohttp.connector

contexts = [aiohttp.connector._SSL_CONTEXT_VERIFIED, aiohttp.connector._SSL_CONTEXT_UNVERIFIED]
found = {
    "deferred": deferred(),
    "restored": "set_default_verify_paths" not in vars(ssl.SSLContext),
    "before": [c.cert_store_stats()["x509_ca"] for c in contexts],
}
anyio.run(wait_for_certificates)
found |= {
    "left": deferred(),
    "after": [c.cert_store_stats()["x509_ca"] for c in contexts],
    "system": ssl.create_default_context().cert_store_stats()["x509_ca"],
}
print(json.dumps(found))
"""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("VANTAGE_", "OTEL_"))}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout.splitlines()[-1])
    assert found["system"] > 0  # not vacuous: the system has CA certificates to load
    assert found["deferred"] == 2 and found["before"] == [0, 0]
    assert found["restored"]  # ssl.SSLContext loads certificates again for everyone else
    assert found["left"] == 0 and found["after"] == [found["system"]] * 2
