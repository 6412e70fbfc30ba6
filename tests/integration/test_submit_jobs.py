"""SubmitJobs through a real server and agent: per-item validation errors
with their index, idempotency per item, tenant isolation per item, and the
per-tenant rate counting items. Tokens come from the operator's CLI."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet, xinhe_command
from tests.integration.conftest import FAST, train_spec, wait_terminal
from tests.integration.test_auth import new_token
from xinhe.v1 import common_pb2

Code = grpc.StatusCode


class Env:
    def __init__(self, fleet: LocalFleet, secrets: dict[str, str]) -> None:
        self.fleet, self.secrets = fleet, secrets

    def client(self, tenant: str) -> XinheClient:
        return XinheClient(self.fleet.address, token=self.secrets[tenant], timeout=30)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("submit-jobs")
    roles = (("lab-a", "tenant", "lab-a"), ("lab-b", "tenant", "lab-b"),
             ("agent", "agent", ""))
    secrets = {role: new_token(root / "data", kind, tenant)[1] for role, kind, tenant in roles}
    agent = AgentSpec("sj-h100", "h100", "east", ("H100:8",), extra=("--token", secrets["agent"]))
    # A low rate so the limit is reached with a few dozen items.
    server = [*FAST, "--submit-rate", "1", "--submit-burst", "30"]
    with LocalFleet(root, [agent], scheduler="inline", server_args=server) as fleet:
        env = Env(fleet, secrets)
        with env.client("lab-a") as a:
            wait_ready_nodes_as_tenant(a)
        yield env


def wait_ready_nodes_as_tenant(client: XinheClient) -> None:
    """Tenants may not list nodes: wait until a job of theirs can be placed."""
    job = client.submit(train_spec("warm", queue="lab-a/default", steps=2), client_key="warm")
    assert wait_terminal(client, job.id).state == common_pb2.JOB_STATE_SUCCEEDED


def bad_replicas(queue: str) -> common_pb2.JobSpec:
    spec = train_spec("bad", queue=queue)
    spec.replicas = 0
    return spec


def test_items_are_answered_in_order_with_indexed_errors_and_run(env: Env) -> None:
    with env.client("lab-a") as client:
        specs = [train_spec("ok-0", queue="lab-a/default", steps=2),
                 bad_replicas("lab-a/default"),
                 train_spec("ok-2", queue="lab-a/default", steps=2)]
        results = client.submit_many(specs, keys=["i-0", "i-1", "i-2"])
        assert [r.error_code for r in results] == [0, Code.INVALID_ARGUMENT.value[0], 0]
        assert results[1].error_message.startswith("requests[1].spec.replicas: ")
        assert results[0].created and results[2].created
        for r in (results[0], results[2]):
            assert wait_terminal(client, r.job.id).state == common_pb2.JOB_STATE_SUCCEEDED
        again = client.submit_many(specs[::2], keys=["i-0", "i-2"])  # a retried call
        assert [(r.job.id, r.created) for r in again] == [
            (results[0].job.id, False), (results[2].job.id, False)]


def test_a_tenant_cannot_submit_into_another_tenants_queue(env: Env) -> None:
    with env.client("lab-b") as client:
        results = client.submit_many([train_spec("mine", queue="lab-b/default"),
                                      train_spec("theirs", queue="lab-a/default")],
                                     keys=["x-0", "x-1"])
        assert results[0].error_code == 0
        assert results[1].error_code == Code.PERMISSION_DENIED.value[0]
        assert results[1].error_message.startswith("requests[1]")
        assert [j.client_key for j in client.list()] == ["x-0"]


def test_the_rate_limit_counts_items_and_the_call_limit_names_requests(env: Env) -> None:
    with env.client("lab-b") as client:
        spec = train_spec("many", queue="lab-b/default")
        with pytest.raises(grpc.RpcError) as exc:
            client.submit_many([spec] * 1001)
        assert exc.value.code() == Code.INVALID_ARGUMENT
        assert exc.value.details().startswith("requests: ")
        before = len(list(client.list()))
        # 25 valid items that can never be placed here (no 910B node): each
        # is refused, but each counted against lab-b's burst of 30.
        never = train_spec("never", queue="lab-b/default", models=("910B",))
        refused = client.submit_many([never] * 25)
        assert {r.error_code for r in refused} == {Code.INVALID_ARGUMENT.value[0]}
        assert "can never be placed" in refused[24].error_message
        with pytest.raises(grpc.RpcError) as exc:
            client.submit_many([spec] * 10, keys=[f"r-{i}" for i in range(10)])
        assert exc.value.code() == Code.RESOURCE_EXHAUSTED
        assert "lab-b" in exc.value.details()
        assert len(list(client.list())) == before  # nothing stored


def test_cli_submits_copies_in_batches_idempotently(env: Env, tmp_path: Path) -> None:
    spec = tmp_path / "sleep.yaml"
    spec.write_text("name: copies\nqueue: lab-a/default\nrun: sleep 60\n"
                    "resources:\n  accelerators: 1\n")

    def copies(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            xinhe_command("submit", str(spec), "--count", "3", "--server", env.fleet.address,
                          "--token", env.secrets["lab-a"], *extra),
            capture_output=True, text=True, timeout=60, check=False)

    first = copies("--key", "cp")
    assert first.returncode == 0, first.stderr
    ids = first.stdout.split()
    assert len(ids) == 3 == len(set(ids))
    assert copies("--key", "cp").stdout.split() == ids  # the same keys: the same jobs
    with env.client("lab-a") as client:
        keys = {j.client_key: j.id for j in client.list() if j.client_key.startswith("cp-")}
        assert keys == {f"cp-{i}": job_id for i, job_id in enumerate(ids)}
        for job_id in ids:
            client.cancel(job_id)
    bad = copies("--queue", "lab-b/default")  # another tenant's queue: every copy refused
    assert bad.returncode == 1 and bad.stderr.count("requests[") == 3
