"""Secret references and redaction.

A check file never holds a secret itself; it refers to one: ``${NAME}`` reads the environment
variable NAME, ``${file:/path}`` reads a mounted secret file (trailing newline removed), and
``$${...}`` stands for a literal ``${...}``. Any other ``${...}`` (``${uuid}``, ``${steps.x.y}``)
is a run-time template left for the probe that owns it.

Every value resolved from a reference is remembered by the :class:`Redactor`, which scrubs it from
whatever the agent writes: spans, metric attributes, logs, the status API and error messages. A
secret is found in each of the spellings it takes on its way out: as is, percent-encoded (a URL
query, a form), JSON- or Python-escaped (a JSON body, a ``repr``) and base64-encoded.

A value of 1 to 3 characters cannot be redacted (removing every "1" or "abc" would garble what the
agent writes), so a reference that resolves to one is refused at load, as is an empty value (an
unset secret in a deployment more often than a deliberate blank).

A reference that is not one is refused too, since it would be sent as written: ``${STRIPE-KEY}``
(no variable has that name), ``$STRIPE_KEY`` (no braces) when STRIPE_KEY is set, ``${stripe_key}``
when only STRIPE_KEY is. Other forms stay run-time templates: ``${1}`` and ``${name}`` of the tcp
probe (a regular expression's groups), ``${steps.x.y}``, ``${uuid}`` and the like of a flow.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from agent.config._explain import did_you_mean
from agent.sdk.types import REDACTED
from agent.sdk.urls import redact_url

__all__ = [
    "MIN_SECRET_LENGTH",
    "Redactor",
    "SecretResolver",
    "has_reference",
    "redact_url",
    "sensitive_header",
]

MIN_SECRET_LENGTH = 4
"""Values shorter than this are not redacted (redacting "1" would garble every number)."""
_MAX_EPHEMERAL = 1024
_SENSITIVE_HEADER = re.compile(
    r"authorization|cookie|token|secret|password|passwd|signature|session|credential|jwt"
    r"|(?:^|[-_])(?:auth|(?:api[-_]?)?key)(?:[-_]|$)",
    re.I,
)
_REFERENCE = re.compile(r"\$(\$?)\{(file:[^}]+|[A-Z_][A-Z0-9_]*)\}")
_BRACED = re.compile(r"(?<!\$)\$\{([^}]*)\}")
_BARE = re.compile(r"(?<!\$)\$([A-Z_][A-Z0-9_]*)(?![A-Za-z0-9_{])")
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
_TEMPLATE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+|[a-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_-]+)+")
OFFLINE_VALUE = "offline-placeholder"
"""What a reference reads as offline: text that is valid wherever a secret usually goes (a header,
a URL's host or path); a field it does not fit is not checked further."""
RUNTIME_TEMPLATES = frozenset({"uuid", "run_id", "hook_url", "now"})
"""Templates a probe fills in at run time (``${uuid}``): never taken for a misspelt reference."""
_SYSTEM_VARIABLES = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "HOST", "HOSTNAME", "PWD", "OLDPWD", "SHELL", "SHLVL", "LANG"}
    | {"TERM", "TZ", "TMPDIR", "MAIL", "EDITOR", "DISPLAY", "_"}
)
"""Variables every process has: ``${host}`` is a tcp probe's group, ``$HOME`` text, never taken for
a misspelt reference to one of these (no check needs a secret from them)."""
_END = ""  # marks the end of a secret in the trie; a token is never empty


