"""The job state machine: the edges the lifecycle needs, and nothing else."""

from __future__ import annotations

import itertools

import pytest

from controlplane.model import states
from controlplane.model.states import (
    ACTIVE,
    CANCELLED,
    FAILED,
    MIGRATING,
    PREEMPTED,
    QUEUED,
    RUNNING,
    SCHEDULED,
    STARTING,
    SUCCEEDED,
    TERMINAL,
    InvalidTransition,
    can_transition,
    check_transition,
    is_terminal,
    state_name,
)

EXPECTED_EDGES = {
    (QUEUED, SCHEDULED), (QUEUED, CANCELLED), (QUEUED, FAILED),
    (SCHEDULED, STARTING), (SCHEDULED, RUNNING), (SCHEDULED, QUEUED), (SCHEDULED, FAILED),
    (SCHEDULED, CANCELLED), (SCHEDULED, PREEMPTED),
    (STARTING, RUNNING), (STARTING, FAILED), (STARTING, CANCELLED), (STARTING, QUEUED),
    (STARTING, SUCCEEDED), (STARTING, PREEMPTED),
    (RUNNING, SUCCEEDED), (RUNNING, FAILED), (RUNNING, CANCELLED), (RUNNING, QUEUED),
    (RUNNING, PREEMPTED), (RUNNING, MIGRATING),
    (PREEMPTED, QUEUED), (PREEMPTED, CANCELLED),
    (MIGRATING, QUEUED), (MIGRATING, FAILED), (MIGRATING, CANCELLED), (MIGRATING, SUCCEEDED),
}


@pytest.mark.parametrize(("frm", "to"), sorted(EXPECTED_EDGES))
def test_every_lifecycle_edge_is_allowed(frm: int, to: int) -> None:
    assert can_transition(frm, to)
    check_transition(frm, to)


def test_the_table_has_exactly_the_lifecycle_edges() -> None:
    assert set(states.TRANSITIONS) == EXPECTED_EDGES


def test_every_edge_explains_itself() -> None:
    assert all(why.strip() for why in states.TRANSITIONS.values())


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_terminal_states_have_no_exits(terminal: int) -> None:
    assert is_terminal(terminal)
    assert states.successors(terminal) == frozenset()
    for to in states.ALL_STATES:
        assert not can_transition(terminal, to)


def test_terminal_and_active_sets() -> None:
    assert {SUCCEEDED, FAILED, CANCELLED} == TERMINAL
    assert {SCHEDULED, STARTING, RUNNING} == ACTIVE
    assert not any(is_terminal(s) for s in (QUEUED, PREEMPTED, MIGRATING, *ACTIVE))


def test_every_non_terminal_state_can_end() -> None:
    """No state is a trap: from anywhere not terminal, a terminal state is reachable."""
    for start in states.NON_TERMINAL:
        seen, todo = {start}, [start]
        while todo:
            for nxt in states.successors(todo.pop()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert seen & TERMINAL, state_name(start)


FORBIDDEN_SAMPLE = [
    (QUEUED, RUNNING), (QUEUED, STARTING), (QUEUED, SUCCEEDED), (QUEUED, QUEUED),
    (RUNNING, RUNNING), (RUNNING, SCHEDULED), (RUNNING, STARTING),
    (SUCCEEDED, QUEUED), (FAILED, RUNNING), (CANCELLED, QUEUED), (CANCELLED, CANCELLED),
    (PREEMPTED, RUNNING), (MIGRATING, RUNNING), (SCHEDULED, MIGRATING),
    (SCHEDULED, SUCCEEDED), (PREEMPTED, FAILED),
]


@pytest.mark.parametrize(("frm", "to"), FORBIDDEN_SAMPLE)
def test_forbidden_edges_are_refused_naming_both_states(frm: int, to: int) -> None:
    assert not can_transition(frm, to)
    with pytest.raises(InvalidTransition) as info:
        check_transition(frm, to)
    assert state_name(frm) in str(info.value)
    assert state_name(to) in str(info.value)
    assert isinstance(info.value, ValueError)
    assert (info.value.from_state, info.value.to_state) == (frm, to)


def test_everything_outside_the_table_is_refused() -> None:
    for frm, to in itertools.product(states.ALL_STATES, repeat=2):
        assert can_transition(frm, to) == ((frm, to) in EXPECTED_EDGES)


def test_state_names() -> None:
    assert state_name(RUNNING) == "RUNNING"
    assert state_name(QUEUED) == "QUEUED"
    assert state_name(0) == "UNSPECIFIED"
    assert state_name(999) == "UNKNOWN(999)"


def test_store_logs_a_refused_transition(tmp_path, caplog) -> None:
    from controlplane.store.base import Transition
    from controlplane.store.sqlite import SqliteStore
    from xinhe.v1 import common_pb2

    store = SqliteStore(tmp_path / "x.db")
    job = common_pb2.Job(id="j-1", tenant="t", spec=common_pb2.JobSpec(queue="t/q"))
    store.create_job(job, 1.0)
    with caplog.at_level("ERROR"), pytest.raises(InvalidTransition):
        store.apply([Transition("j-1", common_pb2.JOB_STATE_SUCCEEDED, "bogus")], 2.0)
    assert "j-1" in caplog.text and "QUEUED" in caplog.text and "SUCCEEDED" in caplog.text
    store.close()
