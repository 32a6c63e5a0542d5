"""``vantage import blackbox``: a blackbox_exporter module file and the Prometheus scrape jobs that
use it, turned into a Vantage check file.

Each probe target of each scrape job becomes one check: the job's targets (``static_configs`` and
``file_sd_configs`` files) go through the job's ``relabel_configs`` as Prometheus applies them, so
``__param_target`` names what is probed and ``__param_module`` (or the job's ``params``) the
module; the module's options become the check's settings. What has no equivalent is written as a
YAML comment saying why, never silently dropped; nothing in the input makes the import fail.

Secrets in the module file (passwords, bearer tokens, OAuth client secrets, credential headers)
are never copied: the check refers to an environment variable (``${NAME}``), or to the file the
module read them from (``${file:/path}``), and the header lists the variables to set.

Only ``vantage import`` imports this module.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import yaml

from agent.config.secrets import sensitive_header
from agent.errors import ConfigError
from agent.sdk.types import RESERVED_LABELS

__all__ = ["Imported", "import_blackbox"]

_DEFAULT_MODULE = "http_2xx"  # what blackbox_exporter probes with when no module is given
_SCRAPE_TIMEOUT_OFFSET = 0.5  # blackbox_exporter's --timeout-offset default
_MAX_BODY = 64 << 20  # for body regexes: 64 MiB, not the largest max_body (a run may hold twice it)
_NAME_LIMIT = 128
_TLS_VERSIONS = {"TLS10": "1.0", "TLS11": "1.1", "TLS12": "1.2", "TLS13": "1.3"}
_IP_FAMILIES = {"ip4": "ipv4", "ip6": "ipv6", "": "ipv6"}
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_SECRET_QUERY = re.compile(
    r"token|secret|password|passwd|key|signature|sig|auth|credential|session|jwt", re.I
)
# An OAuth token request's parameters that carry a credential under a name of their own.
_SECRET_PARAM = re.compile(_SECRET_QUERY.pattern + r"|assertion|^code$", re.I)
# A Vantage secret reference (agent/config/secrets.py): text copied from blackbox must not form one.
_REFERENCE = re.compile(r"\$(\{(?:file:[^}]+|[A-Z_][A-Z0-9_]*)\})")
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d|w|y)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
    "y": 31536000.0,
}
_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": "\\x00-\\x7f",
    "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z",
    "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}


@dataclass
class Imported:
    """The check file written, and what the import found along the way."""

    text: str
    """The check file: YAML with comments."""
    checks: int
    """Checks written (commented-out ones not counted)."""
    skipped: int
    """Targets written as comments only, for want of an equivalent."""
    variables: dict[str, str]
    """Environment variable → what it must hold (a secret left out of the file)."""


class _Unsupported(Exception):
    """A target or module that cannot become a check: the reason, in the operator's words."""


@dataclass
class _Secrets:
    """Environment variables the check file refers to, one per secret of the module file."""

    names: dict[str, str] = field(default_factory=dict)
    _keys: dict[tuple[str, ...], str] = field(default_factory=dict)

    def reference(self, key: tuple[str, ...], what: str) -> str:
        """``${NAME}`` for the secret ``key`` (the same key, the same name), described by ``what``."""
        if key not in self._keys:
            base = re.sub(r"[^A-Z0-9]+", "_", "_".join(key).upper()).strip("_") or "SECRET"
            if base[0].isdigit():
                base = "BLACKBOX_" + base
            name, n = base, 1
            while name in self.names:
                n += 1
                name = f"{base}_{n}"
            self._keys[key] = name
            self.names[name] = what
        return "${" + self._keys[key] + "}"


@dataclass
class _Module:
    """One module's translation: the check type, its settings, and notes on what did not map."""

    type: str
    settings: dict[str, Any]
    notes: list[str]
    timeout: float | None


def import_blackbox(
    blackbox_text: str,
    prometheus_text: str,
    *,
    prometheus_dir: Path = Path("."),
    blackbox_source: str = "blackbox.yml",
    prometheus_source: str = "prometheus.yml",
    read_file: Callable[[Path], str] | None = None,
) -> Imported:
    """The check file for the probe targets of ``prometheus_text``'s scrape jobs, with the modules of
    ``blackbox_text``. ``prometheus_dir`` is where relative ``file_sd_configs`` paths start.

    Raises ``ConfigError`` only when a file is not YAML or not a mapping at all; anything inside
    that cannot be imported becomes a comment in the output.
    """
    read = read_file or (lambda path: path.read_text(encoding="utf-8"))
    blackbox = _mapping(blackbox_text, blackbox_source)
    prometheus = _mapping(prometheus_text, prometheus_source)
    modules = blackbox.get("modules") or {}
    if not isinstance(modules, dict):
        raise ConfigError(f"{blackbox_source}: 'modules' is not a mapping of module names to modules")
    builder = _Builder(modules, read, prometheus_dir, prometheus)
    builder.run()
    header = _header(builder, blackbox_source, prometheus_source)
    return Imported(
        header + "".join(builder.sections), builder.written, builder.skipped, dict(builder.secrets.names)
    )


def _mapping(text: str, source: str) -> dict[str, Any]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: expected a mapping at the top")
    return document


