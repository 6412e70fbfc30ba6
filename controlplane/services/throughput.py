"""Learned per-job-type throughput (Gavel-style): what running jobs report
refines the catalogue's per-chip prior for the next job of the same type.

Agents forward each replica's newest ``xinhe_runtime.report_progress``
(steps/s). Per (job type, chip model) this keeps an exponentially weighted
steps/s, and turns the rates of a type into speed factors relative to the
reference chip, which the scheduler core takes as ``PendingJob.speed``:

* the reference chip measured: ``factor(M) = r(T, M) / r(T, ref)``;
* else, anchored on the model ``M0`` measured first for the type (a fixed
  anchor, so the scale does not jump as report counts change):
  ``factor(M) = prior(M0) * r(T, M) / r(T, M0)``. The absolute scale then
  still comes from the catalogue, the ratios between measured chips from
  the jobs themselves.

Models never measured for a type keep the catalogue prior. The job type is
``JobSpec.job_type`` or, when empty, the job's name.

The rates live in memory and are written to the store in batches
(``throughput_persist``: changed rates at most every few seconds, not per
report) and loaded at start and by a newly elected leader, so a restart
does not forget what the fleet measured. The latest progress per job is
memory only: jobs that end are dropped (``retain_jobs``) and a hard cap
(least recently updated first) bounds it whatever happens. Thread-safe.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass

from controlplane.model.catalogue import Catalogue
from controlplane.store.base import ThroughputRecord
from xinhe.v1 import common_pb2

ALPHA = 0.3  # weight of the newest report in the moving average
# A type's factors are republished (pending jobs re-translated) only when one
# moved by more than this fraction, or a model was measured for the first time.
MEANINGFUL_CHANGE = 0.05
# At most this many jobs' latest progress is kept (least recently updated
# dropped first): a safety net behind ``retain_jobs``.
MAX_TRACKED_JOBS = 50_000
# At most this many job types keep learned rates (least recently reported
# forgotten first, in memory and in the store): the type defaults to the job's
# name, so tenants naming every job differently would otherwise grow the table
# without bound.
MAX_JOB_TYPES = 10_000


def job_type(spec: common_pb2.JobSpec) -> str:
    """Jobs of the same type share learned speed: the explicit type or the name."""
    return spec.job_type.strip() or spec.name


@dataclass
class Rate:
    """Exponentially weighted steps/s of one (job type, model)."""

    steps_per_second: float
    reports: int = 1

    def add(self, value: float) -> None:
        self.steps_per_second += ALPHA * (value - self.steps_per_second)
        self.reports += 1


@dataclass(frozen=True)
class Latest:
    """A job's newest progress (rank 0 of its current attempt)."""

    step: int
    steps_per_second: float
    updated_at: float


