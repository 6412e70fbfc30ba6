"""A seeded synthetic workload on a Chinese-chip fleet.

Six pools of six catalogue models in two regions (H100, A100, 910B,
MLU370-X8, K100_AI, P800) and a Poisson stream of jobs from several
tenants. Like Gavel's measurements, a job *type* gains unequally from each
chip: its speed on a model is the chip profile times a per-(type, model)
factor drawn once (log-normal), so peak TFLOPS alone misranks chips for
some jobs. Everything derives from ``random.Random(seed)``: same seed, same
files.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from controlplane.model.catalogue import Catalogue, default_catalogue
from controlplane.sim.fleet import Fleet, make_pool
from controlplane.sim.speeds import Physics, scale_to_load
from controlplane.sim.trace import GB, TraceJob, classify

# (pool, region, model, nodes, devices per node, cost per device-hour)
CHINESE_FLEET = (
    ("h100-east", "east", "H100", 8, 8, 2.9),
    ("a100-east", "east", "A100", 12, 8, 1.6),
    ("910b-west", "west", "910B", 24, 8, 1.2),
    ("mlu370-west", "west", "MLU370-X8", 16, 8, 0.5),
    ("k100-west", "west", "K100_AI", 16, 8, 0.7),
    ("p800-east", "east", "P800", 12, 8, 1.1),
)
TENANTS = ("lab-a", "lab-b", "corp-c", "univ-d", "startup-e")
JOB_TYPES = 12  # distinct job types with their own per-chip speed profile
SPEED_SIGMA = 0.45  # spread of a job type's speed around the chip profile (log-space)
# (devices per replica, replicas, weight): mostly small jobs, a few large gangs.
SHAPES = ((1, 1, 40), (2, 1, 15), (4, 1, 15), (8, 1, 18), (8, 2, 8), (8, 4, 4))


def chinese_fleet(catalogue: Catalogue | None = None) -> Fleet:
    return Fleet(tuple(make_pool(*row, catalogue=catalogue) for row in CHINESE_FLEET))


@dataclass(frozen=True)
class JobType:
    speed: tuple[tuple[str, float], ...]  # own factor per model


def job_types(rng: random.Random, fleet: Fleet, cat: Catalogue) -> list[JobType]:
    types = []
    for _ in range(JOB_TYPES):
        speed = tuple(
            (m, round(cat.relative_speed(m) * math.exp(rng.gauss(0.0, SPEED_SIGMA)), 4))
            for m in sorted(fleet.models()))
        types.append(JobType(speed))
    return types


def synthetic_trace(n_jobs: int, seed: int = 0, load: float = 1.2,
                    fleet: Fleet | None = None,
                    catalogue: Catalogue | None = None) -> list[TraceJob]:
    """``n_jobs`` Poisson arrivals scaled to offered ``load`` on ``fleet``."""
    cat = catalogue or default_catalogue()
    fleet = fleet or chinese_fleet(cat)
    rng = random.Random(seed)
    types = job_types(rng, fleet, cat)
    physics = Physics(fleet, cat)
    t, jobs = 0.0, []
    for i in range(n_jobs):
        t += rng.expovariate(1.0)
        job = _job(rng, f"job-{i:05d}", t, fleet, cat, types)
        while not physics.fitting_pools(job):  # e.g. 64 GB on MLU370-X8 only: redraw
            job = _job(rng, job.job_id, t, fleet, cat, types)
        jobs.append(job)
    return scale_to_load(jobs, physics, load)


def _job(rng: random.Random, job_id: str, t: float, fleet: Fleet, cat: Catalogue,
         types: list[JobType]) -> TraceJob:
    dpr, replicas = rng.choices([s[:2] for s in SHAPES], [s[2] for s in SHAPES])[0]
    named = _filters(rng, fleet)
    families, models, first = classify(named, cat)
    return TraceJob(
        job_id=job_id, submit_time_s=t, tenant=rng.choice(TENANTS),
        priority=0, replicas=replicas, devices_per_replica=dpr,
        min_device_memory_bytes=rng.choice((0, 0, 0, 64)) * GB,
        families=families, models=models,
        reference_runtime_s=round(rng.lognormvariate(math.log(3600), 1.0), 1),
        speed=rng.choice(types).speed, first_family=first, named=named,
    )


def _filters(rng: random.Random, fleet: Fleet) -> tuple[str, ...]:
    """60 % any chip; 25 % two or three families; 15 % one model."""
    draw = rng.random()
    if draw < 0.60:
        return ()
    if draw < 0.85:
        return tuple(rng.sample(fleet.families(), rng.choice((2, 3))))
    return (rng.choice(fleet.models()),)


def two_tenant_trace(n_jobs: int, seed: int = 0, load: float = 1.5,
                     fleet: Fleet | None = None) -> list[TraceJob]:
    """The quota and preemption scenario: the synthetic workload split
    between lab-a (research, priority 0) and lab-b (production: every third
    of its jobs at priority 1), alternating by arrival."""
    jobs = synthetic_trace(n_jobs, seed, load, fleet)
    return [
        replace(job, tenant="lab-a" if i % 2 == 0 else "lab-b",
                priority=1 if i % 6 == 1 else 0)
        for i, job in enumerate(jobs)
    ]
