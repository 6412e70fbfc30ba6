"""Migration, control-plane side: targets, pins, and the MIGRATING reconcile step."""

from __future__ import annotations

import pytest

from controlplane.model.catalogue import default_catalogue
from controlplane.scheduler.core import schedule
from controlplane.scheduler.types import Policy
from controlplane.services.migration_target import (
    FAMILY,
    MODEL,
    POOL,
    Filters,
    Target,
    TargetError,
    narrow,
    pinned,
    resolve,
)
from controlplane.services.reconcile import next_transition
from controlplane.services.translate import pending_job
from controlplane.store.base import ReplicaRecord
from tests.unit.builders import nodes, snapshot
from xinhe.v1 import agent_pb2, common_pb2

J, R = common_pb2, agent_pb2
CAT = default_catalogue()
POOLS = ("h100", "910b-west", "mlu")
ANY = Filters(frozenset(), frozenset())


@pytest.mark.parametrize(("name", "expected"), [
    ("ascend", Target(FAMILY, "ascend")),
    ("Cambricon", Target(FAMILY, "cambricon")),
    ("910B", Target(MODEL, "910B")),
    ("h100", Target(POOL, "h100")),  # a pool's exact name wins over a model alias
    ("H20", Target(MODEL, "H20")),
    ("910b-west", Target(POOL, "910b-west")),  # not a fuzzy match of the 910B
])
def test_targets_resolve_family_then_model_then_pool(name: str, expected: Target) -> None:
    assert resolve(name, CAT, POOLS) == expected


@pytest.mark.parametrize("name", ["", "  ", "tpu", "no-such-pool"])
def test_unknown_targets_are_refused_as_unknown(name: str) -> None:
    with pytest.raises(TargetError) as err:
        resolve(name, CAT, POOLS)
    assert err.value.unknown


@pytest.mark.parametrize(("base", "target", "expected"), [
    (ANY, Target(FAMILY, "ascend"), Filters(frozenset({"ascend"}), frozenset())),
    (Filters(frozenset({"nvidia", "ascend"}), frozenset()), Target(FAMILY, "ascend"),
     Filters(frozenset({"ascend"}), frozenset())),
    (Filters(frozenset(), frozenset({"910B", "H100"})), Target(FAMILY, "ascend"),
     Filters(frozenset(), frozenset({"910B"}))),
    (Filters(frozenset({"ascend"}), frozenset()), Target(MODEL, "910B"),
     Filters(frozenset(), frozenset({"910B"}))),
    (Filters(frozenset({"ascend"}), frozenset()), Target(POOL, "910b-west"),
     Filters(frozenset({"ascend"}), frozenset(), frozenset({"910b-west"}))),
])
def test_a_target_narrows_what_the_spec_allows(base: Filters, target: Target,
                                               expected: Filters) -> None:
    assert narrow(base, target, CAT) == expected


@pytest.mark.parametrize(("base", "target"), [
    (Filters(frozenset({"nvidia", "ascend"}), frozenset()), Target(FAMILY, "cambricon")),
    (Filters(frozenset(), frozenset({"H100"})), Target(FAMILY, "ascend")),
    (Filters(frozenset({"nvidia"}), frozenset()), Target(MODEL, "910B")),
])
def test_a_target_never_widens_the_spec(base: Filters, target: Target) -> None:
    with pytest.raises(TargetError, match="outside the job's allowed accelerators") as err:
        narrow(base, target, CAT)
    assert not err.value.unknown


def test_a_pin_that_no_longer_fits_the_spec_falls_back_to_the_spec() -> None:
    base = Filters(frozenset({"nvidia"}), frozenset())
    assert pinned(base, "family:ascend", CAT) == base
    assert pinned(base, "", CAT) == base
    assert pinned(base, "ascend", CAT) == base  # not kind:name
    assert pinned(base, "model:no-such-chip", CAT) == base
    assert pinned(base, "model:H100", CAT) == Filters(frozenset(), frozenset({"H100"}))
    assert pinned(base, "pool:p1", CAT) == Filters(base.families, frozenset(), frozenset({"p1"}))
    assert pinned(base, "node:p1:n-7", CAT) == Filters(
        base.families, frozenset(), frozenset({"p1"}), frozenset({"n-7"}))
    assert pinned(base, "node:p1", CAT) == pinned(base, "node::n-7", CAT) == base  # malformed


