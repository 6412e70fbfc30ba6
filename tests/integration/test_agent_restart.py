"""An agent killed with SIGKILL and restarted on its node re-adopts the
replicas that kept running (its restart journal): a current one finishes and
is reported once, with its whole log; a stale one (requeued elsewhere
meanwhile) is killed."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet, start_agent
from tests.integration.conftest import FAST, job_logs, wait_for, wait_ready_nodes, wait_terminal
from xinhe.v1 import common_pb2

J = common_pb2
LINES = 50
# Prints LINES numbered lines over ~10 s and records its pid per attempt.
JOB = ("import os, sys, time\n"
       "pid_dir = sys.argv[1]\n"
       "open(os.path.join(pid_dir, 'pid-' + os.environ['XINHE_ATTEMPT']), 'w')"
       ".write(str(os.getpid()))\n"
       f"for i in range({LINES}):\n"
       "    print(f'line {i:03d}', flush=True)\n"
       "    time.sleep(0.2)\n")


def spec(pid_dir: Path, retries: int = 0) -> common_pb2.JobSpec:
    job = common_pb2.JobSpec(name="outlives-its-agent", queue="lab-a/default", replicas=1,
                             command=[sys.executable, "-c", JOB], args=[str(pid_dir)])
    job.resources.accelerators = 1
    job.reference_runtime.FromSeconds(60)
    job.retry.max_attempts = retries + 1
    return job


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2] != "Z"


def restart(fleet: LocalFleet, agent: AgentSpec, root: Path) -> None:
    fleet.agents[agent.node] = start_agent(fleet.address, agent, root / "agents", root / "logs")


def test_restarted_agent_readopts_and_reports_the_job_once(tmp_path: Path) -> None:
    node = AgentSpec("phoenix", "910b", "west", ("910B:8",))
    args = [*FAST, "--node-lost-timeout", "60"]  # the restart is quicker than this
    with LocalFleet(tmp_path, [node], scheduler="inline", server_args=args) as fleet, \
            XinheClient(fleet.address) as client:
        wait_ready_nodes(client, 1)
        job = client.submit(spec(tmp_path))
        wait_for(lambda: "line 005" in job_logs(client, job.id), 30, "output before the kill")

        fleet.agents["phoenix"].kill()
        pid = int((tmp_path / "pid-1").read_text())
        assert alive(pid), "the replica must outlive its agent"
        time.sleep(1.0)  # output written while no agent is there
        restart(fleet, node, tmp_path)

        done = wait_terminal(client, job.id, timeout=60)
        assert (done.state, done.attempt) == (J.JOB_STATE_SUCCEEDED, 1), done.state_reason
        assert job_logs(client, job.id) == "".join(f"line {i:03d}\n" for i in range(LINES))
        kinds = [e.kind for e in client.watch(job.id)]
        assert kinds.count("succeeded") == 1 and "retrying" not in kinds
        assert "re-adopted replica" in fleet.agents["phoenix"].log_text()


def test_restarted_agent_kills_a_replica_requeued_elsewhere(tmp_path: Path) -> None:
    doomed = AgentSpec("doomed", "910b", "west", ("910B:8",))
    agents = [doomed, AgentSpec("spare", "910b", "west", ("910B:8",))]
    args = [*FAST, "--node-lost-timeout", "2"]
    with LocalFleet(tmp_path, agents, scheduler="inline", server_args=args) as fleet, \
            XinheClient(fleet.address) as client:
        wait_ready_nodes(client, 2)
        client.cordon("spare")  # the first attempt runs on "doomed"
        job = client.submit(spec(tmp_path, retries=1))
        wait_for(lambda: (tmp_path / "pid-1").exists(), 30, "attempt 1 running")
        client.uncordon("spare")

        fleet.agents["doomed"].kill()
        orphan = int((tmp_path / "pid-1").read_text())
        wait_for(lambda: client.get(job.id).attempt == 2, 30, "requeue after the node is lost")
        wait_for(lambda: (tmp_path / "pid-2").exists(), 30, "attempt 2 running on spare")
        assert alive(orphan), "the stale copy still runs until its agent comes back"

        restart(fleet, doomed, tmp_path)
        wait_for(lambda: not alive(orphan), 30, "the restarted agent to kill its stale copy")

        done = wait_terminal(client, job.id, timeout=60)
        assert (done.state, done.attempt) == (J.JOB_STATE_SUCCEEDED, 2), done.state_reason
        assert done.placement.replicas[0].node == "spare"
        second = "".join(bytes(c.data).decode() for c in client.logs(job.id)
                         if c.attempt == 2 and c.stream == J.LOG_STREAM_STDOUT)
        assert second == "".join(f"line {i:03d}\n" for i in range(LINES))
