"""The Inbox: inbound requests (webhooks, heartbeats) held per check for the probes that wait on them.

The server puts every request that reached a check of this agent into its inbox, marked with the
problem its probe found when authenticating it (``None`` for a genuine one): a probe reports a bad
signature as ``signature`` rather than as a delivery that never came. Each check keeps its newest
``keep`` requests and at most ``KEEP_BYTES`` of their bodies (the newest request whatever its size),
so a flood costs bounded memory, and so does a heartbeat job that sends its output with every ping:
its pings are read run after run, but stay here until newer ones push them out. Beyond ``keep``,
a rejected request goes before a genuine one, so that a caller without credentials cannot push a
job's pings out before its probe has read them.
"""

from __future__ import annotations

from collections import deque

import anyio

from agent.sdk.types import Delivery, InboundRequest

__all__ = ["KEEP_BYTES", "Inbox"]

KEEP_BYTES = 4 << 20
"""Bytes of request bodies an inbox holds per check: 256 requests at the default body limit were
64 MiB a check."""


class Inbox:
    """Inbound requests per check, for round-trip probes to wait on: the SDK's ``Inbox`` protocol.

    The request and delivery types are the SDK's (``agent/sdk/types.py``)."""

    def __init__(self, keep: int = 256, keep_bytes: int = KEEP_BYTES) -> None:
        self._keep = keep
        self._keep_bytes = keep_bytes
        self._boxes: dict[str, deque[Delivery]] = {}
        self._held: dict[str, int] = {}
        """Bytes of the bodies in each check's box."""
        self._sequence: dict[str, int] = {}
        self._arrived: dict[str, anyio.Event] = {}

    def deliver(self, request: InboundRequest, problem: str | None = None) -> Delivery:
        check = request.check
        sequence = self._sequence.get(check, 0) + 1
        self._sequence[check] = sequence
        delivery = Delivery(request, problem, sequence)
        box = self._boxes.get(check)
        if box is None:
            box = self._boxes[check] = deque()
        box.append(delivery)
        held = self._held.get(check, 0) + len(request.body)
        if len(box) > self._keep:
            # The oldest rejected request goes first: a stranger's flood must not push the
            # genuine requests (a job's "/fail") out before the probe has read them.
            index = next((i for i, d in enumerate(box) if d.problem is not None), 0)
            held -= len(box[index].request.body)
            del box[index]
        while len(box) > 1 and held > self._keep_bytes:
            held -= len(box.popleft().request.body)
        self._held[check] = held
        event = self._arrived.pop(check, None)
        if event is not None:
            event.set()
        return delivery

    def drop(self, check: str) -> None:
        """Forget a removed check's deliveries; anything waiting for one is woken (and finds none)."""
        self._boxes.pop(check, None)
        self._held.pop(check, None)
        self._sequence.pop(check, None)
        event = self._arrived.pop(check, None)
        if event is not None:
            event.set()

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
