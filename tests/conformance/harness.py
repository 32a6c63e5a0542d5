"""Both sides of a case: blackbox_exporter's ``/probe`` and the agent's own run, as series.

A case's series are what each side exports for it, parsed from the Prometheus text format with
``prometheus_client``'s parser: blackbox's ``/probe`` page, and the agent's ``/metrics`` page
(rendered from its tables after one run of the check, through the real scheduler and recorder)
restricted to the check's series, without the labels every agent series carries.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from _pytest.mark.structures import ParameterSet
from prometheus_client.parser import text_string_to_metric_families

from agent.app import build_agent
from agent.config.blackbox import import_blackbox
from agent.net.curl import CurlMulti

from ..helpers import config_from, free_port

BLACKBOX = "prometheus-blackbox-exporter"
AGENT_LABELS = {"check", "type", "target", "region"}
TELEMETRY_ENV = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "prometheus"}

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass(frozen=True)
class Case:
    """One row of the table: the same probe written for blackbox_exporter and for Vantage.

    Strings in ``module``, ``check`` and ``target``/``bb_target`` are templates: ``{http}``,
    ``{ca_file}``... are filled from the session's targets (``Targets.values``)."""

    name: str
    prober: str
    """blackbox's prober (``http``, ``tcp``, ``dns``, ``icmp``, ``grpc``); the Vantage probe type
    is ``check["type"]``."""
    module: dict[str, Any]
    """The blackbox module, without ``prober`` and ``timeout`` (added from the case)."""
    check: dict[str, Any]
    """The Vantage check: ``type``, ``target`` and ``settings``."""
    bb_target: str
    """The ``target`` parameter of blackbox's ``/probe``."""
    timeout: float = 2.0
    ignore: frozenset[str] = field(default_factory=frozenset)
    """Families not compared in this case, each named in DIFFERENCES.md."""
    reason: str | None = None
    """The agent's own failure reason for the run (``probe_runs_total{reason}``), where blackbox's
    metrics cannot tell two failures apart (refused at once, or waited out: ``connect``/``timeout``)."""

    def param(self, *marks: Any) -> ParameterSet:
        return pytest.param(self, id=self.name, marks=marks)


_TEMPLATE = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


