"""Heartbeats as healthchecks.io users send them, against the agent's inbound server on loopback:
cron schedules in a time zone (lateness on a fake clock, DST as a pure function), ``/start`` paired
with its end (``?rid=`` for overlapping runs), exit codes and ``/fail``, ``max_runtime`` firing while
a run goes on, ``min_runtime``, the body's log excerpt (redacted: the job's token echoed in its
output reaches no span, log line or metric) and hostile bodies."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, quote_plus
from zoneinfo import ZoneInfo

import aiohttp
import anyio
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from agent.app import Agent, build_agent
from agent.config.secrets import Redactor
from agent.errors import ConfigError
from agent.sdk import ProbeResult, Reason
from plugins.heartbeat import LOG_KEPT, log_excerpt, next_fire

from .helpers import FakeClock, config_from, free_port
from .inbound import TELEMETRY_ENV, Running, running_agent

pytestmark = pytest.mark.anyio

TOKEN = "job-token-0123456789"
BERLIN = ZoneInfo("Europe/Berlin")
JUNE_1_03H_BERLIN = datetime(2026, 6, 1, 3, 0, tzinfo=BERLIN).timestamp()


def heartbeat(name: str, **settings: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "heartbeat",
        "target": f"{name} job",
        "interval": "1m",
        "timeout": "2s",
        "settings": {
            "token": "${JOB_TOKEN}",
            **({"period": "1d"} if "schedule" not in settings else {}),
            **settings,
        },
    }


@dataclass
class Clocked(Running):
    clock: FakeClock
    session: aiohttp.ClientSession

    async def ping(
        self, check: str, action: str = "", *, method: str = "POST", token: str = TOKEN, **kwargs: Any
    ) -> tuple[int, str]:
        url = f"{self.inbound}/heartbeat/{check}" + (f"/{action}" if action else "")
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        async with self.session.request(method, url, headers=headers, **kwargs) as response:
            return response.status, await response.text()

    async def check(self, name: str) -> ProbeResult:
        await self.agent.scheduler.run_once()
        result = self.agent.recorder.states[name].last
        assert result is not None
        return result

    def samples(self, family: str, *labels: str) -> dict[str, float]:
        """The samples of a family by sample name, with the ``labels`` named (``le``)."""
        text = self.agent.telemetry.render_prometheus().decode()
        out = {}
        for metric in text_string_to_metric_families(text):
            for sample in metric.samples:
                if metric.name == family and not sample.name.endswith("_created"):
                    shown = ",".join(f'{k}="{sample.labels[k]}"' for k in labels if k in sample.labels)
                    out[sample.name + (f"{{{shown}}}" if shown else "")] = sample.value
        return out

    def events(self, check: str) -> list[dict[str, Any]]:
        """The ``heartbeat.ping`` events on the check's run spans, oldest first."""
        return [
            dict(event.attributes or {})
            for span in self.spans.get_finished_spans()
            if (span.attributes or {}).get("vantage.check.name") == check
            for event in span.events
            if event.name == "heartbeat.ping"
        ]


@contextlib.asynccontextmanager
async def clocked_agent(
    checks: list[dict[str, Any]], env: dict[str, str] | None = None, *, wall: float = JUNE_1_03H_BERLIN
) -> AsyncIterator[Clocked]:
    """The agent on a fake clock starting at ``wall``, its inbound endpoints on loopback."""
    clock = FakeClock(wall=wall)
    port = free_port()
    config = config_from(
        checks,
        JOB_TOKEN=TOKEN,
        VANTAGE_HOST="127.0.0.1",
        VANTAGE_PORT="0",
        VANTAGE_INBOUND_PORT=str(port),
        **(env or {}),
    )
    spans = InMemorySpanExporter()
    agent: Agent = build_agent(
        config, TELEMETRY_ENV, clock=clock, span_processors=[SimpleSpanProcessor(spans)]
    )
    try:
        async with anyio.create_task_group() as tg, aiohttp.ClientSession() as session:
            await tg.start(agent.server.serve)
            yield Clocked(agent, spans, f"http://127.0.0.1:{port}", clock, session)
            tg.cancel_scope.cancel()
    finally:
        await agent.http.aclose()


