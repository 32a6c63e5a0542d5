"""The Inbox: inbound requests (webhooks, heartbeats) held per check for the probes that wait on them.

The server puts every request that reached a check of this agent into its inbox, marked with the
problem its probe found when authenticating it (``None`` for a genuine one): a probe reports a bad
signature as ``signature`` rather than as a delivery that never came. Each check keeps its newest
``keep`` requests, so a flood costs bounded memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import anyio

__all__ = ["Delivery", "InboundRequest", "Inbox"]


@dataclass(frozen=True, slots=True)
class InboundRequest:
    """A request to ``/hooks/{check}`` or ``/heartbeat/{check}``, as the server read it."""

    endpoint: str
    """``hooks`` or ``heartbeat``."""
    check: str
    method: str
    headers: Mapping[str, str]
    """Case-insensitive."""
    query: Mapping[str, str]
    body: bytes
    """The raw body, at most the server's size limit."""
    remote: str
    received: float
    """Wall-clock seconds since the epoch: for timestamps shown to people and signed timestamps."""
    received_monotonic: float
    """The agent's monotonic clock at receipt: for ages and latencies, which a step of the wall
    clock (NTP, a suspended VM) must not move."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """An inbound request in a check's inbox."""

    request: InboundRequest
    problem: str | None
    """Why it is not genuine (a bad signature or token), or None."""
    sequence: int
    """Increases by one per delivery to the same check; a probe waits for one past what it saw."""


class Inbox:
    """Inbound requests per check, for round-trip probes to wait on."""

    def __init__(self, keep: int = 256) -> None:
        self._keep = keep
        self._boxes: dict[str, deque[Delivery]] = {}
        self._sequence: dict[str, int] = {}
        self._arrived: dict[str, anyio.Event] = {}

    def deliver(self, request: InboundRequest, problem: str | None = None) -> Delivery:
        check = request.check
        sequence = self._sequence.get(check, 0) + 1
        self._sequence[check] = sequence
        delivery = Delivery(request, problem, sequence)
        box = self._boxes.get(check)
        if box is None:
            box = self._boxes[check] = deque(maxlen=self._keep)
        box.append(delivery)
        event = self._arrived.pop(check, None)
        if event is not None:
            event.set()
        return delivery

    def sequence(self, check: str) -> int:
        """The sequence number of the newest delivery to ``check`` (0 before the first)."""
        return self._sequence.get(check, 0)

    def after(self, check: str, sequence: int) -> list[Delivery]:
        """The deliveries to ``check`` still held whose sequence is above ``sequence``, oldest first."""
        return [d for d in self._boxes.get(check, ()) if d.sequence > sequence]

    async def wait(self, check: str, sequence: int) -> None:
        """Return once ``check`` has a delivery past ``sequence``; the caller bounds the wait."""
        while self._sequence.get(check, 0) <= sequence:
            event = self._arrived.get(check)
            if event is None:
                event = self._arrived[check] = anyio.Event()
            await event.wait()
