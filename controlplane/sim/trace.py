"""Workload traces: the jobs a simulation submits, read from a CSV file.

Trace file columns: ``job_id,submit_time_s,tenant,priority,replicas,
devices_per_replica,min_device_memory_gb,families,reference_runtime_s,
relative_speed``. ``families`` is a ``;``-separated list of allowed families
or catalogue models (empty = any accelerator). ``relative_speed`` is an
optional ``;``-separated list of ``model=factor``: the job's own speed on
that model relative to the reference chip (A100); models it does not name
run at the chip profile's speed. Errors name the file and line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from controlplane.model.catalogue import Catalogue, default_catalogue
from controlplane.sim.csvrows import ENCODING, check_header, dict_reader, integer, number, text
from controlplane.sim.errors import SimInputError
from controlplane.sim.fleet import strict_model

TRACE_COLUMNS = (
    "job_id", "submit_time_s", "tenant", "priority", "replicas", "devices_per_replica",
    "min_device_memory_gb", "families", "reference_runtime_s", "relative_speed",
)
GB = 1000**3


@dataclass(frozen=True)
class TraceJob:
    """One job of a trace. ``speed`` holds only the job's own factors."""

    job_id: str
    submit_time_s: float
    tenant: str
    priority: int
    replicas: int
    devices_per_replica: int
    min_device_memory_bytes: int
    families: frozenset[str]  # catalogue family names
    models: frozenset[str]  # catalogue model names
    reference_runtime_s: float
    speed: tuple[tuple[str, float], ...] = ()
    # Family of the first entry of ``families`` as written ("" = none named):
    # the pinned-family baseline keeps the job there.
    first_family: str = ""
    named: tuple[str, ...] = ()  # the ``families`` entries, canonical, as written

    @property
    def devices(self) -> int:
        return self.replicas * self.devices_per_replica


def read_trace(path: str | Path, catalogue: Catalogue | None = None) -> list[TraceJob]:
    """Parse a trace CSV, sorted by submission time (stable for ties)."""
    with open(path, encoding=ENCODING, newline="") as fh:
        return parse_trace(fh, str(path), catalogue)


def parse_trace(
    lines: Iterable[str], source: str, catalogue: Catalogue | None = None
) -> list[TraceJob]:
    cat = catalogue or default_catalogue()
    reader = dict_reader(lines)
    check_header(reader.fieldnames, TRACE_COLUMNS[:-1], source)
    jobs: list[TraceJob] = []
    seen: set[str] = set()
    for row in reader:
        try:
            job = parse_row(row, cat)
            if job.job_id in seen:
                raise SimInputError(f"job_id: duplicate {job.job_id!r}")
        except SimInputError as exc:
            raise SimInputError(f"{source}:{reader.line_num}: {exc}") from None
        seen.add(job.job_id)
        jobs.append(job)
    if not jobs:
        raise SimInputError(f"{source}: no jobs")
    return sorted(jobs, key=lambda j: j.submit_time_s)


def parse_row(row: dict[str, str | None], cat: Catalogue) -> TraceJob:
    """One trace row; raises SimInputError naming the bad column."""
    job_id = text(row, "job_id")
    if not job_id:
        raise SimInputError("job_id: empty")
    named = parse_filters(text(row, "families"), cat)
    families, models, first = classify(named, cat)
    return TraceJob(
        job_id=job_id,
        submit_time_s=number(row, "submit_time_s", minimum=0),
        tenant=text(row, "tenant") or "default",
        priority=integer(row, "priority", default=0),
        replicas=integer(row, "replicas", minimum=1, default=1),
        devices_per_replica=integer(row, "devices_per_replica", minimum=1),
        min_device_memory_bytes=int(number(row, "min_device_memory_gb", minimum=0,
                                           default=0.0) * GB),
        families=families,
        models=models,
        reference_runtime_s=number(row, "reference_runtime_s", minimum=1e-9),
        speed=parse_speeds(text(row, "relative_speed"), cat),
        first_family=first,
        named=named,
    )


def parse_filters(cell: str, cat: Catalogue) -> tuple[str, ...]:
    """``families`` entries as canonical names: a family in lower case or a
    catalogue model name; anything else is an error."""
    named: list[str] = []
    for entry in split_list(cell):
        if cat.has_family(entry):
            named.append(entry.lower())
            continue
        try:
            named.append(strict_model(cat, entry).model)
        except SimInputError:
            raise SimInputError(
                f"families: {entry!r} is neither a family "
                f"({', '.join(cat.families)}) nor a catalogue model") from None
    return tuple(dict.fromkeys(named))


def classify(
    named: Sequence[str], cat: Catalogue
) -> tuple[frozenset[str], frozenset[str], str]:
    """Canonical entries -> (families, models, family of the first entry)."""
    families = frozenset(n for n in named if n in cat.families)
    models = frozenset(n for n in named if n not in cat.families)
    first = ""
    if named:
        first = named[0] if named[0] in cat.families else cat.models[named[0]].family
    return families, models, first


def parse_speeds(cell: str, cat: Catalogue) -> tuple[tuple[str, float], ...]:
    """``H100=2.9;910B=0.8`` -> ((H100, 2.9), (910B, 0.8)), sorted by model."""
    speeds: dict[str, float] = {}
    for entry in split_list(cell):
        name, sep, raw = entry.partition("=")
        if not sep:
            raise SimInputError(f"relative_speed: expected model=factor, got {entry!r}")
        chip = strict_model(cat, name.strip())
        factor = number({"relative_speed": raw}, "relative_speed")
        if factor <= 0:
            raise SimInputError(f"relative_speed: factor for {chip.model} must be > 0")
        speeds[chip.model] = factor
    return tuple(sorted(speeds.items()))


def split_list(cell: str) -> list[str]:
    return [part.strip() for part in cell.split(";") if part.strip()]


def write_trace(jobs: Sequence[TraceJob], path: str | Path) -> None:
    """Write jobs in the trace CSV format (round-trips through read_trace)."""
    with open(path, "w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(TRACE_COLUMNS)
        for j in jobs:
            out.writerow([
                j.job_id, f"{j.submit_time_s:.3f}", j.tenant, j.priority, j.replicas,
                j.devices_per_replica, f"{j.min_device_memory_bytes / GB:g}",
                ";".join(j.named or sorted(j.families) + sorted(j.models)),
                f"{j.reference_runtime_s:.3f}",
                ";".join(f"{m}={f:.4g}" for m, f in j.speed),
            ])
