"""Policy-triggered migration in the control plane's own services (real
SQLite store, scheduler, reconciler; agents played by the test): a job on a
slow chip moves once a much faster one frees, through the `xinhe migrate`
path, rate limited, also while other work waits; with it on, a job starts
on a free slower chip rather than wait for a faster busy one, and running
jobs move within their pool to make room for a waiting gang."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.model.catalogue import default_catalogue
from controlplane.scheduler.host import InlineHost
from controlplane.scheduler.types import Policy
from controlplane.services.controller import Controller
from controlplane.services.migration_policy import (
    MigrationPolicy,
    MigrationPolicyError,
    parse_migration,
)
from controlplane.services.policy import PolicyError, load_migration_policy, parse_policy
from controlplane.settings import ServerSettings
from controlplane.store.sqlite import SqliteStore
from tests.unit.test_migration_service import Clock, connect, drain, report
from xinhe.v1 import agent_pb2, common_pb2

J, R = common_pb2, agent_pb2
ON = MigrationPolicy(enabled=True, min_gain_ratio=1.5, restart_cost_s=60, max_per_round=1,
                     min_interval_s=30, cooldown_s=600)


def make(tmp_path: Path, clock: Clock, migration: MigrationPolicy) -> Controller:
    store = SqliteStore(tmp_path / f"x-{migration.enabled}.db")
    return Controller(store, default_catalogue(), ServerSettings(), InlineHost(), clock=clock,
                      migration=migration)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def controller(tmp_path: Path, clock: Clock) -> Iterator[Controller]:
    c = make(tmp_path, clock, ON)
    yield c
    c.ctx.store.close()


def submit(controller: Controller, name: str, families: tuple[str, ...],
           checkpoint_dir: str = "/shared/ckpt", runtime_s: int = 36000,
           devices: int = 2) -> str:
    spec = J.JobSpec(name=name, queue="lab-a/default", command=["true"], replicas=1,
                     checkpoint_dir=checkpoint_dir)
    spec.resources.accelerators = devices
    spec.resources.families.extend(families)
    spec.reference_runtime.FromSeconds(runtime_s)
    job, _ = controller.jobs.submit(spec, "")
    return job.id


def start(controller: Controller, sessions: dict, job_id: str) -> agent_pb2.LaunchReplica:
    controller.tick()
    node = controller.jobs.get(job_id).placement.replicas[0].node
    [launch] = drain(sessions[node], "launch")
    report(controller, node, launch.ref, R.REPLICA_STATE_RUNNING)
    assert controller.jobs.get(job_id).state == J.JOB_STATE_RUNNING
    return launch


def slow_job_while_fast_is_busy(controller: Controller) -> tuple[dict, str, str, object]:
    sessions = {"fast": connect(controller, "fast", "h100", "H100", "nvidia"),
                "slow": connect(controller, "slow", "mlu", "MLU370-X8", "cambricon")}
    # Expected to run for ages: waiting for it would be slower than the slow chip.
    blocker = submit(controller, "blocker", ("nvidia",), checkpoint_dir="", runtime_s=10**6)
    blocker_launch = start(controller, sessions, blocker)
    job = submit(controller, "train", ())
    start(controller, sessions, job)
    assert controller.jobs.get(job).placement.family == "cambricon"
    return sessions, blocker, job, blocker_launch


def test_a_job_moves_to_the_fast_chip_once_it_frees(controller: Controller, clock: Clock):
    sessions, _blocker, job, blocker_launch = slow_job_while_fast_is_busy(controller)
    controller.tick()
    assert controller.jobs.get(job).state == J.JOB_STATE_RUNNING  # nothing faster is free
    report(controller, "fast", blocker_launch.ref, R.REPLICA_STATE_SUCCEEDED)
    clock.now += 31  # past min_interval_s
    controller.tick()
    moving = controller.jobs.get(job)
    assert moving.state == J.JOB_STATE_MIGRATING and moving.placement_target == "model:H100"
    [request] = drain(sessions["slow"], "checkpoint")
    assert request.reason.startswith("migrating to model H100: policy: moving from pool mlu "
                                     "(MLU370-X8) to pool h100 (H100)")
    report(controller, "slow", request.ref, R.REPLICA_STATE_STOPPED, "checkpoint step-9 complete")
    controller.tick()
    [launch] = drain(sessions["fast"], "launch")
    report(controller, "fast", launch.ref, R.REPLICA_STATE_RUNNING)
    moved = controller.jobs.get(job)
    assert (moved.state, moved.attempt, moved.placement.model) == (J.JOB_STATE_RUNNING, 2,
                                                                   "H100")
    assert moved.placement_target == ""  # the pin ends once it runs there
    kinds = [e.kind for e in controller.jobs.watch(job, 0, False, lambda: True)]
    assert kinds[-5:] == ["migrating", "migrated", "placed", "started", "running"]
    assert controller.policy_migrations.moves == 1


def test_rate_limited(controller: Controller, clock: Clock):
    sessions, _blocker, job, blocker_launch = slow_job_while_fast_is_busy(controller)
    report(controller, "fast", blocker_launch.ref, R.REPLICA_STATE_SUCCEEDED)
    controller.tick()  # within min_interval_s of the previous evaluation
    assert controller.jobs.get(job).state == J.JOB_STATE_RUNNING
    assert drain(sessions["slow"], "checkpoint") == []
    clock.now += 31
    controller.tick()
    assert controller.jobs.get(job).state == J.JOB_STATE_MIGRATING


def test_a_job_waiting_elsewhere_does_not_stop_a_move(controller: Controller, clock: Clock):
    sessions, _blocker, job, blocker_launch = slow_job_while_fast_is_busy(controller)
    waiting = submit(controller, "waits", ("cambricon",))  # for the slow node, busy
    report(controller, "fast", blocker_launch.ref, R.REPLICA_STATE_SUCCEEDED)
    clock.now += 31
    controller.tick()  # the move to the fast chip frees the slow one for it
    assert controller.jobs.get(job).state == J.JOB_STATE_MIGRATING
    assert controller.jobs.get(waiting).state == J.JOB_STATE_QUEUED
    [request] = drain(sessions["slow"], "checkpoint")
    report(controller, "slow", request.ref, R.REPLICA_STATE_STOPPED, "checkpoint step-9 complete")
    controller.tick()
    assert controller.jobs.get(waiting).placement.family == "cambricon"


def test_with_migration_a_job_starts_on_a_slower_free_chip(tmp_path: Path, clock: Clock):
    """H100 busy for 2 h more, A100 free: a 10 h (A100) job finishes sooner
    starting on the A100 and moving up than waiting; without migration it
    waits for the H100 (3.2x faster, past the 1.5x wait margin)."""
    for config, placed in ((ON, True), (MigrationPolicy(), False)):
        controller = make(tmp_path, clock, config)
        try:
            assert controller.policy.start_then_migrate is placed
            sessions = {"fast": connect(controller, "fast", "h100", "H100", "nvidia"),
                        "mid": connect(controller, "mid", "a100", "A100", "nvidia")}
            blocker = submit(controller, "blocker", ("nvidia",), checkpoint_dir="",
                             runtime_s=int(7200 * 3.17))
            start(controller, sessions, blocker)
            job = submit(controller, "train", ("nvidia",))
            result = controller.tick()
            got = controller.jobs.get(job)
            if placed:
                assert result.placed == 1 and got.placement.model == "A100"
            else:
                assert got.state == J.JOB_STATE_QUEUED
                assert "waiting for faster pool h100" in controller.ctx.wait_reasons[job]
        finally:
            controller.ctx.store.close()


def test_off_by_default(tmp_path: Path, clock: Clock):
    controller = make(tmp_path, clock, MigrationPolicy())
    try:
        _sessions, _blocker, job, blocker_launch = slow_job_while_fast_is_busy(controller)
        report(controller, "fast", blocker_launch.ref, R.REPLICA_STATE_SUCCEEDED)
        clock.now += 3600
        controller.tick()
        assert controller.jobs.get(job).state == J.JOB_STATE_RUNNING
        assert controller.policy_migrations.moves == 0
    finally:
        controller.ctx.store.close()


def test_the_policy_section_is_parsed_and_checked(tmp_path: Path):
    assert parse_migration(None) == MigrationPolicy() and not MigrationPolicy().enabled
    got = parse_migration({"enabled": True, "min_gain_ratio": 2, "max_per_round": 3,
                           "min_interval_s": 5, "restart_cost_s": 10, "cooldown_s": 60})
    assert got == MigrationPolicy(True, 2.0, 10.0, 3, 5.0, 60.0)
    assert got.knobs().cooldown_s == 60.0 and got.knobs().enabled
    core = got.core_policy(Policy())
    assert core.start_then_migrate and core.migration_restart_cost_s == 10.0
    assert (core.start_then_migrate_slack, core.start_then_migrate_margin) == (0.3, 5.0)
    tuned = parse_migration({"enabled": True, "start_then_migrate_slack": 0.2,
                             "start_then_migrate_margin": 5}).core_policy(Policy())
    assert (tuned.start_then_migrate_slack, tuned.start_then_migrate_margin) == (0.2, 5.0)
    assert not parse_migration({"enabled": True, "start_then_migrate": False}).core_policy(
        Policy()).start_then_migrate
    assert MigrationPolicy().core_policy(Policy()) == Policy()  # off: the policy as it is
    for bad, key in (({"enabled": "yes"}, "migration.enabled"),
                     ({"start_then_migrate": 1}, "migration.start_then_migrate"),
                     ({"start_then_migrate_margin": 0.5}, "migration.start_then_migrate_margin"),
                     ({"min_gain_ratio": 0.5}, "migration.min_gain_ratio"),
                     ({"max_per_round": 1.5}, "migration.max_per_round"),
                     ({"speed": 1}, "unknown key(s) speed")):
        with pytest.raises(MigrationPolicyError, match=key.replace("(", r"\(").replace(")", r"\)")):
            parse_migration(bad)
        with pytest.raises(PolicyError, match="migration"):
            parse_policy({"migration": bad})
    path = tmp_path / "policy.yaml"
    path.write_text("fair_share: true\nmigration:\n  enabled: true\n  min_interval_s: 1\n")
    assert parse_policy({"fair_share": True, "migration": {"enabled": True}}).fair_share
    assert load_migration_policy(path) == MigrationPolicy(enabled=True, min_interval_s=1.0)


def test_a_job_placed_for_cost_is_not_moved_for_speed(controller: Controller, clock: Clock):
    _sessions, _blocker, job, _launch = slow_job_while_fast_is_busy(controller)
    running = controller.jobs.get(job)
    running.spec.objective = J.OBJECTIVE_COST
    view = controller.policy_migrations.running_job(running, clock.now + 31, {})
    assert not view.migratable and view.seconds_since_checkpoint >= 31
    fastest = controller.policy_migrations.running_job(controller.jobs.get(job), clock.now, {})
    assert fastest.migratable


def test_a_job_moves_within_its_pool_so_a_waiting_job_fits(controller: Controller,
                                                            clock: Clock):
    """Two 2-device A100 nodes with one device free on each: a 2-device job
    fits on neither. The policy moves the checkpointable job a from n1 to
    n2's free device (a node pin); once a stopped, a starts on n2 and the
    waiting job on the whole of n1."""
    sessions = {n: connect(controller, n, "a100", "A100", "nvidia") for n in ("n1", "n2")}
    a = submit(controller, "a", ("nvidia",), devices=1)
    start(controller, sessions, a)
    c = submit(controller, "c", ("nvidia",), checkpoint_dir="", devices=1)
    c_launch = start(controller, sessions, c)
    b = submit(controller, "b", ("nvidia",), devices=1)
    start(controller, sessions, b)
    assert [controller.jobs.get(j).placement.replicas[0].node for j in (a, c, b)] == [
        "n1", "n1", "n2"]
    report(controller, "n1", c_launch.ref, R.REPLICA_STATE_SUCCEEDED)
    waiting = submit(controller, "two", ("nvidia",), checkpoint_dir="", runtime_s=3600)
    clock.now += 31
    result = controller.tick()
    assert result.placed == 0
    moving = controller.jobs.get(a)
    assert moving.state == J.JOB_STATE_MIGRATING and moving.placement_target == "node:a100:n2"
    [request] = drain(sessions["n1"], "checkpoint")
    assert "making room for gang" in request.reason and waiting in request.reason
    report(controller, "n1", request.ref, R.REPLICA_STATE_STOPPED, "checkpoint step-3 complete")
    controller.tick()
    moved, placed = controller.jobs.get(a), controller.jobs.get(waiting)
    assert (moved.attempt, moved.placement.replicas[0].node) == (2, "n2")
    assert placed.state == J.JOB_STATE_SCHEDULED
    assert [(r.node, len(r.device_indices)) for r in placed.placement.replicas] == [("n1", 2)]
    assert controller.policy_migrations.moves == 1
