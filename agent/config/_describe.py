"""Each probe type's settings in the user's terms, for ``vantage plugins``.

A field is told by its name (as written in a check), its kind ("duration", "list of text", "one
of 'a', 'b'", an object with fields of its own), its default, and the first line of its
docstring (the string under the field in its ``Settings`` class) or its ``description``.
"""

from __future__ import annotations

import ast
import enum
import inspect
import itertools
import textwrap
import types
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ByteSize, SecretStr
from pydantic.fields import FieldInfo

from agent.sdk.durations import format_duration, parse_duration

__all__ = ["describe_probe", "kind_words", "render_text"]

_MAX_DEPTH = 6


def describe_probe(name: str, probe: object) -> dict[str, Any]:
    """A probe type as plain data: name, class, description and its settings' fields."""
    cls = type(probe)
    settings: type[BaseModel] = cls.Settings  # type: ignore[attr-defined]
    return {
        "name": name,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "description": _first_line(cls.__doc__)
        or _first_line(getattr(inspect.getmodule(cls), "__doc__", "")),
        "settings": _fields(settings, depth=0, seen=()),
    }


def _fields(model: type[BaseModel], depth: int, seen: tuple[type, ...]) -> list[dict[str, Any]]:
    docs = _docstrings(model)
    out = []
    for name, field in model.model_fields.items():
        entry: dict[str, Any] = {
            "name": field.alias or name,
            "type": "",
            "required": field.is_required(),
            "description": _first_line(field.description) or docs.get(name, ""),
        }
        kind = _kind(field.annotation, field.metadata, depth, (*seen, model), entry)
        entry["type"] = kind
        if not field.is_required():
            default = _default(field)
            if default is not _NO_DEFAULT:
                entry["default"] = default
        out.append(entry)
    return out


_NO_DEFAULT = object()


def _default(field: FieldInfo) -> Any:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return _NO_DEFAULT  # an object: its fields say their own defaults
    if any(_is_duration_meta(m) for m in field.metadata) and isinstance(value, int | float):
        return format_duration(value)
    return _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, ByteSize):
        return _size(int(value))
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path | SecretStr):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _size(count: int) -> str:
    """``1MiB`` for 1048576: the largest binary unit that divides the count."""
    for unit, power in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count and count % (1 << power) == 0:
            return f"{count >> power}{unit}"
    return f"{count}B"


def _is_duration_meta(meta: Any) -> bool:
    return getattr(meta, "func", None) is parse_duration


def kind_words(annotation: Any) -> str:
    """A type in the user's words: ``text or list of text``."""
    return _kind(annotation, (), _MAX_DEPTH, (), {})


def _kind(
    annotation: Any, metadata: Sequence[Any], depth: int, seen: tuple[type, ...], entry: dict[str, Any]
) -> str:
    """``annotation`` in the user's words; an object's fields, a union's variants and the allowed
    values go into ``entry`` (``fields``, ``variants``, ``allowed``)."""
    if any(_is_duration_meta(m) for m in metadata):
        return "duration (e.g. 30s, 5m)"
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *meta = get_args(annotation)
        return _kind(inner, meta, depth, seen, entry)
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(members) < len(get_args(annotation))
        if len(members) == 1:
            return _kind(members[0], metadata, depth, seen, entry)
        models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        if models and len(models) == len(members) and depth < _MAX_DEPTH:
            variants = {}
            for model in models:
                tag = _tag(model)
                variants[tag or model.__name__] = {
                    "description": _first_line(model.__doc__),
                    "fields": _fields(model, depth + 1, seen) if model not in seen else [],
                }
            entry["variants"] = variants
            return "one of the objects below, chosen by 'type'" if all(map(_tag, models)) else "one of"
        words = " or ".join(_kind(m, (), depth, seen, {}) for m in members)
        return words + (" (optional)" if optional and not words.endswith("(optional)") else "")
    if origin is Literal:
        values = [_plain(v) for v in get_args(annotation)]
        entry["allowed"] = values
        if len(values) == 1:
            return repr(values[0]) if isinstance(values[0], str) else str(values[0])
        return "one of " + ", ".join(repr(v) if isinstance(v, str) else str(v) for v in values)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        values = [member.value for member in annotation]
        entry["allowed"] = values
        return "one of " + ", ".join(repr(v) for v in values)
    if origin in (list, tuple, set, frozenset, Sequence):
        args = [a for a in get_args(annotation) if a is not Ellipsis]
        if not args:
            return "list"
        if origin is tuple and len(args) > 1 and Ellipsis not in get_args(annotation):
            return f"list of {len(args)}: " + ", ".join(_kind(a, (), depth, seen, {}) for a in args)
        item: dict[str, Any] = {}
        words = _kind(args[0], (), depth, seen, item)
        for key in ("fields", "variants", "allowed"):
            if key in item:
                entry[key] = item[key]
        return f"list of {_plural(words)}"
    if origin in (dict, Mapping):
        args = list(get_args(annotation))
        if len(args) == 2:
            item = {}
            value_words = _kind(args[1], (), depth, seen, item)
            for key in ("fields", "variants", "allowed"):
                if key in item:
                    entry[key] = item[key]
            return f"mapping of {_kind(args[0], (), depth, seen, {})} to {value_words}"
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation not in seen and depth < _MAX_DEPTH:
            entry["fields"] = _fields(annotation, depth + 1, seen)
        return "object"
    return _SIMPLE.get(annotation, getattr(annotation, "__name__", str(annotation)))


