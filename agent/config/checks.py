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
import sys
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


_TRIM_ABOVE = 256 * 1024  # characters of a document after which the C heap is trimmed


def _trim() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``): a large
    document's parse leaves megabytes of them between blocks still in use, which the allocator
    would otherwise keep as the process's RSS (8 MiB for 10,000 checks). Nothing elsewhere."""
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols: libc's where it is glibc
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        pass


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
    defaults, raws = _read_document(text, source)
    errors: list[str] = []
    entries: list[CheckEntry] = []
    seen: dict[str, int] = {}
    settings: dict[tuple[str, str], BaseModel] = {}
    shared = _Shared()
    for index in range(len(raws)):
        # Each raw check is let go of once read, so that the next check's objects take the
        # memory it leaves rather than new memory (the whole document would otherwise die at the
        # end, leaving holes between the checks that stay).
        raw, raws[index] = raws[index], None
        where = f"check {raw.get('name')!r} (checks[{index}])" if "name" in raw else f"checks[{index}]"
        try:
            # In this order: the check's own fields, its name, then what its probe type says.
            check = shared.check(_validate_check(_with_defaults(raw, defaults), resolver, source, where))
            _claim_name(check, index, seen, source, where)
            entries.append(_bind_probe(check, load_probe, source, where, settings))
        except _Rejected as exc:
            errors.append(str(exc))
    if errors:
        raise ConfigError("\n".join(errors))
    if len(text) >= _TRIM_ABOVE:
        _trim()
    return entries


def _read_document(text: str, source: str) -> tuple[Defaults, list[Any]]:
    """The document's ``defaults`` and raw ``checks``; a bare list is a list of checks."""
    if text.lstrip().startswith("{"):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}: not valid YAML or JSON: {exc}") from None
    else:
        document = _load_yaml(text, source)
    if document is None:
        document = {}
    if isinstance(document, list):
        document = {"checks": document}
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: expected a mapping with 'checks' (and optional 'defaults')")
    try:
        parsed = _CheckFile.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
    # The document's own list, now known to be a list of mappings: the model's copy of it goes.
    checks = document.get("checks")
    return parsed.defaults, checks if isinstance(checks, list) else []


def _load_yaml(text: str, source: str) -> Any:
    """The YAML document, in memory of its own.

    YAML's loader builds a node for every scalar, key and collection (and two position marks for
    each) before the document's objects, which end up scattered among those nodes' freed memory:
    for 10,000 checks, 4 MiB of document held some 60 MiB of the allocator's arenas, which the
    process then keeps as its RSS. A copy made once the original is gone lies packed; pickle, a
    C round trip through one buffer, copies every type YAML's safe loader makes. (The loaded
    document has no other reference when it is dropped here: that is what frees its memory.)"""
    import pickle

    import yaml  # a JSON document (an inline VANTAGE_CHECKS) is read without either

    try:
        # libyaml's safe loader where PyYAML has it: the pure-Python one peaks at some 60 MiB
        # more for 10,000 checks (its node graph).
        buffer = pickle.dumps(
            yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)), pickle.HIGHEST_PROTOCOL
        )
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML or JSON: {exc}") from None
    return pickle.loads(buffer)


class _Shared:
    """Parts of ``Check`` objects that many checks have alike, kept once.

    A validated ``Check`` holds a set of the names of its fields that were set (some 730 bytes),
    its own copies of the ``labels`` and ``settings`` mappings, and the strings it was given;
    with thousands of checks most of these are equal. Equal ones become one object: the model is
    frozen and nothing changes them (``settings`` is read once, to parse the probe's settings).
    """

    def __init__(self) -> None:
        self._sets: dict[frozenset[str], set[str]] = {}
        self._mappings: dict[str, dict[str, Any]] = {}

    def check(self, check: Check) -> Check:
        fields = vars(check)
        for name in ("type", "target"):
            value = fields[name]
            if value.__class__ is str:
                fields[name] = sys.intern(value)
        for name in ("labels", "settings"):
            fields[name] = self._mapping(fields[name])
        names = check.model_fields_set
        shared = self._sets.setdefault(frozenset(names), names)
        if shared is not names:
            object.__setattr__(check, "__pydantic_fields_set__", shared)
        return check

    def _mapping(self, value: dict[str, Any]) -> dict[str, Any]:
        try:
            key = json.dumps(value)
        except (TypeError, ValueError):
            return value
        return self._mappings.setdefault(key, value)


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
