"""``vantage_check_maintenance``: 1 while a maintenance window of a check is open, else 0.

The series is there for every check, so that an alert rule can say
``unless on (check, region) vantage_check_maintenance == 1``. A check without a window gets its 0
once, when it is registered (a bare value in the table, as ``probe_success`` keeps hers) and is
never looked at again; the checks that have a window are worked out at each collection, in the
collecting thread, from the schedule (agent/config/maintenance.py), whose answers hold until a
window's next boundary.

The log lines of a check in a window (its state changes; every run with ``VANTAGE_LOG_RUNS``) say
so: ``check db is failing: connect: refused (in maintenance window weekly-db)``, with a
``maintenance`` field in JSON. Nothing is suppressed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from agent.config.checks import CheckEntry
from agent.config.maintenance import Schedule
from agent.sdk.probe import Clock, MetricKind, MetricSpec
from agent.telemetry.tables import MetricTables

__all__ = ["MAINTENANCE", "MaintenanceGauge"]

MAINTENANCE = MetricSpec(
    "vantage.check.maintenance",
    MetricKind.GAUGE,
    "",
    "1 while a maintenance window of the check is open, else 0",
)


class MaintenanceGauge:
    """Keeps ``vantage.check.maintenance`` of every registered check (see the module docstring)."""

    def __init__(self, tables: MetricTables, schedule: Schedule, clock: Clock) -> None:
        self._table = tables.declare(MAINTENANCE)
        self._schedule, self._clock = schedule, clock
        self._open: set[str] = set()
        """The checks in a window at the last collection."""
        tables.before_collection(self.refresh)

    def register(self, entries: Iterable[CheckEntry]) -> None:
        """Give each check its series, at 0 (after the recorder registered it: its attributes are
        the check's own, bound in the tables)."""
        table = self._table
        bound = table.bound
        for entry in entries:
            name = entry.check.name
            attrs = bound.get(name)
            if attrs is not None:
                table.set(name, None, attrs, 0.0)

    def refresh(self) -> None:
        """Set the series of the checks that have a window, and of those that were in one when a
        reload took their windows away (collections call it first)."""
        schedule, table = self._schedule, self._table
        if not len(schedule) and not self._open:
            return
        now = self._clock.time()
        bound, checks = table.bound, table.checks
        # Under the schedule's lock: a reload replaces the schedule (taking the lock) before it
        # forgets a removed check, so no series is written here for a check that is gone.
        with schedule.lock:
            opened: set[str] = set()
            # Checks picked by one selector share their tuple of windows: asked once for all.
            answers: dict[int, float] = {}
            for name, windows in schedule.items():
                attrs = bound.get(name)
                if attrs is None or name not in checks:
                    continue  # not registered yet (a reload in progress), or not run here
                value = answers.get(id(windows))
                if value is None:
                    value = answers[id(windows)] = 0.0 if schedule.open(name, now) is None else 1.0
                if value:
                    opened.add(name)
                table.set(name, None, attrs, value)
            for name in self._open - opened:
                attrs = bound.get(name)
                if attrs is not None and name in checks:
                    table.set(name, None, attrs, 0.0)
            self._open = opened

    def note(self, record: logging.LogRecord) -> bool:
        """A filter of the checks' logger (``vantage.checks``, while the agent serves): a line about
        a check in a window says which. Never drops a line."""
        name = getattr(record, "check", None)
        schedule = self._schedule
        if isinstance(name, str) and schedule.windows(name):
            found = schedule.open(name, self._clock.time())
            if found is not None:
                title = found.window.title
                record.msg, record.args = f"{record.getMessage()} (in maintenance window {title})", None
                record.maintenance = title
        return True
