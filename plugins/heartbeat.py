"""The ``heartbeat`` probe: sync and batch jobs report to the agent, and the check fails when they
stop (``stale``), say they failed (``job_failed``), run too long (``runtime_exceeded``) or succeed
suspiciously fast (``runtime_short``).

    - name: nightly-inventory-sync
      type: heartbeat
      target: inventory-sync job
      interval: 1m
      settings:
        schedule: "30 2 * * *"          # or period: 24h
        timezone: Europe/Berlin
        grace: 30m
        max_runtime: 2h
        min_runtime: 1m
        token: "${INVENTORY_SYNC_PING_TOKEN}"

A job pings as it would ping healthchecks.io: ``/heartbeat/{check}/start`` when it starts, then
``/heartbeat/{check}`` (success), ``/heartbeat/{check}/fail`` or ``/heartbeat/{check}/{exit-code}``
when it ends, ``/heartbeat/{check}/log`` to send output only; ``?rid=<uuid>`` pairs a start with its
end when runs overlap. The token goes in ``Authorization: Bearer``, ``X-Vantage-Token`` or
``?token=``. The plain endpoint also takes ``status=ok|fail``, a ``message`` and the run's
``duration`` in seconds, as query parameters, a form, or a JSON object; any other body is the job's
log, whose last 10 KiB (printable, redacted) become an event on the span of the run that records
the ping::

    curl -fsS -H "Authorization: Bearer $TOKEN" "$VANTAGE/heartbeat/nightly-inventory-sync/start"
    output=$(sync-inventory 2>&1); code=$?
    curl -fsS -H "Authorization: Bearer $TOKEN" --data-raw "$output" \\
        "$VANTAGE/heartbeat/nightly-inventory-sync/$code"

Lateness is judged on the agent's monotonic clock, so that a step of the wall clock raises no
false ``stale``; a cron schedule is read on the wall clock once per ping, for the time from that
ping to the next fire.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, model_validator

from agent.sdk import (
    CRON_NICKNAMES,
    AttributeValue,
    Check,
    Duration,
    Event,
    InboundRequest,
    MetricKind,
    MetricSpec,
    Probe,
    ProbeContext,
    ProbeResult,
    ProbeSettings,
    Reason,
    Redactor,
    Refusal,
    RefusalKind,
    Sample,
    clip,
    cron_expression,
    format_duration,
)

from ._toolkit.inbound import LastSeen, content_type_problem, printable, token_problem

__all__ = ["HeartbeatProbe", "HeartbeatSettings", "log_excerpt", "next_fire"]

_CONTENT_TYPES = ("application/json", "application/x-www-form-urlencoded", "text/plain")
_STATUSES = {"": "ok", "ok": "ok", "success": "ok", "0": "ok", "fail": "fail", "failure": "fail", "1": "fail"}
_FIELDS = frozenset({"status", "message", "duration", "rid", "token"})
_OPEN_RUNS = 32
"""Started runs remembered per check, to pair with their ends; the oldest is forgotten beyond."""
_PAIRED_WITHIN = 72 * 3600.0
"""A start and an end further apart than this are unrelated (healthchecks.io's rule): without
``max_runtime``, a run started this long ago and never ended (its process killed) is forgotten."""
_EVENTS = 16
"""Pings shown as span events per run of the check (the newest); the rest are only counted."""
LOG_KEPT = 10 * 1024
"""Characters of a ping's body kept as its log excerpt: the last ones, where a job's error is."""
_LOG_MARGIN = 64 * 1024
"""Characters read before the excerpt and dropped after redaction, so that a secret cut in two by
the window is found whole (no spelling of a secret is this long)."""
_SHORT_WORDS = "a job that succeeds in a fraction of its usual time has usually done nothing"
_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, *(3600.0 * h for h in (1, 2, 4, 12, 24)))


class HeartbeatSettings(ProbeSettings):
    """Settings of a ``heartbeat`` check; the target describes the job."""

    period: Duration | None = None
    """How often the job runs: a ping is expected at least this often."""
    schedule: str | None = None
    """When the job runs, as a cron expression (5 fields, read by ``cronsim`` as healthchecks.io
    reads it): a ping is expected by the first fire time after the last ping."""
    timezone: str = "UTC"
    """The IANA time zone the ``schedule`` is read in."""
    grace: Duration = 0.0
    """Extra time allowed after the expected ping before the check goes stale."""
    max_runtime: Duration | None = None
    """A started run not ended within this fails the check (``runtime_exceeded``), while it runs."""
    min_runtime: Duration | None = None
    """A run that ends with success faster than this fails the check (``runtime_short``)."""
    token: str = Field(min_length=16)
    """The job's token (at least 16 characters); give it as ``${ENV}`` so that it is redacted."""

    @model_validator(mode="after")
    def _schedule(self) -> HeartbeatSettings:
        if (self.period is None) == (self.schedule is None):
            raise ValueError("set exactly one of 'period' (a duration) and 'schedule' (a cron expression)")
        if self.period is not None and self.period <= 0:
            raise ValueError("'period' must be positive")
        if self.schedule is None and "timezone" in self.model_fields_set:
            raise ValueError("'timezone' applies to a 'schedule'; a 'period' needs none")
        if self.schedule is not None:
            _check_schedule(self.schedule, self.timezone)
        for name in ("max_runtime", "min_runtime"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"'{name}' must be positive")
        if (
            self.max_runtime is not None
            and self.min_runtime is not None
            and self.min_runtime >= self.max_runtime
        ):
            raise ValueError("'min_runtime' must be below 'max_runtime'")
        return self


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"'timezone' {name!r} is not an IANA time zone (such as 'UTC' or 'Europe/Berlin')"
        ) from None


