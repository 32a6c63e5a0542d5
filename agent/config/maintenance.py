"""Maintenance windows: when a check's target is expected to be down, and the alerts should be quiet.

A window is either recurring, a cron expression read in an IANA time zone with a duration::

    maintenance:
      - {name: weekly-db, cron: "0 2 * * SUN", timezone: Europe/Berlin, duration: 2h}

or absolute, a start and an end in RFC 3339 (a vendor's announced maintenance)::

      - {name: stripe-upgrade, start: "2026-12-01T01:00:00Z", end: "2026-12-01T03:00:00Z"}

A check lists its own under ``maintenance``; the check file's top-level ``maintenance`` list holds
windows for the checks its selector picks (``checks``: name patterns, ``labels``: labels that must
all be equal). Runs go on during a window; the agent shows it (``vantage_check_maintenance``,
``/api/checks``, the status page) so that alert rules can stay quiet.

Cron times follow cronsim (healthchecks.io's parser), which follows Debian's cron when an
expression of 5 fields names a minute and an hour: a start in the hour that a change to summer
time skips moves to the first minute after the gap (``30 2 * * *`` in Europe/Berlin starts at
03:00 that day), and a start in the hour that a change to winter time repeats happens once, at
its first occurrence (summer time). A jump of more than 3 hours (a skipped day) is a clock
correction, as for Debian's cron: a start within it does not happen. An expression with ``*`` in
its minute or hour field is read in absolute time; one of 6 fields on the wall clock. Debian's
nicknames (``@daily``, ``@weekly``...) stand for their expressions. The duration is elapsed
time: a 2h window that starts at 01:30 on the night the clocks go back ends at 02:30 winter time.

Nothing here reads the clock: every function is given the time it is asked about.
"""

from __future__ import annotations

import fnmatch
import functools
import itertools
import math
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.config._explain import Problem, did_you_mean, explain
from agent.sdk.cron import CRON_NICKNAMES, cron_expression
from agent.sdk.durations import Duration, format_duration

if TYPE_CHECKING:
    from agent.sdk.types import Check

__all__ = [
    "FileWindow",
    "Open",
    "ParsedWindows",
    "Schedule",
    "Window",
    "next_window",
    "open_window",
    "parse_windows",
    "same_but_windows",
    "selected",
]

_CHAIN = 100  # overlapping occurrences followed at most to find where a window ends
_SEARCH = 1000  # cron occurrences stepped over at most when one is out of order (a repeated hour)
_LONGEST = 366 * 86400.0  # a cron window's longest duration (a longer one is a start and an end)


@functools.cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@functools.cache
def _zones() -> frozenset[str]:
    import zoneinfo

    return frozenset(zoneinfo.available_timezones())


