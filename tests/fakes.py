"""A probe type for scheduler tests: it sleeps on the injected clock and notes what it saw."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from agent.sdk import Check, Probe, ProbeContext, ProbeResult, ProbeSettings, Reason

from .helpers import FakeClock


class SteppingClock(FakeClock):
    """A fake clock whose wall time can jump (NTP, a resumed VM) while monotonic time does not."""

    def step_wall(self, seconds: float) -> None:
        self._wall += seconds


class SleepSettings(ProbeSettings):
    seconds: float = 0.0
    fail: bool = False
    crash: bool = False
    raises: Literal["", "CancelledError", "SystemExit", "KeyboardInterrupt", "BaseException", "group"] = ""
    """Raise this BaseException out of ``run`` (``group``: a BaseExceptionGroup holding a
    CancelledError, as a plugin's own task group can let out), after ``seconds``."""
    note: str = ""
    """Written to a step span's attribute, event and status, to test redaction."""
    retry_after: float | None = None
    """Answer as a rate-limited target would: fail and ask for this many seconds of quiet."""
    block: float = 0.0
    """Seconds to block the whole event loop for (a stand-in for an overloaded agent)."""


class SleepProbe(Probe[SleepSettings]):
    name = "sleep"
    Settings = SleepSettings

    def __init__(self) -> None:
        self.starts: dict[str, list[float]] = {}
        self.wall_starts: dict[str, list[float]] = {}
        self.active = 0
        self.max_active = 0
        self.active_per_check: dict[str, int] = {}
        self.max_per_check = 0

    async def run(self, check: Check, settings: SleepSettings, ctx: ProbeContext) -> ProbeResult:
        self.starts.setdefault(check.name, []).append(ctx.clock.monotonic())
        self.wall_starts.setdefault(check.name, []).append(ctx.clock.time())
        if settings.crash:
            raise RuntimeError("probe bug")
        if settings.note:
            with ctx.step("note") as span:
                span.set_attribute("vantage.note", settings.note)
                span.add_event("noted", {"vantage.note": settings.note})
                span.fail("noted", f"failed with {settings.note}")
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        mine = self.active_per_check.get(check.name, 0) + 1
        self.active_per_check[check.name] = mine
        self.max_per_check = max(self.max_per_check, mine)
        try:
            if settings.block:
                time.sleep(settings.block)  # noqa: ASYNC251 - blocking is the point
            await ctx.clock.sleep(settings.seconds)
            if settings.raises:
                raise _base_exception(settings.raises)
        finally:
            self.active -= 1
            self.active_per_check[check.name] -= 1
        if settings.retry_after:
            return ProbeResult.failure(Reason.RATE_LIMITED, "HTTP 429", retry_after=settings.retry_after)
        if settings.fail:
            return ProbeResult.failure(Reason.ASSERTION, "told to fail")
        return ProbeResult(success=True)


def _base_exception(name: str) -> BaseException:
    if name == "group":
        return BaseExceptionGroup("plugin tasks", [asyncio.CancelledError(), ValueError("inner")])
    kinds: dict[str, type[BaseException]] = {
        "CancelledError": asyncio.CancelledError,
        "SystemExit": SystemExit,
        "KeyboardInterrupt": KeyboardInterrupt,
        "BaseException": BaseException,
    }
    return kinds[name](f"raised by the plugin ({name})")


def entry_points() -> list[Any]:
    from importlib.metadata import EntryPoint

    return [
        EntryPoint(name="sleep", value="tests.fakes:SleepProbe", group="vantage.probes"),
        EntryPoint(name="http", value="plugins.http:HttpProbe", group="vantage.probes"),
    ]
