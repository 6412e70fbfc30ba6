"""The policies a simulation compares, all answering ``round(view)``.

* :class:`XinheCorePolicy` calls the real scheduler core
  (``controlplane.scheduler.core.schedule``) on a snapshot of the simulated
  fleet: no copy of its logic lives here.
  ``xinhe-fair`` is the same with ``Policy.fair_share`` (tenants in
  weighted fair-share order instead of submission order). After each
  round's placements it asks the core's ``propose_defrag`` whether moving
  a few running jobs within their pool would let the first waiting gang
  that could use it fit (its pool's free devices scattered over too many
  nodes), and otherwise ``propose_migrations`` whether a running job
  should move to a faster chip left free (``controlplane.sim.migrate``);
  ``xinhe-static`` is the same policy without migration (nor
  consolidation).
* :class:`FifoFirstFit` is the heterogeneity-agnostic baseline: jobs
  strictly in submission order (priority ignored), each on the first pool in
  fleet order where its gang fits now, nodes first-fit. Strict FIFO means
  head-of-line blocking: when the head job does not fit, nothing behind it
  starts, as in a plain FIFO queue.
* :class:`PinnedFamily` is the "one stack per job" status quo: the Xinhe
  core, but each job may only use the family it names first. A job naming
  nothing is pinned to a family drawn by a stable hash of its id, weighted
  by device count (tenants who each built for one stack). On a fleet of a
  single family (Gavel's K80/P100/V100) the pin is a model instead, or the
  baseline would not pin anything.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from controlplane.scheduler.core import schedule
from controlplane.scheduler.core_migrate import MigrationKnobs
from controlplane.scheduler.types import PendingJob, Policy
from controlplane.sim.fleet import Pool
from controlplane.sim.migrate import migrations
from controlplane.sim.speeds import Physics, fits
from controlplane.sim.state import (
    Cluster,
    QueuedJob,
    RoundResult,
    RoundView,
    SimPlacement,
    pending_job,
)
from controlplane.sim.trace import TraceJob

# Migration as the simulated Xinhe policy uses it (rate-limited: a few moves
# a round, none of one job within 10 minutes of its last).
MIGRATE = MigrationKnobs(enabled=True, min_gain_ratio=1.3, restart_cost_s=60.0,
                         max_per_round=4, cooldown_s=600.0)


@dataclass
class XinheCorePolicy:
    """The control plane's scheduler core, unchanged, on the simulated fleet."""

    policy: Policy = field(default_factory=Policy)
    name: str = "xinhe"
    migration: MigrationKnobs = field(default_factory=lambda: MIGRATE)
    # Consolidating moves for gangs whose group's free devices are scattered.
    defrag: bool = True

    def round(self, view: RoundView) -> RoundResult:
        pending = [self.pending(q, view.physics) for q in view.queue]
        decisions = schedule(view.snapshot(), pending, self.core_policy(view), view.now)
        placed = tuple(view.placement(d) for d in decisions.placements)
        preempted = tuple(p.job_id for p in decisions.preemptions)
        if preempted:
            return RoundResult(placed, preempted)
        waiting: list[PendingJob] = []
        if self.defrag:
            ids = {w.job_id for w in decisions.waiting if not w.never_fits}
            waiting = [p for p in pending if p.job_id in ids]
        return RoundResult(placed, preempted, migrations(view, placed, self.migration, waiting))

    def pending(self, queued: QueuedJob, physics: Physics) -> PendingJob:
        return pending_job(queued)

    def core_policy(self, view: RoundView) -> Policy:
        """The core's knobs; with migration on, a job that would wait for a
        faster busy chip may start on a slower free one and move later,
        paying the restart and redoing, on average, half a checkpoint
        interval of its run there (``core_migrate.start_then_move``; its
        slack and margin are the ``Policy`` defaults unless set)."""
        knobs = self.migration
        if not knobs.enabled:
            return self.policy
        want = replace(self.policy, start_then_migrate=True,
                       migration_restart_cost_s=knobs.restart_cost_s,
                       migration_lost_work_s=view.checkpoint_every_s / 2)
        if want != self.policy:
            self.policy = want
        return self.policy


