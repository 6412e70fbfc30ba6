"""Policy-triggered migration: move running jobs to much faster chips that
have come free (off by default).

After each scheduling round, at most every ``min_interval_s``, the running
checkpointable jobs and the devices the round left free go to the pure
``core_migrate.propose_migrations``; each proposal goes through the same
path as ``xinhe migrate`` (:meth:`MigrationService.migrate_to`: checkpoint,
stop, re-place on the target, resume), with the reason "policy: ..." in
the job's events. Queued work comes first: each evaluation follows a
round, which has placed what it could, and moves take only the devices
left free. Jobs left waiting do not stop moves (a move often frees the chip
they wait for). Free devices a waiting gang's reservation is gathering may
be taken too: keeping moves out of such pools, or letting them in only when
they end before the reservation starts, made the simulated fleet's average
completion time 10-50 % worse (README, "Migration in the simulator"), as
the simulator's ``xinhe`` policy measures it.

Starting on a slower chip, then moving (``start_then_migrate``, on with
migration): a checkpointable job that would wait for a faster busy chip
starts now on a free slower one when moving up once the faster chip frees
is expected to finish at most ``start_then_migrate_slack`` later than
waiting (and within ``start_then_migrate_margin`` times the wait-and-run
time even if it never moves), so slower chips work instead of idling
(``core_migrate.start_then_move``). The moves above take it up.

Consolidating moves (``core_defrag``), tried first at each evaluation: when
the first queued job (queue order) that needs more than one device waits in
a pool that has the devices free but scattered over too many nodes,
running checkpointable single-node jobs of that pool move to other nodes'
free devices of the same pool (pinned to the node: ``node:<pool>:<node>``,
a preference that never strands them) so that it fits; at most
``max_per_round`` moves, each delaying its job by at most 10 % of what it
has left. An evaluation that consolidates makes no other move.

The policy file's section (every key optional)::

    migration:
      enabled: false        # off by default
      min_gain_ratio: 1.3   # stay >= ratio x move (remaining times, costs included)
      restart_cost_s: 60    # checkpoint + stop + reschedule + restore
      max_per_round: 1      # moves per evaluation
      min_interval_s: 30    # seconds between evaluations (rate limit)
      cooldown_s: 600       # a job moved less than this ago stays put
      start_then_migrate: true         # start on a free slower chip, move up later
      start_then_migrate_slack: 0.3    # finish at most 30 % later than waiting
      start_then_migrate_margin: 5     # ... and within 5x even if never moved

Work left is the job's reference runtime minus what its current attempt has
done at its chip's speed (learned throughput when known); work since the last
checkpoint is taken as none, because a migration asks for a checkpoint first.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from controlplane.api.errors import DomainError
from controlplane.model import states
from controlplane.scheduler.core import order_queue
from controlplane.scheduler.core_defrag import first_defrag
from controlplane.scheduler.core_estimate import job_speed, speed_table
from controlplane.scheduler.core_migrate import (
    MigrationKnobs,
    MigrationProposal,
    RunningJob,
    propose_migrations,
)
from controlplane.scheduler.types import ClusterSnapshot, PendingJob, Policy
from controlplane.services.context import Context
from controlplane.services.migration import MigrationService
from controlplane.services.migration_target import MODEL, NODE, Target
from controlplane.services.scheduling import model_speeds
from controlplane.services.throughput import job_type
from controlplane.services.translate import node_views, pending_job
from controlplane.store.base import ConflictError
from controlplane.store.transitions import seconds
from xinhe.v1 import common_pb2

log = logging.getLogger(__name__)

POLICY_PREFIX = "policy: "


class MigrationPolicyError(ValueError):
    """A bad ``migration:`` section; the message names the key."""


@dataclass(frozen=True)
class MigrationPolicy:
    """The ``migration:`` section of the policy file (see module doc)."""

    enabled: bool = False
    min_gain_ratio: float = 1.3
    restart_cost_s: float = 60.0
    max_per_round: int = 1
    min_interval_s: float = 30.0
    cooldown_s: float = 600.0
    start_then_migrate: bool = True
    start_then_migrate_slack: float = Policy.start_then_migrate_slack
    start_then_migrate_margin: float = Policy.start_then_migrate_margin

    def knobs(self) -> MigrationKnobs:
        return MigrationKnobs(enabled=self.enabled, min_gain_ratio=self.min_gain_ratio,
                              restart_cost_s=self.restart_cost_s,
                              max_per_round=self.max_per_round, cooldown_s=self.cooldown_s)

    def core_policy(self, policy: Policy) -> Policy:
        """``policy`` with start-then-migrate as this section sets it: on
        only with migration enabled. A move checkpoints first, so it loses no
        work beyond the restart."""
        if not (self.enabled and self.start_then_migrate and self.max_per_round > 0):
            return replace(policy, start_then_migrate=False) if policy.start_then_migrate \
                else policy
        return replace(policy, start_then_migrate=True,
                       start_then_migrate_slack=self.start_then_migrate_slack,
                       start_then_migrate_margin=self.start_then_migrate_margin,
                       migration_restart_cost_s=self.restart_cost_s,
                       migration_lost_work_s=0.0)


# key -> (integer?, lower bound)
_KEYS: dict[str, tuple[bool, float]] = {
    "min_gain_ratio": (False, 1.0), "restart_cost_s": (False, 0.0),
    "max_per_round": (True, 0.0), "min_interval_s": (False, 0.0), "cooldown_s": (False, 0.0),
    "start_then_migrate_slack": (False, 0.0), "start_then_migrate_margin": (False, 1.0),
}
_FLAGS = ("enabled", "start_then_migrate")


def parse_migration(value: Any) -> MigrationPolicy:
    """The section as a MigrationPolicy (None = defaults: off)."""
    if value is None:
        return MigrationPolicy()
    if not isinstance(value, Mapping):
        raise MigrationPolicyError("migration: expected a mapping of migration keys")
    unknown = sorted(str(k) for k in value if k not in {*_KEYS, *_FLAGS})
    if unknown:
        raise MigrationPolicyError(f"migration: unknown key(s) {', '.join(unknown)}; known: "
                                   f"{', '.join(sorted({*_KEYS, *_FLAGS}))}")
    changes: dict[str, Any] = {}
    for flag in _FLAGS:
        if flag in value:
            if not isinstance(value[flag], bool):
                raise MigrationPolicyError(
                    f"migration.{flag}: expected true or false, got {value[flag]!r}")
            changes[flag] = value[flag]
    for key, (integer, low) in _KEYS.items():
        if key not in value:
            continue
        raw = value[key]
        ok = isinstance(raw, int) if integer else isinstance(raw, int | float)
        if isinstance(raw, bool) or not ok or not math.isfinite(raw) or raw < low:
            what = "an integer" if integer else "a number"
            raise MigrationPolicyError(f"migration.{key}: expected {what} >= {low:g}, "
                                       f"got {raw!r}")
        changes[key] = int(raw) if integer else float(raw)
    return MigrationPolicy(**changes)


# The fleet as a snapshot, and the running checkpointable jobs.
_View = tuple[ClusterSnapshot, list[RunningJob]]


class PolicyMigrations:
    """Evaluates the migration policy after scheduling rounds."""

    def __init__(self, ctx: Context, migrations: MigrationService, config: MigrationPolicy,
                 default_runtime_s: float = 3600.0, policy: Policy | None = None) -> None:
        self.ctx = ctx
        self.policy = policy
        self.migrations = migrations
        self.config = config
        self.default_runtime_s = default_runtime_s
        self._evaluated_at: float | None = None
        self._moved_at: dict[str, float] = {}  # job -> last policy move (rate limit)
        self.moves = 0  # proposals started since start (tests, logs)

    def after_round(self, now: float) -> list[str]:
        """Start the moves worth making now; the ids of the jobs moved."""
        cfg = self.config
        if not cfg.enabled or cfg.max_per_round <= 0:
            return []
        if self._evaluated_at is not None and now - self._evaluated_at < cfg.min_interval_s:
            return []
        self._evaluated_at = now
        view = self._view(now)
        if view is None:
            return []
        plan = self.consolidate(now, view)
        if plan:  # a round that consolidates makes no other move (as the simulator)
            return [p.job_id for p in plan
                    if self._start(p, now, Target(NODE, f"{p.target_pool}:{p.replicas[0].node}"))]
        proposals = self.propose(now, view)
        return [p.job_id for p in proposals
                if self._start(p, now, Target(MODEL, p.target_model))]

    def propose(self, now: float, view: _View | None = None) -> tuple[MigrationProposal, ...]:
        """What the core proposes for the fleet and running jobs as they are
        (``view``: already read this evaluation)."""
        view = view or self._view(now)
        if view is None:
            return ()
        snap, runs = view
        return propose_migrations(snap, runs, self.config.knobs(), now)

    def consolidate(self, now: float, view: _View) -> tuple[MigrationProposal, ...]:
        """Consolidating moves (``core_defrag.first_defrag``) for the first
        queued job, in queue order, whose pool has the devices it waits for
        but scattered over too many nodes; each moves a job to one node of
        its own pool."""
        if self.ctx.pending is None:
            return ()
        with self.ctx.lock:
            reasons = dict(self.ctx.wait_reasons)
        queued = [job for job in order_queue(self.ctx.pending.pending())
                  if job.replicas * job.devices_per_replica > 1 and not job.nodes
                  and not reasons.get(job.job_id, "").startswith("unschedulable")]
        if not queued:
            return ()
        snap, runs = view
        return first_defrag(snap, runs, queued, self.config.knobs(), now)[1]

    def _view(self, now: float) -> _View | None:
        """The fleet's free devices and the running checkpointable jobs."""
        ctx = self.ctx
        with ctx.lock:
            running = [j for j in ctx.store.jobs_in_states([states.RUNNING])
                       if j.spec.checkpoint_dir and j.placement.replicas]
            if not running:
                return None
            snap = ClusterSnapshot(
                nodes=tuple(node_views(ctx.fleet.nodes(), ctx.allocations, ctx.catalogue)),
                model_speed=model_speeds(ctx))
            speeds = speed_table(snap)
            runs = [self.running_job(job, now, speeds) for job in running]
        return snap, runs

    def running_job(self, job: common_pb2.Job, now: float,
                    speeds: dict[str, float]) -> RunningJob:
        """The core's view of a running job: where it is, how much is left."""
        table = self.ctx.throughput
        learned = table.speed(job_type(job.spec)) if table is not None else ()
        pending = pending_job(job, 0, self.ctx.catalogue, learned)
        placement = job.placement
        reference = pending.reference_runtime_s or self.default_runtime_s
        started = seconds(job.started_at) if job.HasField("started_at") else now
        done = max(0.0, now - started) * job_speed(pending, placement.model, speeds)
        # Work a stop now would lose: since the newest checkpoint the agent saw in
        # this attempt; none seen yet = everything since the attempt started.
        checkpoint = table.last_checkpoint(job.id) if table is not None else None
        since_checkpoint = max(0.0, now - max(checkpoint or started, started))
        return RunningJob(
            job_id=job.id, pool=placement.pool, model=placement.model,
            replicas=len(placement.replicas), devices_per_replica=pending.devices_per_replica,
            remaining_reference_s=max(0.0, reference - done), tenant=job.tenant,
            priority=pending.priority, min_device_memory_bytes=pending.min_device_memory_bytes,
            families=pending.families, models=pending.models, speed=pending.speed,
            last_migrated_at=self._moved_at.get(job.id),
            seconds_since_checkpoint=since_checkpoint,
            nodes=_held_per_node(placement),
            # The policy moves jobs to where they finish sooner: a job placed for
            # cost, energy or a pinned family chose its chip for another reason.
            migratable=self._objective(pending) == "fastest")

    def _objective(self, pending: PendingJob) -> str:
        """The job's objective as the core resolves it: its own, its queue's, the default."""
        if pending.objective:
            return pending.objective
        if self.policy is None:
            return "fastest"
        return dict(self.policy.queue_objectives).get(pending.queue,
                                                      self.policy.default_objective or "fastest")

    def _start(self, proposal: MigrationProposal, now: float, target: Target) -> bool:
        reason = POLICY_PREFIX + proposal.reason
        try:
            self.migrations.migrate_to(proposal.job_id, target, reason, trigger="policy")
        except (DomainError, ConflictError) as err:  # it ended or moved meanwhile: skip it
            log.info("policy migration of %s not started: %s", proposal.job_id, err)
            return False
        self._moved_at[proposal.job_id] = now
        self.moves += 1
        log.info("job %s: %s", proposal.job_id, reason)
        return True


def _held_per_node(placement: common_pb2.Placement) -> tuple[tuple[str, int], ...]:
    """(node, devices held there) of a placement, in rank order."""
    held: dict[str, int] = {}
    for replica in placement.replicas:
        held[replica.node] = held.get(replica.node, 0) + len(replica.device_indices)
    return tuple(held.items())
