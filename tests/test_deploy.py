"""The deployment artefacts: the alert rules (promtool), the dashboard, and the Helm chart rendered
offline with the Helm SDK and validated against Kubernetes' schemas."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from agent.sdk.durations import parse_duration

from .deploy import (
    ALERTS,
    CHART,
    DASHBOARD,
    KUBERNETES,
    PROFILES,
    alert_expressions,
    golden_metric_names,
    metric_names,
    need,
)
from .helpers import ROOT, config_from

CRDS = {"ServiceMonitor", "PrometheusRule"}


def test_rules_read_only_metrics_the_agent_exports() -> None:
    # The dashboard's queries: tests/test_dashboard.py (with the names of issue 15 not yet golden).
    known = golden_metric_names()
    used = {name: metric_names(expression) for name, expression in alert_expressions().items()}
    assert all(used.values()), "an expression reads no metric at all"
    unknown = {name: names - known for name, names in used.items() if names - known}
    assert not unknown, f"not in tests/golden/metrics.txt: {unknown}"


def test_the_dashboard_covers_what_the_issue_asks() -> None:
    text = DASHBOARD.read_text()
    for metric in (
        "probe_success",
        "probe_all_duration_seconds_bucket",
        "probe_http_duration_seconds",
        "probe_ssl_earliest_cert_expiry",
        "probe_ratelimit_remaining",
        "probe_api_sunset_timestamp_seconds",
        "probe_webhook_delivery_seconds_bucket",
        "probe_sync_lag_seconds",
        "probe_heartbeat_age_seconds",
    ):
        assert metric in text, metric
    variables = {v["name"] for v in json.loads(text)["templating"]["list"]}
    assert {"region", "check"} <= variables


@pytest.mark.slow  # runs the promtool binary
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = need("promtool")
    checked = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_expressions())} rules found" in checked.stdout
    tests = ROOT / "tests" / "prometheus" / "alerts_test.yaml"
    tested = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Every alert has a unit test that makes it fire.
    fired = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels", tests.read_text()))
    assert fired == set(alert_expressions())


def test_the_chart_lints() -> None:
    result = helm.lint(str(CHART))
    problems = [m for m in result["messages"] if m["severity"] > 1]  # 1 is info (an icon is recommended)
    assert not result["errors"] and not problems, result


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values, name="vantage", namespace="monitoring")
    return [
        document
        for name, text in manifests.items()
        if name.endswith(".yaml")
        for document in yaml.safe_load_all(text)
        if document
    ]


def profile(path: Path | None) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) if path else {}


@pytest.mark.parametrize("path", [None, *PROFILES], ids=["defaults", *(p.stem for p in PROFILES)])
def test_every_profile_renders_to_valid_kubernetes_objects(path: Path | None) -> None:
    values = profile(path)
    documents = render(values)
    kinds = [d["kind"] for d in documents]
    for document in documents:
        if document["kind"] in CRDS:
            assert document["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kubernetes_validate.validate(document, KUBERNETES, strict=True)
    regions = values.get("regions", [{"name": "local", "replicas": 1}])
    assert kinds.count("StatefulSet") == len(regions)
    for statefulset in (d for d in documents if d["kind"] == "StatefulSet"):
        pod = statefulset["spec"]["template"]["spec"]
        container = pod["containers"][0]
        security = container["securityContext"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert security["readOnlyRootFilesystem"] is True and security["capabilities"]["drop"] == ["ALL"]
        assert security["allowPrivilegeEscalation"] is False
        assert {p["httpGet"]["path"] for p in (container["livenessProbe"], container["readinessProbe"])} == {
            "/healthz",
            "/readyz",
        }
        env = {e["name"]: e.get("value") for e in container["env"]}
        region = statefulset["metadata"]["labels"]["vantage/region"]
        replicas = next(r.get("replicas", 1) for r in regions if r["name"] == region)
        assert env["VANTAGE_REGION"] == region and env["VANTAGE_SHARD"] == "auto"
        assert env["VANTAGE_REPLICAS"] == str(replicas) == str(statefulset["spec"]["replicas"])
    # The rendered check set is one the agent accepts.
    checks = next(
        d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "vantage-checks"
    )
    document = yaml.safe_load(checks["data"]["checks.yaml"])
    secrets = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", checks["data"]["checks.yaml"]))
    config_from(document, **{name: "s3cret-value-0123456789" for name in secrets})


def test_profiles_set_what_their_backend_needs() -> None:
    by_name = {p.stem: p for p in PROFILES}
    assert set(by_name) == {"datadog", "grafana-cloud", "otlp-collector", "prometheus"}

    def env_of(name: str) -> dict[str, Any]:
        statefulset = next(d for d in render(profile(by_name[name])) if d["kind"] == "StatefulSet")
        return {
            e["name"]: e.get("value", e.get("valueFrom"))
            for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]
        }

    # The current semantic convention, not the deprecated deployment.environment.
    for path in PROFILES:
        attributes = profile(path).get("otel", {}).get("resourceAttributes", "")
        keys = {item.partition("=")[0].strip() for item in attributes.split(",") if item}
        assert "deployment.environment" not in keys, path.name
        assert "deployment.environment.name" in keys or not keys, path.name

    datadog = env_of("datadog")
    assert datadog["NODE_IP"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    assert datadog["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://$(NODE_IP):4318"
    assert datadog["OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"] == "delta"
    grafana = env_of("grafana-cloud")
    assert grafana["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    assert grafana["OTEL_EXPORTER_OTLP_HEADERS"] == {
        "secretKeyRef": {"name": "grafana-cloud-otlp", "key": "headers"}
    }
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env_of("prometheus")

    documents = render(profile(by_name["prometheus"]))
    kinds = {d["kind"] for d in documents}
    assert {"ServiceMonitor", "PrometheusRule", "Ingress"} <= kinds
    rule = next(d for d in documents if d["kind"] == "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())  # the same rules promtool tests
    dashboard = next(
        d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")
    )
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["vantage.json"]) == json.loads(DASHBOARD.read_text())
    monitor = next(d for d in documents if d["kind"] == "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    statefulset = next(d for d in documents if d["kind"] == "StatefulSet")
    env = {e["name"]: e.get("value") for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]}
    name = statefulset["metadata"]["name"]
    assert env["VANTAGE_PEER_URL"] == f"http://{name}-{{shard}}.{name}-headless.monitoring.svc:8081"
    assert env["VANTAGE_PUBLIC_URL"] == "https://eu-west-1.hooks.shop.example"
    sysctls = statefulset["spec"]["template"]["spec"]["securityContext"]["sysctls"]
    assert sysctls == [{"name": "net.ipv4.ping_group_range", "value": "0 2147483647"}]
    ingress = next(d for d in documents if d["kind"] == "Ingress")
    paths = {p["path"] for p in ingress["spec"]["rules"][0]["http"]["paths"]}
    assert paths == {"/hooks", "/heartbeat"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"regions": []}, "at '/regions': minItems: got 0, want 1"),
        ({"regions": [{"name": "EU West"}]}, "at '/regions/0/name': 'EU West' does not match pattern"),
        ({"regions": [{"name": "eu", "replicas": 0}]}, "at '/regions/0/replicas': minimum: got 0, want 1"),
        (
            {"otel": {"protocol": "http/json"}},
            "at '/otel/protocol': value must be one of 'http/protobuf', 'grpc'",
        ),
        ({"otel": {"endpoint": "otel-collector:4318"}}, "at '/otel/endpoint'"),
        ({"replicas": 3}, "additional properties 'replicas' not allowed"),
        ({"agent": {"workers": 0}}, "at '/agent/workers'"),
        ({"agent": {"shutdownTimeout": "ten seconds"}}, "at '/agent/shutdownTimeout'"),
        ({"checks": [{"name": "a", "type": "http"}]}, "missing property 'target'"),
        ({"secrets": {"values": {"bad-name": "x"}}}, "invalid propertyName 'bad-name'"),
    ],
)
def test_bad_values_are_rejected_by_the_schema(values: dict[str, Any], message: str) -> None:
    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm.HelmValuesError) as caught:
            chart.render(values, name="vantage", namespace="monitoring")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"checks": [{"name": "job", "type": "heartbeat", "target": "a job"}]},
            'check "job" is a heartbeat check: set inbound.enabled',
        ),
        ({"regions": [{"name": "eu"}, {"name": "eu"}]}, 'regions: "eu" is listed twice'),
        (
            {"serviceMonitor": {"enabled": True, "authorization": {"type": "Bearer"}, "basicAuth": {}}},
            "serviceMonitor: authorization and basicAuth exclude each other",
        ),
    ],
)
def test_values_the_schema_cannot_judge_are_rejected_at_render(values: dict[str, Any], message: str) -> None:
    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm.HelmError) as caught:
            chart.render(values, name="vantage", namespace="monitoring")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("timeout", "grace"),
    [
        ("500ms", 6),
        ("1.5s", 7),
        ("10s", 15),
        ("90", 95),
        ("1m30s", 95),
        ("2h", 7205),
        ("1d", 86405),
        ("1d12h", 129605),
    ],
)
def test_termination_grace_covers_the_shutdown_budget_in_every_unit(timeout: str, grace: int) -> None:
    statefulset = next(
        d for d in render({"agent": {"shutdownTimeout": timeout}}) if d["kind"] == "StatefulSet"
    )
    pod = statefulset["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    # The agent reads the same text with its own parser: the kubelet waits its budget and 5 s more.
    budget = parse_duration(env["VANTAGE_SHUTDOWN_TIMEOUT"])
    assert env["VANTAGE_SHUTDOWN_TIMEOUT"] == timeout
    assert pod["terminationGracePeriodSeconds"] == grace == math.ceil(budget) + 5


def only(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = [d for d in documents if d["kind"] == kind]
    return found


def selected_services(documents: list[dict[str, Any]], monitor: dict[str, Any]) -> list[dict[str, Any]]:
    """The Services a ServiceMonitor's selector picks, as prometheus-operator matches them."""
    wanted = monitor["spec"]["selector"]["matchLabels"]
    return [
        d
        for d in documents
        if d["kind"] == "Service" and wanted.items() <= d["metadata"].get("labels", {}).items()
    ]


