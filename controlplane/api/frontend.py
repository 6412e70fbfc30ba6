"""An API front end: one of several processes that share the control
plane's public port (SO_REUSEPORT) so the gRPC work of many callers runs on
more than one core (``xinhe server --api-workers N``; ``frontends.py``
starts them).

A front end owns no state. It serves every RPC of the Xinhe services,
health and reflection by forwarding it to its control plane over a private
Unix socket (``proxy.py``), except SubmitJob: concurrent SubmitJob calls of
one caller go up together as one SubmitJobs call (``submit_coalescer.py``),
which is what takes work off the control plane's one core. Authentication,
authorisation, limits, leader refusals and every decision stay with the
control plane; TLS (and mutual TLS) is ended here with the same certificates.

Run as ``python -m controlplane.api.frontend --listen HOST:PORT --upstream
unix:PATH [--tls-* ...]``; it prints one ``listening`` line when serving and
exits when its parent (the control plane) is gone, or on SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from controlplane.api.proxy import (
    Forwarder,
    forward_unary,
    forwarded_metadata,
    methods_of,
    remaining,
)
from controlplane.api.submit_coalescer import Refusal, SubmitCoalescer
from controlplane.api.tls import server_credentials
from controlplane.api.transport import SERVER_OPTIONS
from xinhe.v1 import admin_pb2, agent_pb2, jobs_pb2

log = logging.getLogger(__name__)

SUBMIT_JOB = "/xinhe.v1.JobService/SubmitJob"
# The control plane's own transport settings, and a port shared with the
# other front ends.
OPTIONS = (*SERVER_OPTIONS, ("grpc.so_reuseport", 1))
# The private hop carries whatever the public side accepted, both ways.
UPSTREAM_OPTIONS = (("grpc.max_send_message_length", -1),
                    ("grpc.max_receive_message_length", -1))
PARENT_POLL_S = 0.25


def served_methods() -> dict[str, tuple[bool, bool]]:
    return methods_of(jobs_pb2.DESCRIPTOR, admin_pb2.DESCRIPTOR, agent_pb2.DESCRIPTOR,
                      health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR)


class SubmitJobHandler:
    """SubmitJob through the coalescer; bytes that do not parse go up as
    they are, so the control plane answers them as it answers any call."""

    def __init__(self, channel: grpc.Channel, coalescer: SubmitCoalescer) -> None:
        self._forward = forward_unary(channel, SUBMIT_JOB)
        self._coalescer = coalescer

    def __call__(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            request = jobs_pb2.SubmitJobRequest.FromString(raw)
        except Exception:  # DecodeError and kin: the owner words the refusal
            return self._forward(raw, context)
        outcome = self._coalescer.submit(request, forwarded_metadata(context),
                                         remaining(context))
        if isinstance(outcome, Refusal):
            if outcome.trailing:
                context.set_trailing_metadata(outcome.trailing)
            context.abort(outcome.code, outcome.details)
        return outcome.SerializeToString()


class FrontEnd:
    """A front end serving ``listen`` for the control plane at ``upstream``."""

    def __init__(self, listen: str, upstream: str, *, max_workers: int = 64,
                 max_message_bytes: int = 4 * 1024 * 1024, tls_cert: str = "",
                 tls_key: str = "", tls_ca: str = "") -> None:
        self.channel = grpc.insecure_channel(upstream, options=UPSTREAM_OPTIONS)
        coalescer = SubmitCoalescer(self.channel, max_message_bytes)
        submit = grpc.unary_unary_rpc_method_handler(SubmitJobHandler(self.channel, coalescer))
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            options=(*OPTIONS, ("grpc.max_receive_message_length", max_message_bytes)))
        self.server.add_generic_rpc_handlers(
            (Forwarder(self.channel, served_methods(), {SUBMIT_JOB: submit}),))
        credentials = server_credentials(tls_cert, tls_key, tls_ca)
        self.port = (self.server.add_secure_port(listen, credentials) if credentials
                     else self.server.add_insecure_port(listen))
        if self.port == 0:
            raise OSError(f"cannot listen on {listen}")

    def start(self) -> None:
        self.server.start()

    def stop(self, grace: float = 2.0) -> None:
        self.server.stop(grace).wait()
        self.channel.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m controlplane.api.frontend",
                                description="Xinhe API front end (started by xinhe server)")
    p.add_argument("--listen", required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--max-workers", type=int, default=64)
    p.add_argument("--max-message-bytes", type=int, default=4 * 1024 * 1024)
    p.add_argument("--tls-cert", default="")
    p.add_argument("--tls-key", default="")
    p.add_argument("--tls-ca", default="")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s "
                                                    "frontend[%(process)d] %(message)s")
    parent = os.getppid()
    front = FrontEnd(args.listen, args.upstream, max_workers=args.max_workers,
                     max_message_bytes=args.max_message_bytes, tls_cert=args.tls_cert,
                     tls_key=args.tls_key, tls_ca=args.tls_ca)
    front.start()
    print(f"xinhe frontend listening on {args.listen}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    # A control plane killed outright cannot stop its front ends: they
    # notice that they were handed to another parent and leave.
    while not done.wait(PARENT_POLL_S):
        if os.getppid() != parent:
            log.warning("control plane %d is gone; stopping", parent)
            break
    front.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
