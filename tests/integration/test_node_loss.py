"""An agent that dies: its jobs are declared lost after the timeout and
requeued elsewhere per their retry policy; a returning agent is fenced."""

from __future__ import annotations

from pathlib import Path

from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet, start_agent
from tests.integration.conftest import (
    FAST,
    train_spec,
    wait_for,
    wait_ready_nodes,
    wait_terminal,
)
from xinhe.v1 import common_pb2

J = common_pb2


def test_lost_node_requeues_job_elsewhere_and_fences_the_old_copy(tmp_path: Path) -> None:
    agents = [AgentSpec("doomed", "910b", "west", ("910B:8",)),
              AgentSpec("spare", "910b", "west", ("910B:8",))]
    args = [*FAST, "--node-lost-timeout", "2"]
    with LocalFleet(tmp_path, agents, scheduler="inline", server_args=args) as fleet:
        client = XinheClient(fleet.address)
        wait_ready_nodes(client, 2)
        client.cordon("spare")  # make sure the job starts on "doomed"
        job = client.submit(train_spec("survive-node-loss", steps=150, step_sleep=0.02,
                                       retries=2))
        wait_for(lambda: client.get(job.id).state == J.JOB_STATE_RUNNING, 30, "running")
        assert client.get(job.id).placement.replicas[0].node == "doomed"
        client.uncordon("spare")

        fleet.agents["doomed"].kill()  # agent gone; its replica process lives on
        lost = wait_for(lambda: (j := client.get(job.id)).attempt == 2 and j, 30,
                        "requeue after the lost-node timeout")
        assert "doomed lost" in lost.state_reason or any(
            "doomed lost" in e.message for e in client.watch(job.id))

        done = wait_terminal(client, job.id, timeout=60)
        assert done.state == J.JOB_STATE_SUCCEEDED and done.attempt == 2
        assert done.placement.replicas[0].node == "spare"

        # The old agent comes back: its stale copy must not change the outcome.
        fleet.agents["doomed"] = start_agent(fleet.address, agents[0], tmp_path / "agents",
                                             tmp_path / "logs")
        wait_ready_nodes(client, 2)
        again = client.get(job.id)
        assert (again.state, again.attempt) == (J.JOB_STATE_SUCCEEDED, 2)
        client.close()