class _Builder:
    """Walks the scrape jobs, target by target, and writes a section per job and module."""

    def __init__(
        self,
        modules: dict[str, Any],
        read: Callable[[Path], str],
        base: Path,
        prometheus: dict[str, Any],
    ) -> None:
        self.modules = modules
        self.read = read
        self.base = base
        self.prometheus = prometheus
        self.secrets = _Secrets()
        self.sections: list[str] = []
        self.general: list[str] = []
        self.used_modules: set[str] = set()
        self.names: set[str] = set()
        self.seen: set[tuple[str, str, str]] = set()
        self.written = 0
        self.skipped = 0
        self._translated: dict[str, _Module | str] = {}

    def run(self) -> None:
        jobs = list(self.prometheus.get("scrape_configs") or [])
        for pattern in self.prometheus.get("scrape_config_files") or []:
            for path in self._glob(str(pattern)):
                try:
                    jobs += _mapping(self.read(path), str(path)).get("scrape_configs") or []
                except (OSError, UnicodeDecodeError, ConfigError) as exc:
                    self.general.append(f"scrape_config_files {path}: cannot be read ({_why(exc)})")
        global_ = self.prometheus.get("global") or {}
        if not jobs:
            self.general.append("no scrape_configs: there is nothing to import")
        for job in jobs:
            if not isinstance(job, dict):
                self.general.append("a scrape_configs entry that is not a mapping was left out")
                continue
            try:
                self._job(job, global_ if isinstance(global_, dict) else {})
            except Exception as exc:  # an unforeseen input is a note, never a crash
                self.general.append(f"job {job.get('job_name')!r}: left out: {_why(exc)}")
        unused = sorted(set(self.modules) - self.used_modules)
        if unused:
            self.general.append("modules no job uses (no check written): " + ", ".join(unused))

    def _glob(self, pattern: str) -> list[Path]:
        path = Path(pattern)
        full = path if path.is_absolute() else self.base / path
        return sorted(Path(p) for p in glob.glob(str(full)))

    def _job(self, job: dict[str, Any], global_: dict[str, Any]) -> None:
        name = str(job.get("job_name", ""))
        interval = _seconds(job.get("scrape_interval")) or _seconds(global_.get("scrape_interval")) or 60.0
        scrape_timeout = (
            _seconds(job.get("scrape_timeout")) or _seconds(global_.get("scrape_timeout")) or 10.0
        )
        scrape_timeout = min(scrape_timeout, interval)
        job_notes: list[str] = []
        groups = self._groups(job, job_notes)
        probes: dict[str, list[tuple[dict[str, str], list[str]]]] = {}
        relabel = job.get("relabel_configs") or []
        for group in groups:
            group_labels = {str(k): str(v) for k, v in (group.get("labels") or {}).items()}
            addresses = group.get("targets") or []
            for address in [addresses] if isinstance(addresses, str) else addresses:
                labels = _initial_labels(str(address), group_labels, job, name, interval, scrape_timeout)
                notes: list[str] = []
                result = _relabel(labels, relabel, notes)
                job_notes += [note for note in notes if note not in job_notes]  # the same for each target
                if result is None:
                    continue  # dropped by the job's relabelling, as Prometheus would
                path = result.get("__metrics_path__", "")
                if not path.rstrip("/").endswith("/probe") and "__param_target" not in result:
                    continue  # a job scraping an exporter's own metrics, not a probe
                probes.setdefault(result.get("__param_module", _DEFAULT_MODULE), []).append((result, []))
        if not probes:
            if job.get("metrics_path", "/metrics").rstrip("/").endswith("/probe") or job_notes:
                self.general.append(
                    f"job {name}: no probe target found" + ("; " + "; ".join(job_notes) if job_notes else "")
                )
            return
        for extra in ("metric_relabel_configs",):
            if job.get(extra):
                job_notes.append(
                    f"{extra}: not carried over (it renames or drops the exporter's series as "
                    "Prometheus scrapes them; apply it to the job that scrapes Vantage)"
                )
        modules = job.get("params", {}).get("module") if isinstance(job.get("params"), dict) else None
        if isinstance(modules, list) and len(modules) > 1:
            job_notes.append(
                f"params.module lists {len(modules)} modules: blackbox_exporter probes with the first "
                f"({modules[0]}), and so does this import"
            )
        for module_name, targets in probes.items():
            self._section(name, module_name, targets, job_notes, interval, scrape_timeout)

    def _groups(self, job: dict[str, Any], notes: list[str]) -> list[dict[str, Any]]:
        groups = [g for g in job.get("static_configs") or [] if isinstance(g, dict)]
        for sd in job.get("file_sd_configs") or []:
            for pattern in (sd or {}).get("files") or []:
                paths = self._glob(str(pattern))
                if not paths:
                    notes.append(f"file_sd_configs: no file matches {pattern}")
                for path in paths:
                    try:
                        text = self.read(path)
                        found = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
                    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
                        notes.append(f"file_sd_configs: {path} cannot be read ({_why(exc)})")
                        continue
                    for group in found or []:
                        if isinstance(group, dict):
                            labels = {**(group.get("labels") or {}), "__meta_filepath": str(path)}
                            groups.append({**group, "labels": labels})
        for key in sorted(job):
            if key.endswith("_sd_configs") and key != "file_sd_configs":
                notes.append(
                    f"{key}: service discovery cannot be read offline; list its targets in "
                    "static_configs or a file_sd file and import again"
                )
        return groups

    def _section(
        self,
        job: str,
        module_name: str,
        targets: list[tuple[dict[str, str], list[str]]],
        job_notes: list[str],
        interval: float,
        scrape_timeout: float,
    ) -> None:
        self.used_modules.add(module_name)
        module = self._module(module_name)
        kind = f" ({module.type})" if isinstance(module, _Module) else ""
        lines = ["", _comment(f"job {job}, module {module_name}{kind}")]
        lines += [_comment(f"- {note}") for note in job_notes]
        if isinstance(module, str):
            lines.append(_comment(f"NOT IMPORTED: {module}"))
            for labels, _ in targets:
                lines.append(_comment(f"  target {_shown_target(labels.get('__param_target', ''))}"))
                self.skipped += 1
            self.sections.append("\n".join(lines) + "\n")
            return
        lines += [_comment(f"- {note}") for note in module.notes]
        timeout = max(0.001, scrape_timeout - _SCRAPE_TIMEOUT_OFFSET)
        if module.timeout:
            timeout = min(module.timeout, timeout)
        for labels, relabel_notes in targets:
            lines += self._check(job, module_name, module, labels, relabel_notes, interval, timeout)
        self.sections.append("\n".join(lines) + "\n")

    def _module(self, name: str) -> _Module | str:
        if name not in self._translated:
            raw = self.modules.get(name)
            if raw is None:
                self._translated[name] = "no such module in the blackbox configuration"
            elif not isinstance(raw, dict):
                self._translated[name] = "the module is not a mapping"
            else:
                try:
                    self._translated[name] = _translate_module(name, raw, self.secrets)
                except _Unsupported as exc:
                    self._translated[name] = str(exc)
                except Exception as exc:  # an unforeseen module shape is a note, never a crash
                    self._translated[name] = f"the module could not be read ({_why(exc)})"
        return self._translated[name]

    def _check(
        self,
        job: str,
        module_name: str,
        module: _Module,
        labels: dict[str, str],
        notes: list[str],
        interval: float,
        timeout: float,
    ) -> list[str]:
        raw_target = labels.get("__param_target", "")
        shown = _shown_target(raw_target)
        key = (job, module_name, raw_target)
        if key in self.seen:
            return []  # Prometheus keeps one of identical targets too
        self.seen.add(key)
        notes = list(notes)
        try:
            if not raw_target:
                raise _Unsupported("no __param_target after relabelling: blackbox_exporter would refuse it")
            settings = json.loads(json.dumps(module.settings))  # a copy per check
            target = self._target(module, raw_target, settings, labels, notes, key)
        except (_Unsupported, ValueError) as exc:  # urlsplit's ValueError: a URL it cannot read
            self.skipped += 1
            return [*(_comment(f"- {n}") for n in notes), _comment(f"NOT IMPORTED: target {shown}: {exc}")]
        if module.type == "icmp":
            # blackbox_exporter waits for its one reply until the probe's timeout.
            settings["reply_timeout"] = _duration(max(timeout - _SCRAPE_TIMEOUT_OFFSET, timeout * 0.8))
        check: dict[str, Any] = {
            "name": self._name(job, module_name, target if module.type == "http" else raw_target),
            "type": module.type,
            "target": target,
            "interval": _duration(interval),
            "timeout": _duration(timeout),
        }
        check_labels = _check_labels(labels, notes)
        if check_labels:
            check["labels"] = check_labels
        if settings:
            check["settings"] = settings
        self.written += 1
        # libyaml's emitter where PyYAML has it: the pure-Python one takes ~4 ms a check.
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        body = yaml.dump(
            [check], Dumper=dumper, sort_keys=False, allow_unicode=True, width=4096, default_flow_style=False
        )
        return [
            *(_comment(f"- {n}") for n in notes),
            *("  " + line for line in body.rstrip("\n").splitlines()),
        ]

    def _target(
        self,
        module: _Module,
        target: str,
        settings: dict[str, Any],
        labels: dict[str, str],
        notes: list[str],
        key: tuple[str, str, str],
    ) -> str:
        hostname = labels.get("__param_hostname")
        if hostname and module.type != "http":
            notes.append("the hostname parameter applies to http modules only; left out")
        if module.type == "http":
            if "://" not in target:
                target = "http://" + target  # as blackbox_exporter does
            parts = urlsplit(target)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise _Unsupported("not an http:// or https:// URL")
            if hostname:
                headers = settings.setdefault("headers", {})
                set_host = [name for name in headers if name.lower() == "host"]
                if set_host and headers[set_host[0]] != _text(hostname):
                    raise _Unsupported(
                        "the module's Host header and the hostname parameter differ "
                        "(blackbox_exporter refuses the probe too)"
                    )
                headers[set_host[0] if set_host else "Host"] = _text(hostname)
            return self._url_without_secrets(target, key)
        if module.type in ("tcp", "grpc"):
            if module.type == "grpc" and target.startswith(("http://", "https://")):
                if target.startswith("https://") and not settings.get("tls"):
                    settings["tls"] = True
                    notes.append("an https:// target means TLS: tls: true")
                target = urlsplit(target).netloc
            if not _host_port(target):
                raise _Unsupported("not host:port (blackbox_exporter needs the port too)")
            return target
        if module.type == "dns":
            if not _host_port(target) and not re.fullmatch(r"[\w.-]+|[0-9a-fA-F:]+", target):
                raise _Unsupported("not a DNS server address (host, host:port or [v6]:port)")
            query = str(settings.pop("_query_name"))
            rest = dict(settings)
            settings.clear()
            settings.update({"server": target, **rest})  # the server first, as blackbox's target
            return query
        if module.type == "icmp":
            if not re.fullmatch(r"[\w.-]+|[0-9a-fA-F:]+", target):
                raise _Unsupported("not a host name or an IP address")
            return target
        raise _Unsupported(f"no target rule for {module.type}")  # pragma: no cover - every type above

    def _url_without_secrets(self, url: str, key: tuple[str, str, str]) -> str:
        """``url`` with a password or a credential-looking query value replaced by a reference."""
        parts = urlsplit(url)
        shown = _shown_target(url)
        netloc = _text(parts.netloc)
        if parts.password is not None:
            ref = self.secrets.reference(
                (*key[:2], parts.hostname or "", "password"), f"the password in {shown}"
            )
            netloc = (
                _text(quote(parts.username or "", safe=""))
                + ":"
                + ref
                + "@"
                + _text(netloc.rpartition("@")[2])
            )
        query = _text(parts.query)
        if parts.query and any(_SECRET_QUERY.search(k) for k, _ in parse_qsl(parts.query)):
            pairs = []
            for k, v in parse_qsl(parts.query, keep_blank_values=True):
                if _SECRET_QUERY.search(k) and v:
                    what = f"the query parameter {k} of {shown}"
                    v = self.secrets.reference((*key[:2], parts.hostname or "", k), what)
                else:
                    v = _text(v)
                pairs.append((_text(k), v))
            query = urlencode(pairs, safe="${}:/")
        return urlunsplit((parts.scheme, netloc, _text(parts.path), query, _text(parts.fragment)))

    def _name(self, job: str, module: str, target: str) -> str:
        """``job-module-target``, made of what the check file shows anyway: a URL's credentials
        (now references) are left out of it."""
        target = re.sub(r"//[^/@]*@", "//", _REFERENCE.sub("", target))
        name = "-".join(s for s in (_slug(job), _slug(module), _slug(target)) if s) or "check"
        digest = hashlib.sha256(f"{job}\0{module}\0{target}".encode()).hexdigest()[:8]
        if len(name) > _NAME_LIMIT:
            name = name[: _NAME_LIMIT - 9].rstrip("-.") + "-" + digest
        if name in self.names:
            name = name[: _NAME_LIMIT - 9].rstrip("-.") + "-" + digest
        base, n = name[: _NAME_LIMIT - 12], 1
        while name in self.names:  # two targets with the same digest: all but impossible
            n += 1
            name = f"{base}-{n}"
        self.names.add(name)
        return name


