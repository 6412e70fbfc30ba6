"""Which devices and rendezvous ports are held by which job attempt.

Kept in memory for speed and rebuilt from the store's active jobs when the
control plane starts, so it never disagrees with durable state for long.
A device stays held until its replica is reported finished (or its node is
declared lost), not merely until the job's state says so: a cancelled job's
processes may still be shutting down on it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from xinhe.v1 import common_pb2

PORT_RANGE = range(29500, 32000)


@dataclass(frozen=True)
class Hold:
    job_id: str
    attempt: int
    rank: int


class Allocations:
    """Device and port holds, indexed both by node and by job so that
    releasing one finished replica touches only that job's devices."""

    def __init__(self) -> None:
        self._devices: dict[str, dict[int, Hold]] = defaultdict(dict)
        self._ports: dict[str, dict[int, str]] = defaultdict(dict)
        # job id -> node -> device indices that job holds there
        self._by_job: dict[str, dict[str, set[int]]] = {}
        # job id -> (address, port) pairs that job holds
        self._job_ports: dict[str, set[tuple[str, int]]] = {}

    def hold(self, job_id: str, attempt: int, placement: common_pb2.Placement) -> None:
        """Mark every device of a placement held by this job attempt."""
        for replica in placement.replicas:
            node_holds = self._devices[replica.node]
            for idx in replica.device_indices:
                previous = node_holds.get(idx)
                if previous is not None and previous.job_id != job_id:
                    self._unindex(previous.job_id, replica.node, idx)
                node_holds[idx] = Hold(job_id, attempt, replica.rank)
                self._by_job.setdefault(job_id, {}).setdefault(replica.node, set()).add(idx)
        if placement.master_port:
            address, port = placement.master_addr, placement.master_port
            previous_job = self._ports[address].get(port)
            if previous_job is not None and previous_job != job_id:
                self._job_ports.get(previous_job, set()).discard((address, port))
            self._ports[address][port] = job_id
            self._job_ports.setdefault(job_id, set()).add((address, port))

    def release(self, job_id: str, attempt: int | None = None, *, node: str | None = None,
                rank: int | None = None) -> int:
        """Free the devices a job attempt holds (optionally on one node or
        for one rank). Returns how many devices were freed."""
        freed = 0
        held = self._by_job.get(job_id, {})
        nodes = [node] if node is not None else list(held)
        for name in nodes:
            indices = held.get(name)
            if not indices:
                continue
            holds = self._devices[name]
            for idx in [i for i in indices if _matches(holds[i], job_id, attempt, rank)]:
                del holds[idx]
                self._unindex(job_id, name, idx)
                freed += 1
        if not self.holds_any(job_id):
            self._release_port(job_id)
        return freed

    def holds_any(self, job_id: str) -> bool:
        return job_id in self._by_job

    def held_on(self, node: str) -> dict[int, Hold]:
        return dict(self._devices.get(node, {}))

    def held_count(self, node: str) -> int:
        return len(self._devices.get(node, {}))

    def free_indices(self, node: str, healthy: Iterable[int]) -> tuple[int, ...]:
        held = self._devices.get(node, {})
        return tuple(sorted(i for i in healthy if i not in held))

    def pick_port(self, address: str) -> int:
        """A rendezvous port on ``address`` no held job uses."""
        used = self._ports.get(address, {})
        for port in PORT_RANGE:
            if port not in used:
                return port
        raise RuntimeError(f"no free rendezvous port on {address}")

    def _unindex(self, job_id: str, node: str, idx: int) -> None:
        per_node = self._by_job.get(job_id)
        if per_node is None:
            return
        indices = per_node.get(node)
        if indices is not None:
            indices.discard(idx)
            if not indices:
                del per_node[node]
        if not per_node:
            del self._by_job[job_id]

    def _release_port(self, job_id: str) -> None:
        for address, port in self._job_ports.pop(job_id, ()):
            ports = self._ports.get(address)
            if ports is not None and ports.get(port) == job_id:
                del ports[port]


def _matches(hold: Hold, job_id: str, attempt: int | None, rank: int | None) -> bool:
    return (hold.job_id == job_id and (attempt is None or hold.attempt == attempt)
            and (rank is None or hold.rank == rank))
