"""Migration in the simulator: the core's ``propose_migrations`` on what a
round's placements left free.

Queued work is served first (the round's placements are taken out of the
free devices before migration looks), so a move never takes a chip a
waiting job was just given. Running jobs are described to the core with
their true remaining work (the simulator knows it) and the time since their
last checkpoint (one every ``checkpoint_every_s`` of running).
"""

from __future__ import annotations

from collections.abc import Sequence

from controlplane.scheduler.core_defrag import first_defrag
from controlplane.scheduler.core_migrate import (
    MigrationKnobs,
    RunningJob,
    propose_migrations,
)
from controlplane.scheduler.types import ClusterSnapshot, PendingJob
from controlplane.sim.state import RoundView, SimPlacement
from controlplane.sim.state import RunningJob as SimRunning


def migrations(view: RoundView, placed: Sequence[SimPlacement], knobs: MigrationKnobs,
               waiting: Sequence[PendingJob] = ()) -> tuple[SimPlacement, ...]:
    """Moves worth making after ``placed`` started, in the engine's terms:
    consolidating moves (``core_defrag``) for the first of ``waiting`` (queue
    order) that a plan lets fit, else moves to faster free chips. The fleet
    and the running jobs are described to the core once for both."""
    if not knobs.enabled or not view.running:
        return ()
    free = list(view.cluster.free)
    for placement in placed:
        for node, count in placement.devices:
            free[node] -= count
    if not any(free):
        return ()  # nowhere to move to: skip describing the running jobs
    snapshot = ClusterSnapshot(nodes=view.cluster.node_views(free),
                               model_speed=view.physics.model_speeds())
    runs = [migration_view(run, view) for run in view.running]
    gangs = [job for job in waiting if job.replicas * job.devices_per_replica > 1]
    _, proposals = first_defrag(snapshot, runs, gangs, knobs, view.now)
    if not proposals:
        proposals = propose_migrations(snapshot, runs, knobs, view.now)
    return tuple(view.on_devices(p.job_id, p.replicas) for p in proposals)


def migration_view(run: SimRunning, view: RoundView) -> RunningJob:
    """A running simulated job as the core's migration sees it."""
    job = run.queued.job
    pool = view.cluster.fleet.pools[run.pool]
    ran = view.now - run.start
    left = job.reference_runtime_s * run.queued.remaining * (1.0 - run.work_fraction(ran))
    every = view.checkpoint_every_s
    return RunningJob(
        job_id=job.job_id, pool=pool.name, model=pool.model, replicas=job.replicas,
        devices_per_replica=job.devices_per_replica, remaining_reference_s=left,
        tenant=job.tenant, priority=job.priority,
        min_device_memory_bytes=job.min_device_memory_bytes, families=job.families,
        models=job.models, seconds_since_checkpoint=ran % every if every > 0 else 0.0,
        speed=job.speed, last_migrated_at=run.queued.last_migrated_at,
        nodes=tuple((view.cluster.node_names[n], c) for n, c in run.devices))
