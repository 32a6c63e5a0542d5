"""Hot reload: a new check set, validated first, applied to the running agent without a restart.

What reloads the checks: SIGHUP, ``POST /-/reload`` (behind ``VANTAGE_API_TOKEN`` when it is set),
and a change of the file behind ``VANTAGE_CHECKS_FILE``, looked at every
``VANTAGE_RELOAD_POLL_INTERVAL``. A Kubernetes ConfigMap volume is updated by a symlink swap
(``checks.yml -> ..data/checks.yml``, ``..data -> ..2026_11_29_12_00_00.123``): the watch compares
the path resolved through every link with the file's inode, modification time and size, so a swap
is seen whether or not the file's own times change. Polling, not inotify: it works on every file
system and volume type, and a stat every few seconds costs nothing.

A reload follows Prometheus and Alertmanager:

1. The new set is loaded and validated by the loader of start-up (``load_config``), in a thread,
   so the running checks keep their schedule meanwhile. On any error the running set is kept, the
   reason is logged (secrets redacted, as every error of the loader is) and
   ``vantage_config_last_reload_successful`` is 0 until a reload succeeds.
2. The new set is compared with the running one by check name: a check whose definition is the
   same (every field, settings and resolved secret references included) is left alone: its
   phase, its next tick, its back-off, its probe state, its last result and its series go on as if
   nothing had happened. A new check starts at its next tick (from its phase); a removed one
   stops, and its probe state, last result and series go; a changed one is stopped and started
   anew (new state, new series).
3. A run in flight of a removed (or changed) check is cancelled, as at shutdown, and waited for
   within ``VANTAGE_SHUTDOWN_TIMEOUT``: its result would describe a check that is no longer
   configured. It is recorded as abandoned (its span says why), with no metric point.

Reloads are serialised: one at a time, in the order asked. With worker processes, the supervisor
reloads by asking every worker (agent/process/workers.py); see docs/configuration.md.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio

from agent.config.checks import CheckEntry
from agent.config.maintenance import same_but_windows
from agent.config.secrets import Redactor
from agent.config.settings import Config, load_config
from agent.errors import ConfigError, PluginError
from agent.schedule.sharding import select
from agent.sdk.durations import format_duration
from agent.sdk.probe import Clock, MetricKind, MetricSpec
from agent.server.inbound import inbound_checks
from agent.telemetry.tables import MetricTables

if TYPE_CHECKING:
    from agent.app import Agent

__all__ = [
    "LAST_RELOAD_SUCCESSFUL",
    "LAST_RELOAD_SUCCESS_TIME",
    "RELOAD_METRICS",
    "FileWatch",
    "ReloadResult",
    "ReloadStatus",
    "Reloader",
    "digest",
]

log = logging.getLogger("vantage.reload")
_LISTED = 10  # names listed in a log line, the rest counted

LAST_RELOAD_SUCCESSFUL = MetricSpec(
    "vantage.config.last_reload_successful",
    MetricKind.GAUGE,
    "",
    "1 if the last configuration reload succeeded, else 0 (the previous checks keep running)",
)
LAST_RELOAD_SUCCESS_TIME = MetricSpec(
    "vantage.config.last_reload_success_timestamp",
    MetricKind.GAUGE,
    "s",
    "When the checks were last loaded successfully (at start-up or by a reload), in seconds since the epoch",
)
RELOAD_METRICS = (LAST_RELOAD_SUCCESSFUL, LAST_RELOAD_SUCCESS_TIME)

Status = Literal["reloaded", "unchanged", "failed", "stopping"]


def digest(entries: Iterable[CheckEntry]) -> str:
    """A fingerprint of a whole check set (every check, before sharding): two processes that
    loaded the same set have the same. One-way, so no secret can be read back from it."""
    hashed = hashlib.blake2b(digest_size=16)
    # (A check's windows from the file's own list are not on the check: counted beside it.)
    texts = (
        repr(entry.check.model_dump()) + (repr(entry.maintenance) if entry.maintenance else "")
        for entry in entries
    )
    for text in sorted(texts):
        hashed.update(text.encode("utf-8", "surrogatepass"))
        hashed.update(b"\x00")
    return hashed.hexdigest()


@dataclass(frozen=True)
class ReloadResult:
    """What a reload did, as ``POST /-/reload`` answers it."""

    status: Status
    cause: str
    checks: int = 0
    """The checks this process runs after the reload."""
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    maintenance: tuple[str, ...] = ()
    """Checks whose maintenance windows alone changed: they go on running, with the new windows."""
    error: str = ""
    """Why the reload failed (redacted)."""
    digest: str = ""
    """The fingerprint of the whole set loaded (``digest``), empty when it failed."""

    @property
    def success(self) -> bool:
        return self.status in ("reloaded", "unchanged")

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": self.status, "cause": self.cause}
        if self.success:
            body |= {
                "checks": self.checks,
                "added": list(self.added),
                "removed": list(self.removed),
                "changed": list(self.changed),
                "maintenance": list(self.maintenance),
                "digest": self.digest,
            }
        else:
            body["error"] = self.error
        return body


@dataclass
class ReloadStatus:
    """The outcome of the last load, as ``vantage_config_last_reload_*`` exports it: start-up
    counts as a successful load, as in Prometheus."""

    success_time: float
    successful: bool = True
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    """Held by a reload from start to end: reloads are serialised."""

    def observe(self, tables: MetricTables) -> None:
        """Export both gauges from ``tables`` (read at each collection, /metrics and OTLP)."""
        tables.observe(LAST_RELOAD_SUCCESSFUL, lambda: [({}, 1.0 if self.successful else 0.0)])
        tables.observe(LAST_RELOAD_SUCCESS_TIME, lambda: [({}, self.success_time)])

    def succeeded(self, now: float) -> None:
        self.successful, self.success_time = True, now

    def failed(self) -> None:
        self.successful = False


class FileWatch:
    """Tells when the file behind a path changed: its path resolved through every symlink (a
    ConfigMap's ``..data`` swap), device, inode, modification time and size."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen = self.stamp()

    def stamp(self) -> tuple[object, ...]:
        try:
            resolved = os.path.realpath(self.path)
            info = os.stat(resolved)
        except OSError as exc:
            return ("unreadable", exc.errno)
        return (resolved, info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)

    def mark(self) -> None:
        """Take the file as it is now as seen (a reload is about to read it)."""
        self._seen = self.stamp()

    def changed(self) -> bool:
        """Whether the file changed since it was last seen; it is seen now."""
        now = self.stamp()
        if now == self._seen:
            return False
        self._seen = now
        return True


def names(items: Sequence[str]) -> str:
    """Check names for a log line: the first few, the rest counted."""
    shown = ", ".join(items[:_LISTED])
    return shown + (f" and {len(items) - _LISTED} more" if len(items) > _LISTED else "")


class Reloader:
    """Reloads a single agent's (or a worker's) checks; see the module docstring."""

    def __init__(
        self,
        agent: Agent,
        environ: Mapping[str, str],
        *,
        clock: Clock,
        load: Callable[[Mapping[str, str], Any, Redactor], Config] = load_config,
    ) -> None:
        self._agent, self._environ, self._clock, self._load = agent, dict(environ), clock, load
        self.status = ReloadStatus(clock.time())
        settings = agent.config.settings
        self.poll = settings.reload_poll_interval
        self._watch = FileWatch(settings.checks_file) if settings.checks_file is not None else None

    def export(self) -> None:
        """Export ``vantage_config_last_reload_*`` (by the agent that serves: ``vantage once``
        never reloads)."""
        self.status.observe(self._agent.telemetry.tables)

    @property
    def watching(self) -> bool:
        """Whether :meth:`watch` has a file to watch."""
        return self._watch is not None and self.poll > 0

    async def watch(self) -> None:
        """Reload whenever the checks file changes; runs until cancelled."""
        assert self._watch is not None
        while True:
            await self._clock.sleep(self.poll)
            if self._watch.changed():
                await self.reload(f"{self._watch.path} changed")

    async def reload(self, cause: str) -> ReloadResult:
        """Load the checks again and apply them; what was done (never raises for bad input)."""
        async with self.status.lock:
            agent = self._agent
            if agent.scheduler.stopping:
                return ReloadResult("stopping", cause, error="the agent is stopping")
            if self._watch is not None:
                self._watch.mark()
            redactor = agent.config.redactor
            try:
                # Off the event loop, with the comparison: 10,000 checks take seconds to load.
                plan = await anyio.to_thread.run_sync(partial(self._plan, cause), abandon_on_cancel=True)
            except (ConfigError, PluginError) as exc:
                return self._failed(cause, str(exc))
            except Exception as exc:  # a plugin's validator that crashed: a bug, reported as such
                # (Its message only, redacted: a traceback's frames may hold resolved secrets.)
                why = f"loading the checks crashed: {type(exc).__name__}: {exc}"
                return self._failed(cause, redactor(why))
            # Applied whole or not at all: a caller that goes away (an HTTP client) cannot cut it.
            with anyio.CancelScope(shield=True):
                await self._apply(*plan)
            self.status.succeeded(self._clock.time())
            return plan[1]

    def _failed(self, cause: str, error: str) -> ReloadResult:
        self.status.failed()
        log.error(
            "the checks were not reloaded (%s); the %d running checks are kept: %s",
            cause,
            len(self._agent.entries),
            error,
            extra={"cause": cause},
        )
        return ReloadResult("failed", cause, error=error)

    def _plan(self, cause: str) -> tuple[Config, ReloadResult, dict[str, CheckEntry]]:
        """Load and validate the checks, and tell them apart from the running ones (in a thread:
        the running set changes only under the reload lock, which the caller holds)."""
        agent = self._agent
        config = self._load(self._environ, agent.config.registry, agent.config.redactor)
        settings = config.settings
        old = {entry.check.name: entry for entry in agent.entries}
        mine = select(config.entries, settings.region, config.shard, config.worker)
        new = {entry.check.name: entry for entry in mine}
        removed = [name for name in old if name not in new]
        added = [name for name in new if name not in old]
        changed, retimed = [], []
        for name in new:
            if name not in old:
                continue
            before, after = old[name], new[name]
            # A check whose maintenance windows alone changed keeps running as it is.
            if before.check == after.check:
                if before.maintenance != after.maintenance:
                    retimed.append(name)
            elif same_but_windows(before.check, after.check):
                retimed.append(name)
            else:
                changed.append(name)
        result = ReloadResult(
            "reloaded" if removed or added or changed or retimed else "unchanged",
            cause,
            checks=len(new),
            added=tuple(added),
            removed=tuple(removed),
            changed=tuple(changed),
            maintenance=tuple(retimed),
            digest=digest(config.entries),
        )
        return config, result, new

    async def _apply(self, config: Config, result: ReloadResult, new: dict[str, CheckEntry]) -> None:
        agent = self._agent
        settings, cause = config.settings, result.cause
        old = {entry.check.name: entry for entry in agent.entries}
        added, removed, changed = result.added, result.removed, result.changed
        # The new windows before anything is forgotten: the metric's collection, which reads the
        # schedule under its lock, then never writes a series of a removed check.
        agent.maintenance.replace(new.values())
        if result.status == "unchanged":
            agent.config = config
            self._route(config, new)  # another replica's checks may have changed
            log.info("checks reloaded (%s): no change to the %d checks", cause, len(new))
            return
        stopping = [*removed, *changed]
        if stopping:
            stuck = await agent.scheduler.remove(stopping, drain=settings.shutdown_timeout)
            if stuck:
                log.warning(
                    "runs of removed checks did not end within %s: %s; their results are discarded",
                    format_duration(settings.shutdown_timeout),
                    names(stuck),
                )
            for name in stopping:
                agent.forget(name)
        restarted = set(changed)
        starting = [entry for name, entry in new.items() if name not in old or name in restarted]
        agent.recorder.register(starting)
        if agent.maintenance_gauge is not None:
            agent.maintenance_gauge.register(starting)
        agent.states.retain(new)
        # (A check whose windows alone changed is the new entry here, still the old one in the
        # scheduler: the windows are read from ``agent.maintenance`` alone.)
        kept = restarted.union(result.maintenance)
        agent.entries = [old[name] if name in old and name not in kept else new[name] for name in new]
        agent.config = config
        self._route(config, new)
        agent.scheduler.add(starting)
        log.info(
            "checks reloaded (%s): %d checks; %s",
            cause,
            len(new),
            "; ".join(
                f"{what} {names(which)}"
                for what, which in (
                    ("added", added),
                    ("removed", removed),
                    ("changed", changed),
                    ("new maintenance windows for", result.maintenance),
                )
                if which
            ),
            extra={"cause": cause, "added": len(added), "removed": len(removed), "changed": len(changed)},
        )

    def _route(self, config: Config, mine: Mapping[str, CheckEntry]) -> None:
        """Point the inbound endpoints at the new set (updated in place: the server holds them)."""
        table = self._agent.inbound
        region = inbound_checks(config.entries, config.settings.region)
        fresh = [name for name, entry in region.items() if entry.probe.inbound and name not in table.checks]
        if fresh and not table.served:
            log.warning(
                "checks %s take inbound requests, but this agent started without any such check and "
                "does not serve /hooks and /heartbeat; restart it to serve them",
                names(fresh),
            )
        table.checks.clear()
        table.checks.update(region)
        table.mine.clear()
        table.mine.update(mine)
