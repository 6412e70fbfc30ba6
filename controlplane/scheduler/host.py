"""Where the pure core runs: in-process, or in a Ray actor.

The core holds no state between rounds, so a host is a thin shell: it passes
the round's inputs in and the decisions out, with the cyclic garbage
collector paused for the round (``collector``). A dead actor loses nothing; the
host starts a new one and asks again.

Sharding by pool group (``shards``): ``ShardedRayHost`` keeps one
``SchedulerShard`` actor per shard, named by its shard id, and runs each
pass of a round on them in parallel; the split and merge are pure
(``controlplane.scheduler.shards``). ``ShardedInlineHost`` runs the same
passes one shard after the other in-process. ``RayHost`` is the single
shard, id 0.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from controlplane.scheduler.collector import collector_paused
from controlplane.scheduler.core import schedule
from controlplane.scheduler.shards import ShardWork, run_inline, run_shard, schedule_sharded
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
        with collector_paused():
            return schedule(snapshot, tuple(pending), policy, now)

    def close(self) -> None:
        """Nothing to release."""


class SchedulerShard(InlineHost):
    """The Ray actor body: the core for one shard of pools. Stateless."""

    def __init__(self, shard_id: int) -> None:
        self.shard_id = shard_id

    def run(self, work: ShardWork) -> Decisions:
        """One pass of a sharded round on this shard's pools."""
        with collector_paused():
            return run_shard(work)


def shard_actor_name(shard_id: int, instance: str) -> str:
    """Actor names carry the shard id so shards can be told apart in Ray."""
    return f"xinhe-scheduler-shard-{shard_id}-{instance}"


def import_ray() -> Any:
    import ray

    return ray


def start_ray(ray: Any, address: str | None, num_cpus: int) -> bool:
    """Join the cluster at ``address`` or start a local Ray, unless this
    process has Ray already; True when this call started it."""
    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True}
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(num_cpus=num_cpus, **quiet)
    return True


def spawn_shard(ray: Any, shard_id: int, instance: str) -> Any:
    """A new ``SchedulerShard`` actor (no CPU reserved: it only computes when asked)."""
    remote_shard = ray.remote(num_cpus=0)(SchedulerShard)
    return remote_shard.options(name=shard_actor_name(shard_id, instance)).remote(shard_id)


class RayHost:
    """Runs the core in a Ray actor, on a local Ray or the cluster at ``address``.

    Ray is imported here, lazily, so importing this module stays cheap. When
    the actor has died the call is retried once on a fresh actor; a second
    failure propagates. ``close`` kills the actor, and shuts Ray down when
    this host started it.
    """

    def __init__(self, address: str | None = None, num_cpus: int = 1, shard_id: int = 0) -> None:
        self._ray: Any = import_ray()
        self._shard_id = shard_id
        self._instance = uuid.uuid4().hex[:8]
        self._generation = 0  # bumped per respawn: a new actor never waits for an old name
        self._started_ray = start_ray(self._ray, address, num_cpus)
        self._actor: Any = self._spawn()

    def _spawn(self) -> Any:
        self._generation += 1
        return spawn_shard(self._ray, self._shard_id, f"{self._instance}-{self._generation}")

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


class ShardedInlineHost:
    """A sharded round run one shard after the other in this process: the
    same decisions as ``ShardedRayHost`` without Ray (tests, the bench's
    measure of the split and merge cost)."""

    def __init__(self, shards: int) -> None:
        self.shards = _check_shards(shards)

    def schedule(
        self,
        snapshot: ClusterSnapshot,
        pending: Sequence[PendingJob],
        policy: Policy,
        now: float,
    ) -> Decisions:
        with collector_paused():
            return schedule_sharded(snapshot, pending, policy, now, self.shards, run_inline)

    def close(self) -> None:
        """Nothing to release."""


class ShardDied(Exception):
    """Shard actors died during a pass (their ids in ``shards``)."""

    def __init__(self, shards: list[int]) -> None:
        super().__init__(f"scheduler shard(s) {shards} died")
        self.shards = shards


class ShardedRayHost:
    """One Ray actor per shard of pools; each pass of a round runs on them in
    parallel (see ``controlplane.scheduler.shards``).

    The actors hold nothing between calls, so a dead one loses nothing: it is
    respawned under its shard id and the whole round re-run from the same
    (store-derived) inputs, once; a second failure propagates. ``close``
    kills the actors and shuts Ray down when this host started it.
    """

    def __init__(self, shards: int, address: str | None = None, num_cpus: int = 1) -> None:
        self.shards = _check_shards(shards)
        self._ray: Any = import_ray()
        self._instance = uuid.uuid4().hex[:8]
        self._generation = 0
        self._started_ray = start_ray(self._ray, address, num_cpus)
        self._actors: dict[int, Any] = {s: self._spawn(s) for s in range(self.shards)}

    def _spawn(self, shard: int) -> Any:
        self._generation += 1
        return spawn_shard(self._ray, shard, f"{self._instance}-{self._generation}")

    @property
    def actors(self) -> dict[int, Any]:
        """Shard id -> current actor handle (tests kill one to check recovery)."""
        return dict(self._actors)

    def schedule(
        self,
        snapshot: ClusterSnapshot,
        pending: Sequence[PendingJob],
        policy: Policy,
        now: float,
    ) -> Decisions:
        try:
            return schedule_sharded(snapshot, pending, policy, now, self.shards, self._pass)
        except ShardDied as died:
            log.warning("%s; starting new ones and re-running the round", died)
            for shard in died.shards:
                self._actors[shard] = self._spawn(shard)
            return schedule_sharded(snapshot, pending, policy, now, self.shards, self._pass)

    def _pass(self, works: Sequence[ShardWork]) -> list[Decisions]:
        """Submit every shard's work at once, then collect; all shards that
        died are reported together so they are all replaced."""
        refs = [self._actors[w.shard_id].run.remote(w) for w in works]
        results, dead = [], []
        for work, ref in zip(works, refs, strict=True):
            try:
                results.append(self._ray.get(ref))
            except self._ray.exceptions.RayActorError:
                dead.append(work.shard_id)
        if dead:
            raise ShardDied(dead)
        return results

    def close(self) -> None:
        for shard, actor in self._actors.items():
            try:
                self._ray.kill(actor)
            except Exception:  # already dead or Ray already down: nothing to free
                log.debug("scheduler shard %d already gone", shard, exc_info=True)
        if self._started_ray:
            self._ray.shutdown()
            self._started_ray = False


def _check_shards(shards: int) -> int:
    if shards < 1:
        raise ValueError(f"scheduler shards must be >= 1, got {shards}")
    return shards
