"""What the probes fed by inbound requests (``webhook``, ``heartbeat``) share: tokens, content
types, safe text from untrusted bodies, and the time of the last good request across restarts."""

from __future__ import annotations

import hmac
import json
import logging
import re
from pathlib import Path

from agent.sdk import Clock, InboundRequest, Refusal, RefusalKind, StateFile

__all__ = ["LastSeen", "content_type_problem", "printable", "raw", "token_problem"]

log = logging.getLogger("vantage.probe")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def token_problem(request: InboundRequest, token: str) -> str | None:
    """Why the request does not carry ``token`` (``Authorization: Bearer``, ``X-Vantage-Token`` or
    ``?token=``), or None. Constant-time."""
    header = request.headers.get("Authorization", "")
    given = (
        header[7:].strip()
        if header[:7].lower() == "bearer "
        else request.headers.get("X-Vantage-Token") or request.query.get("token", "")
    )
    if not given:
        return "no token (Authorization: Bearer, X-Vantage-Token or ?token=)"
    if not hmac.compare_digest(raw(given), token.encode()):
        return "wrong token"
    return None


def raw(text: str) -> bytes:
    """``text`` from a request as bytes to compare; never raises (header bytes that are not UTF-8
    come as lone surrogates, which a plain ``encode()`` refuses)."""
    return text.encode("utf-8", "surrogatepass")


def content_type_problem(request: InboundRequest, allowed: tuple[str, ...]) -> Refusal | None:
    """Why the request's content type is not one of ``allowed`` (``*/*`` allows any), or None."""
    if not allowed or "*/*" in allowed or not request.body:
        return None
    given = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if given in allowed:
        return None
    expected = ", ".join(allowed)
    return Refusal(
        RefusalKind.CONTENT_TYPE, f"content type {given or 'none'!r} is not accepted (expected {expected})"
    )


def printable(text: str, limit: int = 200) -> str:
    """Untrusted text made safe to show in a message: control characters folded, length capped."""
    text = _UNPRINTABLE.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


class LastSeen:
    """The time of a check's last good inbound request, kept in ``VANTAGE_STATE_DIR`` when set, so
    that a restart neither forgets a recent one nor waits a whole period to notice a missing one.

    ``value`` is wall-clock time (what survives a restart); ``monotonic`` is the same moment on
    the agent's monotonic clock, for ages: a step of the wall clock does not move it."""

    def __init__(self, state_dir: Path | None, kind: str, check: str, clock: Clock | None = None) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", check)
        self._file = StateFile(state_dir / f"{kind}-{safe}.json" if state_dir else None)
        self.value: float | None = None
        self.monotonic: float | None = None
        text = self._file.read()
        if text is not None:
            try:
                self.value = float(json.loads(text)["last"])
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("cannot read %s (%s); starting without it", self._file.path, exc)
        if self.value is not None and clock is not None:
            # From the previous process: the wall clock is all there is, read once, here.
            self.monotonic = clock.monotonic() - max(0.0, clock.time() - self.value)

    def update(self, when: float, monotonic: float | None = None) -> None:
        """A good request received at ``when`` (wall clock) and ``monotonic`` (monotonic clock)."""
        if monotonic is not None and self.monotonic is not None:
            if monotonic <= self.monotonic:
                return
        elif self.value is not None and when <= self.value:
            return
        self.value, self.monotonic = when, monotonic
        self._file.write(json.dumps({"last": when}))
