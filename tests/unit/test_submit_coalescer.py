"""The front ends' SubmitJob batching (controlplane/api/submit_coalescer.py)
against a real gRPC server whose SubmitJobs answers are scripted: what a
failed batch means for each caller, and that nothing is ever sent twice
unless the control plane said nothing was stored."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import pytest

from controlplane.api.submit_coalescer import (
    COALESCED_METADATA,
    Refusal,
    SubmitCoalescer,
    _Item,
    item_message,
)
from xinhe.v1 import common_pb2, jobs_pb2, jobs_pb2_grpc

Code = grpc.StatusCode
Script = Callable[[jobs_pb2.SubmitJobsRequest, grpc.ServicerContext], jobs_pb2.SubmitJobsResponse]


class Upstream(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict[str, str]]] = []
        self.script: Script = accept_all
        self.lock = threading.Lock()

    def SubmitJobs(self, request, context):
        with self.lock:
            self.calls.append(([r.client_key for r in request.requests],
                               dict(context.invocation_metadata())))
        return self.script(request, context)


def accept_all(request: jobs_pb2.SubmitJobsRequest,
               _context: grpc.ServicerContext) -> jobs_pb2.SubmitJobsResponse:
    return jobs_pb2.SubmitJobsResponse(results=[
        jobs_pb2.SubmitJobResult(job=common_pb2.Job(id=f"j-{r.client_key}"), created=True)
        for r in request.requests])


@pytest.fixture()
def upstream() -> Iterator[tuple[Upstream, grpc.Channel]]:
    servicer = Upstream()
    server = grpc.server(futures.ThreadPoolExecutor(8))
    jobs_pb2_grpc.add_JobServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield servicer, channel
    channel.close()
    server.stop(0)


def request(key: str, size: int = 0) -> jobs_pb2.SubmitJobRequest:
    spec = common_pb2.JobSpec(name="x" * size, queue="lab-a/default", command=["true"])
    return jobs_pb2.SubmitJobRequest(spec=spec, client_key=key)


def test_a_lone_call_goes_at_once_marked_and_with_its_metadata(upstream) -> None:
    servicer, channel = upstream
    out = SubmitCoalescer(channel, 1 << 20).submit(request("a"), (("authorization", "Bearer t"),),
                                                    10.0)
    assert isinstance(out, jobs_pb2.SubmitJobResponse) and out.job.id == "j-a" and out.created
    [(keys, metadata)] = servicer.calls
    assert keys == ["a"]
    assert metadata["authorization"] == "Bearer t" and metadata[COALESCED_METADATA] == "1"


def test_concurrent_calls_of_one_caller_share_upstream_calls(upstream) -> None:
    servicer, channel = upstream
    gate = threading.Event()

    def slow(req, ctx):
        gate.wait(5)  # the first call holds: the others queue behind it
        return accept_all(req, ctx)

    servicer.script = slow
    coalescer = SubmitCoalescer(channel, 1 << 20)
    with futures.ThreadPoolExecutor(20) as pool:
        results = [pool.submit(coalescer.submit, request(f"k{i}"), (), 10.0) for i in range(20)]
        threading.Timer(0.5, gate.set).start()
        answers = [r.result(10) for r in results]
    assert [a.job.id for a in answers] == [f"j-k{i}" for i in range(20)]
    sent = [k for keys, _ in servicer.calls for k in keys]
    assert sorted(sent) == sorted(f"k{i}" for i in range(20))  # each exactly once
    assert len(servicer.calls) < 20


def test_item_errors_are_worded_as_submitjob_words_them(upstream) -> None:
    servicer, channel = upstream
    servicer.script = lambda req, ctx: jobs_pb2.SubmitJobsResponse(results=[
        jobs_pb2.SubmitJobResult(error_code=Code.INVALID_ARGUMENT.value[0],
                                 error_message="requests[0].spec.replicas: must be >= 1")])
    out = SubmitCoalescer(channel, 1 << 20).submit(request("a"), (), 10.0)
    assert out == Refusal(Code.INVALID_ARGUMENT, "spec.replicas: must be >= 1")
    assert item_message("requests[12]: tenant 'b' may not submit") == (
        "tenant 'b' may not submit")
    assert item_message("spec.name: too long") == "spec.name: too long"


def test_an_unknown_outcome_is_never_resent(upstream) -> None:
    """UNAVAILABLE may come after a commit: resending a keyless job could
    create it twice, so every caller of the batch gets UNAVAILABLE."""
    servicer, channel = upstream

    def down(req, ctx):
        ctx.set_trailing_metadata((("x-xinhe-leader", "10.0.0.2:50051"),))
        ctx.abort(Code.UNAVAILABLE, "not the leader")

    servicer.script = down
    coalescer = SubmitCoalescer(channel, 1 << 20)
    out = coalescer.submit(request(""), (), 10.0)
    assert out == Refusal(Code.UNAVAILABLE, "not the leader",
                          (("x-xinhe-leader", "10.0.0.2:50051"),))
    assert len(servicer.calls) == 1


def test_a_batch_over_the_rate_is_tried_again_item_by_item(upstream) -> None:
    servicer, channel = upstream
    budget = [2]

    def limited(req, ctx):
        if len(req.requests) > budget[0]:
            ctx.abort(Code.RESOURCE_EXHAUSTED, "rate exceeded; nothing stored")
        budget[0] -= len(req.requests)
        return accept_all(req, ctx)

    servicer.script = limited
    coalescer = SubmitCoalescer(channel, 1 << 20)
    outcomes = coalescer._send_all([_item(f"k{i}") for i in range(4)], ())
    assert [o.job.id if isinstance(o, jobs_pb2.SubmitJobResponse) else o.code
            for o in outcomes] == ["j-k0", "j-k1", Code.RESOURCE_EXHAUSTED,
                                   Code.RESOURCE_EXHAUSTED]
    assert [keys for keys, _ in servicer.calls] == [["k0", "k1", "k2", "k3"], ["k0"], ["k1"],
                                                    ["k2"], ["k3"]]


def test_upstream_calls_stay_under_the_size_the_control_plane_accepts(upstream) -> None:
    servicer, channel = upstream
    coalescer = SubmitCoalescer(channel, max_request_bytes=4000)
    outcomes = coalescer._send_all([_item(f"k{i}", 900) for i in range(5)], ())
    assert all(isinstance(o, jobs_pb2.SubmitJobResponse) for o in outcomes)
    assert [len(keys) for keys, _ in servicer.calls] == [2, 2, 1]


def _item(key: str, size: int = 0) -> _Item:
    r = request(key, size)
    return _Item(r, r.ByteSize(), 10.0)
