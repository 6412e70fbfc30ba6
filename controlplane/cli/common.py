"""What the CLI subcommands share: connection options, errors, formatting."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from functools import wraps

import grpc
from rich.console import Console

from controlplane.api.tls import TLSError
from controlplane.client import XinheClient, default_server, default_token
from xinhe.v1 import common_pb2

console = Console()
err_console = Console(stderr=True)


def add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=default_server(),
                        help="control plane address, or a comma-separated list of HA replicas "
                             "(env XINHE_SERVER; default %(default)s)")
    parser.add_argument("--token", default=default_token(),
                        help="bearer token (env XINHE_TOKEN)")
    parser.add_argument("--tls-ca", default=os.environ.get("XINHE_TLS_CA") or None,
                        help="PEM CA that signed the server certificate: connect over TLS "
                             "(env XINHE_TLS_CA)")
    parser.add_argument("--tls-cert", default=os.environ.get("XINHE_TLS_CERT") or None,
                        help="PEM client certificate for mutual TLS (env XINHE_TLS_CERT)")
    parser.add_argument("--tls-key", default=os.environ.get("XINHE_TLS_KEY") or None,
                        help="PEM private key of --tls-cert (env XINHE_TLS_KEY)")


def client(args: argparse.Namespace) -> XinheClient:
    """A client for the connection options; a bad TLS file exits with one line."""
    try:
        return XinheClient(args.server, token=args.token, tls_ca=args.tls_ca,
                           tls_cert=args.tls_cert, tls_key=args.tls_key)
    except TLSError as err:
        raise SystemExit(fail(str(err))) from err


def rpc_errors(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Print a gRPC error as one clear line and exit non-zero."""

    @wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except grpc.RpcError as exc:
            code = exc.code().name if exc.code() else "UNKNOWN"
            err_console.print(f"[red]error[/red] {code}: {exc.details()}")
            return 1

    return wrapper


def state_name(state: int) -> str:
    return common_pb2.JobState.Name(state).removeprefix("JOB_STATE_")


STATE_STYLE = {
    "QUEUED": "yellow", "SCHEDULED": "cyan", "STARTING": "cyan", "RUNNING": "blue",
    "SUCCEEDED": "green", "FAILED": "red", "CANCELLED": "magenta",
}


def styled_state(state: int) -> str:
    name = state_name(state)
    style = STATE_STYLE.get(name, "white")
    return f"[{style}]{name}[/{style}]"


def fmt_seconds(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def fmt_bytes(n: int) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.0f}{unit}"
    return f"{n}B"


def ts(t: object) -> float:
    """Seconds of a protobuf Timestamp (0 when unset)."""
    return t.ToNanoseconds() / 1e9  # type: ignore[attr-defined]


def placement_text(job: common_pb2.Job) -> str:
    p = job.placement
    if not p.replicas:
        return "-"
    nodes = sorted({r.node for r in p.replicas})
    devices = sum(len(r.device_indices) for r in p.replicas)
    return f"{p.pool} {p.model} x{devices} on {', '.join(nodes)}"


def fail(message: str) -> int:
    err_console.print(f"[red]error[/red] {message}")
    return 2


def die(message: str) -> None:
    fail(message)
    sys.exit(2)
