"""Device and port holds: the job index never disagrees with a plain scan."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.services.allocations import PORT_RANGE, Allocations, Hold
from xinhe.v1 import common_pb2

NODES = ("n0", "n1", "n2")
JOBS = ("j0", "j1", "j2", "j3")


def placement(replicas: list[tuple[str, list[int]]], port: int = 0) -> common_pb2.Placement:
    return common_pb2.Placement(
        replicas=[common_pb2.ReplicaPlacement(rank=rank, node=node, device_indices=idx)
                  for rank, (node, idx) in enumerate(replicas)],
        master_addr=replicas[0][0] if port else "", master_port=port)


class Reference:
    """The obvious implementation: every release scans every hold."""

    def __init__(self) -> None:
        self.devices: dict[str, dict[int, Hold]] = {}
        self.ports: dict[tuple[str, int], str] = {}

    def hold(self, job: str, attempt: int, plan: common_pb2.Placement) -> None:
        for replica in plan.replicas:
            for idx in replica.device_indices:
                self.devices.setdefault(replica.node, {})[idx] = Hold(job, attempt, replica.rank)
        if plan.master_port:
            self.ports[(plan.master_addr, plan.master_port)] = job

    def release(self, job: str, attempt: int | None, node: str | None, rank: int | None) -> int:
        freed = 0
        for name, holds in self.devices.items():
            if node is not None and name != node:
                continue
            for idx in [i for i, h in holds.items() if h.job_id == job
                        and (attempt is None or h.attempt == attempt)
                        and (rank is None or h.rank == rank)]:
                del holds[idx]
                freed += 1
        if not any(h.job_id == job for holds in self.devices.values() for h in holds.values()):
            for key in [k for k, j in self.ports.items() if j == job]:
                del self.ports[key]
        return freed


replica = st.tuples(st.sampled_from(NODES),
                    st.lists(st.integers(0, 7), min_size=1, max_size=3, unique=True))
hold_op = st.tuples(st.just("hold"), st.sampled_from(JOBS), st.integers(0, 2),
                    st.lists(replica, min_size=1, max_size=3),
                    st.sampled_from([0, PORT_RANGE[0], PORT_RANGE[1]]))
release_op = st.tuples(st.just("release"), st.sampled_from(JOBS),
                       st.none() | st.integers(0, 2), st.none() | st.sampled_from(NODES),
                       st.none() | st.integers(0, 2))


@settings(max_examples=300, deadline=None)
@given(st.lists(hold_op | release_op, max_size=40))
def test_indexed_holds_match_a_full_scan(ops: list[tuple]) -> None:
    real, ref = Allocations(), Reference()
    for op in ops:
        if op[0] == "hold":
            _, job, attempt, replicas, port = op
            plan = placement(replicas, port)
            real.hold(job, attempt, plan)
            ref.hold(job, attempt, plan)
        else:
            _, job, attempt, node, rank = op
            assert real.release(job, attempt, node=node, rank=rank) == \
                ref.release(job, attempt, node, rank)
        for node in NODES:
            assert real.held_on(node) == ref.devices.get(node, {})
        for job in JOBS:
            expected = any(h.job_id == job for hs in ref.devices.values() for h in hs.values())
            assert real.holds_any(job) == expected
        for address in NODES:
            used = {p for (a, p), _ in ref.ports.items() if a == address}
            free = next(p for p in PORT_RANGE if p not in used)
            assert real.pick_port(address) == free


def test_releasing_one_rank_keeps_the_port_until_the_last_device_goes() -> None:
    allocs = Allocations()
    allocs.hold("j", 1, placement([("n0", [0, 1]), ("n1", [0])], port=PORT_RANGE[0]))
    assert allocs.pick_port("n0") == PORT_RANGE[1]
    assert allocs.release("j", 1, node="n0", rank=0) == 2
    assert allocs.holds_any("j") and allocs.pick_port("n0") == PORT_RANGE[1]
    assert allocs.release("j", 1, node="n1") == 1
    assert not allocs.holds_any("j") and allocs.pick_port("n0") == PORT_RANGE[0]
    assert allocs.release("j", 1) == 0
