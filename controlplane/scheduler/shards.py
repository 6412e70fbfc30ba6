"""One round split across shards of pools, and merged back (pure: no Ray).

A fleet too large for one process is scheduled by several shards, each
running the unchanged core on its own pools. Pools go to shards by a stable
hash of the pool name (``shard_of``); a gang lands inside one (pool, model)
group, so it never spans shards.

Routing and passes. A job may run on the shards that hold a group able to
ever hold it, ranked by the fastest such group for the job (its own speed
factors included): its *home* shard first. In pass 1 every job is offered to
its home shard only, all shards in parallel. A job left waiting *for
capacity* (or by quota) is offered in the next pass to its next shard, and
so on; a job waits for good when it has no shard left. In every pass a job
is offered to exactly one shard and is dropped from later passes once
placed, so it is placed at most once. Each pass sees the capacity the
earlier passes took: placed devices (and host CPU and memory) leave the
nodes' free lists, and the placements join the running jobs (with no node
list, so never as victims). In a later pass a shard first re-runs the jobs
waiting there that hold a reservation (*ghosts*, ordered before the
newcomers; their decisions are dropped), so the reservations they hold keep
a waiting gang from being pushed back by the newcomers: a shard serves its
own queue first. A job skips a shard with no (pool, model) group of enough
free devices (it would only wait there). A newcomer also sees the pools of
the shards it tried before, as *shadows*: unschedulable and with no free
device, so it cannot be placed there but the core still estimates when
they free up, and waits for a faster busy pool at home rather than start
on a slower chip here, as the unsharded core would. Each job sees only its
own shards' pools (``PendingJob.pools``): a ghost only its shard's.

Choices, and where they differ from one unsharded round:

* a job that chose to wait for a faster busy pool at home, or that
  preempts, does not spill (the core would not start it on a slower chip
  either); preemption is decided in the home shard only. A shadow looks
  busier than it may be (its free devices are hidden), so a spilled job
  may start on a slower chip a little more readily than the core would.
  Homes are ranked by speed whatever the job's objective: a job minimising
  cost or energy compares the pools of its home shard first and reaches a
  cheaper pool of another shard only if it waits at home. A placement's
  explanation names the candidates its shard saw;
* quota and fair share stay global. Every shard sees every running job (the
  global tenant usage for fair share, and quota usage). Two shards working
  at once could still both admit a tenant up to its quota, so the merge is
  the quota ledger: it walks the placements (pass, then shard, then the
  shard's order) through one global ``QuotaBook`` and drops any that would
  exceed a quota; such a job waits (with the quota reason) and is placed in
  a later round. Splitting the headroom between shards instead would leave
  quota unused on the shards a tenant does not need; dropping wastes at most
  one round's worth of the excess. The merge also sets ``borrowed`` from the
  global ledger;
* ``Policy.max_placements_per_round`` is enforced in the merge (the excess
  waits with the core's round-limit reason); the reservation and
  preemption budgets are split between the shards (each shard at least one
  reservation when reservations are on), so together they stay within them.

With one shard, or when every pool hashes to one shard, the round is one
call of the core on the whole input: exactly the unsharded decisions.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from controlplane.scheduler.core import order_queue, schedule
from controlplane.scheduler.core_estimate import job_speed, speed_table
from controlplane.scheduler.core_fleet import (
    ShapeKey,
    StaticVerdict,
    build_groups,
    shape_key,
    static_verdict,
)
from controlplane.scheduler.core_quota import Admit, QuotaBook
from controlplane.scheduler.core_share import fair_share_order
from controlplane.scheduler.types import (
    ClusterSnapshot,
    Decisions,
    NodeView,
    PendingJob,
    PlacementDecision,
    Policy,
    PreemptionDecision,
    RunningView,
    WaitDecision,
)

# A job that waits for one of these reasons at home does not spill: it chose
# to wait (a faster pool), is making room (preempting) or hit the round bound.
NO_SPILL_PREFIXES = ("waiting for faster pool", "preempting", "round limit")
# A wait whose reason says it holds devices (a reservation, or room being
# made by preemption): in later passes its shard re-runs it as a ghost. If
# the core's words change, ghosts vanish and newcomers may take reserved
# devices; tests/unit/test_scheduler_shards.py checks that they do not.
HOLDS_MARKERS = ("reserved", "preempting")


def shard_of(pool: str, shards: int) -> int:
    """The shard of ``pool``: a stable hash (the same in every process and
    every run, unlike ``hash``), so a pool keeps its shard."""
    return zlib.crc32(pool.encode("utf-8")) % shards


@dataclass(frozen=True)
class ShardWork:
    """One shard's part of one pass: what its actor runs."""

    shard_id: int
    snapshot: ClusterSnapshot
    pending: tuple[PendingJob, ...]
    policy: Policy
    now: float
    # Jobs re-run only to hold their reservations; ordered first, their
    # decisions are ignored by the merge.
    ghosts: frozenset[str] = frozenset()


