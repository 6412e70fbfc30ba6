"""SubmitJobs: many submissions in one call (like Armada's SubmitJobs).

Each item is judged exactly as SubmitJob judges one job (validation, the
caller's tenant scope, the can-ever-fit check, idempotency on its client
key); a refused item is answered with its own error, naming the field with
the item's index (``requests[3].spec.replicas``), and does not sink the
others. The items that pass count against their tenants' submission rate
together (all admitted, or the call fails RESOURCE_EXHAUSTED and nothing is
stored) and are committed in one store transaction: all stored, or the call
fails UNAVAILABLE with none. One call, one transaction, one fsync: this is
what lets a client submit thousands of jobs per second.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from controlplane.api.errors import DomainError, InvalidArgument, Unavailable, status_of
from controlplane.model.spec import SpecError
from controlplane.services.jobs import JobService
from controlplane.store.base import FencedError
from xinhe.v1 import common_pb2, jobs_pb2

log = logging.getLogger(__name__)

# Most items per call: bounds one transaction (and the message size).
MAX_ITEMS = 1000


@dataclass
class ItemOutcome:
    """One item's answer: the job (created or found by its key), or why
    it was refused (a gRPC code and a message naming the field)."""

    job: common_pb2.Job | None = None
    created: bool = False
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""


def refusal(index: int, exc: Exception) -> ItemOutcome:
    """An item's error, its field path prefixed with ``requests[index]``."""
    code, message = status_of(exc)
    field = getattr(exc, "field", "")
    where = f"requests[{index}]"
    if field and message.startswith(field):
        return ItemOutcome(code=code, message=f"{where}.{message}")
    return ItemOutcome(code=code, message=f"{where}: {message}")


def submit_many(service: JobService, requests: Sequence[jobs_pb2.SubmitJobRequest],
                scope: str | None = None) -> list[ItemOutcome]:
    """One outcome per item, in order (see the module doc)."""
    if not requests:
        raise InvalidArgument("requests", "at least one item is required")
    if len(requests) > MAX_ITEMS:
        raise InvalidArgument("requests", f"{len(requests)} items; at most {MAX_ITEMS} per call")
    outcomes: list[ItemOutcome | None] = [None] * len(requests)
    admitted: list[tuple[int, common_pb2.Job]] = []
    for i, request in enumerate(requests):
        try:
            admitted.append((i, service.new_job(request.spec, request.client_key, scope)))
        except (DomainError, SpecError) as exc:  # invalid, or another tenant's queue
            outcomes[i] = refusal(i, exc)
    service.limiter.admit_counts(Counter(job.tenant for _, job in admitted))
    to_create = _fit_or_existing(service, admitted, outcomes)
    for (i, _), (stored, created) in zip(to_create, _commit(service, to_create), strict=True):
        outcomes[i] = ItemOutcome(job=stored, created=created)
    if any(o is not None and o.created for o in outcomes):
        service.announce()
    assert all(o is not None for o in outcomes)
    return outcomes  # type: ignore[return-value]


def _fit_or_existing(service: JobService, admitted: list[tuple[int, common_pb2.Job]],
                     outcomes: list[ItemOutcome | None]) -> list[tuple[int, common_pb2.Job]]:
    """The admitted items that may be created; the others are answered in
    ``outcomes`` (never fits: an error, or the job a retried key made)."""
    out = []
    for i, job in admitted:
        try:
            existing = service.refused_unless_retry(job)
        except InvalidArgument as exc:
            outcomes[i] = refusal(i, exc)
            continue
        if existing is not None:
            outcomes[i] = ItemOutcome(job=existing, created=False)
        else:
            out.append((i, job))
    return out


def _commit(service: JobService,
            items: list[tuple[int, common_pb2.Job]]) -> list[tuple[common_pb2.Job, bool]]:
    """All items in one transaction, or Unavailable with none stored."""
    if not items:
        return []
    ctx = service.ctx
    try:
        return ctx.store.create_jobs([job for _, job in items], ctx.clock())
    except FencedError:
        raise  # UNAVAILABLE: this replica no longer leads (retry on the leader)
    except Exception as exc:
        log.warning("SubmitJobs: %d items not committed: %s", len(items), exc)
        raise Unavailable("submissions not committed (nothing was stored); retry") from exc