def _header(builder: _Builder, blackbox_source: str, prometheus_source: str) -> str:
    lines = [
        "# Vantage checks imported from blackbox_exporter by `vantage import blackbox`",
        f"#   modules: {blackbox_source}; scrape jobs: {prometheus_source}",
        f"#   {_count(builder.written, 'check')}"
        + (
            f"; {_count(builder.skipped, 'target')} not imported (see NOT IMPORTED below)"
            if builder.skipped
            else ""
        ),
        "# Lines starting with '# -' name what has no equivalent in Vantage, and why.",
    ]
    if builder.secrets.names:
        lines += [
            "#",
            "# Secrets were not copied from the blackbox file. Set these environment variables",
            "# where the agent runs (or change the reference to ${file:/path}):",
        ]
        width = max(len(n) for n in builder.secrets.names)
        lines += [f"#   {name.ljust(width)}  {what}" for name, what in builder.secrets.names.items()]
    if builder.general:
        lines += ["#", *(f"# - {note}" for note in builder.general)]
    lines = [_comment(line[2:], "") if line.startswith("# ") else line for line in lines]
    return "\n".join(lines) + "\nchecks:" + ("" if builder.written else " []") + "\n"


# ---------------------------------------------------------------------------------------------
# Prometheus: target labels and relabelling


