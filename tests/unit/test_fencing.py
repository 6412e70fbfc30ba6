"""Fencing the dual-leader window: each elected leader raises the store's
leader term; a deposed leader that has not noticed yet keeps its old term,
and its job-state writes are refused inside their own transaction, with
nothing written. Real PostgreSQL, scratch schemas; electors stepped by hand."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from controlplane.api.errors import status_of
from controlplane.model.states import QUEUED, RUNNING, SCHEDULED, STARTING
from controlplane.services.leader import PostgresElector
from controlplane.store.base import FencedError
from controlplane.store.postgres import PostgresStore
from controlplane.store.sqlite import SqliteStore
from tests.unit.test_store import (
    T0,
    ScratchSchemas,
    place,
    ref,
    require_postgres,
    snapshot,
    submit,
    to,
)
from xinhe.v1 import agent_pb2


@pytest.fixture
def replicas() -> Iterator[tuple[str, PostgresStore, PostgresStore]]:
    """Two control-plane replicas' stores on one schema, and its DSN."""
    scratch = ScratchSchemas(require_postgres())
    schema = scratch.name("fence")
    old, new = (PostgresStore(scratch.dsn, schema=schema, pool_size=2) for _ in range(2))
    separator = "&" if "?" in scratch.dsn else "?"
    try:
        yield f"{scratch.dsn}{separator}options=-csearch_path%3D{schema}", old, new
    finally:
        old.close()
        new.close()
        scratch.drop_all()


def elect(dsn: str, address: str) -> PostgresElector:
    """A leader, elected by polling as a follower does: after the previous
    leader's session died, PostgreSQL frees its lock once that backend has
    exited, a moment after the connection closed."""
    elector = PostgresElector(dsn, address)
    deadline = time.monotonic() + 5
    elector.poll()
    while not elector.is_leader() and time.monotonic() < deadline:
        time.sleep(0.05)
        elector.poll()
    assert elector.is_leader()
    return elector


def test_a_stale_leaders_writes_are_refused_and_write_nothing(replicas) -> None:
    dsn, old, new = replicas
    first = elect(dsn, "a:1")
    old.set_leader_term(first.term)
    submit(old, "j-1")
    [placed] = old.apply([place("j-1", "n1")], T0)
    first._disconnect()  # its session dies; it has not polled, so it still "leads"
    second = elect(dsn, "b:2")
    try:
        assert second.term == first.term + 1
        new.set_leader_term(second.term)
        before = snapshot(new, "j-1")
        with pytest.raises(FencedError, match=f"leader term {first.term} is over"):
            old.apply([to("j-1", STARTING, expect_epoch=placed.epoch)], T0 + 1)
        with pytest.raises(FencedError):
            old.update_replica(ref(placed), agent_pb2.REPLICA_STATE_RUNNING, 0, "", node="n1")
        assert snapshot(new, "j-1") == before  # nothing of either write
        assert status_of(FencedError("x"))[0] == grpc.StatusCode.UNAVAILABLE
        # The new leader writes as usual.
        assert new.update_replica(ref(placed), agent_pb2.REPLICA_STATE_RUNNING, 0, "",
                                  node="n1") is not None
        assert new.apply([to("j-1", STARTING), to("j-1", RUNNING)], T0 + 2)[-1].state == RUNNING
    finally:
        first.stop()
        second.stop()


def test_unfenced_stores_and_reads_are_not_checked(replicas) -> None:
    dsn, old, new = replicas
    leader = elect(dsn, "a:1")
    try:
        old.set_leader_term(leader.term - 1)  # stale from the start
        submit(new, "j-1")  # unfenced: writes as before
        assert old.get_job("j-1").state == QUEUED  # reads are never fenced
        with pytest.raises(FencedError):
            old.apply([place("j-1")], T0)
        old.set_leader_term(None)
        assert old.apply([place("j-1")], T0)[0].state == SCHEDULED
    finally:
        leader.stop()


def test_sqlite_has_nothing_to_fence(tmp_path) -> None:
    with SqliteStore(tmp_path / "x.db") as store:
        store.set_leader_term(7)
        submit(store, "j-1")
        assert store.apply([place("j-1")], T0)[0].state == SCHEDULED


def test_a_paused_lease_leader_is_fenced_by_the_next_ones_term(replicas) -> None:
    """Kubernetes Lease election, real PostgreSQL terms: a leader paused past
    its Lease (it never noticed) cannot write once the next one is elected."""
    from controlplane.services.leader import raise_leader_term
    from tests.unit.test_leader_lease import Clock, FakeLeases

    dsn, old, new = replicas
    api, clock = FakeLeases(), Clock()

    def elector(name: str):
        from controlplane.services.leader_lease import LeaseElector

        made = LeaseElector(api, "xinhe", "cp", f"{name}_id", f"{name}:1",
                            lambda: raise_leader_term(dsn), lease_s=8, renew_deadline_s=5,
                            retry_s=1, monotonic=clock.monotonic, now=clock.now)
        made._on_elected = made._on_deposed = lambda: None
        return made

    first, second = elector("a"), elector("b")
    first.poll()
    assert first.is_leader()
    old.set_leader_term(first.term)
    submit(old, "j-1")
    [placed] = old.apply([place("j-1", "n1")], T0)
    second.poll()
    clock.t += 9  # "a" is paused: no renewals
    second.poll()
    assert second.is_leader() and first.is_leader()  # "a" has not noticed yet
    assert second.term == first.term + 1
    new.set_leader_term(second.term)
    with pytest.raises(FencedError, match=f"leader term {first.term} is over"):
        old.apply([to("j-1", STARTING, expect_epoch=placed.epoch)], T0 + 1)
    first.poll()  # "a" wakes: the Lease is someone else's
    assert not first.is_leader()
