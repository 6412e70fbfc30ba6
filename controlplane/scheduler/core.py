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
``Policy.start_then_migrate`` (migration on, ``core_migrate``) a job also
starts on the slower chip when starting there and moving once the faster
group frees finishes no later than waiting.

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
from controlplane.scheduler.core_objective import FASTEST, Choice, Objectives, restricted
from controlplane.scheduler.core_preempt import (
    Preemptor,
    explain_preempting,
    freed_devices,
    preemption_reason,
)
from controlplane.scheduler.core_quota import Admit, QuotaBook
from controlplane.scheduler.core_rank import Holds, RankKey, Reservation, ShapeRank
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
    """Priority descending, then submission ``order``; ``job_id`` breaks exact ties."""
    return sorted(pending, key=lambda j: (-j.priority, j.order, j.job_id))


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
        self.reserved: dict[Group, Holds] = {}
        self.reservations = 0
        self.placed = 0
        # Capacity reasons repeat across the jobs of one shape and only change
        # when something is placed: (placements so far, text) per shape.
        self.reasons: dict[ShapeRank, tuple[int, str]] = {}
        # Start estimates per (group, devices needed): valid while the group's
        # free devices and reservations are unchanged.
        self.starts: dict[tuple[Group, int], tuple[int, int, float]] = {}
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
        skey, verdict = self._verdict(job)
        if verdict.never_reason:
            return WaitDecision(job.job_id, verdict.never_reason, never_fits=True)
        refusal = self.admission_refusal(job)
        if refusal:
            return WaitDecision(job.job_id, refusal)
        self.admits, quota_refusal = self.quotas.admits(job, verdict.groups)
        if quota_refusal:
            return WaitDecision(job.job_id, quota_refusal)
        objective = self.objective  # set by _verdict
        reference = job.reference_runtime_s or self.policy.default_runtime_s
        key = (skey, job.cpu_millis, job.memory_bytes, job.speed,
               self.objectives.rank_extra(job, objective, reference))
        rank = self.ranks.get(key)
        if rank is None:
            order = self.objectives.rank_order(job, objective, reference)
            rank = self.ranks[key] = ShapeRank(verdict.groups, job, self.speeds, order)
        decision = self._walk(job, rank, verdict.groups)
        if isinstance(decision, PlacementDecision):
            self.placed += 1
        return decision

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
        need, now = job.replicas * job.devices_per_replica, self.now
        passed: list[Choice] = []  # better-ranked busy groups, estimated
        dead: list[Group] = []
        can_reserve = self.reservations < self.policy.max_reservations_per_round
        hold_nothing = not self.policy.max_reservations_per_round
        admits = self.admits
        for pos, (speed, group) in enumerate(rank.entries):
            if admits is not None and admits[group] is Admit.REFUSE:
                continue
            runtime = reference / speed
            held = self.reserved.get(group)
            ledger = group.ledger
            roomy = ledger.free_devices >= need and (
                ledger.slot_bound(job.devices_per_replica) >= job.replicas)
            here = self.objectives.candidate(group, job, now, runtime, True) if roomy else None
            if here is not None and (held is None or held.admits(here.finish_s, need)):
                target = self.objectives.wait_target(
                    self.objective, passed, here, now) if passed else None
                if target is not None and not self._moving_later_wins(here, target[0]):
                    return self._wait_for_faster(job, target, here)
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
            passed.append((self._busy(group, job, runtime), group))  # the job may wait for it
        if dead:
            rank.drop(dead)
        best = self.objectives.wait_target(self.objective, passed, None, now)
        return self._nowhere(job, best, rank, groups)

    def _moving_later_wins(self, here: Candidate, busy: Candidate) -> bool:
        """Does starting on ``here`` now and moving to ``busy`` once it frees
        finish no later than waiting for it (``Policy.start_then_migrate``)?
        The work done here until then is not redone there, except
        ``Policy.migration_lost_work_s`` of it (since the last checkpoint)."""
        if not self.policy.start_then_migrate or self.objective != FASTEST:
            return False
        ahead = max(busy.start_s - self.now, 0.0)
        kept = max(ahead - self.policy.migration_lost_work_s, 0.0)
        done = kept / here.runtime_s if here.runtime_s else 1.0
        moved = busy.start_s + self.policy.migration_restart_cost_s + max(
            1.0 - done, 0.0) * busy.runtime_s
        return moved <= busy.finish_s

    def _busy(self, group: Group, job: PendingJob, runtime: float) -> Candidate:
        start = self._start_when_free(group, job)
        return self.objectives.candidate(group, job, start, runtime, False)

    def _start_when_free(self, group: Group, job: PendingJob) -> float:
        """When the running jobs will have freed enough for ``job`` beyond
        what the group's reservations hold."""
        need, free = job.replicas * job.devices_per_replica, group.ledger.free_devices
        held = self.reserved.get(group)
        stamp = (free, len(held.queue) if held else 0)
        memo = self.starts.get((group, need))
        if memo is not None and memo[:2] == stamp:
            return memo[2]
        start = self._estimate_start(group, need - free, held)
        self.starts[(group, need)] = (*stamp, start)
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
        reason = self._capacity_reason(job, rank, groups)
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

    def _capacity_reason(self, job: PendingJob, rank: ShapeRank, groups: Sequence[Group]) -> str:
        memo = self.reasons.get(rank)  # one rank per shape and host request
        if memo is None or memo[0] != self.placed:
            memo = self.reasons[rank] = (self.placed, capacity_reason(job, groups))
        return memo[1]

    def _placement(
        self, job: PendingJob, rank: ShapeRank, pos: int, here: Candidate,
        passed: list[tuple[Candidate, Group]], slots: list[ReplicaSlot],
    ) -> PlacementDecision:
        """The decision, with the compared candidates: the faster busy groups
        passed over, the chosen one and the next few slower ones."""
        group = rank.entries[pos][1]
        later = self._runners_up(job, rank, pos)
        ranked = sorted([*(c for c, _ in passed), here, *later],
                        key=lambda c: (c.finish_s, not c.fits_now))
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
            chosen_index=next(i for i, c in enumerate(ranked) if c is here),
            others_not_compared=max(len(rank.entries) - pos - 1 - EXPLAIN_OTHERS, 0),
            decided_at=self.now,
            objective="" if self.objective == FASTEST else self.objective,
        )

    def _runners_up(self, job: PendingJob, rank: ShapeRank, pos: int) -> list[Candidate]:
        """Estimates for the next slower groups after the chosen one."""
        reference = job.reference_runtime_s or self.policy.default_runtime_s
        need, now, out = job.replicas * job.devices_per_replica, self.now, []
        for speed, group in rank.entries[pos + 1 : pos + 1 + EXPLAIN_OTHERS]:
            runtime = reference / speed
            held = self.reserved.get(group)
            ledger = group.ledger
            here = self.objectives.candidate(group, job, now, runtime, True)
            if ledger.free_devices >= need and ledger.slot_bound(
                job.devices_per_replica) >= job.replicas and (
                held is None or held.admits(here.finish_s, need)
            ):
                out.append(here)
            else:
                out.append(self._busy(group, job, runtime))
        return out
