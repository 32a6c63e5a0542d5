"""Secret references and redaction.

A check file never holds a secret itself; it refers to one: ``${NAME}`` reads the environment
variable NAME, ``${file:/path}`` reads a mounted secret file (trailing newline removed), and
``$${...}`` stands for a literal ``${...}``. Any other ``${...}`` (``${uuid}``, ``${steps.x.y}``)
is a run-time template left for the probe that owns it.

Every value resolved from a reference is remembered by the :class:`Redactor`, which scrubs it from
whatever the agent writes: spans, metric attributes, logs, the status API and error messages.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["REDACTED", "Redactor", "SecretResolver", "redact_url"]

REDACTED = "<redacted>"
# Values shorter than this are not treated as secrets (redacting "1" would garble every number).
_MIN_SECRET_LEN = 4
_MAX_EPHEMERAL = 1024
_REFERENCE = re.compile(r"\$(\$?)\{(file:[^}]+|[A-Z_][A-Z0-9_]*)\}")


class Redactor:
    """Remembers secret values and removes them from text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._ephemeral: OrderedDict[str, None] = OrderedDict()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str, *, ephemeral: bool = False) -> None:
        """Treat ``secret`` (and each of its lines) as a secret from now on.

        ``ephemeral`` secrets (access tokens that a refresh replaces) are remembered in a bounded
        set, the newest kept, so that a long-running agent's list does not grow without end.
        """
        candidates = {secret, *secret.splitlines()}
        fresh = {s for s in candidates if len(s.strip()) >= _MIN_SECRET_LEN} - self._secrets
        fresh -= self._ephemeral.keys()
        if not fresh:
            return
        with self._lock:
            if ephemeral:
                for item in fresh:
                    self._ephemeral[item] = None
                while len(self._ephemeral) > _MAX_EPHEMERAL:
                    self._ephemeral.popitem(last=False)
            else:
                self._secrets |= fresh
            # Longest first, so that a secret containing another is removed whole.
            ordered = sorted(self._secrets | self._ephemeral.keys(), key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def __contains__(self, text: str) -> bool:
        return self._pattern is not None and self._pattern.search(text) is not None

    def __call__(self, text: str) -> str:
        """Return ``text`` with every known secret replaced by ``<redacted>``."""
        pattern = self._pattern
        if pattern is None or not text:
            return text
        return pattern.sub(REDACTED, text)

    def deep(self, value: Any) -> Any:
        """Redact every string inside a JSON-like value."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, Mapping):
            return {self(str(k)): self.deep(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.deep(v) for v in value]
        return value


class SecretResolver:
    """Resolves ``${NAME}`` and ``${file:/path}`` references, registering each value as a secret."""

    def __init__(
        self,
        environ: Mapping[str, str],
        redactor: Redactor,
        read_file: Callable[[str], str] | None = None,
    ) -> None:
        self._environ = environ
        self._redactor = redactor
        self._read_file = read_file or _read_secret_file

    def resolve(self, text: str) -> str:
        """Replace the references in ``text``; raise ``LookupError`` naming a missing one."""
        if "${" not in text:
            return text

        def substitute(match: re.Match[str]) -> str:
            escaped, ref = match.groups()
            if escaped:
                return "${" + ref + "}"
            if ref.startswith("file:"):
                value = self._read_file(ref[5:])
            else:
                try:
                    value = self._environ[ref]
                except KeyError:
                    raise LookupError(f"environment variable {ref} is not set") from None
            self._redactor.add(value)
            return value

        return _REFERENCE.sub(substitute, text)

    def resolve_tree(self, value: Any, path: str = "") -> Any:
        """Resolve references in every string of a JSON-like document.

        A ``LookupError`` names the dotted path of the field whose reference failed.
        """
        if isinstance(value, str):
            try:
                return self.resolve(value)
            except LookupError as exc:
                raise LookupError(f"{path}: {exc}" if path else str(exc)) from None
        if isinstance(value, Mapping):
            return {k: self.resolve_tree(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve_tree(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value


def _read_secret_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise LookupError(f"secret file {path} cannot be read ({exc.strerror})") from None


def redact_url(url: str, redactor: Redactor | None = None) -> str:
    """A URL fit for a label or span: no user info, query keys kept and their values dropped."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redactor(url) if redactor else url
    if not parts.scheme or not parts.netloc:
        return redactor(url) if redactor else url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    query = urlencode([(k, "") for k, _ in parse_qsl(parts.query, keep_blank_values=True)])
    out = urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    return redactor(out) if redactor else out
