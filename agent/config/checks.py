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

import dataclasses
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.config._explain import Problem, did_you_mean, explain, field_path
from agent.config.maintenance import FileWindow, ParsedWindows, Window, parse_windows
from agent.config.secrets import SecretResolver, has_reference
from agent.errors import ConfigError, PluginError
from agent.sdk.durations import Duration, format_duration, parse_duration
from agent.sdk.types import (
    CONFIRMATION_FIELDS,
    DEFAULT_CONFIRMATION,
    DEFAULT_INTERVAL,
    DEFAULT_RETRY_DELAY,
    DEFAULT_TIMEOUT,
    MAX_RETRIES,
    Check,
    Confirmation,
    check_labels,
)

if TYPE_CHECKING:
    from agent.sdk.probe import Probe

__all__ = ["CheckEntry", "format_validation_error", "parse_checks"]


class Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    interval: Duration | None = None
    timeout: Duration | None = None
    regions: tuple[str, ...] | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    # Confirmation (a check's own value wins; each is checked against the check's interval there).
    retries: int | None = Field(default=None, ge=0, le=MAX_RETRIES)
    retry_delay: Duration | None = None
    failure_threshold: int | None = Field(default=None, ge=1, le=100)
    success_threshold: int | None = Field(default=None, ge=1, le=100)
    flap_threshold: int | None = Field(default=None, ge=1, le=1000)
    down_interval: Duration | None = None

    _labels = field_validator("labels")(check_labels)


_DEFAULTED = (
    "interval",
    "timeout",
    "regions",
    "retries",
    "retry_delay",
    "failure_threshold",
    "success_threshold",
    "flap_threshold",
    "down_interval",
)
"""The fields of ``defaults`` a check takes when it does not set them (``labels`` are merged)."""


@dataclass(frozen=True, slots=True)
class CheckEntry:
    """A check with its probe and its parsed settings: what the scheduler runs."""

    check: Check
    probe: Probe[Any]
    settings: BaseModel
    maintenance: tuple[Window, ...] = ()
    """The check's maintenance windows: its own, then the check file's that select it."""


class _CheckFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: Defaults = Field(default_factory=Defaults)
    checks: list[dict[str, Any]] = Field(default_factory=list)
    maintenance: list[FileWindow] = Field(default_factory=list)


Progress = Callable[[int, int], None]
"""Told ``(0, total)`` once a large check set is read, then ``(done, total)`` as it is validated."""


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


def parse_checks(
    text: str,
    *,
    source: str,
    resolver: SecretResolver,
    load_probe: Callable[[str], Probe[Any]],
    probe_types: Sequence[str] = (),
    offline: bool = False,
    locate: bool = False,
    progress: Progress | None = None,
) -> list[CheckEntry]:
    """Parse a check document into entries, or raise one ConfigError listing every problem.

    Every problem of a check is reported, its settings' included, in the user's words.
    ``offline``: secret references are checked for their form but not resolved, and files that
    settings name need not exist (``vantage validate --offline``, in CI). ``locate``: the text is
    a file, and each problem names its line. ``probe_types`` are the installed types, for a
    "did you mean" when a check names another.
    """
    lines = _Lines(text) if locate else None
    defaults, raws, file_windows = _read_document(text, source, lines, resolver)
    errors: list[str] = []
    entries: list[CheckEntry] = []
    seen: dict[str, int] = {}
    settings: dict[tuple[str, str], BaseModel] = {}
    shared = _Shared()
    windows = ParsedWindows()
    total = len(raws)
    if progress is not None and total >= _PROGRESS_EVERY:
        progress(0, total)
    for index in range(total):
        # Each raw check is let go of once read, so that the next check's objects take the
        # memory it leaves rather than new memory (the whole document would otherwise die at the
        # end, leaving holes between the checks that stay).
        raw, raws[index] = raws[index], None
        if progress is not None and index and index % _PROGRESS_EVERY == 0:
            progress(index, total)
        name = raw.get("name")
        where = f"check {name!r} (checks[{index}])" if isinstance(name, str) else f"checks[{index}]"
        problems: list[Problem] = []
        # In this order: the check's own fields, its name, then what its probe type says; every
        # problem found is reported, not only the first.
        merged = _with_defaults(raw, defaults)
        check, fields, references = _validate_check(merged, resolver, problems, offline=offline)
        if check is not None:
            check = shared.check(check)
            _claim_name(check, index, seen, problems)
        entry = _bind_probe(
            check,
            fields,
            load_probe,
            problems,
            settings,
            references=references,
            offline=offline,
            probe_types=probe_types,
        )
        # The check's maintenance windows: its own (parsed even when the rest of the check is
        # bad, so that every problem is reported at once), then the file's that select it.
        own = check.maintenance if check is not None else _mappings(fields.get("maintenance"))
        if own or (check is not None and file_windows):
            found: list[Problem] = []
            parsed = parse_windows(own, file_windows if check is not None else (), check, found, windows)
            problems += _kept(found, references, offline)
            if entry is not None and parsed and not found:
                entry = dataclasses.replace(entry, maintenance=windows.share(parsed))
        if entry is None and offline and not problems:
            entry = _unresolved(fields, load_probe)
        if entry is not None:
            entries.append(entry)
        errors += [_line(source, where, problem, lines, index) for problem in problems]
    if progress is not None and total >= _PROGRESS_EVERY:
        progress(total, total)
    if errors:
        raise ConfigError("\n".join(errors))
    if len(text) >= _TRIM_ABOVE:
        _trim()
    return entries