def _check_schedule(schedule: str, timezone: str) -> None:
    from cronsim import CronSimError

    zone = _zone(timezone)
    if schedule.strip().startswith("@") and cron_expression(schedule) == schedule:
        raise ValueError(
            f"'schedule' {schedule!r} is not a cron expression: the nicknames are {', '.join(CRON_NICKNAMES)}"
        )
    if len(cron_expression(schedule).split()) != 5:
        raise ValueError(
            f"'schedule' {schedule!r} is not a cron expression of 5 fields (minute hour day month weekday)"
        )
    try:
        if next_fire(schedule, zone, datetime.now(zone).timestamp()) is None:
            raise ValueError(f"'schedule' {schedule!r} never fires (none in the next 50 years)")
    except CronSimError as exc:
        raise ValueError(f"'schedule' {schedule!r} is not a valid cron expression: {exc}") from None


def next_fire(schedule: str, zone: ZoneInfo, after: float) -> float | None:
    """The first fire time of the cron ``schedule`` read in ``zone`` strictly after ``after`` (epoch
    seconds, to the whole second, as healthchecks.io computes it), or None when there is none
    within 50 years.

    DST as Debian's cron (and cronsim, healthchecks.io's parser): a job at a fixed time that falls
    in the hour skipped in spring is due when the clock jumps (02:30 → 03:00); in the hour repeated
    in autumn it is due once, at its first occurrence. Expressions whose minute or hour field
    starts with ``*`` (``*/15 * * * *``) follow real time: none in the skipped hour, twice in the
    repeated one."""
    from cronsim import CronSim

    try:
        fire = next(CronSim(cron_expression(schedule), datetime.fromtimestamp(after, zone)))
    except StopIteration:
        return None
    return fire.timestamp()


@dataclass(frozen=True, slots=True)
class Ping:
    action: Literal["start", "end", "log"]
    status: str
    """The ``status`` label: ``start``, ``ok``, ``fail`` or ``log``."""
    message: str
    """The message the job sent as a field; a log body's last line is read in ``run``."""
    duration: float | None
    rid: str | None = None
    exit_code: int | None = None
    log: bool = False
    """Whether the body is the job's log (text) rather than fields."""


