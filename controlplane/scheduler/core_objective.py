"""Placement objectives and regions: what "best" means for one job.

A job's objective is its own (``PendingJob.objective``), else its queue's
(``Policy.queue_objectives``), else ``Policy.default_objective``:

* ``fastest``: earliest estimated finish (the core's rule before objectives).
* ``cost``: lowest estimated cost = devices x hours held x the pool's price
  per device-hour (``NodeView.cost_per_device_hour``); ties by finish.
* ``energy``: lowest estimated energy = devices x hours held x the model's
  power (``ClusterSnapshot.model_power_w``, the catalogue's TDP); ties by
  finish.
* ``pinned``: fastest, but only on the family the job names first
  (``PendingJob.first_family``); a job naming no family is not narrowed.

Hours held = the runtime on the chip plus, for a pool outside the job's data
region, the policy's transfer penalty (the devices wait for the data), so a
cheap far region wins only when it really finishes sooner or costs less
with the transfer paid. Interactive jobs only run in their data region
(none given: any region, no penalty anywhere); batch jobs go anywhere.

Waiting for a better pool stays the fastest-finish rule's shape: the core
walks pools best first by the score of starting now and takes the first
that fits; it may instead wait for (and reserve) a busy pool it passed.
``fastest``/``pinned`` wait when that pool finishes sooner by
``Policy.wait_for_faster_margin`` (ratio of times to finish, wait
included). ``cost``/``energy`` wait for a busy pool that is strictly better
on their figure when the wait stretches the job's time to finish there by
at most the same ratio (finish, wait included <= margin x the time it holds
the devices): the job takes the best pool as if it were free, but does not
queue behind a long backlog for a saving. When nothing fits now, the job
reserves the best-scoring pool among those finishing within the margin of
the earliest (``fastest``: the earliest).

Pure: values in, values out; one :class:`Objectives` lives for one round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from controlplane.scheduler.core_fleet import Group, StaticVerdict
from controlplane.scheduler.types import Candidate, ClusterSnapshot, PendingJob, Policy

FASTEST, COST, ENERGY, PINNED = "fastest", "cost", "energy", "pinned"
OBJECTIVES = (FASTEST, COST, ENERGY, PINNED)
INTERACTIVE, BATCH = "interactive", "batch"
LATENCY_CLASSES = (INTERACTIVE, BATCH)  # "" = batch

# Sort key of a group for one job, given the job's speed there (best first).
RankOrder = Callable[[Group, float], tuple[float, float]]
Choice = tuple[Candidate, Group]
_UNSEEN = object()  # a group whose figures are not looked up yet


def score(objective: str, cand: Candidate) -> tuple[float, float]:
    """Lower is better: the objective's figure, then the finish."""
    if objective == COST:
        return (cand.cost, cand.finish_s)
    if objective == ENERGY:
        return (cand.energy_kwh, cand.finish_s)
    return (cand.finish_s, 0.0)


