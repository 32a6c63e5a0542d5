"""The alerting recipes: runbook links of the alert rules (and the chart's value that places them),
the Alertmanager example (Debian's amtool, and a real Alertmanager on loopback that inhibits and
notifies), the Datadog monitors (the official API client's models) and the Grafana provisioning
file (Grafana's documented fields, and the same expressions as the Prometheus rules)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml
from aiohttp import web

from .deploy import ALERTS, CHART, GOLDEN, need
from .helpers import ROOT, AgentProcess, free_port, thread_server, wait_until

EXAMPLES = ROOT / "examples" / "alerting"
ALERTMANAGER = EXAMPLES / "alertmanager.yml"
DATADOG = EXAMPLES / "datadog-monitors.json"
GRAFANA = EXAMPLES / "grafana-alert-rules.yaml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
# The address of docs/runbooks.md that the rule file carries until someone says where theirs is.
PLACEHOLDER = "https://git.example.com/platform/vantage/-/blob/main/docs/runbooks.md"

# Alerts whose condition needs the current time (an expiry or sunset timestamp minus now), which
# a Datadog metric query cannot compute; docs/deployment.md says so.
NOT_IN_DATADOG = {"VantageCertificateExpiringSoon", "VantageTokenExpiringSoon", "VantageApiSunsetSoon"}


def rules() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return {rule["alert"]: rule for group in document["groups"] for rule in group["rules"]}


def otel_names() -> set[str]:
    """The OpenTelemetry names of the agent's instruments: what reaches Datadog over OTLP."""
    names: set[str] = set()
    for line in GOLDEN.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2].startswith("otel="):
            names.add(parts[2].removeprefix("otel="))
    return names


def need_tool(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed; tests/setup.sh installs Debian's {package} package")
        pytest.skip(f"{tool} is not installed (Debian's {package} package; tests/setup.sh installs it)")
    return path


# --- Runbooks -------------------------------------------------------------------------------------


def test_every_alert_links_its_runbook_section() -> None:
    text = RUNBOOKS.read_text()
    headings = set(re.findall(r"^## (Vantage\w+)$", text, flags=re.MULTILINE))
    assert headings == set(rules()), "docs/runbooks.md has a section per alert, and only those"
    for name, rule in rules().items():
        # GitHub's and GitLab's anchor for "## VantageCheckDown" is #vantagecheckdown.
        assert rule["annotations"]["runbook_url"] == f"{PLACEHOLDER}#{name.lower()}", name
    for name in headings:
        section = text.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("**What it means**", "**First checks**", "**Likely causes**", "**Silence it**"):
            assert part in section, f"{name}: {part}"


def test_the_deployment_guide_lists_every_alert_with_its_severity() -> None:
    text = (ROOT / "docs" / "deployment.md").read_text()
    rows = dict(re.findall(r"^\| `(Vantage\w+)` \| (\w+) \|", text, flags=re.MULTILINE))
    assert rows == {name: rule["labels"]["severity"] for name, rule in rules().items()}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values, name="vantage", namespace="monitoring")
    return [
        d for name, text in manifests.items() if name.endswith(".yaml") for d in yaml.safe_load_all(text) if d
    ]


def test_the_chart_puts_the_runbook_address_in_every_rule() -> None:
    wiki = "https://wiki.shop.example/ops/vantage-runbooks"
    documents = render({"prometheusRule": {"enabled": True, "runbookUrl": wiki}})
    spec = next(d for d in documents if d["kind"] == "PrometheusRule")["spec"]
    rendered = {r["alert"]: r for group in spec["groups"] for r in group["rules"]}
    assert set(rendered) == set(rules())
    for name, rule in rendered.items():
        assert rule["annotations"]["runbook_url"] == f"{wiki}#{name.lower()}"
        # Nothing else changes: the rest is the file promtool tests.
        expected = rules()[name]
        assert rule["expr"] == expected["expr"]
        assert {k: v for k, v in rule["annotations"].items() if k != "runbook_url"} == {
            k: v for k, v in expected["annotations"].items() if k != "runbook_url"
        }


