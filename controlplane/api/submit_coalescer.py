"""SubmitJob calls that reach an API front end together travel to the
control plane as one SubmitJobs call.

Calls are grouped per caller (their ``authorization`` metadata: one
identity per upstream call) with the same group commit as the store's
submissions (``services/group_commit.py``): the first call finding none in
flight sends everything queued for that caller so far, calls arriving
meanwhile form the next batch, a lone call goes at once. The control plane
judges each item exactly as SubmitJob would (``services/submit_many.py``),
so each caller gets its own job, or its own error with the field named as
SubmitJob names it (``spec.replicas``, not ``requests[3].spec.replicas``).

What a whole call's failure means for its items:

* RESOURCE_EXHAUSTED (the tenant's submission rate): nothing was stored;
  each item is tried again alone, so the ones the rate still admits pass,
  as they would have one by one.
* anything else (UNAVAILABLE, UNAUTHENTICATED, a deadline): every item gets
  that status. Nothing is resent: an item without a client key whose
  outcome is unknown would otherwise be created twice.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from controlplane.api.proxy import NO_DEADLINE_S, error_status
from controlplane.services.group_commit import GroupCommit
from xinhe.v1 import jobs_pb2

SUBMIT_JOBS = "/xinhe.v1.JobService/SubmitJobs"
# Marks an upstream SubmitJobs call as SubmitJob calls batched by a front
# end, so the control plane audits them as SubmitJob; believed only from its
# private Unix socket (``from_front_end``).
COALESCED_METADATA = "x-xinhe-coalesced-submit-job"
# Items per upstream call (SubmitJobs takes at most 1 000).
MAX_BATCH = 256
# Callers remembered with a batcher of their own; past it the least recently
# seen is forgotten (its calls in flight finish; its next call starts anew).
MAX_CALLERS = 1024
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_ITEM_PREFIX = re.compile(r"^requests\[\d+\](?:\.|: )")


@dataclass(frozen=True)
class Refusal:
    """A status for one SubmitJob caller."""
    code: grpc.StatusCode
    details: str
    trailing: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class _Item:
    request: jobs_pb2.SubmitJobRequest
    size: int
    timeout: float


Outcome = jobs_pb2.SubmitJobResponse | Refusal


class SubmitCoalescer:
    """``submit(request, metadata, timeout)`` -> the SubmitJob response, or
    the Refusal to answer with; see the module."""

    def __init__(self, channel: grpc.Channel, max_request_bytes: int,
                 max_batch: int = MAX_BATCH) -> None:
        self._call = channel.unary_unary(
            SUBMIT_JOBS, request_serializer=jobs_pb2.SubmitJobsRequest.SerializeToString,
            response_deserializer=jobs_pb2.SubmitJobsResponse.FromString)
        # An upstream request stays well under the size the owner accepts.
        self._max_bytes = max(1, max_request_bytes // 2)
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._callers: OrderedDict[tuple[tuple[str, Any], ...],
                                   GroupCommit[_Item, Outcome]] = OrderedDict()

    def submit(self, request: jobs_pb2.SubmitJobRequest,
               metadata: tuple[tuple[str, Any], ...], timeout: float) -> Outcome:
        return self._batcher(metadata).submit(_Item(request, request.ByteSize(), timeout))

    def _batcher(self, metadata: tuple[tuple[str, Any], ...]) -> GroupCommit[_Item, Outcome]:
        with self._lock:
            batcher = self._callers.get(metadata)
            if batcher is None:
                batcher = GroupCommit(lambda items: self._send_all(items, metadata),
                                      max_batch=self._max_batch, what="submissions")
                self._callers[metadata] = batcher
                if len(self._callers) > MAX_CALLERS:
                    self._callers.popitem(last=False)
            else:
                self._callers.move_to_end(metadata)
            return batcher

    def _send_all(self, items: Sequence[_Item],
                  metadata: tuple[tuple[str, Any], ...]) -> list[Outcome]:
        """One outcome per item (never raises): chunks under the size bound."""
        out: list[Outcome] = []
        chunk: list[_Item] = []
        size = 0
        for item in items:
            if chunk and size + item.size > self._max_bytes:
                out.extend(self._send(chunk, metadata))
                chunk, size = [], 0
            chunk.append(item)
            size += item.size
        if chunk:
            out.extend(self._send(chunk, metadata))
        return out

    def _send(self, items: list[_Item], metadata: tuple[tuple[str, Any], ...]) -> list[Outcome]:
        timeout = min(NO_DEADLINE_S, max(item.timeout for item in items))
        request = jobs_pb2.SubmitJobsRequest(requests=[item.request for item in items])
        try:
            response = self._call(request, timeout=timeout,
                                  metadata=(*metadata, (COALESCED_METADATA, "1")))
        except grpc.RpcError as exc:
            refusal = Refusal(*error_status(exc))
            if refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED and len(items) > 1:
                return [outcome for item in items for outcome in self._send([item], metadata)]
            return [refusal] * len(items)
        if len(response.results) != len(items):
            return [Refusal(grpc.StatusCode.INTERNAL,
                            f"{len(items)} submissions answered with "
                            f"{len(response.results)} results")] * len(items)
        return [_outcome(result) for result in response.results]


def from_front_end(context: grpc.ServicerContext) -> bool:
    """Whether a SubmitJobs call holds SubmitJob calls batched by a front
    end: marked so, and over the private Unix socket (a caller on the public
    port cannot claim it)."""
    return (context.peer().startswith("unix:")
            and any(k == COALESCED_METADATA for k, _ in context.invocation_metadata() or ()))


def item_message(message: str) -> str:
    """An item's error as SubmitJob words it (no ``requests[i]`` prefix)."""
    return _ITEM_PREFIX.sub("", message, count=1)


def _outcome(result: jobs_pb2.SubmitJobResult) -> Outcome:
    if result.error_code == 0:
        return jobs_pb2.SubmitJobResponse(job=result.job, created=result.created)
    code = _CODES.get(result.error_code, grpc.StatusCode.UNKNOWN)
    return Refusal(code, item_message(result.error_message))


