"""``vantage import blackbox``: blackbox_exporter modules and Prometheus scrape jobs → a check file.

The output is loaded with the agent's own loader (``load_config``, what ``vantage validate`` runs),
every option issue 13 added included (``NEW_OPTIONS`` has a case for each).

The slow tests run blackbox_exporter itself beside the imported checks, on local targets.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import pytest
import trustme
import yaml
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.app import build_agent
from agent.cli import main
from agent.config.blackbox import import_blackbox
from agent.config.settings import Config, load_config
from agent.errors import ConfigError

from .helpers import free_port, serve, wait_until
from .test_dns_probe import dns_server
from .test_grpc_probe import health_server

FIXTURES = Path(__file__).parent / "fixtures" / "blackbox"
SECRETS = {
    "HTTP_POST_JSON_HEADER_AUTHORIZATION": "env-header-token-0001",
    "HTTP_BASIC_AUTH_PASSWORD": "env-basic-password-0002",
    "HTTP_BEARER_BEARER_TOKEN": "env-bearer-token-0003",
    "HTTP_OAUTH_OAUTH2_CLIENT_SECRET": "env-oauth-secret-0004",
}
# The secrets written in fixtures/blackbox/blackbox.yml: none may reach the check file.
FIXTURE_SECRETS = (
    "s3cr3t-header-token",
    "hunter2-basic-password",
    "eyJhbGciOiJIUzI1NiJ9.bearer-secret",
    "oauth-client-secret-value",
)


def fixture_import() -> str:
    return import_blackbox(
        (FIXTURES / "blackbox.yml").read_text(),
        (FIXTURES / "prometheus.yml").read_text(),
        prometheus_dir=FIXTURES,
    ).text


def imported(modules: dict[str, Any], jobs: list[dict[str, Any]], **kwargs: Any) -> str:
    return import_blackbox(
        yaml.safe_dump({"modules": modules}), yaml.safe_dump({"scrape_configs": jobs}), **kwargs
    ).text


def probe_job(module: str, *targets: str, name: str = "probes", **extra: Any) -> dict[str, Any]:
    """A scrape job written as blackbox_exporter's README shows it."""
    return {
        "job_name": name,
        "metrics_path": "/probe",
        "params": {"module": [module]},
        "static_configs": [{"targets": list(targets)}],
        "relabel_configs": [
            {"source_labels": ["__address__"], "target_label": "__param_target"},
            {"source_labels": ["__param_target"], "target_label": "instance"},
            {"target_label": "__address__", "replacement": "127.0.0.1:9115"},
        ],
        **extra,
    }


def checks_of(text: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load(text)["checks"] or [])


def one_check(module: dict[str, Any], target: str) -> dict[str, Any]:
    (check,) = checks_of(imported({"m": module}, [probe_job("m", target)]))
    return check


def load(text: str, **env: str) -> Config:
    return load_config({"VANTAGE_CHECKS": text, **SECRETS, **env})


# --- the realistic fixture: several jobs, relabelling, file_sd, every prober ----------------------


def test_the_fixture_imports_every_probe_target_and_validates() -> None:
    text = fixture_import()
    config = load(text)
    names = [entry.check.name for entry in config.entries]
    assert names == [
        "websites-http-2xx-https-www.example.com",
        "websites-http-2xx-http-status.example.org-health",
        "websites-http-2xx-http-shop.example.net",
        "apis-http-2xx-strict-https-api.payments.example-v1-health",
        "apis-http-post-json-https-api.payments.example-v1-charges",
        "apis-http-basic-auth-https-crm.example-api-ping",
        "apis-http-bearer-https-erp.example-status",
        "apis-http-oauth-https-orders.example-v2-orders",
        "apis-http-cel-https-search.example-health",
        "network-tcp-connect-db.example.com-5432",
        "network-tcp-connect-cache.example.com-6379",
        "network-tls-connect-mail.example.com-465",
        "network-smtp-banner-mail.example.com-25",
        "network-icmp-gw.example.com",
        "network-dns-soa-8.8.8.8",
        "network-dns-soa-1.1.1.1-53",
        "network-grpc-health-grpc.example.com-443",
    ]
    by_name = {entry.check.name: entry for entry in config.entries}
    # A target without a scheme gets http://, as blackbox_exporter gives it.
    assert by_name["websites-http-2xx-http-shop.example.net"].check.target == "http://shop.example.net"
    # The job's interval; the module's timeout, or the scrape timeout less blackbox's 0.5s offset.
    assert by_name["websites-http-2xx-http-shop.example.net"].check.interval == 30
    assert by_name["websites-http-2xx-http-shop.example.net"].check.timeout == 5
    assert by_name["apis-http-bearer-https-erp.example-status"].check.timeout == 9.5
    assert by_name["network-tcp-connect-db.example.com-5432"].check.interval == 15
    # The dns target is the query name; blackbox's target is the server.
    soa = by_name["network-dns-soa-1.1.1.1-53"]
    assert (soa.check.target, soa.check.settings["server"], soa.check.settings["type"]) == (
        "example.com",
        "1.1.1.1:53",
        "SOA",
    )
    # Target labels from static_configs and file_sd become check labels.
    assert by_name["websites-http-2xx-http-shop.example.net"].check.labels == {
        "env": "prod",
        "team": "web",
        "prometheus_job": "websites",
        "prometheus_instance": "shop.example.net",
    }
    assert by_name["apis-http-2xx-strict-https-api.payments.example-v1-health"].check.labels == {
        "module": "http_2xx_strict",
        "target_region": "eu",
        "vendor": "payments",
        "prometheus_job": "apis",
        "prometheus_instance": "https://api.payments.example/v1/health",
    }


def test_the_fixture_leaves_out_what_is_no_probe_and_says_what_it_could_not_import() -> None:
    text = fixture_import()
    assert "blackbox:9115" not in text  # the exporter's own job is not a probe
    assert "10.0.0.1" not in text  # dropped by the job's relabelling
    assert "# NOT IMPORTED: no such module in the blackbox configuration" in text
    assert "modules no job uses (no check written): unused_module" in text
    assert "fail_if_body_json_not_matches_cel: no equivalent (Vantage has no CEL)" in text
    assert "label region: Vantage uses that name itself; written as target_region" in text


