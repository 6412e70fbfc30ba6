"""Authentication and tenant isolation against a real server and agent process.

Tokens are made with the operator's CLI (`xinhe admin tokens ...`) on the
server's store; the agent joins with an agent token; each rule of the issue
is checked through real gRPC calls.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet, xinhe_command
from tests.integration.conftest import FAST, train_spec, wait_ready_nodes, wait_terminal
from xinhe.v1 import agent_pb2, agent_pb2_grpc, common_pb2

Code = grpc.StatusCode


def admin_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(xinhe_command("admin", "--data-dir", str(data_dir), *args),
                          capture_output=True, text=True, timeout=60, check=False)


def new_token(data_dir: Path, kind: str, tenant: str = "") -> tuple[str, str]:
    """(token id, secret) of a token created with the CLI."""
    done = admin_cli(data_dir, "tokens", "create", "--kind", kind,
                     *(("--tenant", tenant) if tenant else ()))
    assert done.returncode == 0, done.stderr
    token_id = done.stderr.split(" token ")[1].split()[0]
    return token_id, done.stdout.strip()


def status_of(call: Callable[[], object]) -> Code:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


class Secured:
    """A running fleet whose store holds one token per role."""

    def __init__(self, fleet: LocalFleet, tokens: dict[str, tuple[str, str]]) -> None:
        self.fleet, self.tokens = fleet, tokens
        self.data_dir = fleet.root / "data"
        self._clients: list[XinheClient] = []

    def client(self, role: str | None = None, secret: str | None = None) -> XinheClient:
        token = secret if secret is not None else (self.tokens[role][1] if role else None)
        c = XinheClient(self.fleet.address, token=token, timeout=15)
        self._clients.append(c)
        return c

    def register_as(self, secret: str | None) -> agent_pb2.RegisterResponse:
        metadata = (("authorization", f"Bearer {secret}"),) if secret else ()
        with grpc.insecure_channel(self.fleet.address) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            return stub.Register(agent_pb2.RegisterRequest(node_name="intruder"),
                                 metadata=metadata, timeout=15)

    def close(self) -> None:
        for c in self._clients:
            c.close()


# Every rule holds the same when API front ends serve the port (they forward
# calls, tokens included, and batch SubmitJob; controlplane/api/frontend.py).
@pytest.fixture(scope="module", params=["direct", "front-ends"])
def secured(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("auth")
    extra = ["--api-workers", "2"] if request.param == "front-ends" else []
    data_dir = root / "data"
    tokens = {role: new_token(data_dir, kind, tenant) for role, kind, tenant in (
        ("admin", "admin", ""), ("lab-a", "tenant", "lab-a"), ("lab-b", "tenant", "lab-b"),
        ("agent", "agent", ""))}
    agent = AgentSpec("auth-h100", "h100", "east", ("H100:8",),
                      extra=("--token", tokens["agent"][1]))
    with LocalFleet(root, [agent], scheduler="inline", server_args=[*FAST, *extra]) as fleet:
        env = Secured(fleet, tokens)
        wait_ready_nodes(env.client("admin"), 1)
        yield env
        env.close()


def test_calls_without_a_valid_token_are_unauthenticated(secured: Secured) -> None:
    for client in (secured.client(), secured.client(secret="not-a-token")):
        assert status_of(client.summary) == Code.UNAUTHENTICATED
        assert status_of(lambda c=client: list(c.list())) == Code.UNAUTHENTICATED
    assert status_of(lambda: secured.register_as(None)) == Code.UNAUTHENTICATED
    assert status_of(lambda: secured.register_as("forged")) == Code.UNAUTHENTICATED


def test_each_kind_of_token_reaches_only_its_services(secured: Secured) -> None:
    tenant, agent, admin = (secured.client(r) for r in ("lab-a", "agent", "admin"))
    assert status_of(tenant.nodes) == Code.PERMISSION_DENIED
    assert status_of(lambda: tenant.cordon("auth-h100")) == Code.PERMISSION_DENIED
    assert status_of(lambda: secured.register_as(secured.tokens["lab-a"][1])) == (
        Code.PERMISSION_DENIED)
    assert status_of(lambda: list(agent.list())) == Code.PERMISSION_DENIED
    assert status_of(agent.summary) == Code.PERMISSION_DENIED
    assert [n.name for n in admin.nodes()] == ["auth-h100"]
    list(tenant.list())  # allowed, possibly empty


def test_a_tenant_sees_and_touches_only_its_own_jobs(secured: Secured) -> None:
    lab_a, lab_b, admin = (secured.client(r) for r in ("lab-a", "lab-b", "admin"))
    job = lab_a.submit(train_spec("mine", queue="lab-a/default", steps=3))
    assert status_of(lambda: lab_a.submit(train_spec("theirs", queue="lab-b/default"))) == (
        Code.PERMISSION_DENIED)
    done = wait_terminal(lab_a, job.id)  # the agent, on its agent token, ran it
    assert done.state == common_pb2.JOB_STATE_SUCCEEDED, done.state_reason
    assert any(chunk.data for chunk in lab_a.logs(job.id))
    for call in (lambda: lab_b.get(job.id), lambda: lab_b.cancel(job.id),
                 lambda: list(lab_b.watch(job.id)), lambda: list(lab_b.logs(job.id))):
        assert status_of(call) == Code.NOT_FOUND
    b_job = lab_b.submit(train_spec("b-own", queue="lab-b/default", steps=3))
    assert job.id in [j.id for j in lab_a.list()]
    assert [j.id for j in lab_b.list()] == [b_job.id]
    assert {job.id, b_job.id} <= {j.id for j in admin.list()}
    assert admin.get(job.id).id == job.id


def test_new_and_revoked_tokens_take_effect_on_the_next_call(secured: Secured) -> None:
    token_id, secret = new_token(secured.data_dir, "tenant", "lab-c")
    client = secured.client(secret=secret)
    assert list(client.list()) == []
    revoked = admin_cli(secured.data_dir, "tokens", "revoke", token_id)
    assert revoked.returncode == 0, revoked.stderr
    assert status_of(lambda: list(client.list())) == Code.UNAUTHENTICATED
    listing = admin_cli(secured.data_dir, "tokens", "list").stdout
    assert token_id in listing and secret not in listing
    assert admin_cli(secured.data_dir, "tokens", "revoke", "t-nope").returncode == 1


def test_refusals_and_admin_actions_are_audited(secured: Secured) -> None:
    admin = secured.client("admin")
    admin.cordon("auth-h100", "audit check")
    admin.uncordon("auth-h100")
    status_of(lambda: list(secured.client(secret="bogus").list()))
    status_of(lambda: secured.client("lab-b").submit(train_spec("x", queue="lab-a/default")))
    audit = admin_cli(secured.data_dir, "audit", "--limit", "1000").stdout
    admin_id = secured.tokens["admin"][0]
    assert f"token:{admin_id} CordonNode auth-h100 ok (audit check)" in audit
    assert f"token:{admin_id} UncordonNode auth-h100 ok" in audit
    assert "anonymous ListJobs - unauthenticated (unknown token)" in audit
    assert f"token:{secured.tokens['lab-b'][0]} SubmitJob lab-a/default denied" in audit
    assert "cli:" in audit and "tokens.create" in audit
    assert secured.tokens["admin"][1] not in audit