@pytest.mark.parametrize("url", ["wiki/runbooks.md", "https://wiki.example/runbooks#top", ""])
def test_the_chart_refuses_a_runbook_address_that_is_not_one(url: str) -> None:
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmValuesError) as caught:
        chart.render({"prometheusRule": {"runbookUrl": url}}, name="vantage", namespace="monitoring")
    assert "/prometheusRule/runbookUrl" in str(caught.value)


# --- Alertmanager ---------------------------------------------------------------------------------


def test_the_alertmanager_example_keeps_its_secrets_in_files() -> None:
    text = ALERTMANAGER.read_text()
    for key in (
        "api_url",
        "routing_key",
        "service_key",
        "auth_password",
        "slack_api_url",
        "smtp_auth_password",
    ):
        assert not re.search(rf"^[\s-]*{key}:", text, flags=re.MULTILINE), key
    assert len(re.findall(r"_file: /etc/alertmanager/secrets/", text)) == 4


def test_the_alertmanager_example_names_only_alerts_that_exist() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    matchers = [m for r in config["route"]["routes"] for m in r.get("matchers", [])]
    for rule in config["inhibit_rules"]:
        matchers += rule["source_matchers"] + rule["target_matchers"]
    named = {m.split('"')[1] for m in matchers if m.startswith("alertname=")}
    assert named and named <= set(rules()), named - set(rules())
    severities = {m.split('"')[1] for m in matchers if m.startswith("severity=")}
    assert severities == {rule["labels"]["severity"] for rule in rules().values()} - {"warning"}


@pytest.mark.slow  # runs amtool
def test_amtool_accepts_the_alertmanager_example() -> None:
    amtool = need_tool("amtool", "prometheus-alertmanager")
    checked = subprocess.run([amtool, "check-config", str(ALERTMANAGER)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout and "4 inhibit rules" in checked.stdout


@pytest.mark.slow  # runs amtool
@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        # A page goes to PagerDuty and on to the team's channel.
        (
            "alertname=VantageCheckDownInRegions severity=critical vendor=crm",
            "pagerduty-integrations,slack-integrations",
        ),
        # ... the payment vendors' channel for theirs.
        (
            "alertname=VantageCheckDownInRegions severity=critical vendor=stripe",
            "pagerduty-integrations,slack-payments",
        ),
        ("alertname=VantageCheckDown severity=warning vendor=crm", "slack-integrations"),
        ("alertname=VantageCheckDown severity=warning vendor=adyen", "slack-payments"),
        # A vendor's declared outage: email to who holds the relationship, and Slack; no page.
        (
            "alertname=VantageVendorOutage severity=warning vendor=stripe",
            "email-vendor-managers,slack-payments",
        ),
        (
            "alertname=VantageVendorOutage severity=warning vendor=crm",
            "email-vendor-managers,slack-integrations",
        ),
        (
            "alertname=VantageAgentDown severity=critical job=vantage",
            "pagerduty-integrations,slack-integrations",
        ),
        ("alertname=VantageCertificateExpiringSoon severity=warning", "slack-integrations"),
    ],
)
def test_amtool_routes_by_severity_and_vendor(labels: str, receivers: str) -> None:
    amtool = need_tool("amtool", "prometheus-alertmanager")
    routed = subprocess.run(
        [amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels.split()],
        capture_output=True,
        text=True,
    )
    assert routed.returncode == 0, routed.stdout + routed.stderr
    assert routed.stdout.strip() == receivers