_SIMPLE: dict[Any, str] = {
    str: "text",
    int: "whole number",
    float: "number",
    bool: "true or false",
    Path: "file path",
    ByteSize: "size (e.g. 64KiB, 1MB)",
    SecretStr: "text (secret)",
    bytes: "text",
    Any: "any value",
    type(None): "null",
}


def _plural(words: str) -> str:
    """``list of whole numbers``: the kinds that take a plural, in it; the others as they are."""
    return _PLURALS.get(words, words)


_PLURALS = {
    "object": "objects",
    "whole number": "whole numbers",
    "number": "numbers",
    "file path": "file paths",
    "list": "lists",
    "mapping": "mappings",
}


def _tag(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("type")
    if field is not None and get_origin(field.annotation) is Literal:
        args = get_args(field.annotation)
        return str(args[0]) if len(args) == 1 else None
    return None


def _first_line(doc: str | None) -> str:
    if not doc:
        return ""
    text = inspect.cleandoc(doc).replace("``", "")
    paragraph = text.split("\n\n")[0].replace("\n", " ")
    end = paragraph.find(". ")
    return paragraph[: end + 1] if end >= 0 else paragraph


@cache
def _docstrings(model: type[BaseModel]) -> dict[str, str]:
    """The strings written under the fields of ``model`` and its bases (attribute docstrings)."""
    docs: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = _first_line(after.value.value)
    return docs


def render_text(described: Sequence[Mapping[str, Any]]) -> str:
    """The probe types as text for a person: one block per type, nested fields indented."""
    lines: list[str] = []
    for probe in described:
        if "error" in probe:
            lines += [f"{probe['name']}: unavailable: {probe['error']}", ""]
            continue
        lines.append(f"{probe['name']}  ({probe['class']})")
        if probe["description"]:
            lines.append(f"  {probe['description']}")
        _render_fields(probe["settings"], "    ", lines)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _render_fields(fields: Sequence[Mapping[str, Any]], indent: str, lines: list[str]) -> None:
    if not fields:
        lines.append(f"{indent}(no settings)")
    for field in fields:
        head = f"{indent}{field['name']}: {field['type']}"
        if field["required"]:
            head += ", required"
        elif "default" in field and field["default"] not in (None, [], {}, ""):
            head += f", default {_shown(field['default'])}"
        lines.append(head)
        if field["description"]:
            lines.append(f"{indent}    {field['description']}")
        if field.get("fields"):
            _render_fields(field["fields"], indent + "    ", lines)
        for tag, variant in field.get("variants", {}).items():
            lines.append(f"{indent}    {tag}: {variant['description']}".rstrip(": "))
            _render_fields(variant["fields"], indent + "        ", lines)


def _shown(value: Any) -> str:
    import json

    return value if isinstance(value, str) and value and " " not in value else json.dumps(value)
