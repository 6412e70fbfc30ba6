"""Migration proposals: move running jobs to faster chips that are free now.

Contract (stable; the simulator and the control plane's policy-triggered
migration both call it)::

    propose_migrations(snapshot, running, knobs, now) -> tuple[MigrationProposal, ...]

Pure: no I/O, no clock (``now`` is an argument), no globals; the same input
always gives the same proposals. ``snapshot.nodes`` gives the free devices
(the caller passes what is left after this round's placements, so queued
work is served first); ``snapshot.model_speed`` the chip-profile prior.

A running job is moved only when, after paying ``restart_cost_s`` and
redoing the work it loses (done since its last checkpoint), its estimated
remaining time on the target is at least ``min_gain_ratio`` times shorter
than staying put::

    stay = remaining / speed(current)
    move = restart_cost_s + (remaining + lost) / speed(target)
    lost = seconds_since_checkpoint x speed(current)     (reference seconds)
    move when stay >= min_gain_ratio x move

Candidates are the (pool, model) groups where the whole gang fits now (same
filters, memory and packing rules as placement, ``core_fleet`` and
``core_ledger``); the one with the shortest ``move`` wins. Jobs with the
largest gain go first and take their devices from a per-call ledger, so two
proposals never share a device. At most ``max_per_round`` proposals; a job
moved less than ``cooldown_s`` ago is left alone (no ping-pong).

Placement with migration in view (``start_then_move``, called by the core's
round under ``Policy.start_then_migrate``): a job that would wait for a
faster busy group starts now on a free slower one when it can expect to
move up once the faster group frees, so slow chips work instead of idling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from controlplane.scheduler.core_estimate import job_speed, speed_table
from controlplane.scheduler.core_fleet import (
    Group,
    ShapeKey,
    build_groups,
    shape_key,
    static_verdict,
)
from controlplane.scheduler.types import (
    Candidate,
    ClusterSnapshot,
    PendingJob,
    Policy,
    ReplicaAssignment,
)


@dataclass(frozen=True)
class RunningJob:
    """A running job as migration sees it.

    ``remaining_reference_s``: work left, in seconds on the reference chip
    (A100); 0 or less = unknown, never moved. ``speed``: the job's own
    factors per model (as ``PendingJob.speed``); missing models use the
    snapshot's ``model_speed``. Filters as ``PendingJob`` (empty = any).
    """

    job_id: str
    pool: str
    model: str
    replicas: int
    devices_per_replica: int
    remaining_reference_s: float
    tenant: str = ""
    priority: int = 0
    min_device_memory_bytes: int = 0
    families: frozenset[str] = frozenset()
    models: frozenset[str] = frozenset()
    seconds_since_checkpoint: float = 0.0
    speed: tuple[tuple[str, float], ...] = ()
    migratable: bool = True
    last_migrated_at: float | None = None  # absolute; rate-limits moves of one job
    # (node name, devices held there); () = unknown (``core_defrag`` then
    # never moves the job).
    nodes: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class MigrationKnobs:
    """When moving is worth it. Off by default."""

    enabled: bool = False
    # Move only when the remaining time improves by this factor after the move's costs.
    min_gain_ratio: float = 1.3
    # Checkpoint, stop, reschedule and restore, in seconds.
    restart_cost_s: float = 60.0
    # Proposals per call (0 = none).
    max_per_round: int = 4
    # A job moved less than this long ago is not moved again.
    cooldown_s: float = 600.0


@dataclass(frozen=True)
class MigrationProposal:
    """Move ``job_id`` to ``target_pool`` (``target_model``).

    ``estimated_gain_s``: remaining time staying minus remaining time after
    the move (costs included). ``replicas``: where the gang would land now
    (node and device indices per rank), for callers that place it directly.
    """

    job_id: str
    target_pool: str
    target_model: str
    estimated_gain_s: float
    reason: str
    stay_s: float = 0.0
    move_s: float = 0.0
    replicas: tuple[ReplicaAssignment, ...] = ()


def propose_migrations(
    snapshot: ClusterSnapshot,
    running: Sequence[RunningJob],
    knobs: MigrationKnobs,
    now: float,
) -> tuple[MigrationProposal, ...]:
    """Moves worth making now, largest gain first (see module doc)."""
    if not knobs.enabled or knobs.max_per_round <= 0 or not running:
        return ()
    groups = tuple(g for g in build_groups(snapshot.nodes) if g.ledger.free_devices)
    if not groups:
        return ()
    speeds = speed_table(snapshot)
    verdicts: dict[ShapeKey, tuple[Group, ...]] = {}
    ranked = []
    for run in running:
        if not _movable(run, knobs, now):
            continue
        job = as_pending(run)
        key = shape_key(job)
        if key not in verdicts:
            verdicts[key] = static_verdict(groups, job).groups
        options = _candidates(run, verdicts[key], speeds, knobs)
        gain = _best_gain(run, options)
        if gain is not None:
            ranked.append((-gain, run.job_id, run, options))
    ranked.sort(key=lambda item: item[:2])
    out: list[MigrationProposal] = []
    for _, _, run, options in ranked:
        if len(out) >= knobs.max_per_round:
            break
        proposal = _take(run, options)  # earlier moves may have taken the room
        if proposal is not None:
            out.append(proposal)
    return tuple(out)


def _movable(run: RunningJob, knobs: MigrationKnobs, now: float) -> bool:
    recent = run.last_migrated_at is not None and now - run.last_migrated_at < knobs.cooldown_s
    return (run.migratable and not recent and run.remaining_reference_s > 0
            and run.devices_per_replica > 0 and run.replicas > 0)


def as_pending(run: RunningJob) -> PendingJob:
    """The job in placement's terms, so the same fit rules apply."""
    return PendingJob(
        job_id=run.job_id, tenant=run.tenant, queue="", priority=run.priority, order=0,
        replicas=run.replicas, devices_per_replica=run.devices_per_replica,
        min_device_memory_bytes=run.min_device_memory_bytes, families=run.families,
        models=run.models, reference_runtime_s=run.remaining_reference_s, speed=run.speed)


