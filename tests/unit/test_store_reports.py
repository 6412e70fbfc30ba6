"""``Store.record_reports``: many agents' replica reports and the job changes
they call for in one transaction, run against every implementation (the
``store`` fixture of test_store.py: SQLite and PostgreSQL). Each report keeps
``update_replica``'s checks (epoch, node); ``decide`` sees what the earlier
reports of the batch wrote; any refusal rolls back the whole batch."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from controlplane.model.states import (
    CANCELLED,
    QUEUED,
    RUNNING,
    SCHEDULED,
    STARTING,
    SUCCEEDED,
    InvalidTransition,
)
from controlplane.services.reconcile import decide_report
from controlplane.store.base import (
    FencedError,
    ReplicaRecord,
    ReplicaReport,
    Store,
    Transition,
)
from tests.unit.test_fencing import elect, replicas  # noqa: F401 (fixture)
from tests.unit.test_store import (  # noqa: F401 (open_store: a fixture)
    T0,
    open_store,
    place,
    ref,
    snapshot,
    submit,
    to,
)
from xinhe.v1 import agent_pb2, common_pb2

R = agent_pb2


@pytest.fixture
def db(open_store) -> Store:  # noqa: F811 (test_store.py's fixture, imported)
    """A fresh store of each implementation (SQLite, PostgreSQL)."""
    return open_store()


@pytest.fixture
def two_leaders(request: pytest.FixtureRequest) -> tuple:
    """test_fencing.py's two control-plane replicas on one PostgreSQL schema."""
    return request.getfixturevalue("replicas")


def report(job: common_pb2.Job, state: int, rank: int = 0, node: str | None = "n1",
           epoch: int | None = None, exit_code: int = 0) -> ReplicaReport:
    return ReplicaReport(ref(job, rank=rank, epoch=epoch), state, exit_code, "", node=node)


def placed(store: Store, job_id: str, *nodes: str) -> common_pb2.Job:
    submit(store, job_id, replicas=len(nodes) or 1)
    return store.apply([place(job_id, *nodes)], T0)[0]


def kinds(store: Store, job_id: str) -> list[str]:
    return [e.kind for e in store.events(job_id)]


def test_a_batch_moves_jobs_as_reports_one_by_one_would(db: Store) -> None:
    gang, solo = placed(db, "gang", "n1", "n2"), placed(db, "solo", "n1")
    outcomes = db.record_reports([
        report(gang, R.REPLICA_STATE_RUNNING, rank=0, node="n1"),
        report(solo, R.REPLICA_STATE_SUCCEEDED),
        report(gang, R.REPLICA_STATE_RUNNING, rank=1, node="n2"),  # sees rank 0 running
    ], decide_report, T0 + 5)
    assert [[j.state for j in o.changed] for o in outcomes] == [
        [STARTING], [STARTING, SUCCEEDED], [RUNNING]]
    assert [o.job.state for o in outcomes] == [SCHEDULED, SCHEDULED, STARTING]
    assert [o.row.state for o in outcomes] == [R.REPLICA_STATE_RUNNING, R.REPLICA_STATE_SUCCEEDED,
                                               R.REPLICA_STATE_RUNNING]
    assert db.get_job("gang").state == RUNNING and db.get_job("solo").state == SUCCEEDED
    assert kinds(db, "gang") == ["submitted", "placed", "started", "running"]
    assert kinds(db, "solo") == ["submitted", "placed", "started", "succeeded"]
    assert outcomes[1].transitions[-1].kind == "succeeded"


def test_stale_and_foreign_reports_change_nothing_and_sink_nothing(db: Store) -> None:
    job = placed(db, "j-1", "n1")
    other = placed(db, "j-2", "n1")
    before = snapshot(db, "j-1")
    seen: list[str] = []

    def decide(r: ReplicaReport, j: common_pb2.Job,
               rows: Sequence[ReplicaRecord]) -> list[Transition]:
        seen.append(j.id)
        return decide_report(r, j, rows)

    outcomes = db.record_reports([
        report(job, R.REPLICA_STATE_RUNNING, epoch=job.epoch - 1),  # an older epoch
        report(job, R.REPLICA_STATE_RUNNING, node="n9"),  # not placed on n9
        report(job, R.REPLICA_STATE_RUNNING, rank=3),  # no such replica
        report(other, R.REPLICA_STATE_RUNNING),
    ], decide, T0)
    assert [o.row is None for o in outcomes] == [True, True, True, False]
    assert seen == ["j-2"]  # decide runs only for a matched row
    assert snapshot(db, "j-1") == before
    assert db.get_job("j-2").state == RUNNING


