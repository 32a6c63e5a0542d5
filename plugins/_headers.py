"""Parsing of the response headers through which vendors announce what is coming.

Shared by the probes that make HTTP requests. A malformed header never fails a check: the parser
raises ``ValueError`` with what was wrong, and the probe counts it and notes it on the span.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

__all__ = ["Lifecycle", "http_date", "parse_lifecycle"]

_SF_DATE = re.compile(r"@(-?\d{1,15})")  # RFC 9651 Date: "@" and an integer of seconds


def http_date(value: str) -> float:
    """Epoch seconds of an HTTP-date (IMF-fixdate, or the obsolete RFC 850 and asctime forms)."""
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"{value!r} is not an HTTP date") from None
    if parsed.tzinfo is None:  # asctime carries no zone; HTTP dates are GMT
        from datetime import UTC

        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """What a response says about the life of the API that sent it."""

    deprecated: bool = False
    deprecated_at: float | None = None
    sunset_at: float | None = None
    links: dict[str, str] = field(default_factory=dict)
    malformed: tuple[tuple[str, str], ...] = ()
    """(header, what was wrong) for each header that could not be read."""


def parse_lifecycle(headers: Mapping[str, str], links: dict[str, str]) -> Lifecycle:
    """Read ``Deprecation`` (RFC 9745 ``@epoch``, or the drafts' ``true`` and HTTP-date),
    ``Sunset`` (RFC 8594 HTTP-date) and the ``deprecation`` and ``sunset`` link relations."""
    get = headers.get
    malformed: list[tuple[str, str]] = []
    deprecated, deprecated_at, sunset_at = False, None, None
    raw = get("Deprecation")
    if raw is not None:
        value = raw.strip()
        if match := _SF_DATE.fullmatch(value):
            deprecated, deprecated_at = True, float(match.group(1))
        elif value.lower() == "true":
            deprecated = True
        else:
            try:
                deprecated, deprecated_at = True, http_date(value)
            except ValueError:
                malformed.append(("Deprecation", f"{value[:100]!r} is neither @epoch, true nor an HTTP date"))
    raw = get("Sunset")
    if raw is not None:
        try:
            sunset_at = http_date(raw)
        except ValueError as exc:
            malformed.append(("Sunset", str(exc)[:150]))
    wanted = {rel: url for rel, url in links.items() if rel in ("deprecation", "sunset")}
    return Lifecycle(deprecated, deprecated_at, sunset_at, wanted, tuple(malformed))
