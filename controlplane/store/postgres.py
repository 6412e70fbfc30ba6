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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from controlplane.model import states as job_states
from controlplane.store.base import (
    ConflictError,
    NotFoundError,
    ReplicaRecord,
    Store,
    StoreError,
    Transition,
)
from controlplane.store.postgres_schema import check_schema_name, migrate, use_schema
from controlplane.store.postgres_tokens import TokensAndAudit
from controlplane.store.transitions import creates_replicas, seconds, timestamp, transform
from xinhe.v1 import agent_pb2, common_pb2

Cursor = psycopg.Cursor[Any]

_REPLICA_COLUMNS = "job_id, attempt, rank, epoch, node, state, exit_code, message"
_EVENT_COLUMNS = "seq, job_id, time, from_state, to_state, kind, message, attempt"
_LIVE_STATES = sorted(job_states.NON_TERMINAL)


def _event(row: tuple) -> common_pb2.JobEvent:
    seq, job_id, time, from_state, to_state, kind, message, attempt = row
    return common_pb2.JobEvent(sequence=seq, job_id=job_id, time=timestamp(time),
                               from_state=from_state, to_state=to_state, kind=kind,
                               message=message, attempt=attempt)


def _node(row: tuple) -> common_pb2.Node:
    data, cordoned, reason = row
    node = common_pb2.Node.FromString(data)
    node.cordoned, node.cordon_reason = bool(cordoned), reason
    return node


def _lock_jobs(cur: Cursor, job_ids: Iterable[str]) -> None:
    """Serialise writers of these jobs' logs (see module doc);
    taken in sorted order so two writers cannot deadlock."""
    for job_id in sorted(set(job_ids)):
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                    ("xinhe.job." + job_id,))


