"""The store consistency checker finds each kind of corruption it claims to,
and passes a store that only went through the Store API."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.model import states
from controlplane.store.base import Transition
from controlplane.store.check import check_store
from controlplane.store.sqlite import SqliteStore
from xinhe.v1 import common_pb2

NOW = 1000.0


def job(job_id: str, key: str = "") -> common_pb2.Job:
    spec = common_pb2.JobSpec(name=job_id, queue="lab-a/default", command=["true"], replicas=1)
    return common_pb2.Job(id=job_id, client_key=key, spec=spec)


def place(store: SqliteStore, job_id: str, node: str, devices: list[int]) -> common_pb2.Job:
    placement = common_pb2.Placement(pool="p", replicas=[common_pb2.ReplicaPlacement(
        rank=0, node=node, device_indices=devices)])
    return store.apply([Transition(job_id=job_id, to_state=states.SCHEDULED, kind="placed",
                                   updates=common_pb2.Job(placement=placement),
                                   new_epoch=True)], NOW)[0]


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "x.db")
    s.create_job(job("j-1", "k1"), NOW)
    s.create_job(job("j-2"), NOW)
    s.create_job(job("j-3"), NOW)
    place(s, "j-1", "n1", [0, 1])
    s.apply([Transition(job_id="j-1", to_state=states.RUNNING, kind="started")], NOW)
    place(s, "j-2", "n1", [2])
    s.apply([Transition(job_id="j-3", to_state=states.CANCELLED, kind="cancelled")], NOW)
    s.add_event("j-3", "note", "informational", NOW)
    yield s
    s.close()


def test_a_store_changed_only_through_its_api_is_consistent(store: SqliteStore) -> None:
    report = check_store(store)
    assert report.ok, report.violations
    assert (report.jobs, report.events) == (3, 8)


def _raw(store: SqliteStore, sql: str, *params: object) -> None:
    with store._tx() as conn:
        conn.execute(sql, params)


def _rewrite(store: SqliteStore, job_id: str, change) -> None:
    current = store.get_job(job_id)
    change(current)
    _raw(store, "UPDATE jobs SET state = ?, data = ? WHERE id = ?", current.state,
         current.SerializeToString(), job_id)


def test_state_without_its_event_is_reported(store: SqliteStore) -> None:
    _rewrite(store, "j-2", lambda j: setattr(j, "state", states.RUNNING))
    assert any("j-2: state RUNNING but last event leads to SCHEDULED" in v
               for v in check_store(store).violations)


def test_a_device_held_twice_is_reported(store: SqliteStore) -> None:
    _rewrite(store, "j-2", lambda j: j.placement.replicas[0].device_indices.append(1))
    assert "device n1/1 held by j-1, j-2" in check_store(store).violations


def test_terminal_job_without_finished_at_is_reported(store: SqliteStore) -> None:
    _rewrite(store, "j-3", lambda j: j.ClearField("finished_at"))
    assert any("j-3: CANCELLED without finished_at" in v for v in check_store(store).violations)


def test_replica_rows_that_do_not_match_the_placement_are_reported(
        store: SqliteStore) -> None:
    _raw(store, "UPDATE replicas SET node = 'n9' WHERE job_id = 'j-1'")
    assert any("j-1: replica rows" in v for v in check_store(store).violations)


def test_an_event_off_the_state_machine_is_reported(store: SqliteStore) -> None:
    _raw(store, "UPDATE events SET from_state = ?, to_state = ? WHERE job_id = 'j-3' AND"
         " kind = 'cancelled'", states.QUEUED, states.SUCCEEDED)
    violations = check_store(store).violations
    assert any("j-3: event" in v and "not an allowed transition" in v for v in violations)
