"""Configuration errors in the user's words: field paths as the user writes them, pydantic's
messages reworded, and a "did you mean" for a misspelt field, probe type, op or source.

pydantic reports ``('settings', 'auth', 'bearer', 'tokn')``, "Extra inputs are not permitted";
the user wrote ``settings.auth.tokn`` and meant ``token``. The model is walked along the error's
location to tell the user's keys (a field, by its alias; a list index; a mapping key) from what
pydantic adds (the tag of a union member), and to know the fields a misspelt one was meant to be.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

__all__ = ["Problem", "did_you_mean", "explain", "field_path"]

_QUOTED = re.compile(r"'([^']*)'")
_MAX_LISTED = 12
_MAX_SHOWN = 60  # a value quoted back (a misspelt op) is short; anything longer is not quoted


def did_you_mean(word: str, choices: Iterable[str], *, quote: str = "'") -> str:
    """``"did you mean 'x'?"`` for the choice closest to ``word``, or ``""`` when none is close."""
    options = list(choices)
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not close:
        lowered = {choice.lower(): choice for choice in options}
        close = [lowered[word.lower()]] if word.lower() in lowered else []
    if not close:  # "equals" for "eq": the longest choice the word starts with
        prefixes = [c for c in options if len(c) >= 2 and word.lower().startswith(c.lower())]
        close = sorted(prefixes, key=len)[-1:]
    return f"did you mean {quote}{close[0]}{quote}?" if close else ""


def field_path(parts: Sequence[str | int]) -> str:
    """``settings.steps[0].body``: keys joined by dots, list indexes in brackets."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class Problem:
    """One error: where (the user's path) and what, in the user's words."""

    __slots__ = ("message", "path", "unknown")

    def __init__(self, path: tuple[str | int, ...], message: str, *, unknown: bool = False) -> None:
        self.path = path
        self.message = message
        self.unknown = unknown
        """An unknown field: worded "unknown field 'x'" rather than "field 'x': ..."."""


def explain(
    exc: ValidationError, model: type[BaseModel] | None, prefix: tuple[str | int, ...] = ()
) -> list[Problem]:
    """Each error of ``exc`` (raised by ``model``) as a :class:`Problem`, paths under ``prefix``.

    A "too short" error on a list is dropped when an item of that list has an error of its own:
    pydantic reports both when an item is refused, and the item's error is the one to fix.
    """
    errors = exc.errors(include_url=False)
    problems: list[Problem] = []
    walks = [_walk(model, tuple(error["loc"])) for error in errors]
    # A value that is none of a union's kinds (``text or list of text``) gets an error from each
    # kind: one problem says what the value may be instead.
    tags: dict[tuple[str | int, ...], set[str]] = {}
    unions: dict[tuple[str | int, ...], Any] = {}
    for walk in walks:
        if walk.union is not None:
            tags.setdefault(walk.union_path, set()).add(walk.union_tag)
            unions[walk.union_path] = walk.union
    collapsed = {at for at, seen in tags.items() if len(seen) > 1}
    for at in collapsed:
        from agent.config._describe import kind_words

        problems.append(Problem((*prefix, *at), f"expected {kind_words(unions[at])}"))
    for error, walk in zip(errors, walks, strict=True):
        path, fields = walk.path, walk.fields
        if walk.union is not None and walk.union_path in collapsed:
            continue
        kind = error["type"]
        if kind in ("too_short", "list_type", "tuple_type") and any(
            len(other.path) > len(path) and other.path[: len(path)] == path for other in walks
        ):
            continue
        if kind == "extra_forbidden" and path:
            hint = did_you_mean(str(path[-1]), fields or ())
            if hint or not fields:
                message = hint
            elif len(fields) <= _MAX_LISTED:
                message = f"known fields: {', '.join(fields)}"
            else:
                message = f"not one of its {len(fields)} fields (`vantage plugins` lists them)"
            problems.append(Problem((*prefix, *path), message, unknown=True))
            continue
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            discriminator = _QUOTED.findall(str(error.get("ctx", {}).get("discriminator", "")))
            if discriminator:
                path = (*path, discriminator[0])
        message = _reword(error)
        problems.append(Problem((*prefix, *path), f"the key: {message}" if walk.key else message))
    return problems


