"""The Store contract, run against every implementation.

Tests use only the ``Store`` interface through the ``open_store`` fixture,
which is parameterised over implementations: the embedded SQLite store and
PostgreSQL (``XINHE_TEST_POSTGRES_DSN``, default the local server on
127.0.0.1:5432). Each PostgreSQL test works in fresh schemas of its own,
dropped afterwards. When PostgreSQL is unreachable its parameters fail under
CI (``CI=true``: ``.ci/run`` starts it) and are skipped, with the reason,
elsewhere.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.model import states
from controlplane.model.states import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SCHEDULED,
    STARTING,
    SUCCEEDED,
    InvalidTransition,
)
from controlplane.store import open_store as open_configured_store
from controlplane.store.base import (
    AuditRecord,
    ConflictError,
    NotFoundError,
    Store,
    StoreError,
    TokenRecord,
    Transition,
)
from controlplane.store.postgres import PostgresStore
from controlplane.store.postgres_schema import SCHEMA_VERSION as PG_SCHEMA_VERSION
from controlplane.store.sqlcommon import prepared_job
from controlplane.store.sqlite import SqliteStore
from xinhe.v1 import agent_pb2, common_pb2

T0 = 1_700_000_000.0
OpenStore = Callable[..., Store]
POSTGRES_DSN = os.environ.get("XINHE_TEST_POSTGRES_DSN",
                              "postgresql://postgres@127.0.0.1:5432/test")


# -- PostgreSQL availability and scratch schemas ---------------------------------
@functools.cache
def _postgres_error() -> str:
    """Why PostgreSQL cannot be used ('' when it can); asked once per run."""
    try:
        with psycopg.connect(POSTGRES_DSN, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc).strip() or type(exc).__name__
    return ""


def require_postgres() -> str:
    """The test DSN when PostgreSQL answers. Otherwise the calling test fails
    under CI (where .ci/run starts PostgreSQL) and is skipped elsewhere."""
    error = _postgres_error()
    if error:
        reason = f"PostgreSQL unreachable at {POSTGRES_DSN}: {error}"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{reason} (required under CI)", pytrace=False)
        pytest.skip(f"{reason}; start it or set XINHE_TEST_POSTGRES_DSN")
    return POSTGRES_DSN


class ScratchSchemas:
    """Schemas named ``xinhe_t_<random>_<name>``, dropped by :meth:`drop_all`."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.prefix = f"xinhe_t_{secrets.token_hex(4)}"
        self.names: set[str] = set()

    def name(self, label: str) -> str:
        schema = f"{self.prefix}_{re.sub(r'[^a-z0-9_]', '_', label.lower())}"
        self.names.add(schema)
        return schema

    def drop_all(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for schema in sorted(self.names):
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# -- fixtures and builders -------------------------------------------------------
IMPLEMENTATIONS = ("sqlite", "postgres")


@pytest.fixture(params=IMPLEMENTATIONS)
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """``open_store(name="main")`` opens (or reopens) the named database of the
    implementation under test; everything opened is closed (and, on
    PostgreSQL, dropped) at teardown."""
    opened: list[Store] = []
    scratch = ScratchSchemas(require_postgres()) if request.param == "postgres" else None

    def open_(name: str = "main") -> Store:
        if scratch is None:
            store: Store = SqliteStore(tmp_path / f"{name}.db")
        else:
            store = PostgresStore(scratch.dsn, schema=scratch.name(name), pool_size=4)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()
    if scratch is not None:
        scratch.drop_all()


@pytest.fixture
def store(open_store: OpenStore) -> Store:
    return open_store()


def job(job_id: str = "j-1", queue: str = "lab-a/default", key: str = "",
        replicas: int = 1) -> common_pb2.Job:
    spec = common_pb2.JobSpec(name=job_id, queue=queue, command=["true"], replicas=replicas)
    return common_pb2.Job(id=job_id, tenant=queue.split("/")[0], client_key=key, spec=spec)


def submit(store: Store, *ids: str, **kwargs: object) -> list[common_pb2.Job]:
    return [store.create_job(job(i, **kwargs), T0)[0] for i in ids]


def placement(*nodes: str) -> common_pb2.Placement:
    return common_pb2.Placement(pool="pool-a", family="nvidia", model="H100", replicas=[
        common_pb2.ReplicaPlacement(rank=rank, node=node, device_indices=[rank])
        for rank, node in enumerate(nodes)])


def place(job_id: str, *nodes: str, **kwargs: object) -> Transition:
    return Transition(job_id=job_id, to_state=SCHEDULED, kind="placed", new_epoch=True,
                      updates=common_pb2.Job(placement=placement(*(nodes or ("n1",)))),
                      **kwargs)


def to(job_id: str, state: int, **kwargs: object) -> Transition:
    return Transition(job_id=job_id, to_state=state, kind=states.state_name(state).lower(),
                      **kwargs)


def ref(job: common_pb2.Job, rank: int = 0, epoch: int | None = None) -> agent_pb2.ReplicaRef:
    return agent_pb2.ReplicaRef(job_id=job.id, attempt=job.attempt, rank=rank,
                                epoch=job.epoch if epoch is None else epoch)


def snapshot(store: Store, job_id: str) -> tuple:
    """Everything the store holds about a job, to check 'nothing changed'."""
    return (store.get_job(job_id), store.events(job_id), store.replicas(job_id))


# -- jobs ------------------------------------------------------------------------
def test_create_and_get(store: Store) -> None:
    stored, created = store.create_job(job("j-1"), T0 + 0.25)
    assert created
    assert stored.state == QUEUED and stored.attempt == 1
    assert stored.created_at.seconds == int(T0) and stored.created_at.nanos == 250_000_000
    assert store.get_job("j-1") == stored
    assert store.get_job("missing") is None
    [event] = store.events("j-1")
    assert (event.kind, event.from_state, event.to_state) == ("submitted", 0, QUEUED)


def test_create_derives_tenant_from_queue(store: Store) -> None:
    bare = job("j-1")
    bare.ClearField("tenant")
    assert store.create_job(bare, T0)[0].tenant == "lab-a"


def test_client_key_is_idempotent_per_tenant(store: Store) -> None:
    first, created = store.create_job(job("j-1", key="run-42"), T0)
    again, created_again = store.create_job(job("j-2", key="run-42"), T0 + 1)
    other, created_other = store.create_job(job("j-3", queue="lab-b/default", key="run-42"), T0)
    assert (created, created_again, created_other) == (True, False, True)
    assert again == first and store.get_job("j-2") is None
    assert other.id == "j-3"
    assert store.find_job_by_key("lab-a", "run-42") == first
    assert store.find_job_by_key("lab-b", "run-42") == other
    assert store.find_job_by_key("lab-a", "nope") is None
    assert len(store.events("j-1")) == 1


def test_jobs_without_key_are_never_deduplicated(store: Store) -> None:
    submit(store, "j-1", "j-2")
    assert store.count_jobs_by_state() == {QUEUED: 2}


def test_duplicate_id_conflicts(store: Store) -> None:
    submit(store, "j-1")
    with pytest.raises(ConflictError):
        store.create_job(job("j-1"), T0)


def test_create_jobs_is_one_batch_with_keys_resolved_in_order(store: Store) -> None:
    submit(store, "j-0", key="old")
    results = store.create_jobs([job("j-1", key="a"), job("j-2"), job("j-3", key="a"),
                                 job("j-4", key="old"), job("j-5", queue="lab-b/x", key="a")],
                                T0 + 2)
    assert [(j.id, created) for j, created in results] == [
        ("j-1", True), ("j-2", True), ("j-1", False), ("j-0", False), ("j-5", True)]
    assert results[0][0] == store.get_job("j-1") and store.get_job("j-3") is None
    assert results[1][0].created_at.seconds == int(T0 + 2)
    assert [e.kind for e in store.events("j-2")] == ["submitted"]
    assert store.count_jobs_by_state() == {QUEUED: 4}
    assert store.create_jobs([], T0) == []


def test_create_jobs_is_all_or_nothing(store: Store) -> None:
    submit(store, "j-1")
    with pytest.raises(ConflictError):
        store.create_jobs([job("j-2"), job("j-1")], T0)
    assert store.get_job("j-2") is None and store.events("j-2") == []


def test_list_pages_newest_first(store: Store) -> None:
    submit(store, *(f"j-{i}" for i in range(7)))
    pages, cursor = [], None
    while True:
        page, cursor = store.list_jobs(limit=3, before_seq=cursor)
        pages.append([j.id for j in page])
        if cursor is None:
            break
    assert pages == [["j-6", "j-5", "j-4"], ["j-3", "j-2", "j-1"], ["j-0"]]
    assert store.list_jobs(limit=7) == (store.list_jobs(limit=100)[0], None)


def test_list_filters(store: Store) -> None:
    submit(store, "a-1", "a-2")
    submit(store, "b-1", queue="lab-b/default")
    submit(store, "b-2", queue="lab-b/urgent")
    store.apply([place("a-1")], T0)

    def ids(**filters: object) -> list[str]:
        return [j.id for j in store.list_jobs(**filters)[0]]

    assert ids(tenant="lab-b") == ["b-2", "b-1"]
    assert ids(queue="lab-b/urgent") == ["b-2"]
    assert ids(states=[SCHEDULED]) == ["a-1"]
    assert ids(states=[QUEUED], tenant="lab-a") == ["a-2"]
    assert ids(states=[QUEUED, SCHEDULED], queue="lab-a/default") == ["a-2", "a-1"]
    assert ids(tenant="nobody") == []


def test_jobs_in_states_oldest_first_and_counts(store: Store) -> None:
    submit(store, "j-1", "j-2", "j-3")
    store.apply([place("j-2"), to("j-3", CANCELLED)], T0)
    assert [j.id for j in store.jobs_in_states([QUEUED, SCHEDULED])] == ["j-1", "j-2"]
    assert store.jobs_in_states([]) == []
    assert store.count_jobs_by_state() == {QUEUED: 1, SCHEDULED: 1, CANCELLED: 1}


# -- transitions -----------------------------------------------------------------
def test_apply_moves_the_job_and_records_the_event(store: Store) -> None:
    submit(store, "j-1")
    [placed] = store.apply([place("j-1", "n1", "n2", message="on pool-a")], T0 + 1)
    assert placed.state == SCHEDULED and placed.epoch > 0
    assert placed.placement == placement("n1", "n2")
    assert placed.scheduled_at.seconds == int(T0 + 1)
    assert store.get_job("j-1") == placed
    event = store.events("j-1")[-1]
    assert (event.from_state, event.to_state, event.kind, event.message) == (
        QUEUED, SCHEDULED, "placed", "on pool-a")


def test_timestamps_follow_the_lifecycle(store: Store) -> None:
    submit(store, "j-1")
    store.apply([place("j-1"), to("j-1", STARTING)], T0 + 1)
    running = store.apply([to("j-1", RUNNING)], T0 + 2)[0]
    done = store.apply([to("j-1", SUCCEEDED)], T0 + 3)[0]
    assert running.started_at.seconds == int(T0 + 2)
    assert not running.HasField("finished_at")
    assert (done.scheduled_at.seconds, done.finished_at.seconds) == (int(T0 + 1), int(T0 + 3))


def test_guards_conflict_and_change_nothing(store: Store) -> None:
    submit(store, "j-1")
    [placed] = store.apply([place("j-1")], T0)
    before = snapshot(store, "j-1")
    with pytest.raises(ConflictError):
        store.apply([to("j-1", RUNNING, expect_states=frozenset({STARTING}))], T0)
    with pytest.raises(ConflictError):
        store.apply([to("j-1", RUNNING, expect_epoch=placed.epoch + 1)], T0)
    assert snapshot(store, "j-1") == before
    store.apply([to("j-1", RUNNING, expect_states=frozenset({SCHEDULED}),
                    expect_epoch=placed.epoch)], T0)
    assert store.get_job("j-1").state == RUNNING


def test_invalid_transition_is_refused_and_nothing_written(store: Store) -> None:
    submit(store, "j-1")
    before = snapshot(store, "j-1")
    with pytest.raises(InvalidTransition, match="QUEUED -> RUNNING"):
        store.apply([to("j-1", RUNNING)], T0)
    assert snapshot(store, "j-1") == before
    with pytest.raises(NotFoundError):
        store.apply([to("missing", SCHEDULED)], T0)


def test_a_batch_is_all_or_nothing(store: Store) -> None:
    submit(store, "j-1", "j-2")
    before = [snapshot(store, "j-1"), snapshot(store, "j-2")]
    with pytest.raises(InvalidTransition):
        store.apply([place("j-1"), place("j-2"), to("j-2", SUCCEEDED)], T0)
    with pytest.raises(ConflictError):
        store.apply([place("j-1"), place("j-2", expect_states=frozenset({RUNNING}))], T0)
    assert [snapshot(store, "j-1"), snapshot(store, "j-2")] == before
    # The rolled-back epochs were not consumed either.
    first, second = store.apply([place("j-1"), place("j-2")], T0)
    assert (first.epoch, second.epoch) == (1, 2)


def test_one_batch_may_move_a_job_several_times(store: Store) -> None:
    submit(store, "j-1")
    chain = store.apply([place("j-1"), to("j-1", STARTING), to("j-1", SUCCEEDED)], T0)
    assert [j.state for j in chain] == [SCHEDULED, STARTING, SUCCEEDED]
    assert [e.to_state for e in store.events("j-1")] == [QUEUED, SCHEDULED, STARTING, SUCCEEDED]


def test_epochs_strictly_increase(store: Store) -> None:
    submit(store, "j-1", "j-2", "j-3")
    epochs = [j.epoch for j in store.apply([place("j-1"), place("j-2")], T0)]
    epochs.append(store.apply([to("j-1", QUEUED, new_epoch=True, increment_attempt=True)],
                              T0)[0].epoch)
    epochs += [j.epoch for j in store.apply([place("j-3"), place("j-1")], T0)]
    assert epochs == sorted(set(epochs)) and epochs[0] >= 1


def test_updates_replace_fields_and_clear_placement(store: Store) -> None:
    submit(store, "j-1")
    store.apply([place("j-1", "n1", "n2")], T0)
    requeued = store.apply([to("j-1", QUEUED, clear_placement=True, increment_attempt=True,
                               updates=common_pb2.Job(state_reason="node lost"))], T0)[0]
    assert not requeued.HasField("placement")
    assert (requeued.state_reason, requeued.attempt) == ("node lost", 2)
    replaced = store.apply([place("j-1", "n3")], T0)[0]
    assert [r.node for r in replaced.placement.replicas] == ["n3"]
    assert replaced.state_reason == "node lost"
    failed = store.apply([to("j-1", FAILED, updates=common_pb2.Job(exit_code=3))], T0)[0]
    assert failed.exit_code == 3 and store.get_job("j-1") == failed


@pytest.mark.parametrize("owned", [common_pb2.Job(id="other"), common_pb2.Job(epoch=99),
                                   common_pb2.Job(state=RUNNING), common_pb2.Job(attempt=5)])
def test_updates_may_not_set_store_owned_fields(store: Store, owned: common_pb2.Job) -> None:
    submit(store, "j-1")
    before = snapshot(store, "j-1")
    with pytest.raises(ValueError):
        store.apply([to("j-1", SCHEDULED, updates=owned)], T0)
    assert snapshot(store, "j-1") == before


# -- replicas --------------------------------------------------------------------
def test_entering_scheduled_creates_replica_rows(store: Store) -> None:
    submit(store, "j-1", replicas=2)
    [placed] = store.apply([place("j-1", "n1", "n2")], T0)
    rows = store.replicas("j-1")
    assert [(r.rank, r.node, r.attempt, r.epoch, r.state) for r in rows] == [
        (0, "n1", 1, placed.epoch, 0), (1, "n2", 1, placed.epoch, 0)]
    store.apply([to("j-1", QUEUED, clear_placement=True, increment_attempt=True)], T0)
    [again] = store.apply([place("j-1", "n3", "n3")], T0)
    assert [(r.attempt, r.node) for r in store.replicas("j-1", attempt=2)] == [(2, "n3")] * 2
    assert all(r.epoch == again.epoch for r in store.replicas("j-1", attempt=2))
    assert [r.attempt for r in store.replicas("j-1")] == [1, 1, 2, 2]


def test_update_replica_matches_the_epoch(store: Store) -> None:
    submit(store, "j-1")
    [placed] = store.apply([place("j-1")], T0)
    stale = store.update_replica(ref(placed, epoch=placed.epoch - 1),
                                 agent_pb2.REPLICA_STATE_RUNNING, 0, "")
    assert stale is None
    assert store.update_replica(ref(placed, rank=5), agent_pb2.REPLICA_STATE_RUNNING, 0, "") is None
    assert store.replicas("j-1")[0].state == agent_pb2.REPLICA_STATE_UNSPECIFIED
    row = store.update_replica(ref(placed), agent_pb2.REPLICA_STATE_FAILED, 137, "killed")
    assert (row.state, row.exit_code, row.message) == (agent_pb2.REPLICA_STATE_FAILED, 137,
                                                       "killed")
    assert store.replicas("j-1") == [row]


def test_replicas_on_node(store: Store) -> None:
    submit(store, "live", "done", "moved")
    store.apply([place("live", "n1"), place("done", "n1"), place("moved", "n1")], T0)
    store.apply([to("done", CANCELLED),
                 to("moved", QUEUED, clear_placement=True, increment_attempt=True)], T0)
    store.apply([place("moved", "n2")], T0)
    assert [r.job_id for r in store.replicas_on_node("n1")] == ["live"]
    assert sorted(r.job_id for r in store.replicas_on_node("n1", active_only=False)) == [
        "done", "live", "moved"]
    assert [(r.job_id, r.attempt) for r in store.replicas_on_node("n2")] == [("moved", 2)]
    assert store.replicas_on_node("n9") == []


# -- events and logs -------------------------------------------------------------
def test_events_order_cursor_and_informational(store: Store) -> None:
    submit(store, "j-1", "j-2")
    store.apply([place("j-1"), place("j-2"), to("j-1", STARTING)], T0)
    note = store.add_event("j-1", "checkpoint", "saved step 100", T0 + 5)
    assert (note.from_state, note.to_state, note.kind) == (STARTING, STARTING, "checkpoint")
    events = store.events("j-1")
    assert [e.kind for e in events] == ["submitted", "placed", "starting", "checkpoint"]
    seqs = [e.sequence for e in events]
    assert seqs == sorted(set(seqs)) and events[-1] == note
    assert store.events("j-1", after_seq=seqs[1]) == events[2:]
    assert store.events("j-1", limit=2) == events[:2]
    assert all(e.job_id == "j-2" for e in store.events("j-2"))
    with pytest.raises(NotFoundError):
        store.add_event("missing", "x", "", T0)


def test_logs_order_rank_and_cursor(store: Store) -> None:
    submit(store, "j-1")

    def chunk(rank: int, text: str) -> common_pb2.LogChunk:
        return common_pb2.LogChunk(job_id="j-1", attempt=1, rank=rank, data=text.encode(),
                                   stream=common_pb2.LOG_STREAM_STDOUT)

    store.append_logs([chunk(0, "a"), chunk(1, "b"), chunk(0, "c")], T0)
    store.append_logs([chunk(1, "d")], T0 + 1)
    logs = store.logs("j-1")
    assert [c.data for c in logs] == [b"a", b"b", b"c", b"d"]
    assert [c.sequence for c in logs] == sorted({c.sequence for c in logs})
    assert [c.data for c in store.logs("j-1", rank=1)] == [b"b", b"d"]
    assert [c.data for c in store.logs("j-1", after_seq=logs[1].sequence)] == [b"c", b"d"]
    assert [c.data for c in store.logs("j-1", limit=1)] == [b"a"]
    assert logs[3].time.seconds == int(T0 + 1) and logs[3].stream == 1
    assert store.logs("other") == []


# -- nodes -----------------------------------------------------------------------
def test_upsert_preserves_cordon(store: Store) -> None:
    store.upsert_node(common_pb2.Node(name="n1", pool="a", cpu_millis=1000))
    cordoned = store.set_cordon("n1", True, "disk failing")
    assert (cordoned.cordoned, cordoned.cordon_reason, cordoned.pool) == (True, "disk failing",
                                                                           "a")
    store.upsert_node(common_pb2.Node(name="n1", pool="b", cordoned=False))
    node = store.get_node("n1")
    assert (node.pool, node.cordoned, node.cordon_reason) == ("b", True, "disk failing")
    assert not store.set_cordon("n1", False, "").cordoned
    store.upsert_node(common_pb2.Node(name="n0"))
    assert [n.name for n in store.list_nodes()] == ["n0", "n1"]
    assert store.get_node("nx") is None


def test_set_cordon_unknown_node(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.set_cordon("ghost", True, "x")


# -- tokens and audit ------------------------------------------------------------
def token(token_id: str, kind: str = "tenant", tenant: str = "lab-a") -> TokenRecord:
    return TokenRecord(id=token_id, kind=kind, tenant=tenant, description=f"{token_id} desc",
                       created_at=T0 + int(token_id[-1]))


def test_tokens_are_found_by_hash_listed_and_revoked(store: Store) -> None:
    assert not store.tokens_exist()
    first = store.create_token(token("t-1"), "a" * 64)
    store.create_token(token("t-2", kind="admin", tenant=""), "b" * 64)
    assert store.tokens_exist()
    assert store.find_token("a" * 64) == first and store.find_token("c" * 64) is None
    assert [t.id for t in store.list_tokens()] == ["t-1", "t-2"]
    revoked = store.revoke_token("t-1", T0 + 5)
    assert revoked.revoked_at == T0 + 5 and store.find_token("a" * 64) == revoked
    assert store.revoke_token("t-1", T0 + 9).revoked_at == T0 + 5  # first revoke wins
    assert store.tokens_exist()  # revoked tokens still count: the server stays closed
    with pytest.raises(NotFoundError):
        store.revoke_token("t-9", T0)
    with pytest.raises(ConflictError):
        store.create_token(token("t-3"), "a" * 64)
    with pytest.raises(ConflictError):
        store.create_token(token("t-1"), "d" * 64)


def test_audit_is_append_only_in_order(store: Store) -> None:
    records = [store.append_audit(AuditRecord(0, T0 + i, "anonymous", f"action-{i}", "x",
                                              "denied", "no token")) for i in range(3)]
    assert [r.action for r in store.audit_events()] == ["action-0", "action-1", "action-2"]
    assert store.audit_events() == records and records[0].seq < records[1].seq
    assert store.audit_events(after_seq=records[0].seq, limit=1) == [records[1]]


# -- durability and concurrency --------------------------------------------------
def test_data_survives_close_and_reopen(open_store: OpenStore) -> None:
    store = open_store()
    submit(store, "j-1")
    submit(store, "j-2", key="k")
    [placed] = store.apply([place("j-1")], T0)
    store.upsert_node(common_pb2.Node(name="n1"))
    store.set_cordon("n1", True, "maintenance")
    store.append_logs([common_pb2.LogChunk(job_id="j-1", data=b"x")], T0)
    before = (store.get_job("j-1"), store.events("j-1"), store.replicas("j-1"),
              store.get_node("n1"), store.logs("j-1"))
    store.close()
    with pytest.raises(StoreError):
        store.get_job("j-1")
    reopened = open_store()
    assert (reopened.get_job("j-1"), reopened.events("j-1"), reopened.replicas("j-1"),
            reopened.get_node("n1"), reopened.logs("j-1")) == before
    assert reopened.create_job(job("j-3", key="k"), T0)[0].id == "j-2"
    submit(reopened, "j-4")
    assert reopened.apply([place("j-4")], T0)[0].epoch > placed.epoch


def test_concurrent_submissions_lose_and_duplicate_nothing(store: Store) -> None:
    threads, per_thread = 8, 50
    created: list[bool] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        for i in range(per_thread):
            _, unique = store.create_job(job(f"t{t}-{i}"), T0)
            # Every thread also submits the same keyed jobs: one of each wins.
            _, keyed = store.create_job(job(f"t{t}-k{i}", key=f"key-{i}"), T0)
            with lock:
                created.extend([unique, keyed])

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert sum(created) == threads * per_thread + per_thread
    jobs = store.jobs_in_states([QUEUED])
    assert len(jobs) == len({j.id for j in jobs}) == threads * per_thread + per_thread
    assert len({j.client_key for j in jobs if j.client_key}) == per_thread


def test_a_follower_misses_no_log_chunk_under_concurrent_appends(store: Store) -> None:
    """Readers follow logs with ``after_seq``: a chunk whose sequence is drawn
    before another's must never become visible after it."""
    submit(store, "j-1")
    writers, batches = 4, 25

    def write(rank: int) -> None:
        for i in range(batches):
            store.append_logs([common_pb2.LogChunk(job_id="j-1", attempt=1, rank=rank,
                                                   data=f"{rank}:{i}".encode())], T0)

    pool = [threading.Thread(target=write, args=(r,)) for r in range(writers)]
    for thread in pool:
        thread.start()
    seen, cursor = [], 0

    def follow() -> None:
        nonlocal cursor
        for chunk in store.logs("j-1", after_seq=cursor):
            seen.append(chunk.data)
            cursor = chunk.sequence

    while any(thread.is_alive() for thread in pool):
        follow()
    follow()  # after the last writer finished
    assert sorted(seen) == sorted(c.data for c in store.logs("j-1")) and len(seen) == 100


# -- the state machine, exercised at random -----------------------------------------
_db_names = itertools.count()
ALL_STATES = sorted(states.ALL_STATES)
steps = st.lists(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(ALL_STATES),
                                    st.booleans()), min_size=1, max_size=3),
                 max_size=25)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=steps)
