"""`xinhe server`: run the control plane."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from controlplane.api.tls import TLSError
from controlplane.services.policy import PolicyError
from controlplane.settings import ServerSettings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="run the control plane",
                       description="Run the control plane (embedded SQLite store, "
                                   "scheduler hosted on Ray). Flags override XINHE_* env.")
    p.add_argument("--listen", help="host:port for the gRPC API (default 127.0.0.1:50051)")
    p.add_argument("--data-dir", type=Path, help="store directory (default ./xinhe-data)")
    p.add_argument("--store-dsn", help="postgresql://user@host:5432/db to use PostgreSQL "
                                       "instead of SQLite in --data-dir")
    p.add_argument("--store-timeout", type=float, dest="store_timeout_s",
                   help="seconds a PostgreSQL store call may wait for the database before "
                        "the RPC answers UNAVAILABLE (default 5)")
    p.add_argument("--scheduler", choices=("ray", "inline"),
                   help="host the scheduler core on Ray (default) or in-process")
    p.add_argument("--ray-address", help="join this Ray cluster instead of starting one")
    p.add_argument("--scheduler-shards", type=positive_int, dest="scheduler_shards",
                   help="schedule pools in this many shards, one Ray actor each, in "
                        "parallel (default 1)")
    p.add_argument("--heartbeat-interval", type=float, dest="heartbeat_interval_s")
    p.add_argument("--node-lost-timeout", type=float, dest="node_lost_timeout_s",
                   help="seconds before a disconnected node's jobs are requeued")
    p.add_argument("--schedule-interval", type=float, dest="schedule_interval_s")
    p.add_argument("--schedule-min-gap", type=float, dest="schedule_min_gap_s",
                   help="seconds between rounds while jobs wait (coalesces bursts; 0.02)")
    p.add_argument("--stop-grace", type=float, dest="stop_grace_s")
    p.add_argument("--auth-token", help="require this bearer token on every call")
    p.add_argument("--api-workers", type=non_negative_int, dest="api_workers",
                   help="API front-end processes sharing the port, batching SubmitJob "
                        "calls (default 0 = serve the port in this process)")
    p.add_argument("--catalogue", dest="catalogue_path", help="chip catalogue YAML")
    p.add_argument("--policy", dest="policy_path",
                   help="scheduling policy YAML: quotas, fair share, preemption")
    p.add_argument("--metrics-port", type=int, dest="metrics_port",
                   help="serve Prometheus /metrics on this port (default 0 = off)")
    p.add_argument("--submit-rate", type=float, dest="submit_rate_per_tenant",
                   help="submissions/s per tenant before RESOURCE_EXHAUSTED (default 1000; "
                        "0 = unlimited)")
    p.add_argument("--submit-burst", type=float, dest="submit_burst_per_tenant",
                   help="submissions a tenant may burst above the rate (default 2000)")
    p.add_argument("--max-message-bytes", type=int, dest="max_message_bytes",
                   help="largest request accepted (default 4 MiB)")
    p.add_argument("--log-rate", type=int, dest="log_rate_bytes_per_job",
                   help="log bytes/s stored per job, excess dropped (default 1 MiB; 0 = off)")
    p.add_argument("--advertise-address", dest="advertise_address",
                   help="host:port callers are sent to while this replica leads "
                        "(default: the listen address)")
    p.add_argument("--leader-election", dest="leader_election",
                   choices=("auto", "postgres", "none", "kubernetes"),
                   help="auto (default): elect on a PostgreSQL store, lead alone on SQLite")
    p.add_argument("--lease-name", dest="lease_name",
                   help="Lease of --leader-election kubernetes (default xinhe-control-plane)")
    p.add_argument("--lease-namespace", dest="lease_namespace",
                   help="its namespace (default: the pod's own)")
    p.add_argument("--leader-poll", type=float, dest="leader_poll_s",
                   help="seconds between leader-election polls (default 1; ~failover time)")
    p.add_argument("--tls-cert", dest="tls_cert_file",
                   help="PEM certificate: serve the API over TLS (with --tls-key)")
    p.add_argument("--tls-key", dest="tls_key_file", help="PEM private key of --tls-cert")
    p.add_argument("--tls-ca", dest="tls_ca_file",
                   help="PEM CA: require client certificates signed by it (mutual TLS)")
    p.set_defaults(func=run)


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low`` (a clear usage error otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def run(args: argparse.Namespace) -> int:
    from controlplane.server import serve

    settings = ServerSettings.from_env().override(
        listen=args.listen, data_dir=args.data_dir, store_dsn=args.store_dsn,
        store_timeout_s=args.store_timeout_s, scheduler=args.scheduler,
        ray_address=args.ray_address, scheduler_shards=args.scheduler_shards,
        heartbeat_interval_s=args.heartbeat_interval_s,
        node_lost_timeout_s=args.node_lost_timeout_s,
        schedule_interval_s=args.schedule_interval_s, stop_grace_s=args.stop_grace_s,
        schedule_min_gap_s=args.schedule_min_gap_s,
        auth_token=args.auth_token, api_workers=args.api_workers,
        catalogue_path=args.catalogue_path,
        policy_path=args.policy_path,
        metrics_port=args.metrics_port,
        submit_rate_per_tenant=args.submit_rate_per_tenant,
        submit_burst_per_tenant=args.submit_burst_per_tenant,
        max_message_bytes=args.max_message_bytes,
        log_rate_bytes_per_job=args.log_rate_bytes_per_job,
        advertise_address=args.advertise_address, leader_election=args.leader_election,
        lease_name=args.lease_name, lease_namespace=args.lease_namespace,
        leader_poll_s=args.leader_poll_s, tls_cert_file=args.tls_cert_file,
        tls_key_file=args.tls_key_file, tls_ca_file=args.tls_ca_file)
    try:
        return serve(settings)
    except (PolicyError, TLSError) as err:  # bad policy/TLS file: one line, no traceback
        print(f"xinhe server: {err}", file=sys.stderr)
        return 2