# ---------------------------------------------------------------- cron schedules


def test_next_fire_follows_debian_cron_across_dst() -> None:
    def at(
        year: int, month: int, day: int, hour: int, minute: int, zone: ZoneInfo = BERLIN, fold: int = 0
    ) -> float:
        return datetime(year, month, day, hour, minute, tzinfo=zone, fold=fold).timestamp()

    def utc(when: float | None) -> str:
        assert when is not None
        return datetime.fromtimestamp(when, UTC).strftime("%m-%d %H:%M")

    # An ordinary day: 02:30 in Berlin (CEST, UTC+2) is 00:30 UTC; strictly after the last ping.
    assert utc(next_fire("30 2 * * *", BERLIN, at(2026, 6, 1, 1, 0))) == "06-01 00:30"
    assert utc(next_fire("30 2 * * *", BERLIN, at(2026, 6, 1, 2, 30))) == "06-02 00:30"
    # Spring forward (29 March 2026, 02:00 → 03:00): 02:30 does not exist; due when the clock jumps.
    assert utc(next_fire("30 2 * * *", BERLIN, at(2026, 3, 28, 12, 0))) == "03-29 01:00"
    assert utc(next_fire("30 2 * * *", BERLIN, at(2026, 3, 29, 3, 0))) == "03-30 00:30"
    # Fall back (25 October 2026, 03:00 → 02:00): 02:30 happens twice; due once, the first time.
    assert utc(next_fire("30 2 * * *", BERLIN, at(2026, 10, 24, 12, 0))) == "10-25 00:30"
    assert utc(next_fire("30 2 * * *", BERLIN, at(2026, 10, 25, 2, 40, fold=1))) == "10-26 01:30"
    # Every 30 minutes follows real time: twice in the repeated hour, none in the skipped one.
    fires, when = [], at(2026, 10, 25, 1, 50)
    for _ in range(5):
        when = next_fire("*/30 * * * *", BERLIN, when)  # type: ignore[assignment]
        fires.append(utc(when))
    assert fires == ["10-25 00:00", "10-25 00:30", "10-25 01:00", "10-25 01:30", "10-25 02:00"]
    assert utc(next_fire("*/30 * * * *", BERLIN, at(2026, 3, 29, 1, 40))) == "03-29 01:00"  # 03:00 CEST
    # The fifth Monday of a February is in 2044; midnight of days 1, 21 that are a month's last Monday, never.
    assert utc(next_fire("0 0 * 2 MON#5", ZoneInfo("UTC"), at(2026, 1, 1, 0, 0))) == "02-29 00:00"
    assert next_fire("0 0 */20 * 1L", ZoneInfo("UTC"), at(2026, 1, 1, 0, 0)) is None


async def test_a_cron_schedule_in_a_time_zone_goes_stale_after_its_grace() -> None:
    # The agent starts at 03:00 in Berlin; the job runs at 04:00 Berlin time, 10 minutes of grace.
    checks = [
        heartbeat("hourly-report", schedule="0 4 * * *", timezone="Europe/Berlin", grace="10m"),
        heartbeat("silent", schedule="0 4 * * *", timezone="Europe/Berlin", grace="10m"),
    ]
    async with clocked_agent(checks) as running:
        waiting = await running.check("silent")
        assert (await running.ping("hourly-report"))[0] == 200  # 03:00: the next is due at 04:00
        await running.clock.advance(65 * 60)  # 04:05
        on_time = await running.check("hourly-report")
        await running.clock.advance(6 * 60)  # 04:11
        late = await running.check("hourly-report")
        silent = running.agent.recorder.states["silent"].last
        assert (await running.ping("hourly-report", "0"))[0] == 200  # late, but it came: next due tomorrow
        await running.clock.advance(60)
        recovered = await running.check("hourly-report")
        await running.clock.advance(24 * 3600 - 6 * 60)  # 04:06 the next day: not due yet (grace)
        next_day = await running.check("hourly-report")
    assert waiting.success and waiting.attributes["vantage.heartbeat.first_period"] is True
    assert on_time.success, on_time.message
    assert late.reason is Reason.STALE
    assert late.message == (
        "the last ping was 1h11m ago; one was expected by 2026-06-01 04:00 CEST (schedule '0 4 * * *') "
        "(+10m grace)"
    )
    assert silent is not None and silent.reason is Reason.STALE
    assert silent.message == "no ping since the agent started 1h11m ago"
    assert recovered.success and next_day.success, (recovered.message, next_day.message)