def test_random_transitions_keep_store_and_log_consistent(open_store: OpenStore,
                                                          batches: list) -> None:
    """Whatever is attempted, each job's stored state is its last successful
    transition and its event log holds each successful transition once."""
    store = open_store(f"random-{next(_db_names)}")
    try:
        _run_random_batches(store, batches)
    finally:
        store.close()  # examples share one fixture: do not hold 60 pools open


def _run_random_batches(store: Store, batches: list) -> None:
    ids = ["j-0", "j-1", "j-2"]
    submit(store, *ids)
    model = {i: [QUEUED] for i in ids}  # per job: the states it went through
    for batch in batches:
        trial = {i: list(h) for i, h in model.items()}
        valid = True
        for index, target, _ in batch:
            history = trial[ids[index]]
            valid = valid and states.can_transition(history[-1], target)
            history.append(target)
        transitions = [to(ids[i], target, new_epoch=new_epoch) for i, target, new_epoch in batch]
        if valid:
            store.apply(transitions, T0)
            model = trial
        else:
            with pytest.raises(InvalidTransition):
                store.apply(transitions, T0)
    for job_id, history in model.items():
        assert store.get_job(job_id).state == history[-1]
        assert [e.to_state for e in store.events(job_id)] == history
    epochs = [store.get_job(i).epoch for i in ids]
    assert len({e for e in epochs if e}) == len([e for e in epochs if e])


