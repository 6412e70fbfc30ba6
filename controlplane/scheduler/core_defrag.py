"""Consolidating moves: make room for a waiting gang whose group has enough
free devices, but scattered over too many nodes.

Contract (pure: no I/O, no clock, no globals; same input, same output)::

    propose_defrag(snapshot, running, job, knobs, now) -> tuple[MigrationProposal, ...]
    first_defrag(snapshot, running, waiting, knobs, now) -> (job | None, plan)

``job`` is a waiting job (usually a gang). Its groups are walked fastest
first (its own speed factors, else the chip profiles). In the first group
where its gang fits now nothing is proposed (the round places it, or it
waits for a faster chip there by choice). In a group with at least the
devices it needs free, but not on nodes that can each hold whole replicas,
running single-node jobs of that group are moved *within the group* (same
model: they lose no speed) onto devices free now on other nodes, so that
the nodes they leave complete the gang's replica slots. A move only goes
where the devices it takes are no use to the gang (the free devices beyond
that node's whole replica slots), so no move costs the gang a slot.

A job is moved only when it can be moved (``RunningJob.migratable``, not
within ``cooldown_s`` of its last move, its remaining work known) and the
move delays it by at most ``max_delay_share`` of its remaining time
(restart, and redoing the work since its last checkpoint). The plan is
proposed whole, or not at all, and only when it takes at most
``knobs.max_per_round`` moves: the gang then fits in the next round.
Nodes are cleared cheapest first (fewest jobs moved, then fewest devices),
ties by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from controlplane.scheduler.core_estimate import job_speed, speed_table
from controlplane.scheduler.core_fleet import Group, build_groups, shape_key, static_verdict
from controlplane.scheduler.core_migrate import (
    MigrationKnobs,
    MigrationProposal,
    RunningJob,
    estimates,
)
from controlplane.scheduler.types import ClusterSnapshot, PendingJob, ReplicaAssignment

# A consolidating move may delay the moved job by this share of its remaining time.
MAX_DELAY_SHARE = 0.1
# Different waiting job kinds (shape, filters, speed) one call tries at most.
MAX_KINDS = 256


@dataclass
class _Node:
    name: str
    free: list[int]  # free device indices now (moves into it take from here)
    freed: int = 0  # devices that moves out of it will free
    jobs: tuple[RunningJob, ...] = ()  # movable single-node jobs on it


def propose_defrag(
    snapshot: ClusterSnapshot,
    running: Sequence[RunningJob],
    job: PendingJob,
    knobs: MigrationKnobs,
    now: float,
    max_delay_share: float = MAX_DELAY_SHARE,
) -> tuple[MigrationProposal, ...]:
    """Moves that let ``job``'s gang fit in its fastest fragmented group
    (see module doc); () when it fits somewhere better already, or no plan
    within the knobs makes it fit."""
    return first_defrag(snapshot, running, [job], knobs, now, max_delay_share)[1]


def first_defrag(
    snapshot: ClusterSnapshot,
    running: Sequence[RunningJob],
    waiting: Sequence[PendingJob],
    knobs: MigrationKnobs,
    now: float,
    max_delay_share: float = MAX_DELAY_SHARE,
    max_kinds: int = MAX_KINDS,
) -> tuple[PendingJob | None, tuple[MigrationProposal, ...]]:
    """``propose_defrag`` for the first of ``waiting`` (queue order) that a
    plan lets fit, and that plan; (None, ()) when none does. The fleet is
    grouped once; jobs that would get the same answer as one tried before
    (same shape, filters and speed factors) are skipped, and at most
    ``max_kinds`` different ones are tried, so a long queue costs little."""
    if not knobs.enabled or knobs.max_per_round <= 0 or not running:
        return None, ()
    speeds = speed_table(snapshot)
    all_groups = build_groups(snapshot.nodes)
    movable: dict[tuple[str, str], list[RunningJob]] = {}
    for run in running:
        if len(run.nodes) == 1 and _cheap_to_move(run, knobs, now, speeds, max_delay_share):
            movable.setdefault((run.pool, run.model), []).append(run)
    tried: set[tuple[object, ...]] = set()
    for job in waiting:
        if job.devices_per_replica <= 0:
            continue
        kind = (shape_key(job), job.speed)
        if kind in tried:
            continue
        if len(tried) >= max_kinds:
            break
        tried.add(kind)
        plan = _for_job(all_groups, movable, job, knobs, speeds)
        if plan:
            return job, plan
    return None, ()


def _for_job(all_groups: Sequence[Group], movable: dict[tuple[str, str], list[RunningJob]],
             job: PendingJob, knobs: MigrationKnobs, speeds: dict[str, float],
             ) -> tuple[MigrationProposal, ...]:
    groups = sorted(static_verdict(all_groups, job).groups,
                    key=lambda g: (-job_speed(job, g.model, speeds), g.key))
    need = job.replicas * job.devices_per_replica
    for group in groups:
        ledger = group.ledger
        if ledger.free_devices < need:
            continue  # too few free devices however they were arranged
        if ledger.slot_bound(job.devices_per_replica) >= job.replicas:
            return ()  # it fits here now: nothing to make room for
        plan = _plan(group, movable.get((group.pool, group.model), ()), job, knobs, speeds)
        if plan:
            return plan
    return ()


def _plan(group: Group, movable: Sequence[RunningJob], job: PendingJob,
          knobs: MigrationKnobs, speeds: dict[str, float]) -> tuple[MigrationProposal, ...]:
    """The group's plan; ``movable``: its jobs that may move (one node each)."""
    d = job.devices_per_replica
    nodes = {v.name: _Node(v.name, sorted(v.free_devices))
             for v in group.views if v.schedulable}
    for run in movable:
        node = nodes.get(run.nodes[0][0])
        if node is not None:
            node.jobs = (*node.jobs, run)
    out: list[MigrationProposal] = []
    while _slots(nodes.values(), d) < job.replicas:
        step = _cheapest_step(nodes, d)
        if step is None or len(out) + len(step[1]) > knobs.max_per_round:
            return ()
        source, moves = step
        for run, target in moves:
            taken = tuple(target.free[:run.devices_per_replica])
            del target.free[:run.devices_per_replica]
            source.freed += run.devices_per_replica
            source.jobs = tuple(j for j in source.jobs if j is not run)
            stay, move = estimates(run, group.model, speeds, knobs)
            out.append(MigrationProposal(
                job_id=run.job_id, target_pool=group.pool, target_model=group.model,
                estimated_gain_s=stay - move, stay_s=stay, move_s=move,
                reason=(f"making room for gang {job.job_id} in pool {group.pool} "
                        f"({group.model}): moving from node {source.name} to {target.name}"),
                replicas=(ReplicaAssignment(0, target.name, taken),)))
    return tuple(out)