class Window(BaseModel):
    """One maintenance window: ``cron`` with ``duration`` (and ``timezone``), or ``start`` and ``end``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(default=None, min_length=1, max_length=200)
    reason: str | None = Field(default=None, max_length=1000)
    cron: str | None = None
    timezone: str | None = None
    duration: Duration | None = None
    start: datetime | None = None
    end: datetime | None = None

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from cronsim import CronSim, CronSimError

        if value.strip().startswith("@") and cron_expression(value) == value:
            known = ", ".join(CRON_NICKNAMES)
            raise ValueError(f"{value!r} is not a cron expression: the nicknames are {known}")
        try:
            CronSim(cron_expression(value), datetime(2000, 1, 1, tzinfo=UTC))
        except CronSimError as exc:
            raise ValueError(f"{value!r} is not a cron expression: {exc}") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            _zone(value)
        except (ZoneInfoNotFoundError, ValueError):
            hint = did_you_mean(value, _zones()) if len(value) <= 60 else ""
            shown = repr(value) if len(value) <= 60 else "this"
            raise ValueError(
                f"{shown} is not an IANA time zone (e.g. Europe/Berlin, UTC)" + (f"; {hint}" if hint else "")
            ) from None
        return value

    @field_validator("duration")
    @classmethod
    def _duration(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("the duration must be above zero")
        if value > _LONGEST:
            # Its end would not be a date near the last years a date holds; a window that long
            # is an absolute one.
            raise ValueError("the duration must be at most 366d (a longer window: start and end)")
        return value

    @field_validator("start", "end")
    @classmethod
    def _offset(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("needs a UTC offset, as RFC 3339 has it (e.g. 2026-12-01T02:00:00Z or +01:00)")
        try:
            value.astimezone(UTC)  # shown in UTC: the API, the pages and the logs must be able to
        except OverflowError:
            raise ValueError("must be between the years 1 and 9999 in UTC") from None
        return value

    @field_validator("end")
    @classmethod
    def _after_start(cls, value: datetime, info: Any) -> datetime:
        start = info.data.get("start")
        if start is not None and value <= start:
            raise ValueError(f"the end ({_iso(value)}) must be after the start ({_iso(start)})")
        return value

    @model_validator(mode="after")
    def _kind(self) -> Window:
        if self.cron is not None:
            if self.start is not None or self.end is not None:
                raise ValueError("a window has either cron (with duration) or start and end, not both")
            if self.duration is None:
                raise ValueError("a cron window needs a duration (e.g. duration: 2h)")
            return self
        if self.start is None or self.end is None:
            if self.duration is not None or self.timezone is not None:
                raise ValueError("duration and timezone belong to a cron window: add cron")
            missing = (
                "end" if self.start is not None else "start" if self.end is not None else "cron or start"
            )
            raise ValueError(f"missing {missing}: a window has cron (with duration) or start and end")
        if self.duration is not None or self.timezone is not None:
            raise ValueError(
                "start and end carry their own offset: duration and timezone belong to a cron window"
            )
        return self

    @property
    def title(self) -> str:
        """What the window is called where it is shown: its name, or what it is."""
        if self.name:
            return self.name
        if self.cron is not None:
            assert self.duration is not None
            return f"{self.cron} ({self.timezone or 'UTC'}) for {format_duration(self.duration)}"
        assert self.start is not None and self.end is not None
        return f"{_iso(self.start)} to {_iso(self.end)}"

    def occurrence(self, at: datetime) -> tuple[datetime, datetime] | None:
        """``(since, until)`` when the window is open at ``at`` (aware), else None.

        A cron window whose occurrences overlap is one window from the first's start to the end of
        the last that starts before the one before it ends (followed for 100 occurrences each way)."""
        return self.state(at)[0]

    def state(self, at: datetime) -> tuple[tuple[datetime, datetime] | None, datetime | None]:
        """``occurrence(at)``, and when it is None the start of the next occurrence (None when
        there is none to come): both from one reading of the cron expression."""
        if self.cron is None:
            assert self.start is not None and self.end is not None
            if self.start <= at < self.end:
                return (self.start, self.end), None
            return None, self.start if self.start > at else None
        assert self.duration is not None
        length = timedelta(seconds=self.duration)
        first = self._starts_after(at - length)
        since = next(first, None)
        if since is None or since > at:
            # No start in (at - length, at]: the first after at - length is the first after at.
            return None, since
        until = since + length
        for _ in range(_CHAIN):
            later = next(first, None)
            if later is None or later >= until:
                break
            until = max(until, later + length)
        # Back to the chain's first occurrence: the answer is then the same whenever it is asked
        # (occurrences are all as long: one that does not reach ``since``, none before it does).
        for earlier in itertools.islice(self._starts_before(since), _CHAIN):
            if earlier + length <= since:
                break
            since = earlier
        return (since, until), None

    def following(self, at: datetime) -> tuple[datetime, datetime] | None:
        """``(start, end)`` of the first occurrence that starts after ``at``, or None (an absolute
        window that has begun, a cron expression with no date to come)."""
        if self.cron is None:
            assert self.start is not None and self.end is not None
            return (self.start, self.end) if self.start > at else None
        assert self.duration is not None
        start = next(self._starts_after(at), None)
        return None if start is None else (start, start + timedelta(seconds=self.duration))

    def _starts_before(self, at: datetime) -> Iterator[datetime]:
        """The cron starts before ``at``, in UTC, latest first (as ``_starts_after``, backwards)."""
        from cronsim import CronSim

        assert self.cron is not None
        zone = _zone(self.timezone or "UTC")
        expression = cron_expression(self.cron)
        fields = expression.split()
        moved = len(fields) == 5 and not fields[0].startswith("*") and not fields[1].startswith("*")
        found = CronSim(expression, at.astimezone(zone), reverse=True)
        for _ in range(_SEARCH):
            try:
                start = next(found).astimezone(UTC)
            except StopIteration:
                return
            if start >= at or (moved and _skipped_day(expression, start, zone)):
                continue
            yield start

    def _starts_after(self, at: datetime) -> Iterator[datetime]:
        """The cron starts after ``at``, in UTC, in order. cronsim reads a repeated hour's wall
        time once, at its first occurrence: asked from within the second, it may answer a start
        before ``at``, which is skipped."""
        from cronsim import CronSim

        assert self.cron is not None
        zone = _zone(self.timezone or "UTC")
        expression = cron_expression(self.cron)
        fields = expression.split()
        # cronsim moves a start in a skipped hour to the gap's end for these (Debian's cron).
        moved = len(fields) == 5 and not fields[0].startswith("*") and not fields[1].startswith("*")
        found = CronSim(expression, at.astimezone(zone))
        skipped = 0
        while True:
            try:
                start = next(found).astimezone(UTC)
            except StopIteration:  # no date for 50 years (30 February)
                return
            if start <= at:
                skipped += 1
                if skipped > _SEARCH:
                    return
                continue
            if moved and _skipped_day(expression, start, zone):
                continue
            yield start


def _skipped_day(expression: str, start: datetime, zone: ZoneInfo) -> bool:
    """Whether ``start`` is a start cronsim moved out of a jump forward of more than 3 hours (a
    skipped day: Pacific/Apia, 30 December 2011). Debian's cron reads such a jump as a clock
    correction and does not run the fixed-time jobs it skipped; a summer-time gap's start does
    move to the gap's end."""
    from cronsim import CronSim

    local = start.astimezone(zone)
    offset, before = local.utcoffset(), (start - timedelta(seconds=1)).astimezone(zone).utcoffset()
    if offset is None or before is None or offset - before <= timedelta(hours=3):
        return False
    wall = local.replace(tzinfo=UTC)  # the wall time, matched against the expression as written
    return bool(next(CronSim(expression, wall - timedelta(seconds=1)), None) != wall)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class FileWindow(Window):
    """A window of the check file's ``maintenance`` list: a window and the checks it is for
    (``checks``: name patterns such as ``stripe-*``; ``labels``: labels that must all be equal;
    both: a check must match both)."""

    checks: tuple[str, ...] = ()
    labels: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _selector(self) -> FileWindow:
        if not self.checks and not self.labels:
            raise ValueError("say which checks it is for: checks (name patterns) and/or labels")
        return self

    def selects(self, check: Check) -> bool:
        """Whether the window is for ``check``."""
        labels = check.labels
        if any(labels.get(key) != value for key, value in self.labels.items()):
            return False
        return not self.checks or any(fnmatch.fnmatchcase(check.name, pattern) for pattern in self.checks)


