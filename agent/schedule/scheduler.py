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

A failed attempt is re-tested within the same run, up to the check's ``retries``, ``retry_delay``
apart; each attempt is recorded, and the run's outcome, its last attempt's, counts towards the
check's confirmed state (agent/telemetry/recorder.py). A re-test that would start after the next
tick is not made: the tick probes anyway. A run waiting to re-test holds no slot of the concurrency
bound and no task: it is a timer on the clock, then queued for a slot as a due run is. With a 10s
interval, ``retries: 2``, ``retry_delay: 2s``::

    tick 0s ── fails 0.5s ── waits 2s ── re-test fails 3s ── waits 2s ── re-test 5s passes ── 5.4s
    tick 10s ── ...                                (no tick was due meanwhile: nothing skipped)

and with ``retries: 3``, ``retry_delay: 4s`` and a target that fails in 0.5s, the attempts start at
0, 4.5 and 9s; a third re-test would start at 13.5s, after the tick at 10s, so the run ends at
9.5s and the tick at 10s runs. A re-test that waits is cut at once by the agent's shutdown or the
check's removal.

With ``down_interval``, a check whose last run failed, or which is confirmed down, ticks at that
shorter interval from its failed run's tick, until it is confirmed up; then it goes back to its own
phase grid (its next tick there)::

    interval 60s, down_interval 10s, phase 7s:
    tick 7s fails ── tick 17s fails ── 27s passes (confirmed up) ── next tick 67s

``VANTAGE_CONCURRENCY`` bounds the probes in flight; lateness (start minus tick) is measured.

A run is one asyncio task and little else, because at a thousand runs a second its structure is
paid a thousand times: an anyio task group's task, a capacity limiter and a cancel scope per run
cost ~100 µs of CPU (``bench/scheduler.py``), as much as the rest of a trivial run. So:

- a run due while every slot is taken waits in a FIFO as its check, not as a task; it becomes a
  task when a slot frees (the done callback of the run that freed it starts it);
- its timeout is one timer on the injected clock (``Clock.call_later``) that cancels the task.
  Why a run was cancelled (its timeout, or the agent's shutdown) is the scheduler's own note
  (``_Item.cut``), not guessed from the exception: a ``CancelledError`` nobody asked for is the
  plugin's own, a crash. Until the run leaves the probe, the cancellation is delivered again at
  each of its waits, as an anyio cancel scope does, so a plugin's cleanup that waits is cut too.
  A plugin's own anyio cancel scopes and task groups let it through (anyio tells a native
  cancellation from its own); unlike the anyio cancel scope this replaces, an anyio shield inside
  a plugin does not hold it off;
- ``run`` and ``run_once`` own these tasks: neither returns before every run it started has
  ended, cancelling those still going, as a task group would.

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
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable, Collection, Container, Iterable
from dataclasses import dataclass, fields, replace
from functools import partial
from typing import Literal

import anyio
from anyio.abc import TaskStatus

from agent.config.checks import CheckEntry
from agent.schedule.lag import LagMonitor
from agent.schedule.sharding import offset
from agent.sdk.durations import format_duration, plural
from agent.sdk.probe import Clock, ProbeContext, ProbeResult, Reason, Timer
from agent.telemetry.recorder import Recorder, Run

__all__ = ["Scheduler"]

log = logging.getLogger("vantage.scheduler")
_MIN_SLEEP = 0.001  # uvloop turns sleeps under ~0.5ms into busy spins
_MAX_SLEEP = 5.0  # wake at least this often, so the heartbeat /healthz reads stays fresh
_BATCH = 0.02  # runs due within 20ms of a wake-up start together: see the module docstring
_STARVED = 0.25  # a run is starved when the loop lagged by this share of its timeout


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(asyncio.CancelledError) is not None
    return isinstance(exc, asyncio.CancelledError)