def run_shard(work: ShardWork) -> Decisions:
    """The core on one shard's work (what a shard actor does)."""
    if not work.ghosts:
        return schedule(work.snapshot, work.pending, work.policy, work.now)

    def ghosts_first(pending: Sequence[PendingJob]) -> list[PendingJob]:
        ghosts = [j for j in pending if j.job_id in work.ghosts]
        others = [j for j in pending if j.job_id not in work.ghosts]
        return [*_default_order(ghosts, work), *_default_order(others, work)]

    return schedule(work.snapshot, work.pending, work.policy, work.now, ordering=ghosts_first)


def _default_order(jobs: Sequence[PendingJob], work: ShardWork) -> Sequence[PendingJob]:
    if work.policy.fair_share:
        return fair_share_order(jobs, work.snapshot, work.policy)
    return order_queue(jobs)


# Runs one pass: the shards' works (in parallel where it can) -> their decisions.
PassRunner = Callable[[Sequence[ShardWork]], Sequence[Decisions]]


def schedule_sharded(snapshot: ClusterSnapshot, pending: Sequence[PendingJob], policy: Policy,
                     now: float, shards: int, run_pass: PassRunner) -> Decisions:
    """A whole sharded round: passes until no job has a shard left to try."""
    sharded = ShardedRound(snapshot, pending, policy, now, shards)
    works = sharded.first_pass()
    while works:
        works = sharded.absorb(works, run_pass(works))
    return sharded.decisions()


def run_inline(works: Sequence[ShardWork]) -> list[Decisions]:
    """A pass run one shard after the other in this process."""
    return [run_shard(work) for work in works]


def round_limit(job_id: str, limit: int) -> WaitDecision:
    """The core's round-bound wait, for jobs the merge turns away."""
    return WaitDecision(job_id, f"round limit: {limit} placements per round reached; "
                        "retried next round")


def split_budget(total: int, shards: int, shard: int, *, at_least_one: bool = False) -> int:
    """Shard ``shard``'s part of a per-round budget (parts sum to ``total``)."""
    part = total // shards + (1 if shard < total % shards else 0)
    return max(part, 1) if at_least_one and total > 0 else part


