"""Why a statically feasible job cannot start now, in a tenant's words:
the roomiest pool's free devices, fragmentation, host CPU/memory, and
cordoned capacity that alone would make it fit."""

from __future__ import annotations

from collections.abc import Sequence

from controlplane.scheduler.core_fleet import Group, gigabytes
from controlplane.scheduler.types import PendingJob


def capacity_reason(job: PendingJob, groups: Sequence[Group]) -> str:
    """Why a statically feasible job cannot start now, in a tenant's words."""
    models = "|".join(sorted({g.model for g in groups}))
    d = job.devices_per_replica
    if d == 0:
        parts = [f"waiting for capacity: needs {job.replicas} CPU-only replicas on {models}"]
    else:
        parts = [f"waiting for capacity: needs {job.replicas}x{d} devices of {models}"]
        parts.extend(_free_device_notes(job, groups))
    host = [f"{job.cpu_millis}m CPU"] if job.cpu_millis else []
    host += [f"{gigabytes(job.memory_bytes)} host memory"] if job.memory_bytes else []
    if host:
        parts.append(f"each replica also needs {' and '.join(host)}")
    parts.extend(_cordoned_note(job, groups))
    return "; ".join(parts)


def _cordoned_note(job: PendingJob, groups: Sequence[Group]) -> list[str]:
    """Name cordoned/disconnected capacity when it alone would make the job fit."""
    need = job.replicas * job.devices_per_replica
    blocked = [
        g for g in groups
        if g.ledger.free_devices < need <= g.ledger.free_devices + g.unschedulable_devices
    ]
    if not blocked:
        return []
    group = min(blocked, key=lambda g: (-g.unschedulable_devices, g.key))
    return [
        f"{group.unschedulable_devices} more devices are on unschedulable "
        f"(cordoned or disconnected) nodes in pool {group.pool}"
    ]


def _free_device_notes(job: PendingJob, groups: Sequence[Group]) -> list[str]:
    """The roomiest group's free devices, and whether fragmentation is the snag."""
    roomiest = min(groups, key=lambda g: (-g.ledger.free_devices, g.key))
    free = roomiest.ledger.free_devices
    notes = [f"most free in one pool: {free} (pool {roomiest.pool})"]
    d = job.devices_per_replica
    if free >= job.replicas * d and roomiest.ledger.slot_bound(d) < job.replicas:
        on_node = roomiest.ledger.most_free_on_one_node()
        notes.append(f"free devices are fragmented: at most {on_node} on one node")
    return notes