@dataclass(frozen=True, slots=True)
class Open:
    """A window that is open: which, since when and until when."""

    window: Window
    since: datetime
    until: datetime

    def as_json(self) -> dict[str, Any]:
        """As ``/api/checks`` shows it."""
        return {
            "name": self.window.title,
            "reason": self.window.reason,
            "since": _iso(self.since),
            "until": _iso(self.until),
        }


def open_window(windows: Sequence[Window], at: datetime) -> Open | None:
    """The window of ``windows`` open at ``at`` (aware), the one that ends last when several are."""
    found: Open | None = None
    for window in windows:
        occurrence = window.occurrence(at)
        if occurrence is not None and (found is None or occurrence[1] > found.until):
            found = Open(window, *occurrence)
    return found


def next_window(windows: Sequence[Window], at: datetime) -> Open | None:
    """The first window of ``windows`` to open after ``at`` (its ``since`` is in the future)."""
    found: Open | None = None
    for window in windows:
        following = window.following(at)
        if following is not None and (found is None or following[0] < found.since):
            found = Open(window, *following)
    return found


def selected(check: Check, file_windows: Sequence[FileWindow]) -> tuple[Window, ...]:
    """The check file's windows whose selector picks ``check``."""
    return tuple(window for window in file_windows if window.selects(check))


def same_but_windows(old: Check, new: Check) -> bool:
    """Whether two definitions of a check differ in their maintenance windows alone (a reload
    then keeps the check running: its state, its series and its schedule go on)."""
    return old.model_copy(update={"maintenance": ()}) == new.model_copy(update={"maintenance": ()})


class ParsedWindows:
    """Windows already parsed, by what was written, and the tuples of them checks hold: checks
    written alike share one object (thousands of checks picked by one selector hold one tuple)."""

    def __init__(self) -> None:
        self._known: dict[str, Window] = {}
        self._tuples: dict[tuple[int, ...], tuple[Window, ...]] = {}

    def window(self, raw: Mapping[str, Any]) -> Window:
        """``raw`` parsed (raises ``ValidationError``)."""
        key = repr(sorted(raw.items(), key=lambda item: str(item[0]))) if isinstance(raw, Mapping) else ""
        known = self._known.get(key) if key else None
        if known is None:
            known = Window.model_validate(raw)
            if key:
                self._known[key] = known
        return known

    def share(self, windows: tuple[Window, ...]) -> tuple[Window, ...]:
        """An equal tuple already seen, or ``windows`` (the windows themselves are shared)."""
        return self._tuples.setdefault(tuple(id(w) for w in windows), windows)