class Notifications:
    """What the fake Slack and PagerDuty endpoints received, by path."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict[str, Any]]] = []

    def app(self) -> web.Application:
        async def receive(request: web.Request) -> web.Response:
            self.bodies.append((request.path, await request.json()))
            return web.json_response({"status": "success"}, status=202)

        app = web.Application()
        app.router.add_post("/{tail:.*}", receive)
        return app

    def text(self, path: str) -> str:
        return "\n".join(json.dumps(body) for where, body in list(self.bodies) if where == path)


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[tuple[int, Notifications]]:
    """The example configuration in a real Alertmanager on loopback, its receivers pointed at a
    local server standing in for Slack and PagerDuty (the secret files hold the local URLs)."""
    binary = need_tool("prometheus-alertmanager", "prometheus-alertmanager")
    notifications = Notifications()
    with thread_server(notifications.app()) as hooks:
        secrets = tmp_path / "secrets"
        secrets.mkdir()
        (secrets / "slack-webhook-url").write_text(f"http://127.0.0.1:{hooks}/slack/integrations")
        (secrets / "slack-payments-webhook-url").write_text(f"http://127.0.0.1:{hooks}/slack/payments")
        (secrets / "pagerduty-routing-key").write_text("R0UT1NGKEY")
        (secrets / "smtp-password").write_text("unused")
        config = yaml.safe_load(ALERTMANAGER.read_text().replace("/etc/alertmanager/secrets/", f"{secrets}/"))
        config["global"]["pagerduty_url"] = f"http://127.0.0.1:{hooks}/pagerduty"
        config["global"]["smtp_smarthost"] = f"127.0.0.1:{free_port()}"  # nobody there
        config["route"] |= {"group_wait": "1s", "group_interval": "1s"}  # the routes and rules as they are
        (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'alertmanager.yml'}",
                f"--storage.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(lambda: _ok(f"http://127.0.0.1:{port}/-/ready"), timeout=30)
            yield port, notifications
        finally:
            process.terminate()
            process.wait(timeout=20)


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _alert(summary: str, labels: str) -> dict[str, Any]:
    return {
        "labels": dict(pair.split("=", 1) for pair in labels.split()),
        "annotations": {"summary": summary, "runbook_url": f"{PLACEHOLDER}#x"},
    }


# What the rules would send during a payment vendor's declared outage, with an agent down in ap.
POSTED = [
    (
        "stripe says API is down",
        "alertname=VantageVendorOutage severity=warning vendor=stripe check=stripe-status",
    ),
    (
        "charges down in most regions",
        "alertname=VantageCheckDownInRegions severity=critical vendor=stripe check=charges",
    ),
    (
        "charges down in eu",
        "alertname=VantageCheckDown severity=warning vendor=stripe check=charges region=eu",
    ),
    (
        "contacts down in most regions",
        "alertname=VantageCheckDownInRegions severity=critical vendor=crm check=contacts",
    ),
    (
        "agent ap-0 cannot be scraped",
        "alertname=VantageAgentDown severity=critical instance=ap-0:8080 region=ap",
    ),
    ("orders down in ap", "alertname=VantageCheckDown severity=warning check=orders region=ap"),
    ("orders down in us", "alertname=VantageCheckDown severity=warning check=orders region=us"),
    ("orders failing in us", "alertname=VantageCheckFailing severity=warning check=orders region=us"),
    # An outage without a vendor label must not hold back every page without one.
    ("a page says SMTP is down", "alertname=VantageVendorOutage severity=warning check=mail-status"),
    (
        "nightly stopped reporting",
        "alertname=VantageHeartbeatStale severity=critical check=nightly region=us",
    ),
]


@pytest.mark.slow  # runs Alertmanager
@pytest.mark.timeout(90)
def test_alertmanager_inhibits_as_the_example_says(alertmanager: tuple[int, Notifications]) -> None:
    port, notifications = alertmanager
    alerts = [_alert(summary, labels) for summary, labels in POSTED]
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v2/alerts",
        data=json.dumps(alerts).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200

    def states() -> dict[str, str] | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/alerts", timeout=10) as response:
            listed = json.loads(response.read())
        found = {a["annotations"]["summary"]: a["status"]["state"] for a in listed}
        return found if len(found) == len(alerts) and "unprocessed" not in found.values() else None

    expected_suppressed = {
        "charges down in most regions",  # the vendor declared the outage: no page
        "orders down in ap",  # the agent of ap is down
        "orders failing in us",  # the confirmed VantageCheckDown says it already
    }

    def settled() -> dict[str, str] | None:
        found = states()
        suppressed = {summary for summary, state in (found or {}).items() if state == "suppressed"}
        return found if suppressed == expected_suppressed else None

    active = {summary for summary, state in wait_until(settled, timeout=30).items() if state == "active"}
    assert active == {summary for summary, _ in POSTED} - expected_suppressed

    # The notifications: the pages that stand reach PagerDuty, the downgraded one only Slack.
    def delivered() -> bool:
        pages = notifications.text("/pagerduty")
        payments = notifications.text("/slack/payments")
        general = notifications.text("/slack/integrations")
        return (
            all(s in pages for s in ("contacts down", "agent ap-0", "nightly stopped"))
            and all(s in payments for s in ("charges down in eu", "stripe says API is down"))
            and "orders down in us" in general
        )

    wait_until(delivered, timeout=30)
    pages = notifications.text("/pagerduty")
    assert "charges down in most regions" not in pages
    assert "R0UT1NGKEY" in pages  # read from its file
    assert "charges down in most regions" not in notifications.text("/slack/payments")
    everything = "\n".join(json.dumps(body) for _, body in notifications.bodies)
    assert "orders down in ap" not in everything and "orders failing in us" not in everything


# --- Datadog --------------------------------------------------------------------------------------


def _strict(model: Any, path: str) -> None:
    """Fail on what the client's deserializer lets through: enum values and fields it does not know."""
    from datadog_api_client.model_utils import ModelNormal, ModelSimple

    if isinstance(model, ModelSimple):
        assert not model._unparsed, f"{path}: {model.value!r} is not one of {sorted(model.allowed_values)}"
    elif isinstance(model, ModelNormal):
        unknown = set(model._data_store) - set(type(model).openapi_types)
        assert not unknown, f"{path}: unknown fields {sorted(unknown)}"
        for key, value in model._data_store.items():
            _strict(value, f"{path}.{key}")
    elif isinstance(model, list):
        for i, value in enumerate(model):
            _strict(value, f"{path}[{i}]")


