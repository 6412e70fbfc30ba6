"""Consolidating moves for a gang whose group's free devices are scattered
(``core_defrag``): when a plan is proposed, that it makes the gang fit, and
that it never double-books a device."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.scheduler.core import schedule
from controlplane.scheduler.core_defrag import first_defrag, propose_defrag
from controlplane.scheduler.core_migrate import MigrationKnobs, RunningJob
from controlplane.scheduler.types import NodeView, Policy
from tests.unit.builders import jobs, nodes, placed_ids, snapshot

NOW = 10_000.0
ON = MigrationKnobs(enabled=True, restart_cost_s=60.0, max_per_round=4, cooldown_s=600.0)


def half_full(n: int = 2, pool: str = "p", model: str = "910B", family: str = "ascend"
              ) -> tuple[NodeView, ...]:
    """``n`` 8-device nodes with devices 0-3 held, 4-7 free."""
    return nodes(n, pool=pool, model=model, family=family, free=range(4, 8))


def on_node(job_id: str, node: str, devices: int = 4, *, left_h: float = 5.0,
            pool: str = "p", model: str = "910B", **kw: object) -> RunningJob:
    return RunningJob(job_id, pool, model, 1, devices, left_h * 3600,
                      nodes=((node, devices),), **kw)  # type: ignore[arg-type]


def gang(replicas: int = 1, devices: int = 8, **kw: object):
    [job] = jobs("g", replicas=replicas, devices=devices, runtime_s=3600, **kw)
    return job


def test_a_job_moves_so_a_whole_node_frees_for_the_gang() -> None:
    fleet = half_full()
    runs = [on_node("a", "p-000"), on_node("b", "p-001")]
    (move,) = propose_defrag(snapshot(fleet), runs, gang(), ON, NOW)
    assert (move.job_id, move.target_pool, move.target_model) == ("a", "p", "910B")
    [replica] = move.replicas
    assert (replica.node, replica.device_indices) == ("p-001", (4, 5, 6, 7))
    assert "making room for gang g-0 in pool p (910B)" in move.reason
    # After the move: p-000 all free, p-001 full; the round places the gang.
    after = (replace(fleet[0], free_devices=tuple(range(8))),
             replace(fleet[1], free_devices=()))
    assert placed_ids(schedule(snapshot(after), [gang()], Policy(), NOW)) == ["g-0"]


@pytest.mark.parametrize(("case", "fleet", "runs", "job", "knobs"), [
    ("it fits already", nodes(1) + half_full(1, pool="q"), [on_node("a", "q-000", pool="q")],
     gang(), ON),
    ("too few free devices however arranged", half_full(), [on_node("a", "p-000")],
     gang(replicas=2), ON),
    ("migration off", half_full(), [on_node("a", "p-000")], gang(), MigrationKnobs()),
    ("not migratable", half_full(), [on_node("a", "p-000", migratable=False),
                                     on_node("b", "p-001", migratable=False)], gang(), ON),
    ("moved recently", half_full(), [on_node("a", "p-000", last_migrated_at=NOW - 60),
                                     on_node("b", "p-001", last_migrated_at=NOW - 60)],
     gang(), ON),
    ("placement unknown", half_full(), [replace(on_node("a", "p-000"), nodes=()),
                                        replace(on_node("b", "p-001"), nodes=())], gang(), ON),
    ("about to end: a restart would cost more than 10 % of what is left",
     half_full(), [on_node("a", "p-000", left_h=0.1), on_node("b", "p-001", left_h=0.1)],
     gang(), ON),
    ("work since the last checkpoint would be lost",
     half_full(), [on_node("a", "p-000", seconds_since_checkpoint=7200),
                   on_node("b", "p-001", seconds_since_checkpoint=7200)], gang(), ON),
    ("the plan needs more moves than a round allows",
     half_full(4), [on_node(f"j{i}", f"p-{i:03d}") for i in range(4)], gang(replicas=2),
     replace(ON, max_per_round=1)),
    ("only the other group's jobs could move", half_full() + half_full(pool="q"),
     [on_node("a", "q-000", pool="q"), on_node("b", "q-001", pool="q")],
     replace(gang(), pools=frozenset({"p"})), ON),
])
def test_no_plan(case: str, fleet: tuple[NodeView, ...], runs: list[RunningJob], job: object,
                 knobs: MigrationKnobs) -> None:
    assert propose_defrag(snapshot(fleet), runs, job, knobs, NOW) == (), case  # type: ignore[arg-type]


def test_two_replicas_need_two_moves_and_the_cheapest_nodes_clear() -> None:
    # p-000 and p-001 hold a 4-device job each; p-002 holds two 2-device
    # jobs; p-003 holds one 4-device job. Each node has 4 free.
    fleet = half_full(4)
    runs = [on_node("a", "p-000"), on_node("b", "p-001"), on_node("c1", "p-002", 2),
            on_node("c2", "p-002", 2), on_node("d", "p-003")]
    moves = propose_defrag(snapshot(fleet), runs, gang(replicas=2), ON, NOW)
    # a (p-000) fills p-001's free half; then p-003 (one move) beats p-002
    # (two moves of 2 devices); d goes to p-002's free half.
    assert [m.job_id for m in moves] == ["a", "d"]
    assert [r.node for m in moves for r in m.replicas] == ["p-001", "p-002"]


def test_the_fastest_fragmented_group_is_chosen() -> None:
    fleet = half_full() + half_full(pool="h", model="H100", family="nvidia")
    runs = [on_node("a", "p-000"), on_node("b", "p-001"),
            on_node("x", "h-000", pool="h", model="H100"),
            on_node("y", "h-001", pool="h", model="H100")]
    (move,) = propose_defrag(snapshot(fleet), runs, gang(), ON, NOW)
    assert move.target_pool == "h" and move.job_id == "x"


node_state = st.lists(st.lists(st.sampled_from([1, 2, 4]), max_size=4), min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(node_state, st.integers(1, 3), st.sampled_from([2, 4, 8]), st.integers(1, 6))
def test_a_plan_makes_the_gang_fit_and_books_each_free_device_once(
        layout: list[list[int]], replicas: int, dpr: int, max_moves: int) -> None:
    """Random 8-device nodes holding jobs of 1, 2 or 4 devices (at most 8
    per node): any plan is within the knobs, moves jobs only onto devices
    free now, each once, and leaves room for every replica of the gang."""
    views, runs, held = [], [], {}
    for i, sizes in enumerate(layout):
        name, used = f"p-{i:03d}", 0
        for k, size in enumerate(sizes):
            if used + size > 8:
                break
            runs.append(on_node(f"j{i}-{k}", name, size))
            used += size
        held[name] = used
        views.append(replace(nodes(1)[0], name=name, free_devices=tuple(range(used, 8))))
    job = gang(replicas=replicas, devices=dpr)
    moves = propose_defrag(snapshot(tuple(views)), runs, job,
                           replace(ON, max_per_round=max_moves), NOW)
    if not moves:
        return
    assert len(moves) <= max_moves
    free = {v.name: set(v.free_devices) for v in views}
    count = {v.name: len(v.free_devices) for v in views}
    size = {r.job_id: (r.nodes[0][0], r.devices_per_replica) for r in runs}
    for move in moves:
        [replica] = move.replicas
        assert set(replica.device_indices) <= free[replica.node]  # free now, not yet taken
        free[replica.node] -= set(replica.device_indices)
        source, n = size[move.job_id]
        assert replica.node != source and len(replica.device_indices) == n
        count[replica.node] -= n
        count[source] += n
    assert sum(c // dpr for c in count.values()) >= replicas


def test_the_first_waiting_job_a_plan_helps_gets_it() -> None:
    fleet = half_full()
    runs = [on_node("a", "p-000"), on_node("b", "p-001")]
    big = replace(gang(replicas=2), job_id="big")  # 16 devices: never from 8 free
    small = gang()
    job, (move,) = first_defrag(snapshot(fleet), runs, [big, big, small], ON, NOW)
    assert job is small and move.job_id == "a"
    # At most max_kinds different jobs are tried: the big one (twice, one kind) only.
    assert first_defrag(snapshot(fleet), runs, [big, big, small], ON, NOW,
                        max_kinds=1) == (None, ())