def read_ping(request: InboundRequest) -> Ping | str:
    """The ping in a request's path, query and body, or why it cannot be read."""
    fields: dict[str, Any] = dict(request.query)
    kind = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    log = False
    if request.body:
        if kind == "application/json" and not request.action:
            try:
                document = json.loads(request.body)
            except (ValueError, RecursionError):
                return "the body is not JSON"
            if not isinstance(document, dict):
                return "the JSON body is not an object"
            fields.update(document)
        elif kind == "application/x-www-form-urlencoded" and not request.action:
            # A form of ours, or text sent with curl's --data-raw (which says it is a form): a log.
            try:
                form = parse_qsl(request.body.decode(), max_num_fields=len(_FIELDS))
            except (UnicodeDecodeError, ValueError):
                form = []
            if form and all(key in _FIELDS for key, _ in form):
                fields.update(form)
            else:
                log = True
        else:
            log = True
    rid = fields.get("rid")
    if rid is not None:
        try:
            rid = str(uuid.UUID(str(rid)))
        except ValueError:
            return "rid must be a UUID"
    duration = fields.get("duration")
    if duration is not None:
        try:
            duration = float(duration)
        except (TypeError, ValueError):
            return "duration must be a number of seconds"
        if not math.isfinite(duration) or duration < 0:
            return "duration must be a number of seconds"
    # Not cut here at all (the body limit bounds it): only when shown, after redaction. A cut first
    # halves a secret the job echoed, which the redactor then no longer knows; and once the copies
    # before it have shrunk to "<redacted>", that half is within what is shown.
    message = "" if log else printable(text := str(fields.get("message", "")), len(text))
    action = request.action
    if action == "start":
        return Ping("start", "start", message, duration, rid, log=log)
    if action == "log":
        return Ping("log", "log", message, duration, rid, log=log)
    exit_code: int | None = None
    status: str | None
    if action == "fail":
        status = "fail"
    elif action:
        exit_code = int(action)
        if exit_code > 255:
            return "the exit code must be 0 to 255"
        status = "ok" if exit_code == 0 else "fail"
    else:
        status = _STATUSES.get(str(fields.get("status", "")).strip().lower())
    if status is None:
        return "status must be ok or fail"
    return Ping("end", status, message, duration, rid, exit_code, log)


def log_excerpt(body: bytes, redact: Redactor) -> tuple[str, bool]:
    """The last ``LOG_KEPT`` characters of a ping's body, redacted, with control characters other
    than newlines and tabs folded; and whether the body is binary (then the excerpt is empty).

    The window read is wider than the excerpt and is redacted before it is cut, so that a secret
    halved by the window's edge is neither kept nor missed."""
    window = body[-4 * (LOG_KEPT + _LOG_MARGIN) :]  # at least as many characters: UTF-8 takes 1-4 bytes
    text = window.decode("utf-8", "replace")
    if text.count("\ufffd") + text.count("\x00") > len(text) // 10:
        return "", True
    text = redact(text)
    if len(window) < len(body):
        text = text[_LOG_MARGIN:]  # a secret halved at the window's edge lies in here, whole or not
    text = text[-LOG_KEPT:]
    return "".join(c if c in "\n\t" or c.isprintable() else " " for c in text).strip(), False


def _last_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()
    return ""


