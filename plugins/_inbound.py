"""What the probes fed by inbound requests (``webhook``, ``heartbeat``) share: tokens, content
types, safe text from untrusted bodies, and the time of the last good request across restarts."""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
from pathlib import Path

from agent.plugin import InboundRequest

__all__ = ["LastSeen", "content_type_problem", "printable", "token_problem"]

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
    if not hmac.compare_digest(given.encode(), token.encode()):
        return "wrong token"
    return None


def content_type_problem(request: InboundRequest, allowed: tuple[str, ...]) -> str | None:
    """Why the request's content type is not one of ``allowed`` (``*/*`` allows any), or None."""
    if not allowed or "*/*" in allowed or not request.body:
        return None
    given = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if given in allowed:
        return None
    return f"content type {given or 'none'!r} is not accepted (expected {', '.join(allowed)})"


def printable(text: str, limit: int = 200) -> str:
    """Untrusted text made safe to show in a message: control characters folded, length capped."""
    text = _UNPRINTABLE.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


class LastSeen:
    """The time of a check's last good inbound request, kept in ``VANTAGE_STATE_DIR`` when set, so
    that a restart neither forgets a recent one nor waits a whole period to notice a missing one."""

    def __init__(self, state_dir: Path | None, kind: str, check: str) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", check)
        self._path = state_dir / f"{kind}-{safe}.json" if state_dir else None
        self.value: float | None = None
        if self._path is not None and self._path.exists():
            try:
                self.value = float(json.loads(self._path.read_text())["last"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("cannot read %s (%s); starting without it", self._path, exc)

    def update(self, when: float) -> None:
        if self.value is not None and when <= self.value:
            return
        self.value = when
        if self._path is None:
            return
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self._path.with_suffix(".tmp")
            temporary.write_text(json.dumps({"last": when}))
            os.replace(temporary, self._path)
        except OSError as exc:
            log.warning("cannot write %s (%s); a restart will not remember it", self._path, exc)
