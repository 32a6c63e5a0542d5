"""Durations as people write them in configuration: ``250ms``, ``30s``, ``5m``, ``1h30m``, or seconds."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

__all__ = ["Duration", "format_duration", "parse_duration", "plural"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: Any) -> float:
    """Return seconds for a duration given as a number of seconds or a string like ``1m30s``."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value)
    else:
        raise ValueError("a duration is a number of seconds or a string like '30s'")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r} is not a positive duration")
    return seconds


def _parse_text(value: str) -> float:
    """Seconds from a written duration: a plain number, or parts like ``1h30m`` with nothing between."""
    text = value.strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    pos, seconds = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(
            f"{value!r} is not a duration; use e.g. '250ms', '30s', '5m', '1h' or a number of seconds"
        ) from None
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds compactly: ``0.25`` → ``250ms``, ``90`` → ``1m30s``; from a minute up, to
    the whole second (``7199.8`` → ``2h``)."""
    if seconds < 1:
        return f"{round(seconds * 1000, 1):g}ms"
    if seconds < 60:
        return f"{round(seconds, 2):g}s"
    whole = round(seconds)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    out = (f"{days}d" if days else "") + (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return out + (f"{secs}s" if secs else "")


Duration = Annotated[
    float, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]
"""A pydantic field type: seconds as a float, written as a duration string."""


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``count`` and the noun in its number, for text a person reads: "1 check", "2 checks",
    "1 delivery", "3 deliveries" (``nouns`` when the plural is not ``noun`` + "s")."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"