class ShardedRound:
    """The split and merge of one round (see the module doc). Lives for one call."""

    def __init__(self, snapshot: ClusterSnapshot, pending: Sequence[PendingJob],
                 policy: Policy, now: float, shards: int) -> None:
        if shards < 1:
            raise ValueError(f"shards must be >= 1, got {shards}")
        self.snapshot, self.policy, self.now, self.shards = snapshot, policy, now, shards
        self.pending = tuple(pending)
        self.jobs = {j.job_id: j for j in self.pending}
        self.nodes: dict[int, dict[str, NodeView]] = {}
        for view in snapshot.nodes:
            self.nodes.setdefault(shard_of(view.pool, shards), {})[view.name] = view
        self.pools = {s: frozenset(v.pool for v in views.values())
                      for s, views in self.nodes.items()}
        self.decided: dict[str, PlacementDecision | WaitDecision] = {}
        self.kept: list[PlacementDecision] = []
        self.preemptions: list[PreemptionDecision] = []
        self.placed_running: list[RunningView] = []
        self.home_wait: dict[str, WaitDecision] = {}
        # Per shard: the waiting jobs it was offered that hold devices there.
        self.holders: dict[int, list[PendingJob]] = {}
        self.quotas = QuotaBook(policy.quotas, snapshot)
        self.passes = 0
        self.cursor: dict[str, int] = {}  # per job: where in its route the next try is
        self.whole: Decisions | None = None
        self.routes = self._routes() if len(self.nodes) > 1 else {}

    # -- routing ------------------------------------------------------------
    def _routes(self) -> dict[str, list[int]]:
        """Per job, the shards able to hold it, best first; jobs no shard can
        ever hold get the core's never-fits decision here."""
        groups, speeds = build_groups(self.snapshot.nodes), speed_table(self.snapshot)
        verdicts: dict[ShapeKey, StaticVerdict] = {}
        ranked: dict[tuple[ShapeKey, tuple[tuple[str, float], ...]], list[int]] = {}
        routes: dict[str, list[int]] = {}
        for job in self.pending:
            skey = shape_key(job)
            verdict = verdicts.get(skey)
            if verdict is None:
                verdict = verdicts[skey] = static_verdict(groups, job)
            if verdict.never_reason:
                self.decided[job.job_id] = WaitDecision(job.job_id, verdict.never_reason,
                                                        never_fits=True)
                continue
            key = (skey, job.speed if job.devices_per_replica else ())
            if key not in ranked:
                best: dict[int, float] = {}
                for group in verdict.groups:
                    shard = shard_of(group.pool, self.shards)
                    best[shard] = max(best.get(shard, 0.0), job_speed(job, group.model, speeds))
                ranked[key] = sorted(best, key=lambda s: (-best[s], s))
            routes[job.job_id] = ranked[key]
        return routes

    # -- passes -------------------------------------------------------------
    def first_pass(self) -> list[ShardWork]:
        """Pass 1: every job to its home shard (or, with a single shard
        holding every pool, the whole round to that shard)."""
        self.passes = 1
        if len(self.nodes) <= 1:
            only = next(iter(self.nodes), 0)
            return [ShardWork(only, self.snapshot, self.pending, self.policy, self.now)]
        offers: dict[int, list[PendingJob]] = {}
        for job in self.pending:
            route = self.routes.get(job.job_id)
            if route:
                offers.setdefault(route[0], []).append(job)
        return self._works(offers)

    def absorb(self, works: Sequence[ShardWork],
               results: Sequence[Decisions]) -> list[ShardWork]:
        """Merge one pass's decisions; return the next pass (empty: done)."""
        if len(self.nodes) <= 1:
            self.whole = results[0]
            return []
        tried: list[PendingJob] = []
        for work, decisions in sorted(zip(works, results, strict=True),
                                      key=lambda wr: wr[0].shard_id):
            tried.extend(self._merge(work, decisions))
        self.passes += 1
        offers: dict[int, list[PendingJob]] = {}
        roomiest = self._roomiest() if tried else {}
        for job in tried:
            nxt = self._next_shard(job, roomiest)
            if nxt is None:
                self.decided.setdefault(job.job_id, self.home_wait[job.job_id])
            else:
                offers.setdefault(nxt, []).append(job)
        return self._works(offers) if offers else []

    def _merge(self, work: ShardWork, decisions: Decisions) -> list[PendingJob]:
        """Take one shard's decisions for the jobs offered to it this pass;
        returns those of them still waiting."""
        mine = {j.job_id for j in work.pending} - work.ghosts
        for placement in decisions.placements:
            if placement.job_id in mine:
                self._keep(placement)
        if self.passes == 1:
            self.preemptions.extend(decisions.preemptions)
        making_room = {p.for_job for p in decisions.preemptions}
        left: list[PendingJob] = []
        for wait in decisions.waiting:
            if wait.job_id not in mine or wait.job_id in self.decided:
                continue
            self.home_wait.setdefault(wait.job_id, wait)
            if any(marker in wait.reason for marker in HOLDS_MARKERS):
                self.holders.setdefault(work.shard_id, []).append(self.jobs[wait.job_id])
            if wait.job_id in making_room or wait.reason.startswith(NO_SPILL_PREFIXES):
                self.decided[wait.job_id] = self.home_wait[wait.job_id]
            else:
                left.append(self.jobs[wait.job_id])
        return left

    def _next_shard(self, job: PendingJob, roomiest: dict[int, int]) -> int | None:
        """The job's next shard with a group of enough free devices (a
        cheap bound: a shard without one would only make it wait)."""
        limit = self.policy.max_placements_per_round
        if limit and len(self.kept) >= limit:
            self.decided[job.job_id] = round_limit(job.job_id, limit)
            return None
        route, need = self.routes[job.job_id], job.replicas * job.devices_per_replica
        at = self.cursor.get(job.job_id, 1)
        while at < len(route) and roomiest.get(route[at], 0) < need:
            at += 1
        self.cursor[job.job_id] = at + 1
        return route[at] if at < len(route) else None

    def _roomiest(self) -> dict[int, int]:
        """Per shard, the most free devices in one (pool, model) group now."""
        free: dict[tuple[str, str], int] = {}
        for views in self.nodes.values():
            for v in views.values():
                if v.schedulable:
                    free[(v.pool, v.model)] = free.get((v.pool, v.model), 0) + len(
                        v.free_devices)
        out: dict[int, int] = {}
        for (pool, _), count in free.items():
            shard = shard_of(pool, self.shards)
            out[shard] = max(out.get(shard, 0), count)
        return out

    def _works(self, offers: dict[int, list[PendingJob]]) -> list[ShardWork]:
        """Each shard's work: its nodes (plus read-only shadows of the shards
        its newcomers tried before), every running job, its ghosts first."""
        running = (*self.snapshot.running, *self.placed_running)
        works = []
        for shard in sorted(offers):
            ghosts = [self._limited(j, {shard}) for j in self.holders.get(shard, ())
                      if not isinstance(self.decided.get(j.job_id), PlacementDecision)]
            newcomers, shadows = [], set()
            for job in offers[shard]:
                tried = self.routes.get(job.job_id, [])[:self.cursor.get(job.job_id, 1) - 1]
                shadows.update(tried)
                newcomers.append(self._limited(job, {shard, *tried}) if tried else job)
            views = [*self.nodes[shard].values(), *(
                replace(v, free_devices=(), schedulable=False)
                for s in sorted(shadows) for v in self.nodes[s].values())]
            # ``replace`` keeps every other field of the snapshot (speeds, power...).
            snap = replace(self.snapshot, nodes=tuple(views), running=running)
            works.append(ShardWork(shard, snap, (*ghosts, *newcomers), self._policy(shard),
                                   self.now, frozenset(j.job_id for j in ghosts)))
        return works

    def _limited(self, job: PendingJob, shards: set[int]) -> PendingJob:
        """``job`` seeing only the pools of ``shards`` (of those it allows)."""
        pools = frozenset(p for s in shards for p in self.pools[s])
        return replace(job, pools=job.pools & pools if job.pools else pools)

    def _policy(self, shard: int) -> Policy:
        """The round's policy with this shard's part of the budgets."""
        policy, n = self.policy, self.shards
        limit = policy.max_placements_per_round
        return replace(
            policy,
            max_placements_per_round=max(limit - len(self.kept), 0) if limit else 0,
            max_reservations_per_round=split_budget(policy.max_reservations_per_round, n,
                                                    shard, at_least_one=True),
            max_preemptions_per_round=split_budget(policy.max_preemptions_per_round, n, shard)
            if self.passes == 1 else 0,
        )

    # -- the merge ledger ---------------------------------------------------
    def _keep(self, placement: PlacementDecision) -> None:
        """Accept a placement unless the round bound or a global quota says
        no (then the job waits, with the reason)."""
        job = self.jobs[placement.job_id]
        limit = self.policy.max_placements_per_round
        if limit and len(self.kept) >= limit:
            self.decided[job.job_id] = round_limit(job.job_id, limit)
            return
        need = job.replicas * job.devices_per_replica
        if self.quotas.active and job.tenant in self.quotas.by_tenant:
            admit, why = self.quotas.check(job.tenant, placement.family, placement.model, need)
            if admit is Admit.REFUSE:
                self.decided[job.job_id] = WaitDecision(job.job_id, why)
                return
            self.quotas.charge(job.tenant, placement.family, placement.model, need)
            placement = replace(placement, borrowed=admit is Admit.BORROW)
        self.kept.append(placement)
        self.decided[job.job_id] = placement
        self._take(job, placement)

    def _take(self, job: PendingJob, placement: PlacementDecision) -> None:
        """Later passes see the placement: devices and host share gone, and
        a running job (no node list: never a victim) holding them."""
        for replica in placement.replicas:
            shard = shard_of(placement.pool, self.shards)
            view = self.nodes[shard][replica.node]
            taken = set(replica.device_indices)
            free = tuple(d for d in view.free_devices if d not in taken)
            cpu, mem, schedulable = view.cpu_free_millis, view.memory_free_bytes, True
            if cpu or mem:  # tracked: charge it; zero of both would read "untracked"
                cpu, mem = cpu - job.cpu_millis, mem - job.memory_bytes
                schedulable = cpu > 0 or mem > 0
            self.nodes[shard][replica.node] = replace(
                view, free_devices=free, cpu_free_millis=max(cpu, 0),
                memory_free_bytes=max(mem, 0), schedulable=view.schedulable and schedulable)
        self.placed_running.append(RunningView(
            job_id=job.job_id, pool=placement.pool, model=placement.model,
            devices=job.replicas * job.devices_per_replica,
            expected_end=self.now + placement.estimated_runtime_s, tenant=job.tenant,
            borrowed=placement.borrowed, priority=job.priority))

    def decisions(self) -> Decisions:
        """The merged decisions: placements in merge order, waits in the
        input order."""
        if self.whole is not None:
            return self.whole
        waiting = []
        for job in self.pending:
            decision = self.decided.get(job.job_id) or self.home_wait.get(job.job_id)
            if isinstance(decision, WaitDecision):
                waiting.append(decision)
        return Decisions(placements=tuple(self.kept), waiting=tuple(waiting),
                         preemptions=tuple(self.preemptions))
