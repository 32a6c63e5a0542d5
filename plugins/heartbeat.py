"""The ``heartbeat`` probe: sync and batch jobs report to the agent, and the check fails when they
stop (``stale``) or say they failed (``job_failed``).

    - name: nightly-inventory-sync
      type: heartbeat
      target: inventory-sync job
      interval: 1m
      settings: {period: 24h, grace: 30m, token: "${INVENTORY_SYNC_PING_TOKEN}"}

A job pings ``/heartbeat/{check}`` with ``GET`` or ``POST``, the token in ``Authorization: Bearer``,
``X-Vantage-Token`` or ``?token=``, and optionally ``status=ok|fail``, a ``message`` and the run's
``duration`` in seconds, as query parameters, a form, or a JSON object::

    curl -fsS -H "Authorization: Bearer $TOKEN" \\
        "$VANTAGE/heartbeat/nightly-inventory-sync?status=ok&duration=312"
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from pydantic import Field, model_validator

from agent.sdk import (
    AttributeValue,
    Check,
    Duration,
    InboundRequest,
    MetricKind,
    MetricSpec,
    Probe,
    ProbeContext,
    ProbeResult,
    ProbeSettings,
    Reason,
    Refusal,
    RefusalKind,
    Sample,
    clip,
    format_duration,
)

from ._toolkit.inbound import LastSeen, content_type_problem, printable, token_problem

__all__ = ["HeartbeatProbe", "HeartbeatSettings"]

_MESSAGE_KEPT = 4096
_CONTENT_TYPES = ("application/json", "application/x-www-form-urlencoded", "text/plain")
_STATUSES = {"": "ok", "ok": "ok", "success": "ok", "0": "ok", "fail": "fail", "failure": "fail", "1": "fail"}


class HeartbeatSettings(ProbeSettings):
    """Settings of a ``heartbeat`` check; the target describes the job."""

    period: Duration
    """How often the job runs: a ping is expected at least this often."""
    grace: Duration = 0.0
    """Extra time allowed after a period before the check goes stale."""
    token: str = Field(min_length=16)
    """The job's token (at least 16 characters); give it as ``${ENV}`` so that it is redacted."""

    @model_validator(mode="after")
    def _period(self) -> HeartbeatSettings:
        if self.period <= 0:
            raise ValueError("'period' must be positive")
        return self


@dataclass(frozen=True, slots=True)
class Ping:
    status: str
    message: str
    duration: float | None


def read_ping(request: InboundRequest) -> Ping | str:
    """The ping in a request's query and body, or why it cannot be read."""
    fields: dict[str, Any] = dict(request.query)
    kind = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if request.body:
        if kind == "application/json":
            try:
                document = json.loads(request.body)
            except (ValueError, RecursionError):
                return "the body is not JSON"
            if not isinstance(document, dict):
                return "the JSON body is not an object"
            fields.update(document)
        elif kind == "application/x-www-form-urlencoded":
            try:
                fields.update(parse_qsl(request.body.decode(), max_num_fields=20))
            except (UnicodeDecodeError, ValueError):
                return "the form body cannot be read"
        else:
            fields.setdefault("message", request.body.decode("utf-8", "replace"))
    status = _STATUSES.get(str(fields.get("status", "")).strip().lower())
    if status is None:
        return "status must be ok or fail"
    duration = fields.get("duration")
    if duration is not None:
        try:
            duration = float(duration)
        except (TypeError, ValueError):
            return "duration must be a number of seconds"
        if not math.isfinite(duration) or duration < 0:
            return "duration must be a number of seconds"
    # Capped loosely here and cut to size only when shown, after redaction: a cut first could
    # halve a secret the job echoed, and the redactor would no longer know it.
    return Ping(status, printable(str(fields.get("message", "")), _MESSAGE_KEPT), duration)


