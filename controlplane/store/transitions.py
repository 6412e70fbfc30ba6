"""What a :class:`Transition` does to a job, independent of the database.

Every store implementation loads the job, calls :func:`transform` inside its
transaction, and writes back the result with the event; so the semantics of
``Store.apply`` (guards, state machine, merge, epoch, attempt, timestamps)
live in one place and SQLite and PostgreSQL cannot drift apart.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from google.protobuf import timestamp_pb2

from controlplane.model import states
from controlplane.store.base import ConflictError, Transition
from xinhe.v1 import common_pb2

log = logging.getLogger(__name__)

# Fields of a Job only the store writes; Transition.updates may not set them.
STORE_OWNED_FIELDS = frozenset(
    {"id", "tenant", "client_key", "state", "created_at", "epoch", "attempt"})


def timestamp(now: float) -> timestamp_pb2.Timestamp:
    """``now`` (seconds since the epoch) as a protobuf Timestamp."""
    seconds = math.floor(now)
    nanos = min(round((now - seconds) * 1e9), 999_999_999)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def seconds(ts: timestamp_pb2.Timestamp) -> float:
    """A protobuf Timestamp as seconds since the epoch."""
    return ts.seconds + ts.nanos / 1e9


def check_guards(job: common_pb2.Job, t: Transition) -> None:
    """ConflictError when the job is not in an expected state or epoch."""
    if t.expect_states is not None and job.state not in t.expect_states:
        expected = ", ".join(sorted(states.state_name(s) for s in t.expect_states))
        raise ConflictError(f"job {job.id} is {states.state_name(job.state)}, "
                            f"expected one of: {expected}")
    if t.expect_epoch is not None and job.epoch != t.expect_epoch:
        raise ConflictError(f"job {job.id} has epoch {job.epoch}, expected {t.expect_epoch}")


def check_updates(updates: common_pb2.Job) -> None:
    """ValueError when ``updates`` sets a field only the store writes."""
    for fd, _ in updates.ListFields():
        if fd.name in STORE_OWNED_FIELDS:
            raise ValueError(f"Transition.updates may not set job.{fd.name}: the store owns it")


def merge_updates(job: common_pb2.Job, updates: common_pb2.Job) -> None:
    """Every top-level field set in ``updates`` replaces the job's field.

    Raises ValueError for a store-owned field (identity, state, epoch,
    attempt): those change only through the Transition's own flags.
    """
    check_updates(updates)
    for fd, value in updates.ListFields():
        if fd.is_repeated:
            target = getattr(job, fd.name)
            del target[:]
            target.extend(value)
        elif fd.message_type is not None:
            getattr(job, fd.name).CopyFrom(value)
        else:
            setattr(job, fd.name, value)


def stamp(job: common_pb2.Job, state: int, now: float) -> None:
    """Set the timestamp of entering ``state``, if it has one."""
    if state == states.SCHEDULED:
        job.scheduled_at.CopyFrom(timestamp(now))
    elif state == states.RUNNING:
        job.started_at.CopyFrom(timestamp(now))
    elif states.is_terminal(state):
        job.finished_at.CopyFrom(timestamp(now))


def transform(job: common_pb2.Job, t: Transition, now: float,
              next_epoch: Callable[[], int]) -> int:
    """Apply ``t`` to ``job`` in place and return the state it left.

    Order: guards (ConflictError), state machine (InvalidTransition),
    clear_placement, updates, new_epoch (``next_epoch()``, called only when
    asked), increment_attempt, state and its timestamp. Raises (ConflictError,
    InvalidTransition, ValueError) before touching ``job``.
    """
    check_guards(job, t)
    try:
        states.check_transition(job.state, t.to_state)
    except states.InvalidTransition as exc:
        # Refused and logged: an invalid edge means a caller's logic is wrong.
        log.error("job %s: %s (%s)", job.id, exc, t.kind)
        raise
    if t.updates is not None:
        check_updates(t.updates)
    from_state = job.state
    if t.clear_placement:
        job.ClearField("placement")
    if t.clear_placement_target:
        job.ClearField("placement_target")
    if t.updates is not None:
        merge_updates(job, t.updates)
    if t.new_epoch:
        job.epoch = next_epoch()
    if t.increment_attempt:
        job.attempt += 1
    job.state = t.to_state
    stamp(job, t.to_state, now)
    return from_state


def creates_replicas(job: common_pb2.Job, t: Transition) -> bool:
    """Entering SCHEDULED with a placement creates one replica row per rank."""
    return t.to_state == states.SCHEDULED and bool(job.placement.replicas)