def test_the_fixture_through_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``vantage import blackbox`` writes the file that ``vantage validate`` accepts."""
    output = tmp_path / "checks.yml"
    status = main(
        [
            "import",
            "blackbox",
            "--config",
            str(FIXTURES / "blackbox.yml"),
            "--targets",
            str(FIXTURES / "prometheus.yml"),
            "--output",
            str(output),
        ]
    )
    assert status == 0
    assert output.read_text() == fixture_import()
    for name, value in {**SECRETS, "VANTAGE_CHECKS_FILE": str(output)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("VANTAGE_CHECKS", raising=False)
    assert main(["validate"]) == 0


def test_the_command_line_writes_to_standard_output(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--config", str(FIXTURES / "blackbox.yml"), "--targets", str(FIXTURES / "prometheus.yml")]
    assert main(["import", "blackbox", *args]) == 0
    out, err = capsys.readouterr()
    assert out == fixture_import()
    assert "wrote 17 check(s)" in err
    assert "HTTP_BASIC_AUTH_PASSWORD" in err


def test_unreadable_or_broken_input_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "blackbox.yml"
    broken.write_text("modules: [unclosed")
    prometheus = str(FIXTURES / "prometheus.yml")
    assert main(["import", "blackbox", "--config", str(broken), "--targets", prometheus]) == 2
    assert "blackbox.yml: not valid YAML" in capsys.readouterr().err
    missing = str(tmp_path / "nope.yml")
    assert main(["import", "blackbox", "--config", missing, "--targets", prometheus]) == 2
    assert "cannot read the input" in capsys.readouterr().err
    args = ["--config", str(FIXTURES / "blackbox.yml"), "--targets", prometheus]
    assert main(["import", "blackbox", *args, "--output", str(tmp_path / "no" / "such" / "dir.yml")]) == 2
    assert "cannot write" in capsys.readouterr().err
    broken.write_text("- a list")
    with pytest.raises(ConfigError, match="expected a mapping at the top"):
        import_blackbox(broken.read_text(), "")


# --- secrets ------------------------------------------------------------------------------------


def test_no_secret_of_the_module_file_reaches_the_check_file() -> None:
    text = fixture_import()
    for secret in FIXTURE_SECRETS:
        assert secret not in text
    header = text.split("checks:", 1)[0]
    for name in SECRETS:
        assert re.search(rf"^#   {name} ", header, re.M), name


def test_the_references_carry_the_secrets_from_the_environment() -> None:
    by_name = {e.check.name: e for e in load(fixture_import()).entries}
    basic = by_name["apis-http-basic-auth-https-crm.example-api-ping"].settings
    assert (basic.auth.username, basic.auth.password) == ("monitor", SECRETS["HTTP_BASIC_AUTH_PASSWORD"])  # type: ignore[attr-defined]
    bearer = by_name["apis-http-bearer-https-erp.example-status"].settings
    assert bearer.auth.token == SECRETS["HTTP_BEARER_BEARER_TOKEN"]  # type: ignore[attr-defined]
    post = by_name["apis-http-post-json-https-api.payments.example-v1-charges"].settings
    assert post.headers["Authorization"] == "Bearer " + SECRETS["HTTP_POST_JSON_HEADER_AUTHORIZATION"]  # type: ignore[attr-defined]
    oauth = by_name["apis-http-oauth-https-orders.example-v2-orders"].settings
    assert oauth.auth.client_secret == SECRETS["HTTP_OAUTH_OAUTH2_CLIENT_SECRET"]  # type: ignore[attr-defined]
    assert oauth.auth.audience == "https://api.example.com"  # type: ignore[attr-defined]


def test_secret_files_stay_file_references(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-a-mounted-file\n")
    module = {"prober": "http", "http": {"basic_auth": {"username": "u", "password_file": str(secret)}}}
    check = one_check(module, "https://api.example/")
    assert check["settings"]["auth"]["password"] == "${file:" + str(secret) + "}"
    config = load(yaml.safe_dump({"checks": [check]}))
    assert config.entries[0].settings.auth.password == "from-a-mounted-file"  # type: ignore[attr-defined]


def test_secrets_in_a_proxy_url_or_a_target_url_become_references() -> None:
    module = {"prober": "http", "http": {"proxy_url": "http://probe:proxy-pass-123@proxy:3128"}}
    text = imported(
        {"m": module}, [probe_job("m", "https://user:url-pass-456@api.example/x?api_key=qk-789&n=1")]
    )
    for secret in ("proxy-pass-123", "url-pass-456", "qk-789"):
        assert secret not in text
    assert "prometheus_instance: https://api.example/x?api_key=&n=1" in text
    (check,) = checks_of(text)
    assert check["settings"]["proxy_url"] == "http://probe:${M_PROXY_PASSWORD}@proxy:3128"
    assert check["target"] == (
        "https://user:${PROBES_M_API_EXAMPLE_PASSWORD}@api.example/x?api_key=${PROBES_M_API_EXAMPLE_API_KEY}&n=1"
    )
    env = {name: "value-0123456" for name in re.findall(r"^#   ([A-Z][A-Z0-9_]+) ", text, re.M)}
    assert set(env) == {"M_PROXY_PASSWORD", "PROBES_M_API_EXAMPLE_PASSWORD", "PROBES_M_API_EXAMPLE_API_KEY"}
    load((text), **env)


def test_text_that_reads_as_a_reference_stays_literal() -> None:
    module = {
        "prober": "http",
        "http": {"headers": {"X-Template": "${NOT_A_VARIABLE}"}, "body": "$${X} ${file:/etc/x}"},
    }
    check = one_check(module, "https://api.example/")
    assert check["settings"]["headers"]["X-Template"] == "$${NOT_A_VARIABLE}"
    settings = load(yaml.safe_dump({"checks": [check]})).entries[0].settings
    assert settings.headers["X-Template"] == "${NOT_A_VARIABLE}"  # type: ignore[attr-defined]
    assert settings.body == "$${X} ${file:/etc/x}"  # type: ignore[attr-defined]


# --- Prometheus: relabelling, discovery, names ------------------------------------------------------


def test_the_module_may_come_from_a_label_or_a_relabel_rule_and_defaults_to_http_2xx() -> None:
    modules = {
        "http_2xx": {"prober": "http"},
        "tcp_connect": {"prober": "tcp"},
        "icmp": {"prober": "icmp"},
    }
    job = {
        "job_name": "mixed",
        "metrics_path": "/probe",
        "static_configs": [
            {"targets": ["https://a.example/"]},  # no module anywhere: blackbox's http_2xx
            {"targets": ["b.example:22"], "labels": {"__param_module": "tcp_connect"}},
            {"targets": ["c.example"], "labels": {"kind": "ping"}},
        ],
        "relabel_configs": [
            {
                "source_labels": ["kind"],
                "regex": "ping",
                "target_label": "__param_module",
                "replacement": "icmp",
            },
            {"source_labels": ["__address__"], "target_label": "__param_target"},
            {"target_label": "__address__", "replacement": "exporter:9115"},
        ],
    }
    checks = checks_of(imported(modules, [job]))
    assert [(c["type"], c["target"]) for c in checks] == [
        ("http", "https://a.example/"),
        ("tcp", "b.example:22"),
        ("icmp", "c.example"),
    ]
    assert checks[2]["labels"] == {
        "kind": "ping",
        "prometheus_job": "mixed",
        "prometheus_instance": "exporter:9115",
    }


def test_relabelling_follows_prometheus() -> None:
    job = probe_job("m", "a.example:443", "b.example:443", "c.internal:443")
    job["relabel_configs"] = [
        {"source_labels": ["__address__"], "regex": r"(.*)\.internal:.*", "action": "drop"},
        # Anchored at both ends, groups expanded the Go way: ${1} and $2.
        {
            "source_labels": ["__address__"],
            "regex": "(.*):(443)",
            "target_label": "__param_target",
            "replacement": "https://${1}:$2/health",
        },
        {
            "source_labels": ["__address__"],
            "regex": "443",
            "target_label": "unanchored",
            "replacement": "matched",
        },
        {"source_labels": ["__address__"], "target_label": "shard", "modulus": 4, "action": "hashmod"},
        {"source_labels": ["__param_target"], "target_label": "site", "action": "lowercase"},
        {"regex": "site", "action": "labelmap", "replacement": "site_copy"},
        {"regex": "site", "action": "labeldrop"},
        {"source_labels": ["__address__"], "regex": "b.*", "action": "keep"},
    ]
    (check,) = checks_of(imported({"m": {"prober": "http"}}, [job]))
    assert check["target"] == "https://b.example:443/health"
    assert set(check["labels"]) == {"shard", "site_copy", "prometheus_job", "prometheus_instance"}
    assert check["labels"]["site_copy"] == "https://b.example:443/health"
    # Prometheus: the md5 of the value, its last 8 bytes big-endian, modulo 4.
    digest = hashlib.md5(b"b.example:443", usedforsecurity=False).digest()
    assert check["labels"]["shard"] == str(int.from_bytes(digest[8:], "big") % 4)


def test_file_sd_files_are_read_relative_to_the_prometheus_file(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES, tmp_path / "conf")
    (tmp_path / "conf" / "targets" / "apis-extra.json").write_text(
        '[{"targets": ["https://extra.example/"], "labels": {"module": "http_2xx"}}]'
    )
    text = import_blackbox(
        (tmp_path / "conf" / "blackbox.yml").read_text(),
        (tmp_path / "conf" / "prometheus.yml").read_text(),
        prometheus_dir=tmp_path / "conf",
    ).text
    assert "target: https://extra.example/" in text
    assert "target: https://api.payments.example/v1/health" in text


def test_discovery_that_cannot_be_read_offline_is_a_comment() -> None:
    job = probe_job("m", "https://a.example/")
    job["kubernetes_sd_configs"] = [{"role": "ingress"}]
    job["file_sd_configs"] = [{"files": ["/nonexistent/*.json"]}]
    text = imported({"m": {"prober": "http"}}, [job])
    assert "kubernetes_sd_configs: service discovery cannot be read offline" in text
    assert "file_sd_configs: no file matches /nonexistent/*.json" in text
    assert len(checks_of(text)) == 1


def test_names_are_stable_unique_and_valid() -> None:
    long_path = "https://api.example/" + "segment/" * 30
    targets = ["https://a.example/x", "https://a.example/x/", "https://A.example/x", long_path]
    text = imported({"m_1": {"prober": "http"}}, [probe_job("m_1", *targets, name="Job One")])
    names = [c["name"] for c in checks_of(text)]
    assert len(set(names)) == 4
    assert names[0] == "job-one-m-1-https-a.example-x"
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,127}", n) for n in names), names
    assert names == [
        c["name"]
        for c in checks_of(
            imported({"m_1": {"prober": "http"}}, [probe_job("m_1", *targets, name="Job One")])
        )
    ]
    # A target listed twice is one check, as Prometheus keeps one of identical targets.
    assert (
        len(
            checks_of(
                imported(
                    {"m": {"prober": "http"}}, [probe_job("m", "https://a.example/", "https://a.example/")]
                )
            )
        )
        == 1
    )


def test_the_check_timeout_follows_blackbox() -> None:
    module = {"prober": "tcp", "timeout": "20s"}
    job = probe_job("m", "a.example:1", scrape_interval="15s", scrape_timeout="12s")
    (check,) = checks_of(imported({"m": module}, [job]))
    # blackbox_exporter caps the module's timeout at the scrape timeout less its 0.5s offset.
    assert (check["interval"], check["timeout"]) == ("15s", "11.5s")
    (check,) = checks_of(imported({"m": {"prober": "tcp", "timeout": "2s"}}, [probe_job("m", "a.example:1")]))
    assert (check["interval"], check["timeout"]) == ("1m", "2s")


# --- option by option ------------------------------------------------------------------------------


def test_http_options_map_to_their_settings(ca_file: Path) -> None:
    module = {
        "prober": "http",
        "http": {
            "method": "put",
            "valid_status_codes": [200, 401],
            "valid_http_versions": ["HTTP/2.0"],
            "no_follow_redirects": True,
            "fail_if_body_matches_regexp": ["(?i)error", "[[:digit:]]{3} failed\\z"],
            "fail_if_header_matches": [{"header": "Server", "regexp": "nginx/1\\.0"}],
            "tls_config": {"ca_file": str(ca_file), "server_name": "api.example", "min_version": "TLS13"},
            "preferred_ip_protocol": "ip6",
            "ip_protocol_fallback": False,
        },
    }
    check = one_check(module, "https://api.example/")
    assert check["settings"] == {
        "method": "PUT",
        "follow_redirects": False,
        "ip_family": "ipv6",
        "ip_fallback": False,
        "tls": {"ca_file": str(ca_file), "server_name": "api.example", "min_version": "1.3"},
        "valid_http_versions": ["HTTP/2.0"],
        "max_body": 64 << 20,  # blackbox matches body regexes against the whole body
        "assert": [
            {"source": "status", "op": "in", "value": [200, 401]},
            {"source": "body", "op": "not_matches", "value": "(?i)error"},
            {"source": "body", "op": "not_matches", "value": "[0-9]{3} failed\\Z"},
            {"source": "header", "name": "Server", "op": "not_matches", "value": "nginx/1\\.0"},
        ],
    }
    (entry,) = load(yaml.safe_dump({"checks": [check]})).entries
    assert entry.settings.tls.min_version == "1.3"  # type: ignore[attr-defined]


def test_tcp_dialogues_keep_blackbox_line_endings_and_groups() -> None:
    module = {
        "prober": "tcp",
        "tcp": {
            "query_response": [
                {"send": "NICK prober"},
                {"send": "USER $x"},
                {"expect": "PING :([^ ]+)", "send": "PONG ${1}"},
                {"expect": "^:[^ ]+ 001"},
                {"send": "PRICE $5"},
            ],
            "tls": True,
            "tls_config": {"insecure_skip_verify": True},
        },
    }
    check = one_check(module, "irc.example:6697")
    assert check["settings"]["dialogue"] == [
        {"send": "NICK prober\n"},  # blackbox_exporter ends every send with a newline
        {"send": "USER $x\n"},  # not after an expect: sent as written, in both
        {"expect": "PING :([^ ]+)"},
        {"send": "PONG ${1}\n"},  # the groups of the expect before it, as in blackbox
        {"expect": "^:[^ ]+ 001"},
        {"send": "PRICE $$5\n"},  # right after an expect, but not in its turn: "$5" in blackbox
    ]
    assert check["settings"]["tls_options"] == {"insecure": True}
    (entry,) = load(yaml.safe_dump({"checks": [check]})).entries
    assert [turn.send for turn in entry.settings.dialogue][:3] == ["NICK prober\n", "USER $x\n", None]  # type: ignore[attr-defined]


def test_icmp_sends_one_request_as_blackbox_does() -> None:
    check = one_check({"prober": "icmp", "icmp": {"payload_size": 64}}, "gw.example")
    assert check["settings"] == {
        "count": 1,
        "ip_family": "ipv6",
        "ip_fallback": True,
        "payload_size": 64,
        "reply_timeout": "9s",  # blackbox waits for its one reply until the timeout (9.5s here)
    }
    load(yaml.safe_dump({"checks": [check]}))


def test_dns_asks_blackbox_default_query_type_any() -> None:
    text = imported(
        {"d": {"prober": "dns", "dns": {"query_name": "example.com"}}}, [probe_job("d", "9.9.9.9")]
    )
    (check,) = checks_of(text)
    assert (check["target"], check["settings"]["server"], check["settings"]["type"]) == (
        "example.com",
        "9.9.9.9",
        "ANY",
    )
    (entry,) = load(text).entries
    assert entry.settings.type == "ANY"  # type: ignore[attr-defined]


def test_grpc_options_map_to_their_settings() -> None:
    check = one_check({"prober": "grpc", "grpc": {"service": "health", "tls": True}}, "grpc.example:443")
    assert check["settings"] == {"service": "health", "tls": True, "ip_family": "ipv6", "ip_fallback": True}
    load(yaml.safe_dump({"checks": [check]}))


# Options issue 13 adds (CONTRACT.md): the structure is asserted here; validated where merged.
NEW_OPTIONS = [
    (
        "compression",
        {"prober": "http", "http": {"compression": "gzip"}},
        "https://a.example/",
        {"compression": "gzip"},
    ),
    (
        "fail_if_body_over",
        {"prober": "http", "http": {"body_size_limit": "1MB"}},
        "https://a.example/",
        {"fail_if_body_over": 1 << 20},
    ),
    (
        "fail_if_body_over_with_a_body_regex",  # the body is read up to the limit: no max_body
        {"prober": "http", "http": {"body_size_limit": "1MB", "fail_if_body_not_matches_regexp": ["ok"]}},
        "https://a.example/",
        {"fail_if_body_over": 1 << 20, "max_body": None},
    ),
    (
        "fail_if_ssl",
        {"prober": "http", "http": {"fail_if_ssl": True}},
        "http://a.example/",
        {"fail_if_ssl": True},
    ),
    (
        "fail_if_not_ssl",
        {"prober": "http", "http": {"fail_if_not_ssl": True}},
        "https://a.example/",
        {"fail_if_not_ssl": True},
    ),
    (
        "allow_missing",
        {
            "prober": "http",
            "http": {
                "fail_if_header_matches": [{"header": "Set-Cookie", "regexp": ".*", "allow_missing": True}]
            },
        },
        "https://a.example/",
        {
            "assert": [
                {
                    "source": "header",
                    "name": "Set-Cookie",
                    "op": "not_matches",
                    "value": ".*",
                    "allow_missing": True,
                }
            ]
        },
    ),
    (
        "proxy_skip_resolve",
        {"prober": "http", "http": {"proxy_url": "http://proxy:3128", "skip_resolve_phase_with_proxy": True}},
        "https://a.example/",
        {"proxy_url": "http://proxy:3128", "proxy_skip_resolve": True},
    ),
    (
        "source_ip_address",
        {"prober": "tcp", "tcp": {"source_ip_address": "127.0.0.1"}},
        "a.example:1",
        {"source_ip_address": "127.0.0.1"},
    ),
    (
        "starttls",
        {
            "prober": "tcp",
            "tcp": {"query_response": [{"expect": "^220"}, {"send": "STARTTLS"}, {"starttls": True}]},
        },
        "mail.example:25",
        {"dialogue": [{"expect": "^220"}, {"send": "STARTTLS\n"}, {"starttls": True}]},
    ),
    (
        "dns transport tcp",
        {
            "prober": "dns",
            "dns": {"query_name": "example.com", "query_type": "MX", "transport_protocol": "tcp"},
        },
        "9.9.9.9",
        {"server": "9.9.9.9", "type": "MX", "transport": "tcp"},
    ),
    (
        "dns over tls",
        {
            "prober": "dns",
            "dns": {
                "query_name": "example.com",
                "query_type": "A",
                "dns_over_tls": True,
                "tls_config": {"server_name": "dns.quad9.net"},
            },
        },
        "9.9.9.9:853",
        {"server": "9.9.9.9:853", "transport": "tls", "tls_options": {"server_name": "dns.quad9.net"}},
    ),
    (
        "dns query_class",
        {"prober": "dns", "dns": {"query_name": "version.bind", "query_type": "TXT", "query_class": "CH"}},
        "9.9.9.9",
        {"type": "TXT", "query_class": "CH"},
    ),
    (
        "dns rules with match_on, authority, additional, all_match",
        {
            "prober": "dns",
            "dns": {
                "query_name": "example.com",
                "query_type": "A",
                "validate_answer_rrs": {
                    "fail_if_matches_regexp": [".*127.0.0.1"],
                    "fail_if_all_match_regexp": [".*127.0.0.1"],
                    "fail_if_not_matches_regexp": ["example.com.\t300\tIN\tA\t.*"],
                    "fail_if_none_matches_regexp": ["93\\.184", "IN\tAAAA"],
                },
                "validate_authority_rrs": {"fail_if_matches_regexp": [".*127.0.0.1"]},
                "validate_additional_rrs": {"fail_if_matches_regexp": [".*127.0.0.1"]},
            },
        },
        "9.9.9.9",
        {
            "answers": [
                {"op": "not_matches", "value": ".*127.0.0.1", "match_on": "record"},
                {"op": "matches", "value": "example.com.\t300\tIN\tA\t.*", "match_on": "record"},
                # Passes when any one of them is found: one value joining them.
                {"op": "contains", "value": "(?:93\\.184)|(?:IN\tAAAA)", "match_on": "record"},
                {"op": "all_match", "value": ".*127.0.0.1", "match_on": "record"},
            ],
            "authority": [{"op": "not_matches", "value": ".*127.0.0.1", "match_on": "record"}],
            "additional": [{"op": "not_matches", "value": ".*127.0.0.1", "match_on": "record"}],
        },
    ),
    (
        "icmp ttl and dont_fragment",
        {"prober": "icmp", "icmp": {"ttl": 5, "dont_fragment": True, "source_ip_address": "127.0.0.1"}},
        "gw.example",
        {"ttl": 5, "dont_fragment": True, "source_ip_address": "127.0.0.1"},
    ),
    (
        "grpc insecure",
        {"prober": "grpc", "grpc": {"tls": True, "tls_config": {"insecure_skip_verify": True}}},
        "grpc.example:443",
        {"tls": True, "tls_options": {"insecure": True}},
    ),
]


@pytest.mark.parametrize(
    ("option", "module", "target", "expected"), NEW_OPTIONS, ids=[c[0] for c in NEW_OPTIONS]
)
def test_new_options_are_written_as_the_contract_names_them(
    option: str, module: dict[str, Any], target: str, expected: dict[str, Any]
) -> None:
    settings = one_check(module, target)["settings"]
    assert {key: settings.get(key) for key in expected} == expected


@pytest.mark.parametrize(
    ("option", "module", "target", "expected"),
    NEW_OPTIONS,
    ids=[c[0] for c in NEW_OPTIONS],
)
def test_new_options_validate(
    option: str, module: dict[str, Any], target: str, expected: dict[str, Any]
) -> None:
    load(yaml.safe_dump({"checks": [one_check(module, target)]}))


# --- what has no equivalent ------------------------------------------------------------------------


def test_what_has_no_equivalent_is_a_comment_with_the_reason() -> None:
    modules = {
        "unix": {"prober": "unix"},
        "cel": {
            "prober": "http",
            "http": {"fail_if_body_json_matches_cel": "body.x == 1", "made_up_option": 1},
        },
        "tls_max": {
            "prober": "http",
            "http": {"tls_config": {"max_version": "TLS12", "key": "-----BEGIN PRIVATE KEY-----inline"}},
        },
        "badre": {"prober": "http", "http": {"fail_if_body_matches_regexp": ["\\pL+"]}},
        "dnsany": {"prober": "dns", "dns": {"query_name": "example.com", "query_type": "NOT A TYPE"}},
        "labels": {
            "prober": "tcp",
            "tcp": {"query_response": [{"expect": "v(.*)", "labels": [{"name": "v", "value": "${1}"}]}]},
        },
    }
    jobs = [
        probe_job(
            name,
            "a.example:1"
            if name in ("labels", "unix")
            else ("9.9.9.9" if name == "dnsany" else "https://a.example/"),
            name=name,
        )
        for name in modules
    ]
    text = imported(modules, jobs)
    assert "NOT IMPORTED: prober 'unix' has no equivalent" in text
    assert "fail_if_body_json_matches_cel: no equivalent (Vantage has no CEL)" in text
    assert "made_up_option: not a blackbox_exporter option Vantage knows; left out" in text
    assert "tls_config.max_version: no equivalent" in text
    assert "tls_config.key: inline PEM is not copied" in text
    assert "-----BEGIN PRIVATE KEY" not in text
    assert "fail_if_body_matches_regexp[0]: the regular expression cannot be read by Python's re" in text
    assert "NOT IMPORTED: query_type 'NOT A TYPE' is not a record type" in text
    assert "query_response[0].labels: no equivalent" in text
    load(text)


OPTION_NAMES = sorted(
    {
        *("prober", "timeout", "http", "tcp", "dns", "icmp", "grpc", "headers", "query_response"),
        *("tls_config", "valid_status_codes", "basic_auth", "oauth2", "query_name", "query_type"),
        *("validate_answer_rrs", "fail_if_header_matches", "expect", "send", "starttls", "ttl"),
        *("payload_size", "body_size_limit", "preferred_ip_protocol", "proxy_url", "regexp", "header"),
        *("password", "module", "targets", "labels"),
    }
)
SHAPES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(OPTION_NAMES), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    SHAPES, st.sampled_from(["https://a.example/", "a.example:1", "9.9.9.9", "", "::1", "http://[::1]:8/x"])
)
def test_any_module_shape_imports_without_crashing(module: Any, target: str) -> None:
    modules = {"m": module, "n": {"prober": "http", "http": module}, "o": {"prober": "dns", "dns": module}}
    jobs = [probe_job(name, target, name=f"j{name}") for name in modules]
    text = imported(modules, jobs)
    assert isinstance(yaml.safe_load(text), dict)  # always a YAML document with its comments


def test_broken_scrape_configs_are_comments() -> None:
    text = import_blackbox(
        "modules: {m: {prober: http}}",
        yaml.safe_dump(
            {
                "scrape_configs": [
                    "not a job",
                    {"job_name": "x", "static_configs": "nope", "metrics_path": "/probe"},
                ]
            }
        ),
    ).text
    assert "a scrape_configs entry that is not a mapping was left out" in text
    assert checks_of(text) == []
    assert "no scrape_configs" in import_blackbox("", "").text


# --- blackbox_exporter's example configuration, module by module -----------------------------------

EXAMPLE_TARGETS = {
    "http": "https://www.example.com/",
    "tcp": "mail.example.com:993",
    "icmp": "gw.example.com",
    "dns": "9.9.9.9",
}
EXAMPLE_MODULES = yaml.safe_load((FIXTURES / "example_modules.yml").read_text())["modules"]


def example_import(name: str, ca_file: Path) -> str:
    module = yaml.safe_load(yaml.safe_dump(EXAMPLE_MODULES[name]).replace("CA_FILE", str(ca_file)))
    target = EXAMPLE_TARGETS[module["prober"]]
    return imported({name: module}, [probe_job(name, target, name="examples")])


@pytest.mark.parametrize("name", list(EXAMPLE_MODULES))
def test_each_example_module_imports_and_validates(name: str, ca_file: Path) -> None:
    text = example_import(name, ca_file)
    assert len(checks_of(text)) == 1, text
    load(
        text,
        HTTP_BASIC_AUTH_EXAMPLE_PASSWORD="x" * 8,
        HTTP_2XX_OAUTH_CLIENT_CREDENTIALS_OAUTH2_CLIENT_SECRET="y" * 8,
    )


def test_the_example_modules_say_what_has_no_equivalent(ca_file: Path) -> None:
    texts = {name: example_import(name, ca_file) for name in EXAMPLE_MODULES}
    assert "body_file: Vantage takes the body inline" in texts["http_post_body_file"]
    assert "proxy_connect_header: no equivalent" in texts["http_with_proxy_and_headers"]
    assert "connect-header-secret" not in texts["http_with_proxy_and_headers"]
    assert "example-basic-secret" not in texts["http_basic_auth_example"]
    assert "example-oauth-secret" not in texts["http_2xx_oauth_client_credentials"]
    (check,) = checks_of(texts["http_any_response_example"])
    assert check["settings"]["assert"] == [{"source": "status", "op": "ge", "value": 100}]
    (check,) = checks_of(texts["irc_banner_example"])
    assert [turn for turn in check["settings"]["dialogue"] if "send" in turn][2] == {"send": "PONG ${1}\n"}
    (check,) = checks_of(texts["smtp_starttls"])
    assert check["settings"]["dialogue"][5:7] == [{"starttls": True}, {"send": "EHLO prober\r\n"}]


def test_a_comment_never_ends_early() -> None:
    """A line break in a name the input chose would end the comment and start YAML of its making."""
    text = imported(
        {"m\nchecks: [injected]": {"prober": "nope"}},
        [probe_job("m\nchecks: [injected]", "https://a.example/\n- name: injected")],
    )
    assert yaml.safe_load(text) == {"checks": []}
    assert "injected" in text  # shown, on a comment line


def test_job_and_instance_are_kept_for_the_dashboards() -> None:
    job = probe_job("m", "https://a.example/")
    job["relabel_configs"][1] = {"target_label": "instance", "replacement": "vendor-a"}
    (check,) = checks_of(imported({"m": {"prober": "http"}}, [job]))
    assert check["labels"] == {"prometheus_instance": "vendor-a", "prometheus_job": "probes"}
    # Without a rule for it, Prometheus's instance is the exporter's address.
    del job["relabel_configs"][1]
    (check,) = checks_of(imported({"m": {"prober": "http"}}, [job]))
    assert check["labels"]["prometheus_instance"] == "127.0.0.1:9115"


JOB_KEYS = sorted(
    {
        "job_name",
        "metrics_path",
        "params",
        "static_configs",
        "file_sd_configs",
        "relabel_configs",
        "targets",
        "labels",
        "module",
        "source_labels",
        "target_label",
        "regex",
        "action",
        "replacement",
        "files",
        "scrape_interval",
        "modulus",
    }
)
JOB_SHAPES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 5)
    | st.sampled_from(
        [
            "/probe",
            "__address__",
            "__param_target",
            "(.*)",
            "m",
            "a.example:1",
            "[",
            "$1",
            "hashmod",
            "keep",
            "drop",
            "labelmap",
            "replace",
            "*.json",
            "1d",
        ]
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(JOB_KEYS), inner, max_size=4),
    max_leaves=14,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JOB_SHAPES)
def test_any_scrape_config_shape_imports_without_crashing(job: Any) -> None:
    prometheus = yaml.safe_dump(
        {"global": {"scrape_interval": "10s"}, "scrape_configs": [job, probe_job("m", "a.example:1")]}
    )
    text = import_blackbox("modules: {m: {prober: tcp}}", prometheus, prometheus_dir=FIXTURES).text
    assert isinstance(yaml.safe_load(text), dict)


def test_the_migration_guide_names_every_option_the_import_reads() -> None:
    from agent.config.blackbox import _HTTP_OPTIONS

    guide = (Path(__file__).parent.parent / "docs" / "migrating-from-blackbox.md").read_text()
    others = {
        *("query_response", "starttls", "source_ip_address", "query_name", "query_type", "query_class"),
        *("transport_protocol", "dns_over_tls", "recursion_desired", "valid_rcodes", "validate_answer_rrs"),
        *("validate_authority_rrs", "validate_additional_rrs", "fail_if_all_match_regexp"),
        *(
            "fail_if_none_matches_regexp",
            "payload_size",
            "dont_fragment",
            "ttl",
            "service",
            "insecure_skip_verify",
        ),
        *("min_version", "max_version", "password_file", "credentials_file", "client_secret_file"),
    }
    missing = sorted(
        name for name in {*_HTTP_OPTIONS, *others} if f"`{name}" not in guide and f"{name}`" not in guide
    )
    assert not missing, missing


def test_a_relabelling_rule_prometheus_would_refuse_is_named_once_per_job() -> None:
    job = probe_job("m", "https://a.example/", "https://b.example/")
    job["relabel_configs"].insert(
        0, {"source_labels": ["__address__"], "regex": "(unclosed", "target_label": "x"}
    )
    job["relabel_configs"].append({"action": "teleport"})
    text = imported({"m": {"prober": "http"}}, [job])
    assert text.count("relabel_configs[0]: regex not usable here") == 1
    assert text.count("relabel_configs[4]: action 'teleport' is not one Prometheus has; rule skipped") == 1
    assert len(checks_of(text)) == 2


def test_a_file_with_nothing_imported_still_loads() -> None:
    text = imported({"m": {"prober": "unix"}}, [probe_job("m", "/run/x.sock")])
    assert "NOT IMPORTED" in text
    assert load(text).entries == []


def test_scrape_config_files_parameters_and_target_forms(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    extra = {"scrape_configs": [probe_job("grpc", "https://grpc.example:8443", name="extra")]}
    (tmp_path / "jobs" / "extra.yml").write_text(yaml.safe_dump(extra))
    vhost = probe_job("web", "https://10.0.0.7/", "ftp://files.example/", name="vhost")
    vhost["params"]["hostname"] = ["www.example.com"]
    prometheus = {"scrape_config_files": ["jobs/*.yml"], "scrape_configs": [vhost]}
    modules = {"web": {"prober": "http"}, "grpc": {"prober": "grpc"}}
    text = import_blackbox(
        yaml.safe_dump({"modules": modules}), yaml.safe_dump(prometheus), prometheus_dir=tmp_path
    ).text
    web, grpc = checks_of(text)
    # blackbox's hostname parameter is the Host header of the request.
    assert web["settings"]["headers"] == {"Host": "www.example.com"}
    modules["web"] = {"prober": "http", "http": {"headers": {"host": "other.example"}}}
    refused = import_blackbox(
        yaml.safe_dump({"modules": modules}), yaml.safe_dump({"scrape_configs": [vhost]})
    ).text
    assert "the module's Host header and the hostname parameter differ" in refused
    assert "NOT IMPORTED: target ftp://files.example/: not an http:// or https:// URL" in text
    # A gRPC target may be a URL; https means TLS.
    assert (grpc["target"], grpc["settings"]["tls"]) == ("grpc.example:8443", True)
    assert "an https:// target means TLS: tls: true" in text


def test_the_migration_guide_shows_what_the_import_writes() -> None:
    guide = (Path(__file__).parent.parent / "docs" / "migrating-from-blackbox.md").read_text()
    example = re.findall(r"```yaml\n(.*?)```", guide, re.S)[0]
    written = fixture_import()
    # Every line of the example (the header, the check) is a line the fixture's import writes.
    shown = [line for line in example.splitlines() if line and not line.endswith("...")]
    assert [line for line in shown if line not in written.splitlines()] == []
    load(example)


# --- the same verdicts as blackbox_exporter, side by side --------------------------------------------

SIDE_BY_SIDE_MODULES = {
    "http_2xx": {"prober": "http", "timeout": "3s"},  # blackbox's default: ip6 preferred, ip4 as fallback
    "http_body": {
        "prober": "http",
        "timeout": "3s",
        "http": {
            "preferred_ip_protocol": "ip4",
            "fail_if_body_matches_regexp": ["Could not connect to database"],
            "fail_if_body_not_matches_regexp": ["status: (ok|degraded)"],
        },
    },
    "http_created": {
        "prober": "http",
        "timeout": "3s",
        "http": {"preferred_ip_protocol": "ip4", "method": "POST", "valid_status_codes": [201]},
    },
    "http_header": {
        "prober": "http",
        "timeout": "3s",
        "http": {
            "preferred_ip_protocol": "ip4",
            "fail_if_header_not_matches": [{"header": "X-Served-By", "regexp": "^edge-[0-9]+$"}],
        },
    },
    "tcp_connect": {"prober": "tcp", "timeout": "3s"},
}


def _side_by_side_app() -> web.Application:
    async def page(request: web.Request) -> web.Response:
        body, status, headers = {
            "/ok": ("status: ok", 200, {"X-Served-By": "edge-7"}),
            "/degraded": ("status: degraded", 200, {"X-Served-By": "origin"}),
            "/db": ("status: ok\nCould not connect to database", 200, {}),
            "/hello": ("hello", 200, {}),
            "/down": ("status: ok", 503, {}),
            "/created": ("status: ok", 201 if request.method == "POST" else 405, {}),
        }[request.path]
        return web.Response(text=body, status=status, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", page)
    return app


def _blackbox_success(exporter: str, module: str, target: str) -> bool:
    query = urlencode({"module": module, "target": target})
    with urllib.request.urlopen(f"{exporter}/probe?{query}", timeout=10) as response:
        text = response.read().decode()
    (value,) = re.findall(r"^probe_success (\S+)$", text, re.M)
    return float(value) == 1.0


async def _line_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An SMTP-like server: a banner, a multi-line EHLO answer, QUIT; it hangs up after a second of
    silence, so that an expect that never matches ends at the connection's close."""
    try:
        writer.write(b"220 mail.example ESMTP ready\r\n")
        for _ in range(10):
            try:
                with anyio.fail_after(1):
                    line = (await reader.readline()).decode().rstrip("\r\n")
            except TimeoutError:
                break
            if line.startswith("EHLO "):
                writer.write(f"250-hello {line[5:]}\r\n250-STARTTLS\r\n250 OK\r\n".encode())
            elif line == "QUIT":
                writer.write(b"221 bye\r\n")
                break
            elif not line:
                break
            else:
                writer.write(b"500 what\r\n")
            await writer.drain()
    finally:
        writer.close()


