"""Python client for the Xinhe API (tenants and operators).

    client = XinheClient("127.0.0.1:50051", token=None)
    job = client.submit(spec_from_yaml(open("job.yaml").read()), client_key="run-42")
    for event in client.watch(job.id, follow=True): ...

Every call raises grpc.RpcError on failure; its ``code()`` and ``details()``
carry the server's status and message (INVALID_ARGUMENT names the field).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from controlplane.api.tls import channel_credentials, make_channel
from controlplane.services.leader import LEADER_METADATA
from xinhe.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    jobs_pb2,
    jobs_pb2_grpc,
)

DEFAULT_SERVER = "127.0.0.1:50051"


def default_server() -> str:
    return os.environ.get("XINHE_SERVER", DEFAULT_SERVER)


def default_token() -> str | None:
    return os.environ.get("XINHE_TOKEN") or None


def parse_targets(target: str) -> list[str]:
    """The addresses of a comma-separated list, in order, without blanks or
    repeats; ValueError when none is left."""
    out: list[str] = []
    for part in target.split(","):
        part = part.strip()
        if part and part not in out:
            out.append(part)
    if not out:
        raise ValueError(f"no server address in {target!r}")
    return out


def leader_hint(err: grpc.RpcError) -> str:
    """The leader's address a follower named in its refusal, or ""."""
    trailing = getattr(err, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key == LEADER_METADATA:
            return value
    return ""


def _electing(err: grpc.RpcError) -> bool:
    """A follower's refusal while no leader is known (an election is running)."""
    details = err.details() if callable(getattr(err, "details", None)) else ""
    return (details or "").startswith("not the leader") and not leader_hint(err)


def _method_name(client: XinheClient, method: object) -> tuple[str, str]:
    """(RPC name, "jobs" or "admin") of a stub attribute of ``client``."""
    for service in ("jobs", "admin"):
        for name, value in vars(getattr(client, service)).items():
            if value is method:
                return name, service
    raise ValueError("not a method of this client's stubs")


class XinheClient:
    """``target`` is one address or a comma-separated list (the replicas of
    a highly available control plane). Calls go to the current address; a
    call answered UNAVAILABLE moves to the leader the answer names
    (``x-xinhe-leader``) or else to the next address, and is retried there
    when it is safe to: reads, cancel, and SubmitJob with a client_key."""

    def __init__(self, target: str | None = None, token: str | None = None,
                 timeout: float = 30.0, *, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None,
                 failover_wait_s: float = 10.0,
                 channel_options: Sequence[tuple[str, Any]] = ()) -> None:
        """``tls_ca`` (PEM) turns on TLS and verifies the server with it;
        ``tls_cert``/``tls_key`` are this client's certificate for mutual TLS.
        Bad TLS files raise controlplane.api.tls.TLSError here, not per call."""
        self.target = target or default_server()
        self._credentials = channel_credentials(tls_ca, tls_cert, tls_key)
        self.targets = parse_targets(self.target)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = timeout
        self.failover_wait_s = failover_wait_s
        self._channel_options = tuple(channel_options)
        self._channels: dict[str, grpc.Channel] = {}
        self._use(self.targets[0])

    def _use(self, address: str) -> None:
        """Make ``address`` the current one (its channel kept for reuse)."""
        if address not in self._channels:
            self._channels[address] = make_channel(address, self._credentials,
                                                   self._channel_options)
        self.current = address
        self._channel = self._channels[address]
        self.jobs = jobs_pb2_grpc.JobServiceStub(self._channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self._channel)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def __enter__(self) -> XinheClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, method, request, *, retry: bool = True):
        """Call ``method`` (an attribute of ``self.jobs`` or ``self.admin``);
        on UNAVAILABLE move to the leader or the next replica and, when
        ``retry``, try again there (once per replica, plus one hint hop).
        A refusal that names no other leader ("no leader elected yet": an
        election in progress) is retried with backoff for up to
        ``failover_wait_s``, the time a failover takes."""
        name, service = _method_name(self, method)
        waited, pause = 0.0, 0.05
        attempt = 0
        while True:
            try:
                return getattr(getattr(self, service), name)(
                    request, metadata=self._metadata, timeout=self._timeout)
            except grpc.RpcError as err:
                unavailable = err.code() == grpc.StatusCode.UNAVAILABLE
                if unavailable and retry and _electing(err) and waited < self.failover_wait_s:
                    time.sleep(pause)
                    waited, pause = waited + pause, min(pause * 2, 1.0)
                    continue
                moved = unavailable and self._follow(err)
                if not (moved and retry and attempt < len(self.targets)):
                    raise
                attempt += 1

    def _follow(self, err: grpc.RpcError) -> bool:
        """Switch address after an UNAVAILABLE answer; False when there is
        nowhere else to go (one address and no leader hint)."""
        hint = leader_hint(err)
        if hint and hint != self.current:
            self._use(hint)
            return True
        if len(self.targets) > 1:
            index = self.targets.index(self.current) if self.current in self.targets else -1
            self._use(self.targets[(index + 1) % len(self.targets)])
            return True
        return False

    def _stream(self, name: str, request) -> Iterator:
        """A server stream of JobService ``name``, moved to the leader when the
        call is refused before its first message (later errors propagate)."""
        waited, pause = 0.0, 0.05
        attempt = 0
        while True:
            call = getattr(self.jobs, name)(request, metadata=self._metadata)
            try:
                first = next(call)
            except StopIteration:
                return
            except grpc.RpcError as err:
                unavailable = err.code() == grpc.StatusCode.UNAVAILABLE
                if unavailable and _electing(err) and waited < self.failover_wait_s:
                    time.sleep(pause)
                    waited, pause = waited + pause, min(pause * 2, 1.0)
                    continue
                last = attempt == len(self.targets)
                if not unavailable or last or not self._follow(err):
                    raise
                attempt += 1
                continue
            yield first
            yield from call
            return

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the server accepts connections (or raise)."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    # -- jobs ---------------------------------------------------------------
    def submit(self, spec: common_pb2.JobSpec, client_key: str = "") -> common_pb2.Job:
        return self.submit_full(spec, client_key).job

    def submit_full(self, spec: common_pb2.JobSpec,
                    client_key: str = "") -> jobs_pb2.SubmitJobResponse:
        # Without a client_key a retry could submit the job twice.
        return self._call(self.jobs.SubmitJob,
                          jobs_pb2.SubmitJobRequest(spec=spec, client_key=client_key),
                          retry=bool(client_key))

    def submit_many(self, specs: Sequence[common_pb2.JobSpec],
                    keys: Sequence[str] | None = None) -> list[jobs_pb2.SubmitJobResult]:
        """SubmitJobs: one result per spec, in order (``error_code`` 0 =
        accepted; else ``error_message`` names ``requests[i].<field>``).
        ``keys``: one idempotency key per spec; with a key for every spec
        the call is retried on failover like SubmitJob."""
        if keys is not None and len(keys) != len(specs):
            raise ValueError(f"{len(keys)} keys for {len(specs)} specs")
        keys = list(keys) if keys is not None else [""] * len(specs)
        request = jobs_pb2.SubmitJobsRequest(requests=[
            jobs_pb2.SubmitJobRequest(spec=spec, client_key=key)
            for spec, key in zip(specs, keys, strict=True)])
        return list(self._call(self.jobs.SubmitJobs, request, retry=all(keys)).results)

    def get(self, job_id: str) -> common_pb2.Job:
        return self._call(self.jobs.GetJob, jobs_pb2.GetJobRequest(job_id=job_id))

    def list(self, states: tuple[int, ...] = (), queue: str = "",
             page_size: int = 0) -> Iterator[common_pb2.Job]:
        """Every matching job, newest first, following pages."""
        token = ""
        while True:
            page = self._call(self.jobs.ListJobs, jobs_pb2.ListJobsRequest(
                states=states, queue=queue, page_size=page_size, page_token=token))
            yield from page.jobs
            token = page.next_page_token
            if not token:
                return

    def cancel(self, job_id: str, reason: str = "") -> common_pb2.Job:
        return self._call(self.jobs.CancelJob,
                          jobs_pb2.CancelJobRequest(job_id=job_id, reason=reason))

    def migrate(self, job_id: str, target: str, reason: str = "",
                checkpoint_timeout: float = 0.0) -> common_pb2.Job:
        """Move a RUNNING job to a family, model or pool; returns it MIGRATING.
        ``checkpoint_timeout`` seconds (0 = the server's default) bound the
        wait for each replica's checkpoint."""
        request = jobs_pb2.MigrateJobRequest(job_id=job_id, target=target, reason=reason)
        request.checkpoint_timeout.FromNanoseconds(int(checkpoint_timeout * 1e9))
        return self._call(self.jobs.MigrateJob, request, retry=False)

    def watch(self, job_id: str, after: int = 0,
              follow: bool = False) -> Iterator[common_pb2.JobEvent]:
        return self._stream("WatchJob", jobs_pb2.WatchJobRequest(
            job_id=job_id, after_sequence=after, follow=follow))

    def logs(self, job_id: str, follow: bool = False, after: int = 0,
             rank: int | None = None) -> Iterator[common_pb2.LogChunk]:
        request = jobs_pb2.StreamLogsRequest(job_id=job_id, after_sequence=after, follow=follow,
                                             filter_rank=rank is not None, rank=rank or 0)
        return self._stream("StreamLogs", request)

    # -- admin --------------------------------------------------------------
    def nodes(self, pool: str = "") -> list[common_pb2.Node]:
        return list(self._call(self.admin.ListNodes,
                               admin_pb2.ListNodesRequest(pool=pool)).nodes)

    def pools(self) -> list[admin_pb2.PoolCapacity]:
        return list(self._call(self.admin.ListPools, admin_pb2.ListPoolsRequest()).pools)

    def cordon(self, node: str, reason: str = "") -> common_pb2.Node:
        return self._call(self.admin.CordonNode,
                          admin_pb2.CordonNodeRequest(node=node, reason=reason))

    def uncordon(self, node: str) -> common_pb2.Node:
        return self._call(self.admin.UncordonNode, admin_pb2.UncordonNodeRequest(node=node))

    def summary(self) -> admin_pb2.ClusterSummary:
        return self._call(self.admin.GetClusterSummary, admin_pb2.GetClusterSummaryRequest())
