"""Python client for the Xinhe API (tenants and operators).

    client = XinheClient("127.0.0.1:50051", token=None)
    job = client.submit(spec_from_yaml(open("job.yaml").read()), client_key="run-42")
    for event in client.watch(job.id, follow=True): ...

Every call raises grpc.RpcError on failure; its ``code()`` and ``details()``
carry the server's status and message (INVALID_ARGUMENT names the field).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc

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


class XinheClient:
    def __init__(self, target: str | None = None, token: str | None = None,
                 timeout: float = 30.0) -> None:
        self.target = target or default_server()
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = timeout
        self._channel = grpc.insecure_channel(self.target)
        self.jobs = jobs_pb2_grpc.JobServiceStub(self._channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> XinheClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, method, request):
        return method(request, metadata=self._metadata, timeout=self._timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the server accepts connections (or raise)."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    # -- jobs ---------------------------------------------------------------
    def submit(self, spec: common_pb2.JobSpec, client_key: str = "") -> common_pb2.Job:
        return self.submit_full(spec, client_key).job

    def submit_full(self, spec: common_pb2.JobSpec,
                    client_key: str = "") -> jobs_pb2.SubmitJobResponse:
        return self._call(self.jobs.SubmitJob,
                          jobs_pb2.SubmitJobRequest(spec=spec, client_key=client_key))

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
        return self._call(self.jobs.MigrateJob, request)

    def watch(self, job_id: str, after: int = 0,
              follow: bool = False) -> Iterator[common_pb2.JobEvent]:
        return self.jobs.WatchJob(
            jobs_pb2.WatchJobRequest(job_id=job_id, after_sequence=after, follow=follow),
            metadata=self._metadata)

    def logs(self, job_id: str, follow: bool = False, after: int = 0,
             rank: int | None = None) -> Iterator[common_pb2.LogChunk]:
        request = jobs_pb2.StreamLogsRequest(job_id=job_id, after_sequence=after, follow=follow,
                                             filter_rank=rank is not None, rank=rank or 0)
        return self.jobs.StreamLogs(request, metadata=self._metadata)

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