@dataclass(slots=True)
class _PingsSeen:
    """The pings a heartbeat check has seen, kept between its runs in the check's ``ctx.state``:
    the inbox cursor, the last start or end ping's time, the runs started and not ended, and the
    verdict on the last run that ended (which stands until the next one ends)."""

    cursor: int
    last: LastSeen
    started: float
    """When the agent started, on the monotonic clock."""
    open: dict[str | None, float] | None = None
    """Runs started and not yet ended, by run id (None: without one), oldest first: the monotonic
    time of their start. None until a check's job first sends a start."""
    verdict: tuple[Reason, str] | None = None
    reported: float | None = None
    """The duration the job reported with its last end ping."""
    exit_code: int | None = None
    due: tuple[float, float | None] | None = None
    """The schedule's next fire time after a ping (wall clock): (the ping's time, the fire time),
    kept so that a run reads the cron expression only after a new ping."""


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
        MetricSpec(
            "probe.heartbeat.run.duration",
            MetricKind.HISTOGRAM,
            "s",
            "Duration of a job's run, from its start ping to its end ping",
            buckets=_BUCKETS,
        ),
        MetricSpec.gauge("probe.heartbeat.running", "{run}", "Runs of the job started and not yet ended"),
        MetricSpec.gauge("probe.heartbeat.exit_code", "", "The exit code the job reported with its last end"),
    )

    def validate_target(self, target: str) -> None:
        if not target.strip():
            raise ValueError("the target describes the job that pings")

    def authenticate(self, check: Check, settings: HeartbeatSettings, request: InboundRequest) -> str | None:
        return token_problem(request, settings.token)

    def admit(self, check: Check, settings: HeartbeatSettings, request: InboundRequest) -> Refusal | None:
        refusal = None if request.action else content_type_problem(request, _CONTENT_TYPES)
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
        events: list[Event] = []
        pings: list[tuple[InboundRequest, Ping]] = []
        for delivery in ctx.inbox.after(check.name, tracker.cursor):
            tracker.cursor = delivery.sequence
            ping = read_ping(delivery.request) if delivery.problem is None else delivery.problem
            if not isinstance(ping, str):  # requests that failed authentication count for nothing
                pings.append((delivery.request, ping))
        if pings:
            # Written as ${ENV} the redactor knows it already (and this costs nothing); written
            # literally it did not, and a job whose output shows its own request (curl -v) put its
            # token on the span.
            ctx.redact.add(settings.token)
        # The verdict stands on the last end: its log is read for the message, shown or not.
        verdict = max((i for i, (_, ping) in enumerate(pings) if ping.action == "end"), default=-1)
        for index, (request, ping) in enumerate(pings):
            samples.append(Sample("probe.heartbeat.pings", 1.0, {"status": ping.status}))
            # Only the newest pings are shown, so only their logs are read (a flood of large
            # bodies costs no redaction).
            shown = index >= len(pings) - _EVENTS
            event = _take(tracker, settings, ping, request, ctx.redact, samples, shown or index == verdict)
            if shown:
                events.append(event)
        now = clock.monotonic()
        _forget_old(tracker, settings, now)
        values: dict[str, float] = {}
        attributes: dict[str, AttributeValue] = {}
        last = tracker.last.monotonic
        if last is not None:
            values["probe.heartbeat.age"] = max(0.0, now - last)
        if tracker.reported is not None:
            values["probe.heartbeat.job_duration"] = tracker.reported
        if tracker.exit_code is not None:
            values["probe.heartbeat.exit_code"] = float(tracker.exit_code)
        if tracker.open is not None:
            values["probe.heartbeat.running"] = float(len(tracker.open))
        reason, message = _overrun(tracker, settings, now) or _late(tracker, settings, ctx, now) or (None, "")
        if reason is None and last is None:
            attributes["vantage.heartbeat.first_period"] = True
        elif reason is None and tracker.verdict is not None:
            reason, message = tracker.verdict
        return ProbeResult(
            success=reason is None,
            reason=reason,
            message=message,
            values=values,
            samples=tuple(samples),
            attributes=attributes,
            events=tuple(events),
        )


def _take(
    tracker: _PingsSeen,
    settings: HeartbeatSettings,
    ping: Ping,
    request: InboundRequest,
    redact: Redactor,
    samples: list[Sample],
    read_log: bool,
) -> Event:
    """Count one ping in the check's state: a start opens a run, an end closes one and gives the
    verdict on it; the ping's event for the span (with the log excerpt when ``read_log``)."""
    at = request.received_monotonic
    attributes: dict[str, AttributeValue] = {"vantage.heartbeat.status": ping.status}
    if ping.rid is not None:
        attributes["vantage.heartbeat.rid"] = ping.rid
    text = ""
    if request.body and read_log:
        text, binary = log_excerpt(request.body, redact)
        attributes["vantage.heartbeat.log.bytes"] = len(request.body)
        if binary:
            attributes["vantage.heartbeat.log.binary"] = True
        elif text:
            attributes["vantage.heartbeat.log"] = text
    if ping.action == "log":
        return Event("heartbeat.ping", attributes)
    tracker.last.update(request.received, at)
    if ping.action == "start":
        runs = tracker.open if tracker.open is not None else {}
        runs.pop(ping.rid, None)  # a run started again (or a new one without an id) replaces it
        runs[ping.rid] = at
        while len(runs) > _OPEN_RUNS:
            del runs[next(iter(runs))]
        tracker.open = runs
        return Event("heartbeat.ping", attributes)
    _forget_old(tracker, settings, at)
    started = _close(tracker, settings, ping.rid, at)
    duration = None if started is None else max(0.0, at - started)
    if duration is not None:
        samples.append(Sample("probe.heartbeat.run.duration", duration))
        attributes["vantage.heartbeat.run.duration"] = duration
    if ping.exit_code is not None:
        attributes["vantage.heartbeat.exit_code"] = ping.exit_code
    tracker.exit_code = ping.exit_code if ping.exit_code is not None else tracker.exit_code
    tracker.reported = ping.duration if ping.duration is not None else tracker.reported
    words = ping.message or (_last_line(text) if ping.log else "")
    tracker.verdict = _judge(
        settings, ping, duration if duration is not None else ping.duration, words, redact
    )
    return Event("heartbeat.ping", attributes)


