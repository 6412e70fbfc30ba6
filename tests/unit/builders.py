"""Small builders for scheduler tests, so a case reads like its spec:
``nodes(4, model="910B", family="ascend", devices=8)``,
``jobs("tenant-a", devices=1, n=33)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from controlplane.scheduler.types import (
    ClusterSnapshot,
    Decisions,
    NodeView,
    PendingJob,
    PlacementDecision,
    RunningView,
    WaitDecision,
)

GB = 1000**3

# Relative speeds versus A100 (dense BF16 TFLOPS ratios, as in the catalogue).
SPEEDS: Mapping[str, float] = {
    "A100": 1.0,
    "H100": 3.17,
    "910B": 1.0,
    "MLU370-X8": 0.31,
}


def nodes(
    n: int,
    *,
    model: str = "910B",
    family: str = "ascend",
    devices: int = 8,
    pool: str = "p",
    region: str = "r",
    memory_gb: float = 64,
    free: Iterable[int] | None = None,
    schedulable: bool = True,
    cpu_millis: int = 0,
    memory_bytes: int = 0,
    name: str | None = None,
    cost: float = 0.0,
) -> tuple[NodeView, ...]:
    """``n`` identical nodes named ``<name or pool>-000``, ``-001``, ...

    All devices are free unless ``free`` lists the free indices.
    """
    free_devices = tuple(range(devices)) if free is None else tuple(free)
    return tuple(
        NodeView(
            name=f"{name or pool}-{i:03d}",
            pool=pool,
            region=region,
            family=family,
            model=model,
            device_memory_bytes=int(memory_gb * GB),
            total_devices=devices,
            free_devices=free_devices,
            cpu_free_millis=cpu_millis,
            memory_free_bytes=memory_bytes,
            schedulable=schedulable,
            cost_per_device_hour=cost,
        )
        for i in range(n)
    )


def jobs(
    tenant: str,
    *,
    devices: int = 1,
    n: int = 1,
    replicas: int = 1,
    families: Iterable[str] = (),
    models: Iterable[str] = (),
    priority: int = 0,
    runtime_s: float = 0.0,
    memory_gb: float = 0,
    cpu_millis: int = 0,
    memory_bytes: int = 0,
    first_order: int = 0,
    objective: str = "",
    first_family: str = "",
    data_region: str = "",
    latency_class: str = "",
) -> tuple[PendingJob, ...]:
    """``n`` identical jobs ``<tenant>-0`` ... with increasing submission order
    starting at ``first_order``."""
    return tuple(
        PendingJob(
            job_id=f"{tenant}-{i}",
            tenant=tenant,
            queue=f"{tenant}/default",
            priority=priority,
            order=first_order + i,
            replicas=replicas,
            devices_per_replica=devices,
            min_device_memory_bytes=int(memory_gb * GB),
            cpu_millis=cpu_millis,
            memory_bytes=memory_bytes,
            families=frozenset(families),
            models=frozenset(models),
            reference_runtime_s=runtime_s,
            objective=objective,
            first_family=first_family,
            data_region=data_region,
            latency_class=latency_class,
        )
        for i in range(n)
    )


def running(
    job_id: str, *, pool: str, model: str, devices: int, end: float | None
) -> RunningView:
    """A running job that frees ``devices`` of (pool, model) at ``end``."""
    return RunningView(job_id=job_id, pool=pool, model=model, devices=devices, expected_end=end)


def snapshot(
    *fleets: Iterable[NodeView],
    running: Iterable[RunningView] = (),
    speeds: Mapping[str, float] = SPEEDS,
    power_w: Mapping[str, float] | None = None,
) -> ClusterSnapshot:
    """A snapshot of the concatenated ``fleets``; ``power_w``: watts per
    device by model (the energy objective), none by default."""
    return ClusterSnapshot(
        nodes=tuple(node for fleet in fleets for node in fleet),
        running=tuple(running),
        model_speed=tuple(sorted(speeds.items())),
        model_power_w=tuple(sorted((power_w or {}).items())),
    )


def placed_ids(decisions: Decisions) -> list[str]:
    return [p.job_id for p in decisions.placements]


def placement(decisions: Decisions, job_id: str) -> PlacementDecision:
    return next(p for p in decisions.placements if p.job_id == job_id)


def wait(decisions: Decisions, job_id: str) -> WaitDecision:
    return next(w for w in decisions.waiting if w.job_id == job_id)