@pytest.mark.parametrize("override", [{}, {"nameOverride": "probe"}, {"fullnameOverride": "synthetic"}])
def test_the_job_label_is_vantage_whatever_the_names(override: dict[str, Any]) -> None:
    documents = render(
        {"serviceMonitor": {"enabled": True}, "regions": [{"name": "eu"}, {"name": "us"}], **override}
    )
    monitor = only(documents, "ServiceMonitor")
    services = selected_services(documents, monitor)
    assert {s["metadata"]["labels"]["vantage/region"] for s in services} == {"eu", "us"}
    # prometheus-operator sets job to the value of the selected Service's jobLabel label.
    assert {s["metadata"]["labels"][monitor["spec"]["jobLabel"]] for s in services} == {"vantage"}
    [endpoint] = monitor["spec"]["endpoints"]
    assert all(endpoint["port"] in {p["name"] for p in s["spec"]["ports"]} for s in services)
    assert 'up{job="vantage"}' in ALERTS.read_text()


CRD_FIELDS: dict[str, Any] = {
    # The object's spec.
    "targetLabels": ["team"],
    "podTargetLabels": ["vantage/region"],
    "sampleLimit": 0,
    "targetLimit": 10,
    "labelLimit": 40,
    "labelNameLengthLimit": 64,
    "labelValueLengthLimit": 2048,
    "keepDroppedTargets": 5,
    "bodySizeLimit": "64MiB",
    "scrapeProtocols": ["OpenMetricsText1.0.0", "PrometheusText0.0.4"],
    "fallbackScrapeProtocol": "PrometheusText0.0.4",
    "attachMetadata": {"node": True},
    "scrapeClass": "tls-mesh",
}
ENDPOINT_FIELDS: dict[str, Any] = {
    "interval": "1m",
    "scrapeTimeout": "45s",
    "path": "/metrics",
    "scheme": "https",
    "tlsConfig": {
        "ca": {"secret": {"name": "vantage-ca", "key": "ca.crt"}},
        "serverName": "vantage.monitoring.svc",
        "minVersion": "TLS12",
    },
    "honorLabels": False,
    "honorTimestamps": True,
    "trackTimestampsStaleness": True,
    "relabelings": [
        {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node", "action": "replace"}
    ],
    "metricRelabelings": [
        {"action": "drop", "sourceLabels": ["__name__"], "regex": "http_client_request_duration_seconds_.*"},
        {"action": "hashmod", "sourceLabels": ["check"], "modulus": 4, "targetLabel": "shard"},
    ],
    "params": {"format": ["prometheus"]},
    "authorization": {"type": "Bearer", "credentials": {"name": "vantage-api", "key": "token"}},
    "proxyUrl": "http://proxy.monitoring:3128",
    "followRedirects": False,
    "enableHttp2": True,
    "filterRunning": True,
}


def test_service_monitor_takes_what_the_crd_takes() -> None:
    values = {
        "serviceMonitor": {
            "enabled": True,
            "namespace": "observability",
            "labels": {"release": "kube-prometheus-stack"},
            "annotations": {"team": "platform"},
            **CRD_FIELDS,
            **ENDPOINT_FIELDS,
        },
        "prometheusRule": {
            "enabled": True,
            "namespace": "observability",
            "labels": {"release": "kube-prometheus-stack"},
            "annotations": {"team": "platform"},
        },
    }
    documents = render(values)
    monitor = only(documents, "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == "observability"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["metadata"]["annotations"] == {"team": "platform"}
    spec = monitor["spec"]
    assert {k: spec[k] for k in CRD_FIELDS} == CRD_FIELDS
    # In another namespace than the release's, it must still find the release's Services.
    assert spec["namespaceSelector"] == {"matchNames": ["monitoring"]}
    [endpoint] = spec["endpoints"]
    assert endpoint == {"port": "http", **ENDPOINT_FIELDS}
    rule = only(documents, "PrometheusRule")
    assert rule["metadata"]["namespace"] == "observability"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["metadata"]["annotations"] == {"team": "platform"}


OTHER_ENDPOINT_FIELDS: dict[str, Any] = {
    "basicAuth": {
        "username": {"name": "scrape", "key": "user"},
        "password": {"name": "scrape", "key": "password", "optional": False},
    },
    "bearerTokenSecret": {"name": "scrape", "key": "token"},
    "noProxy": "10.0.0.0/8",
    "proxyFromEnvironment": False,
    "proxyConnectHeader": {"Proxy-Authorization": [{"name": "proxy", "key": "header"}]},
}
OAUTH2 = {
    "clientId": {"configMap": {"name": "scrape", "key": "client-id"}},
    "clientSecret": {"name": "scrape", "key": "client-secret"},
    "tokenUrl": "https://auth.example/token",
    "scopes": ["metrics"],
    "endpointParams": {"audience": "vantage"},
    "tlsConfig": {"insecureSkipVerify": False, "maxVersion": "TLS13"},
}
METADATA_FIELDS = {"enabled", "namespace", "labels", "annotations", "jobLabel"}


def test_every_field_the_schema_accepts_reaches_the_service_monitor() -> None:
    # A field the schema takes but the template left out would be dropped without a word.
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["serviceMonitor"]
    tested = (
        METADATA_FIELDS | set(CRD_FIELDS) | set(ENDPOINT_FIELDS) | set(OTHER_ENDPOINT_FIELDS) | {"oauth2"}
    )
    assert set(schema["properties"]) == tested
    for fields in (OTHER_ENDPOINT_FIELDS, {"oauth2": OAUTH2}):
        monitor = only(render({"serviceMonitor": {"enabled": True, **fields}}), "ServiceMonitor")
        [endpoint] = monitor["spec"]["endpoints"]
        assert {k: endpoint[k] for k in fields} == fields


def test_service_monitor_defaults_stay_small() -> None:
    monitor = only(render({"serviceMonitor": {"enabled": True}}), "ServiceMonitor")
    assert "namespace" not in monitor["metadata"] and "namespaceSelector" not in monitor["spec"]
    assert monitor["spec"]["endpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "30s", "scrapeTimeout": "25s"}
    ]
    # An empty interval or timeout leaves it to Prometheus's global one, as the CRD does.
    monitor = only(
        render({"serviceMonitor": {"enabled": True, "interval": "", "scrapeTimeout": ""}}), "ServiceMonitor"
    )
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics"}]
    # The ServiceMonitor's own namespace named as the release's needs no selector.
    monitor = only(render({"serviceMonitor": {"enabled": True, "namespace": "monitoring"}}), "ServiceMonitor")
    assert "namespaceSelector" not in monitor["spec"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"interval": "30 s"}, "at '/serviceMonitor/interval': '30 s' does not match pattern"),
        ({"scrapeTimeout": "1.5s"}, "at '/serviceMonitor/scrapeTimeout': '1.5s' does not match pattern"),
        ({"interval": "30S"}, "at '/serviceMonitor/interval'"),
        ({"interval": "30s1m"}, "at '/serviceMonitor/interval'"),
        ({"relabelings": [{"action": "rename"}]}, "at '/serviceMonitor/relabelings/0/action'"),
        ({"relabelings": [{"source_labels": ["a"]}]}, "additional properties 'source_labels' not allowed"),
        (
            {"metricRelabelings": [{"sourceLabels": ["a-b"]}]},
            "at '/serviceMonitor/metricRelabelings/0/sourceLabels/0'",
        ),
        ({"scheme": "HTTPS"}, "at '/serviceMonitor/scheme'"),
        ({"tlsConfig": {"insecure": True}}, "additional properties 'insecure' not allowed"),
        ({"labels": {"release": 1}}, "at '/serviceMonitor/labels/release'"),
        ({"honorLabels": "yes"}, "at '/serviceMonitor/honorLabels'"),
        ({"namespace": "Observability"}, "at '/serviceMonitor/namespace'"),
        ({"endpoints": []}, "additional properties 'endpoints' not allowed"),
        (
            {"oauth2": {"clientSecret": {"name": "a", "key": "b"}}},
            "missing properties 'clientId', 'tokenUrl'",
        ),
        ({"proxyUrl": "proxy:3128"}, "at '/serviceMonitor/proxyUrl'"),
        ({"tlsConfig": {"ca": {"secret": {"name": "ca"}}}}, "missing property 'key'"),
    ],
)
def test_service_monitor_values_the_crd_refuses_are_refused(values: dict[str, Any], message: str) -> None:
    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm.HelmValuesError) as caught:
            chart.render(
                {"serviceMonitor": {"enabled": True, **values}}, name="vantage", namespace="monitoring"
            )
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("interval", "timeout", "refused"),
    [
        ("30s", "40s", True),
        ("30s", "30001ms", True),
        ("1m", "1m1s", True),
        ("1h", "1d", True),
        ("30s", "30s", False),
        ("1m", "59s", False),
        ("1d", "2h", False),
        ("2m", "1m30s", False),
    ],
)
def test_a_scrape_timeout_above_the_interval_is_refused(interval: str, timeout: str, refused: bool) -> None:
    values = {"serviceMonitor": {"enabled": True, "interval": interval, "scrapeTimeout": timeout}}
    if not refused:
        [endpoint] = only(render(values), "ServiceMonitor")["spec"]["endpoints"]
        assert (endpoint["interval"], endpoint["scrapeTimeout"]) == (interval, timeout)
        return
    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm.HelmError) as caught:
            chart.render(values, name="vantage", namespace="monitoring")
    assert f"serviceMonitor.scrapeTimeout {timeout} is longer than serviceMonitor.interval {interval}" in str(
        caught.value
    )