def fill(value: Any, values: dict[str, str]) -> Any:
    """``value`` with every string's ``{name}`` templates filled."""
    if isinstance(value, str):
        return _TEMPLATE.sub(lambda match: values[match[1]], value)
    if isinstance(value, dict):
        return {k: fill(v, values) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [fill(v, values) for v in value]
    return value


def parse(text: str, *, check: str | None = None, own_labels: Iterable[str] = ()) -> Series:
    """The samples of a Prometheus text page; for the agent's page, one check's, without the labels
    every agent series carries and the check's own ``labels`` (and without empty label values,
    which the agent's exposition gives a family's series that lack one of its labels)."""
    series: Series = {}
    dropped = AGENT_LABELS | set(own_labels) if check else set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if check is not None and sample.labels.get("check") != check:
                continue
            labels = frozenset((k, v) for k, v in sample.labels.items() if v != "" and k not in dropped)
            series[(sample.name, labels)] = sample.value
    return series


# ---------------------------------------------------------------- blackbox_exporter


def blackbox_binary() -> str:
    """Debian's blackbox_exporter; in CI its absence fails, elsewhere the suite is skipped."""
    path = shutil.which(BLACKBOX)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{BLACKBOX} is not installed; tests/setup.sh installs Debian's package")
        pytest.skip(f"{BLACKBOX} is not installed (Debian's package; tests/setup.sh installs it)")
    return path


class Blackbox:
    """One blackbox_exporter process for the session, with every case's module in its file."""

    def __init__(self, modules: dict[str, dict[str, Any]], directory: Path) -> None:
        self.config = directory / "blackbox.yml"
        self.config.write_text(yaml.safe_dump({"modules": modules}, sort_keys=True))
        self.binary = blackbox_binary()
        self.port = free_port()
        self.log = (directory / "blackbox.log").open("w+")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Blackbox:
        checked = subprocess.run(
            [self.binary, f"--config.file={self.config}", "--config.check"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if checked.returncode != 0:
            raise RuntimeError(f"blackbox_exporter rejects the generated modules: {checked.stderr}")
        self.process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.config}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/healthy", timeout=2):
                    return self
            except (urllib.error.URLError, ConnectionError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.log.seek(0)
                    raise RuntimeError(f"blackbox_exporter did not start: {self.log.read()}") from None
                time.sleep(0.05)

    def probe(self, module: str, target: str, *, debug: bool = False) -> str:
        query = urllib.parse.urlencode(
            {"module": module, "target": target, **({"debug": "true"} if debug else {})}
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/probe?{query}", timeout=30) as response:
            page: bytes = response.read()
        return page.decode()

    def probe_logged(self, module: str, target: str) -> tuple[str, list[str]]:
        """One probe with blackbox's debug output: its metrics page, and what it logged (messages)."""
        page = self.probe(module, target, debug=True)
        log, _, rest = page.partition("Metrics that would have been returned:")
        metrics = rest.partition("Module configuration:")[0]
        said = [line.split(" msg=", 1)[-1] for line in log.splitlines() if " msg=" in line]
        return metrics, said

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


def module_of(case: Case, values: dict[str, str]) -> dict[str, Any]:
    return {"prober": case.prober, "timeout": f"{case.timeout}s", **fill(case.module, values)}


# ---------------------------------------------------------------- Vantage


class VantageLoop:
    """One event loop, in a thread, for every run of the session: the agent's HTTP engine keeps
    one libcurl multi handle per loop, as the agent does for its life."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="conformance-vantage", daemon=True)
        self._thread.start()

    def start(self, case: Case, values: dict[str, str]) -> Callable[[], Series]:
        """Start the case's run; the function returned waits for its series. The two exporters
        probe at the same time, so that a case that waits out its timeout costs it once."""
        future = asyncio.run_coroutine_threadsafe(run_vantage(case, values), self.loop)
        return lambda: future.result(timeout=case.timeout + 10)

    def run(self, case: Case, values: dict[str, str]) -> Series:
        return self.start(case, values)()

    def run_check(self, check: dict[str, Any], timeout: float) -> Callable[[], Series]:
        future = asyncio.run_coroutine_threadsafe(run_check(check), self.loop)
        return lambda: future.result(timeout=timeout + 10)

    def stop(self) -> None:
        """Close the loop, after the targets have stopped (the fixtures see to it): a TLS connection
        the agent closed without waiting (its TLS shutdown) ends when the server goes; a moment is
        given to see it."""

        async def close() -> None:
            multi = CurlMulti._by_loop.get(self.loop)
            if multi is not None:  # its cached connections, before the loop they are watched by goes
                multi.close()
            await asyncio.sleep(0.2)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


async def run_vantage(case: Case, values: dict[str, str]) -> Series:
    """One run of the case's check through the agent's scheduler; its series on ``/metrics``."""
    check = {
        "name": case.name,
        "interval": "30s",
        "timeout": f"{case.timeout}s",
        **fill(case.check, values),
    }
    return await run_check(check)


async def run_check(check: dict[str, Any]) -> Series:
    """One run of ``check`` (a check file's entry) through the agent's scheduler; its series."""
    agent = build_agent(config_from([check]), TELEMETRY_ENV)
    try:
        await agent.scheduler.run_once()
    finally:
        await agent.http.aclose()
    page = agent.telemetry.render_prometheus().decode()
    return parse(page, check=check["name"], own_labels=check.get("labels") or {})


def imported(case: Case, values: dict[str, str]) -> dict[str, Any] | None:
    """The check ``vantage import blackbox`` writes for the case's module and target (a scrape job
    as the blackbox documentation writes one), or None when it writes none."""
    blackbox = yaml.safe_dump({"modules": {case.name: module_of(case, values)}})
    job = {
        "job_name": case.name,
        "metrics_path": "/probe",
        "params": {"module": [case.name]},
        "static_configs": [{"targets": [fill(case.bb_target, values)]}],
        "relabel_configs": [
            {"source_labels": ["__address__"], "target_label": "__param_target"},
            {"source_labels": ["__param_target"], "target_label": "instance"},
            {"target_label": "__address__", "replacement": "127.0.0.1:9115"},
        ],
    }
    result = import_blackbox(blackbox, yaml.safe_dump({"scrape_configs": [job]}))
    checks = (yaml.safe_load(result.text) or {}).get("checks") or []
    return {**checks[0], "name": case.name} if checks else None


# ---------------------------------------------------------------- comparison

TIMINGS = {
    "probe_duration_seconds",
    "probe_dns_lookup_time_seconds",
    "probe_http_duration_seconds",
    "probe_dns_duration_seconds",
    "probe_icmp_duration_seconds",
    "probe_grpc_duration_seconds",
}
"""Compared loosely: present on both sides or on neither (values and phases are the prober's)."""

EXACT = {
    "probe_success",
    "probe_http_status_code",
    "probe_http_version",
    "probe_http_redirects",
    "probe_http_ssl",
    "probe_http_content_length",
    "probe_http_uncompressed_body_length",
    "probe_http_last_modified_timestamp_seconds",
    "probe_failed_due_to_regex",
    "probe_ssl_earliest_cert_expiry",
    "probe_ssl_last_chain_expiry_timestamp_seconds",
    "probe_ssl_last_chain_info",
    "probe_tls_version_info",
    "probe_ip_protocol",
    "probe_ip_addr_hash",
    "probe_dns_answer_rrs",
    "probe_dns_authority_rrs",
    "probe_dns_additional_rrs",
    "probe_dns_serial",
    "probe_dns_query_succeeded",
    "probe_icmp_reply_hop_limit",
    "probe_grpc_status_code",
    "probe_grpc_healthcheck_response",
    "probe_grpc_ssl",
    "probe_grpc_ssl_earliest_cert_expiry",
}
"""Compared exactly, labels and values."""

PENDING: dict[str, str] = {
    # blackbox family -> why the agent does not export it yet (an issue and its class or option).
}
"""Families blackbox exports that the agent may still lack: compared when the agent has them.
tests/conformance/test_conformance.py asserts (strict xfail) that each is exported; when a helper's
branch lands, its entry goes from here."""

BLACKBOX_NAMES = TIMINGS | EXACT
"""blackbox's vocabulary: the agent exporting one of these where blackbox does not is a
disagreement unless the case ignores it (DIFFERENCES.md)."""


EXTRA_LABELS: dict[str, set[str]] = {"probe_ssl_last_chain_info": {"serialnumber"}}
"""Labels the agent adds to a blackbox family, left out of the comparison (DIFFERENCES.md)."""

NO_VERIFIED_CHAIN = -62135596800.0
"""blackbox's probe_ssl_last_chain_expiry_timestamp_seconds when no chain was verified (Go's zero
time): the agent leaves the family out instead (DIFFERENCES.md)."""

NO_RESPONSE_ZEROS = {
    "probe_ip_protocol",
    "probe_ip_addr_hash",
    "probe_grpc_status_code",
    "probe_dns_duration_seconds",
    "probe_icmp_duration_seconds",
    "probe_grpc_duration_seconds",
    "probe_dns_answer_rrs",
    "probe_dns_authority_rrs",
    "probe_dns_additional_rrs",
    "probe_http_status_code",
    "probe_http_content_length",
    "probe_http_uncompressed_body_length",
    "probe_http_version",
    "probe_http_redirects",
    "probe_http_ssl",
    "probe_http_duration_seconds",
    "probe_failed_due_to_regex",
}
"""Families blackbox writes as 0 (or, for timings, as far as it got) when a failed run got no
response; the agent may leave them out (DIFFERENCES.md)."""


def _absent_alike(name: str, blackbox: Series, failed: bool) -> bool:
    """Whether blackbox's series of ``name`` are its way of saying "none", which the agent says by
    leaving the family out."""
    values = set(_of(blackbox, name).values())
    if name == "probe_ssl_last_chain_expiry_timestamp_seconds":
        return values == {NO_VERIFIED_CHAIN}
    if name == "probe_ssl_earliest_cert_expiry":
        return values == {0.0}  # blackbox's grpc prober without TLS
    # A run cut by its timeout has no phases on the agent's side: timings are loose.
    return failed and name in NO_RESPONSE_ZEROS and (values <= {0.0} or name in TIMINGS)


def differences(blackbox: Series, vantage: Series, ignore: frozenset[str] = frozenset()) -> list[str]:
    """What the agent says differently from blackbox under blackbox's names; empty when they agree."""
    found: list[str] = []
    bb_names = {name for name, _ in blackbox}
    v_names = {name for name, _ in vantage}
    failed = (
        blackbox.get(("probe_success", frozenset())) == 0 and vantage.get(("probe_success", frozenset())) == 0
    )
    for name in sorted((bb_names | v_names) & BLACKBOX_NAMES - ignore):
        if name not in v_names and (name in PENDING or _absent_alike(name, blackbox, failed)):
            continue
        if name not in bb_names:
            found.append(f"{name}: only Vantage exports it ({_show(vantage, name)})")
        elif name not in v_names:
            found.append(f"{name}: only blackbox exports it ({_show(blackbox, name)})")
        elif name in EXACT:
            ours, theirs = _of(vantage, name, drop=EXTRA_LABELS.get(name, set())), _of(blackbox, name)
            if not _same(ours, theirs):
                found.append(f"{name}: blackbox {_fmt(theirs)} != Vantage {_fmt(ours)}")
    for name in sorted(bb_names - BLACKBOX_NAMES - ignore):
        if not name.startswith(("go_", "process_")):
            found.append(f"{name}: not in the comparison tables (add it to TIMINGS or EXACT)")
    return found


def reasons(series: Series) -> set[str]:
    """The agent's failure reasons in a run's ``probe_runs_total``."""
    return {dict(labels).get("reason", "") for (name, labels) in series if name == "probe_runs_total"} - {""}


def _of(series: Series, name: str, drop: set[str] | None = None) -> dict[frozenset[tuple[str, str]], float]:
    return {
        frozenset((k, v) for k, v in labels if k not in (drop or ())): value
        for (n, labels), value in series.items()
        if n == name
    }


def _same(a: dict[Any, float], b: dict[Any, float]) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def _fmt(values: dict[frozenset[tuple[str, str]], float]) -> str:
    return (
        ", ".join(
            f"{{{','.join(f'{k}={v!r}' for k, v in sorted(labels))}}}={value:g}"
            for labels, value in values.items()
        )
        or "nothing"
    )


def _show(series: Series, name: str) -> str:
    return _fmt(_of(series, name))
