"""Weighted fair share across tenants: the queue order of a round.

Dominant-resource style on one resource, normalised compute: a device
counts as its model's speed versus the reference chip (an H100 device is
worth about three A100 devices), so a tenant on fast chips is charged for
them. A tenant's *share* is its normalised usage divided by its weight
(``Policy.tenant_weights``; unnamed tenants weigh 1.0).

Order: priority first (descending), then the tenant with the smallest share,
then submission order. Shares are progressive within the round: each job
taken from a tenant's queue charges that tenant its request (devices at the
reference speed, since the chip is not chosen yet), so one tenant with no
usage does not take the whole round before the others get a turn.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from controlplane.scheduler.types import ClusterSnapshot, PendingJob, Policy


def tenant_usage(snapshot: ClusterSnapshot) -> dict[str, float]:
    """Normalised compute each tenant holds now (``RunningView.normalised_devices``,
    else devices x the model's speed; 1.0 when the speed is unknown)."""
    speeds = {model: speed for model, speed in snapshot.model_speed if speed > 0}
    usage: dict[str, float] = {}
    for run in snapshot.running:
        held = run.normalised_devices or run.devices * speeds.get(run.model, 1.0)
        usage[run.tenant] = usage.get(run.tenant, 0.0) + held
    return usage


def weights_of(policy: Policy) -> dict[str, float]:
    """Tenant weights; a non-positive weight is a configuration error."""
    weights = dict(policy.tenant_weights)
    bad = sorted(t for t, w in weights.items() if not w > 0)
    if bad:
        raise ValueError(f"tenant weights must be > 0: {', '.join(bad)}")
    return weights


def fair_share_order(
    pending: Sequence[PendingJob], snapshot: ClusterSnapshot, policy: Policy
) -> list[PendingJob]:
    """The queue in fair-share order (see module doc). Deterministic: ties
    on share fall back to submission order, then job id."""
    weights = weights_of(policy)
    usage = tenant_usage(snapshot)
    queues: dict[str, list[PendingJob]] = {}
    for job in sorted(pending, key=lambda j: (-j.priority, j.order, j.job_id), reverse=True):
        queues.setdefault(job.tenant, []).append(job)  # each list: last = next up
    heap = [_entry(t, q[-1], usage, weights) for t, q in queues.items()]
    heapq.heapify(heap)
    ordered: list[PendingJob] = []
    while heap:
        tenant = heapq.heappop(heap)[-1]
        queue = queues[tenant]
        job = queue.pop()
        ordered.append(job)
        usage[tenant] = usage.get(tenant, 0.0) + job.replicas * job.devices_per_replica
        if queue:
            heapq.heappush(heap, _entry(tenant, queue[-1], usage, weights))
    return ordered


def _entry(tenant: str, head: PendingJob, usage: dict[str, float],
           weights: dict[str, float]) -> tuple[int, float, int, str, str]:
    share = usage.get(tenant, 0.0) / weights.get(tenant, 1.0)
    return (-head.priority, share, head.order, head.job_id, tenant)
