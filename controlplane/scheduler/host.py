"""Where the pure core runs: in-process, or in a Ray actor.

The core holds no state between rounds, so a host is a thin shell: it passes
the round's inputs in and the decisions out. A dead actor loses nothing; the
host starts a new one and asks again.

Sharding by pool group comes later: one ``SchedulerShard`` actor per shard,
named by its shard id, each given only its pools' nodes. Today there is one
shard, id 0.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from controlplane.scheduler.core import schedule
from controlplane.scheduler.types import ClusterSnapshot, Decisions, PendingJob, Policy

log = logging.getLogger(__name__)


class SchedulerHost(Protocol):
    """Runs one scheduling round somewhere; ``close`` releases what it holds."""

    def schedule(
        self,
        snapshot: ClusterSnapshot,
        pending: Sequence[PendingJob],
        policy: Policy,
        now: float,
    ) -> Decisions: ...

    def close(self) -> None: ...


class InlineHost:
    """Runs the core in the calling process: tests, small fleets, no Ray."""

    def schedule(
        self,
        snapshot: ClusterSnapshot,
        pending: Sequence[PendingJob],
        policy: Policy,
        now: float,
    ) -> Decisions:
        return schedule(snapshot, tuple(pending), policy, now)

    def close(self) -> None:
        """Nothing to release."""


class SchedulerShard(InlineHost):
    """The Ray actor body: the core for one shard of pools. Stateless."""

    def __init__(self, shard_id: int) -> None:
        self.shard_id = shard_id


def shard_actor_name(shard_id: int, instance: str) -> str:
    """Actor names carry the shard id so shards can be told apart in Ray."""
    return f"xinhe-scheduler-shard-{shard_id}-{instance}"


class RayHost:
    """Runs the core in a Ray actor, on a local Ray or the cluster at ``address``.

    Ray is imported here, lazily, so importing this module stays cheap. When
    the actor has died the call is retried once on a fresh actor; a second
    failure propagates. ``close`` kills the actor, and shuts Ray down when
    this host started it.
    """

    def __init__(self, address: str | None = None, num_cpus: int = 1, shard_id: int = 0) -> None:
        import ray

        self._ray: Any = ray
        self._shard_id = shard_id
        self._instance = uuid.uuid4().hex[:8]
        self._generation = 0  # bumped per respawn: a new actor never waits for an old name
        self._started_ray = False
        if not ray.is_initialized():
            self._init_ray(address, num_cpus)
        self._actor: Any = self._spawn()

    def _init_ray(self, address: str | None, num_cpus: int) -> None:
        quiet = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True}
        if address:
            self._ray.init(address=address, **quiet)
        else:
            self._ray.init(num_cpus=num_cpus, **quiet)
        self._started_ray = True

    def _spawn(self) -> Any:
        remote_shard = self._ray.remote(num_cpus=0)(SchedulerShard)
        self._generation += 1
        name = shard_actor_name(self._shard_id, f"{self._instance}-{self._generation}")
        return remote_shard.options(name=name).remote(self._shard_id)

    @property
    def actor(self) -> Any:
        """The current actor handle (tests kill it to check recovery)."""
        return self._actor

    def schedule(
        self,
        snapshot: ClusterSnapshot,
        pending: Sequence[PendingJob],
        policy: Policy,
        now: float,
    ) -> Decisions:
        args = (snapshot, tuple(pending), policy, now)
        try:
            return self._ray.get(self._actor.schedule.remote(*args))
        except self._ray.exceptions.RayActorError:
            log.warning("scheduler shard %d died; starting a new one", self._shard_id)
            self._actor = self._spawn()
            return self._ray.get(self._actor.schedule.remote(*args))

    def close(self) -> None:
        try:
            self._ray.kill(self._actor)
        except Exception:  # already dead or Ray already down: nothing to free
            log.debug("scheduler shard %d already gone", self._shard_id, exc_info=True)
        if self._started_ray:
            self._ray.shutdown()
            self._started_ray = False