def test_schedule_settings_are_checked_at_load() -> None:
    def load(**settings: Any) -> None:
        config_from([{**heartbeat("a"), "settings": {"token": TOKEN, **settings}}])

    with pytest.raises(ConfigError, match="exactly one of 'period'"):
        load(period="1h", schedule="0 4 * * *")
    with pytest.raises(ConfigError, match="exactly one of 'period'"):
        load()
    with pytest.raises(
        ConfigError, match=r"'schedule' '0 25 \* \* \*' is not a valid cron expression: Bad hour"
    ):
        load(schedule="0 25 * * *")
    with pytest.raises(ConfigError, match="not a cron expression of 5 fields"):
        load(schedule="*/10 * * * * *")
    with pytest.raises(ConfigError, match="'timezone' 'Europe/Berlinn' is not an IANA time zone"):
        load(schedule="0 4 * * *", timezone="Europe/Berlinn")
    with pytest.raises(ConfigError, match="is not an IANA time zone"):
        load(schedule="0 4 * * *", timezone="../../etc/passwd")
    with pytest.raises(ConfigError, match="'timezone' applies to a 'schedule'"):
        load(period="1h", timezone="Europe/Berlin")
    with pytest.raises(ConfigError, match="never fires"):
        load(schedule="0 0 */20 * 1L")
    with pytest.raises(ConfigError, match="'min_runtime' must be below 'max_runtime'"):
        load(period="1h", min_runtime="10m", max_runtime="5m")
    with pytest.raises(ConfigError, match="'max_runtime' must be positive"):
        load(period="1h", max_runtime="0s")
    load(
        schedule="0 4 * * MON-FRI",
        timezone="America/New_York",
        grace="1h",
        max_runtime="2h",
        min_runtime="1m",
    )
    # Cron's nicknames, as maintenance windows read them (agent/sdk/cron.py); @reboot is no schedule.
    load(schedule="@daily", timezone="Europe/Berlin")
    with pytest.raises(ConfigError, match="'@reboot' is not a cron expression: the nicknames are @yearly"):
        load(schedule="@reboot")


def test_a_nickname_fires_as_its_expression() -> None:
    june = datetime(2026, 6, 1, 1, 10, tzinfo=BERLIN).timestamp()
    assert next_fire("@daily", BERLIN, june) == next_fire("0 0 * * *", BERLIN, june)
    hourly = next_fire("@hourly", BERLIN, june)
    assert hourly is not None and datetime.fromtimestamp(hourly, BERLIN).strftime("%H:%M") == "02:00"


# ---------------------------------------------------------------- starts and ends


