"""Agent settings from ``VANTAGE_*`` environment variables, and the loading of the check set."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, SecretStr, ValidationError, field_validator

from agent.config.checks import CheckEntry, Progress, parse_checks
from agent.config.registry import Registry
from agent.config.secrets import Redactor, SecretResolver
from agent.errors import ConfigError, PluginError
from agent.sdk.durations import Duration

__all__ = [
    "NOT_SETTINGS",
    "AgentSettings",
    "Config",
    "Shard",
    "load_config",
    "load_settings",
    "unknown_variables",
]

NOT_SETTINGS = frozenset(
    {
        "VANTAGE_LISTEN_FD",  # agent/process/handover.py: the supervisor's socket, to a worker
        "VANTAGE_SUPERVISOR_PID",  # agent/process/workers.py: a worker dies with its supervisor
        "VANTAGE_UPDATE_GOLDEN",  # tests/test_golden.py: rewrite the golden telemetry files
        "VANTAGE_BENCH_TREE",  # bench/probe_path.py: the source tree a benchmark measures
    }
)
"""``VANTAGE_*`` variables that are not settings but are read where they are used: not unknown."""


class AgentSettings(BaseModel):
    """The agent's own settings; every field is ``VANTAGE_<NAME>``, read by :func:`load_settings`.

    A plain model, not pydantic-settings' ``BaseSettings``: :func:`load_settings` maps the
    variables to fields itself, and that package's import cost a tenth of the agent's start-up.
    Defaults are validated as ``BaseSettings`` validates them."""

    model_config = ConfigDict(extra="ignore", frozen=True, validate_default=True)

    region: str = Field("local", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    concurrency: int = Field(256, ge=1, le=100_000)
    shard: str = ""
    replicas: int | None = Field(None, ge=1, le=10_000)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    log_runs: bool = False
    api_token: SecretStr | None = None
    checks: str | None = None
    checks_file: Path | None = None
    shutdown_timeout: Duration = 10.0
    state_dir: Path | None = None
    """Where state that should survive a restart is kept (schema baselines)."""
    workers: int | Literal["auto"] = 1
    worker: str = ""
    """Set by the supervisor for its worker processes: ``INDEX/COUNT``."""
    inbound_port: int | None = Field(None, ge=0, le=65535)
    """Serve ``/hooks`` and ``/heartbeat`` on this port only, apart from the status endpoints."""
    inbound_max_body: ByteSize = Field(ByteSize(256 * 1024), ge=1024, le=32 << 20)
    inbound_rate: str = Field("20/second;600/minute", validate_default=False)
    """Inbound requests allowed per source address (``limits`` notation), or ``off``."""
    trusted_proxies: str = ""
    """Comma-separated networks whose ``X-Forwarded-For`` names the real source (an ingress)."""
    public_url: str | None = None
    """Where senders reach the inbound endpoints (``https://hooks.example.com``), for ``${hook_url}``."""
    peer_url: str | None = None
    """How replicas reach each other to pass on an inbound request for a check another replica runs:
    a URL template with ``{shard}`` (``http://vantage-eu-{shard}.vantage-eu:8080``)."""
    trace_success_ratio: float = 0.1
    """The share of successful runs that keep their traces (0 to 1; 1 traces every run); failed
    runs and state changes always keep theirs. 0.1 because exporting a run's spans costs about
    440 µs of CPU, over half the agent's per-probe target, while what a successful run's trace adds
    to the metrics (each hop's timings, the join to the target's own trace) is a baseline that a
    sample gives as well as every run; see docs/configuration.md."""
    status_group_by: str = Field("", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$|^$")
    """The label the status page (``GET /``) groups the checks by (``vendor``, ``team``), or none."""
    status_runs: int = Field(50, ge=1, le=1000)
    """The runs the status page keeps per check (the last and the last failure in full: the debug view)."""
    trace_url_template: str | None = None
    """A link to a run's trace: an http(s) URL with ``{trace_id}`` (Grafana Tempo, Jaeger, Datadog)."""
    reload_poll_interval: Duration = 5.0
    """How often the checks file (``VANTAGE_CHECKS_FILE``) is looked at for a change, which
    reloads the checks (agent/reload.py); 0 turns the watch off (SIGHUP and ``POST /-/reload``
    still reload)."""

    @field_validator("trace_url_template")
    @classmethod
    def _trace_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not re.match(r"^https?://[^/\s]+", value, re.IGNORECASE) or "{trace_id}" not in value:
            raise ValueError(
                f"{value!r} is not an http:// or https:// URL with {{trace_id}} in it "
                "(e.g. https://grafana.example/explore?traceId={trace_id})"
            )
        return value

    @field_validator("inbound_rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        value = value.strip()
        if value.lower() in ("off", "0", ""):
            return "off"
        import limits  # loaded when the settings are read, not when this module is imported

        try:
            limits.parse_many(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a rate limit; use e.g. '20/second' or '20/second;600/minute', or 'off'"
            ) from None
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        for item in filter(None, (part.strip() for part in value.split(","))):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP network (10.0.0.0/8, fd00::/8)") from None
        return value

    @field_validator("public_url", "peer_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value.rstrip("/") if value else value

    @field_validator("peer_url")
    @classmethod
    def _peer(cls, value: str | None) -> str | None:
        if value is not None and "{shard}" not in value:
            raise ValueError("the template needs '{shard}', replaced by the owning replica's ordinal")
        return value

    @field_validator("trace_success_ratio", mode="before")
    @classmethod
    def _ratio(cls, value: object) -> object:
        try:
            ratio = float(value) if isinstance(value, str | int | float) else float("nan")
        except ValueError:
            ratio = float("nan")
        if not 0.0 <= ratio <= 1.0:  # NaN too
            raise ValueError(
                f"{value!r} is not a ratio from 0 to 1; 1 traces every run, 0.1 one successful run in "
                "ten, 0 only failed runs and state changes"
            )
        return ratio

    def trusted_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [
            ipaddress.ip_network(item.strip(), strict=False)
            for item in self.trusted_proxies.split(",")
            if item.strip()
        ]

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) and not value.strip().isdigit() else value

    @field_validator("workers")
    @classmethod
    def _workers_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 64:
            raise ValueError("use a number of processes from 1 to 64, or 'auto' (one per CPU)")
        return value

    def worker_count(self) -> int:
        """How many worker processes ``workers`` asks for."""
        if self.workers == "auto":
            return max(
                1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            )
        return int(self.workers)

    @field_validator("shard", "worker")
    @classmethod
    def _shard(cls, value: str) -> str:
        value = value.strip()
        if value in ("", "auto"):
            return value
        match = re.fullmatch(r"(\d+)/(\d+)", value)
        if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
            raise ValueError("use 'INDEX/COUNT' with 0 <= INDEX < COUNT (e.g. '0/3'), or 'auto'")
        return value


@dataclass(frozen=True, slots=True)
class Shard:
    """This replica's share of the checks: ``index`` of ``count``."""

    index: int = 0
    count: int = 1


@dataclass(frozen=True, slots=True)
class Config:
    settings: AgentSettings
    entries: list[CheckEntry]
    shard: Shard
    worker: Shard
    redactor: Redactor
    resolver: SecretResolver
    registry: Registry
    source: str


def load_settings(environ: Mapping[str, str]) -> AgentSettings:
    """Read the ``VANTAGE_*`` variables; ConfigError names each bad variable."""
    env = {k: v for k, v in environ.items() if k.upper().startswith("VANTAGE_")}
    try:
        return AgentSettings.model_validate(
            {k.upper().removeprefix("VANTAGE_").lower(): v for k, v in env.items()}
        )
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_input=False, include_url=False):
            name = "VANTAGE_" + str(error["loc"][0]).upper() if error["loc"] else "VANTAGE_*"
            lines.append(f"{name}: {error['msg'].removeprefix('Value error, ')}")
        raise ConfigError("\n".join(lines)) from None


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A line for each ``VANTAGE_*`` variable that is no setting (a misspelt name), with the
    setting it most likely meant: a warning at ``run``, an error at ``validate``."""
    known = sorted("VANTAGE_" + name.upper() for name in AgentSettings.model_fields)
    # Compared without the prefix that all share, and without underscores ("LOGFORMAT").
    squeezed = {k.removeprefix("VANTAGE_").replace("_", ""): k for k in known}
    lines = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith("VANTAGE_") or upper in known or upper in NOT_SETTINGS:
            continue
        close = difflib.get_close_matches(upper.removeprefix("VANTAGE_").replace("_", ""), squeezed, n=1)
        hint = f"; did you mean {squeezed[close[0]]}?" if close else ""
        lines.append(f"{name}: not a setting of the agent{hint}")
    return lines


def resolve_shard(settings: AgentSettings, environ: Mapping[str, str]) -> Shard:
    if settings.shard == "":
        return Shard()
    if settings.shard != "auto":
        index, count = settings.shard.split("/")
        return Shard(int(index), int(count))
    hostname = environ.get("HOSTNAME") or socket.gethostname()
    match = re.search(r"-(\d+)$", hostname)
    if not match:
        raise ConfigError(
            f"VANTAGE_SHARD: 'auto' needs a StatefulSet pod name ending in '-<ordinal>'; "
            f"the hostname is {hostname!r}"
        )
    if settings.replicas is None:
        raise ConfigError("VANTAGE_SHARD: 'auto' needs VANTAGE_REPLICAS, the number of replicas")
    ordinal = int(match.group(1))
    if ordinal >= settings.replicas:
        raise ConfigError(
            f"VANTAGE_SHARD: the pod ordinal {ordinal} is not below VANTAGE_REPLICAS={settings.replicas}"
        )
    return Shard(ordinal, settings.replicas)


def load_config(
    environ: Mapping[str, str] | None = None,
    registry: Registry | None = None,
    redactor: Redactor | None = None,
    *,
    offline: bool = False,
    progress: Progress | None = None,
) -> Config:
    """Everything the agent needs before it probes: settings, shard and the parsed check set.

    Every error is redacted with the secrets resolved until then: a value that fails validation
    (``interval: "${KEY}"``) is never shown. A reload passes the running agent's ``redactor``, so
    that the secrets of the new set are redacted by everything already running. ``offline``:
    secret references are checked for their form but not resolved, and files that settings name
    need not exist (``validate --offline``). ``progress`` is told how far the validation of a large
    check set is.
    """
    environ = dict(os.environ if environ is None else environ)
    redactor = redactor if redactor is not None else Redactor()
    try:
        return _load_config(environ, registry or Registry(), redactor, offline=offline, progress=progress)
    except (ConfigError, PluginError) as exc:
        raise type(exc)(redactor(str(exc))) from None


def _load_config(
    environ: dict[str, str],
    registry: Registry,
    redactor: Redactor,
    *,
    offline: bool = False,
    progress: Progress | None = None,
) -> Config:
    settings = load_settings(environ)
    if settings.api_token is not None:
        redactor.add(settings.api_token.get_secret_value())
    resolver = SecretResolver(environ, redactor, offline=offline)
    if settings.checks is not None and settings.checks_file is not None:
        raise ConfigError("VANTAGE_CHECKS and VANTAGE_CHECKS_FILE are both set; use one")
    if settings.checks is not None:
        text, source = settings.checks, "VANTAGE_CHECKS"
    elif settings.checks_file is not None:
        source = f"VANTAGE_CHECKS_FILE ({settings.checks_file})"
        try:
            text = settings.checks_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{source}: cannot be read: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{source}: not UTF-8 text (bad byte at offset {exc.start})") from None
    else:
        raise ConfigError("no checks: set VANTAGE_CHECKS (inline YAML or JSON) or VANTAGE_CHECKS_FILE")
    entries = parse_checks(
        text,
        source=source,
        resolver=resolver,
        load_probe=registry.load,
        probe_types=registry.names(),
        offline=offline,
        locate=settings.checks is None,
        progress=progress,
    )
    shard = resolve_shard(settings, environ)
    worker = Shard(*map(int, settings.worker.split("/"))) if settings.worker not in ("", "auto") else Shard()
    return Config(settings, entries, shard, worker, redactor, resolver, registry, source)
