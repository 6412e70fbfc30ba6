"""Candidate groups of the fleet and which jobs they can ever hold.

A candidate group is the nodes of one pool with one accelerator model (and
one device-memory size, so every node of a group qualifies alike). A gang
always lands inside one group. Grouping happens once per round; each group
carries its static capacity (every node, schedulable or not: a cordoned or
disconnected node may come back) and a ledger of what is free now (only
schedulable nodes).

Static feasibility is cached per job shape, so a queue of thousands of
identical jobs costs one fleet scan, not thousands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter

from controlplane.scheduler.core_ledger import UNBOUNDED, GroupLedger
from controlplane.scheduler.types import NodeView, PendingJob

# The family of plain CPU nodes: not an accelerator.
CPU_FAMILY = "cpu"


class Group:
    """One (pool, model) candidate group: static facts plus this round's ledger."""

    __slots__ = (
        "_sizes",
        "_static_slots",
        "device_memory_bytes",
        "family",
        "key",
        "ledger",
        "max_node_devices",
        "model",
        "pool",
        "region",
        "total_devices",
        "unschedulable_devices",
        "views",
    )

    def __init__(self, views: Sequence[NodeView]) -> None:
        first = views[0]
        self.views = tuple(views)
        self.pool, self.region = first.pool, first.region
        self.family, self.model = first.family, first.model
        self.device_memory_bytes = first.device_memory_bytes
        self.key = (self.pool, self.model, self.family, self.device_memory_bytes)
        # Nodes per device count: static slots per replica size come from
        # a handful of sizes, not a pass over every node.
        self._sizes: dict[int, int] = {}
        unschedulable = 0
        for v in views:
            self._sizes[v.total_devices] = self._sizes.get(v.total_devices, 0) + 1
            if not v.schedulable:
                unschedulable += v.total_devices
        self.max_node_devices = max(self._sizes)
        self.total_devices = sum(size * n for size, n in self._sizes.items())
        self.unschedulable_devices = unschedulable
        self.ledger = GroupLedger(views)
        self._static_slots: dict[int, int] = {}

    @property
    def max_node(self) -> str:
        """The largest node's name (the lexically smallest among equals)."""
        return max(self.views, key=lambda v: (v.total_devices, _desc(v.name))).name

    def static_slots(self, devices_per_replica: int) -> int:
        """Replicas the whole group could hold if every node were empty."""
        d = devices_per_replica
        if d == 0:
            return UNBOUNDED
        if d not in self._static_slots:
            self._static_slots[d] = sum(n * (size // d) for size, n in self._sizes.items())
        return self._static_slots[d]


def _desc(name: str) -> tuple[int, ...]:
    """Sort key that makes ``max`` prefer the lexically smallest name."""
    return tuple(-ord(c) for c in name)


def build_groups(nodes: Sequence[NodeView]) -> tuple[Group, ...]:
    """Group nodes by (pool, model, family, device memory), in key order."""
    by_key: dict[tuple[str, str, str, int], list[NodeView]] = {}
    for view in sorted(nodes, key=attrgetter("name")):
        key = (view.pool, view.model, view.family, view.device_memory_bytes)
        by_key.setdefault(key, []).append(view)
    return tuple(Group(by_key[key]) for key in sorted(by_key))


def offers(group: Group, job: PendingJob) -> bool:
    """Does the group's family or model match the job's filters?

    No filters means any accelerator for an accelerator job (never plain CPU
    nodes) and any node at all for a CPU-only job.
    """
    if job.pools and group.pool not in job.pools:
        return False
    if job.families or job.models:
        return group.family in job.families or group.model in job.models
    return job.devices_per_replica == 0 or group.family != CPU_FAMILY


def has_memory(group: Group, job: PendingJob) -> bool:
    """Device memory is only a constraint when the job uses devices."""
    return job.devices_per_replica == 0 or (
        group.device_memory_bytes >= job.min_device_memory_bytes
    )


@dataclass(frozen=True)
class StaticVerdict:
    """Groups that could ever hold a job shape, or why none can."""

    groups: tuple[Group, ...]
    never_reason: str = ""


ShapeKey = tuple[frozenset[str], frozenset[str], int, int, int, frozenset[str]]


def shape_key(job: PendingJob) -> ShapeKey:
    """What static feasibility depends on; jobs with equal keys share a verdict."""
    memory = job.min_device_memory_bytes if job.devices_per_replica else 0
    return (job.families, job.models, job.devices_per_replica, job.replicas, memory, job.pools)


def static_verdict(groups: Sequence[Group], job: PendingJob) -> StaticVerdict:
    """Filter groups step by step; the first empty step names what is missing."""
    if job.replicas < 1 or job.devices_per_replica < 0:
        shape = f"{job.replicas} replicas x {job.devices_per_replica} devices"
        return StaticVerdict((), f"invalid job shape: {shape}")
    offered = [g for g in groups if offers(g, job)]
    if not offered:
        return StaticVerdict((), _no_offer_reason(job, groups))
    roomy = [g for g in offered if has_memory(g, job)]
    if not roomy:
        return StaticVerdict((), _memory_reason(job, offered))
    d = job.devices_per_replica
    big = [g for g in roomy if g.max_node_devices >= d]
    if not big:
        return StaticVerdict((), _devices_reason(job, roomy))
    holding = [g for g in big if g.static_slots(d) >= job.replicas]
    if not holding:
        return StaticVerdict((), _gang_reason(job, big))
    return StaticVerdict(tuple(holding))


def _quoted(names: frozenset[str]) -> str:
    return " or ".join(f"'{n}'" for n in sorted(names))


def _no_offer_reason(job: PendingJob, groups: Sequence[Group]) -> str:
    if not groups:
        return "the fleet has no nodes"
    wants = []
    if job.families:
        wants.append(f"family {_quoted(job.families)}")
    if job.models:
        wants.append(f"model {_quoted(job.models)}")
    if wants:
        return f"no pool offers {' or '.join(wants)}"
    return "no pool offers accelerators (only CPU nodes; name family 'cpu' to use them)"


def gigabytes(n: int) -> str:
    """Decimal gigabytes as people say them: "80 GB", "85.9 GB"."""
    value = n / 1e9
    if abs(value - round(value)) < 0.05:
        return f"{value:.0f} GB"
    return f"{value:.1f} GB"


def _memory_reason(job: PendingJob, offered: Sequence[Group]) -> str:
    best = max(offered, key=lambda g: (g.device_memory_bytes, _desc(g.model)))
    return (
        f"needs >= {gigabytes(job.min_device_memory_bytes)} device memory; "
        f"largest qualifying is {gigabytes(best.device_memory_bytes)} ({best.model})"
    )


def _devices_reason(job: PendingJob, roomy: Sequence[Group]) -> str:
    best = max(roomy, key=lambda g: (g.max_node_devices, _desc(g.pool)))
    return (
        f"needs {job.devices_per_replica} devices per replica; the largest qualifying "
        f"node has {best.max_node_devices} (pool {best.pool})"
    )


def _gang_reason(job: PendingJob, big: Sequence[Group]) -> str:
    d = job.devices_per_replica
    best = max(big, key=lambda g: (g.static_slots(d), _desc(g.pool)))
    return (
        f"needs {job.replicas}x{d} devices in one pool; the largest qualifying pool "
        f"holds {best.static_slots(d)} such replicas (pool {best.pool}, "
        f"{best.total_devices} devices of {best.model})"
    )
