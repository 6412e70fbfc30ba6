"""The per-round capacity ledger of one candidate group: who has what free.

A round starts from the snapshot's free devices and only ever takes from
them, so a device is never handed out twice in one round. Schedulable nodes
sit in buckets by their count of free devices; each bucket is a min-heap of
node positions (nodes are sorted by name), so "the best-fitting node" is a
walk over a handful of buckets, not a scan of the fleet.

Host CPU and memory: a node reporting ``cpu_free_millis == 0`` and
``memory_free_bytes == 0`` does not track them (agents that cannot measure
them send zeros); such a node is treated as always fitting a job's CPU and
memory request. A node that tracks them is charged per replica placed.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from controlplane.scheduler.types import NodeView, PendingJob

# Cap on replica slots where nothing limits them (CPU-only job, untracked host).
UNBOUNDED = 1 << 30

# A replica asking for no host CPU or memory.
NO_HOST = (0, 0)
# One replica's share of a placement: (node name, device indices).
ReplicaSlot = tuple[str, tuple[int, ...]]


class NodeState:
    """Mutable free capacity of one schedulable node during a round."""

    __slots__ = ("bucket", "cpu", "free", "mem", "name", "pos", "tracked")

    def __init__(self, view: NodeView, pos: int) -> None:
        self.name = view.name
        self.pos = pos  # place in the group's name order: the heap key
        self.free: list[int] = sorted(set(view.free_devices))
        self.cpu = view.cpu_free_millis
        self.mem = view.memory_free_bytes
        # Zero CPU and zero memory means "not tracked": treat as fitting.
        self.tracked = bool(view.cpu_free_millis or view.memory_free_bytes)
        self.bucket = len(self.free)

    def slots(self, job: PendingJob, cap: int) -> int:
        """How many replicas of ``job`` fit here now, at most ``cap``."""
        d = job.devices_per_replica
        n = cap if d == 0 else min(cap, len(self.free) // d)
        if self.tracked:
            if job.cpu_millis:
                n = min(n, self.cpu // job.cpu_millis)
            if job.memory_bytes:
                n = min(n, self.mem // job.memory_bytes)
        return max(n, 0)

    def take(self, job: PendingJob) -> tuple[int, ...]:
        """Remove one replica's devices (contiguous, lowest first) and host share."""
        count = job.devices_per_replica
        at = contiguous_run(self.free, count)
        picked = tuple(self.free[at : at + count])
        del self.free[at : at + count]
        if self.tracked:
            self.cpu -= job.cpu_millis
            self.mem -= job.memory_bytes
        return picked

    def give_back(self, job: PendingJob, devices: tuple[int, ...]) -> None:
        """Undo one ``take`` (used when a gang cannot be completed)."""
        self.free = sorted([*self.free, *devices])
        if self.tracked:
            self.cpu += job.cpu_millis
            self.mem += job.memory_bytes


def pick_devices(free: Sequence[int], count: int) -> tuple[int, ...]:
    """The lowest contiguous run of ``count`` indices in sorted ``free``,
    else the ``count`` lowest. Contiguous devices usually share a switch."""
    if count <= 0:
        return ()
    at = contiguous_run(free, count)
    return tuple(free[at : at + count])


def contiguous_run(free: Sequence[int], count: int) -> int:
    """Start of the lowest contiguous run of ``count`` in sorted ``free``;
    0 (the lowest ``count``) when there is none, or nothing is asked."""
    if count <= 0:
        return 0
    for i in range(len(free) - count + 1):
        if free[i + count - 1] - free[i] == count - 1:
            return i
    return 0


