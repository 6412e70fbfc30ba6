"""The store interface. Every method is one transaction: when it returns, the
change is durable (acknowledged means durable). Jobs and nodes are kept as
``xinhe.v1`` messages plus the indexed columns needed to query them, so the
API layer returns what the store holds without translation.

Implementations: ``sqlite.SqliteStore`` (embedded default). PostgreSQL slots
in beside it with the same contract.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from xinhe.v1 import agent_pb2, common_pb2


class StoreError(Exception):
    """The store could not complete an operation (disk, connection, ...)."""


class NotFoundError(StoreError):
    """The named job or node does not exist."""


class ConflictError(StoreError):
    """A guarded update lost: the job was not in the expected state/epoch."""


class FencedError(StoreError):
    """A write from a deposed leader: another replica was elected since this
    one's term began (see :meth:`Store.set_leader_term`). Nothing was written."""


@dataclass(frozen=True)
class Transition:
    """One state change of one job, applied atomically with its event.

    ``expect_states``/``expect_epoch`` guard the update (compare-and-set):
    when the job is no longer as expected the store raises ConflictError and
    changes nothing. ``updates`` is a partial Job: every top-level field set in
    it (``ListFields()``) replaces the stored field (placement, exit_code,
    state_reason ...). ``clear_placement`` empties the placement (requeue).
    Timestamps of the new state (scheduled_at on SCHEDULED, started_at on
    RUNNING, finished_at on a terminal state) are set by the store from ``now``.
    """

    job_id: str
    to_state: int  # common_pb2.JobState
    kind: str  # event kind: "placed", "started", "succeeded", ...
    message: str = ""
    expect_states: frozenset[int] | None = None
    expect_epoch: int | None = None
    updates: common_pb2.Job | None = None
    clear_placement: bool = False
    # Clear the migration pin (Job.placement_target): the job runs on its target.
    clear_placement_target: bool = False
    # Start a new attempt with a fresh fencing epoch (placement, retry).
    new_epoch: bool = False
    increment_attempt: bool = False


@dataclass(frozen=True)
class TokenRecord:
    """A bearer token's record; the secret itself is never stored, only its
    SHA-256 (``token_hash``, hex)."""

    id: str
    kind: str  # "tenant" | "admin" | "agent"
    tenant: str  # the tenant a tenant token acts for; "" otherwise
    description: str
    created_at: float
    revoked_at: float | None = None
    node: str = ""  # the only node an agent token may act as; "" = any node


@dataclass(frozen=True)
class AuditRecord:
    """One audited action: an admin action or a refused call."""

    seq: int
    time: float
    actor: str  # "token:<id>", "admin:static", "anonymous", "cli:<user>"
    action: str  # "tokens.create", "CordonNode", "auth.unauthenticated", ...
    target: str
    outcome: str  # "ok" | "denied"
    detail: str


@dataclass(frozen=True)
class ThroughputRecord:
    """Learned speed of one job type on one chip model (services/throughput.py)."""

    job_type: str
    model: str
    steps_per_second: float  # exponentially weighted
    reports: int
    ordinal: int  # order of first measurement among all records (the factors' anchor)
    updated_at: float


@dataclass(frozen=True)
class ReplicaRecord:
    job_id: str
    attempt: int
    rank: int
    epoch: int
    node: str
    state: int  # agent_pb2.ReplicaState
    exit_code: int
    message: str


@dataclass(frozen=True)
class ReplicaReport:
    """An agent's report on one replica (see :meth:`Store.record_reports`)."""

    ref: agent_pb2.ReplicaRef
    state: int  # agent_pb2.ReplicaState
    exit_code: int = 0
    message: str = ""
    node: str | None = None  # the reporting agent's node; None = not checked


@dataclass(frozen=True)
class ReportOutcome:
    """What one report did, as seen inside the transaction that recorded it."""

    row: ReplicaRecord | None  # the updated row; None = no replica matched (nothing written)
    job: common_pb2.Job | None = None  # its job after the row's update, before ``changed``
    transitions: tuple[Transition, ...] = ()  # what ``decide`` called for
    changed: tuple[common_pb2.Job, ...] = ()  # the job after each of them