def _initial_labels(
    address: str,
    group_labels: Mapping[str, str],
    job: dict[str, Any],
    name: str,
    interval: float,
    timeout: float,
) -> dict[str, str]:
    """A target's labels before relabelling, as Prometheus populates them."""
    labels = {**group_labels, "__address__": address}
    defaults = {
        "job": name,
        "__scrape_interval__": _duration(interval),
        "__scrape_timeout__": _duration(timeout),
        "__metrics_path__": str(job.get("metrics_path", "/metrics")),
        "__scheme__": str(job.get("scheme", "http")),
    }
    for key, value in defaults.items():
        if not labels.get(key):
            labels[key] = value
    params = job.get("params") or {}
    if isinstance(params, dict):
        for key, values in params.items():
            values = [values] if isinstance(values, str) else values
            if isinstance(values, list) and values and not labels.get(f"__param_{key}"):
                labels[f"__param_{key}"] = str(values[0])
    return labels


def _relabel(labels: dict[str, str], configs: Iterable[Any], notes: list[str]) -> dict[str, str] | None:
    """``labels`` after ``relabel_configs``, or None when a rule drops the target."""
    labels = dict(labels)
    for index, config in enumerate(configs):
        if not isinstance(config, dict):
            continue
        action = str(config.get("action", "replace")).lower()
        separator = str(config.get("separator", ";"))
        value = separator.join(labels.get(str(s), "") for s in config.get("source_labels") or [])
        try:
            regex = _anchored(str(config.get("regex", "(.*)")))
        except (re.error, _Unsupported) as exc:
            notes.append(f"relabel_configs[{index}]: regex not usable here ({exc}); rule skipped")
            continue
        target = str(config.get("target_label", ""))
        replacement = str(config.get("replacement", "$1"))
        if action == "replace":
            match = regex.match(value)
            if match is None:
                continue
            name = _expand(match, target)
            if not _LABEL_NAME.fullmatch(name):
                continue
            result = _expand(match, replacement)
            if result:
                labels[name] = result
            else:
                labels.pop(name, None)
        elif action == "keep":
            if regex.match(value) is None:
                return None
        elif action == "drop":
            if regex.match(value) is not None:
                return None
        elif action in ("keepequal", "dropequal"):
            if (value == labels.get(target, "")) != (action == "keepequal"):
                return None
        elif action in ("lowercase", "uppercase"):
            labels[target] = value.lower() if action == "lowercase" else value.upper()
        elif action == "hashmod":
            modulus = int(config.get("modulus", 1)) or 1
            digest = hashlib.md5(value.encode(), usedforsecurity=False).digest()
            labels[target] = str(int.from_bytes(digest[8:], "big") % modulus)
        elif action == "labelmap":
            for key, label_value in list(labels.items()):
                if (match := regex.match(key)) is not None:
                    labels[_expand(match, replacement)] = label_value
        elif action in ("labeldrop", "labelkeep"):
            labels = {
                k: v for k, v in labels.items() if (regex.match(k) is not None) == (action == "labelkeep")
            }
        else:
            notes.append(
                f"relabel_configs[{index}]: action {action!r} is not one Prometheus has; rule skipped"
            )
    return labels


def _anchored(pattern: str) -> re.Pattern[str]:
    """Prometheus anchors a relabelling regex at both ends (RE2 syntax, read as Python's)."""
    flags, body = re.fullmatch(r"((?:\(\?[imsU]+\))*)(.*)", pattern, re.S).groups()  # type: ignore[union-attr]
    return _compile(flags + "^(?:" + _go_regex(body) + r")\Z")


def _expand(match: re.Match[str], template: str) -> str:
    """Go's ``Regexp.Expand``: ``$1``, ``${1}``, ``$name``, ``${name}``; ``$$`` is a dollar."""

    def group(found: re.Match[str]) -> str:
        if found.group(0) == "$$":
            return "$"
        name = found.group(1) or found.group(2)
        try:
            value = match.group(int(name)) if name.isdigit() else match.group(name)
        except IndexError:
            return ""
        return value or ""

    return re.sub(r"\$(?:\$|\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))", group, template)


def _check_labels(labels: Mapping[str, str], notes: list[str]) -> dict[str, str]:
    """The target's Prometheus labels as check labels: ``job`` and ``instance``, which Vantage
    reserves for the scrape of the agent itself, as ``prometheus_job`` and ``prometheus_instance``
    (so that dashboards can be given them back, docs/migrating-from-blackbox.md); a name Vantage
    uses itself is prefixed with ``target_``; an invalid one is named in a note."""
    out = {
        "prometheus_job": labels.get("job", ""),
        "prometheus_instance": _scrub_url(labels.get("instance") or labels.get("__address__", "")),
    }
    for name, value in sorted(labels.items()):
        if name.startswith("__") or name in ("job", "instance"):
            continue
        if not _LABEL_NAME.fullmatch(name):
            notes.append(f"label {name}: not a valid label name; left out")
            continue
        if name in RESERVED_LABELS or name in out:
            notes.append(f"label {name}: Vantage uses that name itself; written as target_{name}")
            name = f"target_{name}"
        out[name] = value
    return {name: _text(value) for name, value in out.items() if value}


