"""Per-check state owned by the agent: what each probe keeps for a check between its runs.

A probe instance serves every check of its type, so it keeps nothing keyed by check name. What
belongs to one check (a webhook's inbox cursor and awaited run ids, a heartbeat's last ping, an
OAuth token, a schema-drift baseline) lives in that check's :class:`CheckSlots`, which the agent
hands the probe as ``ctx.state`` (the ``ProbeState`` protocol of ``agent/sdk/probe.py``). The agent
keeps one per check in :class:`ProbeStates`, and drops it when the check is removed from the
configuration (``retain`` with the names still configured, or ``drop``): its objects go with it,
and a check added again under the same name starts fresh.

(What a check's runs found, its last result for ``/api/checks``, is the Recorder's ``CheckState``
in ``agent/telemetry/recorder.py``, not this.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

__all__ = ["CheckSlots", "ProbeStates"]

T = TypeVar("T")


class CheckSlots:
    """One check's state: at most one object per class, made on first use (``ProbeState``)."""

    __slots__ = ("_objects",)

    def __init__(self) -> None:
        self._objects: dict[type[Any], Any] = {}

    def get(self, kind: type[T], factory: Callable[[], T] | None = None) -> T:
        """The check's ``kind`` object, made by ``factory()`` (or ``kind()``) the first time."""
        found: object
        if kind in self._objects:
            found = self._objects[kind]
        else:
            found = (factory or kind)()
            # A factory that makes something else would hand a later run the wrong type.
            if not isinstance(found, kind):
                raise TypeError(f"the factory for {kind.__qualname__} made a {type(found).__qualname__}")
            self._objects[kind] = found
        assert isinstance(found, kind)
        return found

    def __len__(self) -> int:
        return len(self._objects)


class ProbeStates:
    """The state of every check this agent runs, by check name; a check's goes when it goes."""

    def __init__(self) -> None:
        self._checks: dict[str, CheckSlots] = {}

    def of(self, check: str) -> CheckSlots:
        """The state of ``check``, empty the first time it is asked for."""
        state = self._checks.get(check)
        if state is None:
            state = self._checks[check] = CheckSlots()
        return state

    def drop(self, check: str) -> None:
        """Forget ``check``'s state (it was removed); nothing happens for a check with none."""
        self._checks.pop(check, None)

    def retain(self, checks: Iterable[str]) -> list[str]:
        """Keep the state of ``checks`` only, dropping every other check's; the names dropped."""
        kept = set(checks)
        gone = sorted(name for name in self._checks if name not in kept)
        for name in gone:
            self.drop(name)
        return gone

    def __contains__(self, check: object) -> bool:
        return check in self._checks

    def __len__(self) -> int:
        return len(self._checks)