def _cheap_to_move(run: RunningJob, knobs: MigrationKnobs, now: float,
                   speeds: dict[str, float], max_delay_share: float) -> bool:
    recent = run.last_migrated_at is not None and now - run.last_migrated_at < knobs.cooldown_s
    if (recent or not run.migratable or run.remaining_reference_s <= 0
            or run.replicas != 1 or run.devices_per_replica <= 0):
        return False
    stay, move = estimates(run, run.model, speeds, knobs)
    return move - stay <= max_delay_share * stay


def _slots(nodes: Iterable[_Node], d: int) -> int:
    return sum((len(n.free) + n.freed) // d for n in nodes)


def _spare(node: _Node, d: int) -> int:
    """Free devices on ``node`` beyond its whole replica slots (usable by a
    move without costing the gang a slot; never more than are free now)."""
    return min((len(node.free) + node.freed) % d, len(node.free))


def _cheapest_step(nodes: dict[str, _Node], d: int
                   ) -> tuple[_Node, list[tuple[RunningJob, _Node]]] | None:
    """The node that gains one replica slot for the fewest moves (then
    moved devices, then name), with a destination for each job moved off
    it; None when none can. Candidates are tried cheapest first, so the
    destinations are searched only until one works."""
    candidates = []
    for node in nodes.values():
        picked = _cover(node.jobs, d - (len(node.free) + node.freed) % d)
        if picked is not None:
            cost = (len(picked), sum(j.devices_per_replica for j in picked), node.name)
            candidates.append((cost, node, picked))
    if not candidates:
        return None
    spare_now = {n.name: _spare(n, d) for n in nodes.values()}
    for _, node, picked in sorted(candidates, key=lambda c: c[0]):
        spare = dict(spare_now)
        del spare[node.name]  # not onto the node being cleared
        placed = []
        for run in sorted(picked, key=lambda j: (-j.devices_per_replica, j.job_id)):
            fits = [(s, name) for name, s in spare.items() if s >= run.devices_per_replica]
            if not fits:
                break
            _, name = min(fits)  # the tightest leftover first
            spare[name] -= run.devices_per_replica
            placed.append((run, nodes[name]))
        if len(placed) == len(picked):
            return node, placed
    return None


def _cover(jobs: Sequence[RunningJob], deficit: int) -> list[RunningJob] | None:
    """Fewest devices of ``jobs`` adding up to at least ``deficit``: the
    smallest single job that covers it, else the largest ones first."""
    ordered = sorted(jobs, key=lambda j: (j.devices_per_replica, j.job_id))
    for run in ordered:
        if run.devices_per_replica >= deficit:
            return [run]
    picked, total = [], 0
    for run in reversed(ordered):
        picked.append(run)
        total += run.devices_per_replica
        if total >= deficit:
            return picked
    return None
