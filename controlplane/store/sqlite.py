"""The embedded store: one SQLite file in WAL mode, ``synchronous=FULL``.

One connection, guarded by a lock, serves every thread of the gRPC server;
each public method is one transaction that is on disk before it returns
(acknowledged = durable). Writers take the write lock up front
(``BEGIN IMMEDIATE``) so a transaction never fails half-way on a lock upgrade.
Errors from SQLite surface as :class:`StoreError`; a refused transition
(:class:`InvalidTransition`, :class:`ConflictError`) rolls back the whole
batch.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from controlplane.model import states as job_states
from controlplane.store.base import (
    AuditRecord,
    ConflictError,
    NotFoundError,
    ReplicaRecord,
    Store,
    StoreError,
    TokenRecord,
    Transition,
)
from controlplane.store.sqlite_schema import configure, migrate
from controlplane.store.transitions import creates_replicas, seconds, timestamp, transform
from xinhe.v1 import agent_pb2, common_pb2

_REPLICA_COLUMNS = "job_id, attempt, rank, epoch, node, state, exit_code, message"
_EVENT_COLUMNS = "seq, job_id, time, from_state, to_state, kind, message, attempt"
_TOKEN_COLUMNS = "id, kind, tenant, description, created_at, revoked_at"
_AUDIT_COLUMNS = "seq, time, actor, action, target, outcome, detail"


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


class SqliteStore(Store):
    """:class:`Store` on one SQLite database file (created if missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            conn = sqlite3.connect(self.path, timeout=10, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        try:
            configure(conn)
            migrate(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn

    # -- transactions ---------------------------------------------------------
    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction under the lock: commit on success, roll back on any
        error; SQLite errors become StoreError."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StoreError("the store is closed")
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"{type(exc).__name__}: {exc}") from exc
                raise

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database; later calls raise StoreError. Idempotent."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

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
        with self._tx() as conn:
            if stored.client_key:
                row = conn.execute("SELECT data FROM jobs WHERE tenant = ? AND client_key = ?",
                                   (stored.tenant, stored.client_key)).fetchone()
                if row is not None:
                    return common_pb2.Job.FromString(row[0]), False
            self._insert_job(conn, stored, now)
            self._insert_event(conn, stored.id, now, common_pb2.JOB_STATE_UNSPECIFIED,
                               job_states.QUEUED, "submitted", f"queued in {stored.spec.queue}",
                               stored.attempt)
        return stored, True

    @staticmethod
    def _insert_job(conn: sqlite3.Connection, job: common_pb2.Job, now: float) -> None:
        try:
            conn.execute(
                "INSERT INTO jobs (id, tenant, queue, client_key, state, priority, attempt,"
                " epoch, created_at, updated_at, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.id, job.tenant, job.spec.queue, job.client_key, job.state,
                 job.spec.priority, job.attempt, job.epoch, now, now, job.SerializeToString()))
        except sqlite3.IntegrityError as exc:
            raise ConflictError(f"job {job.id} already exists") from exc

    def get_job(self, job_id: str) -> common_pb2.Job | None:
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return common_pb2.Job.FromString(row[0]) if row else None

    def find_job_by_key(self, tenant: str, client_key: str) -> common_pb2.Job | None:
        """See :meth:`Store.find_job_by_key`; an empty key finds nothing."""
        if not client_key:
            return None
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT data FROM jobs WHERE tenant = ? AND client_key = ?",
                               (tenant, client_key)).fetchone()
        return common_pb2.Job.FromString(row[0]) if row else None

    def list_jobs(self, *, tenant: str | None = None, states: Iterable[int] = (),
                  queue: str | None = None, limit: int = 100,
                  before_seq: int | None = None) -> tuple[list[common_pb2.Job], int | None]:
        """See :meth:`Store.list_jobs`. ``limit`` must be at least 1."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        wanted = sorted(set(states))
        where, params = [], []
        for column, value in (("tenant", tenant), ("queue", queue), ("seq <", before_seq)):
            if value is not None:
                where.append(f"{column} ?" if column.endswith("<") else f"{column} = ?")
                params.append(value)
        if wanted:
            where.append(f"state IN ({', '.join('?' * len(wanted))})")
            params.extend(wanted)
        sql = "SELECT seq, data FROM jobs"
        sql += f" WHERE {' AND '.join(where)}" if where else ""
        with self._tx(write=False) as conn:
            rows = conn.execute(f"{sql} ORDER BY seq DESC LIMIT ?",
                                (*params, limit + 1)).fetchall()
        page = [common_pb2.Job.FromString(data) for _, data in rows[:limit]]
        return page, (rows[limit - 1][0] if len(rows) > limit else None)

    def jobs_in_states(self, states: Iterable[int]) -> list[common_pb2.Job]:
        wanted = sorted(set(states))
        if not wanted:
            return []
        marks = ", ".join("?" * len(wanted))
        with self._tx(write=False) as conn:
            rows = conn.execute(f"SELECT data FROM jobs WHERE state IN ({marks}) ORDER BY seq",
                                wanted).fetchall()
        return [common_pb2.Job.FromString(data) for (data,) in rows]

    def count_jobs_by_state(self) -> dict[int, int]:
        with self._tx(write=False) as conn:
            rows = conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return dict(rows)

    # -- transitions ----------------------------------------------------------
    def apply(self, transitions: Sequence[Transition], now: float) -> list[common_pb2.Job]:
        """See :meth:`Store.apply`. Per transition, in order: guards
        (ConflictError), state machine (InvalidTransition), clear_placement,
        updates (ValueError for a store-owned field), new_epoch,
        increment_attempt, state and its timestamp, event, replica rows."""
        with self._tx() as conn:
            return [self._apply_one(conn, t, now) for t in transitions]

    def _apply_one(self, conn: sqlite3.Connection, t: Transition,
                   now: float) -> common_pb2.Job:
        row = conn.execute("SELECT data FROM jobs WHERE id = ?", (t.job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"job {t.job_id} not found")
        job = common_pb2.Job.FromString(row[0])
        from_state = transform(job, t, now, lambda: self._next_epoch(conn))
        conn.execute(
            "UPDATE jobs SET state = ?, priority = ?, queue = ?, attempt = ?, epoch = ?,"
            " updated_at = ?, data = ? WHERE id = ?",
            (job.state, job.spec.priority, job.spec.queue, job.attempt, job.epoch, now,
             job.SerializeToString(), job.id))
        self._insert_event(conn, job.id, now, from_state, t.to_state, t.kind, t.message,
                           job.attempt)
        if creates_replicas(job, t):
            self._insert_replicas(conn, job)
        return job

    @staticmethod
    def _next_epoch(conn: sqlite3.Connection) -> int:
        return conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'epoch'"
                            " RETURNING value").fetchone()[0]

    @staticmethod
    def _insert_replicas(conn: sqlite3.Connection, job: common_pb2.Job) -> None:
        """One fresh row per placed replica; a re-placement of the same
        attempt replaces the rows it had."""
        conn.executemany(
            f"INSERT INTO replicas ({_REPLICA_COLUMNS}) VALUES (?, ?, ?, ?, ?, 0, 0, '')"
            " ON CONFLICT (job_id, attempt, rank) DO UPDATE SET epoch = excluded.epoch,"
            " node = excluded.node, state = 0, exit_code = 0, message = ''",
            [(job.id, job.attempt, r.rank, job.epoch, r.node) for r in job.placement.replicas])

    # -- events ---------------------------------------------------------------
    @staticmethod
    def _insert_event(conn: sqlite3.Connection, job_id: str, now: float, from_state: int,
                      to_state: int, kind: str, message: str, attempt: int) -> int:
        cursor = conn.execute(
            "INSERT INTO events (job_id, time, from_state, to_state, kind, message, attempt)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (job_id, now, from_state, to_state, kind, message, attempt))
        return cursor.lastrowid

    def events(self, job_id: str, after_seq: int = 0,
               limit: int = 1000) -> list[common_pb2.JobEvent]:
        """See :meth:`Store.events`; an unknown job has no events."""
        with self._tx(write=False) as conn:
            rows = conn.execute(f"SELECT {_EVENT_COLUMNS} FROM events WHERE job_id = ?"
                                " AND seq > ? ORDER BY seq LIMIT ?",
                                (job_id, after_seq, limit)).fetchall()
        return [_event(row) for row in rows]

    def add_event(self, job_id: str, kind: str, message: str,
                  now: float) -> common_pb2.JobEvent:
        """See :meth:`Store.add_event`; NotFoundError for an unknown job."""
        with self._tx() as conn:
            row = conn.execute("SELECT state, attempt FROM jobs WHERE id = ?",
                               (job_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"job {job_id} not found")
            state, attempt = row
            seq = self._insert_event(conn, job_id, now, state, state, kind, message, attempt)
        return _event((seq, job_id, now, state, state, kind, message, attempt))

    # -- replicas -------------------------------------------------------------
    def replicas(self, job_id: str, attempt: int | None = None) -> list[ReplicaRecord]:
        sql = f"SELECT {_REPLICA_COLUMNS} FROM replicas WHERE job_id = ?"
        params: tuple = (job_id,)
        if attempt is not None:
            sql, params = sql + " AND attempt = ?", (job_id, attempt)
        with self._tx(write=False) as conn:
            rows = conn.execute(sql + " ORDER BY attempt, rank", params).fetchall()
        return [ReplicaRecord(*row) for row in rows]

    def replicas_on_node(self, node: str, active_only: bool = True) -> list[ReplicaRecord]:
        """See :meth:`Store.replicas_on_node`; ordered by job submission,
        attempt, rank."""
        columns = ", ".join(f"r.{c.strip()}" for c in _REPLICA_COLUMNS.split(","))
        sql = f"SELECT {columns} FROM replicas r JOIN jobs j ON j.id = r.job_id WHERE r.node = ?"
        params: list = [node]
        if active_only:
            live = sorted(job_states.NON_TERMINAL)
            sql += f" AND r.attempt = j.attempt AND j.state IN ({', '.join('?' * len(live))})"
            params.extend(live)
        with self._tx(write=False) as conn:
            rows = conn.execute(sql + " ORDER BY j.seq, r.attempt, r.rank", params).fetchall()
        return [ReplicaRecord(*row) for row in rows]

    def update_replica(self, ref: agent_pb2.ReplicaRef, state: int, exit_code: int,
                       message: str) -> ReplicaRecord | None:
        with self._tx() as conn:
            row = conn.execute(
                "UPDATE replicas SET state = ?, exit_code = ?, message = ? WHERE job_id = ?"
                " AND attempt = ? AND rank = ? AND epoch = ?"
                f" RETURNING {_REPLICA_COLUMNS}",
                (state, exit_code, message, ref.job_id, ref.attempt, ref.rank, ref.epoch),
            ).fetchone()
        return ReplicaRecord(*row) if row else None

    # -- logs -----------------------------------------------------------------
    def append_logs(self, chunks: Sequence[common_pb2.LogChunk], now: float) -> None:
        """See :meth:`Store.append_logs`; a chunk without a time gets ``now``."""
        rows = [(c.job_id, c.attempt, c.rank, c.stream, c.data,
                 seconds(c.time) if c.HasField("time") else now) for c in chunks]
        with self._tx() as conn:
            conn.executemany("INSERT INTO logs (job_id, attempt, rank, stream, data, time)"
                             " VALUES (?, ?, ?, ?, ?, ?)", rows)

    def logs(self, job_id: str, after_seq: int = 0, rank: int | None = None,
             limit: int = 1000) -> list[common_pb2.LogChunk]:
        """A job's log chunks with sequence > after_seq, oldest first."""
        sql = ("SELECT seq, job_id, attempt, rank, stream, data, time FROM logs"
               " WHERE job_id = ? AND seq > ?")
        params: list = [job_id, after_seq]
        if rank is not None:
            sql += " AND rank = ?"
            params.append(rank)
        with self._tx(write=False) as conn:
            rows = conn.execute(sql + " ORDER BY seq LIMIT ?", (*params, limit)).fetchall()
        return [common_pb2.LogChunk(sequence=seq, job_id=job, attempt=attempt, rank=r,
                                    stream=stream, data=data, time=timestamp(time))
                for seq, job, attempt, r, stream, data, time in rows]

    # -- nodes ----------------------------------------------------------------
    def upsert_node(self, node: common_pb2.Node) -> None:
        """See :meth:`Store.upsert_node`: the node's own cordon fields are
        ignored; the stored ones (set_cordon's) are kept."""
        if not node.name:
            raise ValueError("node.name is required")
        with self._tx() as conn:
            conn.execute("INSERT INTO nodes (name, data) VALUES (?, ?)"
                         " ON CONFLICT (name) DO UPDATE SET data = excluded.data",
                         (node.name, node.SerializeToString()))

    def set_cordon(self, name: str, cordoned: bool, reason: str) -> common_pb2.Node:
        """See :meth:`Store.set_cordon`; uncordoning clears the reason."""
        with self._tx() as conn:
            row = conn.execute("UPDATE nodes SET cordoned = ?, cordon_reason = ? WHERE name = ?"
                               " RETURNING data, cordoned, cordon_reason",
                               (int(cordoned), reason if cordoned else "", name)).fetchone()
            if row is None:
                raise NotFoundError(f"node {name} not found")
        return _node(row)

    def get_node(self, name: str) -> common_pb2.Node | None:
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT data, cordoned, cordon_reason FROM nodes WHERE name = ?",
                               (name,)).fetchone()
        return _node(row) if row else None

    def list_nodes(self) -> list[common_pb2.Node]:
        with self._tx(write=False) as conn:
            rows = conn.execute("SELECT data, cordoned, cordon_reason FROM nodes"
                                " ORDER BY name").fetchall()
        return [_node(row) for row in rows]

    # -- tokens and audit -------------------------------------------------------
    def create_token(self, token: TokenRecord, token_hash: str) -> TokenRecord:
        try:
            with self._tx() as conn:
                conn.execute(f"INSERT INTO tokens ({_TOKEN_COLUMNS}, token_hash)"
                             " VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (token.id, token.kind, token.tenant, token.description,
                              token.created_at, token.revoked_at, token_hash))
        except StoreError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise ConflictError(f"token {token.id} already exists") from exc
            raise
        return token

    def find_token(self, token_hash: str) -> TokenRecord | None:
        with self._tx(write=False) as conn:
            row = conn.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE token_hash = ?",
                               (token_hash,)).fetchone()
        return TokenRecord(*row) if row else None

    def list_tokens(self) -> list[TokenRecord]:
        with self._tx(write=False) as conn:
            rows = conn.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens"
                                " ORDER BY created_at, id").fetchall()
        return [TokenRecord(*row) for row in rows]

    def revoke_token(self, token_id: str, now: float) -> TokenRecord:
        with self._tx() as conn:
            row = conn.execute("UPDATE tokens SET revoked_at = coalesce(revoked_at, ?)"
                               f" WHERE id = ? RETURNING {_TOKEN_COLUMNS}",
                               (now, token_id)).fetchone()
            if row is None:
                raise NotFoundError(f"token {token_id} not found")
        return TokenRecord(*row)

    def tokens_exist(self) -> bool:
        with self._tx(write=False) as conn:
            return conn.execute("SELECT EXISTS (SELECT 1 FROM tokens)").fetchone()[0] == 1

    def append_audit(self, record: AuditRecord) -> AuditRecord:
        with self._tx() as conn:
            seq = conn.execute(
                "INSERT INTO audit (time, actor, action, target, outcome, detail)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (record.time, record.actor, record.action, record.target, record.outcome,
                 record.detail)).lastrowid
        return replace(record, seq=seq)

    def audit_events(self, after_seq: int = 0, limit: int = 1000) -> list[AuditRecord]:
        with self._tx(write=False) as conn:
            rows = conn.execute(f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE seq > ?"
                                " ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()
        return [AuditRecord(*row) for row in rows]
