"""The event loop's lag: how late it wakes a sleeper, measured on the loop's own clock."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import anyio

__all__ = ["LagMonitor"]

_LAG_PERIOD = 0.1


class LagMonitor:
    """Measures how late the event loop wakes a sleeper: its lag, on the loop's own clock.

    This is the one part of the scheduler that does not read the injected clock, on purpose: lag
    is a property of the real event loop (a blocking call, a starved CPU), and only the loop's own
    clock sees it. A fake clock wakes its sleepers exactly when the test moves it, so a monitor
    sleeping on it would always read zero. Its readings are durations on the loop's clock, and
    are only ever compared with durations, never with the injected clock's instants.
    """

    def __init__(self) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=600)

    @staticmethod
    def now() -> float:
        """The loop's clock, for the instants ``worst_since`` takes (read once per run: the
        loop's own method, not ``anyio.current_time()``, which looks the backend up each time)."""
        return asyncio.get_running_loop().time()

    async def watch(self, report: Callable[[float], None]) -> None:
        """Sample the lag every ``_LAG_PERIOD`` until cancelled, reporting the worst of 10 s."""
        while True:
            before = self.now()
            await anyio.sleep(_LAG_PERIOD)
            now = self.now()
            self.samples.append((now, max(0.0, now - before - _LAG_PERIOD)))
            report(self.worst_since(now - 10.0))

    def worst_since(self, since: float) -> float:
        """The worst lag measured since ``since`` (an instant on the loop's clock)."""
        return max((lag for at, lag in self.samples if at >= since), default=0.0)
