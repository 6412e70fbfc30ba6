"""Which node a replica belongs to, so an agent reports only on its own.

Replica states are checked by the store itself (``update_replica(...,
node=...)``). Log chunks and progress reports name a replica too; an agent
could otherwise write another node's job logs or teach the throughput table
lies. Their ownership is looked up in the replica rows once per replica and
remembered (a replica's node is fixed: placing again starts a new attempt),
so a stream of chunks
costs one store read.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from controlplane.store.base import ReplicaRecord

ReplicaKey = tuple[str, int, int]  # job_id, attempt, rank
# Answers remembered; the least recently used are forgotten first.
MAX_REMEMBERED = 65536


class ReplicaOwnership:
    """``owns(node, job_id, attempt, rank)``: whether the replica is placed on
    ``node``. ``replicas(job_id, attempt)`` reads the replica rows. Thread-safe."""

    def __init__(self, replicas: Callable[[str, int], list[ReplicaRecord]],
                 capacity: int = MAX_REMEMBERED) -> None:
        self._replicas = replicas
        self._capacity = capacity
        self._lock = threading.Lock()
        self._node_of: OrderedDict[ReplicaKey, str] = OrderedDict()

    def owns(self, node: str, job_id: str, attempt: int, rank: int) -> bool:
        key = (job_id, attempt, rank)
        with self._lock:
            owner = self._node_of.get(key)
            if owner is not None:
                self._node_of.move_to_end(key)
                return owner == node
        rows = self._replicas(job_id, attempt)  # outside the lock: a store read
        owner = next((r.node for r in rows if r.rank == rank), "")
        if owner:  # an unknown replica is not remembered: it may be placed later
            with self._lock:
                self._node_of[key] = owner
                if len(self._node_of) > self._capacity:
                    self._node_of.popitem(last=False)
        return bool(owner) and owner == node