def estimates(run: RunningJob, target_model: str, speeds: dict[str, float],
              knobs: MigrationKnobs) -> tuple[float, float]:
    """(stay_s, move_s): remaining time where it is, and after moving."""
    job = as_pending(run)
    here = job_speed(job, run.model, speeds)
    there = job_speed(job, target_model, speeds)
    lost = max(run.seconds_since_checkpoint, 0.0) * here
    stay = run.remaining_reference_s / here
    move = knobs.restart_cost_s + (run.remaining_reference_s + lost) / there
    return stay, move


def _candidates(run: RunningJob, fitting: Sequence[Group], speeds: dict[str, float],
                knobs: MigrationKnobs) -> list[tuple[float, float, Group]]:
    """(move_s, stay_s, group) of the groups that could hold the job and are
    worth moving to, best first."""
    out = []
    for group in fitting:
        if group.pool == run.pool and group.model == run.model:
            continue
        stay, move = estimates(run, group.model, speeds, knobs)
        if stay >= knobs.min_gain_ratio * move:
            out.append((move, stay, group))
    out.sort(key=lambda c: (c[0], c[2].key))
    return out


def _best_gain(run: RunningJob, options: Sequence[tuple[float, float, Group]]) -> float | None:
    """Gain on the best group with room for the gang now, or None."""
    need = run.replicas * run.devices_per_replica
    for move, stay, group in options:
        ledger = group.ledger
        if (ledger.free_devices >= need
                and ledger.slot_bound(run.devices_per_replica) >= run.replicas):
            return stay - move
    return None


def _take(run: RunningJob, options: Sequence[tuple[float, float, Group]]
          ) -> MigrationProposal | None:
    """Place the gang on the best group that still has room; None if none."""
    job = as_pending(run)
    for move, stay, group in options:
        slots = group.ledger.place_gang(job)
        if slots is None:
            continue
        reason = (f"moving from pool {run.pool} ({run.model}) to pool {group.pool} "
                  f"({group.model}): est. {_hours(move)} left instead of {_hours(stay)}, "
                  f"restart cost and work since last checkpoint included")
        return MigrationProposal(
            job_id=run.job_id, target_pool=group.pool, target_model=group.model,
            estimated_gain_s=stay - move, reason=reason, stay_s=stay, move_s=move,
            replicas=tuple(ReplicaAssignment(rank, node, devices)
                           for rank, (node, devices) in enumerate(slots)))
    return None


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h"


def start_then_move(policy: Policy, job: PendingJob, here: Candidate, busy: Candidate,
                    now: float) -> bool:
    """Should ``job`` start now on ``here`` (free, slower) instead of waiting
    for ``busy`` (faster, frees at ``busy.start_s``)? Only with
    ``Policy.start_then_migrate`` and a ``migratable`` job.

    Moving up once ``busy`` frees costs the restart, and the work done here
    until then is kept except ``Policy.migration_lost_work_s`` of it. Yes when
    that finishes no later than waiting; or when it finishes later by at most
    ``start_then_migrate_slack`` of the time to finish by waiting *and*,
    were the job never moved (queued work takes the faster chips first),
    it would still finish within ``start_then_migrate_margin`` times that
    time. The slack keeps a short job waiting a short while rather than pay
    a restart as long as itself; the margin bounds the loss of one that
    never moves.
    """
    if not (policy.start_then_migrate and job.migratable):
        return False
    ahead = max(busy.start_s - now, 0.0)
    kept = max(ahead - policy.migration_lost_work_s, 0.0)
    done = kept / here.runtime_s if here.runtime_s else 1.0
    moved = busy.start_s + policy.migration_restart_cost_s + max(
        1.0 - done, 0.0) * busy.runtime_s
    if moved <= busy.finish_s:
        return True
    waiting = busy.finish_s - now
    return (moved - now <= (1.0 + policy.start_then_migrate_slack) * waiting
            and here.finish_s - now <= policy.start_then_migrate_margin * waiting)