async def test_a_start_and_its_end_make_a_run_duration() -> None:
    async with clocked_agent([heartbeat("etl")]) as running:
        assert (await running.ping("etl", "start", method="GET"))[0] == 200
        started = await running.check("etl")
        await running.clock.advance(42)
        assert (await running.ping("etl", method="HEAD"))[0] == 200
        ended = await running.check("etl")
        durations = running.samples("probe_heartbeat_run_duration_seconds", "le")
        pings = running.metric("probe_heartbeat_pings")
        events = running.events("etl")
    assert started.success and started.values["probe.heartbeat.running"] == 1.0
    assert ended.success and ended.values["probe.heartbeat.running"] == 0.0
    assert durations["probe_heartbeat_run_duration_seconds_count"] == 1.0
    assert durations["probe_heartbeat_run_duration_seconds_sum"] == 42.0
    assert durations['probe_heartbeat_run_duration_seconds_bucket{le="30.0"}'] == 0.0
    assert durations['probe_heartbeat_run_duration_seconds_bucket{le="60.0"}'] == 1.0
    assert {labels["status"]: value for labels, value in pings} == {"start": 1.0, "ok": 1.0}
    assert [event["vantage.heartbeat.status"] for event in events] == ["start", "ok"]
    assert events[1]["vantage.heartbeat.run.duration"] == 42.0


async def test_run_ids_pair_the_ends_of_overlapping_runs() -> None:
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    async with clocked_agent([heartbeat("export")]) as running:
        assert (await running.ping("export", "start", params={"rid": first}))[0] == 200
        await running.clock.advance(10)
        assert (await running.ping("export", "start", params={"rid": second}))[0] == 200
        await running.clock.advance(90)
        assert (await running.ping("export", params={"rid": first.upper()}))[0] == 200  # any UUID spelling
        both_open = await running.check("export")
        await running.clock.advance(30)
        assert (await running.ping("export", "0", params={"rid": second}))[0] == 200
        # Without run ids the end pairs with the most recent start.
        assert (await running.ping("export", "start"))[0] == 200
        await running.clock.advance(5)
        assert (await running.ping("export", "start"))[0] == 200  # replaces the open one without an id
        await running.clock.advance(7)
        assert (await running.ping("export"))[0] == 200
        done = await running.check("export")
        refused = await running.ping("export", "start", params={"rid": "run-1"})
        events = running.events("export")
    durations = [
        event["vantage.heartbeat.run.duration"]
        for event in events
        if "vantage.heartbeat.run.duration" in event
    ]
    assert durations == [100.0, 120.0, 7.0]
    assert [event.get("vantage.heartbeat.rid") for event in events][:4] == [first, second, first, second]
    assert both_open.values["probe.heartbeat.running"] == 1.0
    assert done.success and done.values["probe.heartbeat.running"] == 0.0
    assert refused == (400, '{"error": "rid must be a UUID"}')


async def test_exit_codes_and_fail() -> None:
    async with clocked_agent([heartbeat("backup")]) as running:
        assert (await running.ping("backup", "0"))[0] == 200
        ok = await running.check("backup")
        output = "copying 1200 files\n\x1b[31merror: disk full\x1b[0m\n\n"
        assert (await running.ping("backup", "3", data=output.encode()))[0] == 200
        exited = await running.check("backup")
        exit_codes = running.metric("probe_heartbeat_exit_code")
        assert (await running.ping("backup", "fail", params={"message": "quota"}))[0] == 200
        failed = await running.check("backup")
        answers = [
            await running.ping("backup", "256"),
            await running.ping("backup", "abc"),
            await running.ping("backup", "start", token="wrong-token-00000000"),
            await running.ping("nope", "start"),
            await running.ping("nope", "3"),
        ]
        assert (await running.ping("backup", "log", data=b"still going"))[0] == 200
        after_log = await running.check("backup")
        pings = running.metric("probe_heartbeat_pings")
        events = running.events("backup")
    assert ok.success and ok.values["probe.heartbeat.exit_code"] == 0.0
    assert exited.reason is Reason.JOB_FAILED
    assert exited.message == "the job exited with code 3: [31merror: disk full [0m"
    assert [value for _, value in exit_codes] == [3.0]
    assert failed.reason is Reason.JOB_FAILED and failed.message == "the job reported a failure: quota"
    assert "probe.heartbeat.exit_code" in failed.values  # the last code reported stays
    assert answers[0] == (400, '{"error": "the exit code must be 0 to 255"}')
    assert answers[1][0] == 404  # not a route, whatever the check
    assert answers[2] == answers[3] == answers[4] == (401, '{"error": "rejected"}')  # nothing leaks
    assert after_log.reason is Reason.JOB_FAILED  # a log changes no verdict
    assert {labels["status"]: value for labels, value in pings} == {"ok": 1.0, "fail": 2.0, "log": 1.0}
    assert events[1]["vantage.heartbeat.exit_code"] == 3
    assert events[1]["vantage.heartbeat.log"] == "copying 1200 files\n [31merror: disk full [0m"
    assert events[-1]["vantage.heartbeat.log"] == "still going"


