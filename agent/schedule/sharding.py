"""Where a check runs and when in its interval: stable hashes, no coordinator.

* ``offset``: the check's phase inside its interval, from its name and region, so that a thousand
  checks with one interval spread out and a restart keeps each one's phase.
* ``owner``: which of N replicas (or worker processes) runs a check, by rendezvous hashing: when N
  changes by one, only the checks of the replica that came or went move.
* ``select``: the checks one process runs, by region, replica and worker.

Replicas and workers split with independent hashes (the workers' with ``WORKER_SALT``): the
supervisor routes an inbound request to a worker with the same function the worker selects by.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from agent.config.checks import CheckEntry
from agent.config.settings import Shard

__all__ = ["WORKER_SALT", "offset", "owner", "select"]

WORKER_SALT = "worker"


def _hash(*parts: str) -> int:
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def offset(name: str, region: str) -> float:
    """The check's phase as a fraction of its interval, in [0, 1)."""
    return _hash(name, region) / 2**64


def owner(name: str, count: int, salt: str = "") -> int:
    """The shard that runs a check, by rendezvous hashing: when the number of shards changes by
    one, only the checks of the shard that came or went move."""
    return max(range(count), key=lambda index: _hash(salt + str(index), name))


def select(
    entries: Iterable[CheckEntry], region: str, shard: Shard, worker: Shard | None = None
) -> list[CheckEntry]:
    """The checks this process runs: those for its region, of those its shard's share, and of
    those its worker's share (the worker split uses its own hash, independent of the shards')."""
    worker = worker or Shard()
    return [
        entry
        for entry in entries
        if entry.check.runs_in(region)
        and (shard.count == 1 or owner(entry.check.name, shard.count) == shard.index)
        and (worker.count == 1 or owner(entry.check.name, worker.count, WORKER_SALT) == worker.index)
    ]
