"""What the core computes once per round and shares between jobs must not
leak between jobs it does not apply to (``core.RoundState._kind``,
``core_rank.JobKind``, the ledger's slot bounds, the group's static facts,
the emptied-ranking shortcut and the queue order)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.scheduler.core import RoundState, order_queue, schedule
from controlplane.scheduler.core_fleet import Group
from controlplane.scheduler.core_ledger import GroupLedger
from controlplane.scheduler.types import (
    ClusterSnapshot,
    PendingJob,
    PlacementDecision,
    Policy,
)
from tests.unit.builders import jobs, nodes, placement, running, snapshot, wait

NOW = 1_000_000.0
POWER = {"H100": 700.0, "910B": 150.0}
FAST_DEAR = nodes(2, model="H100", family="nvidia", pool="fast", region="near", cost=10.0)
SLOW_CHEAP = nodes(2, model="910B", family="ascend", pool="cheap", region="near", cost=1.0)


def test_a_cost_job_among_same_shaped_fastest_jobs_gets_the_cheapest_pool() -> None:
    """Same shape, other objective: its own ranking and its figures in words."""
    fast_first = jobs("a", devices=8, runtime_s=3600)
    cost = jobs("b", devices=8, runtime_s=3600, objective="cost", first_order=1)
    fast_again = jobs("c", devices=8, runtime_s=3600, first_order=2)
    decisions = schedule(snapshot(FAST_DEAR, SLOW_CHEAP, power_w=POWER),
                         fast_first + cost + fast_again, Policy(), NOW)
    assert placement(decisions, "a-0").pool == "fast"
    assert placement(decisions, "c-0").pool == "fast"
    chosen = placement(decisions, "b-0")
    assert (chosen.pool, chosen.objective) == ("cheap", "cost")
    # 8 devices x 1 h x 1.00 and x 150 W; the fast pool's figures as the runner-up.
    assert chosen.explanation == (
        "chose pool cheap (910B): est. finish 1:00:00, cost 8.00, 1.2 kWh; others: "
        "fast (H100) 0:18:56, cost 25.24, 1.8 kWh; objective: lowest cost")


def test_the_queue_objective_separates_jobs_that_differ_only_by_queue() -> None:
    policy = Policy(queue_objectives=(("b/default", "cost"),))
    queue = (*jobs("a", devices=8, runtime_s=3600),
             *jobs("b", devices=8, runtime_s=3600, first_order=1))
    decisions = schedule(snapshot(FAST_DEAR, SLOW_CHEAP, power_w=POWER), queue, policy, NOW)
    assert placement(decisions, "a-0").pool == "fast"
    assert placement(decisions, "b-0").pool == "cheap"


def test_jobs_away_from_their_data_rank_by_their_own_runtime() -> None:
    """A transfer penalty weighs more on a short job: the short one stays on
    the slow chip by its data, the long one of the same kind moves to the fast
    chip far away (a ranking shared by runtime would send both near)."""
    near_slow = nodes(2, model="910B", family="ascend", pool="near", region="near")
    far_fast = nodes(2, model="H100", family="nvidia", pool="far", region="far")
    short = jobs("a", devices=8, runtime_s=3600, data_region="near")
    long = jobs("b", devices=8, runtime_s=36_000, data_region="near", first_order=1)
    policy = Policy(transfer_penalty_s=(("near", "far", 3000.0),))
    decisions = schedule(snapshot(near_slow, far_fast), short + long, policy, NOW)
    assert placement(decisions, "a-0").pool == "near"  # 1:00:00 vs 0:18:56 + 0:50:00
    assert placement(decisions, "b-0").pool == "far"  # 10:00:00 vs 3:09:18 + 0:50:00


def test_a_job_behind_an_emptied_ranking_gets_the_same_capacity_reason() -> None:
    """Past the reservation budget a full group leaves the shape's ranking;
    the next job of the shape skips the walk but reads the same reason."""
    full = nodes(1, model="910B", family="ascend", pool="p", free=())
    ends = (running("r", pool="p", model="910B", devices=8, end=NOW + 600),)
    queue = jobs("a", devices=8, n=3, runtime_s=3600)
    decisions = schedule(snapshot(full, running=ends), queue,
                         Policy(max_reservations_per_round=1), NOW)
    assert "reserved pool p (910B)" in wait(decisions, "a-0").reason
    second, third = wait(decisions, "a-1").reason, wait(decisions, "a-2").reason
    assert second.startswith("waiting for capacity: needs 1x8 devices of 910B")
    assert third == second


def test_slot_bounds_follow_placements_and_undone_gangs() -> None:
    fleet = (*nodes(1, devices=8, name="a"), *nodes(1, devices=8, free=range(5), name="b"),
             *nodes(1, devices=8, free=(0, 1), name="c"))
    ledger = GroupLedger(fleet)

    def recount(d: int) -> int:
        return sum(len(n.free) // d for n in ledger.nodes)

    assert [ledger.slot_bound(d) for d in (2, 4, 8)] == [recount(d) for d in (2, 4, 8)]
    assert ledger.place_gang(job(devices=4)) is not None
    assert [ledger.slot_bound(d) for d in (2, 4, 8)] == [recount(d) for d in (2, 4, 8)]
    before = [ledger.slot_bound(d) for d in (2, 4, 8)]
    assert ledger.place_gang(job(devices=4, replicas=3)) is None  # 2 fit: undone
    assert [ledger.slot_bound(d) for d in (2, 4, 8)] == before == [recount(d) for d in (2, 4, 8)]


def test_group_static_facts_with_mixed_node_sizes() -> None:
    group = Group((*nodes(2, devices=8, name="big"), *nodes(1, devices=4, name="mid"),
                   *nodes(1, devices=2, name="ab", schedulable=False),
                   *nodes(1, devices=8, name="b")))
    assert (group.total_devices, group.max_node_devices) == (30, 8)
    assert group.unschedulable_devices == 2
    assert [group.static_slots(d) for d in (1, 2, 3, 4, 8)] == [30, 15, 7, 7, 3]
    assert group.max_node == "b-000"  # the largest nodes' lexically smallest name


def job(devices: int, replicas: int = 1) -> PendingJob:
    return jobs("t", devices=devices, replicas=replicas)[0]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(-2, 2), st.integers(0, 5), st.sampled_from("abc")),
                max_size=30))
def test_queue_order_is_priority_then_submission_then_id(
        keys: list[tuple[int, int, str]]) -> None:
    queue = [PendingJob(job_id=f"{name}{i % 3}", tenant="t", queue="t/q", priority=priority,
                        order=order, replicas=1, devices_per_replica=1)
             for i, (priority, order, name) in enumerate(keys)]
    expected = sorted(queue, key=lambda j: (-j.priority, j.order, j.job_id))
    assert [id(j) for j in order_queue(queue)] == [id(j) for j in expected]


# Job fields and the values a queue draws them from.
FIELDS = {
    "devices": st.sampled_from([1, 2, 8]),
    "replicas": st.sampled_from([1, 1, 2]),
    "objective": st.sampled_from(["", "cost", "energy", "pinned", "fastest"]),
    "first_family": st.sampled_from(["", "ascend", "nvidia"]),
    "data_region": st.sampled_from(["", "near", "far"]),
    "latency_class": st.sampled_from(["", "interactive"]),
    "cpu_millis": st.sampled_from([0, 0, 2000]),
    "runtime_s": st.sampled_from([600.0, 3600.0, 36_000.0]),
    "tenant": st.sampled_from(["a", "b"]),
}


@st.composite
def near_kinds(draw: st.DrawFn) -> list[dict[str, object]]:
    """Jobs that each differ from one base job in at most one field: what a
    memo keyed by too few fields would mix up."""
    base = draw(st.fixed_dictionaries(FIELDS))
    out = []
    for _ in range(draw(st.integers(1, 10))):
        field = draw(st.sampled_from([None, *FIELDS]))
        out.append({**base, field: draw(FIELDS[field])} if field else dict(base))
    return out


@st.composite
def fleets(draw: st.DrawFn) -> ClusterSnapshot:
    pools = [("h-near", "H100", "nvidia", "near", 10.0), ("h-far", "H100", "nvidia", "far", 8.0),
             ("b-near", "910B", "ascend", "near", 1.0), ("b-far", "910B", "ascend", "far", 2.0)]
    fleet = []
    for pool, model, family, region, cost in pools:
        free = draw(st.sampled_from([(), (0, 1), tuple(range(8))]))
        fleet.extend(nodes(draw(st.integers(0, 2)), model=model, family=family, pool=pool,
                           region=region, cost=cost, free=free, cpu_millis=4000,
                           memory_bytes=10**12))
    ends = (running("r", pool="h-near", model="H100", devices=8, end=NOW + 900),)
    return snapshot(fleet, running=ends, power_w=POWER)


def uncached(snap: ClusterSnapshot, queue: list[PendingJob], policy: Policy) -> list[object]:
    """The round with the per-kind memo emptied before every job: each job
    works out its objective, verdict and ranking key afresh."""
    state, out = RoundState(snap, policy, NOW), []
    for one_job in order_queue(queue):
        state.kinds.clear()
        out.append(state.decide(one_job))
    return out


@settings(max_examples=150, deadline=None)
@given(fleets(), near_kinds(),
       st.sampled_from([Policy(), Policy(max_reservations_per_round=1),
                        Policy(queue_objectives=(("b/default", "cost"),),
                               transfer_penalty_s=(("near", "far", 1800.0),)),
                        Policy(default_objective="energy", default_transfer_penalty_s=600.0)]))
def test_sharing_per_kind_decides_like_working_out_every_job(
        snap: ClusterSnapshot, kinds: list[dict[str, object]], policy: Policy) -> None:
    queue = [jobs(str(k.pop("tenant")), first_order=i, **k)[0]  # type: ignore[arg-type]
             for i, k in enumerate(kinds)]
    queue = [PendingJob(**{**vars(j), "job_id": f"j{i}"}) for i, j in enumerate(queue)]
    decisions = schedule(snap, queue, policy, NOW)
    expected = uncached(snap, queue, policy)
    assert [*decisions.placements, *decisions.waiting] == [
        *(d for d in expected if isinstance(d, PlacementDecision)),
        *(d for d in expected if not isinstance(d, PlacementDecision))]