class GroupLedger:
    """Free capacity of one (pool, model) group's schedulable nodes.

    Contract: ``place_gang`` either places every replica of a job or changes
    nothing. Placement packs a gang onto as few nodes as possible: if one
    node can hold all remaining replicas, the best-fitting such node (fewest
    free devices) takes them; otherwise the node with the most free devices
    takes as many as it can, and the walk repeats.
    """

    def __init__(self, views: Sequence[NodeView]) -> None:
        usable = [v for v in views if v.schedulable]
        self.nodes = [NodeState(v, pos) for pos, v in enumerate(usable)]
        self.max_bucket = max((n.bucket for n in self.nodes), default=0)
        self.counts = [0] * (self.max_bucket + 1)
        self.heaps: list[list[int]] = [[] for _ in range(self.max_bucket + 1)]
        # Per host request (CPU, memory): bucket heaps without the nodes that
        # can no longer host one such replica. Made on first need.
        self.host_heaps: dict[tuple[int, int], list[list[int]]] = {}
        # slot_bound per devices-per-replica, until a node changes bucket.
        self.bounds: dict[int, int] = {}
        self.free_devices = 0
        for pos, node in enumerate(self.nodes):
            self.heaps[node.bucket].append(pos)  # ascending: already a heap
            self.counts[node.bucket] += 1
            self.free_devices += node.bucket

    def most_free_on_one_node(self) -> int:
        """Largest count of free devices on a single schedulable node."""
        for k in range(self.max_bucket, -1, -1):
            if self.counts[k]:
                return k
        return 0

    def slot_bound(self, devices_per_replica: int) -> int:
        """Replica slots by free devices alone: exact for jobs without CPU or
        memory requests, an upper bound otherwise."""
        d = devices_per_replica
        if d == 0:
            return UNBOUNDED if self.nodes else 0
        if d == 1:
            return self.free_devices
        bound = self.bounds.get(d)
        if bound is None:
            counts = self.counts
            bound = self.bounds[d] = sum(
                counts[k] * (k // d) for k in range(d, self.max_bucket + 1))
        return bound

    def place_gang(self, job: PendingJob) -> list[ReplicaSlot] | None:
        """Place all ``job.replicas`` replicas, or none (returns None)."""
        if self.slot_bound(job.devices_per_replica) < job.replicas:
            return None
        taken: list[tuple[NodeState, tuple[int, ...]]] = []
        remaining = job.replicas
        while remaining:
            node = self._best_holder(job, remaining)
            count = remaining
            if node is None:
                node = self._roomiest(job)
                if node is None:
                    self._undo(job, taken)
                    return None
                count = node.slots(job, remaining)
            taken.extend((node, dev) for dev in self._take(node, job, count))
            remaining -= count
        return [(node.name, dev) for node, dev in taken]

    def place_on(self, job: PendingJob, names: frozenset[str]) -> list[ReplicaSlot] | None:
        """``place_gang`` restricted to the nodes ``names`` (a job pinned to
        nodes): fewest free first, all replicas or none."""
        taken: list[tuple[NodeState, tuple[int, ...]]] = []
        remaining = job.replicas
        for node in sorted((n for n in self.nodes if n.name in names),
                           key=lambda n: (len(n.free), n.pos)):
            count = node.slots(job, remaining)
            if count:
                taken.extend((node, dev) for dev in self._take(node, job, count))
                remaining -= count
                if not remaining:
                    break
        if remaining:
            self._undo(job, taken)
            return None
        return [(node.name, dev) for node, dev in taken]

    def _best_holder(self, job: PendingJob, need: int) -> NodeState | None:
        """Fewest-free node that holds ``need`` replicas (best fit)."""
        d, counts = job.devices_per_replica, self.counts
        for k in range(need * d, self.max_bucket + 1):
            if not counts[k]:  # no node has exactly k free: nothing to find there
                continue
            node = self._first(k, job, need)
            if node is not None:
                return node
        return None

    def _roomiest(self, job: PendingJob) -> NodeState | None:
        """Most-free node that holds at least one replica."""
        counts = self.counts
        for k in range(self.max_bucket, job.devices_per_replica - 1, -1):
            if not counts[k]:
                continue
            node = self._first(k, job, 1)
            if node is not None:
                return node
        return None

    def _first(self, k: int, job: PendingJob, need: int) -> NodeState | None:
        """Lowest-positioned node in bucket ``k`` holding ``need`` replicas."""
        host = host_request(job)
        # No host request: the plain heaps (such a job never filters them).
        filtered = self.host_heaps.get(host) if host != NO_HOST else None
        heap = self.heaps[k] if filtered is None else filtered[k]
        top = self._clean_top(heap, k, job if filtered is not None else None)
        if top is None or top.slots(job, need) >= need:
            return top
        if host and filtered is None:
            # Host CPU/memory, not devices, rules nodes out: from now on this
            # request shape walks heaps that drop such nodes for good.
            self.host_heaps[host] = [list(h) for h in self.heaps]
            return self._first(k, job, need)
        for pos in sorted(set(heap)):  # rare: several replicas wanted on one node
            node = self.nodes[pos]
            if node.bucket == k and node.slots(job, need) >= need:
                return node
        return None

    def _clean_top(self, heap: list[int], k: int, job: PendingJob | None) -> NodeState | None:
        """Drop stale entries (node left bucket ``k``) and, for a host-filtered
        heap, nodes whose CPU/memory cannot host one replica of ``job``: host
        capacity only shrinks in a round, so they never come back."""
        while heap:
            node = self.nodes[heap[0]]
            if node.bucket == k and (job is None or node.slots(job, 1) >= 1):
                return node
            heapq.heappop(heap)
        return None

    def _take(self, node: NodeState, job: PendingJob, count: int) -> list[tuple[int, ...]]:
        picked = [node.take(job) for _ in range(count)]
        self._rebucket(node)
        return picked

    def _undo(self, job: PendingJob, taken: list[tuple[NodeState, tuple[int, ...]]]) -> None:
        for node, devices in reversed(taken):
            node.give_back(job, devices)
            self._rebucket(node, host_grew=True)

    def _rebucket(self, node: NodeState, host_grew: bool = False) -> None:
        """File the node under its free-device count. Duplicate heap entries
        are harmless: every read checks the node's current bucket."""
        new = len(node.free)
        moved = new != node.bucket
        if moved:
            self.counts[node.bucket] -= 1
            self.counts[new] += 1
            self.free_devices += new - node.bucket
            node.bucket = new
            self.bounds.clear()
            heapq.heappush(self.heaps[new], node.pos)
        if moved or host_grew:
            for heaps in self.host_heaps.values():
                heapq.heappush(heaps[new], node.pos)


def host_request(job: PendingJob) -> tuple[int, int]:
    """A replica's host CPU and memory request; (0, 0) asks for none."""
    return (job.cpu_millis, job.memory_bytes)