class Redactor:
    """Remembers secret values and removes them, in any of their spellings, from text.

    Each secret is one path in a trie of per-character patterns; a character that an encoder may
    escape (anything but ASCII letters, digits and ``-._~``) matches itself or any of its escapes
    (``%2B``, ``\\u00e9``, ``\\"``, ``\\xc3\\xa9``), so one path finds the raw, percent-encoded,
    form-encoded, JSON-escaped and ``repr`` spellings, even mixed. The base64 spellings (standard
    and URL-safe, with and without padding) are paths of their own; an ephemeral secret, which the
    agent never base64-encodes, goes without them. The trie is compiled into one regular expression
    on first use after a change: at each position it follows one path and stops at the longest
    secret it can, so a secret that contains another is removed whole.

    Base64 is found only where the secret is encoded alone: whoever encodes it with something else
    (HTTP Basic encodes ``user:password``) adds the encoded value as a secret too.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: dict[str, tuple[tuple[str, ...], ...]] = {}
        self._ephemeral: OrderedDict[str, tuple[tuple[str, ...], ...]] = OrderedDict()
        self._pattern: re.Pattern[str] | None = None
        self._dirty = False
        self._lock = threading.Lock()
        self._frozen: _Frozen | None = None
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str, *, ephemeral: bool = False) -> None:
        """Treat ``secret`` (and each of its lines) as a secret from now on.

        ``ephemeral`` secrets (access tokens that a refresh replaces) are remembered in a bounded
        set, the newest kept, so that a long-running agent's list does not grow without end.
        """
        candidates = {secret, *secret.splitlines()}
        fresh = {
            s
            for s in candidates
            if len(s.strip()) >= MIN_SECRET_LENGTH and s not in self._secrets and s not in self._ephemeral
        }
        if not fresh:
            return
        words = {s: _words(s, base64_too=not ephemeral) for s in fresh}
        with self._lock:
            if ephemeral:
                self._ephemeral.update(words)
                while len(self._ephemeral) > _MAX_EPHEMERAL:
                    self._ephemeral.popitem(last=False)
            else:
                self._secrets.update(words)
            self._dirty = True

    def _compiled(self) -> re.Pattern[str] | None:
        if self._dirty:
            with self._lock:
                if self._dirty:
                    paths = [w for ws in (*self._secrets.values(), *self._ephemeral.values()) for w in ws]
                    self._pattern = _compile(paths) if paths else None
                    self._dirty = False
        return self._pattern

    def snapshot(self) -> Redactor:
        """A redactor that knows the secrets known now, and keeps knowing them however this one
        changes: to redact later, when asked, what was made now (a refreshed OAuth token is
        forgotten here while the run that sent it is still shown). Cheap: one is made per change
        of the secrets, and shared until the next."""
        pattern = self._compiled()
        frozen = self._frozen
        if frozen is None or frozen._pattern is not pattern:
            frozen = self._frozen = _Frozen(pattern)
        return frozen

    def __contains__(self, text: str) -> bool:
        pattern = self._compiled()
        return pattern is not None and pattern.search(text) is not None

    def __call__(self, text: str) -> str:
        """Return ``text`` with every known secret, in any spelling, replaced by ``<redacted>``."""
        if not text:
            return text
        pattern = self._compiled()
        return text if pattern is None else pattern.sub(REDACTED, text)

    def deep(self, value: Any) -> Any:
        """Redact every string inside a JSON-like value."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, Mapping):
            return {self(str(k)): self.deep(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.deep(v) for v in value]
        return value


class _Frozen(Redactor):
    """A :meth:`Redactor.snapshot`: the secrets of one moment; it learns no more."""

    def __init__(self, pattern: re.Pattern[str] | None) -> None:
        super().__init__()
        self._pattern = pattern

    def add(self, secret: str, *, ephemeral: bool = False) -> None:
        raise TypeError("a snapshot of the redactor learns no secret")

    def _compiled(self) -> re.Pattern[str] | None:
        return self._pattern

    def snapshot(self) -> Redactor:
        return self


def _utf8(text: str) -> bytes:
    # An environment value that is not UTF-8 arrives with surrogate escapes; give its bytes back.
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _words(secret: str, *, base64_too: bool) -> tuple[tuple[str, ...], ...]:
    """The trie paths of a secret: its characters, then each distinct base64 spelling."""
    encoded = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode) if base64_too else ():
        text = encode(_utf8(secret)).decode("ascii")
        encoded |= {text, text.rstrip("=")}
    return tuple(tuple(_token(c) for c in word) for word in (secret, *sorted(encoded)))


