"""Schema drift: the shape of a JSON response (field paths and JSON types, not values or array
lengths), compared with a baseline.

The baseline is the shape of the first successful response, or of a sample response given as a
file; with ``VANTAGE_STATE_DIR`` it is kept in ``<dir>/schema/<check>.json`` and survives restarts (a
directory that cannot be written is warned about once; the baseline is then kept in memory).
A drifted response does not replace the baseline: the team decides what the new normal is (delete
the state file, or give a new sample).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.sdk import StateFile

__all__ = ["Drift", "DriftTracker", "shape"]

Shape = dict[str, set[str]]
_MAX_PATHS = 5000  # a hostile or huge document is cut off here, not walked whole


def _type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def shape(document: Any) -> Shape:
    """Every field path of ``document`` with the JSON types seen there; array items share ``[*]``."""
    out: Shape = {}
    stack: list[tuple[str, Any]] = [("$", document)]
    while stack and len(out) < _MAX_PATHS:
        path, value = stack.pop()
        out.setdefault(path, set()).add(_type(value))
        if isinstance(value, dict):
            stack.extend((f"{path}.{key}", item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}[*]", item) for item in value)
    return out


@dataclass(frozen=True, slots=True)
class Drift:
    added: list[str]
    removed: list[str]
    retyped: list[str]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.retyped)

    def describe(self, limit: int = 5) -> str:
        parts = []
        for label, items in (("removed", self.removed), ("retyped", self.retyped), ("added", self.added)):
            if items:
                more = f" and {len(items) - limit} more" if len(items) > limit else ""
                parts.append(f"{label} {', '.join(items[:limit])}{more}")
        return "; ".join(parts)


def compare(baseline: Shape, current: Shape) -> Drift:
    added = sorted(set(current) - set(baseline))
    removed = sorted(set(baseline) - set(current))
    retyped = [
        f"{path} ({'|'.join(sorted(baseline[path]))} → {'|'.join(sorted(current[path]))})"
        for path in sorted(set(baseline) & set(current))
        if baseline[path] != current[path]
    ]
    return Drift(added, removed, retyped)


class DriftTracker:
    """One check's baseline, in memory and, with a state directory, on disk.

    It lives in the check's ``ctx.state`` (``ctx.state.get(DriftTracker)``), so it goes when the
    check goes. A baseline that cannot be written (the state directory read-only or full) is kept
    in memory and written again on each run until it is: the drift check itself never depends on
    the disk.
    """

    def __init__(self) -> None:
        self._baseline: Shape | None = None
        self._unsaved: StateFile | None = None
        """While the baseline is not on disk, the file it goes to: it logs a failure once."""

    def check(self, name: str, document: Any, state_dir: Path | None, sample: Path | None) -> Drift | None:
        """Compare ``document`` with the baseline of the check ``name``; None when this response
        becomes it."""
        current = shape(document)
        baseline = self._baseline or _load(name, state_dir, sample)
        if baseline is None:
            self._baseline = current
            self._save(name, current, state_dir)
            return None
        self._baseline = baseline
        if self._unsaved is not None:
            self._save(name, baseline, state_dir)
        return compare(baseline, current)

    def _save(self, name: str, baseline: Shape, state_dir: Path | None) -> None:
        if state_dir is None:
            return
        document = json.dumps(
            {"shape": {path: sorted(types) for path, types in sorted(baseline.items())}}, indent=1
        )
        file = self._unsaved or StateFile(_path(name, state_dir))
        self._unsaved = None if file.write(document) else file


def _load(name: str, state_dir: Path | None, sample: Path | None) -> Shape | None:
    if sample is not None:
        return shape(json.loads(sample.read_text(encoding="utf-8")))
    text = StateFile(_path(name, state_dir)).read()
    if text is None:
        return None
    try:
        stored = json.loads(text)
        return {path: set(types) for path, types in stored["shape"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _path(name: str, state_dir: Path | None) -> Path | None:
    return state_dir / "schema" / f"{name}.json" if state_dir is not None else None
