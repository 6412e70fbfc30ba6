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

Kept in memory only (and the latest progress per job with it): a restarted
control plane relearns within a few reports of the running jobs, which is
simpler than persisting a table whose figures go stale anyway. Thread-safe.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

from controlplane.model.catalogue import Catalogue
from xinhe.v1 import common_pb2

ALPHA = 0.3  # weight of the newest report in the moving average
# A type's factors are republished (pending jobs re-translated) only when one
# moved by more than this fraction, or a model was measured for the first time.
MEANINGFUL_CHANGE = 0.05


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

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self._lock = threading.Lock()
        self._rates: dict[tuple[str, str], Rate] = {}
        self._factors: dict[str, tuple[tuple[str, float], ...]] = {}
        self._latest: dict[str, Latest] = {}
        # Called with a job type whose factors changed meaningfully (the
        # pending queue re-translates that type's queued jobs).
        self.on_change: Callable[[str], None] | None = None

    def record(self, kind: str, model: str, steps_per_second: float) -> bool:
        """Add one report of ``kind`` on ``model``; True when the type's
        factors changed meaningfully (and ``on_change`` was called).

        Zero, negative and non-finite rates carry no speed information and
        are ignored (a job that has not started stepping reports 0)."""
        if not kind or not model or not math.isfinite(steps_per_second) \
                or steps_per_second <= 0:
            return False
        chip = self.catalogue.find_model(model)
        model = chip.model if chip else model
        with self._lock:
            rate = self._rates.get((kind, model))
            if rate is None:
                self._rates[(kind, model)] = Rate(steps_per_second)
            else:
                rate.add(steps_per_second)
            new = self._compute(kind)
            changed = _meaningful(self._factors.get(kind, ()), new)
            if changed:
                self._factors[kind] = new
        if changed and self.on_change is not None:
            self.on_change(kind)
        return changed

    def speed(self, kind: str) -> tuple[tuple[str, float], ...]:
        """The published factors of ``kind`` (sorted by model; empty = none)."""
        with self._lock:
            return self._factors.get(kind, ())

    def rates(self, kind: str) -> dict[str, float]:
        """Model -> learned steps/s of ``kind``."""
        with self._lock:
            return {m: r.steps_per_second for (k, m), r in self._rates.items() if k == kind}

    def note_progress(self, job_id: str, step: int, steps_per_second: float,
                      now: float) -> None:
        with self._lock:
            self._latest[job_id] = Latest(step, steps_per_second, now)

    def latest(self, job_id: str) -> Latest | None:
        with self._lock:
            return self._latest.get(job_id)

    def forget_job(self, job_id: str) -> None:
        with self._lock:
            self._latest.pop(job_id, None)

    def _compute(self, kind: str) -> tuple[tuple[str, float], ...]:
        rates = {m: r for (k, m), r in self._rates.items() if k == kind}
        return factors(rates, self.catalogue)


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