class ThroughputTable:
    """Learned rates and derived per-type speed factors."""

    def __init__(self, catalogue: Catalogue, max_jobs: int = MAX_TRACKED_JOBS,
                 max_types: int = MAX_JOB_TYPES) -> None:
        if max_types < 1:
            raise ValueError(f"max_types must be at least 1, got {max_types}")
        self.catalogue = catalogue
        self.max_jobs = max_jobs
        self.max_types = max_types
        self._lock = threading.Lock()
        self._rates: dict[tuple[str, str], Rate] = {}
        # The same rates per type, models in first-measured order (a report
        # recomputes its type's factors without scanning every type); the
        # types least recently reported first (the cap forgets from the front).
        self._by_kind: dict[str, dict[str, Rate]] = {}
        self._forgotten: set[str] = set()  # types dropped by the cap, not yet deleted
        self._ordinals: dict[tuple[str, str], int] = {}  # first-measured order
        self._next_ordinal = 1
        self._dirty: dict[tuple[str, str], float] = {}  # changed since saved: when
        self._factors: dict[str, tuple[tuple[str, float], ...]] = {}
        self._latest: OrderedDict[str, Latest] = OrderedDict()
        self._checkpoints: dict[str, float] = {}  # job -> last completed checkpoint
        # Called with a job type whose factors changed meaningfully (the
        # pending queue re-translates that type's queued jobs).
        self.on_change: Callable[[str], None] | None = None

    def record(self, kind: str, model: str, steps_per_second: float, now: float = 0.0) -> bool:
        """Add one report of ``kind`` on ``model`` made at ``now`` (stored
        with the rate); True when the type's factors changed meaningfully
        (and ``on_change`` was called).

        Zero, negative and non-finite rates carry no speed information and
        are ignored (a job that has not started stepping reports 0)."""
        if not kind or not model or not math.isfinite(steps_per_second) \
                or steps_per_second <= 0:
            return False
        chip = self.catalogue.find_model(model)
        model = chip.model if chip else model
        with self._lock:
            key = (kind, model)
            models = self._by_kind.pop(kind, None)
            self._by_kind[kind] = models = {} if models is None else models  # most recent
            rate = self._rates.get(key)
            if rate is None:
                self._rates[key] = models[model] = Rate(steps_per_second)
                self._ordinals[key] = self._next_ordinal
                self._next_ordinal += 1
            else:
                rate.add(steps_per_second)
            self._dirty[key] = now
            new = self._compute(kind)
            changed = _meaningful(self._factors.get(kind, ()), new)
            if changed:
                self._factors[kind] = new
            dropped = self._enforce_cap()
        if self.on_change is not None:
            for gone in dropped:  # their queued jobs go back to the prior
                self.on_change(gone)
            if changed:
                self.on_change(kind)
        return changed

    def _enforce_cap(self) -> list[str]:
        """Forget the least recently reported types beyond ``max_types``
        (lock held); returns them."""
        dropped = []
        while len(self._by_kind) > self.max_types:
            kind = next(iter(self._by_kind))
            for model in self._by_kind.pop(kind):
                self._rates.pop((kind, model), None)
                self._ordinals.pop((kind, model), None)
                self._dirty.pop((kind, model), None)
            self._factors.pop(kind, None)
            self._forgotten.add(kind)
            dropped.append(kind)
        return dropped

    def job_types(self) -> int:
        """How many job types have learned rates."""
        with self._lock:
            return len(self._by_kind)

    def speed(self, kind: str) -> tuple[tuple[str, float], ...]:
        """The published factors of ``kind`` (sorted by model; empty = none)."""
        with self._lock:
            return self._factors.get(kind, ())

    def rates(self, kind: str) -> dict[str, float]:
        """Model -> learned steps/s of ``kind``."""
        with self._lock:
            return {m: r.steps_per_second for m, r in self._by_kind.get(kind, {}).items()}

    def note_progress(self, job_id: str, step: int, steps_per_second: float,
                      now: float) -> None:
        with self._lock:
            self._latest[job_id] = Latest(step, steps_per_second, now)
            self._latest.move_to_end(job_id)
            while len(self._latest) > self.max_jobs:
                self._latest.popitem(last=False)

    def retain_jobs(self, keep: Container[str]) -> int:
        """Forget the progress of every job not in ``keep`` (jobs that
        ended); returns how many were dropped."""
        with self._lock:
            gone = [job_id for job_id in self._latest if job_id not in keep]
            for job_id in gone:
                del self._latest[job_id]
            for job_id in [j for j in self._checkpoints if j not in keep]:
                del self._checkpoints[job_id]
        return len(gone)

    def tracked_jobs(self) -> int:
        with self._lock:
            return len(self._latest)

    # -- persistence (see throughput_persist) ---------------------------------
    def take_forgotten(self) -> list[str]:
        """The types the cap dropped since the last call (to delete from the
        store; ``mark_forgotten`` gives them back on a failure)."""
        with self._lock:
            gone, self._forgotten = self._forgotten, set()
            return sorted(gone)

    def mark_forgotten(self, kinds: Sequence[str]) -> None:
        """Types whose deletion failed: deleted next time, unless learned
        again meanwhile (their new rates are saved instead)."""
        with self._lock:
            self._forgotten.update(k for k in kinds if k not in self._by_kind)

    def take_changed(self) -> list[ThroughputRecord]:
        """The rates changed since the last call, as records; they count as
        saved from now on (``mark_changed`` gives them back on a failure)."""
        with self._lock:
            dirty, self._dirty = self._dirty, {}
            return [ThroughputRecord(k, m, self._rates[(k, m)].steps_per_second,
                                     self._rates[(k, m)].reports, self._ordinals[(k, m)], at)
                    for (k, m), at in sorted(dirty.items(), key=lambda i: self._ordinals[i[0]])]

    def mark_changed(self, records: Sequence[ThroughputRecord]) -> None:
        """Records whose save failed: saved again next time (newer changes win)."""
        with self._lock:
            for r in records:
                if (r.job_type, r.model) in self._rates:  # not dropped by the cap since
                    self._dirty.setdefault((r.job_type, r.model), r.updated_at)

    def restore(self, records: Sequence[ThroughputRecord]) -> None:
        """Replace the learned rates with stored ones (in ``ordinal`` order)
        and republish every type's factors. ``on_change`` is not called: the
        caller re-translates the queue after loading. Beyond ``max_types``
        the types reported longest ago are left out (and deleted from the
        store at the next save)."""
        last: dict[str, float] = {}
        for r in records:
            last[r.job_type] = max(r.updated_at, last.get(r.job_type, r.updated_at))
        recent = sorted(last, key=lambda kind: (last[kind], kind))  # oldest first
        with self._lock:
            self._rates, self._by_kind, self._ordinals, self._dirty = {}, {}, {}, {}
            self._forgotten = set(recent[:-self.max_types])
            self._by_kind = {kind: {} for kind in recent[-self.max_types:]}
            for r in sorted(records, key=lambda r: r.ordinal):
                if r.job_type in self._forgotten:
                    continue
                key = (r.job_type, r.model)
                rate = self._rates[key] = Rate(r.steps_per_second, r.reports)
                self._by_kind[r.job_type][r.model] = rate
                self._ordinals[key] = r.ordinal
            self._next_ordinal = max((r.ordinal for r in records), default=0) + 1
            self._factors = {kind: factors(rates, self.catalogue)
                             for kind, rates in self._by_kind.items()}

    def latest(self, job_id: str) -> Latest | None:
        with self._lock:
            return self._latest.get(job_id)

    def note_checkpoint(self, job_id: str, at: float) -> None:
        """The job's newest completed checkpoint (epoch seconds); never goes back."""
        with self._lock:
            self._checkpoints[job_id] = max(at, self._checkpoints.get(job_id, at))

    def last_checkpoint(self, job_id: str) -> float | None:
        """When the job last completed a checkpoint, as its agent saw it."""
        with self._lock:
            return self._checkpoints.get(job_id)

    def forget_job(self, job_id: str) -> None:
        with self._lock:
            self._latest.pop(job_id, None)
            self._checkpoints.pop(job_id, None)

    def _compute(self, kind: str) -> tuple[tuple[str, float], ...]:
        return factors(self._by_kind.get(kind, {}), self.catalogue)