def parse_windows(
    raw: Sequence[Mapping[str, Any]],
    file_windows: Sequence[FileWindow],
    check: Check | None,
    problems: list[Problem],
    parsed: ParsedWindows | None = None,
) -> tuple[Window, ...]:
    """A check's windows: its own (``raw``, as written under its ``maintenance``), then the file's
    that select it (none when ``check`` is None: its other fields are bad). Each problem of its own
    is added to ``problems`` under ``maintenance[i]``."""
    parsed = parsed or ParsedWindows()
    own: list[Window] = []
    for index, item in enumerate(raw):
        try:
            own.append(parsed.window(item))
        except ValidationError as exc:
            problems += explain(exc, Window, ("maintenance", index))
    picked = selected(check, file_windows) if file_windows and check is not None else ()
    return (*own, *picked) if picked else tuple(own)


# ------------------------------------------------------------------ the windows of a running agent


class Schedule:
    """The maintenance windows of the checks an agent runs, by check name, asked at a wall time.

    Only checks that have a window are in it. What a window says at a time holds until its next
    boundary (it opens, it closes): each window's answer is kept until then, so that asking for
    every check at each collection of the metrics costs a look-up per check. A clock that steps
    back is asked again. Safe to read from other threads (the metrics are rendered in one)."""

    def __init__(self, entries: Iterable[Any] = ()) -> None:
        self.lock = threading.Lock()
        """Held while the windows are read for all checks or replaced (see ``replace``)."""
        self._windows: dict[str, tuple[Window, ...]] = {}
        self._answers: dict[tuple[Any, ...], tuple[float, float, tuple[datetime, datetime] | None]] = {}
        """By the windows' times (``_times``): windows timed alike (each check's own copy of one
        window, a reload's new objects for the same times) are worked out once."""
        self.replace(entries)

    def replace(self, entries: Iterable[Any]) -> None:
        """Take the windows of ``entries`` (``CheckEntry``): a reload's new set, before the checks
        it removes are forgotten. The answers of the windows whose times are still there are
        kept: for 10,000 checks of their own cron windows, working them out again took 1.5 s
        of the next collection's CPU."""
        windows = {entry.check.name: entry.maintenance for entry in entries if entry.maintenance}
        shared = {id(held): held for held in windows.values()}  # checks picked alike share a tuple
        times = {_times(window) for held in shared.values() for window in held}
        with self.lock:
            self._windows = windows
            self._answers = {key: answer for key, answer in self._answers.items() if key in times}

    def __len__(self) -> int:
        return len(self._windows)

    def items(self) -> list[tuple[str, tuple[Window, ...]]]:
        return list(self._windows.items())

    def windows(self, name: str) -> tuple[Window, ...]:
        return self._windows.get(name, ())

    def open(self, name: str, at: float) -> Open | None:
        """The window open for check ``name`` at ``at`` (seconds since the epoch), or None."""
        windows = self._windows.get(name)
        if not windows:
            return None
        found: Open | None = None
        for window in windows:
            occurrence = self._occurrence(window, at)
            if occurrence is not None and (found is None or occurrence[1] > found.until):
                found = Open(window, *occurrence)
        return found

    def next(self, name: str, at: float) -> Open | None:
        """The check's next window to open after ``at``, or None."""
        windows = self._windows.get(name)
        return next_window(windows, datetime.fromtimestamp(at, UTC)) if windows else None

    def _occurrence(self, window: Window, at: float) -> tuple[datetime, datetime] | None:
        answers = self._answers
        key = _times(window)
        known = answers.get(key)
        if known is not None and known[0] <= at < known[1]:
            return known[2]
        occurrence, following = window.state(datetime.fromtimestamp(at, UTC))
        if occurrence is not None:
            valid = occurrence[1].timestamp()
        else:
            valid = following.timestamp() if following is not None else math.inf
        answers[key] = (at, valid, occurrence)
        return occurrence


def _times(window: Window) -> tuple[Any, ...]:
    """What a window's occurrences depend on (not its name, reason or selector)."""
    return (window.cron, window.timezone, window.duration, window.start, window.end)
