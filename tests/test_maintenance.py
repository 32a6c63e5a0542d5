"""Maintenance windows (agent/config/maintenance.py): parsing and its errors, cron windows across
daylight saving time changes and absolute windows as pure functions of explicit times, selectors,
and the running agent's ``vantage_check_maintenance``, ``/api/checks`` and status page, served for
real with a fake clock, before and after a reload."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agent.app import Agent, build_agent
from agent.app import serve as serve_agent
from agent.cli import main
from agent.config.maintenance import FileWindow, Schedule, Window, next_window, open_window
from agent.config.settings import load_config
from agent.errors import ConfigError

from .helpers import ROOT, FakeClock, config_from

TCP = {"name": "db", "type": "tcp", "target": "127.0.0.1:9"}


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def make_window(**fields: Any) -> Window:
    """A window from fields as a check file writes them."""
    return Window.model_validate(fields)


def problems(document: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        config_from(document)
    return str(caught.value)


# ---------------------------------------------------------------- parsing and its errors


def test_windows_of_a_check_and_of_the_file_are_parsed_in_order() -> None:
    config = config_from(
        {
            "maintenance": [
                {
                    "name": "stripe",
                    "labels": {"vendor": "stripe"},
                    "start": "2026-12-01T01:00:00Z",
                    "end": "2026-12-01T03:00:00+01:00",
                },
            ],
            "checks": [
                {
                    **TCP,
                    "labels": {"vendor": "stripe"},
                    "maintenance": [
                        {
                            "name": "weekly",
                            "reason": "db upgrade",
                            "cron": "0 2 * * SUN",
                            "timezone": "Europe/Berlin",
                            "duration": "2h",
                        },
                    ],
                },
                {**TCP, "name": "plain"},
            ],
        }
    )
    db, plain = config.entries
    assert [w.name for w in db.maintenance] == ["weekly", "stripe"]
    weekly, stripe = db.maintenance
    assert (weekly.cron, weekly.timezone, weekly.duration, weekly.reason) == (
        "0 2 * * SUN",
        "Europe/Berlin",
        7200.0,
        "db upgrade",
    )
    assert (stripe.start, stripe.end) == (utc(2026, 12, 1, 1), utc(2026, 12, 1, 2))
    # A check without a window holds the empty tuple (CPython's one): nothing of its own.
    assert plain.maintenance == () and plain.check.maintenance == ()


@pytest.mark.parametrize(
    ("window", "field", "words"),
    [
        (
            {"cron": "0 25 * * SUN", "duration": "1h"},
            "maintenance[0].cron",
            "'0 25 * * SUN' is not a cron expression",
        ),
        (
            {"cron": "0 2 * * *", "timezone": "Europe/Berln", "duration": "1h"},
            "maintenance[0].timezone",
            "'Europe/Berln' is not an IANA time zone (e.g. Europe/Berlin, UTC); "
            "did you mean 'Europe/Berlin'?",
        ),
        (
            {"cron": "0 2 * * *", "timezone": "Mars/Olympus", "duration": "1h"},
            "maintenance[0].timezone",
            "'Mars/Olympus' is not an IANA time zone",
        ),
        ({"cron": "0 2 * * *", "duration": 0}, "maintenance[0].duration", "the duration must be above zero"),
        ({"cron": "0 2 * * *", "duration": "soon"}, "maintenance[0].duration", "is not a duration"),
        ({"cron": "0 2 * * *"}, "maintenance[0]", "a cron window needs a duration"),
        (
            {"start": "2026-12-01T03:00:00Z", "end": "2026-12-01T01:00:00Z"},
            "maintenance[0].end",
            "the end (2026-12-01T01:00:00Z) must be after the start (2026-12-01T03:00:00Z)",
        ),
        (
            {"start": "2026-12-01T03:00:00Z", "end": "2026-12-01T03:00:00Z"},
            "maintenance[0].end",
            "must be after",
        ),
        (
            {"start": "2026-12-01T03:00:00", "end": "2026-12-01T04:00:00Z"},
            "maintenance[0].start",
            "needs a UTC offset",
        ),
        ({"start": "2026-12-01T03:00:00Z"}, "maintenance[0]", "missing end"),
        ({"name": "x"}, "maintenance[0]", "missing cron or start"),
        (
            {"cron": "0 2 * * *", "duration": "1h", "end": "2026-12-01T03:00:00Z"},
            "maintenance[0]",
            "not both",
        ),
        (
            {"start": "2026-12-01T01:00:00Z", "end": "2026-12-01T03:00:00Z", "timezone": "UTC"},
            "maintenance[0]",
            "duration and timezone belong to a cron window",
        ),
    ],
)
def test_a_bad_window_is_an_error_naming_the_check_and_field(
    window: dict[str, Any], field: str, words: str
) -> None:
    found = problems({"checks": [{**TCP, "maintenance": [window]}]})
    assert f"check 'db' (checks[0]), field '{field}': " in found, found
    assert words in found, found


def test_a_misspelt_field_and_a_window_that_is_not_a_list_are_named() -> None:
    found = problems({"checks": [{**TCP, "maintenance": [{"crn": "0 2 * * *", "duration": "1h"}]}]})
    assert "unknown field 'maintenance[0].crn' in check 'db' (checks[0]): did you mean 'cron'?" in found
    found = problems({"checks": [{**TCP, "maintenance": {"cron": "0 2 * * *", "duration": "1h"}}]})
    assert "field 'maintenance': expected a list" in found


def test_every_bad_window_of_a_check_is_reported_at_once() -> None:
    found = problems(
        {
            "checks": [
                {
                    **TCP,
                    "maintenance": [
                        {"cron": "0 2 * * *", "duration": 0},
                        {"cron": "bad", "duration": "1h"},
                    ],
                },
                {**TCP, "name": "other", "maintenance": [{"start": "2026-12-01T01:00:00Z"}]},
            ]
        }
    )
    assert "'maintenance[0].duration'" in found and "'maintenance[1].cron'" in found
    assert "check 'other' (checks[1]), field 'maintenance[0]': missing end" in found


def test_a_file_window_needs_a_selector_and_its_errors_name_the_entry() -> None:
    window = {"start": "2026-12-01T01:00:00Z", "end": "2026-12-01T03:00:00Z"}
    found = problems({"maintenance": [window], "checks": [TCP]})
    assert "field 'maintenance[0]': say which checks it is for: checks (name patterns) and/or labels" in found
    found = problems(
        {"maintenance": [{**window, "checks": ["db"], "end": "2026-11-30T00:00:00Z"}], "checks": [TCP]}
    )
    assert "field 'maintenance[0].end': the end (2026-11-30T00:00:00Z) must be after the start" in found


def test_vantage_validate_names_the_file_line_of_a_bad_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.upper().startswith(("VANTAGE_", "OTEL_")):
            monkeypatch.delenv(name)
    path = tmp_path / "checks.yml"
    path.write_text(
        "maintenance:\n"
        "  - {labels: {vendor: stripe}, cron: '0 3 * * *', duration: 1h, timezone: America/New_Yrok}\n"
        "checks:\n"
        "  - name: db\n"
        "    type: tcp\n"
        "    target: 127.0.0.1:9\n"
        "    maintenance:\n"
        "      - {cron: '0 2 * * SUN', timezone: Europe/Berlin, duration: 0s}\n"
    )
    assert main(["validate", "--checks", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        f"({path}), line 2: field 'maintenance[0].timezone': 'America/New_Yrok' is not an IANA time zone"
        in err
    )
    assert "did you mean 'America/New_York'?" in err
    path.write_text(path.read_text().replace("New_Yrok", "New_York"))
    assert main(["validate", "--checks", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        f"({path}), line 8: check 'db' (checks[0]), field 'maintenance[0].duration': "
        "the duration must be above zero" in err
    )
    path.write_text(path.read_text().replace("duration: 0s", "duration: 2h"))
    assert main(["validate", "--checks", str(path)]) == 0, capsys.readouterr().err


def test_the_documented_example_is_valid() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    section = text.split("## Maintenance windows", 1)[1]
    example = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert example is not None
    entries = config_from(yaml.safe_load(example.group(1))).entries
    windows = {entry.check.name: [w.title for w in entry.maintenance] for entry in entries}
    assert windows == {"orders-db": ["weekly-db-upgrade"], "stripe-charges": ["stripe-db-upgrade"]}


# ---------------------------------------------------------------- cron windows and daylight saving time


def test_a_berlin_window_in_the_hour_summer_time_skips_opens_after_the_gap() -> None:
    # 2026-03-29: at 02:00 CET (01:00 UTC) the clocks go to 03:00 CEST; 02:30 does not exist.
    window = make_window(cron="30 2 * * *", timezone="Europe/Berlin", duration="1h")
    assert window.occurrence(utc(2026, 3, 28, 1, 30)) == (utc(2026, 3, 28, 1, 30), utc(2026, 3, 28, 2, 30))
    assert window.following(utc(2026, 3, 28, 12)) == (utc(2026, 3, 29, 1), utc(2026, 3, 29, 2))
    assert window.occurrence(utc(2026, 3, 29, 0, 59, 59)) is None
    assert window.occurrence(utc(2026, 3, 29, 1)) == (utc(2026, 3, 29, 1), utc(2026, 3, 29, 2))
    assert window.occurrence(utc(2026, 3, 29, 1, 59, 59)) is not None
    assert window.occurrence(utc(2026, 3, 29, 2)) is None
    # The next day, 02:30 CEST is 00:30 UTC.
    assert window.following(utc(2026, 3, 29, 2)) == (utc(2026, 3, 30, 0, 30), utc(2026, 3, 30, 1, 30))


def test_a_berlin_window_in_the_hour_winter_time_repeats_opens_once() -> None:
    # 2026-10-25: at 03:00 CEST (01:00 UTC) the clocks go back to 02:00 CET; 02:30 happens twice.
    window = make_window(cron="30 2 * * *", timezone="Europe/Berlin", duration="1h")
    assert window.following(utc(2026, 10, 24, 12)) == (utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 30))
    assert window.occurrence(utc(2026, 10, 25, 0, 29)) is None
    assert window.occurrence(utc(2026, 10, 25, 1, 10)) == (utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 30))
    # 02:30 CET, the second time the wall clock shows it: no new window.
    assert window.occurrence(utc(2026, 10, 25, 1, 30)) is None
    assert window.occurrence(utc(2026, 10, 25, 1, 45)) is None
    assert window.following(utc(2026, 10, 25, 1)) == (utc(2026, 10, 26, 1, 30), utc(2026, 10, 26, 2, 30))


def test_a_duration_is_elapsed_time_across_the_change() -> None:
    # 01:30 CEST (23:30 UTC the day before) for 2h: ends at 01:30 UTC, which is 02:30 CET.
    window = make_window(cron="30 1 25 10 *", timezone="Europe/Berlin", duration="2h")
    since, until = window.following(utc(2026, 10, 1)) or (None, None)
    assert (since, until) == (utc(2026, 10, 24, 23, 30), utc(2026, 10, 25, 1, 30))
    assert (
        until is not None
        and until.astimezone(window_zone("Europe/Berlin")).strftime("%H:%M %Z") == "02:30 CET"
    )


def window_zone(name: str) -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def test_a_new_york_window_across_both_changes() -> None:
    window = make_window(cron="30 2 * * SUN", timezone="America/New_York", duration="90m")
    # 2026-03-08: 02:00 EST (07:00 UTC) becomes 03:00 EDT; the window opens at 03:00 EDT.
    assert window.following(utc(2026, 3, 5)) == (utc(2026, 3, 8, 7), utc(2026, 3, 8, 8, 30))
    assert window.occurrence(utc(2026, 3, 8, 6, 59)) is None
    assert window.occurrence(utc(2026, 3, 8, 8, 29)) == (utc(2026, 3, 8, 7), utc(2026, 3, 8, 8, 30))
    # The Sunday before, 02:30 EST is 07:30 UTC; the one after, 02:30 EDT is 06:30 UTC.
    assert window.occurrence(utc(2026, 3, 1, 8)) == (utc(2026, 3, 1, 7, 30), utc(2026, 3, 1, 9))
    assert window.following(utc(2026, 3, 9)) == (utc(2026, 3, 15, 6, 30), utc(2026, 3, 15, 8))
    # 2026-11-01: 02:00 EDT (06:00 UTC) becomes 01:00 EST; 02:30 EST (07:30 UTC) happens once.
    assert window.following(utc(2026, 10, 30)) == (utc(2026, 11, 1, 7, 30), utc(2026, 11, 1, 9))
    assert window.occurrence(utc(2026, 11, 1, 6, 45)) is None
    assert window.occurrence(utc(2026, 11, 1, 8, 59)) is not None


def test_a_weekly_window_and_overlapping_occurrences() -> None:
    weekly = make_window(cron="0 2 * * SUN", timezone="Europe/Berlin", duration="2h")
    # Sunday 2026-11-29 02:00 CET = 01:00 UTC.
    assert weekly.occurrence(utc(2026, 11, 29, 0, 59, 59)) is None
    assert weekly.occurrence(utc(2026, 11, 29, 1)) == (utc(2026, 11, 29, 1), utc(2026, 11, 29, 3))
    assert weekly.occurrence(utc(2026, 11, 29, 3)) is None
    assert weekly.following(utc(2026, 11, 29, 3)) == (utc(2026, 12, 6, 1), utc(2026, 12, 6, 3))
    # Every two hours for three: one window, from the start of the chain to its end, each
    # followed for 100 occurrences (this one never ends: 200 hours back, 200 on).
    overlapping = make_window(cron="0 */2 * * *", duration="3h")
    assert overlapping.occurrence(utc(2026, 1, 1, 0, 30)) == (utc(2025, 12, 23, 14), utc(2026, 1, 9, 9))


# ---------------------------------------------------------------- absolute windows, several windows


def test_an_absolute_window_is_open_from_its_start_to_its_end() -> None:
    window = make_window(
        start=datetime(2026, 12, 1, 2, tzinfo=UTC) + timedelta(hours=1), end="2026-12-01T05:00:00+01:00"
    )
    assert window.occurrence(utc(2026, 12, 1, 2, 59, 59)) is None
    assert window.occurrence(utc(2026, 12, 1, 3)) == (utc(2026, 12, 1, 3), utc(2026, 12, 1, 4))
    assert window.occurrence(utc(2026, 12, 1, 4)) is None
    assert window.following(utc(2026, 12, 1)) == (utc(2026, 12, 1, 3), utc(2026, 12, 1, 4))
    assert window.following(utc(2026, 12, 1, 3)) is None  # begun: nothing to come
    assert window.title == "2026-12-01T03:00:00Z to 2026-12-01T04:00:00Z"


def test_the_open_window_is_the_one_that_ends_last_and_the_next_the_one_that_opens_first() -> None:
    short = make_window(name="short", start="2026-12-01T01:00:00Z", end="2026-12-01T02:00:00Z")
    long = make_window(name="long", start="2026-12-01T01:30:00Z", end="2026-12-01T04:00:00Z")
    daily = make_window(name="daily", cron="0 6 * * *", duration="10m")
    found = open_window([short, long, daily], utc(2026, 12, 1, 1, 45))
    assert found is not None and (found.window.name, found.since, found.until) == (
        "long",
        utc(2026, 12, 1, 1, 30),
        utc(2026, 12, 1, 4),
    )
    assert found.as_json() == {
        "name": "long",
        "reason": None,
        "since": "2026-12-01T01:30:00Z",
        "until": "2026-12-01T04:00:00Z",
    }
    assert open_window([short, long, daily], utc(2026, 12, 1, 5)) is None
    upcoming = next_window([short, long, daily], utc(2026, 12, 1, 0))
    assert upcoming is not None and upcoming.window.name == "short"
    upcoming = next_window([short, long, daily], utc(2026, 12, 1, 1, 45))
    assert upcoming is not None and (upcoming.window.name, upcoming.since) == ("daily", utc(2026, 12, 1, 6))


# ---------------------------------------------------------------- selectors


def test_selectors_pick_checks_by_name_patterns_and_labels() -> None:
    window = {"start": "2026-12-01T01:00:00Z", "end": "2026-12-01T03:00:00Z"}
    config = config_from(
        {
            "maintenance": [
                {**window, "name": "by-name", "checks": ["stripe-*", "exact"]},
                {**window, "name": "by-label", "labels": {"vendor": "stripe"}},
                {**window, "name": "both", "checks": ["*-eu"], "labels": {"vendor": "stripe", "tier": "1"}},
            ],
            "checks": [
                {**TCP, "name": "stripe-charges"},
                {**TCP, "name": "exact"},
                {**TCP, "name": "exactly"},
                {**TCP, "name": "billing", "labels": {"vendor": "stripe"}},
                {**TCP, "name": "billing-eu", "labels": {"vendor": "stripe", "tier": "1"}},
                {**TCP, "name": "other-eu", "labels": {"vendor": "adyen", "tier": "1"}},
            ],
        }
    )
    picked = {entry.check.name: [w.name for w in entry.maintenance] for entry in config.entries}
    assert picked == {
        "stripe-charges": ["by-name"],
        "exact": ["by-name"],
        "exactly": [],
        "billing": ["by-label"],
        "billing-eu": ["by-label", "both"],
        "other-eu": [],
    }


def test_checks_picked_by_one_selector_share_its_windows() -> None:
    checks = [{**TCP, "name": f"c{i}", "labels": {"vendor": "stripe"}} for i in range(50)]
    config = config_from(
        {
            "maintenance": [{"labels": {"vendor": "stripe"}, "cron": "0 2 * * *", "duration": "1h"}],
            "checks": checks,
        }
    )
    tuples = {id(entry.maintenance) for entry in config.entries}
    assert len(tuples) == 1 and len(config.entries[0].maintenance) == 1
    assert isinstance(config.entries[0].maintenance[0], FileWindow)


def test_the_schedule_keeps_only_checks_with_windows_and_follows_the_time() -> None:
    config = config_from(
        [
            {
                **TCP,
                "maintenance": [
                    {"name": "w", "start": "2026-12-01T01:00:00Z", "end": "2026-12-01T03:00:00Z"}
                ],
            },
            *({**TCP, "name": f"c{i}"} for i in range(20)),
        ]
    )
    schedule = Schedule(config.entries)
    assert len(schedule) == 1 and schedule.windows("c1") == ()
    at = utc(2026, 12, 1, 2).timestamp()
    assert schedule.open("c1", at) is None
    found = schedule.open("db", at)
    assert found is not None and found.window.name == "w"
    assert schedule.open("db", utc(2026, 12, 1, 3).timestamp()) is None
    assert schedule.open("db", at) is not None  # a clock that steps back is asked again
    assert schedule.open("db", utc(2026, 12, 1, 0).timestamp()) is None
    upcoming = schedule.next("db", utc(2026, 12, 1, 0).timestamp())
    assert upcoming is not None and upcoming.since == utc(2026, 12, 1, 1)


# ---------------------------------------------------------------- the running agent


WALL = utc(2026, 11, 29, 0, 30).timestamp()  # a Sunday, 01:30 in Berlin


def windowed_checks(duration: str = "2h") -> dict[str, Any]:
    return {
        "maintenance": [
            {
                "name": "stripe-upgrade",
                "reason": "announced",
                "labels": {"vendor": "stripe"},
                "start": "2026-11-29T02:00:00Z",
                "end": "2026-11-29T04:00:00Z",
            },
        ],
        "checks": [
            {
                **TCP,
                "name": "db",
                "maintenance": [
                    {
                        "name": "weekly-db",
                        "reason": "upgrade",
                        "cron": "0 2 * * SUN",
                        "timezone": "Europe/Berlin",
                        "duration": duration,
                    },
                ],
            },
            {**TCP, "name": "stripe", "labels": {"vendor": "stripe"}},
            {**TCP, "name": "plain", "labels": {"vendor": "acme"}},
        ],
    }


@asynccontextmanager
async def running(path: Path, clock: FakeClock) -> AsyncIterator[tuple[Agent, str]]:
    environ = {
        "VANTAGE_CHECKS_FILE": str(path),
        "VANTAGE_PORT": "0",
        "VANTAGE_HOST": "127.0.0.1",
        "VANTAGE_RELOAD_POLL_INTERVAL": "0",
        "OTEL_TRACES_EXPORTER": "none",
    }
    # The fake clock's ticks are never advanced: no run is due, the windows are what is looked at.
    agent = build_agent(load_config(environ), environ, clock=clock)
    async with anyio.create_task_group() as tg:
        port = await tg.start(partial(serve_agent, agent, handle_signals=False))
        yield agent, f"http://127.0.0.1:{port}"
        tg.cancel_scope.cancel()


def at(clock: FakeClock, moment: datetime) -> None:
    clock.now = moment.timestamp() - clock.time() + clock.now


async def scrape(agent: Agent, base: str) -> dict[str, float]:
    """``vantage_check_maintenance`` by check, from the agent's own ``/metrics``."""
    assert agent.telemetry.exposition is not None
    agent.telemetry.exposition.fresh = 0.0  # a rendering of its own, not the one of a moment ago
    async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as response:
        text = await response.text()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vantage_check_maintenance":
                found[sample.labels["check"]] = sample.value
                assert sample.labels["region"] and sample.labels["type"] == "tcp"
    return found


