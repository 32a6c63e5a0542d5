"""The Scheduler: every check at a fixed rate from a deterministic offset, on one timer heap.

Each check ticks at ``phase + k * interval`` on the wall clock, where ``phase`` is a hash of the
check's name and region. A thousand checks with the same interval spread over it instead of firing
together, and a restarted agent keeps the same phase. After the first tick, ticks advance on the
monotonic clock, so they never drift and ignore wall-clock jumps.

A run never overlaps the next run of the same check. With a 10s interval and a run that hangs
until its 9s timeout while the probe pool is full::

    tick 0s ── waits for a slot ── starts 3s ─────────── times out 12s
    tick 10s   previous run still going → skipped (counted as cause="overlap")
    tick 20s ── starts 20s ── ...

and when the agent itself stalls (a paused container), the ticks it missed are skipped, not
replayed in a burst (cause="behind"). A run whose target asked for time (``retry_after``: a 429's
``Retry-After``, a quota spent until its reset) makes the ticks before then skip too
(cause="backoff"), so the monitor never burns the quota it watches.

A run that times out while the event loop itself was starved (more CPU asked of the agent than it
has, or something blocking the loop) says nothing about its target: it is discarded and counted
(cause="overload") rather than reported as a failure, so an overloaded agent raises its own alarm
(``vantage_event_loop_lag_seconds``, ``vantage_runs_skipped_total``), not a false one per check.

``VANTAGE_CONCURRENCY`` bounds the probes in flight; lateness (start minus tick) is measured.

One clock, the injected ``Clock``, gives the ticks, the sleeps between them and every deadline (a
run's timeout, the drain at shutdown), so a test's fake clock drives timeouts as it drives ticks.
Only the event-loop lag monitor reads the loop's own clock: see ``agent.schedule.lag`` for why.

When the scheduler wakes for a tick it also starts the runs due within the next 20 ms. Runs that
start together share the event loop's wake-ups for their connects, writes and reads; a run alone
pays for its own, and measured at 200 probes a second that was a third of the CPU. No tick moves
by more than 20 ms, and ticks are still computed from the grid, so the phase and the rate hold.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from agent.config.checks import CheckEntry
from agent.schedule.lag import LagMonitor
from agent.schedule.sharding import offset
from agent.sdk.durations import format_duration
from agent.sdk.probe import Clock, ProbeContext, ProbeResult, Reason
from agent.telemetry.recorder import Recorder, Run

__all__ = ["Scheduler"]

log = logging.getLogger("vantage.scheduler")
_MIN_SLEEP = 0.001  # uvloop turns sleeps under ~0.5ms into busy spins
_MAX_SLEEP = 5.0  # wake at least this often, so the heartbeat /healthz reads stays fresh
_BATCH = 0.02  # runs due within 20ms of a wake-up start together: see the module docstring
_STARVED = 0.25  # a run is starved when the loop lagged by this share of its timeout


def _is_cancellation(exc: BaseException) -> bool:
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(cancelled) is not None
    return isinstance(exc, cancelled)


def _cancel_requested() -> bool:
    """Whether something asked to cancel the running task: the agent's shutdown, not a plugin.

    A plugin can raise ``CancelledError`` itself (or let one of its own tasks' out); that must not
    stop the agent. A real cancellation is requested of the task first: anyio's cancel scopes (the
    scheduler's task group at shutdown) call ``Task.cancel()``, which ``Task.cancelling()`` counts
    until the scope that asked has caught it. This run's own timeout scope is not counted here:
    it is told apart by its ``cancel_called``. (The agent runs on asyncio, where both hold.)"""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@dataclass(eq=False, slots=True)
class _Item:
    entry: CheckEntry
    running: bool = False
    not_before: float = -math.inf
    """Monotonic time before which the target asked not to be probed (a 429's Retry-After)."""


class Scheduler:
    """Runs the checks it is given until stopped; see the module docstring."""

    def __init__(
        self,
        entries: Iterable[CheckEntry],
        *,
        recorder: Recorder,
        context: Callable[[CheckEntry, Run], ProbeContext],
        clock: Clock,
        region: str,
        concurrency: int,
    ) -> None:
        self._items = [_Item(entry) for entry in entries]
        self._recorder, self._context, self._clock, self._region = recorder, context, clock, region
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._stopping = False
        self._sleep_scope: anyio.CancelScope | None = None
        self._crashed: set[str] = set()
        self._lag = LagMonitor()
        self._overload_warned = -math.inf
        self._idle = anyio.Event()
        self._running_count = 0
        self.running = False
        self.heartbeat = clock.monotonic()
        """Monotonic time of the loop's last turn, for ``/healthz``."""

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self) -> None:
        """Stop ticking; runs in flight go on until drained or cancelled by ``run``'s caller."""
        self._stopping = True
        if self._sleep_scope is not None:
            self._sleep_scope.cancel()

    async def run(
        self,
        *,
        drain_timeout: float = 10.0,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Tick until ``stop()``, then wait up to ``drain_timeout`` for runs in flight, then cancel them."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._lag.watch, self._recorder.loop_lag)
            self.running = True
            task_status.started()
            try:
                # One scope for the whole loop: stop() cancels it wherever the loop waits.
                with anyio.CancelScope() as self._sleep_scope:
                    if not self._stopping:
                        await self._loop(tg)
            finally:
                self.running = False
            if self._running_count:
                log.info(
                    "waiting up to %s for %d runs in flight",
                    format_duration(drain_timeout),
                    self._running_count,
                )
                with self._clock.move_on_after(drain_timeout):
                    await self._idle.wait()
            tg.cancel_scope.cancel()

    def _first_due(self, item: _Item) -> float:
        interval = item.entry.check.interval
        phase = offset(item.entry.check.name, self._region) * interval
        wall, mono = self._clock.time(), self._clock.monotonic()
        next_wall = math.ceil((wall - phase) / interval) * interval + phase
        return mono + (next_wall - wall)

    async def _loop(self, tg: TaskGroup) -> None:
        heap: list[tuple[float, int, _Item]] = [
            (self._first_due(item), index, item) for index, item in enumerate(self._items)
        ]
        heapq.heapify(heap)
        while not self._stopping:
            now = self._clock.monotonic()
            self.heartbeat = now
            while heap and heap[0][0] <= now + _BATCH:
                due, index, item = heap[0]
                interval = item.entry.check.interval
                if item.running:
                    self._recorder.skipped(item.entry, "overlap")
                elif now < item.not_before:
                    # The target asked for time (429 with Retry-After, or its quota spent until a
                    # reset): probing now would only burn the quota this check watches.
                    self._recorder.skipped(item.entry, "backoff")
                else:
                    item.running = True
                    self._running_count += 1
                    tg.start_soon(self._run_one, item, due)
                following = due + interval
                if following <= now:
                    missed = math.floor((now - following) / interval) + 1
                    following += missed * interval
                    for _ in range(missed):
                        self._recorder.skipped(item.entry, "behind")
                heapq.heapreplace(heap, (following, index, item))
            delay = heap[0][0] - now if heap else 3600.0
            await self._clock.sleep(min(max(delay, _MIN_SLEEP), _MAX_SLEEP))

    async def _run_one(self, item: _Item, due: float) -> None:
        entry = item.entry
        check = entry.check
        try:
            async with self._limiter:
                started = self._clock.monotonic()
                self._recorder.lateness(started - due)
                run = self._recorder.start_run(entry)
                ctx = self._context(entry, run)
                try:
                    result = await self._probe(entry, ctx, started)
                except BaseException:
                    self._recorder.abandon_run(run, "cancelled: the agent is shutting down")
                    raise
                if result is None:
                    self._recorder.abandon_run(run, "discarded: the agent's event loop was starved")
                    self._recorder.skipped(entry, "overload")
                    return
                if result.duration is None:
                    result = replace(result, duration=self._clock.monotonic() - started)
                if result.retry_after:
                    item.not_before = self._clock.monotonic() + result.retry_after
                try:
                    self._recorder.finish_run(run, result, ctx.requests)
                except Exception:
                    # A recording bug must not take the other checks down with it.
                    log.exception("recording the result of check %s failed", check.name)
        finally:
            item.running = False
            self._running_count -= 1
            if self._stopping and self._running_count == 0:
                self._idle.set()

    async def _probe(self, entry: CheckEntry, ctx: ProbeContext, started: float) -> ProbeResult | None:
        """The probe's result, a timeout or crash as a result, or None for a starved run.

        Whatever a plugin raises (``CancelledError``, ``SystemExit`` and ``KeyboardInterrupt``
        included) is a crash of that check, recorded as reason ``internal``; only the agent's own
        cancellation (shutdown, or this run's timeout) is let through."""
        check = entry.check
        result: Any = None
        scope: anyio.CancelScope | None = None
        loop_started = self._lag.now()
        try:
            # The deadline is on the scheduler's clock, as the ticks are: a test's fake clock
            # cuts a run at its timeout as surely as the real one does.
            with self._clock.move_on_after(check.timeout) as scope:
                result = await entry.probe.run(check, entry.settings, ctx)
                if not isinstance(result, ProbeResult):
                    raise TypeError(f"run() returned {type(result).__name__}, not a ProbeResult")
                return result
        except BaseException as exc:
            if _is_cancellation(exc) and _cancel_requested():
                raise  # the agent is shutting down
            if not (_is_cancellation(exc) and scope is not None and scope.cancel_called):
                return self._crashed_result(check.name, check.type, ctx, exc)
            # Our own timeout, which the plugin let out as a CancelledError of its own making.
        lag = self._run_lag(check.timeout, self._clock.monotonic() - started, loop_started)
        if lag > check.timeout * _STARVED:
            now = self._clock.monotonic()
            if now - self._overload_warned > 60:
                self._overload_warned = now
                log.warning(
                    "the agent is overloaded: its event loop lagged %s; runs that time out meanwhile "
                    "are discarded, not failed (logged once a minute)",
                    format_duration(round(lag, 3)),
                )
            return None
        return ProbeResult.timed_out(check.timeout, ctx.stage)

    def _run_lag(self, timeout: float, elapsed: float, loop_started: float) -> float:
        """How long the agent kept a run that timed out from its time; above a share of the
        timeout (``_STARVED``), the run was starved by the agent, not slow at its target.

        Two measures of the same thing, each on its own clock and compared only as durations:
        how far past its deadline the run was cut (the scheduler's clock: the deadline is on it),
        and the worst lag of the event loop while the run was going (the loop's clock, from this
        run's start, not a window reaching back before it). Either above a share of the timeout
        means the loop could not have given the run its time."""
        return max(elapsed - timeout, self._lag.worst_since(loop_started))

    def _crashed_result(self, name: str, type_: str, ctx: ProbeContext, exc: BaseException) -> ProbeResult:
        if name not in self._crashed:
            self._crashed.add(name)
            log.error("probe %s crashed on check %s; logged once per check", type_, name, exc_info=exc)
        detail = str(exc)
        return ProbeResult.failure(
            Reason.INTERNAL,
            ctx.redact(f"the probe crashed: {type(exc).__name__}{': ' + detail if detail else ''}"),
        )

    async def run_once(self) -> None:
        """Run every check once now, concurrently within the bound (``vantage once``)."""
        async with anyio.create_task_group() as tg:
            for item in self._items:
                item.running = True
                self._running_count += 1
                tg.start_soon(self._run_one, item, self._clock.monotonic())
