"""What a probe sees as data, and the protocols of the agent's parts it is handed.

The data (``Check``, ``InboundRequest``, ``Delivery``, ``REDACTED``) is defined here and the
agent's implementation modules import it from here: ``agent/config/checks.py`` parses checks into
``Check``, ``agent/server/inbound.py`` reads requests into ``InboundRequest``. The agent's parts a
probe reaches through its context are protocols: the ``Inbox`` (``agent/server/inbox.py``), the
``Redactor`` and the ``SecretResolver`` (``agent/config/secrets.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from agent.sdk.durations import Duration, format_duration

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_TIMEOUT",
    "REDACTED",
    "RESERVED_LABELS",
    "Check",
    "Delivery",
    "InboundRequest",
    "Inbox",
    "Redactor",
    "SecretResolver",
    "check_labels",
]

REDACTED = "<redacted>"
"""What a secret is replaced with, in every text the agent writes."""

RESERVED_LABELS = frozenset(
    {
        "check",
        "type",
        "target",
        "region",
        "result",
        "reason",
        "phase",
        "version",
        "step",
        "le",
        "job",
        "instance",
        "cause",
        "signal",
    }
)
CHECK_NAME = r"^[a-z0-9][a-z0-9._-]{0,127}$"
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
DEFAULT_INTERVAL = 60.0
DEFAULT_TIMEOUT = 10.0


def check_labels(labels: Mapping[str, str]) -> Mapping[str, str]:
    """``labels`` if each name is a valid metric label name the agent does not use itself."""
    for key in labels:
        if not _LABEL.match(key) or key.startswith("__"):
            raise ValueError(f"label name {key!r} is not a valid metric label name")
        if key in RESERVED_LABELS:
            raise ValueError(f"label name {key!r} is reserved for the agent's own labels")
    return labels


class Check(BaseModel):
    """One check: what to probe (``type``, ``target``), how often, and the probe's ``settings``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=CHECK_NAME)
    type: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    target: str = Field(min_length=1)
    interval: Duration = DEFAULT_INTERVAL
    timeout: Duration = DEFAULT_TIMEOUT
    regions: tuple[str, ...] | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)
    maintenance: tuple[dict[str, Any], ...] = ()
    """Maintenance windows, as written: agent/config/maintenance.py parses them (with the check
    file's windows that select the check) into the check's ``CheckEntry.maintenance``."""

    _labels = field_validator("labels")(check_labels)

    @field_validator("interval")
    @classmethod
    def _interval_floor(cls, value: float) -> float:
        if value < 0.1:
            raise ValueError("the interval must be at least 100ms")
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout_below_interval(cls, value: float, info: ValidationInfo) -> float:
        interval = info.data.get("interval")
        if value <= 0:
            raise ValueError("the timeout must be above zero")
        if interval is not None and value >= interval:
            raise ValueError(
                f"the timeout ({format_duration(value)}) must be below the interval "
                f"({format_duration(interval)})"
            )
        return value

    def runs_in(self, region: str) -> bool:
        return self.regions is None or region in self.regions


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


class Inbox(Protocol):
    """Inbound requests per check, as a round-trip probe reads and waits on them (``ctx.inbox``).

    The agent's implementation is ``agent/server/inbox.py``, where the server delivers;
    ``agent.sdk.testing`` hands a test the same one, to deliver to."""

    def sequence(self, check: str) -> int:
        """The sequence number of the newest delivery to ``check`` (0 before the first)."""
        ...

    def after(self, check: str, sequence: int) -> list[Delivery]:
        """The deliveries to ``check`` still held whose sequence is above ``sequence``, oldest first."""
        ...

    async def wait(self, check: str, sequence: int) -> None:
        """Return once ``check`` has a delivery past ``sequence``; the caller bounds the wait."""
        ...


class Redactor(Protocol):
    """Removes every known secret, in any spelling, from text (``ctx.redact``): a callable that
    also learns new secrets. The agent's implementation is ``agent/config/secrets.py``."""

    def __call__(self, text: str) -> str:
        """``text`` with every known secret replaced by ``REDACTED``."""
        ...

    def add(self, secret: str, *, ephemeral: bool = False) -> None:
        """Treat ``secret`` as a secret from now on; ``ephemeral`` ones (tokens a refresh replaces)
        are kept in a bounded set."""
        ...

    def deep(self, value: Any) -> Any:
        """Redact every string inside a JSON-like value."""
        ...


class SecretResolver(Protocol):
    """Resolves ``${NAME}`` and ``${file:/path}`` references (``ctx.secrets``), registering each
    value with the redactor. The agent's implementation is ``agent/config/secrets.py``."""

    def resolve(self, text: str) -> str:
        """``text`` with its secret references replaced by their values."""
        ...

    def resolve_tree(self, value: Any, path: str = "") -> Any:
        """Every string inside a JSON-like value resolved."""
        ...