@dataclass
class _PingsSeen:
    """The pings a heartbeat check has seen, kept between its runs in the check's ``ctx.state``:
    the inbox cursor, the last ping's time and what it reported."""

    cursor: int
    last: LastSeen
    started: float
    """When the agent started, on the monotonic clock."""
    ping: Ping | None = None


class HeartbeatProbe(Probe[HeartbeatSettings]):
    """Watches the pings of a job."""

    name = "heartbeat"
    Settings = HeartbeatSettings
    inbound = "heartbeat"
    metrics = (
        MetricSpec.gauge("probe.heartbeat.age", "s", "Time since the last ping when the check ran"),
        MetricSpec.gauge("probe.heartbeat.job_duration", "s", "Duration the job reported with its last ping"),
        MetricSpec(
            "probe.heartbeat.pings",
            MetricKind.COUNTER,
            "{ping}",
            "Pings received, by the status the job reported",
            ("status",),
        ),
    )

    def validate_target(self, target: str) -> None:
        if not target.strip():
            raise ValueError("the target describes the job that pings")

    def authenticate(self, check: Check, settings: HeartbeatSettings, request: InboundRequest) -> str | None:
        return token_problem(request, settings.token)

    def admit(self, check: Check, settings: HeartbeatSettings, request: InboundRequest) -> Refusal | None:
        refusal = content_type_problem(request, _CONTENT_TYPES)
        if refusal is None and isinstance(ping := read_ping(request), str):
            refusal = Refusal(RefusalKind.UNREADABLE, ping)
        return refusal

    async def run(self, check: Check, settings: HeartbeatSettings, ctx: ProbeContext) -> ProbeResult:
        if ctx.inbox is None:
            return ProbeResult.failure(Reason.INTERNAL, "this agent has no inbox for heartbeats")
        clock = ctx.clock

        def first_seen() -> _PingsSeen:
            # Ages are measured on the monotonic clock, so that a step of the wall clock (NTP, a
            # resumed VM) raises no false "stale".
            seen = LastSeen(ctx.state_dir, "heartbeat", check.name, clock)
            return _PingsSeen(0, seen, ctx.started_monotonic)

        tracker = ctx.state.get(_PingsSeen, first_seen)
        samples: list[Sample] = []
        for delivery in ctx.inbox.after(check.name, tracker.cursor):
            tracker.cursor = delivery.sequence
            ping = read_ping(delivery.request) if delivery.problem is None else delivery.problem
            if isinstance(ping, str):
                continue
            tracker.ping = ping
            tracker.last.update(delivery.request.received, delivery.request.received_monotonic)
            samples.append(Sample("probe.heartbeat.pings", 1.0, {"status": ping.status}))
        now = clock.monotonic()
        last = tracker.last.monotonic
        allowed = settings.period + settings.grace
        values: dict[str, float] = {}
        attributes: dict[str, AttributeValue] = {}
        if last is not None:
            values["probe.heartbeat.age"] = max(0.0, now - last)
        if tracker.ping is not None and tracker.ping.duration is not None:
            values["probe.heartbeat.job_duration"] = tracker.ping.duration
        reason: Reason | None = None
        message = ""
        if last is None:
            if now - tracker.started > allowed:
                reason = Reason.STALE
                message = f"no ping since the agent started {format_duration(now - tracker.started)} ago"
            else:
                attributes["vantage.heartbeat.first_period"] = True
        elif now - last > allowed:
            reason = Reason.STALE
            grace = f" (+{format_duration(settings.grace)} grace)" if settings.grace else ""
            message = (
                f"the last ping was {format_duration(now - last)} ago; one is expected every "
                f"{format_duration(settings.period)}{grace}"
            )
        elif tracker.ping is not None and tracker.ping.status == "fail":
            reason = Reason.JOB_FAILED
            detail = f": {clip(tracker.ping.message, 200, ctx.redact)}" if tracker.ping.message else ""
            message = f"the job reported a failure{detail}"
        return ProbeResult(
            success=reason is None,
            reason=reason,
            message=message,
            values=values,
            samples=tuple(samples),
            attributes=attributes,
        )
