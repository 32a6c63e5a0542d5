"""URLs fit to be written: no user info, no query values."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["redact_url"]


def redact_url(url: str, redactor: Callable[[str], str] | None = None) -> str:
    """A URL fit for a label or span: no user info, query keys kept and their values dropped."""
    out = _stripped(url)
    return redactor(out) if redactor else out


@lru_cache(maxsize=1024)
def _stripped(url: str) -> str:
    # A pure function of the URL, kept for the URLs probes send again run after run; the
    # redactor, whose secrets may change, is applied to its result every time.
    try:
        parts = urlsplit(url)
    except ValueError:
        # Not parseable (an invalid IPv6 literal): keep what comes before any user info or query.
        return re.sub(r"//[^/?#]*@", "//", re.split(r"[?#]", url, maxsplit=1)[0])
    if not parts.scheme or not parts.netloc:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    query = urlencode([(k, "") for k, _ in parse_qsl(parts.query, keep_blank_values=True)])
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
