"""Store consistency checker: invariants every store must keep, whatever the
clients or agents sent. Used after fuzzing, after the API benchmark and its
soak, and usable against a live installation's database.

It reads through the :class:`Store` interface only, so SQLite and PostgreSQL
are checked alike. Every violation is reported (not only the first), each as
one line naming the job.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise

from controlplane.model import states
from controlplane.store.base import Store
from xinhe.v1 import common_pb2

EVENT_PAGE = 1000


@dataclass
class CheckReport:
    jobs: int = 0
    events: int = 0
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_json(self) -> dict:
        return {"jobs": self.jobs, "events": self.events, "ok": self.ok,
                "violations": self.violations[:50], "violation_count": len(self.violations)}


def all_events(store: Store, job_id: str) -> list[common_pb2.JobEvent]:
    out: list[common_pb2.JobEvent] = []
    while True:
        page = store.events(job_id, out[-1].sequence if out else 0, EVENT_PAGE)
        out.extend(page)
        if len(page) < EVENT_PAGE:
            return out


def check_job_history(job: common_pb2.Job, events: list[common_pb2.JobEvent]) -> list[str]:
    """The job's state is where its event log leads: the log starts with the
    submission into QUEUED, each event leaves the state the previous one
    entered along an allowed edge, the last one's to_state is the job's state,
    and attempts never go down."""
    where = f"job {job.id}"
    if not events:
        return [f"{where}: no events"]
    bad = []
    if events[0].to_state != states.QUEUED or events[0].from_state != 0:
        bad.append(f"{where}: first event is not the submission into QUEUED")
    for prev, ev in pairwise(events):
        if ev.from_state != prev.to_state:
            bad.append(f"{where}: event {ev.sequence} leaves {states.state_name(ev.from_state)}"
                       f" but the job was {states.state_name(prev.to_state)}")
        elif ev.from_state != ev.to_state and (ev.from_state, ev.to_state) not in \
                states.TRANSITIONS:
            bad.append(f"{where}: event {ev.sequence} is not an allowed transition")
        if ev.attempt < prev.attempt:
            bad.append(f"{where}: attempt went down at event {ev.sequence}")
    if events[-1].to_state != job.state:
        bad.append(f"{where}: state {states.state_name(job.state)} but last event leads to "
                   f"{states.state_name(events[-1].to_state)}")
    if events[-1].attempt != job.attempt:
        bad.append(f"{where}: attempt {job.attempt} but last event has {events[-1].attempt}")
    return bad


def check_job_fields(job: common_pb2.Job) -> list[str]:
    """Timestamps match the state: terminal jobs have finished_at, live ones
    none; a job that holds devices has a placement and an epoch."""
    where, bad = f"job {job.id}", []
    terminal = states.is_terminal(job.state)
    if terminal != job.HasField("finished_at"):
        bad.append(f"{where}: {states.state_name(job.state)} with"
                   f"{'out' if terminal else ''} finished_at")
    if job.state in states.ACTIVE and (not job.placement.replicas or job.epoch <= 0):
        bad.append(f"{where}: {states.state_name(job.state)} without placement or epoch")
    if job.attempt < 1:
        bad.append(f"{where}: attempt {job.attempt} < 1")
    return bad


def check_replicas(store: Store, job: common_pb2.Job) -> list[str]:
    """Replica rows: epochs never go down from one attempt to the next nor
    exceed the job's; an active job's current rows are its placement."""
    where, bad = f"job {job.id}", []
    rows = store.replicas(job.id)
    by_attempt: dict[int, int] = {}
    for row in rows:
        by_attempt[row.attempt] = max(by_attempt.get(row.attempt, 0), row.epoch)
        if row.attempt > job.attempt or row.epoch > job.epoch:
            bad.append(f"{where}: replica row from the future (attempt {row.attempt}, "
                       f"epoch {row.epoch})")
    epochs = [by_attempt[a] for a in sorted(by_attempt)]
    if epochs != sorted(epochs):
        bad.append(f"{where}: replica epochs go down across attempts")
    if job.state in states.ACTIVE:
        current = {(r.rank, r.node) for r in rows if r.attempt == job.attempt}
        placed = {(p.rank, p.node) for p in job.placement.replicas}
        if current != placed:
            bad.append(f"{where}: replica rows {sorted(current)} do not match placement "
                       f"{sorted(placed)}")
        if any(r.epoch != job.epoch for r in rows if r.attempt == job.attempt):
            bad.append(f"{where}: current replica rows carry a stale epoch")
    return bad


def check_devices(active: list[common_pb2.Job]) -> list[str]:
    """No device is held by two live jobs."""
    holders: Counter[tuple[str, int]] = Counter()
    owner: dict[tuple[str, int], list[str]] = {}
    for job in active:
        for rep in job.placement.replicas:
            for index in rep.device_indices:
                key = (rep.node, index)
                holders[key] += 1
                owner.setdefault(key, []).append(job.id)
    return [f"device {node}/{index} held by {', '.join(owner[(node, index)])}"
            for (node, index), n in sorted(holders.items()) if n > 1]


def check_store(store: Store, *, histories: bool = True) -> CheckReport:
    """Run every invariant over every job. ``histories=False`` skips the
    per-job event and replica reads (fast pass for very large stores)."""
    report = CheckReport()
    jobs = store.jobs_in_states(states.ALL_STATES)
    report.jobs = len(jobs)
    ids = Counter(j.id for j in jobs)
    report.violations += [f"job {i} stored {n} times" for i, n in ids.items() if n > 1]
    keys = Counter((j.tenant, j.client_key) for j in jobs if j.client_key)
    report.violations += [f"client key {t}/{k} used by {n} jobs"
                          for (t, k), n in keys.items() if n > 1]
    for job in jobs:
        report.violations += check_job_fields(job)
        if histories:
            events = all_events(store, job.id)
            report.events += len(events)
            report.violations += check_job_history(job, events)
            report.violations += check_replicas(store, job)
    report.violations += check_devices([j for j in jobs if j.state in states.ACTIVE])
    return report
