"""Certificate rotation without a restart: a real server on mutual TLS whose
certificate, key and CA files are replaced (another CA altogether) serves
the new set to new connections; a rotation caught half-way keeps the old
set in service."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import grpc
import pytest

from controlplane.api.tls import ReloadingCertificates
from controlplane.client import XinheClient
from controlplane.localfleet import LocalFleet
from tests.integration.conftest import FAST
from tests.integration.test_tls import TestCA

Code = grpc.StatusCode


class Generation:
    """One CA with a server and a client certificate."""

    def __init__(self, root: Path, name: str) -> None:
        self.ca = TestCA(root, name)
        self.server = self.ca.issue("server", server=True)
        self.client = self.ca.issue("client", server=False)


class LiveFiles:
    """The files the server is pointed at, replaced as an operator would."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.cert, self.key, self.ca = root / "tls.crt", root / "tls.key", root / "ca.crt"

    def install(self, gen: Generation, *, parts: tuple[str, ...] = ("cert", "key", "ca")) -> None:
        """Replace files by atomic rename (what cert-manager's volume does)."""
        sources = {"cert": gen.server.cert, "key": gen.server.key, "ca": gen.ca.path}
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

