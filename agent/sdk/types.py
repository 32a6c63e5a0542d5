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
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from agent.sdk.durations import Duration, format_duration

__all__ = [
    "CONFIRMATION_FIELDS",
    "DEFAULT_CONFIRMATION",
    "DEFAULT_INTERVAL",
    "DEFAULT_RETRY_DELAY",
    "DEFAULT_TIMEOUT",
    "MAX_RETRIES",
    "REDACTED",
    "RESERVED_LABELS",
    "Check",
    "Confirmation",
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
DEFAULT_RETRY_DELAY = 1.0
MAX_RETRIES = 10


def check_labels(labels: Mapping[str, str]) -> Mapping[str, str]:
    """``labels`` if each name is a valid metric label name the agent does not use itself."""
    for key in labels:
        if not _LABEL.match(key) or key.startswith("__"):
            raise ValueError(f"label name {key!r} is not a valid metric label name")
        if key in RESERVED_LABELS:
            raise ValueError(f"label name {key!r} is reserved for the agent's own labels")
    return labels


class Confirmation(BaseModel):
    """When a check's failure is believed (docs/configuration.md, *Confirmation*): re-tests within
    a run, the runs in a row that change its confirmed state, flapping, the adaptive interval.

    Written as fields of the check (and of ``defaults``), kept as one object: a check that leaves
    them all at their defaults holds the shared :data:`DEFAULT_CONFIRMATION`, and costs nothing
    for them (six fields of its own would grow every check's attribute table by some 190 bytes).
    The checks against the interval and the timeout are the configuration's
    (agent/config/checks.py), where both are known."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    retries: int = Field(default=0, ge=0, le=MAX_RETRIES)
    """Re-tests after a failed attempt, within the same run."""
    retry_delay: Duration = DEFAULT_RETRY_DELAY
    """The wait before each re-test; below the interval."""
    failure_threshold: int = Field(default=1, ge=1, le=100)
    """Consecutive failed runs before the confirmed state is ``down``."""
    success_threshold: int = Field(default=1, ge=1, le=100)
    """Consecutive successful runs before the confirmed state is ``up``."""
    flap_threshold: int = Field(default=6, ge=1, le=1000)
    """Confirmed state changes within an hour at which the check is flapping."""
    down_interval: Duration | None = None
    """While the last run failed or the check is confirmed down, it runs at this interval (below
    the interval, above the timeout)."""

    @field_validator("retry_delay")
    @classmethod
    def _retry_delay_positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("the retry delay must be above zero")
        return value

    @field_validator("down_interval")
    @classmethod
    def _down_interval_floor(cls, value: float | None) -> float | None:
        if value is not None and value < 0.1:
            raise ValueError("the down interval must be at least 100ms")
        return value


DEFAULT_CONFIRMATION = Confirmation()
CONFIRMATION_FIELDS = tuple(Confirmation.model_fields)


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
    confirmation: Confirmation = Field(default_factory=lambda: DEFAULT_CONFIRMATION)
    """``retries``, ``retry_delay``, the thresholds and ``down_interval``, written as fields of
    the check and read as its attributes (``check.retries``): kept in one object, the same one for
    every check that leaves them at their defaults (see :class:`Confirmation`)."""
    maintenance: tuple[dict[str, Any], ...] = ()
    """Maintenance windows, as written: agent/config/maintenance.py parses them (with the check
    file's windows that select the check) into the check's ``CheckEntry.maintenance``."""

    FLATTENED: ClassVar[tuple[str, ...]] = CONFIRMATION_FIELDS
    """Fields written on the check and kept in ``confirmation``."""

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

    @model_validator(mode="before")
    @classmethod
    def _gather_confirmation(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and any(name in data for name in CONFIRMATION_FIELDS):
            data = dict(data)
            data["confirmation"] = {n: data.pop(n) for n in CONFIRMATION_FIELDS if n in data}
        return data

    @property
    def retries(self) -> int:
        return self.confirmation.retries

    @property
    def retry_delay(self) -> float:
        return self.confirmation.retry_delay

    @property
    def failure_threshold(self) -> int:
        return self.confirmation.failure_threshold

    @property
    def success_threshold(self) -> int:
        return self.confirmation.success_threshold

    @property
    def flap_threshold(self) -> int:
        return self.confirmation.flap_threshold

    @property
    def down_interval(self) -> float | None:
        return self.confirmation.down_interval

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
    action: str = ""
    """What the path says after the check's name: a heartbeat's ``start``, ``fail``, ``log`` or
    exit code (``/heartbeat/{check}/start``); empty for ``/{endpoint}/{check}`` itself."""


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
