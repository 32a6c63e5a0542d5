"""The ``sync`` probe: is data flowing between two systems, and do they agree?

It reads a value from system A and from system B, each with its own HTTP request and credentials,
and measures one of:

- ``lag`` (freshness): A's timestamp minus B's (or now minus B's, without ``a``), against
  ``max_lag``; reason ``stale`` when over it. Timestamps are ISO 8601 or epoch (milli)seconds.
- ``drift`` (consistency): |A - B| between two numbers (counts, sums), or relative to |A| with
  ``relative: true``, against ``max_drift``; reason ``assertion`` when over it.
- ``record``: one record fetched from both sides, its ``fields`` compared; the message names the
  fields that differ.

    - name: orders-to-erp
      type: sync
      target: https://shop.example
      interval: 5m
      settings:
        measure: lag
        max_lag: 15m
        a: {url: /api/orders/latest, value: "$.created_at", auth: {type: bearer, token: "${SHOP_TOKEN}"}}
        b: {url: https://erp.example/api/orders?limit=1, value: "$.items[0].imported_at"}
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
from pydantic import Field, PrivateAttr, model_validator
from yarl import URL

from agent.sdk import (
    AttributeValue,
    Check,
    Duration,
    HttpFailure,
    MetricSpec,
    Probe,
    ProbeContext,
    ProbeResult,
    ProbeSettings,
    Reason,
    Sample,
    TLSOptions,
    format_duration,
)

from ._toolkit.auth import Auth, AuthFailure, TokenCache, authorize
from ._toolkit.verdict import judge, validate_http_url

__all__ = ["SyncProbe", "SyncSettings"]

_MAX_BODY = 4 << 20


def _compile(path: str, where: str) -> Any:
    import jsonpath  # only sync checks with a JSONPath pay for loading it

    try:
        return jsonpath.compile(path)
    except jsonpath.JSONPathError as exc:
        raise ValueError(f"{where} {path!r} is not a valid JSONPath: {exc}") from None


class Side(ProbeSettings):
    """How to read one system."""

    url: str
    """Absolute, or relative to the check's target."""
    method: str = Field("GET", pattern=r"^[A-Za-z]+$")
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str] = Field(default_factory=dict)
    auth: Auth | None = None
    tls: TLSOptions = Field(default_factory=TLSOptions)
    value: str | None = None
    """JSONPath to the value compared (``lag`` and ``drift``)."""

    _value: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _paths(self) -> Side:
        if self.value is not None:
            self._value = _compile(self.value, "'value'")
        return self


class FieldPaths(ProbeSettings):
    a: str
    b: str


