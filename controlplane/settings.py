"""Control-plane settings: one frozen object, a documented default per field,
overridable by ``XINHE_*`` environment variables and then by flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path


@dataclass(frozen=True)
class ServerSettings:
    # host:port the gRPC API (tenants, operators, agents) listens on.
    listen: str = "127.0.0.1:50051"
    # Directory of the embedded SQLite store.
    data_dir: Path = Path("./xinhe-data")
    # Store DSN; "postgresql://user@host:5432/db" uses PostgreSQL instead of
    # SQLite in data_dir (empty = SQLite).
    store_dsn: str = ""
    # PostgreSQL store: longest one store call waits for a connection,
    # connecting included (seconds). A database that is down or unreachable
    # fails the call within it and the RPC answers UNAVAILABLE, well inside
    # a client's deadline, instead of waiting for the database.
    store_timeout_s: float = 5.0
    # "ray" hosts the scheduler core in a Ray actor; "inline" runs it
    # in-process (tests, tiny installs).
    scheduler: str = "ray"
    # Join an existing Ray cluster at this address; empty = start Ray locally.
    ray_address: str = ""
    # Shards of pools the scheduler runs as (one Ray actor each, pools grouped
    # by a hash of their name; controlplane/scheduler/shards.py). 1 = one
    # actor scheduling every pool.
    scheduler_shards: int = 1
    # Agents send a heartbeat at least this often (seconds).
    heartbeat_interval_s: float = 2.0
    # A disconnected node's jobs are declared lost after this long (seconds).
    node_lost_timeout_s: float = 30.0
    # Scheduling rounds run on every change and at least this often (seconds).
    schedule_interval_s: float = 1.0
    # While jobs wait, rounds start at most this often (seconds): the
    # submissions of a burst arriving within this gap are handled by one
    # round instead of one round each. A wake after a round that placed every
    # job it found runs at once, so a lone submission is not delayed.
    schedule_min_gap_s: float = 0.02
    # SIGTERM-to-SIGKILL grace when stopping replicas (seconds).
    stop_grace_s: float = 10.0
    # When set, every call must carry `authorization: Bearer <token>`.
    auth_token: str = ""
    # gRPC worker threads.
    max_workers: int = 64
    # API front-end processes sharing the public port (SO_REUSEPORT), each
    # forwarding to this process over a private Unix socket and batching
    # concurrent SubmitJob calls (controlplane/api/frontends.py): more cores
    # for gRPC work. 0 = this process serves the port itself.
    api_workers: int = 0
    # Optional chip catalogue file replacing the packaged one.
    catalogue_path: str = ""
    # Optional scheduling policy YAML (quotas, fair share, preemption; see
    # controlplane/services/policy.py); empty = the core's defaults.
    policy_path: str = ""
    # Port of the Prometheus /metrics endpoint, on the host of `listen`;
    # 0 = off (several control planes on one host must not collide).
    metrics_port: int = 0
    # Submissions per second per tenant (token bucket); 0 = unlimited. Past it
    # SubmitJob answers RESOURCE_EXHAUSTED with a retry-after hint.
    submit_rate_per_tenant: float = 1000.0
    # Burst of submissions a tenant may make above the rate.
    submit_burst_per_tenant: float = 2000.0
    # Largest request message the server accepts (bytes); larger ones get
    # gRPC's own RESOURCE_EXHAUSTED before any code runs.
    max_message_bytes: int = 4 * 1024 * 1024
    # Log output stored per job per second (bytes); the excess is dropped and
    # replaced by one marker chunk per second; 0 = unlimited.
    log_rate_bytes_per_job: int = 1024 * 1024
    # Address callers are told to use for this replica while it leads (the
    # x-xinhe-leader hint of followers); empty = the address it listens on.
    advertise_address: str = ""
    # Leader election among replicas on one store: "auto" (a PostgreSQL
    # advisory lock on a PostgreSQL store; SQLite always leads), "postgres",
    # "none" (a single replica only) or "kubernetes" (a coordination.k8s.io
    # Lease, for replicas in a cluster; PostgreSQL store too).
    leader_election: str = "auto"
    # Seconds between election polls; a failover takes about one poll (a
    # Lease: about its 8 s duration after a crash, at once after a stop).
    leader_poll_s: float = 1.0
    # The Lease of "kubernetes" election, and its namespace (empty = the
    # pod's own, from its service account).
    lease_name: str = "xinhe-control-plane"
    lease_namespace: str = ""
    # PEM certificate and private key of the gRPC API; both set = serve TLS
    # (controlplane/api/tls.py); empty = plain text.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # PEM CA bundle; set (with cert and key) = mutual TLS: every client and
    # agent must present a certificate signed by it.
    tls_ca_file: str = ""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServerSettings:
        """Defaults overridden by XINHE_<FIELD> variables (upper case)."""
        env = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = env.get("XINHE_" + f.name.upper())
            if raw is not None:
                values[f.name] = _coerce(f.type, raw)
        return cls(**values)

    def override(self, **changes: object) -> ServerSettings:
        """A copy with the given non-None values replaced (flags win)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _coerce(type_name: object, raw: str) -> object:
    kind = str(type_name)
    if "float" in kind:
        return float(raw)
    if "int" in kind:
        return int(raw)
    if "Path" in kind:
        return Path(raw)
    return raw