def test_an_interval_below_the_default_scrape_timeout_says_to_set_the_timeout_too() -> None:
    # Only the interval written, as a kube-prometheus-stack user would: the refusal is of a value
    # the user did not write (the chart's default scrapeTimeout), so it says which one to set.
    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm.HelmError) as caught:
            chart.render({"serviceMonitor": {"enabled": True, "interval": "15s"}}, name="vantage")
    hint = "set serviceMonitor.scrapeTimeout with the interval (the chart's default is 25s)"
    assert hint in str(caught.value)


def notes(values: dict[str, Any]) -> str:
    with helm.Chart.load(str(CHART)) as chart:
        return str(
            chart.render(values, name="vantage", namespace="monitoring")["vantage/templates/NOTES.txt"]
        )


def test_the_notes_say_when_kube_prometheus_stack_would_not_pick_the_objects_up() -> None:
    enabled = {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}
    text = notes(enabled)
    assert "the ServiceMonitor has no `release` label" in text and "serviceMonitor.labels.release" in text
    assert "the PrometheusRule has no `release` label" in text and "prometheusRule.labels.release" in text
    labelled = {kind: {"enabled": True, "labels": {"release": "kube-prometheus-stack"}} for kind in enabled}
    assert "release` label" not in notes(labelled)
    assert "release` label" not in notes({})


def test_the_dashboard_configmap_goes_where_the_sidecar_looks() -> None:
    values = {
        "grafanaDashboard": {
            "enabled": True,
            "namespace": "grafana",
            "annotations": {"grafana_folder": "Vantage"},
        }
    }
    [configmap] = [d for d in render(values) if d["metadata"]["name"].endswith("-dashboard")]
    assert configmap["metadata"]["namespace"] == "grafana"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Vantage"}
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
