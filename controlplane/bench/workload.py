"""A seeded synthetic heterogeneous fleet and queue for the core benchmark.

Eight catalogue models of six families, 8 devices per node, one pool per
model and region (16 pools, growing with the fleet); about a third of the nodes are partly busy with
running jobs whose ends are known. The queue mixes single-device jobs,
whole-node jobs and multi-node gangs, with and without family filters,
memory floors and priorities, like a busy centre's backlog.
"""

from __future__ import annotations

import random

from controlplane.model.catalogue import default_catalogue
from controlplane.scheduler.types import ClusterSnapshot, NodeView, PendingJob, RunningView

MODELS = ("H100", "A100", "H20", "910B", "MLU370-X8", "K100_AI", "P800", "MI300X")
DEVICES_PER_NODE = 8
REGIONS = ("east", "west")
NOW = 1_000_000.0
# (devices per replica, replicas, weight)
SHAPES = ((1, 1, 45), (2, 1, 15), (4, 1, 12), (8, 1, 18), (8, 2, 7), (8, 4, 3))


def bench_fleet(n_nodes: int, seed: int = 0) -> ClusterSnapshot:
    """``n_nodes`` nodes, models round-robin by pool, a third partly busy."""
    cat = default_catalogue()
    rng = random.Random(seed)
    nodes: list[NodeView] = []
    running: list[RunningView] = []
    pools = len(MODELS) * len(REGIONS)
    for i in range(n_nodes):
        model = cat.chip(MODELS[i % len(MODELS)])
        region = REGIONS[i % pools // len(MODELS)]
        pool = f"{model.model.lower()}-{region}"
        busy = rng.choice((0, 0, 2, 4)) if rng.random() < 0.33 else 0
        nodes.append(NodeView(
            name=f"node-{i:06d}", pool=pool, region=region,
            family=model.family, model=model.model, device_memory_bytes=model.memory_bytes,
            total_devices=DEVICES_PER_NODE, free_devices=tuple(range(busy, DEVICES_PER_NODE)),
        ))
        if busy:
            running.append(RunningView(f"run-{i}", pool, model.model, busy,
                                       NOW + rng.uniform(60, 36_000)))
    speeds = tuple((m, cat.relative_speed(m)) for m in sorted(MODELS))
    return ClusterSnapshot(tuple(nodes), tuple(running), speeds)


def bench_queue(n_jobs: int, seed: int = 0) -> tuple[PendingJob, ...]:
    """``n_jobs`` pending jobs from 20 tenants."""
    rng = random.Random(seed + 1)
    families = ("nvidia", "ascend", "cambricon", "hygon", "kunlunxin", "amd")
    jobs = []
    for i in range(n_jobs):
        dpr, replicas = rng.choices([s[:2] for s in SHAPES], [s[2] for s in SHAPES])[0]
        draw = rng.random()
        wanted = frozenset(rng.sample(families, 2)) if draw < 0.3 else frozenset()
        models = frozenset({rng.choice(MODELS)}) if 0.3 <= draw < 0.4 else frozenset()
        tenant = f"tenant-{rng.randrange(20):02d}"
        jobs.append(PendingJob(
            job_id=f"job-{i:07d}", tenant=tenant, queue=f"{tenant}/default",
            priority=rng.choice((0, 0, 0, 1, 2)), order=i, replicas=replicas,
            devices_per_replica=dpr, min_device_memory_bytes=rng.choice((0, 0, 0, 64 * 10**9)),
            families=wanted, models=models,
            reference_runtime_s=rng.lognormvariate(8.2, 1.0), submitted_at=NOW - n_jobs + i,
        ))
    return tuple(jobs)