SIDE_BY_SIDE_MODULES.update(
    {
        "smtp": {
            "prober": "tcp",
            "timeout": "3s",
            "tcp": {
                "preferred_ip_protocol": "ip4",
                "query_response": [
                    {"expect": "^220 ([^ ]+) ESMTP", "send": "EHLO ${1}\r"},
                    {"expect": "^250-hello mail\\.example$"},  # the group, sent back
                    {"expect": "^250 OK"},  # after the other lines of the answer
                    {"send": "QUIT\r"},
                    {"expect": "^221"},
                ],
            },
        },
        "smtp_refused": {
            "prober": "tcp",
            "timeout": "3s",
            "tcp": {"preferred_ip_protocol": "ip4", "query_response": [{"expect": "^554"}]},
        },
        "dns_a": {
            "prober": "dns",
            "timeout": "3s",
            "dns": {
                "preferred_ip_protocol": "ip4",
                "query_name": "vendor.test",
                "query_type": "A",
                "validate_answer_rrs": {
                    "fail_if_not_matches_regexp": ["^vendor\\.test\\.\t60\tIN\tA\t127\\.0\\.0\\.[12]$"]
                },
            },
        },
        "dns_none": {
            "prober": "dns",
            "timeout": "3s",
            "dns": {
                "preferred_ip_protocol": "ip4",
                "query_name": "vendor.test",
                "query_type": "A",
                "validate_answer_rrs": {
                    "fail_if_none_matches_regexp": ["127\\.0\\.0\\.9", "127\\.0\\.0\\.2"]
                },
            },
        },
        "dns_none_missing": {
            "prober": "dns",
            "timeout": "3s",
            "dns": {
                "preferred_ip_protocol": "ip4",
                "query_name": "vendor.test",
                "query_type": "A",
                "validate_answer_rrs": {"fail_if_none_matches_regexp": ["127\\.0\\.0\\.9", "10\\."]},
            },
        },
        "dns_all_match": {
            "prober": "dns",
            "timeout": "3s",
            "dns": {
                "preferred_ip_protocol": "ip4",
                "query_name": "vendor.test",
                "query_type": "A",
                "validate_answer_rrs": {"fail_if_all_match_regexp": ["127\\.0\\.0\\.1"]},
            },
        },
        "dns_soa": {
            "prober": "dns",
            "timeout": "3s",
            "dns": {"preferred_ip_protocol": "ip4", "query_name": "example.test", "query_type": "SOA"},
        },
        "grpc_serving": {"prober": "grpc", "timeout": "3s", "grpc": {"service": "payments.v1.Charges"}},
        "grpc_not_serving": {"prober": "grpc", "timeout": "3s", "grpc": {"service": "payments.v1.Refunds"}},
        "grpc_unknown": {"prober": "grpc", "timeout": "3s", "grpc": {"service": "payments.v1.Nope"}},
        "dns_nxdomain": {
            "prober": "dns",
            "timeout": "3s",
            "dns": {"preferred_ip_protocol": "ip4", "query_name": "missing.test", "query_type": "A"},
        },
    }
)


