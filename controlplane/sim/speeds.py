"""How fast a job runs where: the job's own factors, else the chip profile.

Shared by the engine (true runtimes), the report (lower bound) and load
scaling, so every policy and metric sees the same physics. A job's speed on
a model is its own ``relative_speed`` factor when the trace gives one, else
the catalogue's peak-throughput ratio to the reference chip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from controlplane.model.catalogue import Catalogue, default_catalogue
from controlplane.sim.errors import SimInputError
from controlplane.sim.fleet import Fleet, Pool
from controlplane.sim.trace import TraceJob


@dataclass(frozen=True)
class Physics:
    """Speeds and static fit of jobs on one fleet."""

    fleet: Fleet
    catalogue: Catalogue

    @classmethod
    def of(cls, fleet: Fleet, catalogue: Catalogue | None = None) -> Physics:
        return cls(fleet, catalogue or default_catalogue())

    def model_speeds(self) -> tuple[tuple[str, float], ...]:
        """The chip-profile prior of every fleet model, for the core's snapshot."""
        return tuple((m, self.catalogue.relative_speed(m)) for m in sorted(self.fleet.models()))

    def model_power(self) -> tuple[tuple[str, float], ...]:
        """Watts per device of every fleet model (the catalogue's TDP)."""
        return tuple((m, self.catalogue.power_w(m)) for m in sorted(self.fleet.models()))

    def speed(self, job: TraceJob, model: str) -> float:
        for own, factor in job.speed:
            if own == model:
                return factor
        return self.catalogue.relative_speed(model)

    def runtime_s(self, job: TraceJob, model: str) -> float:
        """Runtime of the whole job alone on ``model``."""
        return job.reference_runtime_s / self.speed(job, model)

    def fitting_pools(self, job: TraceJob) -> tuple[Pool, ...]:
        """Pools that could ever hold the job's gang (filters, memory, size)."""
        return tuple(p for p in self.fleet.pools if fits(job, p))

    def best_runtime_s(self, job: TraceJob) -> float:
        """The physical limit: alone on its fastest fitting chip, no wait."""
        pools = self.fitting_pools(job)
        if not pools:
            raise SimInputError(f"job {job.job_id}: no pool of the fleet can hold it")
        return min(self.runtime_s(job, p.model) for p in pools)

    def fleet_runtime_s(self, job: TraceJob) -> float:
        """Runtime at the job's mean speed over the devices that could hold
        it (weighted by device count): its cost in the fleet's average
        currency of throughput."""
        pools = self.fitting_pools(job)
        total = sum(p.devices for p in pools)
        mean_speed = sum(p.devices * self.speed(job, p.model) for p in pools) / total
        return job.reference_runtime_s / mean_speed


def offers(job: TraceJob, pool: Pool) -> bool:
    """The job's family/model filter admits the pool (empty = any accelerator)."""
    if job.families or job.models:
        return pool.family in job.families or pool.model in job.models
    return pool.family != "cpu"


def fits(job: TraceJob, pool: Pool) -> bool:
    """Could the pool ever hold the whole gang?"""
    return (
        offers(job, pool)
        and pool.device_memory_bytes >= job.min_device_memory_bytes
        and job.devices_per_replica <= pool.devices_per_node
        and pool.nodes * (pool.devices_per_node // job.devices_per_replica) >= job.replicas
    )


def offered_load(jobs: Sequence[TraceJob], physics: Physics) -> float:
    """Device-seconds the jobs need at the fleet's mean speed for each job,
    over the fleet's device-seconds during the arrival span.

    1.0 means the whole fleet, busy with a typical mix, just keeps up with
    arrivals; above 1.0 the queue grows whatever the policy.
    """
    fitting = [j for j in jobs if physics.fitting_pools(j)]
    if len(fitting) < 2:
        raise SimInputError("offered load needs at least two schedulable jobs")
    span = fitting[-1].submit_time_s - fitting[0].submit_time_s
    if span <= 0:
        raise SimInputError("offered load needs jobs submitted at different times")
    work = sum(j.devices * physics.fleet_runtime_s(j) for j in fitting)
    return work / (physics.fleet.devices * span)


def scale_to_load(jobs: Sequence[TraceJob], physics: Physics, load: float) -> list[TraceJob]:
    """Compress or stretch arrival times (from the first arrival) so the
    offered load is ``load``; runtimes and order are unchanged."""
    if load <= 0:
        raise SimInputError(f"--load must be > 0, got {load}")
    factor = offered_load(jobs, physics) / load
    start = jobs[0].submit_time_s
    return [replace(j, submit_time_s=start + (j.submit_time_s - start) * factor) for j in jobs]
