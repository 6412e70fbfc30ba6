"""Quotas per tenant and family/model, with borrowing: table-driven cases and
hypothesis properties (never beyond nominal + borrow limit, borrowed iff
beyond nominal, deterministic)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.scheduler.core import schedule
from controlplane.scheduler.core_fleet import build_groups
from controlplane.scheduler.core_quota import Admit, QuotaBook
from controlplane.scheduler.types import PendingJob, Policy, Quota, RunningView
from tests.unit.builders import jobs, nodes, placed_ids, placement, snapshot, wait

ASCEND = nodes(4, model="910B", family="ascend", pool="asc")
NVIDIA = nodes(2, model="H100", family="nvidia", pool="nv", memory_gb=80)


def held(job_id: str, tenant: str, devices: int, *, pool: str = "asc", model: str = "910B",
         borrowed: bool = False) -> RunningView:
    """A running job of ``tenant`` (on nodes outside the snapshot's free view)."""
    return RunningView(job_id, pool, model, devices, None, tenant=tenant, borrowed=borrowed)


@dataclass(frozen=True)
class Case:
    name: str
    quotas: tuple[Quota, ...]
    pending: tuple[PendingJob, ...]
    running: tuple[RunningView, ...] = ()
    placed: tuple[str, ...] = ()
    borrowed: tuple[str, ...] = ()
    waits: tuple[tuple[str, str], ...] = ()  # (job id, reason starts with)


CASES = [
    Case("within nominal: placed, not borrowed",
         (Quota("lab-a", "ascend", 16, 8),), jobs("lab-a", devices=8, n=2, families=["ascend"]),
         placed=("lab-a-0", "lab-a-1")),
    Case("beyond nominal within the borrow limit: borrowed",
         (Quota("lab-a", "ascend", 8, 8),), jobs("lab-a", devices=8, n=2, families=["ascend"]),
         placed=("lab-a-0", "lab-a-1"), borrowed=("lab-a-1",)),
    Case("beyond the borrow limit: waits with the numbers",
         (Quota("lab-a", "ascend", 16, 8),),
         jobs("lab-a", devices=8, replicas=2, families=["ascend"]),
         running=(held("r", "lab-a", 16),),
         waits=(("lab-a-0", "quota: tenant lab-a uses 16/16 ascend devices (nominal 16, "
                 "borrowing 0 of 8 allowed while others' capacity is idle)"),)),
    Case("this round's placements count against the quota",
         (Quota("lab-a", "ascend", 8, 0),), jobs("lab-a", devices=4, n=3, families=["ascend"]),
         placed=("lab-a-0", "lab-a-1"),
         waits=(("lab-a-2", "quota: tenant lab-a uses 8/8 ascend devices"),)),
    Case("a quota on one family sends the job to another",
         (Quota("lab-a", "nvidia", 0, 0),), jobs("lab-a", devices=8), placed=("lab-a-0",)),
    Case("a model quota applies like a family quota",
         (Quota("lab-a", "910B", 4, 0),), jobs("lab-a", devices=8, families=["ascend"]),
         waits=(("lab-a-0", "quota: tenant lab-a uses 0/4 910B devices"),)),
    Case("family and model quotas both apply: the tighter wins",
         (Quota("lab-a", "ascend", 32, None), Quota("lab-a", "910B", 8, 0)),
         jobs("lab-a", devices=8, n=2, families=["ascend"]), placed=("lab-a-0",),
         waits=(("lab-a-1", "quota: tenant lab-a uses 8/8 910B devices"),)),
    Case("unlimited borrowing never refuses",
         (Quota("lab-a", "ascend", 0, None),), jobs("lab-a", devices=8, n=3, families=["ascend"]),
         placed=("lab-a-0", "lab-a-1", "lab-a-2"), borrowed=("lab-a-0", "lab-a-1", "lab-a-2")),
    Case("a tenant without a quota is not limited",
         (Quota("lab-a", "ascend", 0, 0),), jobs("lab-b", devices=8, n=2, families=["ascend"]),
         placed=("lab-b-0", "lab-b-1")),
    Case("other tenants' running jobs do not count",
         (Quota("lab-a", "ascend", 8, 0),), jobs("lab-a", devices=8, families=["ascend"]),
         running=(held("r", "lab-b", 16),), placed=("lab-a-0",)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_quota_rules(case: Case) -> None:
    snap = snapshot(ASCEND, NVIDIA, running=case.running)
    decisions = schedule(snap, case.pending, Policy(quotas=case.quotas), now=0.0)
    assert placed_ids(decisions) == list(case.placed)
    assert [p.job_id for p in decisions.placements if p.borrowed] == list(case.borrowed)
    for job_id, reason in case.waits:
        assert wait(decisions, job_id).reason.startswith(reason)
    assert not decisions.preemptions


def test_borrowed_placement_goes_where_the_quota_allows() -> None:
    pending = jobs("lab-a", devices=8)
    decisions = schedule(snapshot(ASCEND, NVIDIA), pending,
                         Policy(quotas=(Quota("lab-a", "nvidia", 0, 0),)), now=0.0)
    assert placement(decisions, "lab-a-0").family == "ascend"


@pytest.mark.parametrize("quota", [Quota("", "ascend", 1), Quota("t", "ascend", -1),
                                   Quota("t", "ascend", 1, -2), Quota("t", "", 1)])
def test_bad_quota_is_an_error(quota: Quota) -> None:
    with pytest.raises(ValueError, match="quota"):
        schedule(snapshot(ASCEND), jobs("t"), Policy(quotas=(quota,)), now=0.0)


TENANTS = ["lab-a", "lab-b", "lab-c"]
quota_st = st.builds(
    Quota, st.sampled_from(TENANTS), st.sampled_from(["ascend", "nvidia", "910B"]),
    st.integers(0, 24), st.one_of(st.none(), st.integers(0, 16)))
job_st = st.tuples(st.sampled_from(TENANTS), st.sampled_from([1, 2, 4, 8]),
                   st.integers(1, 2), st.integers(0, 2))
running_st = st.tuples(st.sampled_from(TENANTS), st.integers(1, 16),
                       st.sampled_from([("asc", "910B"), ("nv", "H100")]))


def build(job_specs, running_specs) -> tuple[list[PendingJob], tuple[RunningView, ...]]:
    pending = [
        jobs(tenant, devices=d, replicas=r, priority=prio, first_order=i)[0]
        for i, (tenant, d, r, prio) in enumerate(job_specs)
    ]
    pending = [PendingJob(**{**j.__dict__, "job_id": f"j{i}"}) for i, j in enumerate(pending)]
    running = tuple(held(f"r{i}", t, n, pool=pool, model=model)
                    for i, (t, n, (pool, model)) in enumerate(running_specs))
    return pending, running


@settings(max_examples=60, deadline=None)
@given(st.lists(quota_st, max_size=4), st.lists(job_st, min_size=1, max_size=14),
       st.lists(running_st, max_size=4))
def test_quotas_never_exceeded_except_by_allowed_borrowing(quotas, job_specs, running_specs):
    pending, running = build(job_specs, running_specs)
    snap = snapshot(ASCEND, NVIDIA, running=running)
    policy = Policy(quotas=tuple(quotas))
    decisions = schedule(snap, pending, policy, now=0.0)
    assert decisions == schedule(snap, pending, policy, now=0.0)  # deterministic
    tenant_of = {j.job_id: j.tenant for j in pending}
    used: dict[tuple[str, str], int] = {}
    for run in running:
        family = "ascend" if run.model == "910B" else "nvidia"
        for key in {(q.tenant, q.family_or_model) for q in quotas
                    if q.tenant == run.tenant and q.family_or_model in (family, run.model)}:
            used[key] = used.get(key, 0) + run.devices
    for p in decisions.placements:
        devices = sum(len(r.device_indices) for r in p.replicas)
        tenant = tenant_of[p.job_id]
        beyond_nominal = False
        for key in {q.family_or_model for q in quotas if q.tenant == tenant
                    and q.family_or_model in (p.family, p.model)}:
            mine = [q for q in quotas if q.tenant == tenant and q.family_or_model == key]
            after = used.get((tenant, key), 0) + devices
            for q in mine:
                limit = None if q.borrow_limit is None else q.devices + q.borrow_limit
                assert limit is None or after <= limit, (p, q, after)
                beyond_nominal |= after > q.devices
            used[(tenant, key)] = after
        assert p.borrowed == beyond_nominal, p


def test_borrowers_go_after_nominal_work() -> None:
    """A job that could only borrow waits behind an owner's job submitted
    later: borrowing takes what nominal work leaves idle."""
    pending = (*jobs("lab-b", devices=8, families=["ascend"]),
               *jobs("lab-a", devices=8, families=["ascend"], first_order=1))
    quotas = (Quota("lab-a", "ascend", 8, 0), Quota("lab-b", "ascend", 0, None))
    decisions = schedule(snapshot(nodes(1)), pending, Policy(quotas=quotas), now=0.0)
    assert placed_ids(decisions) == ["lab-a-0"]
    assert wait(decisions, "lab-b-0").reason.startswith("waiting for capacity")
    alone = schedule(snapshot(nodes(1)), pending[:1], Policy(quotas=quotas), now=0.0)
    assert placed_ids(alone) == ["lab-b-0"] and alone.placements[0].borrowed


def test_a_verdict_is_reused_only_until_the_tenant_is_charged() -> None:
    """The per-round memo of quota verdicts: the same list of groups asked
    twice gives the same verdicts; a charge of that tenant (a placement)
    makes the next ask see the new usage, another tenant's does not."""
    fleet = nodes(2, model="910B", family="ascend", devices=8)
    book = QuotaBook((Quota("a", "ascend", 8, 4), Quota("b", "ascend", 8, 0)), snapshot(fleet))
    groups = build_groups(fleet)
    [job] = jobs("a", devices=8)
    first, _ = book.admits(job, groups)
    assert first is not None and set(first.values()) == {Admit.NOMINAL}
    assert book.admits(job, groups)[0] is first  # memo: nothing changed
    book.charge("b", "ascend", "910B", 8)
    assert book.admits(job, groups)[0] is first  # another tenant's usage
    book.charge("a", "ascend", "910B", 4)
    again, _ = book.admits(job, groups)
    assert set(again.values()) == {Admit.BORROW}  # 4 + 8 > 8 nominal, within 4 borrowed
    book.charge("a", "ascend", "910B", 4)
    refused, why = book.admits(job, groups)
    assert set(refused.values()) == {Admit.REFUSE} and why.startswith("quota: tenant a uses 8/8")
