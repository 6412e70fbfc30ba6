"""The control plane restarted mid-run loses no job; the scheduler also runs
hosted on a real local Ray."""

from __future__ import annotations

from pathlib import Path

from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet
from tests.integration.conftest import (
    FAST,
    job_logs,
    train_spec,
    wait_for,
    wait_ready_nodes,
    wait_terminal,
)
from xinhe.v1 import common_pb2

J = common_pb2


def test_restart_mid_run_loses_nothing_and_runs_nothing_twice(tmp_path: Path) -> None:
    agents = [AgentSpec("solo", "h100", "east", ("H100:8",))]
    with LocalFleet(tmp_path, agents, scheduler="inline", server_args=FAST) as fleet:
        client = XinheClient(fleet.address)
        wait_ready_nodes(client, 1)
        running = client.submit(train_spec("survivor", steps=300, step_sleep=0.02))
        queued_keys = [client.submit(train_spec(f"later-{i}", devices=8, steps=5),
                                     client_key=f"k{i}").id for i in range(2)]
        wait_for(lambda: client.get(running.id).state == J.JOB_STATE_RUNNING, 30, "running")
        # Log chunks are best effort: wait until the start line is stored.
        wait_for(lambda: "xinhe job " in job_logs(client, running.id), 30, "start line")
        client.close()

        fleet.server.kill()  # SIGKILL: no graceful shutdown
        fleet.start_server()

        client = XinheClient(fleet.address)
        wait_ready_nodes(client, 1)
        done = wait_terminal(client, running.id, timeout=90)
        assert done.state == J.JOB_STATE_SUCCEEDED, done.state_reason
        assert done.attempt == 1
        text = job_logs(client, running.id)
        assert text.count("xinhe job ") == 1, "the replica must have started exactly once"
        for job_id in queued_keys:
            assert wait_terminal(client, job_id, timeout=60).state == J.JOB_STATE_SUCCEEDED
        # acknowledged submissions survive: the same keys return the same jobs
        assert [client.submit(train_spec(f"later-{i}", devices=8), client_key=f"k{i}").id
                for i in range(2)] == queued_keys
        client.close()


def test_scheduler_hosted_on_ray_places_and_runs_jobs(tmp_path: Path) -> None:
    agents = [AgentSpec("r-910b", "910b", "west", ("910B:8",)),
              AgentSpec("r-a100", "a100", "east", ("A100:8",))]
    with LocalFleet(tmp_path, agents, scheduler="ray", server_args=FAST) as fleet:
        client = XinheClient(fleet.address)
        wait_ready_nodes(client, 2, timeout=120)
        ids = [client.submit(train_spec(f"ray-{i}", devices=2)).id for i in range(6)]
        done = [wait_terminal(client, i, timeout=120) for i in ids]
        assert all(j.state == J.JOB_STATE_SUCCEEDED for j in done)
        assert {j.placement.pool for j in done} <= {"910b", "a100"}
        assert "scheduler core hosted in a Ray actor" in fleet.server.log_text()
        client.close()
