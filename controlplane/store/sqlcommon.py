"""What the SQL stores share: every query whose SQL is the same in SQLite and
PostgreSQL, written once with ``?`` placeholders.

A store subclass sets :attr:`SqlStore.PARAM` to its driver's marker and
provides ``_tx(write=...)``: a context manager yielding a cursor-like object
with ``execute(sql, params)`` / ``executemany`` whose results support
``fetchone``/``fetchall``, committed on success and rolled back on error.
How each database makes concurrent writers safe (one locked connection, row
and advisory locks) stays in the subclass.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from controlplane.model import states as job_states
from controlplane.store.base import (
    NotFoundError,
    ReplicaRecord,
    ReplicaReport,
    ReportDecision,
    ReportOutcome,
    Store,
    ThroughputRecord,
    Transition,
)
from controlplane.store.transitions import creates_replicas, seconds, timestamp, transform
from xinhe.v1 import agent_pb2, common_pb2

REPLICA_COLUMNS = "job_id, attempt, rank, epoch, node, state, exit_code, message"
THROUGHPUT_COLUMNS = "job_type, model, steps_per_second, reports, ordinal, updated_at"
EVENT_COLUMNS = "seq, job_id, time, from_state, to_state, kind, message, attempt"
_LIVE_STATES = sorted(job_states.NON_TERMINAL)


def event_from_row(row: tuple) -> common_pb2.JobEvent:
    seq, job_id, time, from_state, to_state, kind, message, attempt = row
    return common_pb2.JobEvent(sequence=seq, job_id=job_id, time=timestamp(time),
                               from_state=from_state, to_state=to_state, kind=kind,
                               message=message, attempt=attempt)


def node_from_row(row: tuple) -> common_pb2.Node:
    data, cordoned, reason = row
    node = common_pb2.Node.FromString(data)
    node.cordoned, node.cordon_reason = bool(cordoned), reason
    return node


def prepared_job(job: common_pb2.Job, now: float) -> common_pb2.Job:
    """The row to insert for a submission: a QUEUED copy of ``job`` created at
    ``now``; the tenant defaults to the queue's tenant part, attempt 0 becomes
    1. ValueError without ``job.id`` (before any transaction starts)."""
    if not job.id:
        raise ValueError("job.id is required")
    stored = common_pb2.Job()
    stored.CopyFrom(job)
    stored.tenant = stored.tenant or stored.spec.queue.partition("/")[0]
    stored.state = job_states.QUEUED
    stored.attempt = stored.attempt or 1
    stored.created_at.CopyFrom(timestamp(now))
    return stored


def log_rows(chunks: Sequence[common_pb2.LogChunk], now: float) -> list[tuple]:
    """Rows for the logs table; a chunk without a time gets ``now``, one
    without a byte offset (an older agent) stores NULL."""
    return [(c.job_id, c.attempt, c.rank, c.stream, c.data,
             seconds(c.time) if c.HasField("time") else now,
             c.offset if c.HasField("offset") else None) for c in chunks]


def marks(n: int) -> str:
    """``?, ?, ?`` for an IN list of ``n`` values."""
    return ", ".join("?" * n)


class SqlStore(Store):
    PARAM = "?"

    @abstractmethod
    def _tx(self, write: bool = True) -> AbstractContextManager[Any]:
        """One transaction; see the module doc."""

    def set_leader_term(self, term: int | None) -> None:
        """See :meth:`Store.set_leader_term`; a store whose database has one
        writer by construction (SQLite) has nothing to fence."""

    def _fence(self, cur: Any) -> None:
        """Raise FencedError, in the caller's transaction, when this store's
        leader term is stale; no-op here (see PostgresStore)."""

    def _sql(self, text: str) -> str:
        return text if self.PARAM == "?" else text.replace("?", self.PARAM)

    def _run(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        return cur.execute(self._sql(sql), tuple(params))

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._tx(write=False) as cur:
            return self._run(cur, sql, params).fetchall()

    def _row(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        with self._tx(write=False) as cur:
            return self._run(cur, sql, params).fetchone()

    # -- jobs -----------------------------------------------------------------
    def get_job(self, job_id: str) -> common_pb2.Job | None:
        row = self._row("SELECT data FROM jobs WHERE id = ?", (job_id,))
        return common_pb2.Job.FromString(row[0]) if row else None

    def find_job_by_key(self, tenant: str, client_key: str) -> common_pb2.Job | None:
        """See :meth:`Store.find_job_by_key`; an empty key finds nothing."""
        if not client_key:
            return None
        # "client_key != ''" lets the partial key index answer (no table scan).
        row = self._row("SELECT data FROM jobs WHERE tenant = ? AND client_key = ?"
                        " AND client_key != ''", (tenant, client_key))
        return common_pb2.Job.FromString(row[0]) if row else None

    def list_jobs(self, *, tenant: str | None = None, states: Iterable[int] = (),
                  queue: str | None = None, limit: int = 100,
                  before_seq: int | None = None) -> tuple[list[common_pb2.Job], int | None]:
        """See :meth:`Store.list_jobs`. ``limit`` must be at least 1."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        where, params = ["1 = 1"], []
        for clause, value in (("tenant = ?", tenant), ("queue = ?", queue),
                              ("seq < ?", before_seq)):
            if value is not None:
                where.append(clause)
                params.append(value)
        wanted = sorted(set(states))
        if wanted:
            where.append(f"state IN ({marks(len(wanted))})")
            params.extend(wanted)
        rows = self._rows(f"SELECT seq, data FROM jobs WHERE {' AND '.join(where)}"
                          " ORDER BY seq DESC LIMIT ?", (*params, limit + 1))
        page = [common_pb2.Job.FromString(data) for _, data in rows[:limit]]
        return page, (rows[limit - 1][0] if len(rows) > limit else None)

    def jobs_in_states(self, states: Iterable[int]) -> list[common_pb2.Job]:
        wanted = sorted(set(states))
        if not wanted:
            return []
        rows = self._rows(f"SELECT data FROM jobs WHERE state IN ({marks(len(wanted))})"
                          " ORDER BY seq", wanted)
        return [common_pb2.Job.FromString(data) for (data,) in rows]

    def count_jobs_by_state(self) -> dict[int, int]:
        return dict(self._rows("SELECT state, COUNT(*) FROM jobs GROUP BY state"))

    # -- transitions (inside the subclass's apply transaction) ----------------
    def _apply_one(self, cur: Any, t: Transition, now: float) -> common_pb2.Job:
        row = self._run(cur, "SELECT data FROM jobs WHERE id = ?", (t.job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"job {t.job_id} not found")
        job = common_pb2.Job.FromString(row[0])
        from_state = transform(job, t, now, lambda: self._next_epoch(cur))
        self._run(cur, "UPDATE jobs SET state = ?, priority = ?, queue = ?, attempt = ?,"
                  " epoch = ?, updated_at = ?, data = ? WHERE id = ?",
                  (job.state, job.spec.priority, job.spec.queue, job.attempt, job.epoch, now,
                   job.SerializeToString(), job.id))
        self._insert_event(cur, job.id, now, from_state, t.to_state, t.kind, t.message,
                           job.attempt)
        if creates_replicas(job, t):
            self._insert_replicas(cur, job)
        return job

    def _next_epoch(self, cur: Any) -> int:
        """The next fencing epoch, drawn in the caller's transaction (a
        rollback gives it back)."""
        return self._run(cur, "UPDATE counters SET value = value + 1 WHERE name = 'epoch'"
                         " RETURNING value").fetchone()[0]

    def _insert_replicas(self, cur: Any, job: common_pb2.Job) -> None:
        """One fresh row per placed replica; a re-placement of the same
        attempt replaces the rows it had."""
        cur.executemany(self._sql(
            f"INSERT INTO replicas ({REPLICA_COLUMNS}) VALUES (?, ?, ?, ?, ?, 0, 0, '')"
            " ON CONFLICT (job_id, attempt, rank) DO UPDATE SET epoch = excluded.epoch,"
            " node = excluded.node, state = 0, exit_code = 0, message = ''"),
            [(job.id, job.attempt, r.rank, job.epoch, r.node) for r in job.placement.replicas])

    # -- events ---------------------------------------------------------------
    def _insert_event(self, cur: Any, job_id: str, now: float, from_state: int,
                      to_state: int, kind: str, message: str, attempt: int) -> int:
        """Append an event in the caller's transaction; returns its sequence."""
        return self._run(
            cur, "INSERT INTO events (job_id, time, from_state, to_state, kind, message,"
            " attempt) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq",
            (job_id, now, from_state, to_state, kind, message, attempt)).fetchone()[0]

    def _insert_submitted(self, cur: Any, job: common_pb2.Job, now: float) -> int:
        """The first event of a newly created job (in the caller's transaction)."""
        return self._insert_event(cur, job.id, now, common_pb2.JOB_STATE_UNSPECIFIED,
                                  job_states.QUEUED, "submitted", f"queued in {job.spec.queue}",
                                  job.attempt)

    def events(self, job_id: str, after_seq: int = 0,
               limit: int = 1000) -> list[common_pb2.JobEvent]:
        """See :meth:`Store.events`; an unknown job has no events."""
        rows = self._rows(f"SELECT {EVENT_COLUMNS} FROM events WHERE job_id = ? AND seq > ?"
                          " ORDER BY seq LIMIT ?", (job_id, after_seq, limit))
        return [event_from_row(row) for row in rows]

    # -- replicas -------------------------------------------------------------
    def replicas(self, job_id: str, attempt: int | None = None) -> list[ReplicaRecord]:
        sql, params = f"SELECT {REPLICA_COLUMNS} FROM replicas WHERE job_id = ?", [job_id]
        if attempt is not None:
            sql += " AND attempt = ?"
            params.append(attempt)
        return [ReplicaRecord(*row) for row in self._rows(sql + " ORDER BY attempt, rank",
                                                          params)]

    def _attempt_rows(self, cur: Any, job_id: str, attempt: int) -> list[ReplicaRecord]:
        """:meth:`replicas` of one attempt, read in the caller's transaction."""
        rows = self._run(cur, f"SELECT {REPLICA_COLUMNS} FROM replicas WHERE job_id = ?"
                         " AND attempt = ? ORDER BY rank", (job_id, attempt)).fetchall()
        return [ReplicaRecord(*row) for row in rows]

    def replicas_on_node(self, node: str, active_only: bool = True) -> list[ReplicaRecord]:
        """See :meth:`Store.replicas_on_node`; ordered by job submission,
        attempt, rank."""
        columns = ", ".join(f"r.{c.strip()}" for c in REPLICA_COLUMNS.split(","))
        sql = f"SELECT {columns} FROM replicas r JOIN jobs j ON j.id = r.job_id WHERE r.node = ?"
        params: list = [node]
        if active_only:
            sql += f" AND r.attempt = j.attempt AND j.state IN ({marks(len(_LIVE_STATES))})"
            params.extend(_LIVE_STATES)
        rows = self._rows(sql + " ORDER BY j.seq, r.attempt, r.rank", params)
        return [ReplicaRecord(*row) for row in rows]

    def update_replica(self, ref: agent_pb2.ReplicaRef, state: int, exit_code: int,
                       message: str, node: str | None = None) -> ReplicaRecord | None:
        with self._tx() as cur:
            self._fence(cur)
            return self._update_replica(cur, ReplicaReport(ref, state, exit_code, message, node))

    def _update_replica(self, cur: Any, report: ReplicaReport) -> ReplicaRecord | None:
        """:meth:`update_replica` in the caller's transaction (unfenced)."""
        ref = report.ref
        sql = ("UPDATE replicas SET state = ?, exit_code = ?, message = ? WHERE job_id = ?"
               " AND attempt = ? AND rank = ? AND epoch = ?")
        params: list = [report.state, report.exit_code, report.message, ref.job_id, ref.attempt,
                        ref.rank, ref.epoch]
        if report.node is not None:
            sql += " AND node = ?"
            params.append(report.node)
        row = self._run(cur, f"{sql} RETURNING {REPLICA_COLUMNS}", params).fetchone()
        return ReplicaRecord(*row) if row else None

    def _record_reports(self, cur: Any, reports: Sequence[ReplicaReport],
                        decide: ReportDecision, now: float) -> list[ReportOutcome]:
        """:meth:`Store.record_reports` in the caller's transaction (fenced,
        and on PostgreSQL the reports' jobs locked, by the caller)."""
        return [self._record_report(cur, report, decide, now) for report in reports]

    def _record_report(self, cur: Any, report: ReplicaReport, decide: ReportDecision,
                       now: float) -> ReportOutcome:
        row = self._update_replica(cur, report)
        if row is None:
            return ReportOutcome(row=None)
        data = self._run(cur, "SELECT data FROM jobs WHERE id = ?", (row.job_id,)).fetchone()
        if data is None:
            return ReportOutcome(row=row)
        job = common_pb2.Job.FromString(data[0])
        transitions = tuple(decide(report, job, self._attempt_rows(cur, job.id, job.attempt)))
        stray = [t.job_id for t in transitions if t.job_id != job.id]
        if stray:
            raise ValueError(f"a report on {job.id} may change only that job, not {stray}")
        changed = tuple(self._apply_one(cur, t, now) for t in transitions)
        return ReportOutcome(row=row, job=job, transitions=transitions, changed=changed)

    # -- logs -----------------------------------------------------------------
    def logs(self, job_id: str, after_seq: int = 0, rank: int | None = None,
             limit: int = 1000) -> list[common_pb2.LogChunk]:
        """A job's log chunks with sequence > after_seq, oldest first."""
        sql = ("SELECT seq, job_id, attempt, rank, stream, data, time, byte_offset FROM logs"
               " WHERE job_id = ? AND seq > ?")
        params: list = [job_id, after_seq]
        if rank is not None:
            sql += " AND rank = ?"
            params.append(rank)
        rows = self._rows(sql + " ORDER BY seq LIMIT ?", (*params, limit))
        return [common_pb2.LogChunk(sequence=seq, job_id=job, attempt=attempt, rank=r,
                                    stream=stream, data=bytes(data), time=timestamp(time),
                                    offset=offset)
                for seq, job, attempt, r, stream, data, time, offset in rows]

    # -- nodes ----------------------------------------------------------------
    def upsert_node(self, node: common_pb2.Node) -> None:
        """See :meth:`Store.upsert_node`: the node's own cordon fields are
        ignored; the stored ones (set_cordon's) are kept."""
        if not node.name:
            raise ValueError("node.name is required")
        with self._tx() as cur:
            self._run(cur, "INSERT INTO nodes (name, data) VALUES (?, ?)"
                      " ON CONFLICT (name) DO UPDATE SET data = excluded.data",
                      (node.name, node.SerializeToString()))

    def get_node(self, name: str) -> common_pb2.Node | None:
        row = self._row("SELECT data, cordoned, cordon_reason FROM nodes WHERE name = ?",
                        (name,))
        return node_from_row(row) if row else None

    def list_nodes(self) -> list[common_pb2.Node]:
        rows = self._rows("SELECT data, cordoned, cordon_reason FROM nodes ORDER BY name")
        return [node_from_row(row) for row in rows]

    # -- learned throughput -----------------------------------------------------
    def save_throughput(self, records: Sequence[ThroughputRecord],
                        forget_types: Sequence[str] = ()) -> None:
        """See :meth:`Store.save_throughput`; the first ordinal of a row is kept.
        Fenced like job writes: a deposed leader cannot overwrite what the
        new one learned with its older figures."""
        if not records and not forget_types:
            return
        with self._tx() as cur:
            self._fence(cur)
            if forget_types:
                cur.executemany(self._sql("DELETE FROM throughput WHERE job_type = ?"),
                                [(kind,) for kind in forget_types])
            if not records:
                return
            cur.executemany(self._sql(
                f"INSERT INTO throughput ({THROUGHPUT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (job_type, model) DO UPDATE SET"
                " steps_per_second = excluded.steps_per_second, reports = excluded.reports,"
                " updated_at = excluded.updated_at"),
                [(r.job_type, r.model, r.steps_per_second, r.reports, r.ordinal, r.updated_at)
                 for r in records])

    def load_throughput(self) -> list[ThroughputRecord]:
        rows = self._rows(f"SELECT {THROUGHPUT_COLUMNS} FROM throughput"
                          " ORDER BY ordinal, job_type, model")
        return [ThroughputRecord(*row) for row in rows]