# -- SQLite specifics ------------------------------------------------------------
def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    SqliteStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 999")
    with pytest.raises(StoreError, match="newer"):
        SqliteStore(path)


def test_sqlite_is_durable_by_configuration(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "x.db")
    try:
        with sqlite3.connect(tmp_path / "x.db") as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        store.close()


def test_sqlite_reads_do_not_wait_for_a_write_in_progress(tmp_path: Path) -> None:
    """Reads use their own connection: a read during a long write returns at
    once with the last committed state (and never the uncommitted one)."""
    store = SqliteStore(tmp_path / "x.db")
    inside, finish = threading.Event(), threading.Event()

    def long_write() -> None:
        with store._tx() as conn:
            store._insert_job(conn, prepared_job(job("j-2"), T0), T0)
            inside.set()
            assert finish.wait(30)

    try:
        submit(store, "j-1")
        writer = threading.Thread(target=long_write)
        writer.start()
        assert inside.wait(30)
        seen: list[object] = []
        reader = threading.Thread(target=lambda: seen.extend(
            [store.get_job("j-1"), store.get_job("j-2")]))
        reader.start()
        reader.join(10)  # with one shared lock it would wait for the writer
        assert len(seen) == 2 and seen[0] is not None and seen[1] is None
        finish.set()
        writer.join(30)
        assert store.get_job("j-2") is not None  # committed: visible at once
    finally:
        finish.set()
        store.close()