class PostgresStore(TokensAndAudit, Store):
    """:class:`Store` on PostgreSQL. ``dsn`` is a libpq URI or key=value string
    (``postgresql://user@host:5432/db``); ``schema`` (created if missing) keeps
    the tables apart from others in the same database; ``pool_size`` bounds
    the connections this store holds."""

    def __init__(self, dsn: str, *, schema: str | None = None, pool_size: int = 8,
                 connect_timeout: float = 10.0) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        self.schema = check_schema_name(schema) if schema else None
        self._migrate(dsn, connect_timeout)
        pool = ConnectionPool(dsn, min_size=1, max_size=pool_size, open=False,
                              kwargs={"autocommit": True}, configure=self._configure,
                              check=ConnectionPool.check_connection, timeout=30.0,
                              name=f"xinhe-store-{self.schema or 'default'}")
        try:
            pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout as exc:
            pool.close()
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc
        self._pool: ConnectionPool | None = pool

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

    # -- transactions ---------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[Cursor]:
        """One transaction on a pooled connection: commit on success, roll back
        on any error; psycopg and pool errors become StoreError."""
        pool = self._pool
        if pool is None:
            raise StoreError("the store is closed")
        try:
            with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                yield cur
        except (psycopg.Error, PoolTimeout) as exc:
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
        if not job.id:
            raise ValueError("job.id is required")
        stored = common_pb2.Job()
        stored.CopyFrom(job)
        stored.tenant = stored.tenant or stored.spec.queue.partition("/")[0]
        stored.state = job_states.QUEUED
        stored.attempt = stored.attempt or 1
        stored.created_at.CopyFrom(timestamp(now))
        with self._tx() as cur:
            if not self._insert_job(cur, stored, now):
                cur.execute("SELECT data FROM jobs WHERE tenant = %s AND client_key = %s",
                            (stored.tenant, stored.client_key))
                return common_pb2.Job.FromString(cur.fetchone()[0]), False
            self._insert_event(cur, stored.id, now, common_pb2.JOB_STATE_UNSPECIFIED,
                               job_states.QUEUED, "submitted", f"queued in {stored.spec.queue}",
                               stored.attempt)
        return stored, True

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

    def get_job(self, job_id: str) -> common_pb2.Job | None:
        with self._tx() as cur:
            row = cur.execute("SELECT data FROM jobs WHERE id = %s", (job_id,)).fetchone()
        return common_pb2.Job.FromString(row[0]) if row else None

    def find_job_by_key(self, tenant: str, client_key: str) -> common_pb2.Job | None:
        """See :meth:`Store.find_job_by_key`; an empty key finds nothing."""
        if not client_key:
            return None
        with self._tx() as cur:
            row = cur.execute("SELECT data FROM jobs WHERE tenant = %s AND client_key = %s",
                              (tenant, client_key)).fetchone()
        return common_pb2.Job.FromString(row[0]) if row else None

    def list_jobs(self, *, tenant: str | None = None, states: Iterable[int] = (),
                  queue: str | None = None, limit: int = 100,
                  before_seq: int | None = None) -> tuple[list[common_pb2.Job], int | None]:
        """See :meth:`Store.list_jobs`. ``limit`` must be at least 1."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        where, params = ["TRUE"], []
        for clause, value in (("tenant = %s", tenant), ("queue = %s", queue),
                              ("seq < %s", before_seq)):
            if value is not None:
                where.append(clause)
                params.append(value)
        wanted = sorted(set(states))
        if wanted:
            where.append("state = ANY(%s)")
            params.append(wanted)
        with self._tx() as cur:
            rows = cur.execute(f"SELECT seq, data FROM jobs WHERE {' AND '.join(where)}"
                               " ORDER BY seq DESC LIMIT %s", (*params, limit + 1)).fetchall()
        page = [common_pb2.Job.FromString(data) for _, data in rows[:limit]]
        return page, (rows[limit - 1][0] if len(rows) > limit else None)

    def jobs_in_states(self, states: Iterable[int]) -> list[common_pb2.Job]:
        wanted = sorted(set(states))
        if not wanted:
            return []
        with self._tx() as cur:
            rows = cur.execute("SELECT data FROM jobs WHERE state = ANY(%s) ORDER BY seq",
                               (wanted,)).fetchall()
        return [common_pb2.Job.FromString(data) for (data,) in rows]

    def count_jobs_by_state(self) -> dict[int, int]:
        with self._tx() as cur:
            rows = cur.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state: count for state, count in rows}

    # -- transitions ----------------------------------------------------------
    def apply(self, transitions: Sequence[Transition], now: float) -> list[common_pb2.Job]:
        """See :meth:`Store.apply`; the semantics are ``transitions.transform``.
        The batch's jobs are locked (id order) before any is read."""
        if not transitions:
            return []
        with self._tx() as cur:
            ids = sorted({t.job_id for t in transitions})
            cur.execute("SELECT id FROM jobs WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (ids,))
            return [self._apply_one(cur, t, now) for t in transitions]

    def _apply_one(self, cur: Cursor, t: Transition, now: float) -> common_pb2.Job:
        row = cur.execute("SELECT data FROM jobs WHERE id = %s", (t.job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"job {t.job_id} not found")
        job = common_pb2.Job.FromString(row[0])
        from_state = transform(job, t, now, self._epoch_counter(cur))
        cur.execute(
            "UPDATE jobs SET state = %s, priority = %s, queue = %s, attempt = %s, epoch = %s,"
            " updated_at = %s, data = %s WHERE id = %s",
            (job.state, job.spec.priority, job.spec.queue, job.attempt, job.epoch, now,
             job.SerializeToString(), job.id))
        self._insert_event(cur, job.id, now, from_state, t.to_state, t.kind, t.message,
                           job.attempt)
        if creates_replicas(job, t):
            self._insert_replicas(cur, job)
        return job

    @staticmethod
    def _epoch_counter(cur: Cursor) -> Callable[[], int]:
        """Draws the next fencing epoch in the caller's transaction (the row
        lock orders placements; a rollback gives the value back)."""
        def next_epoch() -> int:
            return cur.execute("UPDATE counters SET value = value + 1 WHERE name = 'epoch'"
                               " RETURNING value").fetchone()[0]
        return next_epoch

    @staticmethod
    def _insert_replicas(cur: Cursor, job: common_pb2.Job) -> None:
        """One fresh row per placed replica; a re-placement of the same
        attempt replaces the rows it had."""
        cur.executemany(
            f"INSERT INTO replicas ({_REPLICA_COLUMNS}) VALUES (%s, %s, %s, %s, %s, 0, 0, '')"
            " ON CONFLICT (job_id, attempt, rank) DO UPDATE SET epoch = excluded.epoch,"
            " node = excluded.node, state = 0, exit_code = 0, message = ''",
            [(job.id, job.attempt, r.rank, job.epoch, r.node) for r in job.placement.replicas])

    # -- events ---------------------------------------------------------------
    @staticmethod
    def _insert_event(cur: Cursor, job_id: str, now: float, from_state: int,
                      to_state: int, kind: str, message: str, attempt: int) -> int:
        """Append an event; the caller holds the job's row or advisory lock."""
        return cur.execute(
            "INSERT INTO events (job_id, time, from_state, to_state, kind, message, attempt)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING seq",
            (job_id, now, from_state, to_state, kind, message, attempt)).fetchone()[0]

    def events(self, job_id: str, after_seq: int = 0,
               limit: int = 1000) -> list[common_pb2.JobEvent]:
        """See :meth:`Store.events`; an unknown job has no events."""
        with self._tx() as cur:
            rows = cur.execute(f"SELECT {_EVENT_COLUMNS} FROM events WHERE job_id = %s"
                               " AND seq > %s ORDER BY seq LIMIT %s",
                               (job_id, after_seq, limit)).fetchall()
        return [_event(row) for row in rows]

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
        return _event((seq, job_id, now, state, state, kind, message, attempt))

    # -- replicas -------------------------------------------------------------
    def replicas(self, job_id: str, attempt: int | None = None) -> list[ReplicaRecord]:
        sql = f"SELECT {_REPLICA_COLUMNS} FROM replicas WHERE job_id = %s"
        params: tuple = (job_id,)
        if attempt is not None:
            sql, params = sql + " AND attempt = %s", (job_id, attempt)
        with self._tx() as cur:
            rows = cur.execute(sql + " ORDER BY attempt, rank", params).fetchall()
        return [ReplicaRecord(*row) for row in rows]

    def replicas_on_node(self, node: str, active_only: bool = True) -> list[ReplicaRecord]:
        """See :meth:`Store.replicas_on_node`; ordered by job submission,
        attempt, rank."""
        columns = ", ".join(f"r.{c.strip()}" for c in _REPLICA_COLUMNS.split(","))
        sql = f"SELECT {columns} FROM replicas r JOIN jobs j ON j.id = r.job_id WHERE r.node = %s"
        params: list = [node]
        if active_only:
            sql += " AND r.attempt = j.attempt AND j.state = ANY(%s)"
            params.append(_LIVE_STATES)
        with self._tx() as cur:
            rows = cur.execute(sql + " ORDER BY j.seq, r.attempt, r.rank", params).fetchall()
        return [ReplicaRecord(*row) for row in rows]

    def update_replica(self, ref: agent_pb2.ReplicaRef, state: int, exit_code: int,
                       message: str) -> ReplicaRecord | None:
        with self._tx() as cur:
            row = cur.execute(
                "UPDATE replicas SET state = %s, exit_code = %s, message = %s WHERE job_id = %s"
                " AND attempt = %s AND rank = %s AND epoch = %s"
                f" RETURNING {_REPLICA_COLUMNS}",
                (state, exit_code, message, ref.job_id, ref.attempt, ref.rank, ref.epoch),
            ).fetchone()
        return ReplicaRecord(*row) if row else None

    # -- logs -----------------------------------------------------------------
    def append_logs(self, chunks: Sequence[common_pb2.LogChunk], now: float) -> None:
        """See :meth:`Store.append_logs`; a chunk without a time gets ``now``."""
        if not chunks:
            return
        rows = [(c.job_id, c.attempt, c.rank, c.stream, c.data,
                 seconds(c.time) if c.HasField("time") else now) for c in chunks]
        with self._tx() as cur:
            _lock_jobs(cur, (c.job_id for c in chunks))
            cur.executemany("INSERT INTO logs (job_id, attempt, rank, stream, data, time)"
                            " VALUES (%s, %s, %s, %s, %s, %s)", rows)

    def logs(self, job_id: str, after_seq: int = 0, rank: int | None = None,
             limit: int = 1000) -> list[common_pb2.LogChunk]:
        """A job's log chunks with sequence > after_seq, oldest first."""
        sql = ("SELECT seq, job_id, attempt, rank, stream, data, time FROM logs"
               " WHERE job_id = %s AND seq > %s")
        params: list = [job_id, after_seq]
        if rank is not None:
            sql += " AND rank = %s"
            params.append(rank)
        with self._tx() as cur:
            rows = cur.execute(sql + " ORDER BY seq LIMIT %s", (*params, limit)).fetchall()
        return [common_pb2.LogChunk(sequence=seq, job_id=job, attempt=attempt, rank=r,
                                    stream=stream, data=bytes(data), time=timestamp(time))
                for seq, job, attempt, r, stream, data, time in rows]

    # -- nodes ----------------------------------------------------------------
    def upsert_node(self, node: common_pb2.Node) -> None:
        """See :meth:`Store.upsert_node`: the node's own cordon fields are
        ignored; the stored ones (set_cordon's) are kept."""
        if not node.name:
            raise ValueError("node.name is required")
        with self._tx() as cur:
            cur.execute("INSERT INTO nodes (name, data) VALUES (%s, %s)"
                        " ON CONFLICT (name) DO UPDATE SET data = excluded.data",
                        (node.name, node.SerializeToString()))

    def set_cordon(self, name: str, cordoned: bool, reason: str) -> common_pb2.Node:
        """See :meth:`Store.set_cordon`; uncordoning clears the reason."""
        with self._tx() as cur:
            row = cur.execute("UPDATE nodes SET cordoned = %s, cordon_reason = %s"
                              " WHERE name = %s RETURNING data, cordoned, cordon_reason",
                              (cordoned, reason if cordoned else "", name)).fetchone()
            if row is None:
                raise NotFoundError(f"node {name} not found")
        return _node(row)

    def get_node(self, name: str) -> common_pb2.Node | None:
        with self._tx() as cur:
            row = cur.execute("SELECT data, cordoned, cordon_reason FROM nodes WHERE name = %s",
                              (name,)).fetchone()
        return _node(row) if row else None

    def list_nodes(self) -> list[common_pb2.Node]:
        with self._tx() as cur:
            rows = cur.execute("SELECT data, cordoned, cordon_reason FROM nodes"
                               " ORDER BY name").fetchall()
        return [_node(row) for row in rows]
