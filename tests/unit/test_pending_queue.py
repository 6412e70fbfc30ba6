"""The in-memory pending queue: it must always equal what a fresh read of the
store would give (the store is the truth), through submissions, placements,
requeues, cancels and node loss, whichever service made the change; rounds
use it instead of reading the store; and bursts of submissions are placed by
few coalesced rounds. Real SQLite store, real services, injected clock."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from controlplane.model import states
from controlplane.model.catalogue import default_catalogue
from controlplane.scheduler.host import InlineHost
from controlplane.scheduler.types import PendingJob
from controlplane.services.controller import Controller
from controlplane.services.pending import PendingQueue
from controlplane.services.scheduling import run_round
from controlplane.settings import ServerSettings
from controlplane.store.base import Transition
from controlplane.store.sqlite import SqliteStore
from xinhe.v1 import agent_pb2, common_pb2

J, R = common_pb2, agent_pb2
GB = 10**9


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingStore(SqliteStore):
    """A real SQLite store that counts the queue reads a round could make."""

    queue_reads = 0

    def jobs_in_states(self, wanted: Iterable[int]) -> list[common_pb2.Job]:
        wanted = list(wanted)
        if set(wanted) == {states.QUEUED}:
            self.queue_reads += 1
        return super().jobs_in_states(wanted)


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    store = CountingStore(tmp_path / "x.db")
    controller = Controller(store, default_catalogue(), ServerSettings(scheduler="inline"),
                            InlineHost(), clock=Clock())
    yield controller
    controller.stop()
    store.close()


def connect(controller: Controller, node: str, devices: int = 2) -> None:
    devs = [J.Device(index=i, model="H100", family="nvidia", memory_bytes=80 * GB, healthy=True)
            for i in range(devices)]
    response = controller.agents.register(R.RegisterRequest(
        protocol_version=R.PROTOCOL_VERSION_1, node_name=node, pool="p", region="r",
        address="127.0.0.1", devices=devs, cpu_millis=8000, memory_bytes=64 * GB))
    assert controller.ctx.fleet.attach(response.session_id) is not None


def spec(name: str = "t", devices: int = 1, priority: int = 0) -> common_pb2.JobSpec:
    s = J.JobSpec(name=name, queue="lab-a/default", command=["true"], replicas=1,
                  priority=priority)
    s.resources.accelerators = devices
    s.retry.max_attempts = 3
    return s


def from_store(controller: Controller) -> list[PendingJob]:
    """The queue a fresh rebuild from the store gives."""
    fresh = PendingQueue(controller.ctx.catalogue)
    fresh.resync(controller.ctx.store)
    return view(fresh)


def view(queue: PendingQueue) -> list[PendingJob]:
    """The queue in submission order; ``order`` values are ranks whose
    absolute numbers may differ between queues, so they are zeroed."""
    return [replace(p, order=0) for p in sorted(queue.pending(), key=lambda p: p.order)]


def ids(queue: PendingQueue) -> list[str]:
    return [p.job_id for p in view(queue)]


def test_queue_follows_every_change_and_matches_the_store(controller: Controller) -> None:
    queue = controller.ctx.pending
    jobs = [controller.jobs.submit(spec(f"j{i}"), f"k{i}")[0] for i in range(5)]
    assert ids(queue) == [j.id for j in jobs] and view(queue) == from_store(controller)
    controller.jobs.submit(spec("j0"), "k0")  # an idempotent repeat adds nothing
    assert len(queue) == 5

    connect(controller, "n1", devices=2)
    assert run_round(controller.ctx, controller.host, controller.policy).placed == 2
    assert ids(queue) == [j.id for j in jobs[2:]]
    assert view(queue) == from_store(controller)

    controller.jobs.cancel(jobs[3].id, "no longer needed")
    assert jobs[3].id not in queue and view(queue) == from_store(controller)

    # Node loss requeues the placed jobs: they come back in their old place.
    requeued = controller.reconciler.on_node_lost("n1")
    assert {j.id for j in requeued} == {jobs[0].id, jobs[1].id}
    assert ids(queue) == [jobs[0].id, jobs[1].id, jobs[2].id, jobs[4].id]
    assert view(queue) == from_store(controller)


def test_rounds_read_the_queue_from_memory_not_the_store(controller: Controller) -> None:
    store = controller.ctx.store.inner
    for i in range(20):
        controller.jobs.submit(spec(f"j{i}"), "")
    connect(controller, "n1", devices=2)
    before = store.queue_reads
    for _ in range(3):
        run_round(controller.ctx, controller.host, controller.policy)
    assert store.queue_reads == before
    assert controller.ctx.store.count_jobs_by_state()[states.QUEUED] == 18


def test_a_change_bypassing_the_tracking_store_is_healed_by_resync(
        controller: Controller) -> None:
    job, _ = controller.jobs.submit(spec(), "")
    raw = controller.ctx.store.inner  # a writer the queue does not see
    raw.apply([Transition(job_id=job.id, to_state=J.JOB_STATE_CANCELLED, kind="cancelled")],
              1000.0)
    assert job.id in controller.ctx.pending
    controller.ctx.pending.resync(controller.ctx.store)
    assert job.id not in controller.ctx.pending and len(controller.ctx.pending) == 0


def test_a_restarted_controller_rebuilds_the_queue(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "x.db")
    first = Controller(store, default_catalogue(), ServerSettings(), InlineHost(),
                       clock=Clock())
    jobs = [first.jobs.submit(spec(f"j{i}"), "")[0] for i in range(3)]
    again = Controller(store, default_catalogue(), ServerSettings(), InlineHost(),
                       clock=Clock())
    assert ids(again.ctx.pending) == [j.id for j in jobs]
    store.close()


def test_a_burst_of_submissions_is_placed_by_few_coalesced_rounds(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "x.db")
    settings = ServerSettings(schedule_min_gap_s=0.2, schedule_interval_s=5.0)
    controller = Controller(store, default_catalogue(), settings, InlineHost())
    rounds: list[int] = []
    controller.on_round = lambda result: rounds.append(result.pending)
    connect(controller, "n1", devices=8)
    controller.start()
    try:
        started = time.monotonic()
        for i in range(20):  # spread over ~0.5 s: without the gap, a round each
            controller.jobs.submit(spec(f"j{i}", devices=8), "")
            time.sleep(0.025)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(controller.ctx.pending) > 19:
            time.sleep(0.01)
        elapsed = time.monotonic() - started
    finally:
        controller.stop()
        store.close()
    busy = [n for n in rounds if n]
    assert len(controller.ctx.pending) == 19  # the node holds one 8-device job
    # At most one round per gap (plus the first two), not one per submission.
    assert 1 <= len(busy) <= elapsed / 0.2 + 3