def test_a_report_of_a_finished_job_is_recorded_without_a_transition(db: Store) -> None:
    job = placed(db, "j-1", "n1")
    db.apply([to("j-1", CANCELLED)], T0)
    [outcome] = db.record_reports([report(job, R.REPLICA_STATE_STOPPED)], decide_report, T0)
    assert outcome.row.state == R.REPLICA_STATE_STOPPED and outcome.job.state == CANCELLED
    assert outcome.transitions == () and outcome.changed == ()


def test_a_repeated_report_is_idempotent(db: Store) -> None:
    job = placed(db, "j-1", "n1")
    first, again = db.record_reports([report(job, R.REPLICA_STATE_RUNNING)] * 2,
                                        decide_report, T0)
    assert [j.state for j in first.changed] == [STARTING, RUNNING]
    assert again.changed == () and again.row == first.row
    assert kinds(db, "j-1") == ["submitted", "placed", "started", "running"]


def test_a_refused_transition_rolls_back_the_whole_batch(db: Store) -> None:
    ok, bad = placed(db, "ok", "n1"), placed(db, "bad", "n1")
    before = [snapshot(db, "ok"), snapshot(db, "bad")]

    def decide(r: ReplicaReport, j: common_pb2.Job,
               rows: Sequence[ReplicaRecord]) -> list[Transition]:
        # SCHEDULED -> SUCCEEDED skips STARTING: the state machine refuses it.
        return [to(j.id, SUCCEEDED)] if j.id == "bad" else decide_report(r, j, rows)

    with pytest.raises(InvalidTransition):
        db.record_reports([report(ok, R.REPLICA_STATE_RUNNING),
                              report(bad, R.REPLICA_STATE_SUCCEEDED)], decide, T0)
    assert [snapshot(db, "ok"), snapshot(db, "bad")] == before


@pytest.mark.parametrize("fault", ["raises", "other job"])
def test_a_faulty_decide_rolls_back_the_whole_batch(db: Store, fault: str) -> None:
    job, other = placed(db, "j-1", "n1"), placed(db, "j-2", "n1")
    before = [snapshot(db, "j-1"), snapshot(db, "j-2")]

    def decide(r: ReplicaReport, j: common_pb2.Job,
               rows: Sequence[ReplicaRecord]) -> list[Transition]:
        if fault == "raises":
            raise RuntimeError("decide failed")
        return [to("j-2", QUEUED, clear_placement=True, increment_attempt=True)]

    with pytest.raises((RuntimeError, ValueError)):
        db.record_reports([report(job, R.REPLICA_STATE_RUNNING),
                              report(other, R.REPLICA_STATE_RUNNING)], decide, T0)
    assert [snapshot(db, "j-1"), snapshot(db, "j-2")] == before


def test_an_empty_batch_is_a_no_op(db: Store) -> None:
    assert db.record_reports([], decide_report, T0) == []


def test_a_stale_leaders_reports_are_refused_and_write_nothing(two_leaders: tuple) -> None:
    dsn, old, new = two_leaders
    first = elect(dsn, "a:1")
    old.set_leader_term(first.term)
    job = placed(old, "j-1", "n1")
    first._disconnect()  # deposed without noticing: it keeps its old term
    second = elect(dsn, "b:2")
    try:
        new.set_leader_term(second.term)
        before = snapshot(new, "j-1")
        with pytest.raises(FencedError):
            old.record_reports([report(job, R.REPLICA_STATE_RUNNING)], decide_report, T0)
        assert snapshot(new, "j-1") == before
        [outcome] = new.record_reports([report(job, R.REPLICA_STATE_RUNNING)], decide_report,
                                       T0)
        assert [j.state for j in outcome.changed] == [STARTING, RUNNING]
    finally:
        first.stop()
        second.stop()
