"""The job state machine: every allowed transition, listed once.

A job moves only along the edges in :data:`TRANSITIONS`; the store refuses
anything else (:func:`check_transition`), so a reconciler bug cannot, say,
resurrect a cancelled job. Terminal states (SUCCEEDED, FAILED, CANCELLED) have
no edges out. PREEMPTED and MIGRATING are transient and lead back to QUEUED.

::

    QUEUED ─▶ SCHEDULED ─▶ STARTING ─▶ RUNNING ─▶ SUCCEEDED | FAILED | CANCELLED
       ▲          │            │           │
       └──────────┴────────────┴───────────┴── node lost / preempted / migrated
"""

from __future__ import annotations

from collections.abc import Mapping

from xinhe.v1 import common_pb2

QUEUED = common_pb2.JOB_STATE_QUEUED
SCHEDULED = common_pb2.JOB_STATE_SCHEDULED
STARTING = common_pb2.JOB_STATE_STARTING
RUNNING = common_pb2.JOB_STATE_RUNNING
SUCCEEDED = common_pb2.JOB_STATE_SUCCEEDED
FAILED = common_pb2.JOB_STATE_FAILED
CANCELLED = common_pb2.JOB_STATE_CANCELLED
PREEMPTED = common_pb2.JOB_STATE_PREEMPTED
MIGRATING = common_pb2.JOB_STATE_MIGRATING

# (from, to) -> why the edge exists. The table is the state machine.
TRANSITIONS: Mapping[tuple[int, int], str] = {
    # -- waiting for devices -------------------------------------------------
    (QUEUED, SCHEDULED): "the scheduler placed the gang on devices",
    (QUEUED, CANCELLED): "cancelled before it was ever placed",
    (QUEUED, FAILED): "rejected or never schedulable (no pool can ever fit it)",
    # -- placed, launch instructions on their way ------------------------------
    (SCHEDULED, STARTING): "an agent started the first replica process",
    (SCHEDULED, RUNNING): "agents reported every replica running directly",
    (SCHEDULED, QUEUED): "launch failed or the node was lost before start: retry",
    (SCHEDULED, FAILED): "launch failed and no retry is left",
    (SCHEDULED, CANCELLED): "cancelled after placement, before any process started",
    (SCHEDULED, PREEMPTED): "evicted for a higher-priority job before it started",
    # -- some replicas started -----------------------------------------------
    (STARTING, RUNNING): "every replica of the gang is running",
    (STARTING, FAILED): "a replica failed to start or exited non-zero, no retry left",
    (STARTING, CANCELLED): "cancelled while replicas were starting",
    (STARTING, QUEUED): "a node was lost while starting: retry",
    (STARTING, SUCCEEDED): "a short job finished before every replica reported running",
    (STARTING, PREEMPTED): "evicted for a higher-priority job while starting",
    # -- running ---------------------------------------------------------------
    (RUNNING, SUCCEEDED): "every replica exited 0",
    (RUNNING, FAILED): "a replica failed and no retry is left",
    (RUNNING, CANCELLED): "cancelled by the tenant or an operator",
    (RUNNING, QUEUED): "a replica failed or its node was lost, and a retry is left",
    (RUNNING, PREEMPTED): "evicted for a higher-priority job or a quota reclaim",
    (RUNNING, MIGRATING): "told to checkpoint so it can move to other devices",
    # -- transient: back to the queue ------------------------------------------
    (PREEMPTED, QUEUED): "replicas stopped; wait for devices again",
    (PREEMPTED, CANCELLED): "cancelled while being evicted",
    (MIGRATING, QUEUED): "checkpoint written and replicas stopped; re-place it",
    (MIGRATING, FAILED): "checkpointing or stopping failed and no retry is left",
    (MIGRATING, CANCELLED): "cancelled while migrating",
    (MIGRATING, SUCCEEDED): "every replica finished before it could be stopped to migrate",
}

TERMINAL: frozenset[int] = frozenset({SUCCEEDED, FAILED, CANCELLED})
# States in which the job holds devices and has processes (or is about to).
ACTIVE: frozenset[int] = frozenset({SCHEDULED, STARTING, RUNNING})
ALL_STATES: frozenset[int] = frozenset(
    v for v in common_pb2.JobState.values() if v != common_pb2.JOB_STATE_UNSPECIFIED
)
NON_TERMINAL: frozenset[int] = ALL_STATES - TERMINAL


class InvalidTransition(ValueError):
    """A state change the job state machine does not allow."""

    def __init__(self, from_state: int, to_state: int) -> None:
        self.from_state = from_state
        self.to_state = to_state
        super().__init__(
            f"invalid job state transition {state_name(from_state)} -> {state_name(to_state)}"
        )


def state_name(state: int) -> str:
    """``JOB_STATE_RUNNING`` -> ``"RUNNING"``; unknown numbers print as such."""
    try:
        return common_pb2.JobState.Name(state).removeprefix("JOB_STATE_")
    except ValueError:
        return f"UNKNOWN({state})"


def is_terminal(state: int) -> bool:
    """True for SUCCEEDED, FAILED and CANCELLED: nothing follows them."""
    return state in TERMINAL


def can_transition(from_state: int, to_state: int) -> bool:
    """True when the table has the edge ``from_state -> to_state``."""
    return (from_state, to_state) in TRANSITIONS


def check_transition(from_state: int, to_state: int) -> None:
    """Raise :class:`InvalidTransition` unless the edge is in the table."""
    if (from_state, to_state) not in TRANSITIONS:
        raise InvalidTransition(from_state, to_state)


def successors(state: int) -> frozenset[int]:
    """The states a job in ``state`` may move to."""
    return frozenset(to for (frm, to) in TRANSITIONS if frm == state)