class SyncSettings(ProbeSettings):
    measure: Literal["lag", "drift", "record"] = "lag"
    a: Side | None = None
    """System A, the source; without it, ``lag`` is measured from now."""
    b: Side
    """System B, the copy."""
    max_lag: Duration | None = None
    max_drift: float | None = Field(None, ge=0)
    relative: bool = False
    fields: dict[str, str | FieldPaths] = Field(default_factory=dict)
    """``record``: a name for each field and its JSONPath (or ``{a: ..., b: ...}`` when they differ)."""

    _fields: dict[str, tuple[Any, Any]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _measure(self) -> SyncSettings:
        if self.measure != "lag" and self.a is None:
            raise ValueError(f"'{self.measure}' compares two systems: set 'a' as well as 'b'")
        if self.measure in ("lag", "drift"):
            for name, side in (("a", self.a), ("b", self.b)):
                if side is not None and side.value is None:
                    raise ValueError(f"'{name}' needs the JSONPath of its 'value'")
        if self.measure == "lag" and self.max_lag is None:
            raise ValueError("'lag' needs 'max_lag'")
        if self.measure == "drift" and self.max_drift is None:
            raise ValueError("'drift' needs 'max_drift'")
        if self.measure == "record":
            if not self.fields:
                raise ValueError("'record' needs the 'fields' to compare")
            for name, paths in self.fields.items():
                a, b = (paths, paths) if isinstance(paths, str) else (paths.a, paths.b)
                self._fields[name] = (_compile(a, f"field {name!r}"), _compile(b, f"field {name!r}"))
        return self


class _SideFailed(Exception):
    """A system could not be read, or its value not compared: the run's reason and message."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


class SyncProbe(Probe[SyncSettings]):
    """Compares a value, or a record, between two systems."""

    name = "sync"
    Settings = SyncSettings
    phase_metric = "probe.sync.duration"
    metrics = (
        MetricSpec.gauge("probe.sync.duration", "s", "Duration of the request to each system", "phase"),
        MetricSpec.gauge("probe.sync.lag", "s", "How far system B is behind system A (or now)"),
        MetricSpec.gauge("probe.sync.drift", "", "Difference between the values of A and B"),
        MetricSpec.gauge("probe.sync.value", "", "The value read from each system", "side", snapshot=True),
        MetricSpec.gauge("probe.sync.mismatched_fields", "", "Fields of the record that differ"),
    )

    def validate_target(self, target: str) -> None:
        validate_http_url(target)

    async def run(self, check: Check, settings: SyncSettings, ctx: ProbeContext) -> ProbeResult:
        documents: dict[str, Any] = {}
        phases: dict[str, float] = {}
        problems: list[_SideFailed] = []
        waits: list[float] = []  # back-offs the systems asked for (a 429, a spent quota)

        async def read(name: str, side: Side) -> None:
            started = ctx.clock.monotonic()
            with ctx.step(f"read {name.upper()}") as span:
                try:
                    documents[name] = await self._read(check, side, ctx, waits)
                except _SideFailed as failed:
                    span.fail(failed.reason.value, failed.message)
                    problems.append(_SideFailed(failed.reason, f"system {name.upper()}: {failed.message}"))
            phases[name] = ctx.clock.monotonic() - started

        ctx.stage = "reading both systems"
        async with anyio.create_task_group() as tg:
            if settings.a is not None:
                tg.start_soon(read, "a", settings.a)
            tg.start_soon(read, "b", settings.b)
        retry_after = max(waits, default=None)
        if problems:
            return ProbeResult.failure(
                problems[0].reason, problems[0].message, phases=phases, retry_after=retry_after
            )
        try:
            result = self._compare(settings, documents, phases, ctx.clock.time())
        except _SideFailed as failed:
            result = ProbeResult.failure(failed.reason, failed.message, phases=phases)
        return replace(result, retry_after=retry_after)

    async def _read(self, check: Check, side: Side, ctx: ProbeContext, waits: list[float]) -> Any:
        async with ctx.http(side.tls) as client:
            try:
                credential = await authorize(side.auth, client, ctx, ctx.state.get(TokenCache))
            except AuthFailure as exc:
                if exc.retry_after is not None:
                    waits.append(exc.retry_after)
                raise _SideFailed(exc.reason, exc.message) from None
            try:
                exchange = await client.request(
                    side.method,
                    str(URL(check.target).join(URL(side.url))),
                    headers={**credential.headers, **side.headers},
                    params={**credential.params, **side.query},
                    max_body=_MAX_BODY,
                )
            except HttpFailure as exc:
                raise _SideFailed(exc.reason, exc.message) from None
        verdict = judge(exchange, ctx, ctx.state.get(TokenCache))
        if verdict.retry_after is not None:
            waits.append(verdict.retry_after)
        if verdict.reason is not None:
            raise _SideFailed(verdict.reason, verdict.message)
        if exchange.truncated:
            raise _SideFailed(Reason.ASSERTION, f"the response is over {_MAX_BODY} bytes")
        try:
            return json.loads(exchange.body)
        except (ValueError, RecursionError) as exc:
            raise _SideFailed(
                Reason.ASSERTION, f"the response is not JSON ({exc or 'nested too deeply'})"
            ) from None

    def _compare(
        self, settings: SyncSettings, documents: dict[str, Any], phases: dict[str, float], now: float
    ) -> ProbeResult:
        values: dict[str, float] = {}
        samples: list[Sample] = []
        attributes: dict[str, AttributeValue] = {"vantage.sync.measure": settings.measure}
        reason: Reason | None = None
        message = ""
        if settings.measure == "record":
            differ = []
            for name, (path_a, path_b) in settings._fields.items():
                a, b = _first(path_a, documents["a"]), _first(path_b, documents["b"])
                if a != b:
                    differ.append(name)
            values["probe.sync.mismatched_fields"] = float(len(differ))
            if differ:
                reason = Reason.ASSERTION
                message = (
                    f"the systems disagree on {len(differ)} of {len(settings._fields)} fields: "
                    + ", ".join(differ)
                )
                attributes["vantage.sync.mismatched"] = ", ".join(differ)
        elif settings.measure == "lag":
            assert settings.max_lag is not None
            b = _timestamp(settings.b, documents["b"], "B")
            a = _timestamp(settings.a, documents["a"], "A") if settings.a is not None else now
            lag = a - b
            values["probe.sync.lag"] = lag
            samples.append(Sample("probe.sync.value", b, {"side": "b"}))
            if settings.a is not None:
                samples.append(Sample("probe.sync.value", a, {"side": "a"}))
            if lag > settings.max_lag:
                reason = Reason.STALE
                source = "A" if settings.a is not None else "now"
                message = (
                    f"system B is {format_duration(lag)} behind {source}, "
                    f"more than {format_duration(settings.max_lag)}"
                )
        else:
            assert settings.a is not None and settings.max_drift is not None
            a, b = _number(settings.a, documents["a"], "A"), _number(settings.b, documents["b"], "B")
            drift = abs(a - b) / abs(a) if settings.relative and a else abs(a - b)
            if settings.relative and not a:
                drift = 0.0 if not b else math.inf
            values["probe.sync.drift"] = drift
            samples += [
                Sample("probe.sync.value", a, {"side": "a"}),
                Sample("probe.sync.value", b, {"side": "b"}),
            ]
            if drift > settings.max_drift:
                reason = Reason.ASSERTION
                shown = f"{drift:.2%}" if settings.relative else f"{drift:g}"
                limit = f"{settings.max_drift:.2%}" if settings.relative else f"{settings.max_drift:g}"
                message = f"A is {a:g} and B is {b:g}: a drift of {shown}, more than {limit}"
        return ProbeResult(
            success=reason is None,
            reason=reason,
            message=message,
            phases=phases,
            values={k: v for k, v in values.items() if math.isfinite(v)},
            samples=tuple(samples),
            attributes=attributes,
        )


def _first(path: Any, document: Any) -> Any:
    found = path.findall(document)
    return found[0] if found else None


def _value(side: Side, document: Any, name: str) -> Any:
    found = side._value.findall(document)
    if not found or found[0] is None:
        raise _SideFailed(Reason.ASSERTION, f"system {name}: {side.value} is not in the response")
    return found[0]


def _number(side: Side, document: Any, name: str) -> float:
    value = _value(side, document, name)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _SideFailed(
            Reason.ASSERTION, f"system {name}: {side.value} is {value!r}, not a number"
        ) from None
    if not math.isfinite(number) or isinstance(value, bool):
        raise _SideFailed(Reason.ASSERTION, f"system {name}: {side.value} is {value!r}, not a number")
    return number


def _timestamp(side: Side, document: Any, name: str) -> float:
    value = _value(side, document, name)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return value / 1000 if value > 1e11 else float(value)  # epoch milliseconds past 1973
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            pass
        else:
            return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    raise _SideFailed(Reason.ASSERTION, f"system {name}: {side.value} is {value!r}, not a timestamp")