_PROGRESS_EVERY = 5000


class _Lines:
    """Where each field is in the file, found only when a problem must be located: the document
    is composed again into nodes, which carry their line (libyaml's composer where PyYAML has it;
    the fast loader that built the checks keeps no marks)."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._root: Any = None
        self._composed = False

    def line(self, index: int, path: Sequence[str | int]) -> int | None:
        """The line of ``path`` in the check at ``index`` (of the check, where the path ends)."""
        return self.line_at(("checks", index, *path))

    def line_at(self, path: Sequence[str | int]) -> int | None:
        """The line of ``path`` from the top of the document, or of as much of it as is there."""
        import yaml

        node = self._compose()
        if node is None:
            return None
        if isinstance(node, yaml.SequenceNode) and path[:1] == ("checks",):
            path = path[1:]  # a bare list of checks, read as {"checks": [...]}
        line: int | None = None
        for part in path:
            found = _child(node, part)
            if found is None:
                break
            key, node = found
            line = int((key or node).start_mark.line) + 1
        return line

    def _compose(self) -> Any:
        if not self._composed:
            import yaml

            self._composed = True
            from agent.config._yaml import compose_yaml

            try:
                self._root = compose_yaml(self._text)
            except yaml.YAMLError:
                self._root = None
        return self._root


def _child(node: Any, part: str | int) -> tuple[Any, Any] | None:
    """The (key node, value node) of ``part`` in a mapping node, or (None, item) of a sequence."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        return next(((k, v) for k, v in node.value if getattr(k, "value", None) == str(part)), None)
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return None, node.value[part]
    return None


def _line(source: str, where: str, problem: Problem, lines: _Lines | None, index: int) -> str:
    """One problem as a line of the error: the source (and line), the check, the field."""
    line = lines.line(index, problem.path) if lines is not None else None
    head = f"{source}, line {line}: " if line else f"{source}: "
    path = field_path(problem.path)
    if problem.unknown:
        message = f": {problem.message}" if problem.message else ""
        return f"{head}unknown field '{path}' in {where}{message}"
    field = f"field '{path}'" if path else "check"
    return f"{head}{where}, {field}: {problem.message}"


def _read_document(
    text: str, source: str, lines: _Lines | None = None, resolver: SecretResolver | None = None
) -> tuple[Defaults, list[Any], list[FileWindow]]:
    """The document's ``defaults``, raw ``checks`` and ``maintenance`` windows; a bare list is a
    list of checks. The windows' references are resolved as a check's are (a selector's
    ``labels: {vendor: ${VENDOR}}`` is compared with the checks' resolved labels)."""
    if text.lstrip().startswith("{"):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
            ) from None
    else:
        document = _load_yaml(text, source)
    if document is None:
        document = {}
    if isinstance(document, list):
        document = {"checks": document}
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: expected a mapping with 'checks' (and optional 'defaults')")
    windows = document.get("maintenance")
    if resolver is not None and isinstance(windows, list):
        unresolved: list[Problem] = []
        resolved, _ = _resolve({"maintenance": windows}, resolver, unresolved)
        if unresolved:
            raise ConfigError(
                "\n".join(
                    f"{source}{_at(lines, p.path)}: field '{field_path(p.path)}': {p.message}"
                    for p in unresolved
                )
            )
        document = {**document, "maintenance": resolved["maintenance"]}
    try:
        parsed = _CheckFile.model_validate(document)
    except ValidationError as exc:
        if lines is None:
            raise ConfigError(format_validation_error(exc, source, model=_CheckFile)) from None
        found = []
        for problem in explain(exc, _CheckFile):
            line = lines.line_at(problem.path)
            head = f"{source}, line {line}: " if line else f"{source}: "
            path = field_path(problem.path)
            if problem.unknown:
                found.append(
                    f"{head}unknown field '{path}'" + (f": {problem.message}" if problem.message else "")
                )
            else:
                found.append(f"{head}field '{path}': {problem.message}")
        raise ConfigError("\n".join(found)) from None

    # The document's own list, now known to be a list of mappings: the model's copy of it goes.
    checks = document.get("checks")
    return parsed.defaults, checks if isinstance(checks, list) else [], parsed.maintenance