def _hex(data: bytes, lead: str) -> str:
    """A regex for ``data`` as hex pairs, each led by ``lead``, in either case: ``%[cC]3%[aA]9``."""
    return "".join(
        re.escape(lead) + "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in f"{byte:02x}")
        for byte in data
    )


@lru_cache(maxsize=4096)
def _token(char: str) -> str:
    """A regex matching one character of a secret in any of the spellings the agent can write."""
    if char.isascii() and (char.isalnum() or char in "-._~"):
        return re.escape(char)  # unreserved: no encoder escapes it
    data = _utf8(char)
    literal = {char, json.dumps(char)[1:-1], json.dumps(char, ensure_ascii=False)[1:-1], repr(char)[1:-1]}
    if char in "'\"/":
        literal.add("\\" + char)  # a quote escaped by repr or JSON; JSON's optional "\/"
    if char == " ":
        literal.add("+")  # form encoding
    if not char.isascii():
        literal.add(repr(data)[2:-1])  # a bytes repr: \xc3\xa9
    patterns = {re.escape(s) for s in literal if not s.startswith("\\u")}  # \uXXXX: below, any case
    patterns.add(_hex(data, "%"))
    units = char.encode("utf-16-be", "surrogatepass")  # JSON's \uXXXX, a surrogate pair above U+FFFF
    patterns.add("".join(re.escape("\\u") + _hex(units[i : i + 2], "") for i in range(0, len(units), 2)))
    # Longest first: an escape is taken whole rather than its leading backslash alone.
    return "(?:" + "|".join(sorted(patterns, key=lambda p: (-len(p), p))) + ")"


def _compile(paths: Sequence[tuple[str, ...]]) -> re.Pattern[str]:
    """One regex for every path, as a trie: shared prefixes are matched once, the longest wins."""
    trie: dict[str, Any] = {}
    for path in paths:
        node = trie
        for token in path:
            node = node.setdefault(token, {})
        node[_END] = None
    try:
        return re.compile(_trie_pattern(trie))
    except (RecursionError, re.error):
        # A pathological set (thousands of secrets each a prefix of the next) nests too deep for
        # the trie; a plain alternation, longest first, finds the same secrets more slowly.
        ordered = sorted({"".join(p) for p in paths}, key=len, reverse=True)
        return re.compile("|".join(ordered))


def _trie_pattern(node: dict[str, Any]) -> str:
    out = []
    while True:  # a chain of single children is a plain sequence: no group, no recursion
        branches = [token for token in node if token != _END]
        if len(branches) != 1 or _END in node:
            break
        out.append(branches[0])
        node = node[branches[0]]
    if not branches:
        return "".join(out)
    alternatives = [token + _trie_pattern(node[token]) for token in sorted(branches)]
    body = alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"
    # Greedy: the longer secret is tried first, the shorter one ending here is the fallback.
    return "".join(out) + (f"(?:{body})?" if _END in node else body)


@lru_cache(maxsize=1024)
def sensitive_header(name: str) -> bool:
    """Whether a header's value is a credential by its name alone (``Authorization``, ``Set-Cookie``,
    ``X-Subject-Token``, ``X-Amz-Security-Token``, ``X-Session-Id``...): shown as ``<redacted>``
    wherever headers are shown, whatever the redactor knows."""
    return _SENSITIVE_HEADER.search(name) is not None


def has_reference(text: str) -> bool:
    """Whether ``text`` holds a secret reference (``${NAME}``, ``${file:...}``), not escaped."""
    return any(not match.group(1) for match in _REFERENCE.finditer(text))