def _reword(error: Mapping[str, Any]) -> str:
    """pydantic's message for one error, in the words of someone writing a checks file."""
    kind: str = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    given = error.get("input")
    if kind in ("literal_error", "enum"):
        allowed = _QUOTED.findall(str(ctx.get("expected", "")))
        return _not_one_of(given, allowed) if allowed else error["msg"]
    if kind == "union_tag_invalid":
        return _not_one_of(ctx.get("tag"), _QUOTED.findall(str(ctx.get("expected_tags", ""))))
    if kind == "union_tag_not_found":
        return "missing: say which kind this is"
    if kind == "missing":
        return "missing: this field is required"
    if kind == "too_short":
        least = ctx.get("min_length", 1)
        return f"needs at least {least} item{'s' if least != 1 else ''}"
    if kind == "too_long":
        most = ctx.get("max_length")
        return f"takes at most {most} item{'s' if most != 1 else ''}"
    if kind == "string_too_short":
        least = ctx.get("min_length", 1)
        return "must not be empty" if least == 1 else f"needs at least {least} characters"
    if kind == "string_too_long":
        return f"takes at most {ctx.get('max_length')} characters"
    if kind == "string_pattern_mismatch":
        shown = f"{given!r} " if isinstance(given, str) and len(given) <= _MAX_SHOWN else ""
        return f"{shown}does not have the expected form (the pattern {ctx.get('pattern')})"
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "greater_than": ("above", "gt"),
        "less_than_equal": ("at most", "le"),
        "less_than": ("below", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"must be {words} {ctx.get(key)}"
    expected = _TYPES.get(kind)
    if expected:
        found = _given(given)
        return f"expected {expected}" + (f", not {found}" if found and found != expected else "")
    return str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")


_TYPES = {
    "string_type": "text",
    "string_unicode": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "frozen_set_type": "a list",
    "none_required": "nothing here (null)",
    "url_parsing": "a URL",
    "url_scheme": "a URL with another scheme",
    "byte_size": "a size (e.g. 256KiB, 1MB)",
    "byte_size_unit": "a size with a known unit (B, KB, KiB, MB, MiB, GB, GiB)",
}


def _given(value: object) -> str:
    """What kind of value was given, in the words of ``_TYPES`` (never the value itself)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, Mapping):
        return "a mapping (key: value)"
    if isinstance(value, list | tuple):
        return "a list"
    return ""


def _not_one_of(given: object, allowed: Sequence[str]) -> str:
    choices = ", ".join(f"'{a}'" for a in allowed)
    if isinstance(given, str) and len(given) <= _MAX_SHOWN:
        hint = did_you_mean(given, allowed)
        return f"{given!r} is not one of {choices}" + (f"; {hint}" if hint else "")
    return f"expected one of {choices}"


# ---------------------------------------------------------------- walking a model along a location


class _Walk:
    """Where an error is, in the user's terms."""

    __slots__ = ("fields", "key", "path", "union", "union_path", "union_tag")

    def __init__(self) -> None:
        self.key = False
        """The error is about the key at the end of the path, not its value."""
        self.path: tuple[str | int, ...] = ()
        self.fields: list[str] = []
        """The fields of the model the last part of the path is in."""
        self.union: Any = None
        """The first union whose member pydantic named (by a tag the user did not write)."""
        self.union_path: tuple[str | int, ...] = ()
        self.union_tag = ""


def _walk(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> _Walk:
    """The user's path for pydantic's ``loc``, and what is known of the place it points to."""
    walk = _Walk()
    path: list[str | int] = []
    kind: Any = model
    i = 0
    while i < len(loc):
        part = loc[i]
        if part == "[key]":  # a mapping's key is wrong: the path already ends at that key
            walk.key = True
            i += 1
            continue
        kind = _unwrap(kind)
        members = _members(kind)
        if members is not None:
            chosen = _member(members, part)
            if chosen is not None:
                if walk.union is None:
                    walk.union, walk.union_path, walk.union_tag = kind, tuple(path), str(part)
                kind = chosen
                i += 1
                continue
            kind = next((m for m in members if _is_model(m)), None)
            continue
        if _is_model(kind):
            walk.fields = _field_names(kind)
            found = _field(kind, part)
            path.append(part)
            kind = found
        elif isinstance(part, int) and get_origin(kind) in (list, tuple, set, frozenset, Sequence):
            args = [a for a in get_args(kind) if a is not Ellipsis]
            path.append(part)
            kind = args[0] if len(args) == 1 or get_origin(kind) is not tuple else _nth(args, part)
        elif get_origin(kind) in (dict, Mapping):
            args = list(get_args(kind))
            path.append(str(part))
            kind = args[1] if len(args) == 2 else None
        elif kind is None and isinstance(part, str) and ("[" in part or part in _SCALARS):
            i += 1  # a union tag of a kind this walk does not know: not the user's key
            continue
        else:
            path.append(part)
            kind = None
        i += 1
    walk.path = tuple(path)
    return walk


_SCALARS = frozenset({"str", "int", "float", "bool", "list", "dict", "tuple", "none", "bytes"})


def _nth(args: Sequence[Any], index: int) -> Any:
    return args[index] if index < len(args) else None


def _unwrap(kind: Any) -> Any:
    while True:
        origin = get_origin(kind)
        if origin is Annotated:
            kind = get_args(kind)[0]
            continue
        if origin in (Union, types.UnionType):
            members = [a for a in get_args(kind) if a is not type(None)]
            if len(members) == 1:
                kind = members[0]
                continue
        return kind


def _members(kind: Any) -> list[Any] | None:
    if get_origin(kind) in (Union, types.UnionType):
        return [_unwrap(a) for a in get_args(kind) if a is not type(None)]
    return None


def _member(members: Sequence[Any], part: Any) -> Any:
    """The union member pydantic names by ``part`` (a discriminator's value, a class name, or a
    description such as ``function-after[_compile(), Assertion]``), or None."""
    if not isinstance(part, str):
        return None
    for member in members:
        if not _is_model(member):
            origin = getattr(get_origin(member), "__name__", None)
            if part == getattr(member, "__name__", None) or (origin and part.startswith(origin + "[")):
                return member
            continue
        if part == member.__name__ or re.search(rf"\b{re.escape(member.__name__)}\]$", part):
            return member
        for field in member.model_fields.values():
            if get_origin(field.annotation) is not None and part in _literal_values(field.annotation):
                return member
    return None


def _literal_values(kind: Any) -> tuple[Any, ...]:
    from typing import Literal

    return get_args(kind) if get_origin(kind) is Literal else ()


def _is_model(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, BaseModel)


def _field_names(model: type[BaseModel]) -> list[str]:
    # FLATTENED: fields written on the model and kept in one of its own (Check's confirmation).
    flattened: tuple[str, ...] = getattr(model, "FLATTENED", ())
    return [field.alias or name for name, field in model.model_fields.items()] + list(flattened)


def _field(model: type[BaseModel], part: Any) -> Any:
    for name, field in model.model_fields.items():
        if part in (name, field.alias):
            return field.annotation
    return None