def monitors() -> list[dict[str, Any]]:
    return list(json.loads(DATADOG.read_text()))


def test_datadog_monitors_are_valid_monitor_definitions() -> None:
    from datadog_api_client import Configuration
    from datadog_api_client.model_utils import validate_and_convert_types
    from datadog_api_client.v1.model.monitor import Monitor

    configuration = Configuration()  # type: ignore[no-untyped-call]
    for definition in monitors():
        # Type-checked against the client's Monitor model (the API's OpenAPI schema), then no
        # unknown enum value or field.
        validate = validate_and_convert_types
        model = validate(definition, (Monitor,), [definition["name"]], True, True, configuration)  # type: ignore[no-untyped-call]
        _strict(model, definition["name"])


def test_datadog_monitors_are_the_alert_rules_on_the_names_datadog_receives() -> None:
    known = otel_names()
    by_name = {m["name"]: m for m in monitors()}
    assert set(by_name) == set(rules()) - NOT_IN_DATADOG
    for name, monitor in by_name.items():
        severity = rules()[name]["labels"]["severity"]
        assert f"severity:{severity}" in monitor["tags"] and f"alert:{name}" in monitor["tags"]
        assert monitor["priority"] == (1 if severity == "critical" else 3)
        assert f"{PLACEHOLDER}#{name.lower()}" in monitor["message"]
        assert ("@pagerduty-integrations" in monitor["message"]) == (severity == "critical"), name
        # OTLP names with their dots, as the Datadog Agent keeps them (no _total, no _seconds).
        metrics = set(re.findall(r"(?:avg|sum|min|max|p\d\d):([a-z_][a-z0-9_.]*)\{", monitor["query"]))
        assert metrics and metrics <= known, (name, metrics - known)
        # Counters arrive as Datadog counts (delta temporality): summed over the window.
        for metric in metrics:
            kind = next(
                (line.split()[1] for line in GOLDEN.read_text().splitlines() if f" otel={metric} " in line),
                "gauge",
            )
            if kind == "counter":
                assert f"{metric}{{" in monitor["query"] and ".as_count()" in monitor["query"], name
            if kind == "histogram":
                assert monitor["query"].startswith("percentile("), name
        # The threshold in the query is the one in the options, as Datadog requires.
        threshold = float(re.search(r"[<>]=? (-?[\d.]+)$", monitor["query"])[1])  # type: ignore[index]
        assert monitor["options"]["thresholds"]["critical"] == threshold, name
    assert by_name["VantageAgentDown"]["options"]["notify_no_data"] is True


