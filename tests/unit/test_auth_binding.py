"""Agent tokens bound to a node, and which node owns a replica."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.api.errors import InvalidArgument, PermissionDenied
from controlplane.services.auth import TOKEN_PREFIX, Authenticator, Identity, TokenAdmin
from controlplane.services.replica_owner import ReplicaOwnership
from controlplane.store.base import ReplicaRecord
from controlplane.store.sqlite import SqliteStore

T0 = 1_700_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    with SqliteStore(tmp_path / "x.db") as opened:
        yield opened


def test_a_bound_agent_token_acts_only_as_its_node(store: SqliteStore) -> None:
    admin = TokenAdmin(store, lambda: T0)
    record, secret = admin.create("agent", node="gpu-17", actor="test")
    assert record.node == "gpu-17"
    who = Authenticator(store, "", lambda: T0).check(secret, "AgentService", "Register")
    assert who == Identity("agent", actor=f"token:{record.id}", node="gpu-17")
    who.check_node("gpu-17")
    with pytest.raises(PermissionDenied, match=r"bound to node 'gpu-17'.*node 'gpu-18'"):
        who.check_node("gpu-18")
    assert "node=gpu-17" in store.audit_events()[-1].detail


def test_a_family_binding_covers_the_nodes_under_its_name(store: SqliteStore) -> None:
    _, secret = TokenAdmin(store, lambda: T0).create("agent", node="k8s-a.*")
    who = Authenticator(store, "", lambda: T0).check(secret, "AgentService", "Connect")
    for node in ("k8s-a.worker-1", "k8s-a.x.y"):
        who.check_node(node)
    for node in ("k8s-a", "k8s-a.", "k8s-ab.worker-1", "k8s-b.worker-1", "worker.k8s-a.x"):
        with pytest.raises(PermissionDenied):
            who.check_node(node)


def test_unbound_tokens_may_act_as_any_node(store: SqliteStore) -> None:
    admin = TokenAdmin(store, lambda: T0)
    _, agent = admin.create("agent")
    _, operator = admin.create("admin")
    auth = Authenticator(store, "", lambda: T0)
    for secret in (agent, operator):
        auth.check(secret, "AgentService", "Register").check_node("anything")


@pytest.mark.parametrize(("kind", "tenant", "node"), [
    ("tenant", "lab-a", "gpu-1"),
    ("admin", "", "gpu-1"),
    ("agent", "", "bad node!"),
    ("agent", "", "-leading-dash"),
    ("agent", "", "*"),
    ("agent", "", "k8s-a*"),
    ("agent", "", "k8s.*.x"),
])
def test_only_agent_tokens_bind_to_a_valid_node_name(store: SqliteStore, kind: str, tenant: str,
                                                     node: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        TokenAdmin(store, lambda: T0).create(kind, tenant, node=node)
    assert info.value.field == "node"
    assert store.list_tokens() == []


def _row(job_id: str, rank: int, node: str) -> ReplicaRecord:
    return ReplicaRecord(job_id, 1, rank, 7, node, 0, 0, "")


def test_replica_ownership_is_read_once_per_replica() -> None:
    reads: list[tuple[str, int]] = []
    rows = {("j-1", 1): [_row("j-1", 0, "n1"), _row("j-1", 1, "n2")]}

    def replicas(job_id: str, attempt: int) -> list[ReplicaRecord]:
        reads.append((job_id, attempt))
        return rows.get((job_id, attempt), [])

    owners = ReplicaOwnership(replicas)
    assert owners.owns("n1", "j-1", 1, 0) and owners.owns("n1", "j-1", 1, 0)
    assert not owners.owns("n1", "j-1", 1, 1) and owners.owns("n2", "j-1", 1, 1)
    assert reads == [("j-1", 1), ("j-1", 1)]  # one read per replica, then remembered
    assert not owners.owns("n1", "j-9", 1, 0)  # unknown replicas belong to no one
    assert not owners.owns("", "j-9", 1, 0)


def test_replica_ownership_forgets_the_least_recently_used() -> None:
    reads: list[str] = []

    def replicas(job_id: str, attempt: int) -> list[ReplicaRecord]:
        reads.append(job_id)
        return [_row(job_id, 0, "n1")]

    owners = ReplicaOwnership(replicas, capacity=2)
    for job_id in ("a", "b", "a", "c", "a", "b"):
        assert owners.owns("n1", job_id, 1, 0)
    assert reads == ["a", "b", "c", "b"]


def test_bindings_name_nodes_as_agents_register_them() -> None:
    from controlplane.services import agents, auth

    assert auth.NODE_RE.pattern == agents.NAME.pattern


def test_secrets_never_look_like_an_option(store: SqliteStore) -> None:
    """token_urlsafe can start with "-": `xinhe agent --token -abc` would then fail."""
    admin = TokenAdmin(store, lambda: T0)
    for _ in range(64):
        _, secret = admin.create("tenant", "lab-a")
        assert secret.startswith(TOKEN_PREFIX) and len(secret) > 40