def factors(rates: dict[str, Rate], catalogue: Catalogue) -> tuple[tuple[str, float], ...]:
    """Speed factors relative to the reference chip from one type's rates,
    given in the order their models were first measured (see the module
    docstring for the two cases)."""
    if not rates:
        return ()
    ref = catalogue.reference_model
    if ref in rates:
        anchor, scale = ref, 1.0
    else:
        anchor = next(iter(rates))  # first measured (dicts keep insertion order)
        scale = catalogue.relative_speed(anchor)
    base = rates[anchor].steps_per_second
    return tuple(sorted((m, scale * r.steps_per_second / base) for m, r in rates.items()))


def _meaningful(old: tuple[tuple[str, float], ...], new: tuple[tuple[str, float], ...]) -> bool:
    before = dict(old)
    if set(before) != {m for m, _ in new}:
        return True
    return any(abs(f - before[m]) > MEANINGFUL_CHANGE * before[m] for m, f in new)


def attach_progress(job: common_pb2.Job, table: ThroughputTable | None) -> common_pb2.Job:
    """``job`` with its latest progress filled in (a copy when there is one)."""
    latest = table.latest(job.id) if table is not None else None
    if latest is None:
        return job
    out = common_pb2.Job()
    out.CopyFrom(job)
    out.progress.step = latest.step
    out.progress.steps_per_second = latest.steps_per_second
    out.progress.updated_at.FromNanoseconds(int(latest.updated_at * 1e9))
    return out