# --- Grafana --------------------------------------------------------------------------------------

# Grafana's alert rule provisioning file, as its documentation lists the fields ("Use configuration
# files to provision alerting resources", https://grafana.com/docs/grafana/latest/alerting/set-up/
# provision-alerting-resources/file-provisioning/, "Import alert rules"): there is no published
# JSON schema, so the documented fields, their types and their enumerated values are encoded here.
_DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h|d|w))+$"}
_QUERY = {
    "type": "object",
    "additionalProperties": False,
    "required": ["refId", "datasourceUid", "model"],
    "properties": {
        "refId": {"type": "string", "minLength": 1},
        "queryType": {"type": "string"},
        "relativeTimeRange": {
            "type": "object",
            "additionalProperties": False,
            "required": ["from", "to"],
            "properties": {
                "from": {"type": "integer", "minimum": 0},
                "to": {"type": "integer", "minimum": 0},
            },
        },
        "datasourceUid": {"type": "string", "minLength": 1},
        "model": {"type": "object", "required": ["refId"]},
    },
}
_RULE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["uid", "title", "condition", "data"],
    "properties": {
        "uid": {"type": "string", "pattern": r"^[a-zA-Z0-9\-_]{1,40}$"},
        "title": {"type": "string", "minLength": 1},
        "condition": {"type": "string"},
        "data": {"type": "array", "minItems": 1, "items": _QUERY},
        "dashboardUid": {"type": "string"},
        "panelId": {"type": "integer"},
        "noDataState": {"enum": ["Alerting", "NoData", "OK", "KeepLast"]},
        "execErrState": {"enum": ["Alerting", "Error", "OK", "KeepLast"]},
        "for": _DURATION,
        "keepFiringFor": _DURATION,
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "isPaused": {"type": "boolean"},
        "notification_settings": {"type": "object"},
    },
}
GRAFANA_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "groups"],
    "properties": {
        "apiVersion": {"const": 1},
        "groups": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["orgId", "name", "folder", "interval", "rules"],
                "properties": {
                    "orgId": {"type": "integer", "minimum": 1},
                    "name": {"type": "string", "minLength": 1},
                    "folder": {"type": "string", "minLength": 1},
                    "interval": _DURATION,
                    "rules": {"type": "array", "items": _RULE},
                },
            },
        },
        "deleteRules": {"type": "array"},
    },
}
# Server-side expressions (datasourceUid "__expr__"): a threshold's evaluator types.
_THRESHOLD = {
    "type": "object",
    "required": ["refId", "type", "expression", "conditions"],
    "properties": {
        "type": {"const": "threshold"},
        "expression": {"type": "string"},
        "conditions": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["evaluator"],
                "properties": {
                    "evaluator": {
                        "type": "object",
                        "required": ["type", "params"],
                        "properties": {
                            "type": {"enum": ["gt", "lt", "within_range", "outside_range"]},
                            "params": {"type": "array", "items": {"type": "number"}, "minItems": 1},
                        },
                    }
                },
            },
        },
    },
}


def grafana_rules() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(GRAFANA.read_text())
    jsonschema.validate(document, GRAFANA_SCHEMA)
    return {rule["title"]: rule for group in document["groups"] for rule in group["rules"]}


def test_grafana_rules_follow_the_documented_provisioning_format() -> None:
    for title, rule in grafana_rules().items():
        queries = {query["refId"]: query for query in rule["data"]}
        assert rule["condition"] in queries, title
        condition = queries[rule["condition"]]
        assert condition["datasourceUid"] == "__expr__"
        jsonschema.validate(condition["model"], _THRESHOLD)
        assert condition["model"]["expression"] in queries
        for query in queries.values():
            assert query["model"]["refId"] == query["refId"]


