"""One scheduling round: load -> compute (pure core, maybe on Ray) -> apply.

The core only proposes; this module makes proposals durable (QUEUED ->
SCHEDULED with a fresh fencing epoch, in one transaction), marks devices held
and then sends launch instructions to the agents.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from controlplane.model import states
from controlplane.scheduler.host import SchedulerHost
from controlplane.scheduler.types import (
    ClusterSnapshot,
    Decisions,
    NodeView,
    PendingJob,
    Policy,
    PreemptionDecision,
)
from controlplane.services.context import Context
from controlplane.services.quiet_round import ListSource
from controlplane.services.translate import (
    launch_messages,
    node_views,
    pending_job,
    placement_proto,
    running_view,
)
from controlplane.store.base import ConflictError, Transition
from xinhe.v1 import common_pb2

log = logging.getLogger(__name__)
# Acts on a round's preemptions: (victims, now) -> jobs evicted.
Preempt = Callable[[Sequence[PreemptionDecision], float], object]

QUEUED = common_pb2.JOB_STATE_QUEUED
SCHEDULED = common_pb2.JOB_STATE_SCHEDULED


@dataclass(frozen=True)
class RoundResult:
    pending: int
    placed: int
    seconds: float


def model_speeds(ctx: Context) -> tuple[tuple[str, float], ...]:
    return tuple(sorted((m, ctx.catalogue.relative_speed(m)) for m in ctx.catalogue.models))


def model_power(ctx: Context, nodes: Sequence[NodeView] = ()) -> tuple[tuple[str, float], ...]:
    """Watts per device of every catalogue model and of the unknown models
    ``nodes`` have (those draw what the reference chip draws)."""
    models = {*ctx.catalogue.models, *(v.model for v in nodes)}
    return tuple(sorted((m, ctx.catalogue.power_w(m)) for m in models))


def snapshot(ctx: Context, now: float | None = None) -> ClusterSnapshot:
    """The fleet and the running jobs; with ``now``, each running job's time
    since its last reported checkpoint (preemption victims lose least)."""
    active = ctx.store.jobs_in_states(states.ACTIVE)
    table = ctx.throughput
    views = tuple(node_views(ctx.fleet.nodes(), ctx.allocations, ctx.catalogue))
    return ClusterSnapshot(
        nodes=views,
        running=tuple(
            running_view(j, now, table.last_checkpoint(j.id) if table is not None else None)
            for j in active if j.placement.replicas),
        model_speed=model_speeds(ctx),
        model_power_w=model_power(ctx, views),
    )


def queued_jobs(ctx: Context) -> list[PendingJob]:
    """The queue as the core takes it: from the in-memory queue when the
    controller keeps one (no store read, no re-translation), else from the
    store."""
    if ctx.pending is not None:
        return ctx.pending.pending()
    queued = ctx.store.jobs_in_states([QUEUED])
    return [pending_job(j, i, ctx.catalogue) for i, j in enumerate(queued)]


def run_round(ctx: Context, host: SchedulerHost, policy: Policy,
              preempt: Preempt | None = None) -> RoundResult:
    """Load, decide, apply. ``preempt`` acts on the round's preemptions
    (``PreemptionService.apply``); None ignores them (no victim is touched)."""
    started = time.perf_counter()
    now = ctx.clock()
    with ctx.lock:
        source = ctx.pending if ctx.pending is not None else ListSource(queued_jobs(ctx))
        queued = len(source)
        if not queued:
            return RoundResult(0, 0, time.perf_counter() - started)
        snap = snapshot(ctx, now)
        # Re-explaining a queue that can only wait is skipped (quiet_round).
        explain = ctx.wait_memo.to_explain(snap, policy, source, ctx.wait_reasons)
    if not explain:
        return RoundResult(queued, 0, time.perf_counter() - started)
    try:
        decisions = host.schedule(snap, explain, policy, now)
    except BaseException:
        ctx.wait_memo.forget()  # the jobs handed over got no reason
        raise
    placed = apply_decisions(ctx, decisions, now)
    if decisions.preemptions and preempt is not None:
        preempt(decisions.preemptions, now)
    return RoundResult(queued, len(placed), time.perf_counter() - started)


def apply_decisions(ctx: Context, decisions: Decisions, now: float) -> list[common_pb2.Job]:
    """Persist placements, hold devices, record wait reasons, send launches."""
    with ctx.lock:
        for wait in decisions.waiting:
            prefix = "unschedulable: " if wait.never_fits else ""
            ctx.wait_reasons[wait.job_id] = prefix + wait.reason
        transitions = _placement_transitions(ctx, decisions)
        jobs = _apply_each_or_all(ctx, transitions, now)
        for job in jobs:
            ctx.allocations.hold(job.id, job.attempt, job.placement)
            ctx.wait_reasons.pop(job.id, None)
    for job in jobs:
        for node, message in launch_messages(job):
            ctx.fleet.send(node, message)
    if jobs:
        ctx.notifier.notify()
    return jobs


def _placement_transitions(ctx: Context, decisions: Decisions) -> list[Transition]:
    ports: dict[str, set[int]] = {}
    out = []
    for decision in decisions.placements:
        first = ctx.fleet.node(decision.replicas[0].node)
        address = first.address if first and first.address else "127.0.0.1"
        port = _port(ctx, address, ports.setdefault(address, set()))
        placement = placement_proto(decision, address, port)
        out.append(Transition(
            job_id=decision.job_id, to_state=SCHEDULED, kind="placed",
            message=decision.explanation, expect_states=frozenset({QUEUED}),
            updates=common_pb2.Job(placement=placement), new_epoch=True,
        ))
    return out


def _port(ctx: Context, address: str, taken: set[int]) -> int:
    port = ctx.allocations.pick_port(address)
    while port in taken:
        port += 1
    taken.add(port)
    return port


def _apply_each_or_all(ctx: Context, transitions: list[Transition],
                       now: float) -> list[common_pb2.Job]:
    """One transaction for the round; if a guard fails (a job was cancelled
    meanwhile), fall back to one transaction per job so the rest still land."""
    if not transitions:
        return []
    try:
        return ctx.store.apply(transitions, now)
    except ConflictError:
        if ctx.pending is not None:  # the round may have seen a stale queue
            ctx.pending.resync(ctx.store)
        applied = []
        for t in transitions:
            try:
                applied.extend(ctx.store.apply([t], now))
            except ConflictError:
                log.info("job %s changed before placement; skipped", t.job_id)
        return applied