# ---------------------------------------------------------------------------------------------
# blackbox_exporter modules


def _translate_module(name: str, module: dict[str, Any], secrets: _Secrets) -> _Module:
    prober = str(module.get("prober", ""))
    notes: list[str] = []
    translators = {"http": _http, "tcp": _tcp, "dns": _dns, "icmp": _icmp, "grpc": _grpc}
    if prober not in translators:
        raise _Unsupported(
            f"prober {prober!r} has no equivalent (Vantage imports http, tcp, dns, icmp and grpc modules)"
            if prober
            else "the module names no prober"
        )
    timeout = _seconds(module.get("timeout"))
    for key in sorted(set(module) - {"prober", "timeout", prober}):
        if key in translators:
            notes.append(
                f"{key}: options for another prober than {prober}; blackbox_exporter ignores them too"
            )
        else:
            notes.append(f"{key}: not a blackbox_exporter module option Vantage knows; left out")
    options = module.get(prober) or {}
    if not isinstance(options, dict):
        raise _Unsupported(f"'{prober}' is not a mapping of options")
    ctx = _Context(name, notes, secrets)
    settings = translators[prober](options, ctx)
    return _Module(prober, settings, notes, timeout)


@dataclass
class _Context:
    module: str
    notes: list[str]
    secrets: _Secrets

    def secret(self, field: str, what: str) -> str:
        return self.secrets.reference((self.module, field), f"{what} of module {self.module}")

    def unknown(self, options: Mapping[str, Any], known: Iterable[str], where: str) -> None:
        for key in sorted(set(options) - set(known)):
            self.notes.append(f"{where}{key}: not a blackbox_exporter option Vantage knows; left out")

    def regex(self, pattern: Any, where: str) -> str | None:
        """A Go regular expression as Python's ``re`` reads it, or None (with a note) when it cannot be."""
        try:
            translated = _go_regex(str(pattern))
            _compile(translated)
        except (re.error, _Unsupported) as exc:
            self.notes.append(
                f"{where}: the regular expression cannot be read by Python's re ({_why(exc)}); left out"
            )
            return None
        return _text(translated)


def _ip(options: Mapping[str, Any], settings: dict[str, Any], ctx: _Context) -> None:
    protocol = str(options.get("preferred_ip_protocol", "")).lower()
    if protocol not in _IP_FAMILIES:
        ctx.notes.append(
            f"preferred_ip_protocol {protocol!r} is not ip4 or ip6; blackbox_exporter's ip6 kept"
        )
        protocol = ""
    settings["ip_family"] = _IP_FAMILIES[protocol]
    settings["ip_fallback"] = bool(options.get("ip_protocol_fallback", True))


def _tls(config: Any, ctx: _Context, where: str) -> dict[str, Any]:
    if not isinstance(config, dict):
        return {}
    out: dict[str, Any] = {}
    for key in ("ca_file", "cert_file", "key_file", "server_name"):
        if config.get(key):
            out[key] = _text(str(config[key]))
    if config.get("insecure_skip_verify"):
        out["insecure"] = True
    if config.get("min_version"):
        version = _TLS_VERSIONS.get(str(config["min_version"]).upper())
        if version:
            out["min_version"] = version
        else:
            ctx.notes.append(f"{where}.min_version: not TLS10 to TLS13; left out")
    if config.get("max_version"):
        ctx.notes.append(f"{where}.max_version: no equivalent (Vantage never caps the TLS version); left out")
    for key, file_key in (("ca", "ca_file"), ("cert", "cert_file"), ("key", "key_file")):
        if config.get(key):
            ctx.notes.append(
                f"{where}.{key}: inline PEM is not copied; write it to a file and set {file_key}"
            )
    ctx.unknown(
        config,
        (
            "ca_file",
            "cert_file",
            "key_file",
            "server_name",
            "insecure_skip_verify",
            "min_version",
            "max_version",
            "ca",
            "cert",
            "key",
        ),
        f"{where}.",
    )
    return out


_HTTP_OPTIONS = {
    "valid_status_codes",
    "valid_http_versions",
    "preferred_ip_protocol",
    "ip_protocol_fallback",
    "skip_resolve_phase_with_proxy",
    "no_follow_redirects",
    "follow_redirects",
    "fail_if_ssl",
    "fail_if_not_ssl",
    "method",
    "headers",
    "fail_if_body_matches_regexp",
    "fail_if_body_not_matches_regexp",
    "fail_if_body_json_matches_cel",
    "fail_if_body_json_not_matches_cel",
    "fail_if_header_matches",
    "fail_if_header_not_matches",
    "body",
    "body_file",
    "compression",
    "body_size_limit",
    "accept_any_response",
    "basic_auth",
    "authorization",
    "oauth2",
    "bearer_token",
    "bearer_token_file",
    "tls_config",
    "proxy_url",
    "no_proxy",
    "proxy_from_environment",
    "proxy_connect_header",
    "enable_http2",
    "enable_http1",
    "http_headers",
}


