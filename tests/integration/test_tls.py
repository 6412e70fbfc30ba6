"""TLS and mutual TLS against a real server and a real agent process.

A throwaway CA, a server certificate (SAN 127.0.0.1/localhost) and client
certificates are made with ``cryptography``; the agent joins over TLS, a job
runs to SUCCEEDED, and callers without the right credentials are refused.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agents.main import add_arguments, build_config
from controlplane.api.tls import TLSError
from controlplane.cli.common import add_client_options
from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet, xinhe_command
from controlplane.settings import ServerSettings
from tests.integration.conftest import FAST, train_spec, wait_ready_nodes, wait_terminal
from xinhe.v1 import common_pb2

Code = grpc.StatusCode


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


class TestCA:
    """A throwaway certificate authority writing PEM files under ``root``."""

    __test__ = False  # not a pytest class

    def __init__(self, root: Path, name: str) -> None:
        self.root, self.name = root, name
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
        self.cert = self._builder(self.subject, self.key.public_key()).add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True,
        ).sign(self.key, hashes.SHA256())
        self.path = root / f"{name}-ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def _builder(self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey,
                 ) -> x509.CertificateBuilder:
        """Valid from 5 minutes ago for a day, issued by this CA."""
        now = dt.datetime.now(dt.UTC)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(self.subject)
                .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1)))

    def issue(self, name: str, *, server: bool) -> Issued:
        """A leaf certificate for a server (SAN 127.0.0.1, localhost) or a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = self._builder(subject, key.public_key()).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        issued = Issued(self.root / f"{self.name}-{name}.pem",
                        self.root / f"{self.name}-{name}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, issued.key)
        return issued


@dataclass
class Pki:
    ca: TestCA
    server: Issued
    client: Issued
    agent: Issued
    rogue: Issued  # a client certificate signed by another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca, other = TestCA(root, "xinhe"), TestCA(root, "other")
    return Pki(ca, ca.issue("server", server=True), ca.issue("alice", server=False),
               ca.issue("agent", server=False), other.issue("mallory", server=False))


def _tls_fleet(root: Path, pki: Pki, *, mutual: bool, extra: tuple[str, ...] = ()) -> LocalFleet:
    server_args = ["--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)]
    agent_args = ["--tls-ca", str(pki.ca.path)]
    if mutual:
        server_args += ["--tls-ca", str(pki.ca.path)]
        agent_args += ["--tls-cert", str(pki.agent.cert), "--tls-key", str(pki.agent.key)]
    agent = AgentSpec("tls-h100", "h100", "east", ("H100:8",), extra=tuple(agent_args))
    return LocalFleet(root, [agent], scheduler="inline",
                      server_args=[*FAST, *server_args, *extra])


def _status(client: XinheClient) -> Code:
    with pytest.raises(grpc.RpcError) as info:
        client.summary()
    return info.value.code()


def _run_one_job(client: XinheClient) -> None:
    wait_ready_nodes(client, 1)
    job = client.submit(train_spec("over-tls", steps=3))
    done = wait_terminal(client, job.id)
    assert done.state == common_pb2.JOB_STATE_SUCCEEDED, done.state_reason


@pytest.fixture(scope="module")
def tls_fleet(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[LocalFleet]:
    with _tls_fleet(tmp_path_factory.mktemp("tls"), pki, mutual=False) as fleet:
        yield fleet


# Mutual TLS holds the same when API front ends end TLS on the port.
@pytest.fixture(scope="module", params=["direct", "front-ends"])
def mtls_fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               pki: Pki) -> Iterator[LocalFleet]:
    extra = ("--api-workers", "2") if request.param == "front-ends" else ()
    with _tls_fleet(tmp_path_factory.mktemp("mtls"), pki, mutual=True, extra=extra) as fleet:
        yield fleet


def test_agent_and_client_work_over_tls(tls_fleet: LocalFleet, pki: Pki) -> None:
    with XinheClient(tls_fleet.address, tls_ca=str(pki.ca.path), timeout=15) as client:
        _run_one_job(client)


def test_a_plain_text_client_cannot_talk_to_a_tls_server(tls_fleet: LocalFleet) -> None:
    with XinheClient(tls_fleet.address, timeout=10) as client:
        assert _status(client) == Code.UNAVAILABLE


def test_a_client_that_does_not_trust_the_server_ca_is_refused(
        tls_fleet: LocalFleet, pki: Pki, tmp_path: Path) -> None:
    other = TestCA(tmp_path, "untrusted")
    with XinheClient(tls_fleet.address, tls_ca=str(other.path), timeout=10) as client:
        assert _status(client) == Code.UNAVAILABLE


def test_cli_reaches_a_tls_server_through_env(tls_fleet: LocalFleet, pki: Pki) -> None:
    env_tls = {"XINHE_SERVER": tls_fleet.address, "XINHE_TLS_CA": str(pki.ca.path)}
    done = subprocess.run(xinhe_command("nodes"), capture_output=True, text=True, timeout=60,
                          check=False, env={**_base_env(), **env_tls})
    assert done.returncode == 0, done.stderr
    assert "tls-h100" in done.stdout
    plain = subprocess.run(xinhe_command("nodes"), capture_output=True, text=True, timeout=60,
                           check=False, env={**_base_env(), "XINHE_SERVER": tls_fleet.address})
    assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr


def _base_env() -> dict[str, str]:
    """This environment without XINHE_* settings (the test sets its own)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("XINHE_")},
            "COLUMNS": "200"}  # rich tables: node names unwrapped


def test_mutual_tls_runs_jobs_for_clients_with_a_ca_signed_cert(
        mtls_fleet: LocalFleet, pki: Pki) -> None:
    with XinheClient(mtls_fleet.address, tls_ca=str(pki.ca.path), tls_cert=str(pki.client.cert),
                     tls_key=str(pki.client.key), timeout=15) as client:
        _run_one_job(client)


def test_mutual_tls_refuses_clients_without_a_good_certificate(
        mtls_fleet: LocalFleet, pki: Pki) -> None:
    ca = str(pki.ca.path)
    no_cert = XinheClient(mtls_fleet.address, tls_ca=ca, timeout=10)
    rogue = XinheClient(mtls_fleet.address, tls_ca=ca, tls_cert=str(pki.rogue.cert),
                        tls_key=str(pki.rogue.key), timeout=10)
    plain = XinheClient(mtls_fleet.address, timeout=10)
    for client in (no_cert, rogue, plain):
        with client:
            assert _status(client) == Code.UNAVAILABLE


def _server_error(tmp_path: Path, *flags: str) -> str:
    done = subprocess.run(
        xinhe_command("server", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d"),
                      "--scheduler", "inline", *flags),
        capture_output=True, text=True, timeout=60, check=False, env=_base_env())
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr


def test_server_refuses_to_start_with_bad_tls_files(pki: Pki, tmp_path: Path) -> None:
    mismatched = _server_error(tmp_path, "--tls-cert", str(pki.server.cert),
                               "--tls-key", str(pki.client.key))
    assert "does not match the certificate" in mismatched
    missing = _server_error(tmp_path, "--tls-cert", str(tmp_path / "nope.pem"),
                            "--tls-key", str(pki.server.key))
    assert "cannot read TLS certificate" in missing and "nope.pem" in missing
    assert not (tmp_path / "d").exists()  # refused before the store was opened


def test_client_options_reject_bad_tls_files_up_front(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(TLSError, match="must be given together"):
        XinheClient("127.0.0.1:1", tls_cert=str(pki.client.cert))
    with pytest.raises(TLSError, match="does not match"):
        XinheClient("127.0.0.1:1", tls_ca=str(pki.ca.path), tls_cert=str(pki.client.cert),
                    tls_key=str(pki.server.key))
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate")
    with pytest.raises(TLSError, match="not a PEM file"):
        XinheClient("127.0.0.1:1", tls_ca=str(bogus))


def test_tls_settings_come_from_the_chart_env_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    chart_env = {"XINHE_TLS_CERT_FILE": "/etc/xinhe/tls/tls.crt",
                 "XINHE_TLS_KEY_FILE": "/etc/xinhe/tls/tls.key",
                 "XINHE_TLS_CA_FILE": "/etc/xinhe/tls/ca.crt"}
    settings = ServerSettings.from_env(chart_env)
    assert (settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file) == (
        "/etc/xinhe/tls/tls.crt", "/etc/xinhe/tls/tls.key", "/etc/xinhe/tls/ca.crt")
    assert settings.override(tls_ca_file="/x.pem").tls_ca_file == "/x.pem"
    assert ServerSettings().tls_cert_file == ""  # plain text by default
    for name, value in (("XINHE_TLS_CA", "ca.pem"), ("XINHE_TLS_CERT", "c.pem"),
                        ("XINHE_TLS_KEY", "c.key")):
        monkeypatch.setenv(name, value)
    agent_parser, client_parser = argparse.ArgumentParser(), argparse.ArgumentParser()
    add_arguments(agent_parser)
    add_client_options(client_parser)
    config = build_config(agent_parser.parse_args(["--tls-key", "other.key"]))
    assert (config.tls_ca, config.tls_cert, config.tls_key) == ("ca.pem", "c.pem", "other.key")
    args = client_parser.parse_args([])
    assert (args.tls_ca, args.tls_cert, args.tls_key) == ("ca.pem", "c.pem", "c.key")
