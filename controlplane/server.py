"""Assemble and run the control plane: store, scheduler host, controller,
gRPC API with health checking and reflection beside it."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from controlplane.api.errors import MalformedRequests
from controlplane.api.frontends import FrontEnds
from controlplane.api.leader_gate import LeaderGate
from controlplane.api.servicers import AdminServicer, AgentServicer, JobServicer
from controlplane.api.tls import server_credentials
from controlplane.api.transport import SERVER_OPTIONS
from controlplane.model.catalogue import load_catalogue
from controlplane.observability.exporter import MetricsExporter
from controlplane.scheduler.host import (
    InlineHost,
    RayHost,
    SchedulerHost,
    ShardedInlineHost,
    ShardedRayHost,
)
from controlplane.scheduler.types import Policy
from controlplane.services.controller import Controller
from controlplane.services.leader import AlwaysLeader, make_elector
from controlplane.services.migration_policy import MigrationPolicy
from controlplane.services.policy import load_migration_policy, load_policy
from controlplane.settings import ServerSettings
from controlplane.store import open_store
from xinhe.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc, jobs_pb2, jobs_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
)


def make_host(settings: ServerSettings) -> SchedulerHost:
    shards = settings.scheduler_shards
    if shards < 1:
        raise ValueError(f"--scheduler-shards must be >= 1, got {shards}")
    if settings.scheduler == "inline":
        log.info("scheduler core hosted in-process (%d shard(s))", shards)
        return InlineHost() if shards == 1 else ShardedInlineHost(shards)
    if settings.scheduler == "ray" and shards > 1:
        log.info("scheduler core hosted in %d Ray actors, one per shard of pools (%s)",
                 shards, settings.ray_address or "local Ray")
        return ShardedRayHost(shards, address=settings.ray_address or None)
    if settings.scheduler == "ray":
        host = RayHost(address=settings.ray_address or None)
        log.info("scheduler core hosted in a Ray actor (%s)",
                 settings.ray_address or "local Ray")
        return host
    raise ValueError(f"unknown scheduler host {settings.scheduler!r} (ray or inline)")


def _frontends(settings: ServerSettings) -> FrontEnds:
    """API front ends for ``settings`` (same limits and TLS as this process)."""
    args = ["--max-workers", str(settings.max_workers),
            "--max-message-bytes", str(settings.max_message_bytes),
            "--log-level", logging.getLevelName(logging.getLogger().getEffectiveLevel())]
    for flag, value in (("--tls-cert", settings.tls_cert_file),
                        ("--tls-key", settings.tls_key_file),
                        ("--tls-ca", settings.tls_ca_file)):
        if value:
            args += [flag, str(value)]
    return FrontEnds(settings.api_workers, settings.listen, args)


class ControlPlane:
    """A running control plane; ``stop()`` shuts it down gracefully."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        # First: a bad policy file stops the start before anything is opened.
        policy = load_policy(settings.policy_path) if settings.policy_path else Policy()
        migration = (load_migration_policy(settings.policy_path) if settings.policy_path
                     else MigrationPolicy())
        credentials = server_credentials(settings.tls_cert_file, settings.tls_key_file,
                                         settings.tls_ca_file)
        self.metrics = MetricsExporter()
        self.store = self.metrics.wrap_store(open_store(settings))
        self.host = make_host(settings)
        catalogue = load_catalogue(settings.catalogue_path or None)
        self.controller = Controller(self.store, catalogue, settings, self.host,
                                     policy=policy, migration=migration)
        self.controller.on_round = self.metrics.round_finished
        self.controller.migrations.on_migrated = self.metrics.job_migrated
        self.metrics.watch(self.controller.ctx)
        self.health = health.HealthServicer()
        # Only the leader serves the Xinhe services (services/leader.py);
        # its address is known once the port is bound (set below).
        self.elector = make_elector(settings.leader_election, settings.store_dsn, "",
                                    settings.leader_poll_s, settings.lease_name,
                                    settings.lease_namespace)
        self._serving = threading.Event()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=settings.max_workers),
                                  options=(*SERVER_OPTIONS, (
                                      "grpc.max_receive_message_length",
                                      settings.max_message_bytes)),
                                  interceptors=[self.metrics.interceptor(),
                                                MalformedRequests(),
                                                LeaderGate(SERVICE_NAMES, self._serving.is_set,
                                                           self._leader_hint)])
        jobs_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(self.controller), self.server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(self.controller), self.server)
        agent_pb2_grpc.add_AgentServiceServicer_to_server(
            AgentServicer(self.controller), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self.frontends = _frontends(settings) if settings.api_workers else None
        self.metrics.frontends(settings.api_workers, 0)  # none running yet (or ever)
        if self.frontends is not None:  # they serve the port; this process their socket
            if self.server.add_insecure_port(self.frontends.upstream) == 0:
                self.frontends.stop()  # lets the reserved port and the directory go
                raise OSError(f"cannot listen on {self.frontends.upstream}")
            self.port = self.frontends.port
        else:
            self.port = (self.server.add_secure_port(settings.listen, credentials)
                         if credentials else self.server.add_insecure_port(settings.listen))
        if self.port == 0:
            raise OSError(f"cannot listen on {settings.listen}")
        self.elector.address = settings.advertise_address or self.address

    @property
    def address(self) -> str:
        host = self.settings.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    def start(self) -> None:
        """Serve health at once; serve the Xinhe services once elected."""
        self.server.start()
        if self.frontends is not None:
            self.frontends.on_change = self.metrics.frontends
            self.frontends.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._set_service_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.elector.start(self._on_elected, self._on_deposed)
        if self.settings.metrics_port:
            self.metrics.serve(self.address.rsplit(":", 1)[0], self.settings.metrics_port)

    def _set_service_health(self, status: int) -> None:
        for name in SERVICE_NAMES:
            self.health.set(name, status)

    def _leader_hint(self) -> str:
        """The leader a refusal names: never this replica itself (a leader row
        left by this address's previous process, before it is re-elected)."""
        leader = self.elector.leader_address()
        return "" if leader == self.elector.address else leader

    def _on_elected(self) -> None:
        """Leading: rebuild state from the store (unless this only replica's
        controller has just been built from it), run the loop, serve. The
        store's writes are fenced to this term first (services/leader.py)."""
        self.store.set_leader_term(self.elector.term)
        self.controller.start(rebuild=not isinstance(self.elector, AlwaysLeader))
        self._serving.set()
        self._set_service_health(health_pb2.HealthCheckResponse.SERVING)
        self.metrics.set_ready(True)

    def _on_deposed(self) -> None:
        """No longer leading: refuse calls, stop the loop, close agent streams."""
        self._serving.clear()
        self._set_service_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.metrics.set_ready(False)
        self.controller.stop()

    def stop(self, grace: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.metrics.set_ready(False)
        self.elector.stop()
        self.controller.stop()
        if self.frontends is not None:
            self.frontends.stop()
        self.server.stop(grace).wait()
        self.controller.agents.logs.close()  # write buffered agent output
        self.host.close()
        self.store.close()
        self.metrics.close()


def serve(settings: ServerSettings) -> int:
    """Run until SIGTERM/SIGINT. Prints one 'listening on' line when ready."""
    plane = ControlPlane(settings)
    plane.start()
    print(f"xinhe server listening on {plane.address}", flush=True)
    if settings.metrics_port:
        print(f"xinhe metrics on {plane.metrics.url}", flush=True)
    done = threading.Event()

    def _shutdown(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        done.set()

    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    done.wait()
    plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(serve(ServerSettings.from_env()))