def _at(lines: _Lines | None, path: tuple[str | int, ...]) -> str:
    line = lines.line_at(path) if lines is not None else None
    return f", line {line}" if line else ""


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

    from agent.config._yaml import load_yaml

    try:
        # libyaml's loader where PyYAML has it, without PyYAML's detours (agent/config/_yaml.py):
        # the pure-Python one peaks at some 60 MiB more for 10,000 checks (its node graph).
        buffer = pickle.dumps(load_yaml(text), pickle.HIGHEST_PROTOCOL)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {_yaml_problem(exc)}") from None
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
        self._confirmations: dict[Confirmation, Confirmation] = {}

    def check(self, check: Check) -> Check:
        fields = vars(check)
        for name in ("type", "target"):
            value = fields[name]
            if value.__class__ is str:
                fields[name] = sys.intern(value)
        for name in ("labels", "settings"):
            fields[name] = self._mapping(fields[name])
        confirmation = fields["confirmation"]
        if confirmation is not DEFAULT_CONFIRMATION:  # the same settings from ``defaults``: one object
            fields["confirmation"] = self._confirmations.setdefault(confirmation, confirmation)
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


def _yaml_problem(exc: Exception) -> str:
    """A YAML error as "line 3, column 7: <problem> (<context> at line 1, column 9)", from the
    marks the parser gives (libyaml's too)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    if context and context_mark is not None and (mark is None or context_mark.line != mark.line):
        context += f" started at line {context_mark.line + 1}, column {context_mark.column + 1}"
    return where + problem + (f" ({context})" if context else "")


def _with_defaults(raw: dict[str, Any], defaults: Defaults) -> dict[str, Any]:
    """The raw check with the file's defaults filled in (labels merged, the check's winning)."""
    merged = dict(raw)
    merged.setdefault("labels", {})
    if isinstance(merged["labels"], dict):
        merged["labels"] = {**defaults.labels, **merged["labels"]}
    for key in _DEFAULTED:
        if key not in merged and getattr(defaults, key) is not None:
            merged[key] = getattr(defaults, key)
    if "timeout" not in merged and "interval" in merged:
        # An unset timeout stays below a short interval rather than tripping the rule.
        try:
            merged["timeout"] = min(DEFAULT_TIMEOUT, parse_duration(merged["interval"]) * 0.8)
        except ValueError:
            pass
    return merged


def _validate_check(
    merged: dict[str, Any],
    resolver: SecretResolver,
    problems: list[Problem],
    *,
    offline: bool,
) -> tuple[Check | None, dict[str, Any], set[Path_]]:
    """Secret references resolved, then the check's own fields validated (None if any is bad);
    with the resolved fields and the paths of those that held a reference."""
    resolved, references = _resolve(merged, resolver, problems)
    if "confirmation" in resolved:
        # Check's own holder of the confirmation fields, not one to write: written, it would
        # bypass the checks against the interval and the timeout below.
        fields = ", ".join(CONFIRMATION_FIELDS)
        problems.append(Problem(("confirmation",), f"write {fields} on the check itself", unknown=True))
        return None, resolved, references
    try:
        check = Check.model_validate(resolved)
    except ValidationError as exc:
        found = _kept([_flat(p) for p in explain(exc, Check)], references, offline)
        problems += found + _confirmation_problems(resolved, found)
        return None, resolved, references
    if check.confirmation is not DEFAULT_CONFIRMATION:
        found = _confirmation_problems(resolved, [])
        if found:
            problems += found
            return None, resolved, references
    return check, resolved, references


def _flat(problem: Problem) -> Problem:
    """A problem of a confirmation field where the user wrote it: on the check (``retries``, not
    ``confirmation.retries``; see ``Check.confirmation``)."""
    if problem.path[:1] == ("confirmation",) and len(problem.path) > 1:
        problem.path = problem.path[1:]
    return problem


def _confirmation_problems(fields: Mapping[str, Any], known: list[Problem]) -> list[Problem]:
    """The confirmation fields against the check's interval and timeout (each a duration that
    reads, and without a problem of its own in ``known``)."""
    bad = {p.path[0] for p in known if p.path}

    def seconds(name: str, default: float | None = None) -> float | None:
        if name not in fields:
            return default
        if name in bad:
            return None
        try:
            return parse_duration(fields[name])
        except (ValueError, TypeError):
            return None

    interval = seconds("interval", DEFAULT_INTERVAL)
    timeout = seconds("timeout", DEFAULT_TIMEOUT)
    try:
        retesting = int(fields.get("retries", 0)) > 0
    except (TypeError, ValueError):
        retesting = False  # a problem of its own
    # The delay counts only for a check that re-tests: one that does not (``retries: 0`` under a
    # ``defaults`` that re-tests slower checks) never waits it.
    delay = seconds("retry_delay", DEFAULT_RETRY_DELAY) if retesting else None
    down = seconds("down_interval")
    found = []
    if delay is not None and interval is not None and delay >= interval:
        found.append(
            Problem(
                ("retry_delay",),
                f"the retry delay ({format_duration(delay)}) must be below the interval "
                f"({format_duration(interval)}): a re-test is made before the next run is due",
            )
        )
    if down is not None and interval is not None and down >= interval:
        found.append(
            Problem(
                ("down_interval",),
                f"the down interval ({format_duration(down)}) must be below the interval "
                f"({format_duration(interval)}): it is the shorter interval of a failing check",
            )
        )
    elif down is not None and timeout is not None and down <= timeout:
        found.append(
            Problem(
                ("down_interval",),
                f"the down interval ({format_duration(down)}) must be above the timeout "
                f"({format_duration(timeout)})",
            )
        )
    return found


Path_ = tuple[str | int, ...]


def _resolve(
    merged: dict[str, Any], resolver: SecretResolver, problems: list[Problem]
) -> tuple[Any, set[Path_]]:
    """The check with its references resolved, and the paths of the fields that held one.

    Every reference that cannot be used is a problem of its field: all of them, not the first.
    """
    references: set[Path_] = set()

    def text(value: str, path: Path_) -> str:
        try:
            resolved = resolver.resolve(value)
        except LookupError as exc:
            problems.append(Problem(path, str(exc)))
            references.add(path)
            return value
        if resolved != value or has_reference(value):
            references.add(path)
        return resolved

    def walk(value: Any, path: Path_) -> Any:
        # Copy on write, and a path made only where it is needed: most of a large check set
        # holds no "$" at all, and this walk runs over every value of every check.
        if isinstance(value, Mapping):
            changed: dict[Any, Any] | None = None
            for key, item in value.items():
                kind = type(item)
                if kind is str:
                    new = text(item, (*path, str(key))) if "$" in item else item
                elif kind is dict or kind is list or isinstance(item, Mapping):
                    new = walk(item, (*path, str(key)))
                else:
                    continue
                if new is not item:
                    changed = changed if changed is not None else dict(value)
                    changed[key] = new
            return value if changed is None else changed
        if type(value) is list:
            items: list[Any] | None = None
            for index, item in enumerate(value):
                kind = type(item)
                if kind is str:
                    new = text(item, (*path, index)) if "$" in item else item
                elif kind is dict or kind is list or isinstance(item, Mapping):
                    new = walk(item, (*path, index))
                else:
                    continue
                if new is not item:
                    items = items if items is not None else list(value)
                    items[index] = new
            return value if items is None else items
        if isinstance(value, str) and "$" in value:
            return text(value, path)
        return value

    return walk(merged, ()), references


_FILE_PROBLEMS = ("cannot be read", "does not exist or is not a file", "the TLS files cannot be loaded")
"""How settings say that a file they name is missing or unreadable; offline, files need not exist."""


def _kept(problems: list[Problem], references: set[Path_], offline: bool) -> list[Problem]:
    """``problems`` less, offline, those of a field that holds an unresolved reference (its value
    is not known) and those of a file that is not there (the production files are not)."""
    if not offline:
        return problems
    return [
        p
        for p in problems
        # In the field, or in the object that holds it (a model's own check of its fields).
        if not any(p.path[: len(r)] == r or p.path == r[:-1] for r in references if p.path)
        and not any(words in p.message for words in _FILE_PROBLEMS)
    ]


def _claim_name(check: Check, index: int, seen: dict[str, int], problems: list[Problem]) -> None:
    """Record the check's name, refusing a name an earlier check already has."""
    if check.name in seen:
        problems.append(
            Problem(("name",), f"the name {check.name!r} is already used by checks[{seen[check.name]}]")
        )
    else:
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
    check: Check | None,
    fields: Mapping[str, Any],
    load_probe: Callable[[str], Probe[Any]],
    problems: list[Problem],
    parsed: dict[tuple[str, str], BaseModel],
    *,
    references: set[Path_],
    offline: bool,
    probe_types: Sequence[str],
) -> CheckEntry | None:
    """The check's probe type loaded, its target accepted and its settings parsed by that type.

    A check whose own fields are bad (``check`` None) has its type, target and settings checked
    too, from ``fields``, where they can be: every problem of a check is reported at once.

    Checks of one type with the same settings share one (immutable) ``Settings`` object, kept in
    ``parsed``: with thousands of checks most have the same few settings blocks, and a parsed
    block costs a few kilobytes.
    """
    kind, target, settings = fields.get("type"), fields.get("target"), fields.get("settings", {})
    if not isinstance(kind, str) or (check is None and any(p.path[:1] == ("type",) for p in problems)):
        return None
    found: list[Problem] = []
    try:
        probe = load_probe(kind)
    except (ConfigError, PluginError) as exc:
        hint = did_you_mean(kind, probe_types) if kind not in probe_types else ""
        problems.append(Problem(("type",), f"{exc}; {hint}" if hint else str(exc)))
        return None
    if isinstance(target, str) and not any(p.path[:1] == ("target",) for p in problems):
        try:
            probe.validate_target(target)
        except ValueError as exc:
            found.append(Problem(("target",), str(exc)))
    key = _settings_key(check) if check is not None and not found else None
    known = parsed.get(key) if key is not None else None
    if known is not None and check is not None:
        return CheckEntry(check, probe, known)
    parsed_settings = None
    if isinstance(settings, dict):
        try:
            parsed_settings = probe.Settings.model_validate(settings)
        except ValidationError as exc:
            found += explain(exc, probe.Settings, ("settings",))
        except (ValueError, TypeError) as exc:
            found.append(Problem(("settings",), str(exc)))
    problems += _kept(found, references, offline)
    if check is None or problems or parsed_settings is None:
        return None
    if key is not None:
        parsed[key] = parsed_settings
    return CheckEntry(check, probe, parsed_settings)


