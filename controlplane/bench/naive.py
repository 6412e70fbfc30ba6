"""The naive first-fit baseline of ``xinhe bench scheduler``.

What a first scheduler usually is: jobs in queue order (priority, then
submission), pools in fleet order, nodes in order; a job takes the first
pool where its whole gang fits now, filling nodes first-fit. It ignores
chip speeds and keeps only per-pool free-device totals to skip full pools.
"""

from __future__ import annotations

from collections.abc import Sequence

from controlplane.scheduler.types import ClusterSnapshot, PendingJob


class NaivePool:
    __slots__ = ("family", "free", "memory", "model", "total_free")

    def __init__(self, family: str, model: str, memory: int) -> None:
        self.family, self.model, self.memory = family, model, memory
        self.free: list[int] = []
        self.total_free = 0


def naive_pools(snapshot: ClusterSnapshot) -> list[NaivePool]:
    pools: dict[tuple[str, str], NaivePool] = {}
    for node in snapshot.nodes:
        if not node.schedulable:
            continue
        pool = pools.get((node.pool, node.model))
        if pool is None:
            pool = pools[(node.pool, node.model)] = NaivePool(
                node.family, node.model, node.device_memory_bytes)
        pool.free.append(len(node.free_devices))
        pool.total_free += len(node.free_devices)
    return list(pools.values())


def naive_first_fit(snapshot: ClusterSnapshot, pending: Sequence[PendingJob]) -> int:
    """Place what fits, first-fit; returns the number of jobs placed."""
    pools = naive_pools(snapshot)
    placed = 0
    for job in sorted(pending, key=lambda j: (-j.priority, j.order)):
        for pool in pools:
            if _admits(pool, job) and _place(pool, job):
                placed += 1
                break
    return placed


def _admits(pool: NaivePool, job: PendingJob) -> bool:
    filtered = bool(job.families or job.models)
    if filtered and pool.family not in job.families and pool.model not in job.models:
        return False
    return (pool.memory >= job.min_device_memory_bytes
            and pool.total_free >= job.replicas * job.devices_per_replica)


def _place(pool: NaivePool, job: PendingJob) -> bool:
    d, left = job.devices_per_replica, job.replicas
    taken: list[tuple[int, int]] = []
    for i, free in enumerate(pool.free):
        n = min(left, free // d)
        if n:
            taken.append((i, n * d))
            left -= n
            if not left:
                break
    if left:
        return False
    for i, count in taken:
        pool.free[i] -= count
        pool.total_free -= count
    return True