def _http(options: Mapping[str, Any], ctx: _Context) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    assertions: list[dict[str, Any]] = []
    method = str(options.get("method") or "GET").upper()
    if method != "GET":
        settings["method"] = method
    headers = _headers(options.get("headers"), ctx)
    if headers:
        settings["headers"] = headers
    if options.get("body"):
        settings["body"] = _text(str(options["body"]))
    elif options.get("body_file"):
        ctx.notes.append(
            "body_file: Vantage takes the body inline (body:); read the file into the check "
            f"({options['body_file']})"
        )
    follow = options.get("follow_redirects", True)
    if options.get("no_follow_redirects") is not None:
        follow = not options["no_follow_redirects"]
    if not follow:
        settings["follow_redirects"] = False
    _ip(options, settings, ctx)
    tls = _tls(options.get("tls_config"), ctx, "tls_config")
    if tls:
        settings["tls"] = tls
    auth = _http_auth(options, ctx)
    if auth is not None:
        settings["auth"] = auth
    if options.get("proxy_url"):
        settings["proxy_url"] = _proxy_url(str(options["proxy_url"]), ctx)
        if options.get("skip_resolve_phase_with_proxy"):
            settings["proxy_skip_resolve"] = True
    for key, why in (
        ("no_proxy", "a check names its own proxy or none"),
        ("proxy_from_environment", "Vantage never takes a proxy from the environment; set proxy_url"),
        ("proxy_connect_header", "no headers for the proxy's CONNECT (values not copied)"),
        ("http_headers", "set the headers under headers: (values not copied)"),
        ("enable_http1", "Vantage's client speaks HTTP/1.1 where HTTP/2 is not offered"),
    ):
        if options.get(key):
            ctx.notes.append(f"{key}: no equivalent ({why}); left out")
    if options.get("enable_http2") is False:
        ctx.notes.append(
            "enable_http2: false has no equivalent (HTTP/2 is used when the server offers it); "
            "valid_http_versions can require HTTP/1.1"
        )
    if options.get("valid_http_versions"):
        settings["valid_http_versions"] = [str(v) for v in options["valid_http_versions"]]
    if options.get("compression"):
        settings["compression"] = str(options["compression"]).lower()
    for key in ("fail_if_ssl", "fail_if_not_ssl"):
        if options.get(key):
            settings[key] = True
    if options.get("body_size_limit"):
        size = _bytes(options["body_size_limit"])
        if size is None:
            ctx.notes.append("body_size_limit: not a size; left out")
        elif size > 0:
            settings["fail_if_body_over"] = size
    codes = options.get("valid_status_codes") or []
    if options.get("accept_any_response"):
        assertions.append({"source": "status", "op": "ge", "value": 100})
    elif codes:
        assertions.append({"source": "status", "op": "in", "value": [int(c) for c in codes]})
    for key, op in (
        ("fail_if_body_matches_regexp", "not_matches"),
        ("fail_if_body_not_matches_regexp", "matches"),
    ):
        for i, pattern in enumerate(options.get(key) or []):
            regex = ctx.regex(pattern, f"{key}[{i}]")
            if regex is not None:
                assertions.append({"source": "body", "op": op, "value": regex})
    if "fail_if_body_over" not in settings and any(a["source"] == "body" for a in assertions):
        # blackbox_exporter matches its regexes against the whole body (up to body_size_limit,
        # which fail_if_body_over reads up to): the default max_body of 1 MiB would cut a larger
        # one short of a match. 64 MiB, not max_body's largest (1 GiB): a run may hold twice what it
        # reads, and a compressed bomb decodes to the cap; nothing bounds blackbox.
        settings["max_body"] = _MAX_BODY
    for key, op in (("fail_if_header_matches", "not_matches"), ("fail_if_header_not_matches", "matches")):
        for i, spec in enumerate(options.get(key) or []):
            if not isinstance(spec, dict) or not spec.get("header"):
                ctx.notes.append(f"{key}[{i}]: needs header and regexp; left out")
                continue
            regex = ctx.regex(spec.get("regexp", ""), f"{key}[{i}]")
            if regex is None:
                continue
            rule: dict[str, Any] = {
                "source": "header",
                "name": _text(str(spec["header"])),
                "op": op,
                "value": regex,
            }
            if spec.get("allow_missing"):
                rule["allow_missing"] = True
            assertions.append(rule)
    for key in ("fail_if_body_json_matches_cel", "fail_if_body_json_not_matches_cel"):
        if options.get(key):
            ctx.notes.append(
                f"{key}: no equivalent (Vantage has no CEL); write body assertions with a JSONPath "
                '(assert: [{source: body, path: "$.foo", op: eq, value: bar}])'
            )
    if assertions:
        settings["assert"] = assertions
    ctx.unknown(options, _HTTP_OPTIONS, "")
    return settings


def _headers(raw: Any, ctx: _Context) -> dict[str, str]:
    if not isinstance(raw, dict):
        return {}
    out: dict[str, str] = {}
    for name, value in raw.items():
        name, value = str(name), "" if value is None else str(value)
        if sensitive_header(name) and value:  # a credential: a reference, never copied
            scheme, _, credential = value.partition(" ")
            ref = ctx.secret(f"header_{name}", f"the {name} header")
            if name.lower() in ("authorization", "proxy-authorization") and credential:
                out[name] = f"{scheme} {ref}"  # the scheme is not secret; the credential is
            else:
                out[name] = ref
        else:
            out[name] = _text(value)
    return out


def _http_auth(options: Mapping[str, Any], ctx: _Context) -> dict[str, Any] | None:
    basic = options.get("basic_auth")
    if isinstance(basic, dict):
        username = basic.get("username") or ""
        if basic.get("username_file"):
            username = "${file:" + str(basic["username_file"]) + "}"
        if basic.get("password_file"):
            password = "${file:" + str(basic["password_file"]) + "}"
        elif basic.get("password"):
            password = ctx.secret("password", "basic_auth.password")
        else:
            password = ""
        return {"type": "basic", "username": _text(str(username), keep_refs=True), "password": password}
    authorization = options.get("authorization")
    if isinstance(authorization, dict):
        kind = str(authorization.get("type") or "Bearer")
        if authorization.get("credentials_file"):
            credential = "${file:" + str(authorization["credentials_file"]) + "}"
        elif authorization.get("credentials"):
            credential = ctx.secret("credentials", "authorization.credentials")
        else:
            credential = ""
        if kind.lower() == "bearer":
            return {"type": "bearer", "token": credential}
        ctx.notes.append(f"authorization type {kind}: sent as the Authorization header")
        return {"type": "api_key", "name": "Authorization", "value": f"{kind} {credential}", "in": "header"}
    if options.get("bearer_token_file"):
        return {"type": "bearer", "token": "${file:" + str(options["bearer_token_file"]) + "}"}
    if options.get("bearer_token"):
        return {"type": "bearer", "token": ctx.secret("bearer_token", "bearer_token")}
    oauth = options.get("oauth2")
    if isinstance(oauth, dict):
        if oauth.get("client_secret_file"):
            secret = "${file:" + str(oauth["client_secret_file"]) + "}"
        else:
            secret = ctx.secret("oauth2_client_secret", "oauth2.client_secret")
        out: dict[str, Any] = {
            "type": "oauth2_client_credentials",
            "token_url": _text(str(oauth.get("token_url", ""))),
            "client_id": _text(str(oauth.get("client_id", ""))),
            "client_secret": secret,
        }
        if oauth.get("scopes"):
            out["scopes"] = [_text(str(s)) for s in oauth["scopes"]]
        params = {str(k): str(v) for k, v in (oauth.get("endpoint_params") or {}).items()}
        params.pop("grant_type", None)  # client_credentials: the only grant Vantage asks for
        if "audience" in params:
            out["audience"] = _text(params.pop("audience"))
        if params:
            # A parameter named like a credential (password, client_assertion, ...) is moved to a
            # variable as the client secret is, never copied.
            out["extra"] = {
                k: ctx.secret(f"oauth2_param_{k}", f"oauth2.endpoint_params.{k}")
                if _SECRET_PARAM.search(k)
                else _text(v)
                for k, v in params.items()
            }
        for key in sorted(
            set(oauth)
            - {"client_id", "client_secret", "client_secret_file", "scopes", "token_url", "endpoint_params"}
        ):
            ctx.notes.append(f"oauth2.{key}: no equivalent for the token request; left out")
        return out
    return None