def _mappings(value: Any) -> list[dict[str, Any]]:
    """``value`` if it is a list of mappings (a check's windows as written), else nothing (the
    check's own validation said what is wrong with it)."""
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        return value
    return []


def _unresolved(fields: Mapping[str, Any], load_probe: Callable[[str], Probe[Any]]) -> CheckEntry | None:
    """Offline, a check whose only problems are values known at run time (a reference, a file):
    kept as written, unvalidated, to be counted and placed in its shard; it is never run."""
    try:
        probe = load_probe(str(fields.get("type")))
    except (ConfigError, PluginError):
        return None
    known = {k: v for k, v in fields.items() if k in Check.model_fields}
    settings = fields.get("settings")
    return CheckEntry(
        Check.model_construct(**known),
        probe,
        probe.Settings.model_construct(**settings)
        if isinstance(settings, dict)
        else probe.Settings.model_construct(),
    )


def format_validation_error(
    exc: ValidationError,
    source: str,
    where: str = "",
    *,
    prefix: str = "",
    model: type[BaseModel] | None = None,
) -> str:
    """One line per pydantic error, naming the source, the check and the field, in the user's
    words (with a "did you mean" when ``model``, the model that raised, is given). A value is
    quoted only when it is short and one of a known set (an op, a name's form); ``load_config``
    redacts the whole message besides."""
    problems = explain(exc, model, (prefix,) if prefix else ())
    lines = []
    for problem in problems:
        path = field_path(problem.path)
        head = f"{source}: {where}, " if where else f"{source}: "
        if problem.unknown:
            place = f" in {where}" if where else ""
            message = f": {problem.message}" if problem.message else ""
            lines.append(f"{source}: unknown field '{path}'{place}{message}")
        else:
            lines.append(f"{head}{f'field {path!r}' if path else 'check'}: {problem.message}")
    return "\n".join(lines)
