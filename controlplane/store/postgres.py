"""The PostgreSQL store: :class:`Store` on a database named by a DSN.

Same contract and semantics as ``SqliteStore`` (the shared store test suite
runs against both); the differences are how concurrency is made safe when
many connections write at once instead of one locked connection:

* every public method is one transaction on a pooled autocommit connection
  (``psycopg_pool``), committed before it returns (acknowledged = durable);
* ``apply`` locks its jobs ``FOR UPDATE`` in id order before reading them, so
  guards are compare-and-set and two batches cannot deadlock on each other;
* idempotent submission is ``INSERT ... ON CONFLICT DO NOTHING`` on the
  (tenant, client_key) index, then a read of the winner, so racing servers
  create one job per key;
* writers of a job's events (its row lock) and logs (an advisory lock per
  job) hold a per-job lock before drawing a sequence number, so a job's
  sequences commit in order and a reader following ``after_seq`` can never
  skip a row that commits late.

psycopg errors surface as :class:`StoreError`; a refused transition rolls
back the whole batch.

Every call is bounded by ``op_timeout`` while the database is away: waiting
for a pooled connection (the pool reconnecting in the background), each
connection attempt, and unacknowledged traffic on an open connection (TCP
user timeout) all give up within it, so a down or unreachable database is a
StoreError (UNAVAILABLE to clients) in seconds, not a hung call. A call that
fails rolls back: nothing half-written.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from controlplane.store.base import (
    ConflictError,
    FencedError,
    NotFoundError,
    ReplicaReport,
    ReportDecision,
    ReportOutcome,
    StoreError,
    Transition,
)
from controlplane.store.postgres_schema import check_schema_name, migrate, use_schema
from controlplane.store.postgres_tokens import TokensAndAudit
from controlplane.store.sqlcommon import (
    SqlStore,
    event_from_row,
    log_rows,
    node_from_row,
    prepared_job,
)
from xinhe.v1 import common_pb2

Cursor = psycopg.Cursor[Any]





def connection_options(op_timeout: float) -> dict[str, Any]:
    """libpq options of pooled connections that bound a call to about
    ``op_timeout`` seconds when the database goes away: the connect timeout
    (whole seconds, 2 at least, as libpq counts them) and the TCP user
    timeout (data sent but not acknowledged, e.g. a server behind a dead link)."""
    return {"autocommit": True, "connect_timeout": max(2, math.ceil(op_timeout)),
            "tcp_user_timeout": max(1000, round(op_timeout * 1000)),
            "keepalives": 1, "keepalives_idle": max(1, math.ceil(op_timeout)),
            "keepalives_interval": 1, "keepalives_count": 3}


def _lock_jobs(cur: Cursor, job_ids: Iterable[str]) -> None:
    """Serialise writers of these jobs' logs (see module doc);
    taken in sorted order so two writers cannot deadlock."""
    for job_id in sorted(set(job_ids)):
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                    ("xinhe.job." + job_id,))


class PostgresStore(TokensAndAudit, SqlStore):
    """:class:`Store` on PostgreSQL. ``dsn`` is a libpq URI or key=value string
    (``postgresql://user@host:5432/db``); ``schema`` (created if missing) keeps
    the tables apart from others in the same database; ``pool_size`` bounds
    the connections this store holds; ``op_timeout`` bounds each call while
    the database is unreachable (see the module doc)."""

    PARAM = "%s"

    def __init__(self, dsn: str, *, schema: str | None = None, pool_size: int = 8,
                 connect_timeout: float = 10.0, op_timeout: float = 5.0) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        if not op_timeout > 0:
            raise ValueError(f"op_timeout must be positive, got {op_timeout}")
        self.schema = check_schema_name(schema) if schema else None
        self._migrate(dsn, connect_timeout)
        pool = ConnectionPool(dsn, min_size=1, max_size=pool_size, open=False,
                              kwargs=connection_options(op_timeout),
                              configure=self._configure, timeout=op_timeout,
                              name=f"xinhe-store-{self.schema or 'default'}")
        try:
            pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout as exc:
            pool.close()
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc
        self._pool: ConnectionPool | None = pool
        self._term: int | None = None

    def _configure(self, conn: psycopg.Connection) -> None:
        if self.schema:
            use_schema(conn, self.schema)

    def _migrate(self, dsn: str, connect_timeout: float) -> None:
        """Apply missing migrations on a connection of its own (before the pool
        opens, so no pooled connection sees a half-built schema)."""
        try:
            with psycopg.connect(dsn, autocommit=True,
                                 connect_timeout=max(1, round(connect_timeout))) as conn:
                self._configure(conn)
                migrate(conn)
        except psycopg.Error as exc:
            raise StoreError(f"cannot open PostgreSQL store: {exc}") from exc

    # -- leadership -------------------------------------------------------------
    def set_leader_term(self, term: int | None) -> None:
        """See :meth:`Store.set_leader_term`."""
        self._term = term

    def _fence(self, cur: Cursor) -> None:
        """FOR SHARE: a newly elected leader's term increment waits for this
        transaction, and once it commits every later fenced write sees it."""
        term = self._term
        if term is None:
            return
        row = cur.execute("SELECT term FROM leader_term WHERE id = 1 FOR SHARE").fetchone()
        current = row[0] if row else 0
        if current != term:
            raise FencedError(f"leader term {term} is over (term {current} began): another "
                              "replica leads now; this write was refused")

    # -- transactions ---------------------------------------------------------
    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[Cursor]:
        """One transaction on a pooled connection: commit on success, roll back
        on any error; psycopg and pool errors become StoreError. Reads and
        writes are alike here (``write`` is for the shared interface)."""
        pool = self._pool
        if pool is None:
            raise StoreError("the store is closed")
        try:
            with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                yield cur
        except (psycopg.Error, PoolTimeout) as exc:
            if isinstance(exc, psycopg.OperationalError):
                # A dead server connection (restart, failover, terminated
                # backend): its idle siblings are likely dead too. Test them all
                # now rather than at checkout, where the pool backs off a second
                # and more per dead connection and a call outlives its deadline
                # instead of answering UNAVAILABLE at once.
                with contextlib.suppress(Exception):
                    pool.check()
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pool; later calls raise StoreError. Idempotent."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    # -- jobs -----------------------------------------------------------------
    def create_job(self, job: common_pb2.Job, now: float) -> tuple[common_pb2.Job, bool]:
        """See :meth:`Store.create_job`. ``job.id`` is required; the tenant
        defaults to the queue's tenant part; attempt 0 becomes 1."""
        return self.create_jobs([job], now)[0]

    def create_jobs(self, jobs: Sequence[common_pb2.Job],
                    now: float) -> list[tuple[common_pb2.Job, bool]]:
        """See :meth:`Store.create_jobs`: one transaction; a key inserted
        earlier in the batch conflicts with that row and finds it."""
        prepared = [prepared_job(job, now) for job in jobs]
        out = []
        with self._tx() as cur:
            for stored in prepared:
                if not self._insert_job(cur, stored, now):
                    cur.execute("SELECT data FROM jobs WHERE tenant = %s AND client_key = %s",
                                (stored.tenant, stored.client_key))
                    out.append((common_pb2.Job.FromString(cur.fetchone()[0]), False))
                    continue
                self._insert_submitted(cur, stored, now)
                out.append((stored, True))
        return out

    @staticmethod
    def _insert_job(cur: Cursor, job: common_pb2.Job, now: float) -> bool:
        """Insert ``job``; False when its (tenant, client_key) is taken. A
        concurrent insert of the same key is waited for, then loses."""
        try:
            cur.execute(
                "INSERT INTO jobs (id, tenant, queue, client_key, state, priority, attempt,"
                " epoch, created_at, updated_at, data)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (tenant, client_key) WHERE client_key <> '' DO NOTHING"
                " RETURNING seq",
                (job.id, job.tenant, job.spec.queue, job.client_key, job.state,
                 job.spec.priority, job.attempt, job.epoch, now, now, job.SerializeToString()))
        except pg_errors.UniqueViolation as exc:
            raise ConflictError(f"job {job.id} already exists") from exc
        return cur.fetchone() is not None

    # -- transitions ----------------------------------------------------------
    def apply(self, transitions: Sequence[Transition], now: float) -> list[common_pb2.Job]:
        """See :meth:`Store.apply`; the semantics are ``transitions.transform``.
        The batch's jobs are locked (id order) before any is read."""
        if not transitions:
            return []
        with self._tx() as cur:
            self._fence(cur)
            ids = sorted({t.job_id for t in transitions})
            cur.execute("SELECT id FROM jobs WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (ids,))
            return [self._apply_one(cur, t, now) for t in transitions]

    def record_reports(self, reports: Sequence[ReplicaReport], decide: ReportDecision,
                       now: float) -> list[ReportOutcome]:
        """See :meth:`Store.record_reports`. The reports' jobs are locked (id
        order, as ``apply`` does) before any replica row is touched."""
        if not reports:
            return []
        with self._tx() as cur:
            self._fence(cur)
            ids = sorted({r.ref.job_id for r in reports})
            cur.execute("SELECT id FROM jobs WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (ids,))
            return self._record_reports(cur, reports, decide, now)

    # -- events ---------------------------------------------------------------
    def add_event(self, job_id: str, kind: str, message: str,
                  now: float) -> common_pb2.JobEvent:
        """See :meth:`Store.add_event`; NotFoundError for an unknown job."""
        with self._tx() as cur:
            row = cur.execute("SELECT state, attempt FROM jobs WHERE id = %s FOR UPDATE",
                              (job_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"job {job_id} not found")
            state, attempt = row
            seq = self._insert_event(cur, job_id, now, state, state, kind, message, attempt)
        return event_from_row((seq, job_id, now, state, state, kind, message, attempt))

    # -- logs -----------------------------------------------------------------
    def append_logs(self, chunks: Sequence[common_pb2.LogChunk], now: float) -> None:
        """See :meth:`Store.append_logs`; a chunk without a time gets ``now``."""
        if not chunks:
            return
        rows = log_rows(chunks, now)
        with self._tx() as cur:  # a chunk whose offset is stored already is a resend
            _lock_jobs(cur, (c.job_id for c in chunks))
            cur.executemany("INSERT INTO logs (job_id, attempt, rank, stream, data, time,"
                            " byte_offset) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                            " ON CONFLICT DO NOTHING", rows)

    # -- nodes ----------------------------------------------------------------
    def set_cordon(self, name: str, cordoned: bool, reason: str) -> common_pb2.Node:
        """See :meth:`Store.set_cordon`; uncordoning clears the reason."""
        with self._tx() as cur:
            row = cur.execute("UPDATE nodes SET cordoned = %s, cordon_reason = %s"
                              " WHERE name = %s RETURNING data, cordoned, cordon_reason",
                              (cordoned, reason if cordoned else "", name)).fetchone()
            if row is None:
                raise NotFoundError(f"node {name} not found")
        return node_from_row(row)
