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
    def __init__(self) -> None:
        self._devices: dict[str, dict[int, Hold]] = defaultdict(dict)
        self._ports: dict[str, dict[int, str]] = defaultdict(dict)

    def hold(self, job_id: str, attempt: int, placement: common_pb2.Placement) -> None:
        """Mark every device of a placement held by this job attempt."""
        for replica in placement.replicas:
            node_holds = self._devices[replica.node]
            for idx in replica.device_indices:
                node_holds[idx] = Hold(job_id, attempt, replica.rank)
        if placement.master_port:
            self._ports[placement.master_addr][placement.master_port] = job_id

    def release(self, job_id: str, attempt: int | None = None, *, node: str | None = None,
                rank: int | None = None) -> int:
        """Free the devices a job attempt holds (optionally on one node or
        for one rank). Returns how many devices were freed."""
        freed = 0
        nodes = [node] if node is not None else list(self._devices)
        for name in nodes:
            holds = self._devices.get(name, {})
            for idx in [i for i, h in holds.items() if _matches(h, job_id, attempt, rank)]:
                del holds[idx]
                freed += 1
        if not self.holds_any(job_id):
            self._release_port(job_id)
        return freed

    def holds_any(self, job_id: str) -> bool:
        return any(h.job_id == job_id for holds in self._devices.values() for h in holds.values())

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

    def _release_port(self, job_id: str) -> None:
        for ports in self._ports.values():
            for port in [p for p, j in ports.items() if j == job_id]:
                del ports[port]


def _matches(hold: Hold, job_id: str, attempt: int | None, rank: int | None) -> bool:
    return (hold.job_id == job_id and (attempt is None or hold.attempt == attempt)
            and (rank is None or hold.rank == rank))