class SecretResolver:
    """Resolves ``${NAME}`` and ``${file:/path}`` references, registering each value as a secret."""

    def __init__(
        self,
        environ: Mapping[str, str],
        redactor: Redactor,
        read_file: Callable[[str], str] | None = None,
        *,
        offline: bool = False,
    ) -> None:
        self._environ = environ
        self._redactor = redactor
        self._read_file = read_file or _read_secret_file
        self._offline = offline
        """Check each reference's form only, reading it as ``OFFLINE_VALUE`` (``validate --offline``)."""
        self._folded: dict[str, str] | None = None

    def resolve(self, text: str) -> str:
        """Replace the references in ``text``; raise ``LookupError`` naming one that cannot be used.

        A reference is refused when it is missing, not UTF-8, empty, or resolves to a value of 1
        to 3 characters: too short to be redacted, so it would be written wherever it appears;
        and text that was meant as a reference but is not one (see the module's docstring).
        Offline, references are checked for their form and left as they are.
        """
        if "$" not in text:
            return text
        problems = self._not_references(text)
        if problems:
            raise LookupError("; ".join(problems))
        if "${" not in text:
            return text
        if self._offline:
            return _REFERENCE.sub(lambda m: "${" + m.group(2) + "}" if m.group(1) else OFFLINE_VALUE, text)

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
                    hint = did_you_mean(ref, self._environ, quote="")
                    raise LookupError(
                        f"environment variable {ref} is not set" + (f"; {hint}" if hint else "")
                    ) from None
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise LookupError(f"environment variable {ref} is not valid UTF-8") from None
            if not value.strip():
                what = (
                    f"environment variable {ref}" if not ref.startswith("file:") else f"secret file {ref[5:]}"
                )
                raise LookupError(f"{what} is empty")
            if len(value.strip()) < MIN_SECRET_LENGTH:
                raise LookupError(
                    f"${{{ref}}} resolves to a value shorter than {MIN_SECRET_LENGTH} characters, "
                    "which the agent cannot redact without garbling every number it writes; "
                    "a value that is not secret belongs in the check file itself"
                )
            self._redactor.add(value)
            return value

        return _REFERENCE.sub(substitute, text)

    def _not_references(self, text: str) -> list[str]:
        """What in ``text`` was meant as a reference but is not one, each as a problem."""
        problems = []
        for match in _BRACED.finditer(text):
            inner = match.group(1)
            if inner.startswith("file:"):
                if not inner[5:].strip():
                    problems.append("${file:} names no file: write ${file:/path/to/secret}")
                continue
            if _ENV_NAME.fullmatch(inner) or inner in RUNTIME_TEMPLATES:
                continue
            if not inner.strip():
                problems.append("${} names no variable: write ${NAME}, or $${} for the text itself")
            elif _TEMPLATE_NAME.fullmatch(inner):
                meant = None if self._offline or inner in self._environ else self._fold(inner)
                if meant is not None and meant not in _SYSTEM_VARIABLES:
                    problems.append(
                        f"${{{inner}}} is not a reference (names are case-sensitive): "
                        f"did you mean ${{{meant}}}?"
                    )
            elif any(c.isupper() for c in inner):
                name = re.sub(r"[^A-Za-z0-9_]+", "_", inner.strip()).upper()
                hint = f"; did you mean ${{{name}}}?" if name in self._environ else ""
                problems.append(
                    f"${{{inner}}} cannot name an environment variable (letters, digits and '_', "
                    f"not starting with a digit){hint}"
                )
        if not self._offline:
            for match in _BARE.finditer(text):
                name = match.group(1)
                if len(name) >= 2 and name in self._environ and name not in _SYSTEM_VARIABLES:
                    problems.append(f"${name} is sent as written: write ${{{name}}} for the variable")
        return problems

    def _fold(self, name: str) -> str | None:
        """The environment variable whose name is ``name`` in another case, if one is set."""
        if self._folded is None:
            self._folded = {}
            for key in self._environ:
                self._folded.setdefault(key.lower(), key)
        return self._folded.get(name.lower())

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
    except UnicodeDecodeError as exc:
        raise LookupError(f"secret file {path} is not UTF-8 text (bad byte at offset {exc.start})") from None