# ``decide(report, job, rows)``: the transitions of ``job`` that a recorded
# report calls for, given the replica rows of the job's current attempt.
ReportDecision = Callable[[ReplicaReport, common_pb2.Job, Sequence[ReplicaRecord]],
                          Sequence[Transition]]


class Store(ABC):
    # -- jobs ---------------------------------------------------------------
    @abstractmethod
    def create_job(self, job: common_pb2.Job, now: float) -> tuple[common_pb2.Job, bool]:
        """Insert a QUEUED job and its "submitted" event.

        Idempotent on (job.tenant, job.client_key) when client_key is set:
        returns (existing job, False) instead of inserting. Otherwise returns
        (stored job, True). ``created_at`` is set from ``now``.
        """

    @abstractmethod
    def create_jobs(self, jobs: Sequence[common_pb2.Job],
                    now: float) -> list[tuple[common_pb2.Job, bool]]:
        """:meth:`create_job` for several jobs in ONE transaction (group
        commit: one fsync for a burst of submissions), all or nothing.

        Returns one (job, created) per input, in order. A client_key repeated
        inside the batch is created once; the later entries get (that job,
        False), exactly as if submitted one after the other.
        """

    @abstractmethod
    def get_job(self, job_id: str) -> common_pb2.Job | None: ...

    @abstractmethod
    def find_job_by_key(self, tenant: str, client_key: str) -> common_pb2.Job | None:
        """The job a tenant submitted with this idempotency key, or None."""

    @abstractmethod
    def list_jobs(
        self,
        *,
        tenant: str | None = None,
        states: Iterable[int] = (),
        queue: str | None = None,
        limit: int = 100,
        before_seq: int | None = None,
    ) -> tuple[list[common_pb2.Job], int | None]:
        """Jobs newest first; returns (page, cursor for the next page or None).

        ``before_seq`` is the cursor returned by the previous page.
        """

    @abstractmethod
    def jobs_in_states(self, states: Iterable[int]) -> list[common_pb2.Job]:
        """All jobs in the given states, oldest submission first."""

    @abstractmethod
    def apply(self, transitions: Sequence[Transition], now: float) -> list[common_pb2.Job]:
        """Apply transitions in ONE transaction, all or nothing.

        Each is validated by the job state machine (invalid -> ValueError) and
        by its guards (-> ConflictError), appends a JobEvent, and for
        ``new_epoch`` draws the next value of a store-wide epoch counter.
        Entering SCHEDULED with a placement creates one replica row per
        placed replica (state UNSPECIFIED) for the job's attempt and epoch.
        Returns the updated jobs in order.
        """

    @abstractmethod
    def count_jobs_by_state(self) -> dict[int, int]: ...

    # -- events -------------------------------------------------------------
    @abstractmethod
    def events(self, job_id: str, after_seq: int = 0,
               limit: int = 1000) -> list[common_pb2.JobEvent]:
        """A job's events with sequence > after_seq, oldest first."""

    @abstractmethod
    def add_event(self, job_id: str, kind: str, message: str, now: float) -> common_pb2.JobEvent:
        """Append an informational event (state unchanged)."""

    # -- replicas -----------------------------------------------------------
    @abstractmethod
    def replicas(self, job_id: str, attempt: int | None = None) -> list[ReplicaRecord]:
        """Replica rows of a job (of one attempt, or all), by attempt then rank."""

    @abstractmethod
    def replicas_on_node(self, node: str, active_only: bool = True) -> list[ReplicaRecord]:
        """Replica rows placed on a node; active = job not terminal and row is
        of the job's current attempt."""

    @abstractmethod
    def update_replica(self, ref: agent_pb2.ReplicaRef, state: int, exit_code: int,
                       message: str, node: str | None = None) -> ReplicaRecord | None:
        """Record a replica's reported state. Returns None (and changes
        nothing) when no row matches ref's job, attempt, rank and epoch, or,
        with ``node``, when the row is placed on another node (an agent
        reports only on its own node's replicas)."""

    @abstractmethod
    def record_reports(self, reports: Sequence[ReplicaReport], decide: ReportDecision,
                       now: float) -> list[ReportOutcome]:
        """Record replica reports and the job changes they call for, in ONE
        transaction (group commit: one fsync for the reports of many agents),
        all or nothing, in order; one outcome per report.

        Per report: :meth:`update_replica` (epoch and node checks); when a
        row matched and its job exists, ``decide(report, job, rows)`` with
        the rows of the job's current attempt (earlier reports' updates
        included) names transitions of that job only (others: ValueError),
        applied as :meth:`apply` does. ``decide`` runs inside the
        transaction: it must be quick and do no I/O. Fenced like ``apply``;
        any error (a guard, the state machine, ``decide`` raising) rolls back
        the whole batch."""

    # -- logs ---------------------------------------------------------------
    @abstractmethod
    def append_logs(self, chunks: Sequence[common_pb2.LogChunk], now: float) -> None:
        """Store log chunks; assigns each a per-store increasing sequence.

        A chunk with an ``offset`` is stored at most once per (job, attempt,
        rank, stream, offset): a copy of one already stored is ignored, so
        agents can resend unacknowledged chunks safely. One transaction."""

    @abstractmethod
    def logs(self, job_id: str, after_seq: int = 0, rank: int | None = None,
             limit: int = 1000) -> list[common_pb2.LogChunk]: ...

    # -- nodes --------------------------------------------------------------
    @abstractmethod
    def upsert_node(self, node: common_pb2.Node) -> None:
        """Insert or replace a node's record (cordon fields are preserved
        from the stored record: only set_cordon changes them)."""

    @abstractmethod
    def set_cordon(self, name: str, cordoned: bool, reason: str) -> common_pb2.Node:
        """Cordon/uncordon; NotFoundError for an unknown node."""

    @abstractmethod
    def get_node(self, name: str) -> common_pb2.Node | None: ...

    @abstractmethod
    def list_nodes(self) -> list[common_pb2.Node]: ...

    # -- tokens and audit -----------------------------------------------------
    @abstractmethod
    def create_token(self, token: TokenRecord, token_hash: str) -> TokenRecord:
        """Store a new token; ConflictError when the id or hash exists."""

    @abstractmethod
    def find_token(self, token_hash: str) -> TokenRecord | None:
        """The token with this SHA-256 hex digest (revoked ones too), or None."""

    @abstractmethod
    def list_tokens(self) -> list[TokenRecord]:
        """Every token, revoked ones included, oldest first."""

    @abstractmethod
    def revoke_token(self, token_id: str, now: float) -> TokenRecord:
        """Mark a token revoked at ``now`` (kept for the audit trail); a
        second revoke keeps the first time. NotFoundError for an unknown id."""

    @abstractmethod
    def tokens_exist(self) -> bool:
        """Whether any token was ever created (revoked ones count: a server
        that once required tokens never silently opens up again)."""

    @abstractmethod
    def append_audit(self, record: AuditRecord) -> AuditRecord:
        """Append an audit record (its ``seq`` is ignored and assigned)."""

    @abstractmethod
    def audit_events(self, after_seq: int = 0, limit: int = 1000) -> list[AuditRecord]:
        """Audit records with seq > after_seq, oldest first."""

    # -- learned throughput -----------------------------------------------------
    @abstractmethod
    def save_throughput(self, records: Sequence[ThroughputRecord],
                        forget_types: Sequence[str] = ()) -> None:
        """Delete every rate of the job types ``forget_types``, then insert or
        replace these (job type, model) rates, in ONE transaction."""

    @abstractmethod
    def load_throughput(self) -> list[ThroughputRecord]:
        """Every stored rate, by ``ordinal`` (first measured first)."""

    # -- leadership -----------------------------------------------------------
    @abstractmethod
    def set_leader_term(self, term: int | None) -> None:
        """Fence this store's job-state writes to leader term ``term`` (None:
        unfenced). While set, ``apply``, ``update_replica`` and
        ``record_reports`` check, inside their transaction, that the store's
        term is still ``term`` and raise FencedError otherwise, so a leader
        that lost its election without noticing yet cannot change jobs the
        new leader now owns."""

    # -- lifecycle ----------------------------------------------------------
    @abstractmethod
    def close(self) -> None: ...