def test_the_grafana_schema_refuses_what_grafana_would() -> None:
    rule = next(iter(grafana_rules().values()))
    broken = [
        {"apiVersion": 2, "groups": []},
        {
            "apiVersion": 1,
            "groups": [{"orgId": 1, "name": "g", "folder": "f", "interval": "1 m", "rules": []}],
        },
        {
            "apiVersion": 1,
            "groups": [
                {
                    "orgId": 1,
                    "name": "g",
                    "folder": "f",
                    "interval": "1m",
                    "rules": [rule | {"noDataState": "Quiet"}],
                }
            ],
        },
        {
            "apiVersion": 1,
            "groups": [
                {"orgId": 1, "name": "g", "folder": "f", "interval": "1m", "rules": [rule | {"expr": "up"}]}
            ],
        },
    ]
    for document in broken:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(document, GRAFANA_SCHEMA)


def test_grafana_rules_are_the_prometheus_rules() -> None:
    ours = grafana_rules()
    assert set(ours) == set(rules())
    for name, rule in rules().items():
        grafana = ours[name]
        query = next(q for q in grafana["data"] if q["refId"] == "A")
        assert query["model"]["expr"] == rule["expr"] and query["model"]["instant"] is True, name
        assert grafana["for"] == rule.get("for", "0s") and grafana["labels"] == rule["labels"], name
        assert grafana.get("keepFiringFor") == rule.get("keep_firing_for"), name
        # Grafana's templates read a query's value as $values.A.Value, not $value.
        assert grafana["annotations"] == {
            key: text.replace("$value", "$values.A.Value") for key, text in rule["annotations"].items()
        }, name
        # An empty result is a quiet rule, as in Prometheus.
        assert grafana["noDataState"] == "OK"


@pytest.mark.slow  # runs Alertmanager
@pytest.mark.timeout(90)
def test_alertmanager_holds_back_every_check_alert_when_no_agent_is_left(
    alertmanager: tuple[int, Notifications],
) -> None:
    port, _ = alertmanager
    posted = [
        ("no agent is running", "alertname=VantageAgentDown severity=critical job=vantage"),
        (
            "charges down in eu",
            "alertname=VantageCheckDown severity=warning vendor=stripe check=charges region=eu",
        ),
        (
            "nightly stopped reporting",
            "alertname=VantageHeartbeatStale severity=critical check=nightly region=us",
        ),
        # Not about a check: it stays.
        ("reload refused", "alertname=VantageConfigReloadFailed severity=warning instance=eu-0:8080"),
    ]
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v2/alerts",
        data=json.dumps([_alert(summary, labels) for summary, labels in posted]).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200

    def suppressed() -> set[str] | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/alerts", timeout=10) as response:
            listed = json.loads(response.read())
        states = {a["annotations"]["summary"]: a["status"]["state"] for a in listed}
        if len(states) < len(posted) or "unprocessed" in states.values():
            return None
        return {summary for summary, state in states.items() if state == "suppressed"}

    # The inhibitor may see the source a moment after the targets: wait for the settled state.
    expected = {"charges down in eu", "nightly stopped reporting"}
    wait_until(lambda: suppressed() == expected, timeout=30)


