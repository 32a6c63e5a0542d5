"""Configuration that catches mistakes: a misspelt variable, field, probe type, op or source is
named with what was meant; every problem of a check is reported at once, in the user's words, with
the file's line; references that are not references are refused; ``validate --offline`` checks a
file in CI without the production secrets; ``vantage plugins`` tells each type's settings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cli import main
from agent.config import checks as checks_module
from agent.config._yaml import load_yaml
from agent.config.settings import load_config, unknown_variables
from agent.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
HTTP = {"name": "stripe", "type": "http", "target": "https://api.example/v1"}


def document(*items: Mapping[str, object]) -> str:
    return yaml.safe_dump({"checks": list(items)}, sort_keys=False)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """An environment without the developer's VANTAGE_* and OTEL_* variables."""
    for name in list(os.environ):
        if name.upper().startswith(("VANTAGE_", "OTEL_")):
            monkeypatch.delenv(name)
    yield monkeypatch


def validate(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str, **variables: str
) -> tuple[int, str, str]:
    for name, value in variables.items():
        env.setenv(name, value)
    status = main(["validate", *args])
    out = capsys.readouterr()
    return status, out.out, out.err


def problems(environ: Mapping[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(environ)
    return str(caught.value)


# ---------------------------------------------------------------- VANTAGE_* variables


def test_an_unknown_variable_fails_validate_naming_what_was_meant(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = validate(
        clean_env,
        capsys,
        VANTAGE_CHECKS=document(HTTP),
        VANTAGE_LOGFORMAT="text",
        VANTAGE_LOG_RUN="true",
    )
    assert status == 2 and out == ""
    assert "VANTAGE_LOGFORMAT: not a setting of the agent; did you mean VANTAGE_LOG_FORMAT?" in err
    assert "VANTAGE_LOG_RUN: not a setting of the agent; did you mean VANTAGE_LOG_RUNS?" in err


def test_unknown_variables_are_reported_with_the_checks_problems(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = validate(
        clean_env, capsys, VANTAGE_CHECKS=document({**HTTP, "timout": "5s"}), VANTAGE_PROT="8080"
    )
    assert status == 2
    assert "VANTAGE_PROT: not a setting of the agent; did you mean VANTAGE_PORT?" in err
    assert "unknown field 'timout' in check 'stripe' (checks[0]): did you mean 'timeout'?" in err


def test_variables_that_are_not_settings_but_are_read_are_not_unknown(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    internal = {
        "VANTAGE_UPDATE_GOLDEN": "1",
        "VANTAGE_LISTEN_FD": "3",
        "VANTAGE_SUPERVISOR_PID": "1",
        "VANTAGE_BENCH_TREE": "/x",
    }
    assert unknown_variables({**internal, "vantage_log_level": "info", "HOME": "/root"}) == []
    status, out, err = validate(clean_env, capsys, VANTAGE_CHECKS=document(HTTP), **internal)
    assert status == 0, err
    assert out.startswith("configuration OK: 1 check from")
    # A name close to none is still named, without a guess.
    assert unknown_variables({"VANTAGE_ZZZZZZZZ": "1"}) == ["VANTAGE_ZZZZZZZZ: not a setting of the agent"]


def test_a_run_that_cannot_start_names_the_misspelt_variable_that_may_be_why(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("VANTAGE_CHECK_FILE", "/etc/vantage/checks.yaml")
    assert main(["once"]) == 2
    err = capsys.readouterr().err
    assert "no checks: set VANTAGE_CHECKS" in err
    assert "VANTAGE_CHECK_FILE: not a setting of the agent; did you mean VANTAGE_CHECKS_FILE?" in err


def test_every_vantage_variable_the_project_names_is_known() -> None:
    # A variable read directly (os.environ) or set by the chart, the examples or a script must be a
    # setting or on the allow-list, or `validate` would refuse what the project itself sets.
    places = ["agent", "plugins", "bench", "tests", "examples", "helm", "Dockerfile", "Makefile"]
    mentioned: dict[str, set[str]] = {}
    for place in places:
        root = ROOT / place
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for file in files:
            if file.name in ("test_config_mistakes.py", "test_config.py") or file.suffix in (".pyc", ".png"):
                continue
            try:
                text = file.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            for name in re.findall(r"VANTAGE_[A-Z0-9_]*[A-Z0-9]", text):
                mentioned.setdefault(name, set()).add(str(file.relative_to(ROOT)))
    assert "VANTAGE_LISTEN_FD" in mentioned and "VANTAGE_CHECKS" in mentioned  # not vacuous
    unknown = {name: sorted(files) for name, files in mentioned.items() if unknown_variables({name: "x"})}
    assert not unknown, f"add these to AgentSettings or NOT_SETTINGS (agent/config/settings.py): {unknown}"


def test_run_warns_of_an_unknown_variable_and_runs(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.upper().startswith(("VANTAGE_", "OTEL_"))}
    environ.update(
        PYTHONPATH=str(ROOT),
        VANTAGE_CHECKS=document({**HTTP, "target": "http://127.0.0.1:9/"}),
        VANTAGE_PORT="0",
        VANTAGE_LOG_FORMAT="text",
        VANTAGE_LOGLEVEL="debug",
    )
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run"],
        env=environ,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 30
        assert agent.stderr is not None
        while time.monotonic() < deadline and len(lines) < 200:
            line = agent.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "listening" in line:
                break
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        assert agent.stderr is not None
        agent.stderr.close()
    text = "".join(lines)
    warning = "VANTAGE_LOGLEVEL: not a setting of the agent; did you mean VANTAGE_LOG_LEVEL?"
    assert warning in text and "WARNING" in text.upper(), text
    assert "listening" in text, text  # a warning: the agent went on


# ---------------------------------------------------------------- fields, types, ops, sources


def test_misspellings_are_named_with_what_was_meant() -> None:
    check = {
        **HTTP,
        "timout": "5s",
        "settings": {
            "heders": {"Accept": "application/json"},
            "assert": [
                {"source": "stauts", "op": "eq", "value": 200},
                {"source": "status", "op": "equals", "value": 200},
            ],
            "auth": {"type": "berer", "token": "long-enough-token"},
            "tls": {"ca_fil": "/etc/ssl/ca.pem"},
        },
    }
    flow = {
        "name": "login",
        "type": "flow",
        "target": "https://api.example",
        "settings": {"steps": [{"name": "a", "url": "/", "bdy": "x"}]},
    }
    message = problems({"VANTAGE_CHECKS": document(check, flow, {**HTTP, "name": "b", "type": "htp"})})
    for line in (
        "unknown field 'timout' in check 'stripe' (checks[0]): did you mean 'timeout'?",
        "unknown field 'settings.heders' in check 'stripe' (checks[0]): did you mean 'headers'?",
        "check 'stripe' (checks[0]), field 'settings.assert[0].source': 'stauts' is not one of "
        "'status', 'header', 'body', 'response_time'; did you mean 'status'?",
        "check 'stripe' (checks[0]), field 'settings.assert[1].op': 'equals' is not one of 'eq',",
        "did you mean 'eq'?",
        "check 'stripe' (checks[0]), field 'settings.auth.type': 'berer' is not one of 'basic', "
        "'bearer', 'api_key', 'oauth2_client_credentials'; did you mean 'bearer'?",
        "unknown field 'settings.tls.ca_fil' in check 'stripe' (checks[0]): did you mean 'ca_file'?",
        "unknown field 'settings.steps[0].bdy' in check 'login' (checks[1]): did you mean 'body'?",
        "check 'b' (checks[2]), field 'type': unknown probe type 'htp'; available: ",
        "; did you mean 'http'?",
    ):
        assert line in message, message
    # pydantic's own words are gone, and so is its spelling of paths.
    for words in ("Extra inputs are not permitted", "Input should be", "Input tag", "assert.0", "steps.0"):
        assert words not in message, message
    # One line per problem, none twice (the refused step is not also "too short" a list).
    lines = message.splitlines()
    assert len(lines) == len(set(lines)) == 8, message


def test_all_problems_of_a_check_are_reported_at_once_settings_included() -> None:
    check = {
        **HTTP,
        "interval": "soon",
        "labels": {"team-name": "x"},
        "settings": {"max_redirects": "many", "method": 7, "bogus": True},
    }
    message = problems({"VANTAGE_CHECKS": document(check)})
    assert "field 'interval': 'soon' is not a duration" in message
    assert "field 'labels': label name 'team-name' is not a valid metric label name" in message
    assert "field 'settings.max_redirects': expected a whole number, not text" in message
    assert "field 'settings.method': expected text, not a whole number" in message
    assert "unknown field 'settings.bogus' in check 'stripe' (checks[0])" in message
    assert len(message.splitlines()) == 5, message


def test_a_missing_field_and_a_bad_bound_are_worded_for_people() -> None:
    check = {**HTTP, "settings": {"auth": {"type": "bearer"}, "max_redirects": -1}}
    message = problems({"VANTAGE_CHECKS": document(check)})
    assert "field 'settings.auth.token': missing: this field is required" in message
    assert "field 'settings.max_redirects': must be at least 0" in message


def test_a_bad_key_is_told_from_a_bad_value() -> None:
    check = {**HTTP, "settings": {"headers": {1: "x", "Accept": 2}}}
    message = problems({"VANTAGE_CHECKS": yaml.safe_dump({"checks": [check]})})
    assert "field 'settings.headers.1': the key: expected text, not a whole number" in message, message
    assert "field 'settings.headers.Accept': expected text, not a whole number" in message, message


def test_a_value_of_none_of_a_unions_kinds_is_one_problem() -> None:
    check = {**HTTP, "settings": {"query": {"ids": [1, {"a": 2}]}}}
    message = problems({"VANTAGE_CHECKS": document(check)})
    assert message == (
        "VANTAGE_CHECKS: check 'stripe' (checks[0]), field 'settings.query.ids': "
        "expected text or list of text"
    )


# ---------------------------------------------------------------- files and lines


def test_a_yaml_syntax_error_names_the_file_and_line(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "checks.yaml"
    path.write_text("checks:\n  - name: a\n    type: http\n   target: https://x.example\n")
    status, _, err = validate(clean_env, capsys, VANTAGE_CHECKS_FILE=str(path))
    assert status == 2
    assert f"VANTAGE_CHECKS_FILE ({path}): not valid YAML: line 4, column 4: " in err, err
    # A file given on the command line is named the same way.
    status, _, err = validate(clean_env, capsys, "--checks", str(path))
    assert status == 2 and f"({path}): not valid YAML: line 4" in err, err


def test_a_check_problem_in_a_file_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "checks.yaml"
    path.write_text(
        "# payments\n"
        "checks:\n"
        "  - name: ok\n"
        "    type: http\n"
        "    target: https://a.example\n"
        "  - name: stripe\n"  # line 6
        "    type: http\n"
        "    target: https://api.stripe.example\n"
        "    settings:\n"
        "      headers: {Accept: application/json}\n"
        "      assert:\n"
        "        - {source: status, op: eq, value: 200}\n"
        "        - {source: body, op: contain, value: ok}\n"  # line 13
        "    timout: 5s\n"  # line 14
    )
    message = problems({"VANTAGE_CHECKS_FILE": str(path)})
    source = f"VANTAGE_CHECKS_FILE ({path})"
    assert f"{source}, line 14: unknown field 'timout' in check 'stripe' (checks[1])" in message, message
    assert f"{source}, line 13: check 'stripe' (checks[1]), field 'settings.assert[1].op': " in message
    assert "did you mean 'contains'?" in message


def test_a_problem_outside_the_checks_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "checks.yaml"
    path.write_text("defaults:\n  interval: 60s\n  intervl: 5s\nchecks: []\n")
    message = problems({"VANTAGE_CHECKS_FILE": str(path)})
    assert message == (
        f"VANTAGE_CHECKS_FILE ({path}), line 3: unknown field 'defaults.intervl': did you mean 'interval'?"
    )
    path.write_text("- name: a\n  type: http\n  target: https://a.example\n  timout: 1s\n")  # a bare list
    assert "line 4: unknown field 'timout' in check 'a' (checks[0])" in problems(
        {"VANTAGE_CHECKS_FILE": str(path)}
    )


def test_json_errors_name_line_and_column() -> None:
    message = problems({"VANTAGE_CHECKS": '{"checks": [\n  {"name": "a",}\n]}'})
    assert message.startswith("VANTAGE_CHECKS: not valid JSON (line 2, column 16): "), message


# ---------------------------------------------------------------- ${...} references


@pytest.mark.parametrize(
    ("value", "env", "words"),
    [
        ("Bearer ${STRIPE-KEY}", {"STRIPE_KEY": "sk_test_long"}, "${STRIPE-KEY} cannot name an environment"),
        ("Bearer ${STRIPE-KEY}", {"STRIPE_KEY": "sk_test_long"}, "did you mean ${STRIPE_KEY}?"),
        ("Bearer ${ STRIPE_KEY }", {}, "${ STRIPE_KEY } cannot name an environment variable"),
        (
            "Bearer $STRIPE_KEY",
            {"STRIPE_KEY": "sk_test_long"},
            "$STRIPE_KEY is sent as written: write ${STRIPE_KEY}",
        ),
        ("Bearer ${stripe_key}", {"STRIPE_KEY": "sk_test_long"}, "did you mean ${STRIPE_KEY}?"),
        ("Bearer ${STRIPE_KEY}", {"STRIPE_KEY": ""}, "environment variable STRIPE_KEY is empty"),
        ("Bearer ${STRIPE_KEY}", {"STRIPE_KEY": "  "}, "environment variable STRIPE_KEY is empty"),
        (
            "Bearer ${STRIPE_KY}",
            {"STRIPE_KEY": "sk_test_long"},
            "STRIPE_KY is not set; did you mean STRIPE_KEY?",
        ),
        ("Bearer ${}", {}, "${} names no variable"),
        ("Bearer ${file:}", {}, "${file:} names no file"),
    ],
)
def test_references_that_are_not_references_are_refused(value: str, env: dict[str, str], words: str) -> None:
    check = {**HTTP, "settings": {"headers": {"Authorization": value}}}
    message = problems({"VANTAGE_CHECKS": document(check), **env})
    assert "check 'stripe' (checks[0]), field 'settings.headers.Authorization': " in message, message
    assert words in message, message
    assert "sk_test_long" not in message


def test_run_time_templates_are_not_taken_for_references() -> None:
    # HOST and USER as every shell has them: ${host} is a group, $USER text, not references.
    env = {"STRIPE_KEY": "sk_test_long", "HOST": "box", "USER": "root-user", "HOME": "/root"}
    tcp = {
        "name": "smtp",
        "type": "tcp",
        "target": "127.0.0.1:25",
        "settings": {
            "dialogue": [
                {"expect": r"^220 (?P<host>\S+) (?P<user>\S+)"},
                {"send": "EHLO ${1} ${host} ${user} $1 $host $USER $HOME $$ $${STRIPE_KEY}\r\n"},
            ]
        },
    }
    flow = {
        "name": "order",
        "type": "flow",
        "target": "https://api.example",
        "settings": {
            "vars": {"sku": "A-1"},
            "steps": [
                {"name": "login", "url": "/login", "extract": {"token": {"path": "$.token"}}},
                {
                    "name": "order",
                    "method": "POST",
                    "url": "/orders/${vars.sku}?run=${run_id}",
                    "headers": {"Authorization": "Bearer ${steps.login.token}", "Idempotency-Key": "${uuid}"},
                    "json": {"at": "${now}", "key": "${STRIPE_KEY}"},
                },
            ],
        },
    }
    config = load_config({"VANTAGE_CHECKS": document(tcp, flow), **env})
    dialogue = config.entries[0].settings.dialogue  # type: ignore[attr-defined]
    assert dialogue[1].send == "EHLO ${1} ${host} ${user} $1 $host $USER $HOME $$ ${STRIPE_KEY}\r\n"
    order = config.entries[1].check.settings["steps"][1]
    assert order["headers"]["Authorization"] == "Bearer ${steps.login.token}"
    assert order["json"] == {"at": "${now}", "key": "sk_test_long"}


# ---------------------------------------------------------------- validate --offline


def test_offline_validation_needs_no_secrets_nor_files(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "checks.yaml"
    check = {
        **HTTP,
        "interval": "${STRIPE_INTERVAL}",
        "settings": {
            "headers": {"Authorization": "Bearer ${STRIPE_KEY}", "X-Key": "${file:/run/secrets/key}"},
            "tls": {"ca_file": "/run/secrets/ca.pem"},
            "schema_drift": {"baseline_file": "/srv/baselines/stripe.json"},
            "openapi": {"document": "/srv/openapi/stripe.yaml"},
        },
    }
    path.write_text(document(check))
    status, out, err = validate(clean_env, capsys, "--offline", "--checks", str(path))
    assert status == 0, err
    assert out.startswith("configuration OK (offline: references not resolved): 1 check from"), out
    # Online, the same file is refused for each missing secret and file.
    status, _, err = validate(clean_env, capsys, "--checks", str(path))
    assert status == 2
    for words in (
        "STRIPE_KEY is not set",
        "secret file /run/secrets/key cannot be read",
        "ca_file",
        "'/srv/baselines/stripe.json' cannot be read",
        "'/srv/openapi/stripe.yaml' cannot be read",
    ):
        assert words in err, err


def test_offline_validation_still_catches_mistakes(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "checks.yaml"
    check = {**HTTP, "timout": "5s", "settings": {"headers": {"Authorization": "Bearer ${STRIPE-KEY}"}}}
    flow = {
        "name": "order",
        "type": "flow",
        "target": "https://api.example",
        "settings": {
            "steps": [
                {"name": "a", "url": "/", "headers": {"Authorization": "Bearer ${API_KEY}"}},
                {"name": "b", "url": "/orders/${steps.nope.id}"},
            ]
        },
    }
    path.write_text(document(check, flow))
    status, _, err = validate(clean_env, capsys, "--offline", "--checks", str(path), VANTAGE_LOGFORMAT="x")
    assert status == 2
    assert "unknown field 'timout'" in err
    assert "${STRIPE-KEY} cannot name an environment variable" in err
    assert "VANTAGE_LOGFORMAT: not a setting of the agent" in err
    # A reference elsewhere in the settings does not hide the flow's own template check.
    assert "check 'order' (checks[1]), field 'settings': step 'b', url: ${steps.nope.id}" in err, err


# ---------------------------------------------------------------- OpenTelemetry


@pytest.mark.parametrize(
    "variable",
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ],
)
def test_an_otlp_endpoint_without_a_scheme_fails_validation(
    variable: str, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = validate(
        clean_env, capsys, VANTAGE_CHECKS=document(HTTP), **{variable: "user:pw@collector:4318"}
    )
    assert status == 2
    assert f"{variable}: 'collector:4318' has no scheme; write http://collector:4318" in err, err
    assert "pw" not in err
    # Said with the other problems, not instead of them.
    clean_env.setenv("VANTAGE_CHECKS", document({**HTTP, "timout": "1s"}))
    status, _, err = validate(clean_env, capsys)
    assert status == 2 and "has no scheme" in err and "unknown field 'timout'" in err, err
    clean_env.setenv("VANTAGE_CHECKS", document(HTTP))
    status, _, err = validate(clean_env, capsys, "--offline", **{variable: "collector:4318"})
    assert status == 2 and "has no scheme" in err


# ---------------------------------------------------------------- vantage plugins


def test_plugins_json_tells_each_types_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--json"]) == 0
    described = {p["name"]: p for p in json.loads(capsys.readouterr().out)["probe_types"]}
    assert {"dns", "flow", "grpc", "heartbeat", "http", "icmp", "sync", "tcp", "tls", "webhook"} <= set(
        described
    )
    http = described["http"]
    assert http["class"] == "plugins.http.HttpProbe" and http["description"]
    fields = {f["name"]: f for f in http["settings"]}
    assert fields["method"]["type"] == "text" and fields["method"]["default"] == "GET"
    assert fields["max_redirects"]["type"] == "whole number" and fields["max_redirects"]["default"] == 10
    assert fields["max_body"]["default"] == "1MiB"
    assert fields["ip_family"]["allowed"] == ["auto", "ipv4", "ipv6"]
    assert fields["origin"]["description"].startswith("Sent as the Origin header")
    assert fields["assert"]["type"] == "list of objects"
    ops = {f["name"]: f for f in fields["assert"]["fields"]}["op"]
    assert "eq" in ops["allowed"] and "schema" in ops["allowed"]
    assert {f["name"] for f in fields["tls"]["fields"]} >= {"ca_file", "insecure"}
    assert {"basic", "bearer", "api_key", "oauth2_client_credentials"} == set(fields["auth"]["variants"])
    assert fields["headers"]["type"] == "mapping of text to text"
    heartbeat = {f["name"]: f for f in described["heartbeat"]["settings"]}
    assert heartbeat["period"]["type"].startswith("duration") and not heartbeat["period"]["required"]
    assert heartbeat["token"]["required"] and heartbeat["timezone"]["default"] == "UTC"


def test_plugins_text_is_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "http  (plugins.http.HttpProbe)" in out
    assert "    method: text, default GET" in out
    assert "    ip_family: one of 'auto', 'ipv4', 'ipv6', default auto" in out
    assert "token: text, required" in out and "schedule: text\n" in out
    assert "``" not in out  # the docstrings' markup is not shown


def test_plugins_shows_the_types_asked_for(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--json", "tcp", "dns"]) == 0
    assert [p["name"] for p in json.loads(capsys.readouterr().out)["probe_types"]] == ["tcp", "dns"]
    assert main(["plugins", "htpp"]) == 2
    err = capsys.readouterr().err
    assert "unknown probe type 'htpp'; did you mean 'http'?" in err and "available: dns, flow" in err


# ---------------------------------------------------------------- large files


def test_large_check_sets_show_progress(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setattr(checks_module, "_PROGRESS_EVERY", 2)
    items = [{**HTTP, "name": f"c{i}"} for i in range(5)]
    status, _, err = validate(clean_env, capsys, VANTAGE_CHECKS=document(*items))
    assert status == 0, err
    assert err.splitlines() == [
        "vantage: validating 5 checks",
        "vantage: validated 2 of 5 checks",
        "vantage: validated 4 of 5 checks",
        "vantage: validated 5 of 5 checks",
    ]
    clean_env.setattr(checks_module, "_PROGRESS_EVERY", 5000)
    status, _, err = validate(clean_env, capsys, VANTAGE_CHECKS=document(*items))
    assert status == 0 and err == ""  # a small set says nothing


YAML_CASES = [
    "checks:\n  - {name: a, type: http, target: 'https://x', interval: 30s, settings: {max_redirects: 3}}\n",
    "base: &b {n: 1, f: 1.5, t: true, z: null, d: 2024-01-02, ts: 2024-01-02T03:04:05Z}\n"
    "x:\n  <<: *b\n  n: 2\nl: &l [1, {a: b}]\nm: [*l, *l]\no: 0o17\nh: 0x1f\ninf: .inf\nq: '1'\ny: yes\n",
    "bin: !!binary aGVsbG8=\ns: !!set {a, b}\n",
    "- a\n- 1\n",
    "",
    "a: 1\na: 2\n",
    "k: &r\n  self: *r\n",
]


@pytest.mark.parametrize("text", YAML_CASES)
def test_the_fast_yaml_reader_reads_as_pyyaml_does(text: str) -> None:
    assert repr(load_yaml(text)) == repr(yaml.safe_load(text))


def test_the_fast_yaml_reader_keeps_aliases_shared_and_errors_marked() -> None:
    loaded: Any = load_yaml("l: &l [1]\nm: [*l, *l]\n")
    assert loaded["m"][0] is loaded["m"][1]
    with pytest.raises(yaml.YAMLError) as caught:
        load_yaml("? [1, 2]\n: x\nok: [\n")
    assert getattr(caught.value, "problem_mark", None) is not None
