"""Parsing of the response headers through which vendors announce what is coming.

Shared by the probes that make HTTP requests. A malformed header never fails a check: the parser
raises ``ValueError`` with what was wrong, and the probe counts it and notes it on the span. What a
note quotes of a header is passed through the probe's ``redact`` before it is cut to length.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import http_sf

from agent.sdk import clip

__all__ = ["Lifecycle", "RateLimit", "RateLimitNames", "http_date", "parse_lifecycle", "parse_ratelimit"]

_EPOCH_FLOOR = 1e9  # a reset above this is a timestamp (2001 onwards), below it a number of seconds
_MAX_WAIT = 86400.0  # never believe a vendor that asks for a back-off longer than a day
_SHOWN = 100  # characters of a malformed header quoted in its note
# Every header parse_ratelimit reads without a vendor's own names: a response with none of them
# (most responses) reports nothing, and is answered without a reader.
_RATELIMIT_HEADERS = (
    "RateLimit",
    "RateLimit-Remaining",
    "RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Limit",
    "X-Shopify-Shop-Api-Call-Limit",
    "Retry-After",
)


def _unchanged(text: str) -> str:
    return text


def _quoted(value: str, redact: Callable[[str], str]) -> str:
    """A header value as a note quotes it: redacted, cut, then ``repr``-quoted."""
    return repr(clip(value, _SHOWN, redact))


_DATE_KEPT = 64
"""The longest text whose date is kept: an HTTP-date is 24 to 33 characters."""


def http_date(value: str) -> float:
    """Epoch seconds of an HTTP-date (IMF-fixdate, or the obsolete RFC 850 and asctime forms).

    Kept per text: a target sends the same ``Last-Modified`` (or ``Sunset``) run after run, and
    parsing one costs ~6 µs. A longer text (the parser reads a date's first words only, so a
    header of a date and 100 KB besides is one) is parsed each time: kept, 512 of them could hold
    50 MB of a hostile target's making."""
    return _kept_http_date(value) if len(value) <= _DATE_KEPT else _http_date(value)


@functools.lru_cache(maxsize=512)
def _kept_http_date(value: str) -> float:
    return _http_date(value)


def _http_date(value: str) -> float:
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


_NO_LIFECYCLE = Lifecycle()
"""What a response without lifecycle headers says (most do): made once, as nothing changes it."""


def parse_lifecycle(
    headers: Mapping[str, str], links: dict[str, str], *, redact: Callable[[str], str] = _unchanged
) -> Lifecycle:
    """Read ``Deprecation`` (RFC 9745 ``@epoch``, or the drafts' ``true`` and HTTP-date),
    ``Sunset`` (RFC 8594 HTTP-date) and the ``deprecation`` and ``sunset`` link relations."""
    get = headers.get
    if not links and "Deprecation" not in headers and "Sunset" not in headers:
        return _NO_LIFECYCLE
    malformed: list[tuple[str, str]] = []
    deprecated, deprecated_at, sunset_at = False, None, None
    raw = get("Deprecation")
    if raw is not None:
        value = raw.strip()
        if value.startswith("@"):
            try:
                parsed = _sf(value, "item", redact)[0]
            except ValueError as exc:
                malformed.append(("Deprecation", str(exc)))
            else:
                if isinstance(parsed, datetime):
                    deprecated, deprecated_at = True, parsed.timestamp()
                else:
                    malformed.append(("Deprecation", f"{_quoted(value, redact)} is not a structured date"))
        elif value.lower() == "true":
            deprecated = True
        else:
            try:
                deprecated, deprecated_at = True, http_date(value)
            except ValueError:
                malformed.append(
                    ("Deprecation", f"{_quoted(value, redact)} is neither @epoch, true nor an HTTP date")
                )
    raw = get("Sunset")
    if raw is not None:
        try:
            sunset_at = http_date(raw)
        except ValueError:
            malformed.append(("Sunset", f"{_quoted(raw, redact)} is not an HTTP date"))
    wanted = {rel: url for rel, url in links.items() if rel in ("deprecation", "sunset")}
    return Lifecycle(deprecated, deprecated_at, sunset_at, wanted, tuple(malformed))