@dataclass
class PinnedFamily(XinheCorePolicy):
    """The core with each job narrowed to its first family (see module doc)."""

    name: str = "pinned"
    migration: MigrationKnobs = field(default_factory=MigrationKnobs)  # one stack: no moves
    _pins: dict[str, PendingJob] = field(default_factory=dict, repr=False)

    def pending(self, queued: QueuedJob, physics: Physics) -> PendingJob:
        job = pending_job(queued)
        pinned = self._pins.get(job.job_id)
        if pinned is None or pinned.reference_runtime_s != job.reference_runtime_s:
            families, models = pin(queued.job, physics)
            pinned = self._pins[job.job_id] = replace(job, families=families, models=models)
        return pinned


def pin(job: TraceJob, physics: Physics) -> tuple[frozenset[str], frozenset[str]]:
    """(families, models) filter of the pinned job."""
    fleet = physics.fleet
    by_model = len(fleet.families()) == 1
    pools = physics.fitting_pools(job)
    if job.first_family and not by_model:
        family = first_fitting_family(job, pools, physics)
        models = frozenset(m for m in job.models if physics.catalogue.models[m].family == family)
        return job.families & {family}, models
    units = list(dict.fromkeys(p.model if by_model else p.family for p in pools))
    weights = [sum(p.devices for p in pools if (p.model if by_model else p.family) == u)
               for u in units]
    point = zlib.crc32(job.job_id.encode()) % sum(weights)
    for unit, weight in zip(units, weights, strict=True):
        if point < weight:
            return (frozenset(), frozenset({unit})) if by_model else (frozenset({unit}),
                                                                       frozenset())
        point -= weight
    raise AssertionError("unreachable: point < sum(weights)")


def first_fitting_family(job: TraceJob, pools: Sequence[Pool], physics: Physics) -> str:
    """The first family the job names (as written) that can ever hold it."""
    fitting = {p.family for p in pools}
    for entry in job.named:
        family = entry if entry in physics.catalogue.families else (
            physics.catalogue.models[entry].family)
        if family in fitting:
            return family
    return job.first_family


@dataclass
class FifoFirstFit:
    """Heterogeneity-agnostic FIFO first-fit (see module doc)."""

    name: str = "fifo"

    def round(self, view: RoundView) -> RoundResult:
        free = list(view.cluster.free)  # this round's tentative copy
        placements: list[SimPlacement] = []
        for queued in sorted(view.queue, key=lambda q: q.order):
            placement = first_fit(queued.job, view.physics, view.cluster, free)
            if placement is None:
                break  # head-of-line blocking: strict FIFO
            placements.append(placement)
        return RoundResult(tuple(placements))


def first_fit(job: TraceJob, physics: Physics, cluster: Cluster,
              free: list[int]) -> SimPlacement | None:
    """The first pool (fleet order) that holds the gang now; takes from ``free``."""
    for index, pool in enumerate(physics.fleet.pools):
        if not fits(job, pool):
            continue
        taken = gang_first_fit(job, cluster.pool_nodes[index], free)
        if taken is not None:
            return SimPlacement(job.job_id, index, taken)
    return None


def gang_first_fit(job: TraceJob, nodes: Sequence[int],
                   free: list[int]) -> tuple[tuple[int, int], ...] | None:
    """Replicas onto nodes in order, each node taking as many as fit."""
    d, left = job.devices_per_replica, job.replicas
    taken: list[tuple[int, int]] = []
    for node in nodes:
        n = min(left, free[node] // d)
        if n:
            taken.append((node, n * d))
            left -= n
            if not left:
                break
    if left:
        return None
    for node, count in taken:
        free[node] -= count
    return tuple(taken)


def xinhe_fair() -> XinheCorePolicy:
    """The core with weighted fair share across tenants (equal weights)."""
    return XinheCorePolicy(Policy(fair_share=True), name="xinhe-fair")


def xinhe_static() -> XinheCorePolicy:
    """The core without migration: a job stays on the chip it started on."""
    return XinheCorePolicy(name="xinhe-static", migration=MigrationKnobs())


POLICIES = {"xinhe": XinheCorePolicy, "fifo": FifoFirstFit, "pinned": PinnedFamily,
            "xinhe-fair": xinhe_fair, "xinhe-static": xinhe_static}


def make_policies(names: str | Sequence[str]) -> list[XinheCorePolicy | FifoFirstFit]:
    """Policies by name (comma-separated string or a list), in that order."""
    wanted = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    unknown = [n for n in wanted if n not in POLICIES]
    if unknown or not wanted:
        raise ValueError(f"unknown policy {unknown}; choose from {', '.join(POLICIES)}")
    return [POLICIES[n]() for n in wanted]