# ---------------------------------------------------------------- max_runtime and min_runtime


async def test_max_runtime_fails_the_check_while_the_run_goes_on() -> None:
    stuck, fresh = str(uuid.uuid4()), str(uuid.uuid4())
    async with clocked_agent([heartbeat("import", max_runtime="1h")]) as running:
        assert (await running.ping("import", "start"))[0] == 200
        await running.clock.advance(30 * 60)
        halfway = await running.check("import")
        await running.clock.advance(31 * 60)
        overdue = await running.check("import")
        await running.clock.advance(4 * 60)
        assert (await running.ping("import"))[0] == 200  # it ended after all, at 1h5m
        ended_late = await running.check("import")
        assert (await running.ping("import", "start"))[0] == 200
        await running.clock.advance(20 * 60)
        assert (await running.ping("import"))[0] == 200
        normal = await running.check("import")
        # A run that never ends (the job was killed) fails the check until a later run ends.
        assert (await running.ping("import", "start", params={"rid": stuck}))[0] == 200
        await running.clock.advance(2 * 3600)
        still_stuck = await running.check("import")
        assert (await running.ping("import", "start", params={"rid": fresh}))[0] == 200
        await running.clock.advance(60)
        assert (await running.ping("import", params={"rid": fresh}))[0] == 200
        abandoned = await running.check("import")
    assert halfway.success, halfway.message
    assert overdue.reason is Reason.RUNTIME_EXCEEDED
    assert overdue.message == "a run started 1h1m ago and has not ended; max_runtime is 1h"
    assert ended_late.reason is Reason.RUNTIME_EXCEEDED
    assert ended_late.message == "the last run took 1h5m, longer than max_runtime (1h)"
    assert normal.success, normal.message
    assert still_stuck.reason is Reason.RUNTIME_EXCEEDED
    assert still_stuck.message == f"run {stuck} started 2h ago and has not ended; max_runtime is 1h"
    assert abandoned.success and abandoned.values["probe.heartbeat.running"] == 0.0, abandoned.message


async def test_min_runtime_fails_a_run_that_succeeds_too_fast() -> None:
    async with clocked_agent([heartbeat("sync", min_runtime="1m")]) as running:
        assert (await running.ping("sync", "start"))[0] == 200
        await running.clock.advance(4)
        assert (await running.ping("sync", "0"))[0] == 200
        short = await running.check("sync")
        assert (await running.ping("sync", "start"))[0] == 200
        await running.clock.advance(2)
        assert (await running.ping("sync", "fail"))[0] == 200  # a fast failure is a failure
        fast_failure = await running.check("sync")
        assert (await running.ping("sync", "start"))[0] == 200
        await running.clock.advance(90)
        assert (await running.ping("sync"))[0] == 200
        normal = await running.check("sync")
        assert (await running.ping("sync", params={"duration": "3"}))[0] == 200  # no start: as reported
        reported = await running.check("sync")
        assert (await running.ping("sync"))[0] == 200  # no start, no duration: nothing to judge
        unknown = await running.check("sync")
    assert short.reason is Reason.RUNTIME_SHORT
    assert short.message == (
        "the last run succeeded after 4s, less than min_runtime (1m): a job that succeeds in a "
        "fraction of its usual time has usually done nothing"
    )
    assert fast_failure.reason is Reason.JOB_FAILED
    assert normal.success, normal.message
    assert reported.reason is Reason.RUNTIME_SHORT and "after 3s" in reported.message
    assert unknown.success, unknown.message