def _sf(value: str, kind: str, redact: Callable[[str], str]) -> Any:
    """A structured field value (RFC 9651), or ``ValueError`` saying what is wrong."""
    try:
        return http_sf.parse(value.encode("ascii"), tltype=kind)
    except (UnicodeEncodeError, http_sf.errors.StructuredFieldError, ValueError) as exc:
        raise ValueError(f"{_quoted(value, redact)} is not a valid structured field: {exc}") from None


@dataclass(frozen=True, slots=True)
class RateLimitNames:
    """A vendor's own header names, for those that use none of the common ones."""

    remaining: str | None = None
    limit: str | None = None
    reset: str | None = None
    used_of_limit: str | None = None


_NO_NAMES = RateLimitNames()


@dataclass(frozen=True, slots=True)
class RateLimit:
    """The rate-limit state a response reports; times are seconds from now."""

    remaining: float | None = None
    limit: float | None = None
    reset: float | None = None
    retry_after: float | None = None
    malformed: tuple[tuple[str, str], ...] = ()

    @property
    def wait(self) -> float | None:
        """How long the vendor asks to be left alone: ``Retry-After``, or the reset once spent."""
        if self.retry_after is not None:
            return min(self.retry_after, _MAX_WAIT)
        if self.remaining == 0 and self.reset is not None:
            return min(self.reset, _MAX_WAIT)
        return None


_NO_RATELIMIT = RateLimit()
"""What a response without rate-limit headers says (most do), made once."""


def parse_ratelimit(
    headers: Mapping[str, str],
    now: float,
    names: RateLimitNames | None = None,
    *,
    redact: Callable[[str], str] = _unchanged,
) -> RateLimit:
    """Read the rate-limit headers vendors send, first match wins:

    the check's own names; the IETF ``RateLimit`` and ``RateLimit-Policy`` structured fields (and
    the older dictionary form); ``RateLimit-Remaining/Limit/Reset``; ``X-RateLimit-Remaining/
    Limit/Reset`` (a reset above 10^9 is an epoch timestamp, in ms above 10^12, else seconds);
    ``used/limit`` call-limit headers (``X-Shopify-Shop-Api-Call-Limit``); and ``Retry-After``
    (seconds or an HTTP date).
    """
    if names is None or names == _NO_NAMES:
        for name in _RATELIMIT_HEADERS:
            if name in headers:
                break
        else:
            return _NO_RATELIMIT
    names = names or _NO_NAMES
    reader = _HeaderReader(headers, now, redact)
    remaining, limit, reset = reader.counts(names)
    if remaining is None:
        used = reader.used_of_limit(names.used_of_limit or "X-Shopify-Shop-Api-Call-Limit")
        if used is not None:
            remaining, limit = used
    retry_after = reader.retry_after()
    return RateLimit(remaining, limit, reset, retry_after, tuple(reader.malformed))


