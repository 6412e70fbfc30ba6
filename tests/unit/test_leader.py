"""Leader election: which elector each setting gives, the PostgreSQL advisory
lock elector stepped by hand on a real database (no threads), and
how clients and agents pick the next address."""

from __future__ import annotations

import time

import grpc
import psycopg
import pytest

from agents.agent import _next_server
from controlplane.client import parse_targets
from controlplane.services.leader import (
    LEADER_METADATA,
    AlwaysLeader,
    PostgresElector,
    make_elector,
)
from controlplane.store.postgres import PostgresStore
from tests.unit.test_store import ScratchSchemas, require_postgres

PG = "postgresql://xinhe@db:5432/xinhe"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def elected(self) -> None:
        self.calls.append("elected")

    def deposed(self) -> None:
        self.calls.append("deposed")


@pytest.mark.parametrize(("mode", "dsn", "kind"), [
    ("auto", "", AlwaysLeader),
    ("auto", "sqlite:///tmp/x.db", AlwaysLeader),
    ("auto", PG, PostgresElector),
    ("postgres", PG, PostgresElector),
    ("none", PG, AlwaysLeader),
])
def test_make_elector_picks_by_mode_and_store(mode: str, dsn: str, kind: type) -> None:
    assert isinstance(make_elector(mode, dsn, "10.0.0.1:50051"), kind)


@pytest.mark.parametrize(("mode", "dsn", "message"), [
    ("raft", PG, "unknown leader election 'raft'"),
    ("kubernetes", "", "needs a postgresql://"),
    ("postgres", "", "needs a postgresql://"),
])
def test_make_elector_refuses_what_it_cannot_do(mode: str, dsn: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_elector(mode, dsn, "10.0.0.1:50051")


def test_always_leader_leads_while_started() -> None:
    elector, seen = AlwaysLeader("h:1"), Recorder()
    assert not elector.is_leader() and elector.leader_address() == ""
    elector.start(seen.elected, seen.deposed)
    assert elector.is_leader() and elector.leader_address() == "h:1"
    elector.stop()
    elector.stop()
    assert seen.calls == ["elected", "deposed"] and not elector.is_leader()


def test_parse_targets_keeps_order_and_drops_blanks_and_repeats() -> None:
    assert parse_targets(" a:1, b:2,,a:1 ") == ["a:1", "b:2"]
    with pytest.raises(ValueError, match="no server address"):
        parse_targets(" , ")


class Refusal(grpc.RpcError):
    """A real-format refusal: status code plus trailing metadata."""

    def __init__(self, code: grpc.StatusCode, leader: str = "") -> None:
        self._code = code
        self._trailing = ((LEADER_METADATA, leader),) if leader else ()

    def code(self) -> grpc.StatusCode:
        return self._code

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailing


@pytest.mark.parametrize(("err", "current", "expected"), [
    (Refusal(grpc.StatusCode.UNAVAILABLE, "c:3"), "a:1", ("c:3", True)),  # hint wins
    (Refusal(grpc.StatusCode.UNAVAILABLE, "a:1"), "a:1", ("b:2", False)),  # names itself
    (Refusal(grpc.StatusCode.UNAVAILABLE), "b:2", ("a:1", False)),  # wraps around
    (Refusal(grpc.StatusCode.PERMISSION_DENIED, "c:3"), "a:1", ("b:2", False)),
    (Refusal(grpc.StatusCode.UNAVAILABLE), "c:3", ("a:1", False)),  # off-list: restart
])
def test_agent_moves_to_the_hinted_leader_or_the_next_address(
        err: Refusal, current: str, expected: tuple[str, bool]) -> None:
    assert _next_server(err, current, ["a:1", "b:2"]) == expected


@pytest.fixture
def schema_dsns():
    """Two DSNs on fresh migrated schemas of the test PostgreSQL."""
    scratch = ScratchSchemas(require_postgres())
    separator = "&" if "?" in scratch.dsn else "?"
    dsns = []
    for label in ("one", "two"):
        schema = scratch.name(label)
        PostgresStore(scratch.dsn, schema=schema, pool_size=1).close()  # migrates
        dsns.append(f"{scratch.dsn}{separator}options=-csearch_path%3D{schema}")
    yield scratch.dsn, dsns
    scratch.drop_all()


def _backend_pid(elector: PostgresElector) -> int:
    assert elector._conn is not None
    return elector._conn.info.backend_pid


def test_postgres_elector_one_leader_then_failover(schema_dsns) -> None:
    admin_dsn, (dsn, _) = schema_dsns
    first, second = PostgresElector(dsn, "a:1"), PostgresElector(dsn, "b:2")
    seen_first, seen_second = Recorder(), Recorder()
    first._on_elected, first._on_deposed = seen_first.elected, seen_first.deposed
    second._on_elected, second._on_deposed = seen_second.elected, seen_second.deposed
    try:
        first.poll()
        second.poll()
        assert first.is_leader() and not second.is_leader()
        assert second.leader_address() == "a:1"  # read from the leader table
        first.poll()
        second.poll()
        assert seen_first.calls == ["elected"] and seen_second.calls == []

        # The leader's database session dies (crash, network cut): it steps
        # down at its next poll, and the lock is free for the follower.
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (_backend_pid(first),))
        first.poll()
        assert not first.is_leader() and seen_first.calls == ["elected", "deposed"]
        # The lock is free once the terminated backend has exited (a moment
        # after pg_terminate_backend returns): the follower's next polls.
        deadline = time.monotonic() + 5
        second.poll()
        while not second.is_leader() and time.monotonic() < deadline:
            time.sleep(0.05)
            second.poll()
        assert second.is_leader() and seen_second.calls == ["elected"]
        first.poll()  # reconnects as a follower
        assert not first.is_leader() and first.leader_address() == "b:2"
    finally:
        first.stop()
        second.stop()


def test_postgres_elector_stop_hands_over_at_once(schema_dsns) -> None:
    _, (dsn, _) = schema_dsns
    first, second = PostgresElector(dsn, "a:1"), PostgresElector(dsn, "b:2")
    seen = Recorder()
    first._on_deposed = seen.deposed
    try:
        first.poll()
        assert first.is_leader()
        first.stop()  # graceful: releases the lock without waiting on timeouts
        assert seen.calls == ["deposed"]
        second.poll()
        assert second.is_leader()
    finally:
        second.stop()


def test_postgres_electors_of_separate_schemas_do_not_collide(schema_dsns) -> None:
    _, (dsn_one, dsn_two) = schema_dsns
    one, two = PostgresElector(dsn_one, "a:1"), PostgresElector(dsn_two, "b:2")
    try:
        one.poll()
        two.poll()
        assert one.is_leader() and two.is_leader()
    finally:
        one.stop()
        two.stop()


def test_postgres_elector_without_database_follows_and_reports() -> None:
    elector = PostgresElector("postgresql://xinhe@127.0.0.1:1/none", "a:1",
                              connect_timeout=1)
    seen = Recorder()
    elector._on_elected = seen.elected
    elector.poll()  # connection refused: no leadership, no exception
    assert not elector.is_leader() and seen.calls == []
    with pytest.raises(ValueError, match="poll_s must be positive"):
        PostgresElector(PG, "a:1", poll_s=0)
