"""Checks: the configuration of what to probe, loaded from YAML or JSON.

A check file has optional ``defaults`` and a list of ``checks``::

    defaults: {interval: 60s, timeout: 10s, labels: {team: payments}}
    checks:
      - name: stripe-charges
        type: http
        target: https://api.stripe.com/v1/charges?limit=1
        settings: {headers: {Authorization: "Bearer ${STRIPE_API_KEY}"}}

Each check's ``settings`` block is validated by the ``Settings`` model of its probe type.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.config.secrets import SecretResolver
from agent.errors import ConfigError, PluginError
from agent.sdk.durations import Duration, parse_duration
from agent.sdk.types import DEFAULT_TIMEOUT, Check, check_labels

if TYPE_CHECKING:
    from agent.sdk.probe import Probe

__all__ = ["CheckEntry", "format_validation_error", "parse_checks"]


class Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    interval: Duration | None = None
    timeout: Duration | None = None
    regions: tuple[str, ...] | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    _labels = field_validator("labels")(check_labels)


@dataclass(frozen=True, slots=True)
class CheckEntry:
    """A check with its probe and its parsed settings: what the scheduler runs."""

    check: Check
    probe: Probe[Any]
    settings: BaseModel


class _CheckFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: Defaults = Field(default_factory=Defaults)
    checks: list[dict[str, Any]] = Field(default_factory=list)


class _Rejected(Exception):
    """One check's problem, worded for the operator: that check is left out, the others go on."""


def parse_checks(
    text: str,
    *,
    source: str,
    resolver: SecretResolver,
    load_probe: Callable[[str], Probe[Any]],
) -> list[CheckEntry]:
    """Parse a check document into entries, or raise one ConfigError listing every problem."""
    parsed = _read_document(text, source)
    errors: list[str] = []
    entries: list[CheckEntry] = []
    seen: dict[str, int] = {}
    settings: dict[tuple[str, str], BaseModel] = {}
    for index, raw in enumerate(parsed.checks):
        where = f"check {raw.get('name')!r} (checks[{index}])" if "name" in raw else f"checks[{index}]"
        try:
            # In this order: the check's own fields, its name, then what its probe type says.
            check = _validate_check(_with_defaults(raw, parsed.defaults), resolver, source, where)
            _claim_name(check, index, seen, source, where)
            entries.append(_bind_probe(check, load_probe, source, where, settings))
        except _Rejected as exc:
            errors.append(str(exc))
    if errors:
        raise ConfigError("\n".join(errors))
    return entries


def _read_document(text: str, source: str) -> _CheckFile:
    """The document's ``defaults`` and raw ``checks``; a bare list is a list of checks."""
    if text.lstrip().startswith("{"):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}: not valid YAML or JSON: {exc}") from None
    else:
        import yaml  # a JSON document (an inline VANTAGE_CHECKS) is read without it

        try:
            # libyaml's safe loader where PyYAML has it: the pure-Python one peaks at some 60 MiB
            # more for 10,000 checks (its node graph), memory the process keeps as its RSS.
            document = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML or JSON: {exc}") from None
    if document is None:
        document = {}
    if isinstance(document, list):
        document = {"checks": document}
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: expected a mapping with 'checks' (and optional 'defaults')")
    try:
        return _CheckFile.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def _with_defaults(raw: dict[str, Any], defaults: Defaults) -> dict[str, Any]:
    """The raw check with the file's defaults filled in (labels merged, the check's winning)."""
    merged = dict(raw)
    merged.setdefault("labels", {})
    if isinstance(merged["labels"], dict):
        merged["labels"] = {**defaults.labels, **merged["labels"]}
    for key in ("interval", "timeout", "regions"):
        if key not in merged and getattr(defaults, key) is not None:
            merged[key] = getattr(defaults, key)
    if "timeout" not in merged and "interval" in merged:
        # An unset timeout stays below a short interval rather than tripping the rule.
        try:
            merged["timeout"] = min(DEFAULT_TIMEOUT, parse_duration(merged["interval"]) * 0.8)
        except ValueError:
            pass
    return merged


def _validate_check(merged: dict[str, Any], resolver: SecretResolver, source: str, where: str) -> Check:
    """Secret references resolved, then the check's own fields validated."""
    try:
        resolved = resolver.resolve_tree(merged)
    except LookupError as exc:
        raise _Rejected(f"{source}: {where}, field {exc}") from None
    try:
        return Check.model_validate(resolved)
    except ValidationError as exc:
        raise _Rejected(format_validation_error(exc, source, where)) from None


def _claim_name(check: Check, index: int, seen: dict[str, int], source: str, where: str) -> None:
    """Record the check's name, refusing a name an earlier check already has."""
    if check.name in seen:
        raise _Rejected(
            f"{source}: {where}: the name {check.name!r} is already used by checks[{seen[check.name]}]"
        )
    seen[check.name] = index


def _settings_key(check: Check) -> tuple[str, str] | None:
    """What tells a check's settings apart from another's of the same type (in the order they
    were written, as a header's order is kept), or ``None`` when they cannot be compared (a
    value that is not JSON)."""
    try:
        return check.type, json.dumps(check.settings)
    except (TypeError, ValueError):
        return None


def _bind_probe(
    check: Check,
    load_probe: Callable[[str], Probe[Any]],
    source: str,
    where: str,
    parsed: dict[tuple[str, str], BaseModel],
) -> CheckEntry:
    """The check's probe type loaded, its target accepted and its settings parsed by that type.

    Checks of one type with the same settings share one (immutable) ``Settings`` object, kept in
    ``parsed``: with thousands of checks most have the same few settings blocks, and a parsed
    block costs a few kilobytes.
    """
    try:
        probe = load_probe(check.type)
    except (ConfigError, PluginError) as exc:
        raise _Rejected(f"{source}: {where}, field 'type': {exc}") from None
    try:
        probe.validate_target(check.target)
    except ValueError as exc:
        raise _Rejected(f"{source}: {where}, field 'target': {exc}") from None
    key = _settings_key(check)
    known = parsed.get(key) if key is not None else None
    if known is not None:
        return CheckEntry(check, probe, known)
    try:
        settings = probe.Settings.model_validate(check.settings)
    except ValidationError as exc:
        raise _Rejected(format_validation_error(exc, source, where, prefix="settings")) from None
    except (ValueError, TypeError) as exc:
        raise _Rejected(f"{source}: {where}, field 'settings': {exc}") from None
    if key is not None:
        parsed[key] = settings
    return CheckEntry(check, probe, settings)


def format_validation_error(exc: ValidationError, source: str, where: str = "", *, prefix: str = "") -> str:
    """One line per pydantic error, naming the source, the check and the field; never the input."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(part) for part in (prefix, *error["loc"]) if part != "")
        message = error["msg"].removeprefix("Value error, ")
        field = f"field '{loc}'" if loc else "check"
        head = f"{source}: {where}, " if where else f"{source}: "
        lines.append(f"{head}{field}: {message}")
    return "\n".join(lines)
