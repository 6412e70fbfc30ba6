"""Weighted fair share: the queue in (priority, tenant's normalised usage /
weight, submission) order, charged progressively within a round."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.scheduler.core import schedule
from controlplane.scheduler.core_share import fair_share_order, tenant_usage
from controlplane.scheduler.types import PendingJob, Policy, RunningView
from tests.unit.builders import jobs, nodes, placed_ids, snapshot

NOW = 1_000_000.0
FAIR = Policy(fair_share=True)


def holding(tenant: str, devices: int, model: str = "910B",
            normalised: float = 0.0) -> RunningView:
    return RunningView(f"run-{tenant}-{model}", "p", model, devices, NOW + 60,
                       tenant=tenant, normalised_devices=normalised)


@dataclass(frozen=True)
class OrderCase:
    name: str
    queue: tuple[PendingJob, ...]
    running: tuple[RunningView, ...]
    expected: tuple[str, ...]
    weights: tuple[tuple[str, float], ...] = ()


A3 = jobs("a", devices=4, n=3)  # submitted first
B3 = jobs("b", devices=4, n=3, first_order=3)

ORDER_CASES = [
    OrderCase("no usage: tenants take turns", A3 + B3, (),
              ("a-0", "b-0", "a-1", "b-1", "a-2", "b-2")),
    OrderCase("the tenant holding 8 devices goes after the other has caught up",
              A3 + B3, (holding("a", 8),), ("b-0", "b-1", "a-0", "b-2", "a-1", "a-2")),
    OrderCase("weight 2 halves a tenant's share", A3 + B3, (holding("a", 8),),
              ("b-0", "a-0", "b-1", "a-1", "a-2", "b-2"), (("a", 2.0),)),
    OrderCase("priority comes before share", A3 + jobs("b", priority=1, first_order=3),
              (holding("b", 64),), ("b-0", "a-0", "a-1", "a-2")),
    OrderCase("usage is normalised compute: 4 H100 (3.17 each) outweigh 8 910B",
              jobs("a", devices=1) + jobs("b", devices=1, first_order=1),
              (holding("a", 4, "H100"), holding("b", 8)), ("b-0", "a-0")),
    OrderCase("a reported normalised figure wins over devices x speed",
              jobs("a", devices=1) + jobs("b", devices=1, first_order=1),
              (holding("a", 4, "H100", normalised=1.0), holding("b", 8)), ("a-0", "b-0")),
]


@pytest.mark.parametrize("case", ORDER_CASES, ids=lambda c: c.name)
def test_fair_share_order(case: OrderCase) -> None:
    snap = snapshot(nodes(1), running=case.running)
    policy = Policy(fair_share=True, tenant_weights=case.weights)
    assert tuple(j.job_id for j in fair_share_order(case.queue, snap, policy)) == case.expected


def test_usage_defaults_to_devices_times_model_speed() -> None:
    snap = snapshot(nodes(1), running=(holding("a", 4, "H100"), holding("b", 2, "unknown")))
    assert tenant_usage(snap) == pytest.approx({"a": 4 * 3.17, "b": 2.0})


def test_the_light_tenant_gets_the_free_devices() -> None:
    # 8 free devices; tenant a (submitted first, already holding 16) queues
    # four 2-device jobs, b two: fair share places b's before a's last ones.
    queue = jobs("a", devices=2, n=4) + jobs("b", devices=2, n=2, first_order=4)
    snap = snapshot(nodes(1), running=(holding("a", 16),))
    assert placed_ids(schedule(snap, queue, FAIR, NOW)) == ["b-0", "b-1", "a-0", "a-1"]
    assert placed_ids(schedule(snap, queue, Policy(), NOW)) == ["a-0", "a-1", "a-2", "a-3"]


def test_non_positive_weight_is_a_clear_error() -> None:
    bad = Policy(fair_share=True, tenant_weights=(("a", 0.0),))
    with pytest.raises(ValueError, match="tenant weights must be > 0: a"):
        schedule(snapshot(nodes(1)), jobs("a"), bad, NOW)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 2), st.integers(1, 8)),
                max_size=30),
       st.dictionaries(st.sampled_from("abc"), st.integers(0, 32)))
def test_fair_order_is_a_stable_permutation(
    spec: list[tuple[str, int, int]], held: dict[str, int]
) -> None:
    queue = tuple(
        PendingJob(job_id=f"j{i}", tenant=t, queue=f"{t}/q", priority=p, order=i,
                   replicas=1, devices_per_replica=d)
        for i, (t, p, d) in enumerate(spec)
    )
    snap = snapshot(nodes(1), running=tuple(holding(t, n) for t, n in held.items() if n))
    ordered = fair_share_order(queue, snap, FAIR)
    assert sorted(j.job_id for j in ordered) == sorted(j.job_id for j in queue)
    assert [j.priority for j in ordered] == sorted((j.priority for j in ordered), reverse=True)
    for tenant in "abc":  # each tenant's own jobs keep (priority, submission) order
        own = [j for j in ordered if j.tenant == tenant]
        assert own == sorted(own, key=lambda j: (-j.priority, j.order))
    assert ordered == fair_share_order(tuple(reversed(queue)), snap, FAIR)