@pytest.mark.slow  # runs promtool
def test_grafana_conditions_hold_for_every_alert_the_rules_fire(tmp_path: Path) -> None:
    """The promtool unit tests' series, at each moment an alert fires there: every series query A
    returns passes condition B's threshold, so the Grafana rule fires for it too."""
    promtool = need_tool("promtool", "prometheus")
    grafana = grafana_rules()
    operators = {"gt": ">", "lt": "<"}
    document = yaml.safe_load((ROOT / "tests" / "prometheus" / "alerts_test.yaml").read_text())
    groups = []
    for group in document["tests"]:
        checks = []
        for case in group.get("alert_rule_test", []):
            if not case["exp_alerts"]:
                continue
            rule = grafana[case["alertname"]]
            query = next(q for q in rule["data"] if q["refId"] == "A")["model"]["expr"]
            condition = next(q for q in rule["data"] if q["refId"] == rule["condition"])["model"]
            evaluator = condition["conditions"][0]["evaluator"]
            passing = f"({query}) {operators[evaluator['type']]} {evaluator['params'][0]}"
            # A returns series at that moment (unless the alert is kept firing past its last
            # series: keepFiringFor, as keep_firing_for), and none of them fails the threshold.
            if "keepFiringFor" not in rule:
                checks.append({"expr": f"count({query}) > bool 0", "eval_time": case["eval_time"],
                               "exp_samples": [{"labels": "{}", "value": 1}]})  # fmt: skip
            checks.append({"expr": f"({query}) unless ({passing})", "eval_time": case["eval_time"],
                           "exp_samples": []})  # fmt: skip
        if checks:
            groups.append(
                {key: group[key] for key in ("interval", "input_series")} | {"promql_expr_test": checks}
            )
    assert len(groups) >= 10
    tests = tmp_path / "grafana_test.yaml"
    tests.write_text(
        yaml.safe_dump({"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": groups})
    )
    tested = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.mark.slow  # runs the agent, Prometheus and Alertmanager
@pytest.mark.timeout(120)
def test_from_a_failing_vendor_to_a_page(alertmanager: tuple[int, Notifications], tmp_path: Path) -> None:
    """The whole chain: an agent probes a vendor that fails, Prometheus evaluates the shipped rules on
    what it scrapes and sends the alerts to the example Alertmanager, which pages and posts; the
    check in a maintenance window fails as much and stays quiet."""
    am_port, notifications = alertmanager

    async def broken(_: web.Request) -> web.Response:
        return web.json_response({"error": "maintenance"}, status=503)

    vendor_app = web.Application()
    vendor_app.router.add_get("/v1/charges", broken)
    with thread_server(vendor_app) as vendor:
        check = {
            "name": "charges",
            "type": "http",
            "target": f"http://127.0.0.1:{vendor}/v1/charges",
            "interval": "1s",
            "timeout": "900ms",
            "labels": {"vendor": "stripe"},
        }
        # The same vendor's refunds endpoint fails too, inside an announced maintenance window.
        now = datetime.now(UTC)
        window = {
            "start": (now - timedelta(hours=1)).isoformat(),
            "end": (now + timedelta(hours=1)).isoformat(),
        }
        refunds = check | {"name": "refunds", "maintenance": [{"name": "stripe-upgrade", **window}]}
        agent = AgentProcess([check, refunds], {"VANTAGE_REGION": "eu-west-1"})
        prometheus = None
        try:
            wait_until(lambda: _ok(agent.url("/readyz")), timeout=30)
            config = {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ALERTS)],
                "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
                "scrape_configs": [
                    {"job_name": "vantage", "static_configs": [{"targets": [f"127.0.0.1:{agent.port}"]}]}
                ],
            }
            (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
            prometheus = subprocess.Popen(
                [
                    need("prometheus"),
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{free_port()}",
                    "--log.level=warn",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            # Confirmed down in its only region: the warning to the payments channel, and the page
            # (a check run in one region pages on its own).
            wait_until(
                lambda: (
                    "charges is down in most of the regions" in notifications.text("/pagerduty")
                    and "charges is down in eu-west-1" in notifications.text("/slack/payments")
                ),
                timeout=60,
            )
            # Quiet for the check in maintenance: Prometheus never sent an alert of it.
            assert "refunds" not in "\n".join(json.dumps(body) for _, body in notifications.bodies)
            with urllib.request.urlopen(f"http://127.0.0.1:{am_port}/api/v2/alerts", timeout=10) as response:
                received = json.loads(response.read())
            assert {a["labels"]["check"] for a in received} == {"charges"}
            page = next(body for where, body in notifications.bodies if where == "/pagerduty")
            assert page["routing_key"] == "R0UT1NGKEY" and page["payload"]["severity"] == "critical"
            assert page["links"] == [{"href": f"{PLACEHOLDER}#vantagecheckdowninregions", "text": "runbook"}]
        finally:
            if prometheus is not None:
                prometheus.terminate()
                prometheus.wait(timeout=20)
            agent.kill()
