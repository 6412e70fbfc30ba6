"""Two control-plane replicas on one PostgreSQL schema: one leads, the other
refuses calls with a pointer to the leader; when the leader is SIGKILLed the
follower takes over, the agents follow it, new jobs run, and the job that was
running keeps running and succeeds exactly once. Failover is measured."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.client import XinheClient, leader_hint
from controlplane.localfleet import AgentSpec, ManagedProcess, start_agent, start_server
from controlplane.model.states import is_terminal
from tests.integration.conftest import FAST, train_spec, wait_for
from tests.integration.test_postgres_server import _server_dsn
from tests.unit.test_store import ScratchSchemas, require_postgres
from xinhe.v1 import common_pb2, jobs_pb2, jobs_pb2_grpc

JOB_SERVICE = "xinhe.v1.JobService"
FAILOVER_LIMIT_S = 10.0
AGENTS = [AgentSpec("ha-a", "a100", "east", ("A100:2",)),
          AgentSpec("ha-b", "a100", "east", ("A100:2",))]


def _health(address: str, service: str) -> int:
    """The health status of ``service`` at ``address``; UNKNOWN when unreachable."""
    with grpc.insecure_channel(address) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2).status
        except grpc.RpcError:
            return health_pb2.HealthCheckResponse.UNKNOWN


def _serving(address: str) -> bool:
    return _health(address, JOB_SERVICE) == health_pb2.HealthCheckResponse.SERVING


def _quiet(predicate: Callable[[], object]) -> Callable[[], object]:
    """``predicate``, with an RPC failure (mid-failover) read as not yet."""
    def check() -> object:
        try:
            return predicate()
        except grpc.RpcError:
            return False
    return check


def _connected(client: XinheClient, n: int) -> bool:
    return sum(1 for x in client.nodes() if x.status == common_pb2.NODE_STATUS_READY) >= n


def _in_state(client: XinheClient, job_id: str, *states: int) -> common_pb2.Job | None:
    """The job once in one of ``states``; a failure on another end state."""
    job = client.get(job_id)
    assert not is_terminal(job.state) or job.state in states, job.state_reason
    return job if job.state in states else None


def _start_replicas(root: Path, dsn: str, api_workers: int = 0) -> dict[str, ManagedProcess]:
    """Two replicas; the first is started alone so that it leads."""
    extra = [*FAST, "--store-dsn", dsn, "--node-lost-timeout", "30",
             "--api-workers", str(api_workers)]
    replicas = {}
    for name in ("a", "b"):
        proc, address = start_server(root / name, extra=extra, log_dir=root / "logs" / name)
        replicas[address] = proc
        if name == "a":
            wait_for(lambda a=address: _serving(a), 20, "the first replica to lead")
    return replicas


def _refusal(follower: str) -> grpc.RpcError:
    with grpc.insecure_channel(follower) as channel, pytest.raises(grpc.RpcError) as refused:
        jobs_pb2_grpc.JobServiceStub(channel).GetJob(jobs_pb2.GetJobRequest(job_id="any"),
                                                     timeout=5)
    return refused.value


def _check_follower_refuses(follower: str, leader: str) -> None:
    """NOT_SERVING for the Xinhe services, UNAVAILABLE naming the leader (a
    follower learns the leader's address at its next poll)."""
    assert _health(follower, JOB_SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert _health(follower, "") == health_pb2.HealthCheckResponse.SERVING  # alive
    assert _refusal(follower).code() == grpc.StatusCode.UNAVAILABLE
    wait_for(lambda: leader_hint(_refusal(follower)) == leader, 10, "the leader hint")


# With API front ends each replica's front ends forward to it: a follower's
# refusals and hints reach callers unchanged, and a killed leader's front
# ends leave with it.
@pytest.mark.parametrize("api_workers", [0, 2], ids=["direct", "front-ends"])
def test_follower_takes_over_within_10s_and_running_job_succeeds_once(
        tmp_path: Path, api_workers: int) -> None:
    scratch = ScratchSchemas(require_postgres())
    dsn, _schema = _server_dsn(scratch, "ha")
    procs: list[ManagedProcess] = []
    try:
        replicas = _start_replicas(tmp_path, dsn, api_workers)
        procs += replicas.values()
        leader, follower = list(replicas)
        wait_for(lambda: _health(follower, "") == health_pb2.HealthCheckResponse.SERVING, 20)
        _check_follower_refuses(follower, leader)

        servers = f"{follower},{leader}"  # the follower first: agents must be redirected
        procs += [start_agent(servers, spec, tmp_path / "agents", tmp_path / "logs")
                  for spec in AGENTS]
        with XinheClient(servers) as client:
            wait_for(_quiet(lambda: _connected(client, 2)), 30, "2 agents on the leader")
            running = client.submit(train_spec("long", steps=40, step_sleep=0.25),
                                    client_key="ha-long")
            wait_for(lambda: _in_state(client, running.id, common_pb2.JOB_STATE_RUNNING), 20,
                     "the first job to run")

            started = time.monotonic()
            replicas[leader].kill()
            wait_for(lambda: _serving(follower), 20, "the follower to lead")
            elected = time.monotonic() - started
            wait_for(_quiet(lambda: _connected(client, 2)), 20, "agents on the new leader")
            agents_back = time.monotonic() - started
            fresh = client.submit(train_spec("after", steps=2), client_key="ha-after")
            wait_for(_quiet(lambda: _in_state(client, fresh.id, common_pb2.JOB_STATE_RUNNING,
                                              common_pb2.JOB_STATE_SUCCEEDED)),
                     20, "a new job to run on the new leader")
            failover = time.monotonic() - started
            print(f"\nHA failover: elected {elected:.2f}s, agents back {agents_back:.2f}s, "
                  f"new job running {failover:.2f}s after SIGKILL of the leader")
            assert failover < FAILOVER_LIMIT_S

            done = wait_for(_quiet(lambda: _in_state(
                client, running.id, common_pb2.JOB_STATE_SUCCEEDED)), 40, "the first job")
            assert done.attempt == 1, "the running job was restarted"
            events = list(client.watch(running.id))
            to = [e.to_state for e in events if e.to_state != e.from_state]
            assert to.count(common_pb2.JOB_STATE_SUCCEEDED) == 1
            assert to.count(common_pb2.JOB_STATE_RUNNING) == 1, to
            with grpc.insecure_channel(follower) as channel:  # the new leader serves
                assert jobs_pb2_grpc.JobServiceStub(channel).GetJob(
                    jobs_pb2.GetJobRequest(job_id=running.id), timeout=5).id == running.id
    finally:
        for proc in reversed(procs):
            proc.stop(grace=5.0)
        scratch.drop_all()


def _terminate_election_session(admin_dsn: str, schema: str) -> int:
    """End the database session holding this install's leader lock (as a
    network cut or a DBA would); returns how many sessions were ended."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"SET search_path = {schema}")
        key = conn.execute("SELECT hashtextextended('xinhe.leader.' || current_database()"
                           " || '.' || current_schema(), 0)").fetchone()[0]
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
            " AND granted AND ((classid::bigint << 32) | objid::bigint) = %s",
            (key,)).fetchall()
    return len(rows)


def test_leader_that_loses_its_database_session_steps_down(tmp_path: Path) -> None:
    scratch = ScratchSchemas(require_postgres())
    dsn, schema = _server_dsn(scratch, "ha_cut")
    procs: list[ManagedProcess] = []
    try:
        replicas = _start_replicas(tmp_path, dsn)
        procs += replicas.values()
        first, second = list(replicas)
        procs.append(start_agent(f"{first},{second}", AGENTS[0], tmp_path / "agents",
                                 tmp_path / "logs"))
        with XinheClient(f"{second},{first}") as client:
            wait_for(_quiet(lambda: _connected(client, 1)), 30, "the agent on the leader")
            assert _terminate_election_session(scratch.dsn, schema) == 1
            wait_for(lambda: _serving(second), 20, "the other replica to lead")
            assert replicas[first].alive()
            wait_for(lambda: not _serving(first), 10, "the old leader to step down")
            _check_follower_refuses(first, second)
            wait_for(_quiet(lambda: _connected(client, 1)), 20, "the agent on the new leader")
            job = client.submit(train_spec("after-cut", steps=2), client_key="cut-1")
            wait_for(_quiet(lambda: _in_state(client, job.id, common_pb2.JOB_STATE_SUCCEEDED)),
                     30, "a job on the new leader")
    finally:
        for proc in reversed(procs):
            proc.stop(grace=5.0)
        scratch.drop_all()
