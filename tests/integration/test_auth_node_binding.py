"""Agent tokens bound to a node, and agents reporting only on their own node,
through a real server and a real agent process.

The real agent joins with a token bound to its node (``xinhe admin tokens
create --kind agent --node NAME``); a hand-driven "rogue" agent speaks the
agent protocol with its own tokens and tries to act as another node or to
report on the real agent's job.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet
from controlplane.services.auth import TokenAdmin
from controlplane.store.sqlite import SqliteStore
from tests.integration.conftest import FAST, train_spec, wait_for, wait_ready_nodes, wait_terminal
from tests.integration.test_auth import admin_cli, new_token
from xinhe.v1 import agent_pb2, agent_pb2_grpc, common_pb2

Code = grpc.StatusCode
R = agent_pb2
NODE = "bound-h100"


def agent_token(data_dir: Path, node: str = "") -> str:
    """A new agent token's secret, made on the server's store in-process (the
    CLI path of ``--node`` is exercised by the fixture)."""
    with SqliteStore(data_dir / "xinhe.db") as store:
        return TokenAdmin(store, time.time).create("agent", node=node, actor="test")[1]


def audit_text(data_dir: Path) -> str:
    with SqliteStore(data_dir / "xinhe.db") as store:
        return "\n".join(f"{r.actor} {r.action} {r.target} {r.outcome} ({r.detail})"
                         for r in store.audit_events(limit=10_000))


class RogueAgent:
    """The agent protocol by hand, with the given bearer token."""

    def __init__(self, address: str, secret: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = agent_pb2_grpc.AgentServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {secret}"),)
        self.outbox: queue.Queue[agent_pb2.AgentMessage | None] = queue.Queue()
        self.received: queue.Queue[agent_pb2.ControlMessage] = queue.Queue()

    def register(self, node: str) -> agent_pb2.RegisterResponse:
        return self.stub.Register(R.RegisterRequest(
            protocol_version=R.PROTOCOL_VERSION_1, node_name=node, pool="rogue",
            region="east"), metadata=self.metadata, timeout=15)

    def connect(self, session_id: str) -> grpc.RpcError | None:
        """Open the stream; returns the error it ended with, if it ended
        within a few seconds (a refused Connect)."""
        self.outbox.put(R.AgentMessage(session_id=session_id, heartbeat=R.Heartbeat()))
        errors: list[grpc.RpcError] = []

        def messages() -> Iterator[agent_pb2.AgentMessage]:
            while (message := self.outbox.get()) is not None:
                yield message

        def read() -> None:
            try:
                for message in self.stub.Connect(messages(), metadata=self.metadata):
                    self.received.put(message)
            except grpc.RpcError as exc:
                errors.append(exc)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(3)
        return errors[0] if errors else None

    def send(self, session_id: str, **body: object) -> None:
        self.outbox.put(R.AgentMessage(session_id=session_id, **body))

    def close(self) -> None:
        self.outbox.put(None)
        self.channel.close()


@dataclass
class Bound:
    fleet: LocalFleet
    admin: XinheClient

    @property
    def data_dir(self) -> Path:
        return self.fleet.root / "data"


@pytest.fixture(scope="module")
def bound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bound]:
    root = tmp_path_factory.mktemp("binding")
    _, admin = new_token(root / "data", "admin")
    done = admin_cli(root / "data", "tokens", "create", "--kind", "agent", "--node", NODE)
    assert done.returncode == 0, done.stderr
    assert f"for node {NODE}" in done.stderr
    agent = AgentSpec(NODE, "h100", "east", ("H100:8",), extra=("--token", done.stdout.strip()))
    with LocalFleet(root, [agent], scheduler="inline", server_args=FAST) as fleet:
        env = Bound(fleet, XinheClient(fleet.address, token=admin, timeout=15))
        wait_ready_nodes(env.admin, 1)
        yield env
        env.admin.close()


def test_a_bound_token_registers_and_connects_only_as_its_node(bound: Bound) -> None:
    admin = bound.admin
    for_x, for_y = agent_token(bound.data_dir, "rogue-x"), agent_token(bound.data_dir, "rogue-y")
    x, y = RogueAgent(bound.fleet.address, for_x), RogueAgent(bound.fleet.address, for_y)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            y.register(NODE)
        assert refused.value.code() == Code.PERMISSION_DENIED
        assert "'rogue-y'" in refused.value.details() and f"'{NODE}'" in refused.value.details()
        session = x.register("rogue-x").session_id
        # y presents x's session: refused before the stream attaches.
        error = y.connect(session)
        assert error is not None and error.code() == Code.PERMISSION_DENIED
        assert "'rogue-x'" in error.details()
        assert x.connect(session) is None  # its own session: the stream stays open
        wait_for(lambda: any(n.name == "rogue-x" and n.status == common_pb2.NODE_STATUS_READY
                             for n in admin.nodes()), 30, "rogue-x ready")
    finally:
        x.close()
        y.close()
    audit = audit_text(bound.data_dir)
    assert f"Register {NODE} denied" in audit
    assert "Connect rogue-y denied" in audit and "act as node 'rogue-x'" in audit


def test_an_agent_reports_only_on_its_own_nodes_replicas(bound: Bound) -> None:
    admin = bound.admin
    unbound = agent_token(bound.data_dir)
    # Long enough to outlive the rogue's exchange (connect alone waits 3 s).
    job = admin.submit(train_spec("victim", steps=100, step_sleep=0.1))
    running = wait_for(lambda: (j := admin.get(job.id)).state == common_pb2.JOB_STATE_RUNNING
                       and j, 60, "victim running")
    ref = R.ReplicaRef(job_id=job.id, attempt=running.attempt, rank=0, epoch=running.epoch)
    rogue = RogueAgent(bound.fleet.address, unbound)
    try:
        session = rogue.register("rogue-z").session_id
        assert rogue.connect(session) is None
        rogue.send(session, logs=common_pb2.LogChunk(job_id=job.id, attempt=ref.attempt,
                                                     data=b"FORGED OUTPUT\n", offset=0))
        rogue.send(session, status=R.ReplicaStatus(ref=ref, state=R.REPLICA_STATE_RUNNING,
                                                   agent_sequence=1))
        rogue.send(session, status=R.ReplicaStatus(ref=ref, state=R.REPLICA_STATE_FAILED,
                                                   exit_code=9, agent_sequence=2))
        stops = []
        while len(stops) < 1:  # its live report is answered with a stop
            message = rogue.received.get(timeout=30)
            if message.WhichOneof("body") == "stop":
                stops.append(message.stop)
        assert stops[0].ref.job_id == job.id
        assert admin.get(job.id).state == common_pb2.JOB_STATE_RUNNING
    finally:
        rogue.close()
    done = wait_terminal(admin, job.id)
    assert done.state == common_pb2.JOB_STATE_SUCCEEDED, done.state_reason
    assert done.attempt == 1  # the forged failure spent no retry
    output = b"".join(chunk.data for chunk in admin.logs(job.id))
    assert output and b"FORGED" not in output
