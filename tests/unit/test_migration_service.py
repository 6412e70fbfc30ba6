"""Migration through the control plane's own services, in process: a real
SQLite store, fleet, scheduler and reconciler; agents are played by the test
reading their session outboxes and answering with replica reports. The clock
is injected, so the re-send interval is tested without waiting."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.api.errors import FailedPrecondition, InvalidArgument
from controlplane.model.catalogue import default_catalogue
from controlplane.scheduler.host import InlineHost
from controlplane.services.controller import Controller
from controlplane.services.fleet import AgentSession
from controlplane.services.migration import DEFAULT_CHECKPOINT_TIMEOUT_S, RESEND_INTERVAL_S
from controlplane.settings import ServerSettings
from controlplane.store.sqlite import SqliteStore
from xinhe.v1 import agent_pb2, common_pb2

J, R = common_pb2, agent_pb2
GB = 10**9


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def controller(tmp_path: Path, clock: Clock) -> Iterator[Controller]:
    store = SqliteStore(tmp_path / "x.db")
    yield Controller(store, default_catalogue(), ServerSettings(), InlineHost(), clock=clock)
    store.close()


def connect(controller: Controller, node: str, pool: str, model: str,
            family: str) -> AgentSession:
    devices = [J.Device(index=i, model=model, family=family, memory_bytes=64 * GB, healthy=True)
               for i in range(2)]
    response = controller.agents.register(R.RegisterRequest(
        protocol_version=R.PROTOCOL_VERSION_1, node_name=node, pool=pool, region="r",
        address="127.0.0.1", devices=devices, cpu_millis=8000, memory_bytes=64 * GB))
    session = controller.ctx.fleet.attach(response.session_id)
    assert session is not None
    return session


def drain(session: AgentSession, kind: str) -> list:
    out = []
    while True:
        try:
            message = session.outbox.get_nowait()
        except queue.Empty:
            return out
        if message is not None and message.WhichOneof("body") == kind:
            out.append(getattr(message, kind))


def report(controller: Controller, node: str, ref: agent_pb2.ReplicaRef, state: int,
           message: str = "") -> None:
    controller.reconciler.on_status(node, R.ReplicaStatus(ref=ref, state=state, message=message))


def running_job(controller: Controller, sessions: dict[str, AgentSession],
                checkpoint_dir: str = "/shared/ckpt") -> common_pb2.Job:
    spec = J.JobSpec(name="t", queue="lab-a/default", command=["true"], replicas=1,
                     checkpoint_dir=checkpoint_dir)
    spec.resources.accelerators = 1
    job, _ = controller.jobs.submit(spec, "")
    controller.tick()
    placed = controller.jobs.get(job.id)
    [launch] = drain(sessions[placed.placement.replicas[0].node], "launch")
    report(controller, placed.placement.replicas[0].node, launch.ref, R.REPLICA_STATE_RUNNING)
    return controller.jobs.get(job.id)


def test_a_migration_checkpoints_requeues_pinned_and_lands_on_the_target(
        controller: Controller, clock: Clock) -> None:
    sessions = {"h": connect(controller, "h", "h100", "H100", "nvidia"),
                "a": connect(controller, "a", "910b", "910B", "ascend")}
    job = running_job(controller, sessions)
    assert (job.state, job.placement.model) == (J.JOB_STATE_RUNNING, "H100")

    moving = controller.migrations.migrate(job.id, "ascend", "cheaper")
    assert moving.state == J.JOB_STATE_MIGRATING and moving.placement_target == "family:ascend"
    [request] = drain(sessions["h"], "checkpoint")
    assert request.ref.attempt == 1 and request.ref.epoch == job.epoch
    assert request.timeout.seconds > 0 and "ascend" in request.reason

    assert controller.migrations.resend_pending(clock.now + 1) == 0  # not yet due
    assert controller.migrations.resend_pending(clock.now + RESEND_INTERVAL_S) == 1
    assert len(drain(sessions["h"], "checkpoint")) == 1  # a lost request is sent again

    report(controller, "h", request.ref, R.REPLICA_STATE_STOPPED, "checkpoint step-9 complete")
    requeued = controller.jobs.get(job.id)
    assert (requeued.state, requeued.attempt) == (J.JOB_STATE_QUEUED, 2)
    assert not requeued.placement.replicas
    controller.tick()
    moved = controller.jobs.get(job.id)
    assert moved.state == J.JOB_STATE_SCHEDULED and moved.placement.family == "ascend"
    [launch] = drain(sessions["a"], "launch")
    assert launch.checkpoint_dir == "/shared/ckpt" and launch.ref.attempt == 2
    kinds = [e.kind for e in controller.jobs.watch(job.id, 0, False, lambda: True)]
    assert kinds[-3:] == ["migrating", "migrated", "placed"]


def test_refusals_leave_the_job_running(controller: Controller) -> None:
    sessions = {"h": connect(controller, "h", "h100", "H100", "nvidia")}
    job = running_job(controller, sessions, checkpoint_dir="")
    with pytest.raises(FailedPrecondition, match="no checkpoint_dir"):
        controller.migrations.migrate(job.id, "nvidia", "")
    with_ckpt = running_job(controller, sessions)
    with pytest.raises(FailedPrecondition, match="can never hold"):
        controller.migrations.migrate(with_ckpt.id, "ascend", "")  # no ascend node at all
    assert controller.jobs.get(with_ckpt.id).state == J.JOB_STATE_RUNNING
    assert drain(sessions["h"], "checkpoint") == []


def test_a_cancel_during_migration_ends_the_job(controller: Controller) -> None:
    sessions = {"h": connect(controller, "h", "h100", "H100", "nvidia")}
    job = running_job(controller, sessions)
    controller.migrations.migrate(job.id, "nvidia", "restart elsewhere")
    assert controller.jobs.cancel(job.id, "never mind").state == J.JOB_STATE_CANCELLED
    assert controller.migrations.resend_pending(10**9) == 0


def test_a_node_lost_while_migrating_requeues_without_spending_a_retry(
        controller: Controller) -> None:
    sessions = {"h": connect(controller, "h", "h100", "H100", "nvidia"),
                "a": connect(controller, "a", "910b", "910B", "ascend")}
    job = running_job(controller, sessions)  # no retries allowed by its spec
    controller.migrations.migrate(job.id, "ascend", "")
    [requeued] = controller.reconciler.on_node_lost("h")
    assert (requeued.state, requeued.attempt) == (J.JOB_STATE_QUEUED, 2)
    assert "node h lost" in requeued.state_reason
    assert "resuming on family ascend" in requeued.state_reason


def test_a_restarted_control_plane_keeps_a_migrating_jobs_devices(
        controller: Controller, tmp_path: Path, clock: Clock) -> None:
    sessions = {"h": connect(controller, "h", "h100", "H100", "nvidia")}
    job = running_job(controller, sessions)
    controller.migrations.migrate(job.id, "nvidia", "")
    again = Controller(controller.ctx.store, default_catalogue(), ServerSettings(),
                       InlineHost(), clock=clock)
    held = again.ctx.allocations.held_on("h")
    assert {h.job_id for h in held.values()} == {job.id}
    assert again.migrations.resend_pending(clock.now) == 1  # nothing recorded: ask again


def test_the_checkpoint_timeout_is_the_requests_or_the_default(controller: Controller) -> None:
    sessions = {"h": connect(controller, "h", "h100", "H100", "nvidia")}
    job = running_job(controller, sessions)
    with pytest.raises(InvalidArgument, match="checkpoint_timeout"):
        controller.migrations.migrate(job.id, "nvidia", "", checkpoint_timeout_s=-1)
    controller.migrations.migrate(job.id, "nvidia", "", checkpoint_timeout_s=2.5)
    [request] = drain(sessions["h"], "checkpoint")
    assert request.timeout.ToTimedelta().total_seconds() == 2.5
    other = running_job(controller, sessions)
    controller.migrations.migrate(other.id, "nvidia", "")
    [request] = drain(sessions["h"], "checkpoint")
    assert request.timeout.ToTimedelta().total_seconds() == DEFAULT_CHECKPOINT_TIMEOUT_S