@dataclass(slots=True)
class _HeaderReader:
    """Reads one response's rate-limit headers, noting each malformed one in the order met."""

    headers: Mapping[str, str]
    now: float
    redact: Callable[[str], str]
    malformed: list[tuple[str, str]] = field(default_factory=list)

    def counts(self, names: RateLimitNames) -> tuple[float | None, float | None, float | None]:
        """Remaining, limit and reset from the first family of headers present, in precedence order."""
        number, until = self.number, self.until
        if names.remaining or names.limit or names.reset:
            return (
                number(names.remaining) if names.remaining else None,
                number(names.limit) if names.limit else None,
                until(number(names.reset)) if names.reset else None,
            )
        if "RateLimit" in self.headers:
            remaining, limit, reset = _ietf(self.headers, self.malformed, self.redact)
            return remaining, limit, reset
        if "RateLimit-Remaining" in self.headers or "RateLimit-Limit" in self.headers:
            remaining, limit = number("RateLimit-Remaining"), number("RateLimit-Limit")
            return remaining, limit, number("RateLimit-Reset")  # always seconds in the drafts
        if "X-RateLimit-Remaining" in self.headers or "X-RateLimit-Limit" in self.headers:
            remaining, limit = number("X-RateLimit-Remaining"), number("X-RateLimit-Limit")
            return remaining, limit, until(number("X-RateLimit-Reset"))
        return None, None, None

    def number(self, header: str) -> float | None:
        raw = self.headers.get(header)
        if raw is None:
            return None
        # Draft 03 allowed "100, 100;w=60": the first number is the one that applies now.
        head = raw.split(",", 1)[0].split(";", 1)[0].strip()
        try:
            value = float(head)
        except ValueError:
            self.malformed.append((header, f"{_quoted(raw, self.redact)} is not a number"))
            return None
        if value < 0 or value != value or value == float("inf"):
            self.malformed.append((header, f"{_quoted(raw, self.redact)} is not a count or a time"))
            return None
        return value

    def until(self, value: float | None) -> float | None:
        """Seconds from now: a reset above 10^9 is an epoch timestamp (in ms above 10^12)."""
        if value is None:
            return None
        if value >= _EPOCH_FLOOR * 1000:
            value /= 1000
        return max(0.0, value - self.now) if value >= _EPOCH_FLOOR else value

    def used_of_limit(self, header: str) -> tuple[float, float] | None:
        """Remaining and limit from a ``used/limit`` header."""
        raw = self.headers.get(header)
        if raw is None:
            return None
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", raw)
        if match and int(match.group(1)) <= int(match.group(2)):
            limit = float(match.group(2))
            return limit - float(match.group(1)), limit
        self.malformed.append((header, f"{_quoted(raw, self.redact)} is not 'used/limit'"))
        return None

    def retry_after(self) -> float | None:
        """``Retry-After`` in seconds from now, given as seconds or an HTTP date."""
        raw = self.headers.get("Retry-After")
        if raw is None:
            return None
        value = raw.strip()
        if value.isdigit():
            return float(value)
        try:
            return max(0.0, http_date(value) - self.now)
        except ValueError:
            self.malformed.append(
                ("Retry-After", f"{_quoted(value, self.redact)} is neither seconds nor an HTTP date")
            )
            return None


def _ietf(
    headers: Mapping[str, str], malformed: list[tuple[str, str]], redact: Callable[[str], str]
) -> tuple[float | None, ...]:
    """``RateLimit: "default";r=50;t=30`` with ``RateLimit-Policy: "default";q=100;w=60`` (draft 08
    on), or the older ``RateLimit: limit=100, remaining=50, reset=30``."""
    raw = headers["RateLimit"]
    remaining = limit = reset = None
    if "remaining=" in raw:
        try:
            fields = _sf(raw, "dictionary", redact)
        except ValueError as exc:
            malformed.append(("RateLimit", str(exc)))
            return None, None, None
        remaining, limit, reset = (_num(fields.get(k, (None,))[0]) for k in ("remaining", "limit", "reset"))
        return remaining, limit, reset
    try:
        items = _sf(raw, "list", redact)
    except ValueError as exc:
        malformed.append(("RateLimit", str(exc)))
        return None, None, None
    if not items:
        return None, None, None
    name, params = items[0]
    remaining, reset = _num(params.get("r")), _num(params.get("t"))
    if (policy := headers.get("RateLimit-Policy")) is not None:
        try:
            for policy_name, policy_params in _sf(policy, "list", redact):
                if policy_name == name:
                    limit = _num(policy_params.get("q"))
        except ValueError as exc:
            malformed.append(("RateLimit-Policy", str(exc)))
    return remaining, limit, reset


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