async def api(base: str, path: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(f"{base}{path}") as response:
        assert response.status == 200
        return await (response.json() if path.startswith("/api") else response.text())


def rewrite(path: Path, document: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(document))


@pytest.fixture
def checks_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "checks.yml"
    path.write_text(yaml.safe_dump(windowed_checks()))
    yield path


@pytest.mark.anyio
async def test_the_metric_api_and_page_show_the_open_window(checks_file: Path) -> None:
    clock = FakeClock(wall=WALL)
    async with running(checks_file, clock) as (agent, base):
        # 00:30 UTC: no window is open; every check has its series, at 0.
        assert await scrape(agent, base) == {"db": 0.0, "stripe": 0.0, "plain": 0.0}
        listed = {c["name"]: c["maintenance"] for c in (await api(base, "/api/checks"))["checks"]}
        assert listed == {"db": None, "stripe": None, "plain": None}
        # A check's page says which window comes next.
        assert (await api(base, "/api/status/db"))["next_maintenance"]["since"] == "2026-11-29T01:00:00Z"
        assert (await api(base, "/api/status/plain"))["next_maintenance"] is None
        page = await api(base, "/checks/db")
        assert "next maintenance window: weekly-db, 2026-11-29T01:00:00Z to 2026-11-29T03:00:00Z" in page

        # 01:00 UTC, 02:00 in Berlin: the weekly window opens for db.
        at(clock, utc(2026, 11, 29, 1))
        assert await scrape(agent, base) == {"db": 1.0, "stripe": 0.0, "plain": 0.0}
        db = await api(base, "/api/checks/db")
        assert db["maintenance"] == {
            "name": "weekly-db",
            "reason": "upgrade",
            "since": "2026-11-29T01:00:00Z",
            "until": "2026-11-29T03:00:00Z",
        }

        # 02:30 UTC: both; the page shows the badges and the count, the check's page the window.
        at(clock, utc(2026, 11, 29, 2, 30))
        assert await scrape(agent, base) == {"db": 1.0, "stripe": 1.0, "plain": 0.0}
        stripe = await api(base, "/api/checks/stripe")
        assert (
            stripe["maintenance"]["name"] == "stripe-upgrade"
            and stripe["maintenance"]["reason"] == "announced"
        )
        index = await api(base, "/")
        assert "2 in maintenance" in index
        assert index.count('<span class="state maintenance"') == 2
        assert 'title="announced">maintenance</span>' in index
        assert '<span class="muted">stripe-upgrade until 2026-11-29T04:00:00Z</span>' in index
        page = await api(base, "/checks/stripe")
        assert (
            "stripe-upgrade</strong> · announced · since 2026-11-29T02:00:00Z · until 2026-11-29T04:00:00Z"
            in page
        )
        plain = (await api(base, "/checks/plain")).split("</style>", 1)[1]
        assert "maintenance" not in plain and "plain" in plain
        status = {c["name"]: c["maintenance"] for c in (await api(base, "/api/status"))["checks"]}
        assert status["stripe"]["until"] == "2026-11-29T04:00:00Z" and status["plain"] is None

        # 03:00 UTC: the weekly window has closed; 04:00, the announced one too.
        at(clock, utc(2026, 11, 29, 3))
        assert await scrape(agent, base) == {"db": 0.0, "stripe": 1.0, "plain": 0.0}
        at(clock, utc(2026, 11, 29, 4))
        assert await scrape(agent, base) == {"db": 0.0, "stripe": 0.0, "plain": 0.0}
        assert "in maintenance" not in await api(base, "/")
        # A week later, it opens again.
        at(clock, utc(2026, 12, 6, 2))
        assert (await scrape(agent, base))["db"] == 1.0


@pytest.mark.anyio
async def test_a_reload_changes_the_windows_without_restarting_the_check(checks_file: Path) -> None:
    clock = FakeClock(wall=utc(2026, 11, 29, 3, 30).timestamp())
    async with running(checks_file, clock) as (agent, base):
        assert await scrape(agent, base) == {"db": 0.0, "stripe": 1.0, "plain": 0.0}
        state = agent.recorder.states["db"]
        # The weekly window now lasts 3h: db is in it again; the announced window is withdrawn.
        document = windowed_checks(duration="3h")
        document["maintenance"] = []
        rewrite(checks_file, document)
        assert agent.reloader is not None
        result = await agent.reloader.reload("test")
        assert (result.status, result.changed, result.maintenance) == ("reloaded", (), ("db", "stripe"))
        assert result.as_json()["maintenance"] == ["db", "stripe"]
        assert agent.recorder.states["db"] is state  # not restarted
        assert await scrape(agent, base) == {"db": 1.0, "stripe": 0.0, "plain": 0.0}
        assert (await api(base, "/api/checks/db"))["maintenance"]["until"] == "2026-11-29T04:00:00Z"

        # A window for a new check by its label; a removed check's series goes with it.
        document["checks"] = [c for c in document["checks"] if c["name"] != "db"]
        document["checks"].append({**TCP, "name": "stripe-2", "labels": {"vendor": "stripe"}})
        document["maintenance"] = [
            {
                "name": "late",
                "labels": {"vendor": "stripe"},
                "start": "2026-11-29T03:00:00Z",
                "end": "2026-11-29T05:00:00Z",
            }
        ]
        rewrite(checks_file, document)
        result = await agent.reloader.reload("test")
        assert (result.added, result.removed, result.maintenance) == (("stripe-2",), ("db",), ("stripe",))
        assert await scrape(agent, base) == {"stripe": 1.0, "plain": 0.0, "stripe-2": 1.0}

        # A bad window is refused: the running windows stay.
        document["maintenance"][0]["end"] = "2026-11-29T01:00:00Z"
        rewrite(checks_file, document)
        result = await agent.reloader.reload("test")
        assert result.status == "failed" and "field 'maintenance[0].end'" in result.error
        assert await scrape(agent, base) == {"stripe": 1.0, "plain": 0.0, "stripe-2": 1.0}


@pytest.mark.anyio
async def test_a_check_whose_other_fields_change_is_restarted_with_its_windows(checks_file: Path) -> None:
    clock = FakeClock(wall=utc(2026, 11, 29, 1).timestamp())
    async with running(checks_file, clock) as (agent, base):
        state = agent.recorder.states["db"]
        document = windowed_checks()
        document["checks"][0]["labels"] = {"tier": "1"}
        rewrite(checks_file, document)
        assert agent.reloader is not None
        result = await agent.reloader.reload("test")
        assert (result.changed, result.maintenance) == (("db",), ())
        assert agent.recorder.states["db"] is not state
        assert (await scrape(agent, base))["db"] == 1.0


@pytest.mark.anyio
async def test_a_log_line_of_a_check_in_a_window_names_it(
    checks_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 01:30 UTC: db (a closed port) is in its weekly window, plain in none; both fail, both are logged.
    clock = FakeClock(wall=utc(2026, 11, 29, 1, 30).timestamp())
    caplog.set_level(logging.WARNING, logger="vantage.checks")
    async with running(checks_file, clock) as (agent, _base):
        await clock.advance(61)  # every check's first tick
        with anyio.fail_after(20):
            while any(agent.recorder.states[name].runs < 1 for name in ("db", "plain")):
                await anyio.sleep(0.02)
    lines = {getattr(r, "check", ""): r for r in caplog.records if r.name == "vantage.checks"}
    # (Refused, or timed out as the fake clock jumps: either is a failure.)
    assert lines["db"].getMessage().startswith("check db is failing: ")
    assert lines["db"].getMessage().endswith(" (in maintenance window weekly-db)")
    assert getattr(lines["db"], "maintenance", None) == "weekly-db"  # a field of its own in JSON logs
    assert "maintenance" not in lines["plain"].getMessage() and not hasattr(lines["plain"], "maintenance")
    # The failure is recorded as any other: nothing is suppressed in a window.
    assert agent.recorder.states["db"].failures == 1
    assert not logging.getLogger("vantage.checks").filters  # the agent's filter went with it


def test_a_bad_window_is_reported_with_the_check_s_other_problems() -> None:
    found = problems(
        {"checks": [{**TCP, "interval": "soon", "maintenance": [{"cron": "0 2 * * *", "duration": 0}]}]}
    )
    assert (
        "field 'interval'" in found
        and "field 'maintenance[0].duration': the duration must be above zero" in found
    )


def test_the_metric_travels_over_otlp_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from .helpers import attributes, otlp_http_receiver

    with otlp_http_receiver() as (endpoint, received):
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", raising=False)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        environ = {
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_METRIC_EXPORT_INTERVAL": "3600000",
        }
        clock = FakeClock(wall=utc(2026, 11, 29, 1, 30).timestamp())
        agent = build_agent(config_from(windowed_checks()), environ, clock=clock)
        try:
            assert agent.telemetry.flush(10)
        finally:
            agent.telemetry.shutdown(5)
        found: dict[str, tuple[str, str, float]] = {}
        with received.lock:
            requests = list(received.metrics)
        for request in requests:
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        if metric.name == "vantage.check.maintenance":
                            for point in metric.gauge.data_points:
                                check = attributes(point.attributes)["check"]
                                found[check] = (metric.WhichOneof("data"), metric.unit, point.as_double)
        assert found == {"db": ("gauge", "", 1.0), "stripe": ("gauge", "", 0.0), "plain": ("gauge", "", 0.0)}


def test_the_fingerprint_of_a_check_set_counts_the_file_s_windows() -> None:
    from agent.reload import digest

    document = windowed_checks()
    before = digest(config_from(document).entries)
    document["maintenance"][0]["end"] = "2026-11-29T05:00:00Z"
    assert digest(config_from(document).entries) != before
    assert digest(config_from(windowed_checks()).entries) == before