def _proxy_url(url: str, ctx: _Context) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return _text(url)
    ref = ctx.secret("proxy_password", "the proxy_url password")
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(
        (parts.scheme, f"{quote(parts.username or '', safe='')}:{ref}@{host}", parts.path, parts.query, "")
    )


def _tcp(options: Mapping[str, Any], ctx: _Context) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    _ip(options, settings, ctx)
    if options.get("source_ip_address"):
        settings["source_ip_address"] = str(options["source_ip_address"])
    if options.get("tls"):
        settings["tls"] = True
    tls = _tls(options.get("tls_config"), ctx, "tls_config")
    if tls:
        settings["tls_options"] = tls
    dialogue: list[dict[str, Any]] = []
    for i, turn in enumerate(options.get("query_response") or []):
        if not isinstance(turn, dict):
            ctx.notes.append(f"query_response[{i}]: not a mapping; left out")
            continue
        if turn.get("expect"):
            regex = ctx.regex(turn["expect"], f"query_response[{i}].expect")
            if regex is None:
                regex = ".*"  # keeps the turn, so that the dialogue still waits for a line there
                ctx.notes.append(f"query_response[{i}].expect: replaced by '.*' (waits for any line)")
            dialogue.append({"expect": regex})
        if turn.get("send") not in (None, ""):
            send = str(turn["send"])
            if not turn.get("expect") and dialogue and "expect" in dialogue[-1]:
                # Vantage expands a send right after an expect; blackbox only the send of the
                # expect's own turn, so this one's dollars are literal.
                send = send.replace("$", "$$")
            dialogue.append({"send": _text(send) + "\n"})  # blackbox_exporter ends each send with \n
        if turn.get("starttls"):
            dialogue.append({"starttls": True})
        if turn.get("labels"):
            ctx.notes.append(
                f"query_response[{i}].labels: no equivalent (probe_expect_info is not exported); left out"
            )
        ctx.unknown(turn, ("expect", "send", "starttls", "labels"), f"query_response[{i}].")
    if dialogue:
        settings["dialogue"] = dialogue
    ctx.unknown(
        options,
        (
            "preferred_ip_protocol",
            "ip_protocol_fallback",
            "source_ip_address",
            "tls",
            "tls_config",
            "query_response",
        ),
        "",
    )
    return settings


_RRS_RULES = (
    ("fail_if_matches_regexp", "not_matches"),
    ("fail_if_not_matches_regexp", "matches"),
    ("fail_if_none_matches_regexp", "contains"),
    ("fail_if_all_match_regexp", "all_match"),
)


def _dns(options: Mapping[str, Any], ctx: _Context) -> dict[str, Any]:
    query = str(options.get("query_name") or "")
    if not query:
        raise _Unsupported("the dns module has no query_name (blackbox_exporter refuses it too)")
    settings: dict[str, Any] = {"_query_name": _text(query)}
    query_type = str(options.get("query_type") or "ANY").upper()  # blackbox's default: ANY
    if not re.fullmatch(r"[A-Z][A-Z0-9-]*", query_type):
        raise _Unsupported(f"query_type {query_type!r} is not a record type")
    settings["type"] = query_type
    query_class = str(options.get("query_class") or "IN").upper()
    if query_class != "IN":
        settings["query_class"] = query_class
    transport = str(options.get("transport_protocol") or "udp").lower()
    if options.get("dns_over_tls"):
        settings["transport"] = "tls"
        tls = _tls(options.get("tls_config"), ctx, "tls_config")
        if tls:
            settings["tls_options"] = tls
    elif transport == "tcp":
        settings["transport"] = "tcp"
    elif transport != "udp":
        ctx.notes.append(f"transport_protocol {transport!r}: not udp or tcp; udp kept")
    _ip(options, settings, ctx)
    if options.get("source_ip_address"):
        settings["source_ip_address"] = str(options["source_ip_address"])
    if options.get("valid_rcodes"):
        settings["valid_rcodes"] = [str(code).upper() for code in options["valid_rcodes"]]
    if options.get("recursion_desired") is False:
        settings["recursion"] = False
    for section, key in (
        ("answers", "validate_answer_rrs"),
        ("authority", "validate_authority_rrs"),
        ("additional", "validate_additional_rrs"),
    ):
        validator = options.get(key) or {}
        if not isinstance(validator, dict):
            continue
        rules: list[dict[str, Any]] = []
        for name, op in _RRS_RULES:
            regexes = [
                regex
                for i, pattern in enumerate(validator.get(name) or [])
                if (regex := ctx.regex(pattern, f"{key}.{name}[{i}]")) is not None
            ]
            if name == "fail_if_none_matches_regexp" and len(regexes) > 1:
                # It passes when any one of its regexes is found: one rule, one value joining them.
                regexes = ["|".join(f"(?:{regex})" for regex in regexes)]
            # One rule per regex; blackbox matches the whole record text (owner, TTL, class,
            # type, data), hence match_on: record.
            rules += [{"op": op, "value": regex, "match_on": "record"} for regex in regexes]
        ctx.unknown(validator, [n for n, _ in _RRS_RULES], f"{key}.")
        if rules:
            settings[section] = rules
    ctx.unknown(
        options,
        (
            "preferred_ip_protocol",
            "ip_protocol_fallback",
            "dns_over_tls",
            "tls_config",
            "source_ip_address",
            "transport_protocol",
            "query_class",
            "query_name",
            "query_type",
            "recursion_desired",
            "valid_rcodes",
            "validate_answer_rrs",
            "validate_authority_rrs",
            "validate_additional_rrs",
        ),
        "",
    )
    return settings


