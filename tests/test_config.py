"""Configuration errors: each bad input gets a message naming the variable, check and field."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from agent.cli import main
from agent.config.secrets import Redactor, SecretResolver
from agent.config.settings import load_config
from agent.errors import ConfigError
from agent.sdk.durations import format_duration, parse_duration
from agent.sdk.urls import redact_url
from agent.telemetry.providers import build_resource, build_telemetry


def checks(*items: Mapping[str, object], **extra: object) -> str:
    return yaml.safe_dump({"checks": list(items), **extra})


HTTP = {"name": "a", "type": "http", "target": "https://api.example/v1"}

BAD = [
    ({"VANTAGE_PORT": "abc"}, "VANTAGE_PORT: Input should be a valid integer"),
    ({"VANTAGE_CONCURRENCY": "0"}, "VANTAGE_CONCURRENCY: Input should be greater than or equal to 1"),
    ({"VANTAGE_LOG_FORMAT": "xml"}, "VANTAGE_LOG_FORMAT: Input should be 'json' or 'text'"),
    ({"VANTAGE_SHARD": "3/2"}, "VANTAGE_SHARD: use 'INDEX/COUNT' with 0 <= INDEX < COUNT"),
    ({"VANTAGE_SHUTDOWN_TIMEOUT": "soon"}, "VANTAGE_SHUTDOWN_TIMEOUT: 'soon' is not a duration"),
    ({"VANTAGE_REGION": "eu west"}, "VANTAGE_REGION: String should match pattern"),
    ({"VANTAGE_CHECKS": None}, "no checks: set VANTAGE_CHECKS"),
    (
        {"VANTAGE_LOGFORMAT": "text"},
        "VANTAGE_LOGFORMAT: not a setting of the agent; did you mean VANTAGE_LOG_FORMAT?",
    ),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "otel:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT: 'otel:4318' has no scheme"),
    (
        {"VANTAGE_CHECKS": checks({**HTTP, "intervall": "5s"})},
        "VANTAGE_CHECKS: unknown field 'intervall' in check 'a' (checks[0]): did you mean 'interval'?",
    ),
    (
        {"VANTAGE_CHECKS": checks({**HTTP, "type": "htpp"})},
        "unknown probe type 'htpp'; available: dns, flow, grpc, heartbeat, http, icmp, statuspage, sync, "
        "tcp, tls, webhook; did you mean 'http'?",
    ),
    (
        {
            "VANTAGE_CHECKS": checks(
                {**HTTP, "settings": {"assert": [{"source": "status", "op": "equal", "value": 1}]}}
            )
        },
        "field 'settings.assert[0].op': 'equal' is not one of 'eq', 'ne', ",
    ),
    (
        {"VANTAGE_CHECKS_FILE": "/nonexistent/checks.yaml"},
        "VANTAGE_CHECKS and VANTAGE_CHECKS_FILE are both set",
    ),
    (
        {"VANTAGE_CHECKS": None, "VANTAGE_CHECKS_FILE": "/nonexistent/checks.yaml"},
        "VANTAGE_CHECKS_FILE (/nonexistent/checks.yaml): cannot be read",
    ),
    (
        {"VANTAGE_CHECKS": "checks: [unclosed"},
        "VANTAGE_CHECKS: not valid YAML: line 2, column 1: did not find expected ',' or ']' "
        "(while parsing a flow sequence started at line 1, column 9)",
    ),
    ({"VANTAGE_CHECKS": "check: []"}, "VANTAGE_CHECKS: unknown field 'check': did you mean 'checks'?"),
    (
        {"VANTAGE_CHECKS": checks({**HTTP, "type": "smtp"})},
        "VANTAGE_CHECKS: check 'a' (checks[0]), field 'type': "
        "unknown probe type 'smtp'; available: "
        "dns, flow, grpc, heartbeat, http, icmp, statuspage, sync, tcp, tls, webhook",
    ),
    (
        {"VANTAGE_CHECKS": checks({**HTTP, "target": "api.example/v1"})},
        "check 'a' (checks[0]), field 'target': 'api.example/v1' is not an http:// or https:// URL",
    ),
    (
        {"VANTAGE_CHECKS": checks({**HTTP, "target": "https://api.example:99999/"})},
        "field 'target': 'https://api.example:99999/' has a bad port",
    ),
    (
        {
            "VANTAGE_CHECKS": checks(
                {**HTTP, "settings": {"schema_drift": {"baseline_file": "/nonexistent/s.json"}}}
            )
        },
        "field 'settings.schema_drift.baseline_file': '/nonexistent/s.json' cannot be read",
    ),
    (
        {"VANTAGE_CHECKS": checks({**HTTP, "settings": {"bogus": 1}})},
        "unknown field 'settings.bogus' in check 'a' (checks[0]): not one of its",
    ),
    (
        {"VANTAGE_CHECKS": checks({**HTTP, "interval": "5s", "timeout": "5s"})},
        "check 'a' (checks[0]), field 'timeout': the timeout (5s) must be below the interval (5s)",
    ),
    (
        {"VANTAGE_CHECKS": checks({**HTTP, "interval": "5 minutes"})},
        "check 'a' (checks[0]), field 'interval': '5 minutes' is not a duration",
    ),
    (
        {"VANTAGE_CHECKS": checks(HTTP, {**HTTP, "target": "https://b.example"})},
        "check 'a' (checks[1]), field 'name': the name 'a' is already used by checks[0]",
    ),
    (
        {"VANTAGE_CHECKS": checks({**HTTP, "name": "Stripe Charges"})},
        "check 'Stripe Charges' (checks[0]), field 'name': 'Stripe Charges' does not have the expected form",
    ),
    (
        {
            "VANTAGE_CHECKS": checks(
                {**HTTP, "settings": {"headers": {"Authorization": "Bearer ${STRIPE_KEY}"}}}
            )
        },
        "check 'a' (checks[0]), field 'settings.headers.Authorization': "
        "environment variable STRIPE_KEY is not set",
    ),
    (
        {"VANTAGE_CHECKS": checks({**HTTP, "settings": {"headers": {"X": "${file:/nonexistent/secret}"}}})},
        "field 'settings.headers.X': secret file /nonexistent/secret cannot be read",
    ),
    (
        {
            "VANTAGE_CHECKS": checks(
                {**HTTP, "settings": {"assert": [{"source": "body", "op": "matches", "value": "("}]}}
            )
        },
        "field 'settings.assert[0]': value '(' is not a valid regular expression",
    ),
    (
        {
            "VANTAGE_CHECKS": checks(
                {**HTTP, "settings": {"assert": [{"source": "body", "path": "$[", "op": "exists"}]}}
            )
        },
        "field 'settings.assert[0]': 'path' '$[' is not a valid JSONPath",
    ),
    (
        {
            "VANTAGE_CHECKS": checks(
                {**HTTP, "settings": {"assert": [{"source": "status", "op": "in", "value": 200}]}}
            )
        },
        "field 'settings.assert[0]': op 'in' needs a list as its value",
    ),
    (
        {
            "VANTAGE_CHECKS": checks(
                {
                    **HTTP,
                    "settings": {"assert": [{"source": "body", "op": "schema", "value": {"type": "thing"}}]},
                }
            )
        },
        "field 'settings.assert[0]': the JSON Schema is invalid",
    ),
    (
        {"VANTAGE_CHECKS": checks({**HTTP, "labels": {"team-name": "x"}})},
        "field 'labels': label name 'team-name' is not a valid metric label name",
    ),
    (
        {"VANTAGE_CHECKS": checks({**HTTP, "labels": {"check": "x"}})},
        "field 'labels': label name 'check' is reserved",
    ),
    (
        {"VANTAGE_CHECKS": checks({**HTTP, "settings": {"tls": {"ca_file": "/nonexistent/ca.pem"}}})},
        "field 'settings.tls': ca_file '/nonexistent/ca.pem' does not exist",
    ),
    (
        {"VANTAGE_CHECKS": checks({**HTTP, "settings": {"body": "x", "json": {"a": 1}}})},
        "field 'settings': give 'body' or 'json', not both",
    ),
]


@pytest.mark.parametrize(("env", "message"), BAD, ids=[m[:40] for _, m in BAD])
def test_bad_configuration_is_named_and_exits_2(
    env: dict[str, str | None],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in list(os.environ):
        if name.startswith(("VANTAGE_", "OTEL_")):
            monkeypatch.delenv(name)
    environ = {"VANTAGE_CHECKS": checks(HTTP), **env}
    for name, value in environ.items():
        if value is not None:
            monkeypatch.setenv(name, value)
    assert main(["validate"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("vantage: configuration error:")
    assert message in error


def test_all_problems_are_reported_at_once() -> None:
    bad = checks({**HTTP, "type": "nope"}, {**HTTP, "name": "b", "interval": "x"})
    with pytest.raises(ConfigError) as caught:
        load_config({"VANTAGE_CHECKS": bad})
    assert "checks[0]" in str(caught.value) and "checks[1]" in str(caught.value)


def test_secret_values_never_appear_in_errors() -> None:
    environ = {
        "VANTAGE_CHECKS": checks({**HTTP, "settings": {"max_redirects": "${SECRET}"}}),
        "SECRET": "hunter2-very-secret",
        "VANTAGE_API_TOKEN": "tok-abcdef",
        "VANTAGE_PORT": "tok-abcdef",
    }
    with pytest.raises(ConfigError) as caught:
        load_config(environ)
    assert "hunter2" not in str(caught.value) and "tok-abcdef" not in str(caught.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_TIMEOUT": "10000"},
            "reads it in seconds (not milliseconds",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "http/json is not supported by the OpenTelemetry Python SDK",
        ),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: unknown exporter 'zipkin'; installed:"),
        ({"OTEL_METRICS_EXPORTER": "statsd"}, "OTEL_METRICS_EXPORTER: unknown exporter 'statsd'"),
    ],
)
def test_bad_opentelemetry_settings(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        build_telemetry(env, build_resource(env, region="local", version="0"))
    assert message in str(caught.value)


def test_defaults_merge_and_short_intervals_get_a_fitting_timeout() -> None:
    document = {
        "defaults": {"interval": "30s", "labels": {"team": "payments"}, "regions": ["eu"]},
        "checks": [
            {**HTTP, "labels": {"vendor": "stripe"}},
            {**HTTP, "name": "b", "interval": "2s"},
            {**HTTP, "name": "c", "regions": ["us"], "labels": {"team": "growth"}},
        ],
    }
    config = load_config({"VANTAGE_CHECKS": yaml.safe_dump(document)})
    a, b, c = (entry.check for entry in config.entries)
    assert (a.interval, a.timeout, a.regions) == (30.0, 10.0, ("eu",))
    assert a.labels == {"team": "payments", "vendor": "stripe"}
    assert (b.interval, b.timeout) == (2.0, 1.6)
    assert c.regions == ("us",) and c.labels == {"team": "growth"}


def test_checks_with_the_same_settings_share_them() -> None:
    document = checks(
        HTTP,
        {**HTTP, "name": "b"},
        {**HTTP, "name": "c", "settings": {"method": "HEAD", "headers": {"A": "1", "B": "2"}}},
        {**HTTP, "name": "d", "settings": {"method": "HEAD", "headers": {"A": "1", "B": "2"}}},
        {**HTTP, "name": "e", "settings": {"method": "POST"}},
    )
    a, b, c, d, e = (entry.settings for entry in load_config({"VANTAGE_CHECKS": document}).entries)
    assert a is b and c is d
    assert e is not a and e is not c and a is not c
    assert c.model_dump()["method"] == "HEAD" and e.model_dump()["method"] == "POST"


def test_checks_from_file_and_json(tmp_path: Path) -> None:
    path = tmp_path / "checks.json"
    path.write_text('{"checks": [{"name": "a", "type": "http", "target": "http://x"}]}')
    config = load_config({"VANTAGE_CHECKS_FILE": str(path)})
    assert [e.check.name for e in config.entries] == ["a"]
    assert config.source == f"VANTAGE_CHECKS_FILE ({path})"


def test_secret_references_resolve_and_are_redacted(tmp_path: Path) -> None:
    secret_file = tmp_path / "token"
    secret_file.write_text("file-secret-value\n")
    redactor = Redactor()
    resolver = SecretResolver({"KEY": "env-secret-value"}, redactor)
    assert resolver.resolve("Bearer ${KEY}") == "Bearer env-secret-value"
    assert resolver.resolve(f"${{file:{secret_file}}}") == "file-secret-value"
    assert resolver.resolve("$${KEY} and ${uuid}") == "${KEY} and ${uuid}"
    assert redactor("a env-secret-value b file-secret-value") == "a <redacted> b <redacted>"


def test_urls_lose_credentials_and_query_values() -> None:
    redactor = Redactor(["s3cr3t-key"])
    url = "https://user:pw@api.example:8443/v1/s3cr3t-key/charges?limit=1&api_key=abc#x"
    assert redact_url(url, redactor) == "https://api.example:8443/v1/<redacted>/charges?limit=&api_key="


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("30s", 30), ("5m", 300), ("1h30m", 5400), ("1.5s", 1.5), (2, 2.0), ("10", 10.0)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "-1s", "1x", "s", True, "nan"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_durations_format_back() -> None:
    assert [format_duration(s) for s in (0.25, 30, 90, 3600, 1.5)] == ["250ms", "30s", "1m30s", "1h", "1.5s"]


SECRET = 'apk+Key==/é"\\x'
OAUTH = {"type": "oauth2_client_credentials", "client_id": "a", "client_secret": "long-enough"}


@pytest.mark.parametrize(
    ("check", "field"),
    [
        ({**HTTP, "interval": "${K}"}, "field 'interval'"),
        ({**HTTP, "timeout": "${K}"}, "field 'timeout'"),
        ({**HTTP, "target": "${K}"}, "field 'target'"),
        ({**HTTP, "target": "https://api.example:${K}/"}, "field 'target'"),
        ({**HTTP, "settings": {"auth": {**OAUTH, "token_url": "${K}"}}}, "field 'settings.auth."),
        ({**HTTP, "settings": {"max_redirects": "${K}"}}, "field 'settings.max_redirects'"),
        (
            {**HTTP, "settings": {"assert": [{"source": "body", "op": "matches", "value": "(${K}"}]}},
            "field 'settings.assert[0]'",
        ),
    ],
    ids=["interval", "timeout", "target", "port", "token_url", "max_redirects", "regex"],
)
def test_configuration_errors_never_show_a_resolved_secret(
    check: dict[str, object],
    field: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in list(os.environ):
        if name.startswith(("VANTAGE_", "OTEL_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("VANTAGE_CHECKS", checks(check))
    monkeypatch.setenv("K", SECRET)
    assert main(["validate"]) == 2
    error = capsys.readouterr().err
    assert field in error, error
    for spelled in ("apk", SECRET, repr(SECRET)[1:-1], json.dumps(SECRET)[1:-1], quote(SECRET, safe="")):
        assert spelled not in error, error


def test_a_reference_too_short_to_redact_is_refused() -> None:
    check = {**HTTP, "settings": {"headers": {"X-Region": "${REGION}", "X-Empty": "${EMPTY}"}}}
    with pytest.raises(ConfigError) as caught:
        load_config({"VANTAGE_CHECKS": checks(check), "REGION": "Q7", "EMPTY": ""})
    message = str(caught.value)
    assert "VANTAGE_CHECKS: check 'a' (checks[0]), field 'settings.headers.X-Region': ${REGION}" in message
    assert "cannot redact" in message and "belongs in the check file itself" in message
    # An empty value is refused too, in the same error: an unset secret, more often than not.
    assert "field 'settings.headers.X-Empty': environment variable EMPTY is empty" in message
    assert "Q7" not in message  # the value, never
    config = load_config({"VANTAGE_CHECKS": checks(check), "REGION": "eu-west-1", "EMPTY": "set-now"})
    assert config.entries[0].check.settings["headers"] == {"X-Region": "eu-west-1", "X-Empty": "set-now"}


def test_files_that_are_not_utf8_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.startswith(("VANTAGE_", "OTEL_")):
            monkeypatch.delenv(name)
    secret = tmp_path / "token"
    secret.write_bytes(b"Bearer \xff\xfe-not-utf8")
    monkeypatch.setenv(
        "VANTAGE_CHECKS", checks({**HTTP, "settings": {"headers": {"X": f"${{file:{secret}}}"}}})
    )
    assert main(["validate"]) == 2
    assert f"field 'settings.headers.X': secret file {secret} is not UTF-8 text" in capsys.readouterr().err

    checks_file = tmp_path / "checks.yaml"
    checks_file.write_bytes(checks(HTTP).encode() + b"# caf\xe9\n")
    monkeypatch.delenv("VANTAGE_CHECKS")
    monkeypatch.setenv("VANTAGE_CHECKS_FILE", str(checks_file))
    assert main(["validate"]) == 2
    assert f"VANTAGE_CHECKS_FILE ({checks_file}): not UTF-8 text" in capsys.readouterr().err
