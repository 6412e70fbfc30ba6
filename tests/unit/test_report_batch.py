"""Replica reports through the agent sessions' group commit, in process: a
real control plane (SQLite store, fleet, scheduler, reconciler); agents are
played by the test, which feeds each session's stream reader and reads its
outbox. A gated store holds a commit open so reports from other streams pile
up behind it; acknowledgements must wait for the commit that stored them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from controlplane.model.catalogue import default_catalogue
from controlplane.model.states import QUEUED, RUNNING, SCHEDULED, SUCCEEDED
from controlplane.observability.instruments import ControlPlaneMetrics
from controlplane.observability.store import InstrumentedStore
from controlplane.scheduler.host import InlineHost
from controlplane.services.controller import Controller
from controlplane.services.fleet import AgentSession
from controlplane.services.reconcile import decide_report
from controlplane.settings import ServerSettings
from controlplane.store.base import (
    ConflictError,
    ReplicaReport,
    ReportDecision,
    ReportOutcome,
    StoreError,
    Transition,
)
from controlplane.store.sqlite import SqliteStore
from tests.unit.test_migration_service import Clock, connect, drain
from xinhe.v1 import agent_pb2, common_pb2

R, J = agent_pb2, common_pb2


class GatedStore(SqliteStore):
    """A real store whose report commits wait for ``release``, record their
    batch sizes (and whether each reported job's logs were stored by then),
    and refuse any batch holding a job of ``refuse`` or, while ``down``, all."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.sizes: list[int] = []
        self.logs_at_commit: dict[str, int] = {}
        self.refuse: set[str] = set()
        self.down = False

    def record_reports(self, reports: Sequence[ReplicaReport], decide: ReportDecision,
                       now: float) -> list[ReportOutcome]:
        self.sizes.append(len(reports))
        self.entered.set()
        assert self.release.wait(30)
        if self.down:
            raise StoreError("OperationalError: disk I/O error")
        refused = [r.ref.job_id for r in reports if r.ref.job_id in self.refuse]
        if refused:
            raise ConflictError(f"job {refused[0]} changed meanwhile")
        for r in reports:
            self.logs_at_commit[r.ref.job_id] = len(self.logs(r.ref.job_id))
        return super().record_reports(reports, decide, now)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[GatedStore]:
    s = GatedStore(tmp_path / "x.db")
    yield s
    s.close()


@pytest.fixture
def controller(store: GatedStore) -> Controller:
    return Controller(store, default_catalogue(), ServerSettings(), InlineHost(), clock=Clock())


def fleet_with_jobs(controller: Controller, n: int, attempts: int = 1
                    ) -> list[tuple[AgentSession, agent_pb2.ReplicaRef]]:
    """``n`` nodes of two devices, each running one placed two-device job
    (``attempts`` allowed): (the node's session, the replica it was told to
    launch)."""
    sessions = [connect(controller, f"n{i}", "h100", "H100", "nvidia") for i in range(n)]
    for i in range(n):
        spec = J.JobSpec(name=f"t{i}", queue="lab-a/default", command=["true"], replicas=1)
        spec.resources.accelerators = 2
        spec.retry.max_attempts = attempts
        controller.jobs.submit(spec, "")
    controller.tick()
    out = []
    for session in sessions:
        [launch] = drain(session, "launch")
        out.append((session, launch.ref))
    return out


def status(ref: agent_pb2.ReplicaRef, state: int, sequence: int) -> agent_pb2.AgentMessage:
    return R.AgentMessage(status=R.ReplicaStatus(ref=ref, state=state, agent_sequence=sequence))


def acks(session: AgentSession) -> list[int]:
    return [a.agent_sequence for a in drain(session, "ack") if not a.logs]


def stream(controller: Controller, session: AgentSession,
           messages: list[agent_pb2.AgentMessage]) -> threading.Thread:
    """Serve ``messages`` as the session's stream, on a reader thread (the
    real one: a report that raises ends the stream and closes the session)."""
    reader = threading.Thread(target=controller.agents._read, args=(session, iter(messages)))
    reader.start()
    return reader


def wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def pile_up(controller: Controller, store: GatedStore,
            reports: list[tuple[AgentSession, agent_pb2.AgentMessage]]) -> list[threading.Thread]:
    """The first report commits alone, held at the gate; the others queue
    behind it, one stream after the other. Returns the readers (joined by
    the caller after ``store.release.set()``)."""
    store.release.clear()
    store.entered.clear()
    session, message = reports[0]
    readers = [stream(controller, session, [message])]
    assert store.entered.wait(30)
    for n, (session, message) in enumerate(reports[1:], 1):
        readers.append(stream(controller, session, [message]))
        wait_until(lambda n=n: len(controller.agents.reports._queued) == n)
    return readers


def test_reports_of_many_streams_share_a_commit_and_are_acked_after_it(
        controller: Controller, store: GatedStore) -> None:
    placed = fleet_with_jobs(controller, 6)
    readers = pile_up(controller, store, [(s, status(ref, R.REPLICA_STATE_RUNNING, 1))
                                          for s, ref in placed])
    time.sleep(0.05)  # time enough for a wrong early ack to show
    assert all(acks(s) == [] for s, _ in placed)  # nothing acknowledged before the commit
    store.release.set()
    for reader in readers:
        reader.join(30)
    assert store.sizes == [1, 5]
    assert all(acks(s) == [1] for s, _ in placed)
    assert {controller.jobs.get(ref.job_id).state for _, ref in placed} == {RUNNING}


def test_each_streams_reports_are_recorded_in_order_with_its_logs_first(
        controller: Controller, store: GatedStore) -> None:
    placed = fleet_with_jobs(controller, 8)
    readers = []
    for session, ref in placed:
        output = common_pb2.LogChunk(job_id=ref.job_id, attempt=ref.attempt, rank=ref.rank,
                                     data=b"done\n", offset=0)
        readers.append(stream(controller, session, [
            status(ref, R.REPLICA_STATE_STARTING, 1), status(ref, R.REPLICA_STATE_RUNNING, 2),
            R.AgentMessage(logs=output), status(ref, R.REPLICA_STATE_SUCCEEDED, 3)]))
    for reader in readers:
        reader.join(30)
    for session, ref in placed:
        job = controller.jobs.get(ref.job_id)
        assert (job.state, job.attempt) == (SUCCEEDED, 1)
        kinds = [e.kind for e in store.events(ref.job_id)]
        assert kinds == ["submitted", "placed", "started", "running", "succeeded"]
        assert acks(session) == [1, 2, 3]
        assert store.logs_at_commit[ref.job_id] == 1  # stored before its final status
    assert sum(store.sizes) == 3 * len(placed)
    assert controller.ctx.allocations.held_on("n0") == {}


def test_a_refused_report_fails_alone_and_is_never_acked(
        controller: Controller, store: GatedStore) -> None:
    placed = fleet_with_jobs(controller, 4)
    bad_session, bad = placed[2]
    store.refuse.add(bad.job_id)
    readers = pile_up(controller, store, [(s, status(ref, R.REPLICA_STATE_RUNNING, 1))
                                          for s, ref in placed])
    store.release.set()
    for reader in readers:
        reader.join(30)
    assert store.sizes == [1, 3, 1, 1, 1]  # the batch refused whole, then one by one
    assert acks(bad_session) == []  # unacknowledged: the agent resends it
    assert controller.jobs.get(bad.job_id).state == SCHEDULED
    for session, ref in placed[:2] + placed[3:]:
        assert acks(session) == [1]
        assert controller.jobs.get(ref.job_id).state == RUNNING


def test_a_report_lost_to_a_store_outage_is_not_acked_and_changes_nothing(
        controller: Controller, store: GatedStore) -> None:
    [(session, ref)] = fleet_with_jobs(controller, 1)
    store.down = True
    stream(controller, session, [status(ref, R.REPLICA_STATE_SUCCEEDED, 1)]).join(30)
    assert acks(session) == []  # unacknowledged: the agent resends it
    assert controller.jobs.get(ref.job_id).state == SCHEDULED
    assert [r.state for r in store.replicas(ref.job_id)] == [R.REPLICA_STATE_UNSPECIFIED]
    assert controller.ctx.allocations.held_on("n0") != {}  # devices still held


def test_a_report_that_requeues_its_job_puts_it_back_in_the_queue_at_once(
        controller: Controller, store: GatedStore) -> None:
    [(session, ref)] = fleet_with_jobs(controller, 1, attempts=2)
    failed = R.AgentMessage(status=R.ReplicaStatus(ref=ref, state=R.REPLICA_STATE_FAILED,
                                                   exit_code=3, agent_sequence=1))
    stream(controller, session, [failed]).join(30)
    job = controller.jobs.get(ref.job_id)
    assert (job.state, job.attempt) == (QUEUED, 2)
    # The in-memory queue saw the commit (no wait for its 30 s rebuild).
    assert [p.job_id for p in controller.ctx.pending.pending()] == [ref.job_id]
    assert controller.ctx.allocations.held_on("n0") == {}


def test_metrics_count_the_job_changes_of_committed_reports_only(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "m.db") as inner:
        store = InstrumentedStore(inner, ControlPlaneMetrics())
        spec = J.JobSpec(name="t", queue="lab-a/default", command=["true"], replicas=1)
        store.create_job(J.Job(id="j-1", spec=spec), 100.0)
        placement = J.Placement(pool="p", family="nvidia", model="H100")
        placement.replicas.add(rank=0, node="n0", device_indices=[0])
        [job] = store.apply([Transition(job_id="j-1", to_state=SCHEDULED, kind="placed",
                                        new_epoch=True, updates=J.Job(placement=placement))],
                            110.0)
        done = ReplicaReport(R.ReplicaRef(job_id="j-1", attempt=1, rank=0, epoch=job.epoch),
                             R.REPLICA_STATE_SUCCEEDED, node="n0")

        def refuse(*_: object) -> list[Transition]:
            raise ConflictError("refused")

        with pytest.raises(ConflictError):
            store.record_reports([done], refuse, 120.0)
        registry = store.metrics.registry

        def count(name: str, **labels: str) -> float:
            return registry.get_sample_value(name, labels) or 0.0

        assert count("xinhe_jobs_succeeded_total", tenant="lab-a", family="nvidia") == 0
        store.record_reports([done], decide_report, 130.0)
        assert count("xinhe_jobs_succeeded_total", tenant="lab-a", family="nvidia") == 1
        assert count("xinhe_store_write_duration_seconds_count",
                     operation="record_reports") == 1


def test_a_returning_agents_held_replicas_are_recorded_in_one_transaction(
        controller: Controller, store: GatedStore) -> None:
    [(_, ref), (_, other)] = fleet_with_jobs(controller, 2)
    stale = R.ReplicaRef(job_id=ref.job_id, attempt=ref.attempt, rank=ref.rank,
                         epoch=ref.epoch - 1)
    foreign = R.ReplicaRef(job_id=other.job_id, attempt=other.attempt, rank=other.rank,
                           epoch=other.epoch)  # placed on n1, not on n0
    held = [R.ReplicaStatus(ref=r, state=R.REPLICA_STATE_RUNNING) for r in (ref, stale, foreign)]

    def register() -> agent_pb2.RegisterResponse:
        return controller.agents.register(R.RegisterRequest(
            protocol_version=R.PROTOCOL_VERSION_1, node_name="n0", pool="h100", region="r",
            address="127.0.0.1", devices=[J.Device(index=i, model="H100", family="nvidia",
                                                   memory_bytes=64 * 10**9, healthy=True)
                                          for i in range(2)],
            cpu_millis=8000, memory_bytes=64 * 10**9, replicas=held))

    store.sizes.clear()
    response = register()
    assert store.sizes == [3]
    assert list(response.stop) == [stale, foreign]
    assert controller.jobs.get(ref.job_id).state == RUNNING
    assert controller.jobs.get(other.job_id).state == SCHEDULED
    # Refused together: recorded one by one, and the refusal surfaces as alone.
    store.sizes.clear()
    store.refuse.add(other.job_id)
    with pytest.raises(ConflictError):
        register()
    assert store.sizes == [3, 1, 1, 1]