# ---------------------------------------------------------------- the log excerpt


async def test_a_secret_in_the_log_reaches_no_span_log_or_metric(caplog: pytest.LogCaptureFixture) -> None:
    secret = 'tok+en/with spaces&="0123456789?'  # one that each encoder spells its own way
    spellings = [
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        base64.b64encode(secret.encode()).decode(),
        base64.urlsafe_b64encode(secret.encode()).decode().rstrip("="),
        json.dumps({"token": secret}),
        repr(secret.encode()),
    ]
    assert len(set(spellings)) == len(spellings)
    output = "\n".join(f"line {n}: connecting with {spelling}" for n, spelling in enumerate(spellings))
    caplog.set_level(logging.DEBUG)
    check = heartbeat("leaky", token="${LEAKY_TOKEN}")
    async with clocked_agent([check], {"LEAKY_TOKEN": secret}) as running:

        async def ping(action: str = "", **kwargs: Any) -> None:
            assert (await running.ping("leaky", action, token=secret, **kwargs))[0] == 200

        await ping("start", data=output.encode())
        await ping("1", data=(output + f"\nfailed: bad token {secret}").encode())
        await ping(data={"status": "fail", "message": f"token {secret} refused"})  # the message as a field
        await ping("log", data=output.encode(), params={"message": secret})
        failed = await running.check("leaky")
        metrics = running.agent.telemetry.render_prometheus().decode()
        spans = running.spans.get_finished_spans()
        events = running.events("leaky")
    assert failed.reason is Reason.JOB_FAILED
    assert failed.message == "the job reported a failure: token <redacted> refused"
    assert events[1]["vantage.heartbeat.log"].endswith("failed: bad token <redacted>")
    assert events[0]["vantage.heartbeat.log"].count("<redacted>") == len(spellings)
    exported = json.dumps(
        [
            {
                "attributes": dict(span.attributes or {}),
                "status": span.status.description,
                "events": [dict(event.attributes or {}) for event in span.events],
            }
            for span in spans
        ]
    )
    for where in (exported, metrics, caplog.text, failed.message):
        for spelling in (*spellings, secret[:12], secret[-12:]):
            assert spelling not in where


def test_the_excerpt_is_the_last_10_kib_redacted_before_it_is_cut() -> None:
    secret = "s3cr3t-" + "x" * 393  # 400 characters, redacted to 10: the window's text shrinks
    redact = Redactor([secret])
    # The body is longer than the window the excerpt reads: the window's edge falls inside a
    # secret, and what follows is all secrets. Cut before redaction, the tail of the halved one
    # would be kept; it is not.
    tail = (secret * 800).encode()
    body = b"head\n" * 100_000 + secret.encode() + tail
    excerpt, binary = log_excerpt(body, redact)
    assert not binary and "x" * 20 not in excerpt and "s3cr3t" not in excerpt
    text = "".join(f"line {n}\n" for n in range(20_000))
    excerpt, _ = log_excerpt(text.encode(), redact)
    assert len(excerpt) <= LOG_KEPT and excerpt.endswith("line 19999")
    assert text.rstrip().endswith(excerpt)
    assert log_excerpt(bytes(range(256)) * 40, redact) == ("", True)
    controls, _ = log_excerpt("a\x1b[2Jb\u202ec\r\nd\te\x00".encode(), redact)
    assert controls == "a [2Jb c \nd\te"


