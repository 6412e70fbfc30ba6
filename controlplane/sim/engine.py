"""The discrete-event loop: arrivals and completions on a virtual clock.

At each event time the engine applies every completion and arrival at that
time, then (only when something changed and work is queued or running)
asks the policy for one round and applies its preemptions, placements and
migrations. A job runs for
``remaining work x reference_runtime_s / speed(job, model)``; the running
jobs' true ends are what the core sees as ``expected_end``. Nothing reads a
wall clock and ties are broken by submission order, so the same input always
gives the same result.

Preemption: a stopped job keeps the progress of its last checkpoint (one
every ``checkpoint_every_s`` of running; 0 = continuously, nothing lost),
loses the rest, and is requeued. After a round that preempted, another
round runs at the same time, so the preemptor can take the freed devices
(the core makes it wait one round for its victims to stop).

Migration: a moved job stops where it runs (keeping its last checkpoint's
progress, as when preempted), restarts at once on the new devices and
spends ``restart_cost_s`` there before making progress again. A round that
migrated is followed by another, so the queue can take the devices left.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from controlplane.sim.errors import SimInputError
from controlplane.sim.speeds import Physics
from controlplane.sim.state import (
    Cluster,
    QueuedJob,
    RoundResult,
    RoundView,
    RunningJob,
    SimPlacement,
    eligible_families,
)
from controlplane.sim.trace import TraceJob

# Rounds at one event time: preemptions trigger another; bounded so a policy
# that keeps preempting cannot stall the clock.
MAX_ROUNDS_PER_EVENT = 4


class SchedulingPolicy(Protocol):
    """A policy under test: one round in, placements (and preemptions) out."""

    name: str

    def round(self, view: RoundView) -> RoundResult: ...


@dataclass
class JobRecord:
    job: TraceJob
    first_start: float
    finish: float = 0.0
    model: str = ""  # where it finished
    preemptions: int = 0
    migrations: int = 0


@dataclass
class Sample:
    """State right after the events at ``time``, until the next sample."""

    time: float
    queued: int
    busy: dict[str, int]  # family -> busy devices
    busy_models: dict[str, int]
    waiting_for: frozenset[str]  # families some queued job could use


@dataclass
class SimResult:
    policy: str
    records: list[JobRecord]
    timeline: list[Sample]
    never_fits: list[str] = field(default_factory=list)  # no pool could ever hold
    unfinished: list[str] = field(default_factory=list)
    preemptions: int = 0
    migrations: int = 0
    rounds: int = 0
    # Per tenant: device-seconds held, held as borrowed capacity, and of work
    # lost to preemption or migration (run since the last checkpoint).
    device_s: Counter[str] = field(default_factory=Counter)
    borrowed_device_s: Counter[str] = field(default_factory=Counter)
    lost_device_s: Counter[str] = field(default_factory=Counter)
    # Per pool: device-seconds held (the report's cost and energy).
    pool_device_s: Counter[str] = field(default_factory=Counter)


class Simulation:
    """One run of one policy over one trace on one fleet."""

    def __init__(self, jobs: Sequence[TraceJob], physics: Physics,
                 policy: SchedulingPolicy, checkpoint_every_s: float = 600.0,
                 restart_cost_s: float = 60.0) -> None:
        if checkpoint_every_s < 0:
            raise SimInputError(f"checkpoint interval must be >= 0, got {checkpoint_every_s}")
        if restart_cost_s < 0:
            raise SimInputError(f"restart cost must be >= 0, got {restart_cost_s}")
        self.physics, self.policy = physics, policy
        self.checkpoint_every_s = checkpoint_every_s
        self.restart_cost_s = restart_cost_s
        self.cluster = Cluster(physics.fleet)
        self.arrivals = sorted(jobs, key=lambda j: j.submit_time_s)
        self.queue: dict[str, QueuedJob] = {}
        self.running: dict[str, RunningJob] = {}
        self.records: dict[str, JobRecord] = {}
        self.completions: list[tuple[float, int, str, int]] = []  # (end, order, id, epoch)
        self.busy: Counter[str] = Counter()
        self.busy_models: Counter[str] = Counter()
        self.waiting_for: Counter[str] = Counter()
        self.result = SimResult(policy.name, [], [])
        self._epoch = 0

    def run(self) -> SimResult:
        """Play the whole trace; returns per-job records and the timeline."""
        next_arrival = 0
        while next_arrival < len(self.arrivals) or self._drop_stale():
            now = self._next_time(next_arrival)
            changed = self._complete_until(now)
            while (next_arrival < len(self.arrivals)
                   and self.arrivals[next_arrival].submit_time_s <= now):
                changed |= self._arrive(self.arrivals[next_arrival], next_arrival)
                next_arrival += 1
            rounds = 0
            while changed and (self.queue or self.running) and rounds < MAX_ROUNDS_PER_EVENT:
                changed = self._round(now)  # True after preemptions: go again
                rounds += 1
            self._sample(now)
        self.result.unfinished = sorted(self.queue)
        self.result.records = sorted(self.records.values(), key=lambda r: r.job.submit_time_s)
        self.result.records = [r for r in self.result.records if r.job.job_id not in self.queue]
        return self.result

    def _drop_stale(self) -> bool:
        """Discard completion events of runs that were preempted or migrated
        since (they must not advance the clock or add a sample); True while
        a live completion remains."""
        while self.completions:
            _, _, job_id, epoch = self.completions[0]
            run = self.running.get(job_id)
            if run is not None and run.epoch == epoch:
                return True
            heapq.heappop(self.completions)
        return False

    def _next_time(self, next_arrival: int) -> float:
        self._drop_stale()
        times = []
        if next_arrival < len(self.arrivals):
            times.append(self.arrivals[next_arrival].submit_time_s)
        if self.completions:
            times.append(self.completions[0][0])
        return min(times)

    def _complete_until(self, now: float) -> bool:
        changed = False
        while self.completions and self.completions[0][0] <= now:
            end, _, job_id, epoch = heapq.heappop(self.completions)
            run = self.running.get(job_id)
            if run is None or run.epoch != epoch:
                continue  # preempted since: a stale event
            self._release(job_id)
            record = self.records[job_id]
            record.finish, record.model = end, self.cluster.fleet.pools[run.pool].model
            changed = True
        return changed

    def _arrive(self, job: TraceJob, order: int) -> bool:
        families = eligible_families(job, self.physics.fleet)
        if not families:
            self.result.never_fits.append(job.job_id)
            return False
        self._enqueue(QueuedJob(job, order, eligible_families=families))
        return True

    def _enqueue(self, queued: QueuedJob) -> None:
        self.queue[queued.job.job_id] = queued
        self.waiting_for.update(queued.eligible_families)

    def _round(self, now: float) -> bool:
        """One policy round; True when it preempted or migrated (devices were freed)."""
        view = RoundView(now, self.cluster, self.physics, tuple(self.queue.values()),
                         tuple(self.running.values()), self.checkpoint_every_s)
        result = self.policy.round(view)
        self.result.rounds += 1
        for job_id in result.preemptions:
            self._preempt(job_id, now)
        for placement in result.placements:
            self._start(placement, now)
        for move in result.migrations:
            self._migrate(move, now)
        return bool(result.preemptions or result.migrations)

    def _start(self, placement: SimPlacement, now: float) -> None:
        queued = self.queue.pop(placement.job_id, None)
        if queued is None:
            raise SimInputError(f"{self.policy.name} placed {placement.job_id}, not queued")
        self.waiting_for.subtract(queued.eligible_families)
        self._run(queued, placement, now)
        self.records.setdefault(placement.job_id, JobRecord(queued.job, now))

    def _run(self, queued: QueuedJob, placement: SimPlacement, now: float,
             overhead_s: float = 0.0) -> None:
        """Start ``queued`` on the placement's devices (after ``overhead_s``)."""
        pool = self.cluster.fleet.pools[placement.pool]
        if sum(c for _, c in placement.devices) != queued.job.devices:
            raise SimInputError(f"{self.policy.name} gave {placement.job_id} the wrong size")
        self.cluster.take(placement.devices)
        runtime = overhead_s + queued.remaining * self.physics.runtime_s(queued.job, pool.model)
        self._epoch += 1
        run = RunningJob(queued, placement.pool, placement.devices, now, now + runtime,
                         self._epoch, borrowed=placement.borrowed, overhead_s=overhead_s)
        self.running[placement.job_id] = run
        heapq.heappush(self.completions, (run.end, queued.order, placement.job_id, run.epoch))
        self.busy[pool.family] += queued.job.devices
        self.busy_models[pool.model] += queued.job.devices

    def _release(self, job_id: str, stop: float | None = None) -> RunningJob:
        """Free a job's devices; ``stop`` is when it stopped (default: its end)."""
        run = self.running.pop(job_id)
        pool = self.cluster.fleet.pools[run.pool]
        held = run.queued.job.devices * ((run.end if stop is None else stop) - run.start)
        self.result.device_s[run.queued.job.tenant] += held
        self.result.pool_device_s[pool.name] += held
        if run.borrowed:
            self.result.borrowed_device_s[run.queued.job.tenant] += held
        self.cluster.give_back(run.devices)
        self.busy[pool.family] -= run.queued.job.devices
        self.busy_models[pool.model] -= run.queued.job.devices
        return run

    def _preempt(self, job_id: str, now: float) -> None:
        """Stop a running job and requeue it with its last checkpoint's progress."""
        if job_id not in self.running:
            raise SimInputError(f"{self.policy.name} preempted {job_id}, not running")
        run = self._stop(job_id, now)
        run.queued.last_preempted_at = now
        self._enqueue(run.queued)
        self.records[job_id].preemptions += 1
        self.result.preemptions += 1

    def _migrate(self, move: SimPlacement, now: float) -> None:
        """Move a running job: stop it, restart it at once on ``move``'s devices."""
        if move.job_id not in self.running:
            raise SimInputError(f"{self.policy.name} migrated {move.job_id}, not running")
        run = self._stop(move.job_id, now)
        run.queued.last_migrated_at = now
        self._run(run.queued, move, now, self.restart_cost_s)
        self.records[move.job_id].migrations += 1
        self.result.migrations += 1

    def _stop(self, job_id: str, now: float) -> RunningJob:
        """Free a running job's devices, keeping its last checkpoint's progress."""
        run = self._release(job_id, now)
        ran = now - run.start
        every = self.checkpoint_every_s
        kept = ran if every <= 0 else (ran // every) * every
        run.queued.remaining *= max(0.0, 1.0 - run.work_fraction(kept))
        self.result.lost_device_s[run.queued.job.tenant] += (ran - kept) * run.queued.job.devices
        return run

    def _sample(self, now: float) -> None:
        waiting = frozenset(f for f, n in self.waiting_for.items() if n > 0)
        sample = Sample(now, len(self.queue), dict(self.busy), dict(self.busy_models), waiting)
        timeline = self.result.timeline
        if timeline and timeline[-1].time == now:
            timeline[-1] = sample
        else:
            timeline.append(sample)


def simulate(jobs: Sequence[TraceJob], physics: Physics, policy: SchedulingPolicy,
             checkpoint_every_s: float = 600.0, restart_cost_s: float = 60.0) -> SimResult:
    """Run ``policy`` over ``jobs`` on ``physics.fleet``."""
    return Simulation(jobs, physics, policy, checkpoint_every_s, restart_cost_s).run()
