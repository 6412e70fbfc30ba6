"""A round that can place nothing (no schedulable node) explains only the
jobs without a reason; every other change brings back full rounds."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from controlplane.model.catalogue import default_catalogue
from controlplane.scheduler.host import InlineHost
from controlplane.scheduler.types import ClusterSnapshot, Decisions, PendingJob, Policy
from controlplane.services.controller import Controller
from controlplane.services.quiet_round import WaitMemo, can_place_nothing
from controlplane.services.scheduling import run_round
from controlplane.settings import ServerSettings
from controlplane.store.sqlite import SqliteStore
from tests.unit.builders import jobs, nodes, running, snapshot
from xinhe.v1 import agent_pb2, common_pb2

J, R = common_pb2, agent_pb2
GB = 10**9


class CountingHost(InlineHost):
    """The inline core, recording how many jobs each round handed it."""

    def __init__(self) -> None:
        self.handed: list[int] = []

    def schedule(self, snapshot: ClusterSnapshot, pending: Sequence[PendingJob],
                 policy: Policy, now: float) -> Decisions:
        self.handed.append(len(pending))
        return super().schedule(snapshot, pending, policy, now)


CORDONED = snapshot(nodes(2, model="H100", family="nvidia", schedulable=False))
OPEN = snapshot(nodes(2, model="H100", family="nvidia"))
QUEUE = jobs("a", n=3)


@pytest.mark.parametrize(("snap", "known", "expected"), [
    (OPEN, {"a-0", "a-1"}, ["a-0", "a-1", "a-2"]),     # could place: every job
    (CORDONED, {"a-0", "a-1"}, ["a-2"]),                 # nothing placeable: the new one
    (CORDONED, set(), ["a-0", "a-1", "a-2"]),
])
def test_memo_hands_the_core_only_what_needs_words(
        snap: ClusterSnapshot, known: set[str], expected: list[str]) -> None:
    memo = WaitMemo()
    memo.to_explain(snap, Policy(), QUEUE, {})  # the first round explains everything
    reasons = {job_id: "waiting" for job_id in known}
    assert [j.job_id for j in memo.to_explain(snap, Policy(), QUEUE, reasons)] == expected


@pytest.mark.parametrize("changed", [
    snapshot(nodes(3, model="H100", family="nvidia", schedulable=False)),  # a node joined
    snapshot(nodes(2, model="H100", family="nvidia", schedulable=False),
             running=[running("r", pool="p", model="H100", devices=1, end=5.0)]),
])
def test_a_changed_situation_explains_every_job_again(changed: ClusterSnapshot) -> None:
    memo, reasons = WaitMemo(), {j.job_id: "waiting" for j in QUEUE}
    memo.to_explain(CORDONED, Policy(), QUEUE, {})
    assert len(memo.to_explain(changed, Policy(), QUEUE, reasons)) == 3
    assert len(memo.to_explain(CORDONED, Policy(fair_share=True), QUEUE, reasons)) == 3
    assert not memo.to_explain(CORDONED, Policy(fair_share=True), QUEUE, reasons)


def test_only_schedulable_nodes_can_take_work() -> None:
    assert can_place_nothing(CORDONED) and can_place_nothing(snapshot())
    assert not can_place_nothing(OPEN)


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    store = SqliteStore(tmp_path / "x.db")
    controller = Controller(store, default_catalogue(), ServerSettings(scheduler="inline"),
                            CountingHost())
    devs = [J.Device(index=i, model="H100", family="nvidia", memory_bytes=80 * GB, healthy=True)
            for i in range(2)]
    session = controller.agents.register(R.RegisterRequest(
        protocol_version=R.PROTOCOL_VERSION_1, node_name="n1", pool="p", region="r",
        address="127.0.0.1", devices=devs, cpu_millis=8000, memory_bytes=64 * GB))
    assert controller.ctx.fleet.attach(session.session_id) is not None
    yield controller
    controller.stop()
    store.close()


def submit(controller: Controller, key: str, devices: int = 1) -> str:
    spec = J.JobSpec(name=key, queue="lab-a/default", command=["true"], replicas=1)
    spec.resources.accelerators = devices
    return controller.jobs.submit(spec, key)[0].id


def test_a_cordoned_fleet_explains_new_jobs_only_and_keeps_the_old_reasons(
        controller: Controller) -> None:
    ctx, host = controller.ctx, controller.host
    ctx.fleet.set_cordon("n1", True, "maintenance")
    first = [submit(controller, f"k{i}") for i in range(3)]
    run_round(ctx, host, controller.policy)
    reasons = {job_id: controller.jobs.get(job_id).state_reason for job_id in first}
    assert all("cordon" in r or "capacity" in r for r in reasons.values()), reasons
    late = submit(controller, "late")
    assert run_round(ctx, host, controller.policy).pending == 4
    assert run_round(ctx, host, controller.policy).pending == 4  # nothing new: no core call
    assert host.handed == [3, 1]
    assert {j: controller.jobs.get(j).state_reason for j in first} == reasons
    assert controller.jobs.get(late).state_reason == reasons[first[0]]
    ctx.fleet.set_cordon("n1", False, "")  # room again: every job is decided
    assert run_round(ctx, host, controller.policy).placed == 2
    assert host.handed[-1] == 4
    for job_id in first[:2]:
        assert controller.jobs.get(job_id).state == J.JOB_STATE_SCHEDULED


def queued_job(job_id: str, state: int = J.JOB_STATE_QUEUED) -> common_pb2.Job:
    spec = J.JobSpec(name=job_id, queue="lab-a/default", command=["true"], replicas=1)
    spec.resources.accelerators = 1
    return J.Job(id=job_id, tenant="lab-a", spec=spec, state=state, attempt=1)


def test_the_queue_tells_what_joined_since_a_stamp() -> None:
    from controlplane.services.pending import PendingQueue

    queue = PendingQueue(default_catalogue())
    queue.observe([queued_job(f"j{i}") for i in range(4)])
    everything, mark = queue.pending_marked()
    assert [j.job_id for j in everything] == ["j0", "j1", "j2", "j3"]
    assert queue.since(mark) == ([], mark)
    queue.observe([queued_job("j1", J.JOB_STATE_SCHEDULED), queued_job("j4"),
                   queued_job("j2", J.JOB_STATE_CANCELLED)])
    fresh, mark2 = queue.since(mark)
    assert [j.job_id for j in fresh] == ["j4"]
    queue.observe([queued_job("j1")])  # requeued: new again, keeps its rank
    fresh, mark3 = queue.since(mark2)
    assert [(j.job_id, j.order) for j in fresh] == [("j1", 1)]
    assert [j.job_id for j in queue.since(mark)[0]] == ["j4", "j1"]
    assert queue.since(mark3)[0] == []


def test_a_quiet_round_reads_only_the_new_part_of_the_queue() -> None:
    """The memo asks the queue for what joined since its last round, and
    hands over only those without a reason."""
    from controlplane.services.pending import PendingQueue

    queue = PendingQueue(default_catalogue())
    queue.observe([queued_job(f"old{i}") for i in range(50)])
    memo = WaitMemo()
    assert len(memo.to_explain(CORDONED, Policy(), queue, {})) == 50
    reasons = {f"old{i}": "waiting" for i in range(50)}
    queue.observe([queued_job("new")])
    assert [j.job_id for j in memo.to_explain(CORDONED, Policy(), queue, reasons)] == ["new"]
    assert memo.to_explain(CORDONED, Policy(), queue, reasons) == []
    memo.forget()  # e.g. the round failed: everything again
    assert len(memo.to_explain(CORDONED, Policy(), queue, reasons)) == 51
