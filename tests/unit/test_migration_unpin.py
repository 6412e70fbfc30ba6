"""After a migration the pin (Job.placement_target) lasts until the job runs on
its target; then it is cleared and kept only as history in the events."""

from __future__ import annotations

from controlplane.services.reconcile import next_transition
from controlplane.store.base import ReplicaRecord
from tests.unit.test_migration_service import (  # noqa: F401  (pytest fixtures)
    Clock,
    clock,
    connect,
    controller,
    drain,
    report,
    running_job,
)
from xinhe.v1 import agent_pb2, common_pb2

J, R = common_pb2, agent_pb2


def test_the_pin_is_cleared_once_the_job_runs_on_its_target(controller, clock) -> None:  # noqa: F811
    sessions = {"h": connect(controller, "h", "h100", "H100", "nvidia"),
                "a": connect(controller, "a", "910b", "910B", "ascend")}
    job = running_job(controller, sessions)
    controller.migrations.migrate(job.id, "ascend", "cheaper")
    [request] = drain(sessions["h"], "checkpoint")
    report(controller, "h", request.ref, R.REPLICA_STATE_STOPPED, "checkpoint step-9 complete")
    controller.tick()
    [launch] = drain(sessions["a"], "launch")
    report(controller, "a", launch.ref, R.REPLICA_STATE_STARTING)
    assert controller.jobs.get(job.id).placement_target == "family:ascend"  # still steering
    report(controller, "a", launch.ref, R.REPLICA_STATE_RUNNING)
    running = controller.jobs.get(job.id)
    assert running.state == J.JOB_STATE_RUNNING and running.placement_target == ""
    events = list(controller.jobs.watch(job.id, 0, False, lambda: True))
    assert events[-1].kind == "running"
    assert events[-1].message == ("every replica running; on ascend/910B, its migration "
                                  "target family ascend (pin cleared)")
    assert any(e.kind == "migrating" and "ascend" in e.message for e in events)


def test_an_unpinned_job_is_unchanged_and_a_short_job_unpins_on_success() -> None:
    row = ReplicaRecord(job_id="j", attempt=2, rank=0, epoch=7, node="a",
                        state=R.REPLICA_STATE_SUCCEEDED, exit_code=0, message="")
    job = J.Job(id="j", state=J.JOB_STATE_SCHEDULED, attempt=2, epoch=7)
    assert not any(t.clear_placement_target for t in next_transition(job, [row]))
    job.placement_target = "model:910B"
    chain = next_transition(job, [row])
    assert [t.to_state for t in chain] == [J.JOB_STATE_STARTING, J.JOB_STATE_SUCCEEDED]
    assert [t.clear_placement_target for t in chain] == [False, True]