async def test_hostile_bodies() -> None:
    async with clocked_agent([heartbeat("job")], {"VANTAGE_INBOUND_MAX_BODY": "64KiB"}) as running:
        # Over the limit, a heartbeat's body is cut to its tail; over 16 times the limit, refused.
        huge = await running.ping("job", "fail", data=io.BytesIO(b"x" * (16 * 64 * 1024 + 1)))
        binary = await running.ping("job", "log", data=bytes(range(256)) * 100)
        octets = await running.ping(
            "job", "start", data=b"\xff\xfe\x00garbage", headers={"Content-Type": "application/octet-stream"}
        )
        deep = b"[" * 30_000 + b"]" * 30_000  # read as a log on /fail, never parsed
        nested = await running.ping("job", "fail", data=deep, headers={"Content-Type": "application/json"})
        curl = "a=1&b=2&" * 1000  # curl --data-raw says form; it is the job's output
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        as_form = await running.ping("job", data=curl[:60_000].encode(), headers=form)
        result = await running.check("job")
        events = running.events("job")
        refused = running.metric("vantage_inbound_requests")
    assert huge == (413, '{"error": "body too large"}')
    assert binary[0] == octets[0] == nested[0] == as_form[0] == 200
    assert events[0]["vantage.heartbeat.log.binary"] is True and "vantage.heartbeat.log" not in events[0]
    assert events[0]["vantage.heartbeat.log.bytes"] == 25_600
    assert events[1]["vantage.heartbeat.log.binary"] is True
    assert (
        events[2]["vantage.heartbeat.status"] == "fail"
        and len(events[2]["vantage.heartbeat.log"]) == LOG_KEPT
    )
    assert events[3]["vantage.heartbeat.status"] == "ok"  # the form was not read as fields
    assert result.success, result.message
    too_large = [value for labels, value in refused if labels["outcome"] == "too_large"]
    assert too_large == [1.0]


async def test_a_flood_of_pings_shows_the_newest_on_the_span() -> None:
    async with clocked_agent([heartbeat("chatty")], {"VANTAGE_INBOUND_RATE": "off"}) as running:
        for n in range(20):
            assert (await running.ping("chatty", "log", data=f"step {n}".encode()))[0] == 200
        assert (await running.ping("chatty", "fail", data=b"gave up at step 20"))[0] == 200
        result = await running.check("chatty")
        events = running.events("chatty")
        pings = running.metric("probe_heartbeat_pings")
    assert [event.get("vantage.heartbeat.log") for event in events] == [
        *(f"step {n}" for n in range(5, 20)),
        "gave up at step 20",
    ]
    assert {labels["status"]: value for labels, value in pings} == {"log": 20.0, "fail": 1.0}
    assert result.message == "the job reported a failure: gave up at step 20"


async def test_replicas_pass_signals_on_to_the_owner() -> None:
    # The path after the check's name travels with the request to the replica that runs it.
    checks = [heartbeat(f"job-{n}", period="1h") for n in range(4)]
    port = free_port()
    env = {"JOB_TOKEN": TOKEN, "VANTAGE_PEER_URL": f"http://127.0.0.2{{shard}}:{port}"}
    async with (
        running_agent(checks, "127.0.0.20", port, VANTAGE_SHARD="0/2", **env) as first,
        running_agent(checks, "127.0.0.21", port, VANTAGE_SHARD="1/2", **env) as second,
    ):
        names = [*first.agent.recorder.states, *second.agent.recorder.states]
        assert sorted(names) == [f"job-{n}" for n in range(4)]
        assert first.agent.recorder.states and second.agent.recorder.states
        async with aiohttp.ClientSession() as session:
            for name in names:
                for action in ("start", "7"):
                    url = f"{first.inbound}/heartbeat/{name}/{action}"
                    async with session.post(url, params={"token": TOKEN}, data=b"out of disk") as response:
                        assert response.status == 200, await response.text()
        results = {**await first.run_once(), **await second.run_once()}
    for name in names:
        assert results[name].reason is Reason.JOB_FAILED, (name, results[name].message)
        assert results[name].message == "the job exited with code 7: out of disk"
        assert results[name].values["probe.heartbeat.running"] == 0.0
