"""xinhe_jobs_migrated_total tells a requested migration from a
policy-triggered one: the control plane's own services (real SQLite store
behind the metrics wrapper, scheduler, reconciler, migration policy) wired to
the instruments the way the server wires them, agents played by the test;
then a real in-process server and agents, read back over /metrics."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.accelerators.simulated import SimulatedAdapter
from agents.agent import Agent, AgentConfig
from controlplane.api.errors import FailedPrecondition
from controlplane.client import XinheClient
from controlplane.model.catalogue import default_catalogue
from controlplane.observability import metrics as m
from controlplane.observability.instruments import ControlPlaneMetrics
from controlplane.observability.store import InstrumentedStore
from controlplane.scheduler.host import InlineHost
from controlplane.server import ControlPlane
from controlplane.services.controller import Controller
from controlplane.settings import ServerSettings
from controlplane.store.sqlite import SqliteStore
from tests.unit.test_metrics_live import sample, scrape, wait_for
from tests.unit.test_migration_policy import ON, slow_job_while_fast_is_busy
from tests.unit.test_migration_service import Clock, drain, report
from xinhe.v1 import agent_pb2, common_pb2

J, R = common_pb2, agent_pb2
MIGRATED = "xinhe_jobs_migrated_total"


@pytest.fixture
def wired(tmp_path: Path) -> Iterator[tuple[Controller, ControlPlaneMetrics, Clock]]:
    clock = Clock()
    metrics = ControlPlaneMetrics()
    store = InstrumentedStore(SqliteStore(tmp_path / "x.db"), metrics)
    controller = Controller(store, default_catalogue(), ServerSettings(), InlineHost(),
                            clock=clock, migration=ON)
    controller.migrations.on_migrated = metrics.job_migrated  # as controlplane/server.py does
    yield controller, metrics, clock
    store.close()


def migrated(metrics: ControlPlaneMetrics, trigger: str, family: str) -> float:
    labels = {"tenant": "lab-a", "family": family, "trigger": trigger}
    return metrics.registry.get_sample_value(MIGRATED, labels) or 0.0


def test_policy_and_requested_migrations_are_counted_apart(wired) -> None:
    controller, metrics, clock = wired
    sessions, _blocker, job, blocker_launch = slow_job_while_fast_is_busy(controller)
    report(controller, "fast", blocker_launch.ref, R.REPLICA_STATE_SUCCEEDED)
    clock.now += 31  # past the policy's min_interval_s
    controller.tick()
    assert controller.jobs.get(job).state == J.JOB_STATE_MIGRATING
    # Counted under the family it leaves.
    assert migrated(metrics, "policy", "cambricon") == 1
    assert migrated(metrics, "request", "cambricon") == 0

    [request] = drain(sessions["slow"], "checkpoint")
    report(controller, "slow", request.ref, R.REPLICA_STATE_STOPPED, "checkpoint complete")
    controller.tick()
    [launch] = drain(sessions["fast"], "launch")
    report(controller, "fast", launch.ref, R.REPLICA_STATE_RUNNING)
    assert controller.jobs.get(job).placement.model == "H100"
    assert migrated(metrics, "policy", "cambricon") == 1, "re-placing is no new migration"

    # A tenant's reason that looks like the policy's is still a request.
    controller.migrations.migrate(job, "cambricon", "policy: spoofed")
    assert migrated(metrics, "request", "nvidia") == 1
    assert migrated(metrics, "policy", "nvidia") == 0
    with pytest.raises(FailedPrecondition):  # MIGRATING already: nothing counted
        controller.migrations.migrate(job, "cambricon", "again")
    assert migrated(metrics, "request", "nvidia") == 1


def test_the_trigger_label_stays_bounded() -> None:
    metrics = ControlPlaneMetrics()
    job = J.Job(id="j-1", tenant="lab-a")
    for trigger in m.MIGRATION_TRIGGERS:
        metrics.job_migrated(job, trigger)
    with pytest.raises(ValueError, match="preemption"):
        metrics.job_migrated(job, "preemption")
    assert m.get(MIGRATED).labels == ("tenant", "family", "trigger")
    assert metrics.registry.get_sample_value(
        MIGRATED, {"tenant": "lab-a", "family": "any", "trigger": "policy"}) == 1


def test_a_served_migration_shows_as_requested_on_the_metrics_endpoint(tmp_path: Path) -> None:
    settings = ServerSettings(listen="127.0.0.1:0", data_dir=tmp_path / "data",
                              scheduler="inline", heartbeat_interval_s=0.2,
                              schedule_interval_s=0.1, stop_grace_s=1.0)
    plane = ControlPlane(settings)
    plane.start()
    plane.metrics.serve("127.0.0.1", 0)
    agents = [Agent(AgentConfig(server=plane.address, node_name=node, pool=pool, region="r",
                                work_dir=tmp_path / node, heartbeat_interval=0.2,
                                stop_grace=1.0), [SimulatedAdapter(chips, node=node)])
              for node, pool, chips in (("n0", "910b", "910B:2"), ("n1", "h100", "H100:2"))]
    try:
        for agent in agents:
            agent.start()
            agent.connected.wait(30)
        spec = J.JobSpec(name="mover", queue="lab-a/default", replicas=1,
                         checkpoint_dir=str(tmp_path / "ckpt"),
                         command=[sys.executable, "-c", "import time; time.sleep(120)"])
        spec.resources.accelerators = 1
        with XinheClient(plane.address) as client:
            job = client.submit(spec)
            wait_for(lambda: client.get(job.id).state == J.JOB_STATE_RUNNING, what="running")
            family = client.get(job.id).placement.family
            client.migrate(job.id, "ascend" if family == "nvidia" else "nvidia", "policy: no")
            samples, _ = scrape(plane.metrics.url)
            labels = {"tenant": "lab-a", "family": family}
            assert sample(samples, MIGRATED, trigger="request", **labels) == 1
            assert sample(samples, MIGRATED, trigger="policy", **labels) is None
            client.cancel(job.id)
    finally:
        for agent in agents:
            agent.shutdown(grace=1.0)
        plane.stop(grace=1.0)
