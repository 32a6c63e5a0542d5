"""The one judge of an HTTP response's status, for every probe that makes HTTP requests: ``http``,
each step of a ``flow``, each side of a ``sync``, a ``webhook``'s trigger, OAuth token requests.

In order of precedence, once the status rules (or, without one, "2xx") have failed a response:

1. 401 / 403 → ``auth``, and the check's cached OAuth tokens are dropped (the next run fetches a
   fresh one: a revoked or rotated token must not be retried until it expires);
2. 429 → ``rate_limited``, with the ``Retry-After`` (or rate-limit reset) back-off in
   ``retry_after``, which the scheduler honours;
3. anything else as the status rule or the 2xx default says (``http_status``), then the first
   failing assertion (``schema`` for a schema rule, else ``assertion``).

A quota exhausted (``remaining: 0``) backs off too, whatever the status.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from agent.sdk import (
    Assertion,
    AssertionOp,
    AssertionOutcome,
    AssertionSource,
    HttpExchange,
    ProbeContext,
    Reason,
    format_duration,
)

from .headers import RateLimit, parse_ratelimit

if TYPE_CHECKING:
    from .auth import TokenCache  # auth judges its token responses here

__all__ = ["Verdict", "assertion_verdict", "judge", "validate_http_url"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a response's status and assertions say: ``reason`` None when it passes."""

    reason: Reason | None
    message: str = ""
    retry_after: float | None = None
    """Seconds the target asked the agent to wait before the next run (a 429, a spent quota)."""


def judge(
    exchange: HttpExchange,
    ctx: ProbeContext,
    tokens: TokenCache | None,
    *,
    assertions: tuple[Assertion, ...] = (),
    outcomes: tuple[AssertionOutcome, ...] = (),
    quota: RateLimit | None = None,
) -> Verdict:
    """Judge ``exchange``; drops the check's tokens from ``tokens`` on a 401 or 403.

    ``quota`` is the response's rate-limit headers when the caller read them already (with its
    own header names); otherwise they are read here.
    """
    status = exchange.status
    reason, message = assertion_verdict(assertions, outcomes, status)
    if quota is None:
        quota = parse_ratelimit(exchange.headers, ctx.clock.time(), redact=ctx.redact)
    wait = quota.wait if status == 429 or quota.remaining == 0 else None
    if reason is None:
        return Verdict(None, "", wait)
    if status in (401, 403):
        if tokens is not None:
            tokens.forget(ctx.check.name)  # the next run asks for a fresh token
        return Verdict(Reason.AUTH, _auth_message(status, exchange.headers.get("WWW-Authenticate")), wait)
    if status == 429:
        backing_off = f"; backing off for {format_duration(round(wait))}" if wait else ""
        return Verdict(Reason.RATE_LIMITED, f"HTTP 429: rate limited{backing_off}", wait)
    return Verdict(reason, message, wait)


def assertion_verdict(
    assertions: tuple[Assertion, ...], outcomes: tuple[AssertionOutcome, ...], status: int
) -> tuple[Reason | None, str]:
    """The first failure decides the reason: a status rule → ``http_status``, a schema → ``schema``."""
    if (
        not any(AssertionSource(a.source) is AssertionSource.STATUS for a in assertions)
        and not 200 <= status < 300
    ):
        return Reason.HTTP_STATUS, f"HTTP {status} (expected 2xx)"
    for outcome in outcomes:
        if outcome.passed:
            continue
        if outcome.source is AssertionSource.STATUS:
            # "HTTP 404 (expected status in [200])", as the 2xx default reads; not the status twice.
            return Reason.HTTP_STATUS, f"HTTP {status} (expected {outcome.assertion})"
        if outcome.op is AssertionOp.SCHEMA:
            return Reason.SCHEMA, outcome.summary
        return Reason.ASSERTION, outcome.summary
    return None, ""


def validate_http_url(target: str) -> None:
    """Raise ``ValueError`` unless ``target`` is an http(s) URL with a host and a valid port."""
    parts = urlsplit(target)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{target!r} is not an http:// or https:// URL")
    try:
        parts.port  # noqa: B018 - raises for a port out of range
    except ValueError:
        # Not the library's words: they quote the port, which may be part of a secret.
        raise ValueError(f"{target!r} has a bad port: use a number from 0 to 65535") from None


def _auth_message(status: int, challenge: str | None) -> str:
    if status == 401:
        message = "HTTP 401: the credential was rejected (missing, invalid, expired or revoked)"
    else:
        message = "HTTP 403: the credential was accepted but lacks the permission or scope"
    if challenge and (match := re.search(r'error="?([a-z_]+)"?', challenge)):
        message += f"; the API says {match.group(1)}"
    return message