class Objectives:
    """The round's objective context: defaults, penalties, prices, power."""

    __slots__ = ("by_queue", "default", "default_penalty", "figures", "margin",
                 "noisy_regions", "penalties", "power", "prices")

    def __init__(self, policy: Policy, snapshot: ClusterSnapshot) -> None:
        self.default = policy.default_objective or FASTEST
        self.by_queue = dict(policy.queue_objectives)
        self.margin = policy.wait_for_faster_margin
        self.penalties: dict[tuple[str, str], float] = {}
        for home, there, seconds in policy.transfer_penalty_s:
            self.penalties[(home, there)] = seconds
        for home, there, seconds in policy.transfer_penalty_s:
            self.penalties.setdefault((there, home), seconds)  # one way given: both ways
        self.default_penalty = policy.default_transfer_penalty_s
        # Data regions some penalty applies from (besides the default).
        self.noisy_regions = {home for (home, _), s in self.penalties.items() if s > 0}
        self.power = {model: watts for model, watts in snapshot.model_power_w if watts > 0}
        self.prices: dict[Group, float] = {}
        # (price, watts) per group; None when both are unknown (0).
        self.figures: dict[Group, tuple[float, float] | None] = {}

    def of(self, job: PendingJob) -> str:
        """The job's objective: its own, else its queue's, else the default."""
        if job.objective:
            return job.objective
        return self.by_queue.get(job.queue, self.default) if self.by_queue else self.default

    def penalty_s(self, job: PendingJob, region: str) -> float:
        """Transfer seconds of running ``job`` in ``region`` (0 at home)."""
        home = job.data_region
        if not home or region == home:
            return 0.0
        return self.penalties.get((home, region), self.default_penalty)

    def penalised(self, job: PendingJob) -> bool:
        """Could any region cost ``job`` a transfer? (Then its ranking
        depends on its runtime, not just on speeds.)"""
        home = job.data_region
        return bool(home) and (self.default_penalty > 0 or home in self.noisy_regions)

    @staticmethod
    def restriction(job: PendingJob, objective: str) -> tuple[str, str]:
        """(family the job is pinned to, region it must stay in); "" = free."""
        pin = job.first_family if objective == PINNED else ""
        region = job.data_region if job.latency_class == INTERACTIVE else ""
        return pin, region

    def price(self, group: Group) -> float:
        """The group's price per device-hour (its dearest node: conservative)."""
        found = self.prices.get(group)
        if found is None:
            found = self.prices[group] = max(v.cost_per_device_hour for v in group.views)
        return found

    def candidate(self, group: Group, job: PendingJob, start: float, runtime: float,
                  fits_now: bool) -> Candidate:
        """The estimates of ``job`` on ``group`` starting at ``start``.
        (On every job's path: the common case, no price, power or transfer,
        builds the plain candidate.)"""
        transfer = self.penalty_s(job, group.region) if job.data_region else 0.0
        held = runtime + transfer
        figures = self.figures.get(group, _UNSEEN)
        if figures is _UNSEEN:
            figures = self._figures(group)
        if figures is None and not transfer:
            return Candidate(group.pool, group.model, start, held, start + held, fits_now)
        price, watts = figures or (0.0, 0.0)
        device_hours = job.replicas * job.devices_per_replica * held / 3600
        return Candidate(group.pool, group.model, start, held, start + held, fits_now,
                         device_hours * price, device_hours * watts / 1000, transfer)

    def _figures(self, group: Group) -> tuple[float, float] | None:
        price, watts = self.price(group), self.power.get(group.model, 0.0)
        found = self.figures[group] = (price, watts) if price or watts else None
        return found

    def rank_order(self, job: PendingJob, objective: str, reference: float) -> RankOrder | None:
        """How to sort a job's groups best first; None = by speed alone
        (fastest without transfers: the order every runtime agrees on)."""
        penalised = self.penalised(job)
        if objective not in (COST, ENERGY) and not penalised:
            return None

        def held(group: Group, speed: float) -> float:
            return reference / speed + (self.penalty_s(job, group.region) if penalised else 0.0)

        if objective == COST:
            return lambda g, s: (held(g, s) * self.price(g), held(g, s))
        if objective == ENERGY:
            return lambda g, s: (held(g, s) * self.power.get(g.model, 0.0), held(g, s))
        return lambda g, s: (held(g, s), 0.0)

    def rank_extra(self, job: PendingJob, objective: str, reference: float) -> tuple[object, ...]:
        """What a job's ranking depends on beyond its shape and speeds."""
        by = objective if objective in (COST, ENERGY) else ""
        if self.penalised(job):
            return (by, job.data_region, reference)
        return (by,)

    def wait_target(self, objective: str, passed: Sequence[Choice],
                    here: Candidate | None, now: float,
                    soonest: Choice | None = None) -> Choice | None:
        """The busy pool to wait for instead of starting on ``here`` now
        (None: start now); with ``here`` None nothing fits now and the
        answer is the pool to reserve (see module doc). ``soonest``: the
        first of ``passed`` with the earliest finish, when the caller
        tracked it."""
        if not passed:
            return None
        if soonest is None:
            soonest = min(passed, key=lambda c: c[0].finish_s)
        if objective not in (COST, ENERGY):
            if here is None or here.finish_s - now > self.margin * (soonest[0].finish_s - now):
                return soonest
            return None
        if here is None:
            bound = self.margin * (soonest[0].finish_s - now)
            fine = [c for c in passed if c[0].finish_s - now <= bound]
        else:
            mine = score(objective, here)
            fine = [c for c in passed if score(objective, c[0]) < mine
                    and c[0].finish_s - now <= self.margin * c[0].runtime_s]
        return min(fine, key=lambda c: score(objective, c[0])) if fine else None


def restricted(verdict: StaticVerdict, job: PendingJob, pin: str, region: str) -> StaticVerdict:
    """``verdict`` narrowed to the pinned family and the interactive job's
    data region; the reason names the restriction when nothing is left."""
    if verdict.never_reason or not (pin or region):
        return verdict
    kept = tuple(g for g in verdict.groups
                 if (not pin or g.family == pin) and (not region or g.region == region))
    if kept:
        return StaticVerdict(kept)
    if pin and not any(g.family == pin for g in verdict.groups):
        return StaticVerdict((), f"objective pinned keeps the job on family '{pin}' (the "
                                 "first it names): no pool of it can hold the job")
    return StaticVerdict((), f"latency class interactive keeps the job in its data region "
                             f"'{region}': no pool there can hold it")
