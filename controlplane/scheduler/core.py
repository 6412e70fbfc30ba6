"""The pure scheduler core: ``schedule(snapshot, pending, policy, now)``.

A round walks the queue in order and, per job: checks that some group could
ever hold it (cached per job shape), asks admission whether it may be placed
this round, walks the shape's groups fastest first (``core_rank``) and
places the whole gang on the first that fits, unless a faster busy group
would finish it clearly sooner (``Policy.wait_for_faster_margin``), in which
case it waits *and reserves* that group. A job that fits nowhere reserves
the group where it would finish first. Reserved devices go to later jobs
only when they finish before the reservation starts or leave enough for it
(backfill), so a waiting gang is not pushed back by the jobs behind it.
Reservations stack on a group, each estimated behind those before it; the
round holds at most ``Policy.max_reservations_per_round``: past it a job
never waits for a busy group, it takes a free (slower) chip. A job whose estimate
behind the reservations already queued on a faster group does not beat a
free slower chip by the margin takes the slower chip: that is what keeps
slow families busy while the fast ones have a queue. With
``Policy.start_then_migrate`` (migration on, ``core_migrate``) a
migratable job also starts on the slower chip when it can expect to move up
once the faster group frees (``core_migrate.start_then_move``).

Placements are taken from a per-round ledger, so no device is handed out
twice. Pure: no I/O, no clock, no globals, no randomness; ties are broken by
stable keys, so the same input always yields the same ``Decisions``.

Objectives and regions (``core_objective``): a job's objective (fastest,
cost, energy, pinned) orders its groups and decides when waiting pays; an
interactive job only sees its data region's pools, a batch job pays the
policy's transfer penalty away from its data.

Seams: ``ordering`` (``Policy.fair_share`` orders by ``core_share``) and
``RoundState.admission_refusal`` (quotas plug in there).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from operator import attrgetter

from controlplane.scheduler.core_estimate import (
    NO_RELEASES,
    release_schedules,
    speed_table,
)
from controlplane.scheduler.core_explain import (
    EXPLAIN_OTHERS,
    explain_reserved,
    explain_wait_for_faster,
)
from controlplane.scheduler.core_fleet import (
    Group,
    ShapeKey,
    StaticVerdict,
    build_groups,
    shape_key,
    static_verdict,
)
from controlplane.scheduler.core_ledger import ReplicaSlot
from controlplane.scheduler.core_migrate import start_then_move
from controlplane.scheduler.core_objective import FASTEST, Choice, Objectives, restricted
from controlplane.scheduler.core_preempt import (
    Preemptor,
    explain_preempting,
    freed_devices,
    preemption_reason,
)
from controlplane.scheduler.core_quota import Admit, QuotaBook
from controlplane.scheduler.core_rank import Holds, JobKind, RankKey, Reservation, ShapeRank
from controlplane.scheduler.core_reasons import capacity_reason
from controlplane.scheduler.core_share import fair_share_order
from controlplane.scheduler.types import (
    Candidate,
    ClusterSnapshot,
    Decisions,
    PendingJob,
    PlacementDecision,
    Policy,
    PreemptionDecision,
    ReplicaAssignment,
    WaitDecision,
)

QueueOrdering = Callable[[Sequence[PendingJob]], Sequence[PendingJob]]
Decision = PlacementDecision | WaitDecision


def order_queue(pending: Sequence[PendingJob]) -> list[PendingJob]:
    """Priority descending, then submission ``order``; ``job_id`` breaks exact ties.

    Stable sorts, least significant key first, with C-level keys (a
    descending sort keeps equal keys in order): the same order as one sort
    by ``(-priority, order, job_id)`` without a Python call or a tuple per
    job; each pass over an already ordered queue is linear."""
    by_id = sorted(pending, key=attrgetter("job_id"))
    by_order = sorted(by_id, key=attrgetter("order"))
    return sorted(by_order, key=attrgetter("priority"), reverse=True)


def schedule(
    snapshot: ClusterSnapshot,
    pending: Sequence[PendingJob],
    policy: Policy,
    now: float,
    *,
    ordering: QueueOrdering | None = None,
) -> Decisions:
    """Decide, for every pending job, a placement or a reason to wait.

    Every job in ``pending`` gets exactly one decision. Placements appear in
    the order they were made (queue order); so do waits. The queue order is
    ``ordering`` when given, else weighted fair share when
    ``policy.fair_share``, else priority then submission (``order_queue``).
    """
    state = RoundState(snapshot, policy, now)
    placements: list[PlacementDecision] = []
    waiting: list[WaitDecision] = []
    if ordering is not None:
        queue = ordering(pending)
    elif policy.fair_share:
        queue = fair_share_order(pending, snapshot, policy)
    else:
        queue = order_queue(pending)
    # With quotas, jobs that could only borrow go after all the others:
    # borrowing takes what nominal work leaves idle (and a reclaimed victim
    # does not take its devices back ahead of the owner that preempted it).
    deferred = [job for job in queue if state.borrows_only(job)] if state.quotas.active else []
    if deferred:
        later = {job.job_id for job in deferred}
        queue = [*(job for job in queue if job.job_id not in later), *deferred]
    for job in queue:
        decision = state.decide(job)
        if isinstance(decision, PlacementDecision):
            placements.append(decision)
        else:
            waiting.append(decision)
    return Decisions(placements=tuple(placements), waiting=tuple(waiting),
                     preemptions=tuple(state.preemptions))


class RoundState:
    """Everything one round knows and has taken so far. Lives for one call."""

    def __init__(self, snapshot: ClusterSnapshot, policy: Policy, now: float) -> None:
        self.policy, self.now = policy, now
        self.groups = build_groups(snapshot.nodes)
        self.speeds = speed_table(snapshot)
        self.releases = release_schedules(snapshot.running, now, policy)
        self.verdicts: dict[ShapeKey, StaticVerdict] = {}
        self.ranks: dict[RankKey, ShapeRank] = {}
        self.kinds: dict[tuple[object, ...], JobKind] = {}
        self.reserved: dict[Group, Holds] = {}
        self.reservations = 0
        self.placed = 0
        # Capacity reasons repeat across the jobs of one shape and only change
        # when something is placed: (placements so far, text) per shape.
        self.reasons: dict[ShapeRank, tuple[int, str]] = {}
        # Start estimates per group and devices needed: valid while the
        # group's free devices and reservations are unchanged.
        self.starts: dict[Group, dict[int, tuple[int, int, float]]] = {}
        self.quotas = QuotaBook(policy.quotas, snapshot)
        self.objectives = Objectives(policy, snapshot)
        self.objective = FASTEST  # the current job's
        self.preemptor = Preemptor(snapshot, policy, now)
        self.preemptions: list[PreemptionDecision] = []
        # The current job's quota verdict per group (None: no quota applies).
        self.admits: dict[Group, Admit] | None = None

    def _verdict(self, job: PendingJob) -> tuple[ShapeKey, StaticVerdict]:
        """Groups that could ever hold ``job``, narrowed by its objective's pin
        and its latency class's region (``core_objective``)."""
        skey = shape_key(job)
        self.objective = self.objectives.of(job)  # the current job's, for decide()
        pin, region = self.objectives.restriction(job, self.objective)
        vkey = (skey, pin, region) if pin or region else skey
        verdict = self.verdicts.get(vkey)  # type: ignore[call-overload]
        if verdict is None:
            verdict = static_verdict(self.groups, job)
            if pin or region:
                verdict = restricted(verdict, job, pin, region)
            self.verdicts[vkey] = verdict  # type: ignore[index]
        return vkey, verdict  # type: ignore[return-value]

    def borrows_only(self, job: PendingJob) -> bool:
        """Would ``job`` borrow wherever its quota lets it go (at round start)?"""
        return self.quotas.borrows_only(job, self._verdict(job)[1].groups)

    def decide(self, job: PendingJob) -> Decision:
        """One job's decision; places it in the ledger when it is placed."""
        kind = self._kind(job)
        self.objective = objective = kind.objective
        verdict = kind.verdict
        if verdict.never_reason:
            return WaitDecision(job.job_id, verdict.never_reason, never_fits=True)
        refusal = self.admission_refusal(job)
        if refusal:
            return WaitDecision(job.job_id, refusal)
        if self.quotas.active:
            self.admits, quota_refusal = self.quotas.admits(job, verdict.groups)
            if quota_refusal:
                return WaitDecision(job.job_id, quota_refusal)
        rank = kind.rank
        if rank is None:
            reference = job.reference_runtime_s or self.policy.default_runtime_s
            key = (kind.vkey, job.cpu_millis, job.memory_bytes, job.speed,
                   self.objectives.rank_extra(job, objective, reference))
            rank = self.ranks.get(key)
            if rank is None:
                order = self.objectives.rank_order(job, objective, reference)
                rank = self.ranks[key] = ShapeRank(verdict.groups, job, self.speeds, order)
            if not kind.by_runtime:
                kind.rank = rank  # every job of the kind shares it from now on
        if not rank.entries:  # every group of the shape is full and held
            return self._nowhere(job, None, rank, verdict.groups)
        decision = self._walk(job, rank, verdict.groups)
        if isinstance(decision, PlacementDecision):
            self.placed += 1
        return decision

    def _kind(self, job: PendingJob) -> JobKind:
        """The objective, verdict and ranking ``job`` shares with every job
        whose fields below are equal: one tuple lookup instead of rebuilding
        the shape, verdict and ranking keys per job. Contract: the key holds
        every job field that ``_verdict``, ``Objectives.of``/``restriction``/
        ``penalised`` and ``ShapeRank`` read (the runtime only matters when
        ``JobKind.by_runtime``; it is then in the ranking key)."""
        queue = job.queue if self.objectives.by_queue else ""
        key = (job.families, job.models, job.devices_per_replica, job.replicas,
               job.min_device_memory_bytes, job.pools, job.cpu_millis, job.memory_bytes,
               job.speed, job.objective, queue, job.first_family, job.data_region,
               job.latency_class, job.nodes)
        kind = self.kinds.get(key)
        if kind is None:
            vkey, verdict = self._verdict(job)
            kind = self.kinds[key] = JobKind(
                self.objective, vkey, verdict, self.objectives.penalised(job))
        return kind

    def admission_refusal(self, job: PendingJob) -> str:
        """Why ``job`` may not be placed this round ("" = it may).

        Today only the round bound; quotas plug in here.
        """
        limit = self.policy.max_placements_per_round
        if limit and self.placed >= limit:
            return f"round limit: {limit} placements per round reached; retried next round"
        return ""

    def _walk(self, job: PendingJob, rank: ShapeRank, groups: Sequence[Group]) -> Decision:
        """Best group first (fastest, or by the job's objective: see
        ``core_objective``); place on the first that fits unless a better
        busy group, behind the reservations queued there, is worth the wait
        (then wait and reserve). Past the round's reservation budget a
        full group is dropped from the shape's ranking for the round."""
        reference = job.reference_runtime_s or self.policy.default_runtime_s
        dpr, replicas, now = job.devices_per_replica, job.replicas, self.now
        need = replicas * dpr
        passed: list[Choice] = []  # better-ranked busy groups, estimated
        soonest: Choice | None = None  # the first of them finishing earliest
        dead: list[Group] = []
        can_reserve = self.reservations < self.policy.max_reservations_per_round
        hold_nothing = not self.policy.max_reservations_per_round
        admits, reserved, candidate = self.admits, self.reserved, self.objectives.candidate
        for pos, (speed, group) in enumerate(rank.entries):
            if admits is not None and admits[group] is Admit.REFUSE:
                continue
            runtime = reference / speed
            held = reserved.get(group)
            ledger = group.ledger
            roomy = ledger.free_devices >= need and ledger.slot_bound(dpr) >= replicas
            here = candidate(group, job, now, runtime, True) if roomy else None
            if here is not None and (held is None or held.admits(here.finish_s, need)):
                target = self.objectives.wait_target(
                    self.objective, passed, here, now, soonest) if passed else None
                if target is not None and not self._moving_later_wins(job, here, target[0]):
                    return self._wait_for_faster(job, target, here)
                slots = group.ledger.place_on(job, job.nodes) if job.nodes else None
                if slots is None:  # a node pin is a preference: never stranded by it
                    slots = group.ledger.place_gang(job)
                if slots is not None:
                    if held is not None:
                        held.charge(here.finish_s, need)
                    borrowed = False
                    if admits is not None:
                        borrowed = admits[group] is Admit.BORROW
                        self.quotas.charge(job.tenant, group.family, group.model, need)
                    decision = self._placement(job, rank, pos, here, passed, slots)
                    return replace(decision, borrowed=True) if borrowed else decision
                roomy = False  # host CPU/memory rule the group out for this shape
            if not (can_reserve or hold_nothing):
                if not roomy:  # neither takes nor is waited for again this round
                    dead.append(group)
                continue
            busy = (self._busy(group, job, runtime), group)  # the job may wait for it
            passed.append(busy)
            if soonest is None or busy[0].finish_s < soonest[0].finish_s:
                soonest = busy
        if dead:
            rank.drop(dead)
        best = self.objectives.wait_target(self.objective, passed, None, now, soonest)
        return self._nowhere(job, best, rank, groups)

    def _moving_later_wins(self, job: PendingJob, here: Candidate, busy: Candidate) -> bool:
        """Start on ``here`` now and move to ``busy`` once it frees rather than
        wait (``core_migrate.start_then_move``)? Only for the fastest-finish
        objective: the others chose their chip for another reason."""
        return self.objective == FASTEST and start_then_move(
            self.policy, job, here, busy, self.now)

    def _busy(self, group: Group, job: PendingJob, runtime: float) -> Candidate:
        start = self._start_when_free(group, job)
        return self.objectives.candidate(group, job, start, runtime, False)

    def _start_when_free(self, group: Group, job: PendingJob) -> float:
        """When the running jobs will have freed enough for ``job`` beyond
        what the group's reservations hold."""
        need, free = job.replicas * job.devices_per_replica, group.ledger.free_devices
        held = self.reserved.get(group)
        queued = len(held.queue) if held else 0
        memos = self.starts.get(group)
        if memos is None:
            memos = self.starts[group] = {}
        memo = memos.get(need)
        if memo is not None and memo[0] == free and memo[1] == queued:
            return memo[2]
        start = self._estimate_start(group, need - free, held)
        memos[need] = (free, queued, start)
        return start

    def _estimate_start(self, group: Group, deficit: int, held: Holds | None) -> float:
        releases = self.releases.get((group.pool, group.model), NO_RELEASES)
        if held is None:
            return releases.start_s(deficit, self.now, self.policy.default_runtime_s)
        deficit += held.devices
        start = releases.start_s(deficit, self.now, self.policy.default_runtime_s)
        if deficit > releases.total:  # needs what the reserved jobs will hold
            start = max(start, held.last_finish_s)
        return max(start, held.queue[-1].start_s)  # never ahead of those already queued

    def _reserve(self, job: PendingJob, group: Group, cand: Candidate) -> None:
        """Hold ``group`` for ``job`` from ``start_s``; spare = what the group
        will have free then beyond all its reservations' needs."""
        if not self.policy.max_reservations_per_round:
            return  # waits without holding anything (jobs behind may take it)
        need = job.replicas * job.devices_per_replica
        releases = self.releases.get((group.pool, group.model), NO_RELEASES)
        free_then = group.ledger.free_devices + releases.freed_by(cand.start_s)
        held = self.reserved.get(group)
        if held is None:
            held = self.reserved[group] = Holds()
        spare = free_then - held.devices - need
        held.add(Reservation(job.job_id, cand.start_s, cand.finish_s, need, spare))
        self.reservations += 1

    def _wait_for_faster(
        self, job: PendingJob, best: tuple[Candidate, Group], here: Candidate
    ) -> WaitDecision:
        self._reserve(job, best[1], best[0])
        reserved = bool(self.policy.max_reservations_per_round)
        return WaitDecision(job.job_id, explain_wait_for_faster(
            best[0], here, self.now, reserved, self.objective))

    def _nowhere(
        self, job: PendingJob, best: tuple[Candidate, Group] | None, rank: ShapeRank,
        groups: Sequence[Group],
    ) -> WaitDecision:
        """Nothing fits now: reserve the group where the job would finish first."""
        memo = self.reasons.get(rank)  # one rank per shape and host request
        if memo is None or memo[0] != self.placed:
            memo = self.reasons[rank] = (self.placed, capacity_reason(job, groups))
        reason = memo[1]
        if self.preemptor.worth_trying(job):
            preempting = self._preempt_for(job, rank, reason)
            if preempting is not None:
                return preempting
        if best is None or not self.policy.max_reservations_per_round:
            return WaitDecision(job.job_id, reason)
        self._reserve(job, best[1], best[0])
        return WaitDecision(job.job_id, explain_reserved(reason, best[0], self.now))

    def _preempt_for(self, job: PendingJob, rank: ShapeRank, reason: str) -> WaitDecision | None:
        """Preempt in one group so ``job`` fits there next round, holding the
        group for it now; None when no allowed victims make it fit."""
        admits = self.admits
        groups = [g for _, g in rank.entries]
        reclaims = {g for g in groups if admits is not None and admits[g] is Admit.NOMINAL
                    and self.quotas.matching(job.tenant, g.family, g.model)}
        plan = self.preemptor.plan(job, groups, admits, reclaims)
        if plan is None:
            return None
        group, victims = plan
        self.preemptions.extend(
            PreemptionDecision(v.job_id, preemption_reason(v, job), job.job_id)
            for v in victims)
        if self.policy.max_reservations_per_round:
            runtime = (job.reference_runtime_s or self.policy.default_runtime_s) / next(
                s for s, g in rank.entries if g is group) + self.objectives.penalty_s(
                job, group.region)
            need = job.replicas * job.devices_per_replica
            spare = group.ledger.free_devices + freed_devices(group, victims) - need
            held = self.reserved.setdefault(group, Holds())
            held.add(Reservation(job.job_id, self.now, self.now + runtime, need, spare))
            self.reservations += 1
        return WaitDecision(job.job_id, explain_preempting(victims, group, reason))

    def _placement(
        self, job: PendingJob, rank: ShapeRank, pos: int, here: Candidate,
        passed: list[tuple[Candidate, Group]], slots: list[ReplicaSlot],
    ) -> PlacementDecision:
        """The decision, with the compared candidates: the faster busy groups
        passed over, the chosen one and the next few slower ones."""
        group = rank.entries[pos][1]
        ranked = [c for c, _ in passed]
        ranked.append(here)
        ranked += self._runners_up(job, rank, pos)
        ranked.sort(key=lambda c: (c.finish_s, not c.fits_now))
        return PlacementDecision(
            job_id=job.job_id,
            pool=group.pool,
            region=group.region,
            family=group.family,
            model=group.model,
            replicas=tuple(
                ReplicaAssignment(rank_, node, devices)
                for rank_, (node, devices) in enumerate(slots)
            ),
            estimated_runtime_s=here.runtime_s,
            candidates=tuple(ranked),
            chosen_index=[c is here for c in ranked].index(True),
            others_not_compared=max(len(rank.entries) - pos - 1 - EXPLAIN_OTHERS, 0),
            decided_at=self.now,
            objective="" if self.objective == FASTEST else self.objective,
        )

    def _runners_up(self, job: PendingJob, rank: ShapeRank, pos: int) -> list[Candidate]:
        """Estimates for the next slower groups after the chosen one."""
        reference = job.reference_runtime_s or self.policy.default_runtime_s
        dpr, replicas, now = job.devices_per_replica, job.replicas, self.now
        need, candidate, out = replicas * dpr, self.objectives.candidate, []
        for speed, group in rank.entries[pos + 1 : pos + 1 + EXPLAIN_OTHERS]:
            runtime = reference / speed
            ledger = group.ledger
            if ledger.free_devices >= need and ledger.slot_bound(dpr) >= replicas:
                here = candidate(group, job, now, runtime, True)
                held = self.reserved.get(group)
                if held is None or held.admits(here.finish_s, need):
                    out.append(here)
                    continue
            out.append(self._busy(group, job, runtime))
        return out