def _icmp(options: Mapping[str, Any], ctx: _Context) -> dict[str, Any]:
    # blackbox_exporter sends one echo request and waits for its reply until the timeout.
    settings: dict[str, Any] = {"count": 1}
    _ip(options, settings, ctx)
    if options.get("source_ip_address"):
        settings["source_ip_address"] = str(options["source_ip_address"])
    if options.get("payload_size"):
        settings["payload_size"] = int(options["payload_size"])
    if options.get("dont_fragment"):
        settings["dont_fragment"] = True
    ttl = options.get("ttl")
    if ttl not in (None, 0, 64):  # 64 is blackbox_exporter's default, and the system's
        settings["ttl"] = int(ttl)
    ctx.unknown(
        options,
        (
            "preferred_ip_protocol",
            "ip_protocol_fallback",
            "source_ip_address",
            "payload_size",
            "dont_fragment",
            "ttl",
        ),
        "",
    )
    return settings


def _grpc(options: Mapping[str, Any], ctx: _Context) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if options.get("service"):
        settings["service"] = _text(str(options["service"]))
    if options.get("tls"):
        settings["tls"] = True
    tls = _tls(options.get("tls_config"), ctx, "tls_config")
    if tls:
        settings["tls_options"] = tls
    _ip(options, settings, ctx)
    ctx.unknown(
        options, ("service", "tls", "tls_config", "preferred_ip_protocol", "ip_protocol_fallback"), ""
    )
    return settings


# ---------------------------------------------------------------------------------------------
# Small translations


def _text(value: str, *, keep_refs: bool = False) -> str:
    """Text copied from the input, with anything that reads as a Vantage secret reference escaped
    (``${NAME}`` → ``$${NAME}``) so that it stays the literal text it was; ``keep_refs`` leaves the
    references this import wrote itself."""
    if keep_refs:
        return value
    return _REFERENCE.sub(r"$$\1", value)


def _go_regex(pattern: str) -> str:
    """An RE2 pattern in Python's ``re`` spelling: POSIX classes in brackets, ``\\z``."""
    if "[:^" in pattern or "\\p" in pattern or "\\P" in pattern or "\\Q" in pattern:
        raise _Unsupported("negated POSIX classes, \\p and \\Q have no spelling in Python's re")

    def posix(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in _POSIX_CLASSES:
            raise _Unsupported(f"unknown class [:{name}:]")
        return _POSIX_CLASSES[name]

    pattern = re.sub(r"\[:([a-z]+):\]", posix, pattern)
    return re.sub(r"(?<!\\)((?:\\\\)*)\\z", r"\1\\Z", pattern)


def _compile(pattern: str) -> re.Pattern[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "possible nested set" and the like: a pattern read wrongly
        try:
            return re.compile(pattern)
        except (FutureWarning, DeprecationWarning) as exc:
            raise re.error(str(exc)) from None


def _seconds(value: Any) -> float | None:
    """Seconds from a Go or Prometheus duration (``5s``, ``1m30s``, ``1d``), or None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value > 0 else None  # Go's yaml reads a bare number as nanoseconds
    text, pos, total = str(value).strip(), 0, 0.0
    for match in _GO_DURATION.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return total if text and pos == len(text) and total > 0 else None


def _duration(seconds: float) -> str:
    """Seconds written as Vantage reads them back exactly (``4.5s``, ``1m``, ``250ms``)."""
    millis = round(seconds * 1000)
    if millis % 1000:
        return f"{millis}ms" if millis < 1000 else f"{millis / 1000:g}s"
    whole = millis // 1000
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return (
        (f"{hours}h" if hours else "")
        + (f"{minutes}m" if minutes else "")
        + (f"{secs}s" if secs or not whole else "")
    )


def _bytes(value: Any) -> int | None:
    """blackbox_exporter's ``units.Base2Bytes``: ``1MB`` is 1 MiB."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.fullmatch(r"\s*(\d+)\s*([KMGTPE]?)(?:i?B)?\s*", str(value), re.I)
    if match is None:
        return None
    power = " KMGTPE".index(match.group(2).upper() or " ")
    return int(match.group(1)) << (10 * power)


def _host_port(target: str) -> bool:
    if target.startswith("["):
        return bool(re.fullmatch(r"\[[0-9a-fA-F:.%\w]+\]:\d{1,5}", target))
    host, sep, port = target.rpartition(":")
    return bool(sep and host and ":" not in host and port.isdigit() and 0 < int(port) < 65536)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.")


def _shown_target(target: str) -> str:
    """A target as a comment may show it: without a password or query string."""
    try:
        parts = urlsplit(target if "://" in target else "//" + target)
    except ValueError:
        return "(unreadable)"
    netloc = parts.netloc.rpartition("@")[2]
    shown = (f"{parts.scheme}://" if parts.scheme else "") + netloc + parts.path
    return _text(shown + ("?…" if parts.query else ""))


def _scrub_url(value: str) -> str:
    """A URL without its password and without the values of credential-looking query parameters
    (the instance label of a target that carried them)."""
    if "://" not in value:
        return value
    try:
        parts = urlsplit(value)
        netloc = parts.netloc.rpartition("@")[2] if parts.password is not None else parts.netloc
        pairs = [
            (k, "" if _SECRET_QUERY.search(k) else v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        ]
    except ValueError:
        return _shown_target(value)
    query = urlencode(pairs) if any(_SECRET_QUERY.search(k) for k, _ in pairs) else parts.query
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _comment(text: str, indent: str = "  ") -> str:
    """A YAML comment line: a line break in what it quotes (a module name, a key) would end the
    comment and start YAML of the input's making, so control characters are shown as ``?``."""
    return f"{indent}# " + re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]", "?", text)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _why(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
