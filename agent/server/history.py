"""What the status page shows of each check's past: a bounded history of its runs.

Per check, and only once the check has run (an idle check costs nothing):

- uptime buckets, fixed arrays: 288 five-minute buckets (the last 24 hours) and 168 one-hour
  buckets (the last 7 days), each a run count and a failure count (2 bytes a bucket, 0.9 KB a
  check, or 4 once a bucket counts more than 255 runs);
- the last ``runs`` runs in brief (time, outcome, reason, duration, trace id), for the list of runs
  and the latency sparkline;
- the last ``details`` runs in full (1 by default: phases, assertions, steps, requests and their
  response headers), and the last failure in full however old it is. A run in full is turned into
  redacted, compact JSON text when it is first read (:class:`Detail`), by the redactor as it was
  when the run ended: a secret the redactor knows only for a while (an OAuth token, a flow's
  extracted secret) is redacted however long after the page asks. Until then the run is its result
  and requests, which the recorder holds anyway as the check's last run: most runs are replaced
  by the next before anything reads them, and cost neither the text's CPU nor its memory.

With ``VANTAGE_STATE_DIR`` the history is kept in ``<dir>/status-history.sqlite3`` (SQLite, from
the standard library). Runs are written in batches (:meth:`History.collect` on the loop,
:meth:`History.write` in a thread, which turns the runs in full into redacted JSON), every
``FLUSH_EVERY`` seconds and when the agent stops; the file holds at most the same bounds as memory
(a check's last ``runs`` runs, 7 days of buckets; older rows are deleted at each write). Worker
processes share the file (SQLite locks it); each loads the checks it runs. A file that cannot be
opened, read or written is a warning in the log, never a crash: a corrupt file is set aside (renamed
``*.corrupt``) and a new one started, an unwritable one leaves the history in memory only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent.config.secrets import Redactor, sensitive_header
from agent.sdk.probe import ProbeResult

if TYPE_CHECKING:
    import sqlite3  # imported when a store is opened: most agents run without VANTAGE_STATE_DIR

__all__ = ["FLUSH_EVERY", "History", "HistoryStore", "detail_json"]

log = logging.getLogger("vantage.server")

FLUSH_EVERY = 10.0
FILE_NAME = "status-history.sqlite3"
DAY, WEEK = 86_400.0, 7 * 86_400.0
_MAX = 65_535  # a bucket's counts are 16-bit; a check running more often than that saturates
_PENDING_LIMIT = 100_000  # runs waiting for the disk; beyond this the oldest are not written


class RequestRecord(Protocol):
    """One physical request of a run, as the HTTP client records it (``agent/net/http.py``'s
    ``RequestRecord``; the server does not import the client)."""

    @property
    def method(self) -> str: ...
    @property
    def scheme(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def duration(self) -> float: ...
    @property
    def status(self) -> int | None: ...
    @property
    def error_type(self) -> str | None: ...
    @property
    def protocol_version(self) -> str | None: ...
    @property
    def response_headers(self) -> tuple[tuple[str, str], ...]: ...


class _Buckets:
    """``slots`` buckets of ``width`` seconds in a ring, up to the newest slot counted in: the ring
    holds the ``slots`` slots up to it, and a bucket is emptied when the newest slot passes it
    (a run count and a failure count a bucket)."""

    __slots__ = ("counts", "newest", "width")

    def __init__(self, width: int, slots: int) -> None:
        self.width = width
        self.newest = -1  # the newest slot (time // width) counted in; -1 before the first run
        # Runs at 2i, failures at 2i + 1; a byte each until a count passes 255 (a check run more
        # often than every 1.2 s in a 5-minute bucket), then two.
        self.counts = array("B", bytes(2 * slots))

    def _size(self) -> int:
        return len(self.counts) // 2

    def _advance(self, slot: int) -> None:
        """Make ``slot`` the newest, emptying the buckets of the slots it passes."""
        size, counts = self._size(), self.counts
        if self.newest < 0 or slot - self.newest >= size:
            counts[:] = array(counts.typecode, bytes(2 * size * counts.itemsize))
        else:
            for passed in range(self.newest + 1, slot + 1):
                i = 2 * (passed % size)
                counts[i] = counts[i + 1] = 0
        self.newest = slot

    def _index(self, slot: int) -> int | None:
        """Where ``slot`` is counted, once the ring has come to it; None if it has gone by."""
        if slot > self.newest:
            self._advance(slot)
        elif slot <= self.newest - self._size():
            return None
        return 2 * (slot % self._size())

    def add(self, when: float, success: bool) -> int:
        """Count a run at ``when``; the slot counted in."""
        slot = int(when // self.width)
        if slot <= self.newest - self._size():
            # A clock set back by more than the ring's span: what it holds is all after ``when``
            # (out of every window until the clock is back there). The ring starts again here,
            # or it would count no run until then (a day for this one, a week for the other).
            self.newest = -1
        i = self._index(slot)
        if i is not None:
            counts = self.counts
            if counts[i] == 255 and counts.typecode == "B":
                counts = self.counts = array("H", counts)
            counts[i] = min(_MAX, counts[i] + 1)
            if not success:
                counts[i + 1] = min(_MAX, counts[i + 1] + 1)
        return slot

    def merge(self, slot: int, runs: int, failures: int) -> None:
        """Add a bucket as it was saved before a restart to what the ring holds of its slot."""
        i = self._index(slot)
        if i is not None:
            counts = self.counts
            if counts.typecode == "B" and max(counts[i] + runs, counts[i + 1] + failures) > 255:
                counts = self.counts = array("H", counts)
            counts[i] = min(_MAX, counts[i] + runs)
            counts[i + 1] = min(_MAX, counts[i + 1] + failures)

    def get(self, slot: int) -> tuple[int, int] | None:
        size = self._size()
        if not self.newest - size < slot <= self.newest:
            return None
        i = 2 * (slot % size)
        return self.counts[i], self.counts[i + 1]

    def uptime(self, now: float) -> tuple[float | None, int]:
        """The share of runs that passed over the ring's span up to ``now``, and the runs counted."""
        size, counts, newest = self._size(), self.counts, self.newest
        last = int(now // self.width)
        first = max(last - size + 1, newest - size + 1)  # the window's slots the ring still holds
        high = min(last, newest)
        if newest < 0 or high < first:
            return None, 0
        # Summed in C: the whole ring, less the slots it holds that are outside the window (the
        # oldest ones, when the newest run is older than ``now``'s slot; rarely more than a few).
        runs, failures = sum(counts[0::2]), sum(counts[1::2])
        for slot in range(newest - size + 1, first):
            i = 2 * (slot % size)
            runs -= counts[i]
            failures -= counts[i + 1]
        for slot in range(high + 1, newest + 1):  # a clock gone back: runs counted after ``now``
            i = 2 * (slot % size)
            runs -= counts[i]
            failures -= counts[i + 1]
        return ((runs - failures) / runs if runs else None), runs


@dataclass(frozen=True, slots=True)
class Brief:
    """One run in brief."""

    time: float
    success: bool
    reason: str | None
    duration: float
    trace_id: int

    @property
    def trace(self) -> str:
        """The run's trace id, 32 hex digits."""
        return f"{self.trace_id:032x}"


_REASONS: list[str | None] = [None, "unknown"]
"""Every failure reason a run has had, by its number in :class:`_Runs`'s ``reasons`` (reasons are
the values of one enum: a few dozen at most)."""
_REASON_NUMBERS: dict[str | None, int] = {None: 0, "unknown": 1}
_MAX_REASONS = 256
_SETTLED_A_RUN = 2
"""Runs of an older redactor made into text at each run recorded (~30 µs each, what every run cost
when each was made into text as it was recorded): History._settle."""
_LOOK_EVERY = 10.0
"""Seconds at least between two looks for runs of an older redactor (a look walks every check: a
redactor that changes at every run, a flow's extracted secret, must not make every run walk them)."""


def _reason_number(reason: str | None) -> int:
    number = _REASON_NUMBERS.get(reason)
    if number is None:
        if len(_REASONS) >= _MAX_REASONS:  # only a history file edited by hand has more
            return _reason_number("unknown")
        number = _REASON_NUMBERS[reason] = len(_REASONS)
        _REASONS.append(reason)
    return number


class _Runs:
    """The last runs in brief, in fixed arrays (30 bytes a run): a ring."""

    __slots__ = ("count", "durations", "next", "ok", "reasons", "times", "traces")

    def __init__(self, size: int) -> None:
        self.times = array("d", bytes(8 * size))
        self.durations = array("I", bytes(4 * size))  # microseconds
        self.ok = bytearray(size)
        self.reasons = bytearray(size)  # numbers in _REASONS
        self.traces = bytearray(16 * size)
        self.next = self.count = 0

    def append(self, brief: Brief) -> None:
        i, size = self.next, len(self.ok)
        micros = min(0xFFFFFFFF, max(0, int(brief.duration * 1e6)))
        self.times[i], self.durations[i], self.ok[i] = brief.time, micros, brief.success
        self.reasons[i] = _reason_number(brief.reason)
        self.traces[16 * i : 16 * i + 16] = brief.trace_id.to_bytes(16, "big")
        self.next, self.count = (i + 1) % size, min(self.count + 1, size)

    def __len__(self) -> int:
        return self.count

    def recent(self) -> list[list[Any]]:
        """``[time, duration, success]`` of each run, oldest first (the sparkline's)."""
        size, times, durations, ok = len(self.ok), self.times, self.durations, self.ok
        out = []
        for k in range(self.count):
            i = (self.next - self.count + k) % size
            out.append([times[i], durations[i] / 1e6, bool(ok[i])])
        return out

    def __iter__(self) -> Iterator[Brief]:
        """Oldest first."""
        size = len(self.ok)
        for k in range(self.count):
            i = (self.next - self.count + k) % size
            trace = int.from_bytes(self.traces[16 * i : 16 * i + 16], "big")
            reason = _REASONS[self.reasons[i]]
            yield Brief(self.times[i], bool(self.ok[i]), reason, self.durations[i] / 1e6, trace)


class _CheckHistory:
    __slots__ = ("day", "details", "last_failure", "runs", "week")

    def __init__(self, runs: int, details: int) -> None:
        self.day = _Buckets(300, 288)
        self.week = _Buckets(3600, 168)
        self.runs = _Runs(runs)
        # The last runs in full: what the debug view shows of the probe's result (not its metric
        # values), and its requests, as redacted JSON text (detail_text).
        # A list, oldest first, cut to ``details`` (a deque with a bound is 10 times the size).
        self.details: list[tuple[Brief, Detail]] = []
        self.last_failure: tuple[Brief, Detail] | None = None


class Detail:
    """A run in full: the JSON text of :func:`detail_json`'s object, redacted.

    A run is kept as it ended (its result and requests, which the recorder holds anyway as the
    check's last run, with the redactor as it was then: a snapshot, so a secret forgotten since,
    an OAuth token refreshed away, is still redacted), and made into text once, when it is first
    read: by the debug view, the overview's last failure, or the write to ``VANTAGE_STATE_DIR``
    (in its thread), or soon after the redactor changes (:meth:`History._kept_as_ended`, so that
    no run keeps an old snapshot alive). Most runs are never read: the next run replaces them first."""

    __slots__ = ("_run", "_text")

    def __init__(self, text: str | None = None) -> None:
        self._text = text
        self._run: tuple[Brief, ProbeResult, Sequence[RequestRecord], Redactor] | None = None

    @classmethod
    def of_run(
        cls, brief: Brief, result: ProbeResult, requests: Sequence[RequestRecord], redact: Redactor
    ) -> Detail:
        detail = cls()
        detail._run = (brief, result, requests, redact)
        return detail

    @property
    def text(self) -> str:
        # Read on the loop and in the store's thread: the text is set before the run is let go
        # of, so a reader that finds no run finds the text (both threads may make it: the same).
        text = self._text
        if text is None:
            run = self._run
            if run is None:
                text = self._text
                assert text is not None
                return text
            text = self._text = detail_text(*run)
            self._run = None
        return text

    @property
    def redactor(self) -> Redactor | None:
        """The redactor the text is to be made with, while it is still to be made."""
        run = self._run
        return None if run is None else run[3]

    def settle(self) -> None:
        """Make the text now, if it is not made: to let go of the run and its redactor."""
        if self._run is not None:
            self.text  # noqa: B018 - made and kept


def detail_text(
    brief: Brief, result: ProbeResult, requests: Sequence[RequestRecord], redact: Redactor
) -> str:
    """A run in full as compact JSON text, every text redacted.

    Most runs hold no secret: the run is turned into text as it is and searched once (the
    redactor finds a secret in its JSON-escaped spellings too); only a run where one is found is
    turned into text again with each of its texts redacted."""
    text = json.dumps(detail_json(brief, result, requests, _VERBATIM), default=str, separators=(",", ":"))
    if text in redact:
        text = json.dumps(detail_json(brief, result, requests, redact), default=str, separators=(",", ":"))
    return text


class _Verbatim(Redactor):
    """Redacts nothing (the first pass of :func:`detail_text`)."""

    def __call__(self, text: str) -> str:
        return text

    def deep(self, value: Any) -> Any:
        return value


_VERBATIM = _Verbatim()


def detail_json(
    brief: Brief, result: ProbeResult, requests: Sequence[RequestRecord], redact: Redactor
) -> dict[str, Any]:
    """A run in full as JSON-ready data, every text redacted; what the debug view shows."""
    message, phases, assertions = result.message, result.phases, result.assertions
    steps, attributes = result.steps, result.attributes
    return {
        "time": brief.time,
        "success": brief.success,
        "reason": brief.reason,
        "duration": brief.duration,
        "trace_id": brief.trace,
        "message": redact(message),
        "phases": {name: float(seconds) for name, seconds in phases.items()},
        "assertions": [
            {
                "assertion": redact(a.assertion),
                "passed": a.passed,
                "actual": redact(a.actual),
                "message": redact(a.message),
            }
            for a in assertions
        ],
        "steps": [_step_json(step, redact) for step in steps],
        "requests": [_request_json(request, redact) for request in requests],
        "attributes": {
            key: redact(value) if isinstance(value, str) else _plain(value)
            for key, value in attributes.items()
        },
    }


def _step_json(step: Any, redact: Redactor) -> dict[str, Any]:
    """A step, every field of it (a probe's step may carry more than the SDK's base fields)."""
    out: dict[str, Any] = {}
    for f in fields(step):
        value = getattr(step, f.name)
        out[f.name] = redact.deep(_plain(value))
    return out


def _plain(value: Any) -> Any:
    """A value as JSON can hold it: enums by value, dataclasses and mappings as objects."""
    if value is None or isinstance(value, bool | int | float | str):
        return value.value if hasattr(value, "value") and isinstance(value, str) else value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def _request_json(request: RequestRecord, redact: Redactor) -> dict[str, Any]:
    headers = request.response_headers
    return {
        "method": request.method,
        "url": redact(f"{request.scheme}://{request.host}:{request.port}"),
        "status": request.status,
        "duration": request.duration,
        "error": request.error_type,
        "version": request.protocol_version,
        "headers": [
            [redact(name), "<redacted>" if sensitive_header(name) else redact(value)]
            for name, value in headers
        ],
    }


class History:
    """Every check's bounded history; see the module docstring.

    ``record`` is the recorder's hook (agent/telemetry/recorder.py), called on the event loop for
    every run: it counts, and keeps the run in full (as the last run, to be made into redacted
    JSON text when read: :class:`Detail`). Every read of the history (``summary``,
    ``runs``, ``collect``) is made on that loop too; only ``write``, which reads nothing but the
    batch ``collect`` made, runs in a thread."""

    def __init__(
        self,
        redact: Redactor,
        *,
        runs: int = 50,
        details: int = 1,
        store: HistoryStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redact = redact
        self._runs, self._details = runs, max(1, min(details, runs))
        self._checks: dict[str, _CheckHistory] = {}
        self.store = store
        self._clock = clock
        self._pending: list[tuple[str, Brief, Detail | None]] = []
        self._snapshot: Redactor | None = None  # the redactor's snapshot the runs kept as they ended hold
        self._unsettled: list[Detail] = []  # runs of older snapshots, made into text a few a run
        self._looked = -math.inf  # when (a run's end) the runs of older snapshots were last looked for
        self._dirty: set[tuple[str, int, int]] = set()  # (check, bucket width, slot)

    def now(self) -> float:
        return self._clock()

    def record(
        self,
        name: str,
        when: float,
        result: ProbeResult,
        requests: Sequence[RequestRecord],
        trace_id: int,
    ) -> None:
        """Count one run of ``name`` that ended at ``when``."""
        check = self._checks.get(name)
        if check is None:
            check = self._checks[name] = _CheckHistory(self._runs, self._details)
        duration = result.duration or 0.0
        brief = Brief(
            when, result.success, result.reason.value if result.reason else None, duration, trace_id
        )
        day = check.day.add(when, result.success)
        week = check.week.add(when, result.success)
        check.runs.append(brief)
        # Made into redacted text when first read, with the secrets known now.
        snapshot = self._redact.snapshot()
        if snapshot is not self._snapshot and not 0 <= when - self._looked < _LOOK_EVERY:
            self._unsettled = self._kept_as_ended(snapshot)
            self._snapshot, self._looked = snapshot, when
        if self._unsettled:
            self._settle()
        detail = Detail.of_run(brief, result, tuple(requests), snapshot)
        details = check.details
        details.append((brief, detail))
        if len(details) > self._details:
            del details[0]
        if not result.success:
            check.last_failure = (brief, detail)
        if self.store is not None:
            if len(self._pending) < _PENDING_LIMIT:
                self._pending.append((name, brief, detail))
            self._dirty.add((name, 300, day))
            self._dirty.add((name, 3600, week))

    def _kept_as_ended(self, snapshot: Redactor) -> list[Detail]:
        """The runs kept not yet made into text, when the redactor has changed (a flow's extracted
        secret, a new OAuth token): each holds a snapshot of it, its secrets compiled (~0.4 MB
        with the 1,024 short-lived ones it may know). Left to the first read, the runs kept for
        long (each check's last failure, a rare check's last run) would keep one snapshot alive
        each: one per change. So they are made into text, a few a run (:meth:`_settle`: at once,
        a thousand checks' would hold the loop ~50 ms)."""
        found = []
        for check in self._checks.values():
            found += [detail for _, detail in check.details if detail.redactor not in (None, snapshot)]
            failure = check.last_failure
            if failure is not None and failure[1].redactor not in (None, snapshot):
                if not any(detail is failure[1] for _, detail in check.details):  # the last run
                    found.append(failure[1])
        kept = {id(detail) for detail in found}  # a run waiting for the disk is one of these, mostly
        pending = [detail for _, _, detail in self._pending if detail is not None and id(detail) not in kept]
        found += [detail for detail in pending if detail.redactor not in (None, snapshot)]
        found.reverse()  # taken from the end: the checks' in order, the runs waiting for the disk last
        return found

    def _settle(self) -> None:
        unsettled = self._unsettled
        for _ in range(min(_SETTLED_A_RUN, len(unsettled))):
            unsettled.pop().settle()

    def forget(self, name: str) -> None:
        self._checks.pop(name, None)

    def retain(self, names: Iterable[str]) -> None:
        """Keep the history of ``names`` only (the checks run now)."""
        kept = set(names)
        for name in [n for n in self._checks if n not in kept]:
            del self._checks[name]

    def summary(self, name: str) -> dict[str, Any]:
        """What the overview shows of ``name``: uptimes, the sparkline's runs, the last failure."""
        check = self._checks.get(name)
        now = self._clock()
        if check is None:
            return {"uptime_24h": None, "uptime_7d": None, "runs_24h": 0, "recent": [], "last_failure": None}
        day, runs_24h = check.day.uptime(now)
        week, _ = check.week.uptime(now)
        failure = None
        if check.last_failure is not None:
            brief, detail = check.last_failure
            failure = {
                "time": brief.time,
                "reason": brief.reason,
                "message": _message(detail.text),
                "trace_id": brief.trace,
            }
        return {
            "uptime_24h": day,
            "uptime_7d": week,
            "runs_24h": runs_24h,
            "recent": check.runs.recent(),
            "last_failure": failure,
        }

    def runs(self, name: str) -> dict[str, Any]:
        """What the debug view shows of ``name``: the runs in brief and in full, newest first."""
        check = self._checks.get(name)
        if check is None:
            return {"last_runs": [], "details": [], "last_failure_detail": None}
        failure = check.last_failure
        return {
            "last_runs": [_brief_json(b) for b in reversed(list(check.runs))],
            "details": [_object(d.text) for _, d in reversed(check.details)],
            "last_failure_detail": _object(failure[1].text) if failure else None,
        }

    # Persistence ---------------------------------------------------------------------------

    def read_saved(self, names: Iterable[str]) -> dict[str, Saved]:
        """The saved history of ``names`` (blocking: a thread's); for :meth:`merge`. A file that
        cannot be read, or holds what no write made, is set aside: the history starts empty."""
        return self.store.load(list(names), self._clock() - WEEK) if self.store is not None else {}

    def merge(self, saved: Mapping[str, Saved]) -> None:
        """Take in the history saved before a restart (``HistoryStore.load``, read in a thread),
        under whatever was recorded since the start."""
        now = self._clock()
        for name, (buckets, runs, failure) in saved.items():
            check = self._checks.get(name)
            if check is None:
                check = self._checks[name] = _CheckHistory(self._runs, self._details)
            for width, slot, count, failed in buckets:
                ring = check.day if width == 300 else check.week
                if not 0 <= slot <= 0xFFFFFFFF:
                    raise ValueError(f"a saved bucket's slot {slot} is not one a run makes")
                if slot * width <= now:  # a bucket from the future (a clock set back) would push
                    ring.merge(slot, count, failed)  # every bucket since out of the ring
            # Saved runs go before the runs since the start; the newest are kept within the bounds.
            since = next(iter(check.runs)).time if check.runs else math.inf
            older = [brief for brief, _ in runs if brief.time < since]
            kept = _Runs(self._runs)
            for brief in [*older, *check.runs]:
                kept.append(brief)
            check.runs = kept
            full = [(brief, detail) for brief, detail in runs if detail is not None and brief.time < since]
            check.details = [*full, *check.details][-self._details :]
            if check.last_failure is None and failure is not None:
                check.last_failure = failure

    def flush(self) -> None:
        """Write what changed since the last write, here and now (blocking); the agent calls
        :meth:`collect` on its event loop and :meth:`write` in a thread instead."""
        batch = self.collect()
        if batch is not None:
            self.write(batch)

    def collect(self) -> Batch | None:
        """What changed since the last call, to be written (on the thread that records: it reads
        the history as it is now, which ``record`` changes)."""
        if self.store is None or not (self._pending or self._dirty):
            return None
        pending, self._pending = self._pending, []
        dirty, self._dirty = self._dirty, set()
        buckets = []
        for name, width, slot in dirty:
            check = self._checks.get(name)
            got = None if check is None else (check.day if width == 300 else check.week).get(slot)
            if got is not None:
                buckets.append((name, width, slot, *got))
        runs = []
        for name, brief, detail in pending:
            check = self._checks.get(name)
            full = check is not None and any(kept is detail for _, kept in check.details)
            failure = check is not None and check.last_failure is not None and check.last_failure[0] is brief
            runs.append((name, brief, detail if full or failure else None, full, failure))
        return buckets, runs

    def write(self, batch: Batch) -> None:
        """Write a batch from :meth:`collect` (a thread's work: it reads only the batch, which
        nothing changes)."""
        if self.store is None:
            return
        buckets, runs = batch
        rows = []
        failures: dict[str, tuple[float, str]] = {}
        for name, brief, detail, full, failure in runs:
            text = None if detail is None else detail.text  # made here, in the writer's thread
            rows.append(
                (
                    name,
                    brief.time,
                    int(brief.success),
                    brief.reason,
                    brief.duration,
                    brief.trace,
                    text if full else None,
                )
            )
            if failure and text is not None:
                failures[name] = (brief.time, text)
        self.store.write(buckets, rows, failures, self._runs, self._details, self._clock() - WEEK)


Batch = tuple[
    list[tuple[str, int, int, int, int]],
    list[tuple[str, Brief, Detail | None, bool, bool]],
]


def _brief_json(brief: Brief) -> dict[str, Any]:
    return {
        "time": brief.time,
        "success": brief.success,
        "reason": brief.reason,
        "duration": brief.duration,
        "trace_id": brief.trace,
    }


Saved = tuple[
    list[tuple[int, int, int, int]],
    list[tuple[Brief, Detail | None]],
    tuple[Brief, Detail] | None,
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    check_name TEXT NOT NULL, width INTEGER NOT NULL, slot INTEGER NOT NULL,
    runs INTEGER NOT NULL, failures INTEGER NOT NULL,
    PRIMARY KEY (check_name, width, slot)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    check_name TEXT NOT NULL, time REAL NOT NULL, success INTEGER NOT NULL, reason TEXT,
    duration REAL NOT NULL, trace_id TEXT NOT NULL, detail TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_check ON runs (check_name, time);
CREATE TABLE IF NOT EXISTS last_failure (
    check_name TEXT PRIMARY KEY, time REAL NOT NULL, detail TEXT NOT NULL
);
"""


class HistoryStore:
    """The SQLite file behind a :class:`History`. Every method is blocking (a thread's), and
    none raises for the file's sake: a failure is logged, and the history goes on in memory."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE_NAME
        self._db: sqlite3.Connection | None = None
        self._failing = False
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection | None:
        import sqlite3

        if self._db is not None:
            return self._db
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            if not self.path.exists() or isinstance(exc, sqlite3.OperationalError):
                self._warn(f"cannot be opened ({exc}); the status page's history is kept in memory only")
                return None
            aside = self.path.with_name(f"{self.path.name}.corrupt")
            log.warning(
                "%s is not a history file SQLite can read (%s); set aside as %s", self.path, exc, aside
            )
            try:
                self.path.replace(aside)
                self._db = self._open()
            except (OSError, sqlite3.Error) as again:
                self._warn(f"cannot be started again ({again}); the history is kept in memory only")
                return None
        except OSError as exc:
            self._warn(f"cannot be opened ({exc}); the status page's history is kept in memory only")
            return None
        return self._db

    def _open(self) -> sqlite3.Connection:
        import sqlite3

        db = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            db.execute("SELECT count(*) FROM runs").fetchone()  # a damaged file fails here, not later
        except BaseException:
            db.close()
            raise
        return db

    def _warn(self, what: str) -> None:
        if not self._failing:
            self._failing = True
            log.warning("VANTAGE_STATE_DIR: %s %s", self.path, what)

    def load(self, names: list[str], since: float) -> dict[str, Saved]:
        """The saved history of ``names``: buckets newer than ``since``, runs oldest first."""
        import sqlite3

        out: dict[str, Saved] = {}
        with self._lock:
            db = self._connect()
            if db is None:
                return out
            try:
                for name in names:
                    buckets = db.execute(
                        "SELECT width, slot, runs, failures FROM buckets "
                        "WHERE check_name=? AND slot*width>=?",
                        (name, since - 3600),
                    ).fetchall()
                    rows = db.execute(
                        "SELECT time, success, reason, duration, trace_id, detail FROM runs "
                        "WHERE check_name=? ORDER BY time",
                        (name,),
                    ).fetchall()
                    failure_row = db.execute(
                        "SELECT detail FROM last_failure WHERE check_name=?", (name,)
                    ).fetchone()
                    if not buckets and not rows and failure_row is None:
                        continue
                    out[name] = _saved(buckets, rows, failure_row)
            except sqlite3.Error as exc:
                log.warning(
                    "VANTAGE_STATE_DIR: %s cannot be read (%s); the history starts empty", self.path, exc
                )
                return {}
            except (ValueError, TypeError, OverflowError) as exc:
                # Rows no write of ours made (a hand edit, another program): every restart would
                # read them again, so the file is set aside like one SQLite cannot read.
                self._set_aside(f"holds a row the history cannot take ({exc})")
                return {}
        return out

    def _set_aside(self, why: str) -> None:
        import sqlite3

        aside = self.path.with_name(f"{self.path.name}.corrupt")
        log.warning(
            "VANTAGE_STATE_DIR: %s %s; set aside as %s, the history starts empty", self.path, why, aside
        )
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        try:
            self.path.replace(aside)
            for suffix in ("-wal", "-shm"):
                self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
        except OSError as exc:
            self._warn(f"cannot be set aside ({exc}); the history is kept in memory only")

    def write(
        self,
        buckets: list[tuple[str, int, int, int, int]],
        runs: list[tuple[str, float, int, str | None, float, str, str | None]],
        failures: Mapping[str, tuple[float, str]],
        keep_runs: int,
        keep_details: int,
        since: float,
    ) -> None:
        """Write a batch, then delete what is beyond the bounds: runs past a check's last
        ``keep_runs`` (details past its last ``keep_details``), anything older than ``since``."""
        import sqlite3

        with self._lock:
            db = self._connect()
            if db is None:
                return
            try:
                with _transaction(db):
                    db.executemany("INSERT OR REPLACE INTO buckets VALUES (?, ?, ?, ?, ?)", buckets)
                    db.executemany("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)", runs)
                    db.executemany(
                        "INSERT OR REPLACE INTO last_failure VALUES (?, ?, ?)",
                        [(name, when, text) for name, (when, text) in failures.items()],
                    )
                    for name in {row[0] for row in runs}:
                        db.execute(
                            "DELETE FROM runs WHERE check_name=?1 AND rowid NOT IN "
                            "(SELECT rowid FROM runs WHERE check_name=?1 ORDER BY time DESC LIMIT ?2)",
                            (name, keep_runs),
                        )
                        db.execute(
                            "UPDATE runs SET detail=NULL WHERE check_name=?1 AND detail IS NOT NULL "
                            "AND rowid NOT IN (SELECT rowid FROM runs WHERE check_name=?1 "
                            "ORDER BY time DESC LIMIT ?2)",
                            (name, keep_details),
                        )
                    db.execute("DELETE FROM buckets WHERE (slot+1)*width < ?", (since,))
                    db.execute("DELETE FROM runs WHERE time < ?", (since,))
                    db.execute("DELETE FROM last_failure WHERE time < ?", (since,))
            except sqlite3.Error as exc:
                self._warn(f"cannot be written ({exc}); runs since the last write are kept in memory only")
                return
        if self._failing:
            self._failing = False
            log.info("VANTAGE_STATE_DIR: %s is written again", self.path)

    def close(self) -> None:
        import sqlite3

        with self._lock:
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                self._db = None


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Any:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _trace(text: object) -> int:
    try:
        return int(str(text), 16) & ((1 << 128) - 1)
    except ValueError:
        return 0


def _object(text: str) -> dict[str, Any]:
    """A run in full as the debug view shows it."""
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _message(text: str) -> str:
    message = _object(text).get("message")
    return message if isinstance(message, str) else ""


def _number(value: object, low: float, high: float) -> float:
    """``value`` if it is a number within [low, high]; ValueError otherwise (a bad file)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{value!r} is not a number in [{low:g}, {high:g}]")
    return float(value)


def _text(value: object, *, none: bool = True) -> Any:
    if not (isinstance(value, str) or (none and value is None)):
        raise ValueError(f"{value!r} is not text")
    return value


_TIME = 1e11  # seconds: past any time a run ends at (the year 5138)
_DURATION = 1e6  # seconds: past any run's duration


def _detail(text: object) -> tuple[Detail, dict[str, Any]]:
    """A saved run in full, checked: the fields read from it are of the types written."""
    value = json.loads(_text(text, none=False))
    if not isinstance(value, dict):
        raise ValueError("a run in full is not an object")
    _number(value.get("time", 0.0), 0.0, _TIME)
    _number(value.get("duration", 0.0), 0.0, _DURATION)
    _text(value.get("reason"))
    _text(value.get("message", ""), none=False)
    _text(value.get("trace_id", ""), none=False)
    for key, kind in (("phases", dict), ("attributes", dict), ("assertions", list), ("steps", list)):
        if not isinstance(value.get(key, kind()), kind):
            raise ValueError(f"a run in full's {key} is not a {kind.__name__}")
    requests = value.get("requests", [])
    if not isinstance(requests, list) or not all(isinstance(r, dict) for r in requests):
        raise ValueError("a run in full's requests are not objects")
    return Detail(text), value  # type: ignore[arg-type]


def _saved(buckets: list[Any], rows: list[Any], failure_row: Any) -> Saved:
    """A check's saved history, every row checked (ValueError for a row no write made)."""
    checked = []
    for width, slot, count, failed in buckets:
        if width not in (300, 3600) or isinstance(width, bool):
            raise ValueError(f"a bucket's width is {width!r}")
        checked.append(
            (
                int(width),
                int(_number(slot, 0, 0xFFFFFFFF)),
                int(_number(count, 0, _MAX)),
                int(_number(failed, 0, _MAX)),
            )
        )
        if not isinstance(slot, int) or checked[-1][3] > checked[-1][2]:
            raise ValueError(f"bucket {slot!r} is not whole or has more failures than runs")
    runs: list[tuple[Brief, Detail | None]] = []
    for t, ok, reason, duration, trace, detail in rows:
        if ok not in (0, 1) or isinstance(ok, float | str):
            raise ValueError(f"a run's success is {ok!r}")
        brief = Brief(
            _number(t, 0.0, _TIME),
            bool(ok),
            _text(reason),
            _number(duration, 0.0, _DURATION),
            _trace(_text(trace, none=False)),
        )
        runs.append((brief, None if detail is None else _detail(detail)[0]))
    failure = None
    if failure_row is not None:
        detail, loaded = _detail(failure_row[0])
        failure = (
            Brief(
                _number(loaded.get("time", 0.0), 0.0, _TIME),
                False,
                loaded.get("reason"),
                _number(loaded.get("duration", 0.0), 0.0, _DURATION),
                _trace(loaded.get("trace_id")),
            ),
            detail,
        )
    return checked, runs, failure
