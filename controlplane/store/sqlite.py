"""The embedded store: one SQLite file in WAL mode, ``synchronous=FULL``.

One write connection, guarded by a lock, serves every writing thread of the
gRPC server, and a second, read-only one (its own lock) every reading thread,
so reads never queue behind a commit. Each public method is one transaction
that is on disk before it returns
(acknowledged = durable). Writers take the write lock up front
(``BEGIN IMMEDIATE``) so a transaction never fails half-way on a lock upgrade.
Errors from SQLite surface as :class:`StoreError`; a refused transition
(:class:`InvalidTransition`, :class:`ConflictError`) rolls back the whole
batch.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from controlplane.store.base import (
    AuditRecord,
    ConflictError,
    NotFoundError,
    ReplicaReport,
    ReportDecision,
    ReportOutcome,
    StoreError,
    TokenRecord,
    Transition,
)
from controlplane.store.sqlcommon import (
    SqlStore,
    event_from_row,
    log_rows,
    node_from_row,
    prepared_job,
)
from controlplane.store.sqlite_schema import configure, migrate
from xinhe.v1 import common_pb2

_TOKEN_COLUMNS = "id, kind, tenant, description, created_at, revoked_at, node"
_AUDIT_COLUMNS = "seq, time, actor, action, target, outcome, detail"




# The key index is partial (WHERE client_key != ''): SQLite uses it only
# when the query repeats that condition, else every submission scans the
# whole jobs table.
KEY_LOOKUP = "SELECT data FROM jobs WHERE tenant = ? AND client_key = ? AND client_key != ''"


class SqliteStore(SqlStore):
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
        self._read_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = self._open_reader()

    def _open_reader(self) -> sqlite3.Connection:
        """The second, read-only connection; see :meth:`_tx`."""
        try:
            reader = sqlite3.connect(self.path, timeout=10, isolation_level=None,
                                     check_same_thread=False)
            reader.execute("PRAGMA busy_timeout = 10000")
            reader.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"cannot open {self.path} for reading: {exc}") from exc
        return reader

    # -- transactions ---------------------------------------------------------
    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction: commit on success, roll back on any error; SQLite
        errors become StoreError. Writes run on the write connection under
        its lock; reads on a second connection under their own lock, so a
        read never waits for a write in progress. In WAL mode a read sees
        every transaction committed before it began, so an acknowledged
        (committed) write is always visible to later reads."""
        lock = self._lock if write else self._read_lock
        with lock:
            conn = self._conn if write else self._reader
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
        with self._lock, self._read_lock:
            for conn in (self._conn, getattr(self, "_reader", None)):
                if conn is not None:
                    conn.close()
            self._conn = self._reader = None

    # -- jobs -----------------------------------------------------------------
    def create_job(self, job: common_pb2.Job, now: float) -> tuple[common_pb2.Job, bool]:
        """See :meth:`Store.create_job`. ``job.id`` is required; the tenant
        defaults to the queue's tenant part; attempt 0 becomes 1."""
        return self.create_jobs([job], now)[0]

    def create_jobs(self, jobs: Sequence[common_pb2.Job],
                    now: float) -> list[tuple[common_pb2.Job, bool]]:
        """See :meth:`Store.create_jobs`: one transaction; a key seen earlier
        in the batch finds that job (the SELECT sees this transaction's rows)."""
        prepared = [prepared_job(job, now) for job in jobs]
        out = []
        with self._tx() as conn:
            for stored in prepared:
                if stored.client_key:
                    row = conn.execute(KEY_LOOKUP, (stored.tenant, stored.client_key)).fetchone()
                    if row is not None:
                        out.append((common_pb2.Job.FromString(row[0]), False))
                        continue
                self._insert_job(conn, stored, now)
                self._insert_submitted(conn, stored, now)
                out.append((stored, True))
        return out

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

    # -- transitions ----------------------------------------------------------
    def apply(self, transitions: Sequence[Transition], now: float) -> list[common_pb2.Job]:
        """See :meth:`Store.apply`. Per transition, in order: guards
        (ConflictError), state machine (InvalidTransition), clear_placement,
        updates (ValueError for a store-owned field), new_epoch,
        increment_attempt, state and its timestamp, event, replica rows."""
        with self._tx() as conn:
            return [self._apply_one(conn, t, now) for t in transitions]

    def record_reports(self, reports: Sequence[ReplicaReport], decide: ReportDecision,
                       now: float) -> list[ReportOutcome]:
        """See :meth:`Store.record_reports`."""
        if not reports:
            return []
        with self._tx() as conn:
            return self._record_reports(conn, reports, decide, now)

    # -- events ---------------------------------------------------------------
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
        return event_from_row((seq, job_id, now, state, state, kind, message, attempt))

    # -- logs -----------------------------------------------------------------
    def append_logs(self, chunks: Sequence[common_pb2.LogChunk], now: float) -> None:
        """See :meth:`Store.append_logs`; a chunk without a time gets ``now``."""
        rows = log_rows(chunks, now)
        with self._tx() as conn:  # a chunk whose offset is stored already is a resend
            conn.executemany("INSERT INTO logs (job_id, attempt, rank, stream, data, time,"
                             " byte_offset) VALUES (?, ?, ?, ?, ?, ?, ?)"
                             " ON CONFLICT DO NOTHING", rows)

    # -- nodes ----------------------------------------------------------------
    def set_cordon(self, name: str, cordoned: bool, reason: str) -> common_pb2.Node:
        """See :meth:`Store.set_cordon`; uncordoning clears the reason."""
        with self._tx() as conn:
            row = conn.execute("UPDATE nodes SET cordoned = ?, cordon_reason = ? WHERE name = ?"
                               " RETURNING data, cordoned, cordon_reason",
                               (int(cordoned), reason if cordoned else "", name)).fetchone()
            if row is None:
                raise NotFoundError(f"node {name} not found")
        return node_from_row(row)

    # -- tokens and audit -------------------------------------------------------
    def create_token(self, token: TokenRecord, token_hash: str) -> TokenRecord:
        try:
            with self._tx() as conn:
                conn.execute(f"INSERT INTO tokens ({_TOKEN_COLUMNS}, token_hash)"
                             " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (token.id, token.kind, token.tenant, token.description,
                              token.created_at, token.revoked_at, token.node, token_hash))
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