def test_sqlite_unopenable_path(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        SqliteStore(tmp_path / "missing-dir" / "x.db")


# -- PostgreSQL specifics --------------------------------------------------------
@pytest.fixture
def scratch() -> Iterator[ScratchSchemas]:
    schemas = ScratchSchemas(require_postgres())
    yield schemas
    schemas.drop_all()


def _applied_versions(dsn: str, schema: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(f"SELECT version FROM {schema}.schema_migrations"
                            " ORDER BY version").fetchall()
    return [version for (version,) in rows]


def test_postgres_migrations_run_once_even_when_servers_start_together(
        scratch: ScratchSchemas) -> None:
    schema = scratch.name("race")
    stores: list[Store] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            stores.append(PostgresStore(scratch.dsn, schema=schema, pool_size=1))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == [] and len(stores) == 4
        assert _applied_versions(scratch.dsn, schema) == list(range(1, PG_SCHEMA_VERSION + 1))
        assert stores[0].create_job(job("j-1"), T0)[1] and stores[3].get_job("j-1") is not None
    finally:
        for store in stores:
            store.close()


def test_postgres_refuses_a_newer_schema(scratch: ScratchSchemas) -> None:
    schema = scratch.name("newer")
    PostgresStore(scratch.dsn, schema=schema).close()
    with psycopg.connect(scratch.dsn) as conn:
        conn.execute(f"INSERT INTO {schema}.schema_migrations (version) VALUES (999)")
    with pytest.raises(StoreError, match="newer"):
        PostgresStore(scratch.dsn, schema=schema)


def test_postgres_keyed_submissions_from_two_servers_create_one_job(
        scratch: ScratchSchemas) -> None:
    """Two stores (two servers' pools) race on the same client keys."""
    schema = scratch.name("two")
    first, second = (PostgresStore(scratch.dsn, schema=schema, pool_size=4) for _ in range(2))
    results: list[tuple[str, bool]] = []
    lock = threading.Lock()

    def submit_keys(store: Store, tag: str) -> None:
        for i in range(40):
            stored, created = store.create_job(job(f"{tag}-{i}", key=f"k{i}"), T0)
            with lock:
                results.append((stored.id, created))

    try:
        threads = [threading.Thread(target=submit_keys, args=(store, f"{name}{t}"))
                   for t in range(3) for name, store in (("a", first), ("b", second))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(created for _, created in results) == 40
        assert len({job_id for job_id, _ in results}) == 40
        assert first.count_jobs_by_state() == {QUEUED: 40}
    finally:
        first.close()
        second.close()


def test_postgres_unreachable_or_misnamed_fails_clearly() -> None:
    with pytest.raises(StoreError, match="cannot open PostgreSQL store"):
        PostgresStore("postgresql://postgres@127.0.0.1:1/test", connect_timeout=2)
    with pytest.raises(ValueError, match="invalid schema name"):
        PostgresStore(POSTGRES_DSN, schema="Robert'); DROP TABLE jobs;--")


# -- choosing the store ----------------------------------------------------------
class _Settings:
    def __init__(self, data_dir: Path, store_dsn: str = "") -> None:
        self.data_dir, self.store_dsn = data_dir, store_dsn


def test_open_store_defaults_to_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    store = open_configured_store(_Settings(tmp_path / "new-dir"))
    try:
        assert isinstance(store, SqliteStore)
        assert Path(store.path) == tmp_path / "new-dir" / "xinhe.db"
    finally:
        store.close()
    sqlite_dsn = open_configured_store(f"sqlite://{tmp_path / 'other.db'}")
    sqlite_dsn.close()
    assert (tmp_path / "other.db").exists()


def test_open_store_uses_postgres_for_a_postgres_dsn(tmp_path: Path,
                                                    scratch: ScratchSchemas) -> None:
    # A scratch schema through libpq options: the shared default schema may
    # hold another checkout's (newer) migrations on a developer machine.
    schema = scratch.name("open")
    with psycopg.connect(scratch.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in scratch.dsn else "?"
    dsn = f"{scratch.dsn}{separator}options=-csearch_path%3D{schema}"
    store = open_configured_store(_Settings(tmp_path, dsn))
    try:
        assert isinstance(store, PostgresStore)
        assert store.count_jobs_by_state() is not None
    finally:
        store.close()


def test_open_store_refuses_other_dsns_without_leaking_passwords(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"mysql://admin:\*\*\*@db/x") as info:
        open_configured_store(_Settings(tmp_path, "mysql://admin:hunter2@db/x"))
    assert "hunter2" not in str(info.value)


# -- agent tokens bound to a node (migration 5) ------------------------------------
def test_agent_tokens_keep_their_node_binding(store: Store) -> None:
    bound = TokenRecord(id="t-1", kind="agent", tenant="", description="", created_at=T0,
                        node="gpu-17")
    store.create_token(bound, "a" * 64)
    store.create_token(token("t-2", kind="agent", tenant=""), "b" * 64)
    assert store.find_token("a" * 64) == bound
    assert store.find_token("b" * 64).node == ""
    assert [t.node for t in store.list_tokens()] == ["gpu-17", ""]
    assert store.revoke_token("t-1", T0 + 1).node == "gpu-17"


def test_a_report_on_another_nodes_replica_changes_nothing(store: Store) -> None:
    submit(store, "j-1", replicas=2)
    [placed] = store.apply([place("j-1", "n1", "n2")], T0)
    before = snapshot(store, "j-1")
    assert store.update_replica(ref(placed, rank=1), agent_pb2.REPLICA_STATE_SUCCEEDED, 0, "",
                                node="n1") is None
    assert snapshot(store, "j-1") == before
    row = store.update_replica(ref(placed, rank=1), agent_pb2.REPLICA_STATE_RUNNING, 0, "",
                               node="n2")
    assert (row.node, row.state) == ("n2", agent_pb2.REPLICA_STATE_RUNNING)


def _version_4_token_row(conn: sqlite3.Connection | psycopg.Connection, param: str) -> None:
    conn.execute("INSERT INTO tokens (id, kind, tenant, token_hash, description, created_at)"
                 f" VALUES ({', '.join([param] * 6)})",
                 ("t-old", "agent", "", "c" * 64, "before migration 5", T0))


def test_sqlite_migration_5_keeps_older_tokens_unbound(tmp_path: Path) -> None:
    from controlplane.store.sqlite_schema import MIGRATIONS

    path = tmp_path / "v4.db"
    with sqlite3.connect(path) as conn:
        for statement in itertools.chain.from_iterable(MIGRATIONS[:4]):
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 4")
        _version_4_token_row(conn, "?")
    with SqliteStore(path) as store:
        old = store.find_token("c" * 64)
        assert (old.id, old.kind, old.node) == ("t-old", "agent", "")


def test_postgres_migration_5_keeps_older_tokens_unbound(scratch: ScratchSchemas) -> None:
    from controlplane.store.postgres_schema import MIGRATIONS

    schema = scratch.name("v4")
    with psycopg.connect(scratch.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"SET search_path TO {schema}")
        conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
                     " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        for version, statements in enumerate(MIGRATIONS[:4], start=1):
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
        _version_4_token_row(conn, "%s")
    with PostgresStore(scratch.dsn, schema=schema, pool_size=1) as store:
        old = store.find_token("c" * 64)
        assert (old.id, old.kind, old.node) == ("t-old", "agent", "")
    assert _applied_versions(scratch.dsn, schema)[:5] == [1, 2, 3, 4, 5]
