"""Review of maintenance windows (agent/config/maintenance.py): the edges a hostile user finds —
times at the ends of what a date holds, nicknames of cron, a day a time zone skipped, references
in the check file's own windows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.config.checks import CheckEntry
from agent.config.maintenance import Open, Schedule, Window
from agent.errors import ConfigError
from agent.sdk.types import Check
from agent.server.pages import render_check, render_index

from .helpers import config_from

TCP = {"name": "db", "type": "tcp", "target": "127.0.0.1:9"}


def problems(document: dict[str, Any], **env: str) -> str:
    with pytest.raises(ConfigError) as caught:
        config_from(document, **env)
    return str(caught.value)


@pytest.mark.parametrize(
    ("window", "field", "words"),
    [
        # 9999-12-31T20:00-05:00 is in the year 10000 in UTC: the API and pages would fail on it
        (
            {"start": "2026-01-01T00:00:00Z", "end": "9999-12-31T20:00:00-05:00"},
            "maintenance[0].end",
            "between the years 1 and 9999 in UTC",
        ),
        (
            {"start": "0001-01-01T00:00:00+01:00", "end": "2026-01-01T00:00:00Z"},
            "maintenance[0].start",
            "between the years 1 and 9999 in UTC",
        ),
        ({"cron": "0 2 * * *", "duration": "400000d"}, "maintenance[0].duration", "at most 366d"),
    ],
)
def test_a_time_out_of_a_date_s_range_is_refused(window: dict[str, Any], field: str, words: str) -> None:
    found = problems({"checks": [{**TCP, "maintenance": [window]}]})
    assert f"field '{field}': " in found, found
    assert words in found, found


def test_a_window_that_ends_in_the_last_year_a_date_holds_is_shown() -> None:
    window = Window.model_validate({"start": "2026-01-01T00:00:00Z", "end": "9999-12-31T18:00:00-05:00"})
    at = datetime(2026, 11, 29, tzinfo=UTC)
    occurrence = window.occurrence(at)
    assert occurrence is not None
    assert Open(window, *occurrence).as_json()["until"] == "9999-12-31T23:00:00Z"
    assert window.title == "2026-01-01T00:00:00Z to 9999-12-31T23:00:00Z"


def test_references_in_the_file_s_windows_are_resolved_and_redacted() -> None:
    window = {
        "name": "vendor ${TOKEN}",
        "reason": "<b>${TOKEN}</b>",
        "labels": {"vendor": "${VENDOR}"},
        "start": "2020-01-01T00:00:00Z",
        "end": "2100-01-01T00:00:00Z",
    }
    document = {"maintenance": [window], "checks": [{**TCP, "labels": {"vendor": "${VENDOR}"}}]}
    config = config_from(document, TOKEN="supersecret123", VENDOR="stripe")
    (entry,) = config.entries
    assert entry.check.labels["vendor"] == "stripe"
    (picked,) = entry.maintenance  # the selector's reference read as the check's is
    occurrence = picked.occurrence(datetime(2026, 11, 29, tzinfo=UTC))
    assert occurrence is not None
    shown = config.redactor.deep(Open(picked, *occurrence).as_json())
    assert "supersecret123" not in repr(shown)
    assert shown["name"].startswith("vendor ") and shown["reason"].startswith("<b>")


def test_a_missing_reference_in_the_file_s_windows_is_an_error_naming_the_field() -> None:
    window = {"name": "n", "labels": {"vendor": "${NO_SUCH_VARIABLE}"}, "cron": "0 2 * * *", "duration": "1h"}
    found = problems({"maintenance": [window], "checks": [TCP]})
    assert "field 'maintenance[0].labels.vendor': environment variable NO_SUCH_VARIABLE is not set" in found


@pytest.mark.parametrize(
    ("nickname", "expression"),
    [
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@hourly", "0 * * * *"),
    ],
)
def test_cron_nicknames_read_as_debian_s_cron_reads_them(nickname: str, expression: str) -> None:
    at = datetime(2026, 3, 28, 12, 34, tzinfo=UTC)
    named = Window.model_validate({"cron": nickname, "timezone": "Europe/Berlin", "duration": "1h"})
    written = Window.model_validate({"cron": expression, "timezone": "Europe/Berlin", "duration": "1h"})
    assert named.following(at) == written.following(at)
    assert named.title.startswith(nickname)


def test_a_nickname_cron_does_not_know_is_refused() -> None:
    found = problems({"checks": [{**TCP, "maintenance": [{"cron": "@reboot", "duration": "1h"}]}]})
    assert "field 'maintenance[0].cron': " in found and "@reboot" in found, found


def test_a_six_field_expression_is_read_on_the_wall_clock_as_documented() -> None:
    window = Window.model_validate({"cron": "0 30 2 * * *", "timezone": "Europe/Berlin", "duration": "1m"})
    # the day the clocks go forward: no 02:30; the next is the day after, 02:30 CEST
    assert window.following(datetime(2026, 3, 28, 12, tzinfo=UTC)) is not None
    assert window.following(datetime(2026, 3, 28, 12, tzinfo=UTC))[0] == datetime(
        2026, 3, 30, 0, 30, tzinfo=UTC
    )
    # the day they go back: 02:30 CEST, then 02:30 CET
    first = window.following(datetime(2026, 10, 24, 12, tzinfo=UTC))
    assert first is not None and first[0] == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    second = window.following(first[0])
    assert second is not None and second[0] == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)


def test_day_of_month_and_day_of_week_both_restricted_is_either_as_documented() -> None:
    window = Window.model_validate({"cron": "0 3 10 * FRI", "duration": "1h"})
    starts = []
    at = datetime(2026, 2, 1, tzinfo=UTC)
    for _ in range(6):
        following = window.following(at)
        assert following is not None
        starts.append(following[0].day)
        at = following[0]
    assert starts == [6, 10, 13, 20, 27, 6]  # the Fridays of February 2026, and the 10th (a Tuesday)


def test_a_day_the_time_zone_skipped_has_no_window_moved_to_the_next_midnight() -> None:
    # Samoa skipped 30 December 2011 (23:59:59 -10:00 on the 29th, then 00:00 +14:00 on the 31st).
    # Debian's cron reads a jump of more than 3 hours as a clock correction: a fixed-time job of
    # the skipped day does not run; cronsim alone would open the window at 00:00 on the 31st.
    apia = ZoneInfo("Pacific/Apia")
    window = Window.model_validate({"cron": "0 12 * * *", "timezone": "Pacific/Apia", "duration": "1h"})
    after_29th = datetime(2011, 12, 29, 13, tzinfo=apia)
    following = window.following(after_29th)
    assert following is not None
    assert following[0] == datetime(2011, 12, 31, 12, tzinfo=apia)
    assert window.occurrence(datetime(2011, 12, 31, 0, 30, tzinfo=apia)) is None
    # a job at the very minute the day resumes still runs
    midnight = Window.model_validate({"cron": "0 0 * * *", "timezone": "Pacific/Apia", "duration": "1h"})
    assert midnight.following(after_29th) == (
        datetime(2011, 12, 31, tzinfo=apia),
        datetime(2011, 12, 31, 1, tzinfo=apia),
    )
    # and a start in an ordinary summer-time gap still moves to its end (Berlin, 02:30 -> 03:00)
    berlin = Window.model_validate({"cron": "30 2 * * *", "timezone": "Europe/Berlin", "duration": "1h"})
    assert berlin.following(datetime(2026, 3, 28, 12, tzinfo=UTC)) is not None
    assert berlin.following(datetime(2026, 3, 28, 12, tzinfo=UTC))[0] == datetime(2026, 3, 29, 1, tzinfo=UTC)


def test_windows_timed_alike_are_worked_out_once_and_a_reload_keeps_the_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[Window] = []
    starts = Window._starts_after  # cronsim: what costs

    def counted(self: Window, at: datetime) -> Iterator[datetime]:
        asked.append(self)
        return starts(self, at)

    monkeypatch.setattr(Window, "_starts_after", counted)

    def entries(name: str) -> list[CheckEntry]:
        # each check its own window object: the names differ, the times are the same
        cron = {"cron": "0 2 * * SUN", "timezone": "Europe/Berlin", "duration": "2h"}
        return [
            CheckEntry(
                Check.model_validate({**TCP, "name": f"c{i}"}),
                None,  # type: ignore[arg-type]
                None,  # type: ignore[arg-type]
                (Window.model_validate({**cron, "name": f"{name}-{i}"}),),
            )
            for i in range(50)
        ]

    schedule = Schedule(entries("before"))
    at = datetime(2026, 11, 29, 1, 30, tzinfo=UTC).timestamp()  # 02:30 CET, a Sunday: open
    found = [schedule.open(f"c{i}", at) for i in range(50)]
    assert all(f is not None for f in found)
    assert found[7] is not None and found[7].window.name == "before-7"
    assert len(asked) == 1
    schedule.replace(entries("after"))  # a reload: new objects, the same times
    found = [schedule.open(f"c{i}", at + 60) for i in range(50)]
    assert found[7] is not None and found[7].window.name == "after-7"
    assert len(asked) == 1


def test_a_window_s_name_and_reason_are_escaped_on_the_status_pages() -> None:
    hostile = '<script>alert("x")</script>'
    window = {"name": hostile, "reason": f'" onmouseover="{hostile}', "since": "a<b", "until": "c>d"}
    check = {"name": "db", "type": "tcp", "target": "t", "maintenance": window, "next_maintenance": window}
    index = render_index([check], [], "Vantage", "", 0.0)
    page = render_check(check, "", "Vantage", None, 0.0)
    upcoming = render_check({**check, "maintenance": None}, "", "Vantage", None, 0.0)
    for html in (index, page, upcoming):
        assert "<script>" not in html and 'onmouseover="' not in html
    assert "&lt;script&gt;" in index and "&lt;script&gt;" in page and "&lt;script&gt;" in upcoming


def test_an_open_chain_of_overlapping_occurrences_is_shown_since_its_first() -> None:
    # 01:00-02:30 and 02:00-03:30 on Sundays: one window, 01:00 to 03:30 Berlin time
    window = Window.model_validate({"cron": "0 1,2 * * SUN", "timezone": "Europe/Berlin", "duration": "90m"})
    since, until = datetime(2026, 11, 29, 0, tzinfo=UTC), datetime(2026, 11, 29, 2, 30, tzinfo=UTC)
    for at in (since, datetime(2026, 11, 29, 1, 15, tzinfo=UTC), datetime(2026, 11, 29, 2, 29, tzinfo=UTC)):
        # the same answer whenever it is asked (an agent started or reloaded within the window)
        assert window.occurrence(at) == (since, until), at
    assert window.occurrence(until) is None