def queued_job(families: tuple[str, ...] = (), pin: str = "") -> common_pb2.Job:
    job = J.Job(id="j-1", tenant="lab-a", state=J.JOB_STATE_QUEUED, attempt=2,
                placement_target=pin)
    job.spec.queue, job.spec.replicas = "lab-a/default", 1
    job.spec.resources.accelerators = 1
    job.spec.resources.families.extend(families)
    return job


def test_the_scheduler_places_a_pinned_job_only_within_its_target() -> None:
    snap = snapshot(nodes(1, model="H100", family="nvidia", pool="h100"),
                    nodes(1, model="910B", pool="910b-a"), nodes(1, model="910B", pool="910b-b"))
    def place(pin: str) -> str:
        decision = schedule(snap, [pending_job(queued_job(pin=pin), 0, CAT)], Policy(), 0.0)
        return decision.placements[0].pool

    assert place("") == "h100"  # the fastest chip when unpinned
    assert place("family:ascend") in ("910b-a", "910b-b")
    assert place("pool:910b-b") == "910b-b"
    assert place("model:910B") in ("910b-a", "910b-b")


def test_a_node_pin_is_preferred_and_never_strands_the_job() -> None:
    """A consolidating move's target node: the job goes there though best
    fit would choose another node of the pool; when the node cannot hold it
    (taken meanwhile) it goes elsewhere in the pool, never to another pool."""
    def place(node_b_free: range) -> tuple[str, str]:
        snap = snapshot(nodes(1, model="H100", family="nvidia", pool="h100"),
                        nodes(1, model="910B", pool="910b", name="a", free=range(7)),
                        nodes(1, model="910B", pool="910b", name="b", free=node_b_free))
        job = pending_job(queued_job(pin="node:910b:b-000"), 0, CAT)
        decision = schedule(snap, [job], Policy(), 0.0)
        return decision.placements[0].pool, decision.placements[0].replicas[0].node

    assert place(range(8)) == ("910b", "b-000")  # best fit alone would take a-000
    assert place(range(0)) == ("910b", "a-000")


def test_a_pin_to_a_pool_the_fleet_lacks_never_fits_instead_of_going_elsewhere() -> None:
    snap = snapshot(nodes(1, model="H100", family="nvidia", pool="h100"),
                    nodes(1, model="910B", pool="910b-a", free=()))
    decision = schedule(snap, [pending_job(queued_job(pin="pool:910b-b"), 0, CAT)], Policy(), 0.0)
    assert not decision.placements and decision.waiting[0].never_fits


def migrating(attempt: int = 1) -> common_pb2.Job:
    return J.Job(id="j-1", state=J.JOB_STATE_MIGRATING, attempt=attempt, epoch=7,
                 placement_target="family:ascend")


def row(rank: int, state: int, message: str = "", code: int = 0) -> ReplicaRecord:
    return ReplicaRecord(job_id="j-1", attempt=1, rank=rank, epoch=7, node=f"n{rank}",
                         state=state, exit_code=code, message=message)


def test_migration_waits_while_any_replica_still_runs() -> None:
    rows = [row(0, R.REPLICA_STATE_STOPPED), row(1, R.REPLICA_STATE_RUNNING)]
    assert next_transition(migrating(), rows) == []


def test_stopped_replicas_requeue_the_job_pinned_with_a_new_attempt() -> None:
    rows = [row(0, R.REPLICA_STATE_STOPPED, "migrating: checkpoint step-9 complete in 0.1s"),
            row(1, R.REPLICA_STATE_STOPPED)]
    [t] = next_transition(migrating(), rows)
    assert (t.to_state, t.kind) == (J.JOB_STATE_QUEUED, "migrated")
    assert t.increment_attempt and t.clear_placement and t.expect_epoch == 7
    assert "checkpoint step-9 complete" in t.message and "family ascend" in t.message


def test_a_replica_that_failed_during_migration_is_a_failure() -> None:
    rows = [row(0, R.REPLICA_STATE_FAILED, "exited with code 3", code=3),
            row(1, R.REPLICA_STATE_STOPPED)]
    [t] = next_transition(migrating(), rows)
    assert t.to_state == J.JOB_STATE_FAILED and t.updates.exit_code == 3


def test_a_job_that_finished_before_it_was_stopped_succeeds() -> None:
    rows = [row(0, R.REPLICA_STATE_SUCCEEDED), row(1, R.REPLICA_STATE_SUCCEEDED)]
    [t] = next_transition(migrating(), rows)
    assert t.to_state == J.JOB_STATE_SUCCEEDED
