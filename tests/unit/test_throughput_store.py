"""Learned throughput survives restarts: the store table (both stores, PostgreSQL
in scratch schemas), batched writes, loading on start and on election, and the
bounded per-job progress map."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controlplane.model.catalogue import default_catalogue
from controlplane.scheduler.host import InlineHost
from controlplane.services.controller import Controller
from controlplane.services.throughput import ThroughputTable
from controlplane.services.throughput_persist import ThroughputPersistence
from controlplane.settings import ServerSettings
from controlplane.store.base import Store, StoreError, ThroughputRecord
from controlplane.store.postgres import PostgresStore
from controlplane.store.sqlite import SqliteStore
from tests.unit.test_store import ScratchSchemas, require_postgres

CAT = default_catalogue()
T0 = 1_700_000_000.0
OpenDb = Callable[[], Store]


@pytest.fixture(params=("sqlite", "postgres"))
def open_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenDb]:
    """Opens (or reopens) one database of the implementation under test;
    PostgreSQL in a scratch schema, dropped afterwards."""
    opened: list[Store] = []
    scratch = ScratchSchemas(require_postgres()) if request.param == "postgres" else None

    def open_() -> Store:
        db: Store = (SqliteStore(tmp_path / "t.db") if scratch is None else
                     PostgresStore(scratch.dsn, schema=scratch.name("throughput"), pool_size=2))
        opened.append(db)
        return db

    yield open_
    for db in opened:
        db.close()
    if scratch is not None:
        scratch.drop_all()


def record(kind: str, model: str, sps: float, ordinal: int, reports: int = 1,
           at: float = T0) -> ThroughputRecord:
    return ThroughputRecord(kind, model, sps, reports, ordinal, at)


def test_rates_are_upserted_and_loaded_in_first_measured_order(open_db: OpenDb) -> None:
    store = open_db()
    assert store.load_throughput() == []
    store.save_throughput([record("llama", "910B", 2.0, 2), record("llama", "A100", 4.0, 1)])
    store.save_throughput([record("llama", "910B", 3.0, 9, reports=5, at=T0 + 5)])
    store.save_throughput([])  # nothing changed: no transaction
    assert store.load_throughput() == [
        record("llama", "A100", 4.0, 1),
        record("llama", "910B", 3.0, 2, reports=5, at=T0 + 5),  # first ordinal kept
    ]


def test_rates_survive_close_and_reopen(open_db: OpenDb) -> None:
    first = open_db()
    first.save_throughput([record("bert", "H100", 10.0, 1)])
    first.close()
    assert open_db().load_throughput() == [record("bert", "H100", 10.0, 1)]


def persistence(store: Store, live: set[str] | None = None,
                interval_s: float = 5.0) -> tuple[ThroughputTable, ThroughputPersistence]:
    table = ThroughputTable(CAT)
    return table, ThroughputPersistence(table, store, lambda: live or set(), interval_s)


def test_writes_are_batched_at_most_every_interval(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "x.db")
    table, saver = persistence(store)
    table.record("llama", "A100", 4.0, T0)
    assert saver.maybe_flush(100.0) == 1  # the first call writes
    for i in range(50):
        table.record("llama", "910B", 2.0 + i / 100, T0 + i)
    assert saver.maybe_flush(102.0) == 0  # within the interval: nothing written
    assert [r.model for r in store.load_throughput()] == ["A100"]
    assert saver.maybe_flush(105.0) == 1  # fifty reports, one row, one transaction
    [_, rate] = store.load_throughput()
    assert (rate.model, rate.reports, rate.updated_at) == ("910B", 50, T0 + 49)
    assert saver.maybe_flush(200.0) == 0  # nothing changed since


def test_a_restarted_table_has_the_same_speed_factors(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "x.db")
    table, saver = persistence(store)
    table.record("llama", "910B", 2.0)  # first measured: the anchor (no A100 yet)
    table.record("llama", "H100", 6.0)
    table.record("resnet", "A100", 5.0)
    table.record("resnet", "910B", 4.0)
    saver.flush()
    store.close()
    again, loader = persistence(SqliteStore(tmp_path / "x.db"))
    assert loader.load() == 4
    for kind in ("llama", "resnet"):
        assert again.speed(kind) == table.speed(kind) != ()
        assert again.rates(kind) == table.rates(kind)
    again.record("llama", "910B", 2.0)  # learning goes on from the loaded rates
    assert again.speed("llama") == table.speed("llama")


class BrokenStore(SqliteStore):
    fail = True

    def save_throughput(self, records, forget_types=()):  # type: ignore[no-untyped-def]
        if self.fail:
            raise StoreError("database unavailable")
        super().save_throughput(records, forget_types)


def test_a_failed_write_is_retried(tmp_path: Path) -> None:
    store = BrokenStore(tmp_path / "x.db")
    table, saver = persistence(store, interval_s=0)
    table.record("llama", "A100", 4.0)
    with pytest.raises(StoreError):
        saver.flush()
    store.fail = False
    assert saver.flush() == 1
    assert [r.model for r in store.load_throughput()] == ["A100"]


def test_progress_of_ended_jobs_is_dropped_and_capped() -> None:
    table = ThroughputTable(CAT, max_jobs=3)
    for i in range(5):
        table.note_progress(f"j{i}", i, 1.0, T0 + i)
    assert table.tracked_jobs() == 3 and table.latest("j0") is None  # least recent gone
    table.note_progress("j2", 9, 1.0, T0 + 9)  # updated: now the most recent
    table.note_progress("j5", 1, 1.0, T0 + 10)
    assert table.latest("j2") is not None and table.latest("j3") is None
    assert table.retain_jobs({"j2", "j9"}) == 2
    assert table.tracked_jobs() == 1 and table.latest("j2") is not None


def test_flush_prunes_jobs_no_longer_live(tmp_path: Path) -> None:
    table, saver = persistence(SqliteStore(tmp_path / "x.db"), live={"a"})
    table.note_progress("a", 1, 1.0, T0)
    table.note_progress("b", 1, 1.0, T0)
    saver.flush()
    assert table.latest("a") is not None and table.latest("b") is None


def test_the_controller_loads_on_start_and_on_election(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "x.db")
    settings = ServerSettings(data_dir=tmp_path)
    store.save_throughput([record("llama", "A100", 4.0, 1), record("llama", "910B", 2.0, 2)])
    controller = Controller(store, CAT, settings, InlineHost())
    table = controller.ctx.throughput
    assert table is not None and dict(table.speed("llama")) == {"910B": 0.5, "A100": 1.0}
    # Another leader learned more meanwhile; this replica is elected again.
    store.save_throughput([record("llama", "H100", 12.0, 3)])
    controller.rebuild()
    assert dict(table.speed("llama"))["H100"] == 3.0
    table.record("llama", "H100", 12.0, T0)
    controller.tick()  # the loop writes what changed
    [h100] = [r for r in store.load_throughput() if r.model == "H100"]
    assert h100.reports == 2


def test_a_version_5_sqlite_database_gains_the_table(tmp_path: Path) -> None:
    import sqlite3

    from controlplane.store.sqlite_schema import MIGRATIONS, SCHEMA_VERSION

    path = tmp_path / "v5.db"
    with sqlite3.connect(path) as conn:
        for statements in MIGRATIONS[:5]:
            for statement in statements:
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 5")
    with SqliteStore(path) as db:
        assert db.load_throughput() == []
        db.save_throughput([record("bert", "H100", 10.0, 1)])
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 6


def test_a_version_5_postgres_schema_gains_the_table() -> None:
    import psycopg

    from controlplane.store.postgres_schema import MIGRATIONS

    scratch = ScratchSchemas(require_postgres())
    schema = scratch.name("v5")
    try:
        with psycopg.connect(scratch.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
            conn.execute(f"SET search_path TO {schema}")
            conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
                         " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            for version, statements in enumerate(MIGRATIONS[:5], start=1):
                for statement in statements:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
        with PostgresStore(scratch.dsn, schema=schema, pool_size=1) as db:
            db.save_throughput([record("bert", "H100", 10.0, 1)])
            assert db.load_throughput() == [record("bert", "H100", 10.0, 1)]
        with psycopg.connect(scratch.dsn) as conn:
            versions = [v for (v,) in conn.execute(
                f"SELECT version FROM {schema}.schema_migrations ORDER BY version")]
        assert 6 in versions
    finally:
        scratch.drop_all()


def test_a_deposed_leader_cannot_overwrite_the_rates() -> None:
    from controlplane.store.base import FencedError

    scratch = ScratchSchemas(require_postgres())
    try:
        with PostgresStore(scratch.dsn, schema=scratch.name("fence"), pool_size=1) as db:
            db.save_throughput([record("bert", "H100", 10.0, 1)])
            db.set_leader_term(7)  # a term that is not (or no longer) the current one
            with pytest.raises(FencedError):
                db.save_throughput([record("bert", "H100", 1.0, 1)])
            assert db.load_throughput() == [record("bert", "H100", 10.0, 1)]
    finally:
        scratch.drop_all()


def test_forgotten_types_are_deleted_with_the_save(open_db: OpenDb) -> None:
    store = open_db()
    store.save_throughput([record("a", "A100", 1.0, 1), record("a", "H100", 2.0, 2),
                           record("b", "A100", 3.0, 3)])
    store.save_throughput([record("c", "A100", 4.0, 4)], forget_types=["a"])
    assert [(r.job_type, r.model) for r in store.load_throughput()] == [("b", "A100"),
                                                                        ("c", "A100")]
    store.save_throughput([], forget_types=["b", "never-stored"])
    assert [r.job_type for r in store.load_throughput()] == ["c"]


def test_learned_types_are_capped_least_recently_reported_first() -> None:
    changed: list[str] = []
    table = ThroughputTable(CAT, max_types=2)
    table.on_change = changed.append
    table.record("a", "A100", 4.0, T0)
    table.record("b", "A100", 4.0, T0 + 1)
    table.record("a", "910B", 2.0, T0 + 2)  # "a" reported again: "b" is now the oldest
    table.record("c", "A100", 4.0, T0 + 3)
    assert table.job_types() == 2 and table.speed("b") == () and table.rates("b") == {}
    assert dict(table.speed("a")) == {"910B": 0.5, "A100": 1.0}
    assert changed[-2:] == ["b", "c"]  # "b"'s queued jobs go back to the prior
    assert table.take_forgotten() == ["b"] and table.take_forgotten() == []
    assert {r.job_type for r in table.take_changed()} == {"a", "c"}


def test_the_cap_reaches_the_store_and_survives_a_restart(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "x.db")
    table, saver = persistence(store, interval_s=0)
    table.max_types = 3
    for i in range(5):
        table.record(f"type-{i}", "A100", 1.0 + i, T0 + i)
    saver.flush()
    assert sorted({r.job_type for r in store.load_throughput()}) == ["type-2", "type-3",
                                                                      "type-4"]
    # A store holding more (written before the cap was lowered): the most
    # recently reported types are loaded, the others deleted at the next save.
    store.save_throughput([record("old", "A100", 1.0, 90, at=T0 - 100)])
    again, loader = persistence(store, interval_s=0)
    again.max_types = 3
    loader.load()
    assert again.job_types() == 3 and again.rates("old") == {}
    loader.flush()
    assert "old" not in {r.job_type for r in store.load_throughput()}


def test_a_failed_delete_of_forgotten_types_is_retried(tmp_path: Path) -> None:
    store = BrokenStore(tmp_path / "x.db")
    store.fail = False
    table, saver = persistence(store, interval_s=0)
    table.record("x", "A100", 1.0, T0)
    saver.flush()
    table.max_types = 1
    table.record("y", "A100", 1.0, T0 + 1)  # "x" forgotten
    store.fail = True
    with pytest.raises(StoreError):
        saver.flush()
    store.fail = False
    saver.flush()
    assert [r.job_type for r in store.load_throughput()] == ["y"]
