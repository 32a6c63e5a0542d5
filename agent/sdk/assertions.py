"""The assertion language shared by every probe that looks at a response.

An assertion names a ``source`` (``status``, ``header``, ``body``, ``response_time``), an ``op`` and,
for most ops, a ``value``::

    - {source: status, op: in, value: [200, 201]}
    - {source: header, name: Access-Control-Allow-Origin, op: eq, value: https://shop.example}
    - {source: body, path: "$.data[0].id", op: matches, value: "^ch_"}
    - {source: body, op: schema, value: {type: object, required: [data]}}
    - {source: response_time, op: lt, value: 800ms}

``path`` is an RFC 9535 JSONPath into the JSON body. A header that came more than once (two
``Set-Cookie``) is judged on every value, as blackbox_exporter judges it: a positive op (``eq``,
``contains``, ``matches``, ...) passes when one value passes, a negative one (``ne``,
``not_contains``, ``not_matches``, ``not_in``) only when every value does. A header rule with
``allow_missing: true`` passes when the header is absent (blackbox's ``allow_missing``).

Every assertion is compiled when the configuration loads, so a bad regex, path or schema is a
configuration error, not a failed run.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr, model_validator

from agent.sdk.durations import format_duration, parse_duration
from agent.sdk.types import REDACTED

__all__ = ["Assertion", "AssertionOp", "AssertionOutcome", "AssertionSource", "Subject", "clip"]

Source = Literal["status", "header", "body", "response_time"]
Op = Literal[
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "in",
    "not_in",
    "contains",
    "not_contains",
    "matches",
    "not_matches",
    "exists",
    "not_exists",
    "schema",
]


class AssertionSource(enum.StrEnum):
    """What an assertion looked at; the value is its spelling in a check and in telemetry."""

    STATUS = "status"
    HEADER = "header"
    BODY = "body"
    RESPONSE_TIME = "response_time"
    # What the tls probe holds a certificate and a handshake to (its own settings, not this language).
    EXPIRY = "expiry"
    VERSION = "version"
    ISSUER = "issuer"
    PIN = "pin"


class AssertionOp(enum.StrEnum):
    """How an assertion compared; the value is its spelling in a check and in telemetry."""

    EQ = "eq"
    NE = "ne"
    LT = "lt"
    LE = "le"
    GT = "gt"
    GE = "ge"
    IN = "in"
    NOT_IN = "not_in"
    CONTAINS = "contains"
    NOT_CONTAINS = "not_contains"
    MATCHES = "matches"
    NOT_MATCHES = "not_matches"
    EXISTS = "exists"
    NOT_EXISTS = "not_exists"
    SCHEMA = "schema"


_ORDER_OPS = {"lt", "le", "gt", "ge"}
_NEGATIVE_OPS = {"ne", "not_in", "not_contains", "not_matches"}
_NO_VALUE_OPS = {"exists", "not_exists"}
_MAX_ACTUAL = 200
_MISSING = object()


def _unchanged(text: str) -> str:
    return text


def clip(text: str, limit: int, redact: Callable[[str], str]) -> str:
    """``text`` redacted, then cut to ``limit`` characters with a trailing "…" when cut.

    For any message that quotes what a target sent. In that order because a secret cut in two is
    found by neither half: cut first, and the half before the cut would be written out. A cut
    that would end inside a ``<redacted>`` marker is made before it, so that no half of the
    marker reads as something the target sent.
    """
    text = redact(text)
    if len(text) <= limit:
        return text
    straddling = text.find(REDACTED, max(0, limit - len(REDACTED) + 1), limit + len(REDACTED) - 1)
    return text[: straddling if straddling >= 0 else limit] + "…"


@dataclass(slots=True)
class Subject:
    """What assertions look at: one response (or delivery), with its body possibly cut at a cap.

    ``redact`` (the probe's ``ctx.redact``) is applied to what an outcome quotes of the subject
    before it is cut to length; see :func:`clip`."""

    status: int | None
    headers: Mapping[str, str]
    body: bytes
    duration: float
    truncated: bool = False
    redact: Callable[[str], str] = field(default=_unchanged, repr=False, compare=False)
    _json: Any = field(default=_MISSING, repr=False)

    def json(self) -> Any:
        """The body parsed as JSON; raises ``ValueError`` with a reason when it is not."""
        if self._json is _MISSING:
            if self.truncated:
                raise ValueError(f"the body was cut at {len(self.body)} bytes and cannot be parsed")
            try:
                self._json = json.loads(self.body)
            except json.JSONDecodeError as exc:
                # Not the parser's own text ("Expecting value: line 1 column 1 (char 0)").
                raise ValueError(f"the body is not JSON ({exc.msg.lower()} at byte {exc.pos})") from None
            except UnicodeDecodeError as exc:
                raise ValueError(f"the body is not JSON (not UTF-8 at byte {exc.start})") from None
            except RecursionError:
                raise ValueError("the body is JSON nested too deeply to read") from None
        return self._json


@dataclass(frozen=True, slots=True)
class AssertionOutcome:
    """One assertion's verdict on one response."""

    assertion: str
    passed: bool
    actual: str = ""
    message: str = ""
    source: AssertionSource | None = None
    op: AssertionOp | None = None

    @property
    def summary(self) -> str:
        """The outcome in one line that names the assertion once, for a run's failure message:
        "expected response_time lt 250ms, got 256.7ms", "body $.id exists: not present"."""
        if self.message.startswith(f"expected {self.assertion}"):
            return self.message
        return f"{self.assertion}: {self.message}" if self.message else self.assertion


class Assertion(BaseModel):
    """One assertion; see the module docstring for the language."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Source
    op: Op
    value: Any = None
    path: str | None = None
    name: str | None = None
    allow_missing: bool = False
    """A header rule that passes when the header is absent (blackbox_exporter's ``allow_missing``)."""

    _regex: re.Pattern[str] | None = PrivateAttr(default=None)
    _path: Any = PrivateAttr(default=None)
    _validator: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _compile(self) -> Assertion:
        if self.source == "header" and not self.name:
            raise ValueError("a header assertion needs the header's 'name'")
        if self.name and self.source != "header":
            raise ValueError("'name' is only for header assertions")
        if self.allow_missing and self.source != "header":
            raise ValueError("'allow_missing' is only for header assertions")
        if self.allow_missing and self.op in _NO_VALUE_OPS:
            raise ValueError(f"'allow_missing' makes no sense with op '{self.op}'")
        if self.path is not None:
            if self.source != "body":
                raise ValueError("'path' is only for body assertions")
            import jsonpath  # only checks with a JSONPath assertion pay for loading it

            try:
                self._path = jsonpath.compile(self.path)
            except jsonpath.JSONPathError as exc:
                raise ValueError(f"'path' {self.path!r} is not a valid JSONPath: {exc}") from None
        if self.op in _NO_VALUE_OPS:
            if self.value is not None:
                raise ValueError(f"op '{self.op}' takes no value")
            if self.source in ("status", "response_time"):
                raise ValueError(f"op '{self.op}' does not apply to {self.source}")
        elif self.value is None:
            raise ValueError(f"op '{self.op}' needs a 'value'")
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"op '{self.op}' needs a list as its value")
        if self.op in ("matches", "not_matches"):
            try:
                self._regex = re.compile(str(self.value))
            except re.error as exc:
                raise ValueError(f"value {self.value!r} is not a valid regular expression: {exc}") from None
        if self.op == "schema":
            if self.source != "body":
                raise ValueError("op 'schema' applies to the body only")
            if not isinstance(self.value, dict | bool):
                raise ValueError("op 'schema' needs a JSON Schema object as its value")
            import jsonschema  # only checks with a schema assertion pay for loading it

            try:
                cls = jsonschema.validators.validator_for(self.value)
                cls.check_schema(self.value)  # type: ignore[arg-type]
            except jsonschema.SchemaError as exc:
                raise ValueError(f"the JSON Schema is invalid: {exc.message}") from None
            self._validator = cls(self.value, format_checker=cls.FORMAT_CHECKER)
        if self.source == "response_time":
            if self.op not in _ORDER_OPS | {"eq", "ne"}:
                raise ValueError(f"op '{self.op}' does not apply to response_time")
            object.__setattr__(self, "value", parse_duration(self.value))
        if self.source == "status" and self.op in _ORDER_OPS and not isinstance(self.value, int):
            raise ValueError(f"op '{self.op}' on status needs a number")
        return self

    def describe(self) -> str:
        subject = {
            "status": "status",
            "header": f"header {self.name}",
            "body": f"body {self.path}" if self.path else "body",
            "response_time": "response_time",
        }[self.source]
        if self.op in _NO_VALUE_OPS:
            return f"{subject} {self.op}"
        if self.op == "schema":
            return f"{subject} matches schema"
        shown = format_duration(self.value) if self.source == "response_time" else json.dumps(self.value)
        return f"{subject} {self.op} {shown}"

    def evaluate(self, subject: Subject) -> AssertionOutcome:
        """Judge ``subject``; never raises for anything the target sent."""
        redact = subject.redact
        try:
            present, actual = self._extract(subject)
        except ValueError as exc:
            return self._outcome(False, "", str(exc))
        if self.source == "response_time":
            passed, message = self._compare(actual, redact)
            return self._outcome(passed, format_duration(round(actual, 4)), message)
        if self.op == "exists":
            return self._outcome(present, _show(actual, redact), "" if present else "not present")
        if self.op == "not_exists":
            return self._outcome(not present, _show(actual, redact), "present" if present else "")
        if not present:
            if self.allow_missing:
                return self._outcome(True, "", "")
            return self._outcome(False, "", "not present")
        if isinstance(actual, _Values):
            return self._judge_values(actual, redact)
        try:
            passed, message = self._compare(actual, redact)
        except (TypeError, ValueError) as exc:
            passed, message = False, f"cannot compare: {exc}"
        return self._outcome(passed, _show(actual, redact), message)

    def _judge_values(self, values: _Values, redact: Callable[[str], str]) -> AssertionOutcome:
        """Every value of a repeated header: one passing is enough for a positive op; a negative
        op fails on the first value that fails it (the one quoted)."""
        negative = self.op in _NEGATIVE_OPS
        for value in values:
            try:
                passed, message = self._compare(value, redact)
            except (TypeError, ValueError) as exc:
                passed, message = False, f"cannot compare: {exc}"
            if passed != negative:  # decided: a positive op passed, or a negative one failed
                return self._outcome(passed, _show(value, redact), message)
        return self._outcome(negative, _show(", ".join(values), redact), "")

    def _outcome(self, passed: bool, actual: str, message: str) -> AssertionOutcome:
        if not passed and not message:
            message = f"expected {self.describe()}, got {actual}"
        return AssertionOutcome(
            self.describe(), passed, actual, message, AssertionSource(self.source), AssertionOp(self.op)
        )

    def _extract(self, subject: Subject) -> tuple[bool, Any]:
        if self.source == "status":
            return subject.status is not None, subject.status
        if self.source == "response_time":
            return True, subject.duration
        if self.source == "header":
            getall = getattr(subject.headers, "getall", None)
            if getall is not None:
                values = getall(self.name or "", ())
                if len(values) > 1:
                    return True, _Values(values)
                return bool(values), values[0] if values else None
            value = subject.headers.get(self.name or "")
            return value is not None, value
        if self._path is None:
            if self.op == "schema":
                return True, subject.json()
            return True, subject.body.decode("utf-8", "replace")
        matches = self._path.findall(subject.json())
        if not matches:
            return False, None
        return True, matches[0] if len(matches) == 1 else matches

    def _compare(self, actual: Any, redact: Callable[[str], str]) -> tuple[bool, str]:
        op, expected = self.op, self.value
        if op == "schema":
            import jsonschema  # loaded already: _compile made the validator

            error = jsonschema.exceptions.best_match(self._validator.iter_errors(actual))
            if error is None:
                return True, ""
            where = "$" + "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in error.absolute_path)
            return (
                False,
                f"expected {self.describe()}, but at {where}: {clip(error.message, _MAX_ACTUAL, redact)}",
            )
        if op == "eq":
            return _equal(actual, expected), ""
        if op == "ne":
            return not _equal(actual, expected), ""
        if op == "in":
            return any(_equal(actual, v) for v in expected), ""
        if op == "not_in":
            return not any(_equal(actual, v) for v in expected), ""
        if op in ("contains", "not_contains"):
            found = str(expected) in actual if isinstance(actual, str) else expected in actual
            return found == (op == "contains"), ""
        if op in ("matches", "not_matches"):
            assert self._regex is not None
            found = self._regex.search(actual if isinstance(actual, str) else json.dumps(actual)) is not None
            return found == (op == "matches"), ""
        a, b = _number(actual), _number(expected)
        return {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[op], ""


class _Values(tuple[str, ...]):
    """The values of a header that came more than once, in the order they came."""

    __slots__ = ()


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    return float(value)


def _equal(actual: Any, expected: Any) -> bool:
    if actual == expected:
        return True
    # Headers and regex-free bodies are text: let 200 equal "200".
    return isinstance(actual, str) != isinstance(expected, str) and str(actual) == str(expected)


def _show(value: Any, redact: Callable[[str], str]) -> str:
    if value is None:
        return ""
    return clip(value if isinstance(value, str) else json.dumps(value, default=str), _MAX_ACTUAL, redact)