async def _blackbox_verdicts(config: Path, targets: dict[str, list[str]]) -> dict[tuple[str, str], bool]:
    """probe_success of every (module, target), from blackbox_exporter itself."""
    binary = shutil.which("prometheus-blackbox-exporter") or shutil.which("blackbox_exporter")
    assert binary, "prometheus-blackbox-exporter is not installed (tests/setup.sh installs it)"
    port = free_port()
    exporter = await anyio.open_process(
        [binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        await anyio.to_thread.run_sync(wait_until, lambda: _answers(f"{url}/-/healthy"))
        verdicts = {}
        for module, module_targets in targets.items():
            for target in module_targets:
                verdicts[module, target] = await anyio.to_thread.run_sync(
                    _blackbox_success, url, module, target
                )
        return verdicts
    finally:
        exporter.terminate()
        with anyio.CancelScope(shield=True), anyio.fail_after(10):
            await exporter.wait()


async def _vantage_verdicts(text: str) -> dict[tuple[str, str], bool]:
    """The success of every imported check, run once, by (its job, its instance)."""
    checks = load_config({"VANTAGE_CHECKS": text, "OTEL_TRACES_EXPORTER": "none"})
    agent = build_agent(checks, {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "prometheus"})
    try:
        await agent.scheduler.run_once()
    finally:
        await agent.http.aclose()
    verdicts = {}
    for state in agent.recorder.states.values():
        assert state.last is not None
        labels = state.entry.check.labels
        verdicts[labels["prometheus_job"], labels["prometheus_instance"]] = state.last.success
    return verdicts


def _tls_modules(ca_file: Path) -> dict[str, Any]:
    """Modules on TLS (the CA given or not, verification skipped, a name that does not match), and
    an echo request."""
    http = {"prober": "http", "timeout": "3s"}
    return {
        "https_ca": {**http, "http": {"tls_config": {"ca_file": str(ca_file)}}},
        "https_untrusted": http,
        "https_insecure": {**http, "http": {"tls_config": {"insecure_skip_verify": True}}},
        "https_wrong_name": {
            **http,
            "http": {"tls_config": {"ca_file": str(ca_file), "server_name": "other.example"}},
        },
        "https_required": {
            **http,
            "http": {"fail_if_not_ssl": True, "tls_config": {"ca_file": str(ca_file)}},
        },
        "tls_ca": {
            "prober": "tcp",
            "timeout": "3s",
            "tcp": {"tls": True, "tls_config": {"ca_file": str(ca_file)}},
        },
        "icmp": {"prober": "icmp", "timeout": "3s"},  # without ICMP sockets allowed both fail alike
    }


@pytest.mark.slow
@pytest.mark.anyio
async def test_imported_checks_get_blackbox_exporters_verdicts(
    tmp_path: Path, ca: trustme.CA, ca_file: Path
) -> None:
    """blackbox_exporter (Debian's, as tests/setup.sh installs it) and the imported checks probe the
    same local targets (HTTP, HTTPS, TLS, a line protocol, DNS, gRPC health, ICMP); each gets the same
    verdict."""
    modules = {**SIDE_BY_SIDE_MODULES, **_tls_modules(ca_file)}
    config = tmp_path / "blackbox.yml"
    config.write_text(yaml.safe_dump({"modules": modules}))
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_tls)
    line_server = await asyncio.start_server(_line_server, "127.0.0.1", 0)
    line = f"127.0.0.1:{line_server.sockets[0].getsockname()[1]}"
    try:
        with health_server() as grpc_port:
            async with (
                serve(_side_by_side_app()) as port,
                serve(_side_by_side_app(), ssl_context=server_tls) as tls_port,
                dns_server() as dns_port,
            ):
                base, secure = f"http://127.0.0.1:{port}", f"https://127.0.0.1:{tls_port}"
                pages = {
                    page: f"{base}/{page}" for page in ("ok", "degraded", "db", "hello", "down", "created")
                }
                targets = {
                    "http_2xx": [pages["ok"], pages["down"], pages["hello"]],
                    "http_body": [pages[p] for p in ("ok", "degraded", "db", "hello", "down")],
                    "http_created": [pages["created"], pages["ok"]],
                    "http_header": [pages["ok"], pages["degraded"], pages["hello"]],
                    "tcp_connect": [f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}"],
                    "smtp": [line],
                    "smtp_refused": [line],
                    **{name: [f"127.0.0.1:{dns_port}"] for name in modules if name.startswith("dns_")},
                    **{name: [f"127.0.0.1:{grpc_port}"] for name in modules if name.startswith("grpc_")},
                    **{name: [f"{secure}/ok"] for name in modules if name.startswith("https_")},
                    "https_required": [f"{secure}/ok", pages["ok"]],
                    "tls_ca": [f"127.0.0.1:{tls_port}", f"127.0.0.1:{port}"],
                    "icmp": ["127.0.0.1"],  # loopback only, where every address answers: no failing case
                }
                expected = await _blackbox_verdicts(config, targets)
                # One job per module: each check's prometheus_job names its module.
                jobs = [
                    probe_job(module, *module_targets, name=module)
                    for module, module_targets in targets.items()
                ]
                got = await _vantage_verdicts(imported(modules, jobs))
    finally:
        line_server.close()
    assert len(got) == len(expected) == 35
    assert got == expected
    # Not vacuous: both verdicts occur, for each kind of probe.
    for prefix in ("http_", "https", "tcp", "tls", "smtp", "dns", "grpc"):
        assert {v for (module, _), v in expected.items() if module.startswith(prefix)} == {True, False}, (
            prefix
        )


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


# Options newer than the blackbox_exporter 0.23 these tests run beside; the importer reads them too.
NEWER_THAN_0_23 = {
    "fail_if_body_json_matches_cel",
    "fail_if_body_json_not_matches_cel",
    "accept_any_response",
    "body_file",
}


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["blackbox.yml", "example_modules.yml"])
def test_the_module_fixtures_are_what_blackbox_exporter_accepts(
    fixture: str, tmp_path: Path, ca_file: Path
) -> None:
    binary = shutil.which("prometheus-blackbox-exporter") or shutil.which("blackbox_exporter")
    assert binary, "prometheus-blackbox-exporter is not installed (tests/setup.sh installs it)"
    modules = yaml.safe_load((FIXTURES / fixture).read_text().replace("CA_FILE", str(ca_file)))["modules"]
    older = {name: m for name, m in modules.items() if not NEWER_THAN_0_23 & set(m.get(m["prober"]) or {})}
    assert len(older) >= len(modules) - 4
    config = tmp_path / "blackbox.yml"
    config.write_text(yaml.safe_dump({"modules": older}))
    result = subprocess.run(
        [binary, "--config.check", f"--config.file={config}"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_the_prometheus_fixture_and_the_guides_relabelling_are_what_prometheus_accepts(
    tmp_path: Path,
) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (tests/setup.sh installs it)"
    result = subprocess.run(
        [promtool, "check", "config", str(FIXTURES / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    guide = (Path(__file__).parent.parent / "docs" / "migrating-from-blackbox.md").read_text()
    snippet = next(
        block for block in re.findall(r"```yaml\n(.*?)```", guide, re.S) if "metric_relabel_configs" in block
    )
    (tmp_path / "prometheus.yml").write_text(snippet)
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_the_migration_guide_names_is_one_the_agent_documents() -> None:
    docs = Path(__file__).parent.parent / "docs"
    guide = (docs / "migrating-from-blackbox.md").read_text()
    metrics = (docs / "metrics.md").read_text()
    kept = guide.split("## Metric names kept", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"`(probe_[a-z_]+)", kept))
    assert len(names) >= 30
    assert sorted(name for name in names if f"`{name}" not in metrics) == []


def test_credentials_under_names_of_their_own_are_not_copied() -> None:
    module = {
        "prober": "http",
        "http": {
            "headers": {"X-Auth-Key": "cf-secret-4711", "X-Auth": "xa-secret-4712", "X-Trace": "plain"},
            "oauth2": {
                "client_id": "id",
                "client_secret": "cs",
                "token_url": "https://auth.example/token",
                "endpoint_params": {
                    "password": "ep-pass-4713",
                    "client_assertion": "assertion-4714",
                    "resource": "https://api.example",
                },
            },
        },
    }
    text = imported(
        {"m": module}, [probe_job("m", "https://api.example/x?sessionid=sess-4715&jwt=jwt-4716&n=1")]
    )
    for secret in (
        "cf-secret-4711",
        "xa-secret-4712",
        "ep-pass-4713",
        "assertion-4714",
        "sess-4715",
        "jwt-4716",
    ):
        assert secret not in text
    (check,) = checks_of(text)
    assert check["settings"]["headers"]["X-Trace"] == "plain"
    assert check["settings"]["auth"]["extra"]["resource"] == "https://api.example"
