"""Preemption: which running jobs to stop so a waiting job can start.

Tried only for a job that fits no group now but could (never for a job that
could never fit). Victims come from ONE candidate group and are whole jobs
(a victim gang frees all its devices). A running job may be a victim when

* its priority is strictly lower than the preemptor's, or
* it runs on borrowed capacity, of another tenant, and the preemptor's
  tenant is reclaiming: it has a quota on that group and is within its
  nominal share there.

It must also be preemptible, know where it runs (``RunningView.nodes``), and
not have been preempted within ``Policy.preemption_cooldown_s``. Victims are
taken borrowed first, then lowest priority, then least lost work (devices x
seconds since the last checkpoint), then job id; a greedy pass takes them in
that order until the gang fits exactly (per-node device counts, as if the
victims' devices were free), and a pruning pass drops any the gang does not
need. Among groups, the plan with the lowest top victim priority, then the
least lost work, then the fewest victims wins (ties: faster group first).
At most ``Policy.max_preemptions_per_round`` victims per round.

The victims' devices free only when they have stopped, so the preemptor
waits this round, holding a reservation on the group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from controlplane.scheduler.core_fleet import Group
from controlplane.scheduler.core_quota import Admit
from controlplane.scheduler.types import ClusterSnapshot, PendingJob, Policy, RunningView

# (group, victims) of a chosen plan.
Plan = tuple[Group, list[RunningView]]


class Preemptor:
    """Victim selection for one round; remembers victims already taken."""

    def __init__(self, snapshot: ClusterSnapshot, policy: Policy, now: float) -> None:
        self.policy, self.now = policy, now
        self.budget = max(policy.max_preemptions_per_round, 0)
        self.taken: set[str] = set()
        self.failed: set[tuple[object, ...]] = set()
        cooldown = policy.preemption_cooldown_s
        self.by_group: dict[tuple[str, str], list[RunningView]] = {}
        if self.budget:
            for run in snapshot.running:
                recent = (run.last_preempted_at is not None
                          and now - run.last_preempted_at < cooldown)
                if run.preemptible and run.nodes and not recent:
                    self.by_group.setdefault((run.pool, run.model), []).append(run)
        everyone = [r for runs in self.by_group.values() for r in runs]
        self.lowest = min((r.priority for r in everyone), default=0)
        self.any_borrowed = any(r.borrowed for r in everyone)

    def worth_trying(self, job: PendingJob) -> bool:
        """Cheap test: could any running job be a victim of ``job`` at all?"""
        if not self.by_group or job.devices_per_replica <= 0:
            return False
        if len(self.taken) >= self.budget:
            return False
        return job.priority > self.lowest or self.any_borrowed

    def plan(self, job: PendingJob, groups: Sequence[Group],
             admits: Mapping[Group, Admit] | None, reclaims: set[Group]) -> Plan | None:
        """The best plan over ``groups`` (fastest first) within the round's
        budget, or None. ``admits``: the quota verdict per group (None = no
        quotas); ``reclaims``: groups where the job's tenant may reclaim
        borrowed capacity. A failure is remembered per job shape, priority
        and tenant: the ledger only shrinks within a round."""
        memo = (job.families, job.models, job.pools, job.replicas, job.devices_per_replica,
                job.min_device_memory_bytes, job.priority, job.tenant if admits else "")
        if memo in self.failed:
            return None
        best: tuple[tuple[float, float, int, int], Plan] | None = None
        left = self.budget - len(self.taken)
        for pos, group in enumerate(groups):
            if admits is not None and admits[group] is Admit.REFUSE:
                continue
            victims = self._victims(job, group, group in reclaims)
            if victims is None or len(victims) > left:
                continue
            key = (max(v.priority for v in victims), sum(self._lost(v) for v in victims),
                   len(victims), pos)
            if best is None or key < best[0]:
                best = (key, (group, victims))
        if best is None:
            self.failed.add(memo)
            return None
        self.taken.update(v.job_id for v in best[1][1])
        return best[1]

    def _victims(self, job: PendingJob, group: Group, reclaim: bool) -> list[RunningView] | None:
        """Fewest-loss victims in ``group`` that make the gang fit, or None."""
        eligible = [
            r for r in self.by_group.get((group.pool, group.model), ())
            if r.job_id not in self.taken
            and (r.priority < job.priority or (reclaim and r.borrowed and r.tenant != job.tenant))
        ]
        if not eligible:
            return None
        eligible.sort(key=lambda r: (not r.borrowed, r.priority, self._lost(r), r.job_id))
        free = {node.name: len(node.free) for node in group.ledger.nodes}
        chosen: list[RunningView] = []
        for run in eligible:
            if fits(job, free):
                break
            _shift(free, run, +1)
            chosen.append(run)
        if not chosen or not fits(job, free):
            return None  # no victims needed: host or reservations block it, not devices
        for run in reversed(list(chosen)):  # most costly first: drop what is not needed
            _shift(free, run, -1)
            if fits(job, free):
                chosen.remove(run)
            else:
                _shift(free, run, +1)
        return chosen

    def _lost(self, run: RunningView) -> float:
        """Device-seconds of work ``run`` loses when stopped now."""
        since = run.seconds_since_checkpoint
        if since <= 0 and run.started_at is not None:
            since = max(self.now - run.started_at, 0.0)
        return since * run.devices


def fits(job: PendingJob, free: Mapping[str, int]) -> bool:
    """Does the gang fit on these per-node free device counts?"""
    d = job.devices_per_replica
    return sum(n // d for n in free.values()) >= job.replicas


def _shift(free: dict[str, int], run: RunningView, sign: int) -> None:
    """Add (or take back) ``run``'s devices on the group's nodes."""
    for node, count in run.nodes:
        if node in free:
            free[node] += sign * count


def freed_devices(group: Group, victims: Sequence[RunningView]) -> int:
    """Devices the victims free on the group's schedulable nodes."""
    names = {node.name for node in group.ledger.nodes}
    return sum(c for v in victims for node, c in v.nodes if node in names)


def explain_preempting(victims: Sequence[RunningView], group: Group, capacity: str) -> str:
    """"preempting j-1, j-2 to make room on pool p (M); <capacity reason>"."""
    names = ", ".join(v.job_id for v in victims)
    return f"preempting {names} to make room on pool {group.pool} ({group.model}); {capacity}"


def preemption_reason(victim: RunningView, job: PendingJob) -> str:
    """Why this victim, in words an operator reads."""
    if victim.priority < job.priority:
        return (f"preempted by higher-priority job {job.job_id} "
                f"(priority {job.priority} > {victim.priority})")
    return (f"borrowed capacity reclaimed by tenant {job.tenant} "
            f"for job {job.job_id} (within its nominal quota)")