@dataclass(eq=False, slots=True)
class _Item:
    """A check, and its run while one is queued or going (a check never has two at once)."""

    entry: CheckEntry
    running: bool = False
    """A run is queued or going: the next tick is skipped (``overlap``)."""
    not_before: float = -math.inf
    """Monotonic time before which the target asked not to be probed (a 429's Retry-After)."""
    due: float = 0.0
    task: asyncio.Task[None] | None = None
    probing: bool = False
    """The run is inside the probe's ``run``, where a cut is delivered."""
    cut: Literal["timeout", "shutdown", "removed"] | None = None
    """Why the scheduler cancelled the run; a shutdown (or the check's removal) outranks a timeout."""
    cancels: int = 0
    """``Task.cancel()`` calls made for ``cut``, undone (``uncancel``) when a timeout is caught."""
    next_due: float = math.inf
    """The check's next tick (monotonic), while ``run`` ticks: the heap's entry for it that has
    this time is the one that counts (a moved tick leaves its old entry behind, skipped)."""
    fast: bool = False
    """Ticking at the check's ``down_interval`` (its last run failed, or it is confirmed down)."""
    attempt: int = 1
    """The attempt the run makes next (1, then 2.. for its re-tests)."""
    retest: Timer | None = None
    """While the run waits to re-test: the timer that queues the re-test. The run still counts
    (``running``) but holds no slot; a shutdown or the check's removal ends it at once."""

    def expire(self) -> None:
        """The run's timeout fell due (a timer on the scheduler's clock)."""
        if self.cut is None and self.probing and self.task is not None:
            self.cut = "timeout"
            self._deliver(self.task)

    def shut_down(self, why: Literal["shutdown", "removed"] = "shutdown") -> None:
        """Cancel the run for the agent's shutdown (or the check's removal), wherever it is."""
        self.cut = why
        if self.task is None:
            return
        if self.probing:
            self._deliver(self.task)
        else:
            self.task.cancel()  # not started yet: it never will

    def _deliver(self, task: asyncio.Task[None]) -> None:
        # Again on every turn of the loop until the run leaves the probe, as an anyio cancel scope
        # does: a plugin that catches the cancellation and waits on something else is cut there too.
        # (``task``, not ``self.task``: the check's next run is not this one's to cancel.)
        if self.probing and task is self.task and not task.done():
            task.cancel()
            self.cancels += 1
            asyncio.get_running_loop().call_soon(self._deliver, task)


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
        self._items = {entry.check.name: _Item(entry) for entry in entries}
        """The checks scheduled, by name (``add`` and ``remove`` change them while running)."""
        self._heap: list[tuple[float, int, _Item]] = []
        """Each check's next tick, while ``run`` ticks."""
        self._order = itertools.count()  # ties in the heap: first added, first started
        self._nap: anyio.CancelScope | None = None
        self._recorder, self._context, self._clock, self._region = recorder, context, clock, region
        self._concurrency = concurrency
        self._tasks: dict[asyncio.Task[None], _Item] = {}
        """The runs going (each holds a slot of ``concurrency``)."""
        self._waiting: deque[_Item] = deque()
        """The runs due with no slot free, first come first started."""
        self._running_count = 0  # queued and going
        self._idle: anyio.Event | None = None
        self._failure: BaseException | None = None
        self._stopping = False
        self._sleep_scope: anyio.CancelScope | None = None
        self._crashed: set[str] = set()
        self._lag = LagMonitor()
        self._overload_warned = -math.inf
        self.running = False
        self.heartbeat = clock.monotonic()
        """Monotonic time of the loop's last turn, for ``/healthz``."""

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self) -> None:
        """Stop ticking; runs in flight go on until drained or cancelled by ``run``'s caller, but a
        run that waits to re-test ends now, its delay still running or its re-test queued for a
        slot (its attempts so far are recorded)."""
        self._stopping = True
        if self._sleep_scope is not None:
            self._sleep_scope.cancel()
        self._drop_retests(self._items.values())
        retests = [item for item in self._waiting if item.attempt > 1]
        for item in retests:
            self._waiting.remove(item)
            item.running = False
            self._running_count -= 1
        if retests and self._running_count == 0 and self._idle is not None:
            self._idle.set()

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
                try:
                    # One scope for the whole loop: stop() cancels it wherever the loop waits.
                    with anyio.CancelScope() as self._sleep_scope:
                        if not self._stopping:
                            await self._loop()
                finally:
                    self.running = False
                if self._running_count and self._failure is None:
                    log.info(
                        "waiting up to %s for %s in flight",
                        format_duration(drain_timeout),
                        plural(self._running_count, "run"),
                    )
                    with self._clock.move_on_after(drain_timeout):
                        await self._wait_for_idle()
            finally:
                await self._cancel_runs()
            tg.cancel_scope.cancel()
        if self._failure is not None:
            raise self._failure

    def _first_due(self, item: _Item) -> float:
        interval = item.entry.check.interval
        phase = offset(item.entry.check.name, self._region) * interval
        wall, mono = self._clock.time(), self._clock.monotonic()
        next_wall = math.ceil((wall - phase) / interval) * interval + phase
        return mono + (next_wall - wall)

    async def _loop(self) -> None:
        heap = self._heap
        heap[:] = []
        for item in self._items.values():
            item.next_due = self._first_due(item)
            heap.append((item.next_due, next(self._order), item))
        heapq.heapify(heap)
        while not self._stopping:
            now = self._clock.monotonic()
            self.heartbeat = now
            while heap and heap[0][0] <= now + _BATCH:
                due, index, item = heap[0]
                if due != item.next_due:  # a tick moved by the adaptive interval: see _adapt
                    heapq.heappop(heap)
                    continue
                check = item.entry.check
                interval = check.down_interval if item.fast and check.down_interval else check.interval
                if item.running:
                    self._recorder.skipped(item.entry, "overlap")
                elif now < item.not_before:
                    # The target asked for time (429 with Retry-After, or its quota spent until a
                    # reset): probing now would only burn the quota this check watches.
                    self._recorder.skipped(item.entry, "backoff")
                else:
                    if item.not_before > -math.inf:
                        item.not_before = -math.inf
                        log.info("check %s: back-off over, probing again", item.entry.check.name)
                    self._admit(item, due)
                following = due + interval
                if following <= now:
                    missed = math.floor((now - following) / interval) + 1
                    following += missed * interval
                    for _ in range(missed):
                        self._recorder.skipped(item.entry, "behind")
                item.next_due = following
                heapq.heapreplace(heap, (following, index, item))
            delay = heap[0][0] - now if heap else 3600.0
            # A scope of its own, so that a check added meanwhile (``add``) wakes the loop.
            with anyio.CancelScope() as self._nap:
                await self._clock.sleep(min(max(delay, _MIN_SLEEP), _MAX_SLEEP))
            self._nap = None

    @property
    def names(self) -> list[str]:
        """The names of the checks scheduled, in the order they were added."""
        return list(self._items)

    def due(self, name: str) -> float | None:
        """When (monotonic) check ``name`` ticks next, or None when it is not scheduled or the
        scheduler is not ticking."""
        item = self._items.get(name)
        if item is None or not self.running or item.next_due == math.inf:
            return None
        return item.next_due

    def add(self, entries: Iterable[CheckEntry]) -> None:
        """Schedule ``entries`` (checks whose names are not scheduled): each ticks from its phase,
        as if it had been there from the start (a check added again keeps its phase)."""
        for entry in entries:
            name = entry.check.name
            if name in self._items:
                raise ValueError(f"check {name!r} is already scheduled; remove it first")
            item = self._items[name] = _Item(entry)
            if self.running:
                item.next_due = self._first_due(item)
                heapq.heappush(self._heap, (item.next_due, next(self._order), item))
        if self._nap is not None:
            self._nap.cancel()

    async def remove(self, names: Collection[str], *, drain: float) -> list[str]:
        """Unschedule the checks ``names``; the names of those whose run in flight did not end
        within ``drain`` seconds (every other run of theirs has ended when this returns).

        A run of a removed check that waits for a slot is dropped; one going is cancelled, as at
        shutdown, and recorded as abandoned (no metric points, no state): its result would speak
        for a check that is no longer configured, and the check's series go with it. Unlike a
        check's timeout, the cancellation holds until the run has left its probe."""
        gone = [self._items.pop(name) for name in names if name in self._items]
        if not gone:
            return []
        dropped = {id(item) for item in gone}
        self._heap[:] = [entry for entry in self._heap if id(entry[2]) not in dropped]
        heapq.heapify(self._heap)
        queued = [item for item in self._waiting if id(item) in dropped]
        for item in queued:
            self._waiting.remove(item)
            item.running = False
            self._running_count -= 1
        self._drop_retests(gone)
        going = [item for item in gone if item.task is not None]
        for item in gone:
            self._crashed.discard(item.entry.check.name)
            item.not_before = -math.inf
            if item.task is not None:
                item.shut_down("removed")
        if not going:
            return []
        with self._clock.move_on_after(drain):
            # Shielded from nothing: a shutdown meanwhile cancels these runs too, and they end.
            await asyncio.wait([item.task for item in going if item.task is not None])
        for item in going:
            task = item.task
            if task is not None and task.done() and self._tasks.get(task) is item:
                self._release(item)  # cancelled before it ever ran: its finally never ran
        if self._running_count == 0 and self._idle is not None:
            self._idle.set()
        return [item.entry.check.name for item in going if item.task is not None]

    def _admit(self, item: _Item, due: float) -> None:
        """Start a run of ``item`` now if a slot is free, else queue it for the next free slot."""
        item.running = True
        item.due = due
        item.attempt = 1
        self._running_count += 1
        if len(self._tasks) < self._concurrency:
            self._start(item)
        else:
            self._waiting.append(item)

    def _start(self, item: _Item) -> None:
        task = asyncio.get_running_loop().create_task(self._run_one(item))
        item.task = task
        self._tasks[task] = item

    def _release(self, item: _Item) -> None:
        """A run's task ended: free its slot and start the next run waiting for one, and free its
        check unless the run waits to re-test.

        Called by the run's task as it ends (so the next run starts in the same turn of the loop),
        or by ``_cancel_runs`` for a task cancelled before it ever ran."""
        if item.task is not None:
            del self._tasks[item.task]
            item.task = None
        if item.retest is None:
            item.running = False
            self._running_count -= 1
        while self._waiting and len(self._tasks) < self._concurrency:
            self._start(self._waiting.popleft())
        if self._running_count == 0 and self._idle is not None:
            self._idle.set()

    def _queue_retest(self, item: _Item) -> None:
        """The retry delay of a run is over: its re-test starts now if a slot is free, else it
        waits for one, as a due run does."""
        item.retest = None
        if len(self._tasks) < self._concurrency:
            self._start(item)
        else:
            self._waiting.append(item)

    def _drop_retests(self, items: Iterable[_Item]) -> None:
        """End the runs of ``items`` that wait to re-test (shutdown, removal): their attempts so
        far are recorded; the re-test is not made."""
        for item in list(items):
            if item.retest is not None:
                item.retest.cancel()
                item.retest = None
                item.running = False
                self._running_count -= 1
        if self._running_count == 0 and self._idle is not None:
            self._idle.set()

    async def _wait_for_idle(self) -> None:
        """Wait until no run is queued or going, or a run failed outside its probe."""
        while self._running_count and self._failure is None:
            self._idle = anyio.Event()
            await self._idle.wait()

    def _fail(self, exc: BaseException) -> None:
        """A run failed outside its probe: stop, as a task group does when a task fails."""
        if self._failure is None:
            self._failure = exc
            self.stop()
            self._drop_waiting()
            if self._idle is not None:
                self._idle.set()

    def _drop_waiting(self) -> None:
        while self._waiting:
            item = self._waiting.popleft()
            item.running = False
            self._running_count -= 1

    async def _cancel_runs(self) -> None:
        """Drop the runs queued or waiting to re-test, cancel those going and wait until they have
        ended."""
        self._drop_waiting()
        self._drop_retests(self._items.values())
        if not self._tasks:
            return
        for item in self._tasks.values():
            item.shut_down()
        # Shielded: this is the cleanup of whatever cancelled us, and the runs end promptly.
        with anyio.CancelScope(shield=True):
            await asyncio.wait(list(self._tasks))
        for item in list(self._tasks.values()):  # cancelled before they ever ran
            self._release(item)

    async def _run_one(self, item: _Item) -> None:
        entry = item.entry
        check = entry.check
        try:
            attempt = item.attempt
            started = self._clock.monotonic()
            if attempt == 1:
                self._recorder.lateness(started - item.due)
            result, run, ctx = await self._attempt(item, started, attempt)
            if result is None:
                return
            retry = self._retries(item, result, attempt)
            try:
                self._recorder.finish_run(run, result, ctx.requests, attempt=attempt, final=not retry)
            except Exception:
                # A recording bug must not take the other checks down with it.
                log.exception("recording the result of check %s failed", check.name)
            if retry:
                # The slot goes to others meanwhile (``_release``); ``_drop_retests`` calls it off.
                item.attempt = attempt + 1
                item.retest = self._clock.call_later(check.retry_delay, partial(self._queue_retest, item))
                return
            if check.down_interval is not None:
                limited = result.reason is Reason.RATE_LIMITED
                self._adapt(item, result.success, run.state.confirmed, limited)
            if result.retry_after:  # said after the run's own line, which says why
                wait = result.retry_after
                log.info(
                    "check %s backs off for %s, as the target asked (%s)",
                    entry.check.name,
                    format_duration(round(wait) if wait >= 1 else round(wait, 3)),
                    result.reason.value if result.reason is not None else "its quota is spent",
                )
        except asyncio.CancelledError:
            raise  # the agent's shutdown
        except BaseException as exc:
            # Not the probe's (whatever it raises is its check's result): the scheduler's own bug,
            # or the recorder's. As in a task group, it ends the scheduler, which raises it.
            self._fail(exc)
        finally:
            self._release(item)

    async def _attempt(
        self, item: _Item, started: float, attempt: int
    ) -> tuple[ProbeResult | None, Run, ProbeContext]:
        """One attempt of a run: its result, or None when it was discarded (a starved loop)."""
        entry = item.entry
        run = self._recorder.start_run(entry, attempt)
        ctx = self._context(entry, run)
        try:
            result = await self._probe(item, ctx, started)
        except BaseException:
            why = "the check was removed" if item.cut == "removed" else "the agent is shutting down"
            self._recorder.abandon_run(run, f"cancelled: {why}")
            raise
        if result is None:
            self._recorder.abandon_run(run, "discarded: the agent's event loop was starved")
            self._recorder.skipped(entry, "overload")
            return None, run, ctx
        if result.duration is None:
            result = _with_duration(result, self._clock.monotonic() - started)
        if result.retry_after:
            item.not_before = self._clock.monotonic() + result.retry_after
        return result, run, ctx

    def _retries(self, item: _Item, result: ProbeResult, attempt: int) -> bool:
        """Whether a failed attempt is re-tested: retries are left, the target did not ask for
        time (a back-off is no failure to confirm, and a rate limit without a Retry-After, or a
        quota running low, is one too: a re-test would only spend the quota), the agent is not
        stopping, and the re-test starts before the check's next tick (else the tick probes
        instead)."""
        check = item.entry.check
        return (
            not result.success
            and attempt <= check.retries
            and not result.retry_after
            and result.reason is not Reason.RATE_LIMITED
            and not self._stopping
            and self._clock.monotonic() + check.retry_delay < item.next_due
        )

    def _adapt(self, item: _Item, success: bool, confirmed: str, limited: bool = False) -> None:
        """The adaptive interval: after a failed run, or while the check is confirmed down, its
        next tick is on the ``down_interval`` grid from this run's tick; once it is confirmed up
        again, its next tick is back on its phase grid. A rate-limited run (``limited``) sends it
        back to its grid too: probing a rate-limited target faster only spends its quota."""
        if not self.running:
            return  # ``run_once``: no next tick
        check = item.entry.check
        step = check.down_interval
        assert step is not None
        now = self._clock.monotonic()
        if (not success or confirmed == "down") and not limited:
            item.fast = True
            following = item.due + step * max(1, math.ceil((now - item.due) / step))
            if following >= item.next_due:
                return
        elif item.fast and (confirmed == "up" or limited):
            item.fast = False
            following = self._first_due(item)
            if following - item.due < _BATCH:
                # This run's fast tick was also a tick of the grid (down_interval divides the
                # interval), and the run ended before, or within the batch of, that tick: the
                # grid's tick is the one just run, not one to run again.
                following += check.interval
            if following == item.next_due:
                return
        else:
            return
        item.next_due = following
        heapq.heappush(self._heap, (following, next(self._order), item))
        if self._nap is not None:
            self._nap.cancel()  # the loop sleeps until the tick it knew

    async def _probe(self, item: _Item, ctx: ProbeContext, started: float) -> ProbeResult | None:
        """The probe's result, a timeout or crash as a result, or None for a starved run.

        Whatever a plugin raises (``CancelledError``, ``SystemExit`` and ``KeyboardInterrupt``
        included) is a crash of that check, recorded as reason ``internal``; only the agent's own
        cancellation (shutdown, or this run's timeout) is let through."""
        entry = item.entry
        check = entry.check
        loop_started = self._lag.now()
        item.cut, item.cancels, item.probing = None, 0, True
        # The deadline is on the scheduler's clock, as the ticks are: a test's fake clock cuts a
        # run at its timeout as surely as the real one does.
        timer = self._clock.call_later(check.timeout, item.expire)
        try:
            result = await entry.probe.run(check, entry.settings, ctx)
            if not isinstance(result, ProbeResult):
                raise TypeError(f"run() returned {type(result).__name__}, not a ProbeResult")
            return result
        except BaseException as exc:
            if item.cut in ("shutdown", "removed"):
                # The agent is stopping (or the check was removed): the run is abandoned, whatever
                # the plugin's cleanup raised on its way out (a session that failed to close must
                # not end the scheduler).
                if _is_cancellation(exc):
                    raise
                raise asyncio.CancelledError() from exc
            if not (item.cut == "timeout" and _is_cancellation(exc)):
                return self._crashed_result(check.name, check.type, ctx, exc)
            # This run's timeout, as our CancelledError or as one the plugin made of it.
        finally:
            item.probing = False
            timer.cancel()
            if item.cut == "timeout":
                _uncancel(item)
        return self._timed_out(check.timeout, ctx, started, loop_started)

    def _timed_out(
        self, timeout: float, ctx: ProbeContext, started: float, loop_started: float
    ) -> ProbeResult | None:
        lag = self._run_lag(timeout, self._clock.monotonic() - started, loop_started)
        if lag > timeout * _STARVED:
            now = self._clock.monotonic()
            if now - self._overload_warned > 60:
                self._overload_warned = now
                log.warning(
                    "the agent is overloaded: its event loop lagged %s; runs that time out meanwhile "
                    "are discarded, not failed (logged once a minute)",
                    format_duration(round(lag, 3)),
                )
            return None
        return ProbeResult.timed_out(timeout, ctx.stage, ctx.kept_values)

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

    async def run_once(self, names: Container[str] | None = None) -> None:
        """Run every check (or those in ``names``) once now, concurrently within the bound
        (``vantage once``)."""
        now = self._clock.monotonic()
        for item in self._items.values():
            if names is None or item.entry.check.name in names:
                self._admit(item, now)
        try:
            await self._wait_for_idle()
        finally:
            await self._cancel_runs()
        if self._failure is not None:
            raise self._failure


_RESULT_FIELDS = tuple(f.name for f in fields(ProbeResult))


def _with_duration(result: ProbeResult, duration: float) -> ProbeResult:
    """``result`` with its ``duration``: a copy made field by field. ``dataclasses.replace`` would
    run ``__init__`` and its checks again (~10 µs a run) on values they have passed already; the
    plugin's own result object is left as it was (it may hand out the same one every run)."""
    if type(result) is not ProbeResult:  # a subclass may have fields of its own
        return replace(result, duration=duration)
    copy = object.__new__(ProbeResult)
    for name in _RESULT_FIELDS:
        object.__setattr__(copy, name, getattr(result, name))
    object.__setattr__(copy, "duration", duration)
    return copy


def _uncancel(item: _Item) -> None:
    """Take back the cancellations a caught timeout made, so the task is not left cancelling."""
    task = item.task
    if task is not None:
        for _ in range(min(item.cancels, task.cancelling())):
            task.uncancel()
    item.cancels = 0
