"""Certificate rotation without a restart: a real server on mutual TLS whose
certificate, key and CA files are replaced (another CA altogether) serves
the new set to new connections; a rotation caught half-way keeps the old
set in service."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import grpc
import pytest

from controlplane.api.tls import ReloadingCertificates, ReloadingChannelCredentials
from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet
from tests.integration.conftest import FAST, wait_for
from tests.integration.test_tls import TestCA
from xinhe.v1 import common_pb2

Code = grpc.StatusCode


class Generation:
    """One CA with a server and a client certificate."""

    def __init__(self, root: Path, name: str) -> None:
        self.ca = TestCA(root, name)
        self.server = self.ca.issue("server", server=True)
        self.client = self.ca.issue("client", server=False)


class LiveFiles:
    """The files the server is pointed at, replaced as an operator would."""

    role = "server"

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.cert, self.key, self.ca = (root / f"{self.role}.crt", root / f"{self.role}.key",
                                        root / "ca.crt")

    def install(self, gen: Generation, *, parts: tuple[str, ...] = ("cert", "key", "ca")) -> None:
        """Replace files by atomic rename (what cert-manager's volume does)."""
        issued = getattr(gen, self.role)
        sources = {"cert": issued.cert, "key": issued.key, "ca": gen.ca.path}
        for part in parts:
            target: Path = getattr(self, part)
            staging = target.with_suffix(".new")
            shutil.copyfile(sources[part], staging)
            os.replace(staging, target)

    def server_args(self) -> list[str]:
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key),
                "--tls-ca", str(self.ca)]


@pytest.fixture(scope="module")
def gens(tmp_path_factory: pytest.TempPathFactory) -> tuple[Generation, Generation]:
    root = tmp_path_factory.mktemp("rotation-pki")
    return Generation(root, "a"), Generation(root, "b")


def connects(address: str, gen: Generation) -> bool:
    """Whether a new client trusting only ``gen``'s CA (with its client
    certificate) gets an answer; a fresh channel is a new connection."""
    with XinheClient(address, tls_ca=str(gen.ca.path), tls_cert=str(gen.client.cert),
                     tls_key=str(gen.client.key), timeout=10) as client:
        try:
            client.summary()
        except grpc.RpcError as err:
            assert err.code() == Code.UNAVAILABLE, err
            return False
    return True


def test_a_rotated_certificate_and_ca_serve_new_connections(
        tmp_path: Path, gens: tuple[Generation, Generation]) -> None:
    a, b = gens
    live = LiveFiles(tmp_path / "live")
    live.install(a)
    with LocalFleet(tmp_path, [], scheduler="inline",
                    server_args=[*FAST, *live.server_args()]) as fleet:
        assert connects(fleet.address, a) and not connects(fleet.address, b)
        live.install(b, parts=("cert",))  # half-way: B's certificate, A's key
        assert connects(fleet.address, a) and not connects(fleet.address, b)
        live.install(b, parts=("key", "ca"))
        assert connects(fleet.address, b)
        assert not connects(fleet.address, a)  # A's CA no longer trusted, nor trusting
        assert "serving the new certificate" in fleet.server.log_text()


def test_the_fetcher_reads_files_only_when_they_change(
        tmp_path: Path, gens: tuple[Generation, Generation]) -> None:
    a, b = gens
    live = LiveFiles(tmp_path / "live")
    live.install(a)
    files = ReloadingCertificates(live.cert, live.key, live.ca)
    assert files.fetch() is None  # unchanged since start
    live.install(b, parts=("key",))
    assert files.fetch() is None and files.reloads == 0  # mismatched pair: keep the old
    live.install(b, parts=("cert", "ca"))
    assert files.fetch() is not None and files.reloads == 1
    assert files.fetch() is None and files.reloads == 1
    live.ca.unlink()  # mid-rotation, a file missing: keep serving
    assert files.fetch() is None
    shutil.copyfile(b.ca.path, live.ca)
    assert isinstance(files.fetch(), grpc.ServerCertificateConfiguration)



class AgentFiles(LiveFiles):
    """An agent's own CA, client certificate and key, replaced by rename."""

    role = "client"

    def agent_args(self) -> tuple[str, ...]:
        return ("--tls-ca", str(self.ca), "--tls-cert", str(self.cert),
                "--tls-key", str(self.key), "--heartbeat-interval", "0.5")


def node_ready(address: str, gen: Generation, since: float = 0.0) -> bool:
    """Whether the node is READY with a heartbeat after ``since``, as seen by
    a client of ``gen``."""
    with XinheClient(address, tls_ca=str(gen.ca.path), tls_cert=str(gen.client.cert),
                     tls_key=str(gen.client.key), timeout=5) as client:
        try:
            return any(n.status == common_pb2.NODE_STATUS_READY
                       and n.last_heartbeat.ToNanoseconds() / 1e9 > since
                       for n in client.nodes())
        except grpc.RpcError:
            return False


def test_an_agent_reconnects_with_its_rotated_files(
        tmp_path: Path, gens: tuple[Generation, Generation]) -> None:
    """Server and agent move from CA A to CA B; the server restarts, so the
    agent must reconnect: it can only do so with the new files."""
    a, b = gens
    live, mine = LiveFiles(tmp_path / "live"), AgentFiles(tmp_path / "agent-tls")
    live.install(a)
    mine.install(a)
    spec = AgentSpec("rot-1", "p", "r", ("H100:1",), mine.agent_args())
    with LocalFleet(tmp_path, [spec], scheduler="inline",
                    server_args=[*FAST, *live.server_args()]) as fleet:
        wait_for(lambda: node_ready(fleet.address, a), 60, "the agent registered over CA A")
        mine.install(b, parts=("cert",))  # half-way on the agent: kept, nothing breaks
        live.install(b)
        mine.install(b, parts=("key", "ca"))
        assert fleet.server is not None
        fleet.server.stop()
        restarted = time.time()
        fleet.start_server()  # same address; the agent's stream broke
        wait_for(lambda: node_ready(fleet.address, b, restarted), 60,
                 "the agent reconnected with the rotated files")
        assert "new connections use the new certificate" in fleet.agents["rot-1"].log_text()


def test_client_credentials_change_only_for_a_consistent_new_set(
        tmp_path: Path, gens: tuple[Generation, Generation]) -> None:
    a, b = gens
    mine = AgentFiles(tmp_path / "agent-tls")
    mine.install(a)
    files = ReloadingChannelCredentials(mine.ca, mine.cert, mine.key)
    first = files.credentials
    assert not files.refresh() and files.credentials is first  # unchanged
    mine.install(b, parts=("cert",))  # B's certificate, A's key: not usable yet
    assert not files.refresh() and files.credentials is first
    mine.install(b, parts=("key", "ca"))
    assert files.refresh() and files.credentials is not first and files.reloads == 1
    mine.ca.unlink()
    assert not files.refresh() and files.reloads == 1