def _forget_old(tracker: _PingsSeen, settings: HeartbeatSettings, now: float) -> None:
    """Without ``max_runtime``, runs open for over ``_PAIRED_WITHIN`` are forgotten; with it, a
    stuck run fails the check until a later run ends (see ``_close``)."""
    if settings.max_runtime is None and tracker.open:
        for old in [rid for rid, started in tracker.open.items() if now - started > _PAIRED_WITHIN]:
            del tracker.open[old]


def _close(tracker: _PingsSeen, settings: HeartbeatSettings, rid: str | None, at: float) -> float | None:
    """The start of the run an end ping ends (its run id's, or without one the most recent), taken
    out of the open runs; runs started before it that are over ``max_runtime`` are abandoned: the
    job works again, and one stuck run should not fail the check for ever."""
    runs = tracker.open
    if not runs:
        return None
    if rid is not None:
        started = runs.pop(rid, None)
    else:
        started = runs.pop(next(reversed(runs)))
    if settings.max_runtime is not None:
        before = started if started is not None else at
        for stuck in [k for k, t in runs.items() if t < before and at - t > settings.max_runtime]:
            del runs[stuck]
    return started


def _judge(
    settings: HeartbeatSettings, ping: Ping, duration: float | None, words: str, redact: Redactor
) -> tuple[Reason, str] | None:
    """The verdict on a run that ended: what the job said, then how long it took."""
    detail = f": {clip(words, 200, redact)}" if words else ""
    if ping.status == "fail":
        if ping.exit_code is not None:
            return Reason.JOB_FAILED, f"the job exited with code {ping.exit_code}{detail}"
        return Reason.JOB_FAILED, f"the job reported a failure{detail}"
    if duration is None:
        return None
    if settings.max_runtime is not None and duration > settings.max_runtime:
        return Reason.RUNTIME_EXCEEDED, (
            f"the last run took {format_duration(duration)}, longer than max_runtime "
            f"({format_duration(settings.max_runtime)})"
        )
    if settings.min_runtime is not None and duration < settings.min_runtime:
        return Reason.RUNTIME_SHORT, (
            f"the last run succeeded after {format_duration(duration)}, less than min_runtime "
            f"({format_duration(settings.min_runtime)}): {_SHORT_WORDS}"
        )
    return None


def _overrun(tracker: _PingsSeen, settings: HeartbeatSettings, now: float) -> tuple[Reason, str] | None:
    """A run still going past ``max_runtime``: the oldest one."""
    if settings.max_runtime is None or not tracker.open:
        return None
    rid, started = min(tracker.open.items(), key=lambda item: item[1])
    if now - started <= settings.max_runtime:
        return None
    which = f"run {rid}" if rid is not None else "a run"
    return Reason.RUNTIME_EXCEEDED, (
        f"{which} started {format_duration(now - started)} ago and has not ended; max_runtime is "
        f"{format_duration(settings.max_runtime)}"
    )


def _late(
    tracker: _PingsSeen, settings: HeartbeatSettings, ctx: ProbeContext, now: float
) -> tuple[Reason, str] | None:
    """No ping by the time one was expected, plus the grace."""
    last, last_wall = tracker.last.monotonic, tracker.last.value
    since_mono, since_wall = (last, last_wall) if last is not None else (tracker.started, ctx.started)
    assert since_mono is not None and since_wall is not None
    grace = f" (+{format_duration(settings.grace)} grace)" if settings.grace else ""
    if settings.period is not None:
        due = since_mono + settings.period
        expected = f"one is expected every {format_duration(settings.period)}{grace}"
    else:
        assert settings.schedule is not None
        zone = ZoneInfo(settings.timezone)
        if tracker.due is None or tracker.due[0] != since_wall:
            tracker.due = (since_wall, next_fire(settings.schedule, zone, since_wall))
        fire = tracker.due[1]
        if fire is None:
            return None
        # The wall clock says how far the next fire is from the ping; the monotonic clock, how much
        # time has passed since.
        due = since_mono + (fire - since_wall)
        when = datetime.fromtimestamp(fire, zone).strftime("%Y-%m-%d %H:%M %Z")
        expected = f"one was expected by {when} (schedule {settings.schedule!r}){grace}"
    if now <= due + settings.grace:
        return None
    if last is None:
        return Reason.STALE, f"no ping since the agent started {format_duration(now - since_mono)} ago"
    return Reason.STALE, f"the last ping was {format_duration(now - last)} ago; {expected}"
