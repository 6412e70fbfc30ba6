"""Gavel's throughput matrix and Philly-derived trace as simulator input.

Files (see ``../shared/traces/gavel/README.md``): ``simulation_throughputs.json``
(steps/s per job type and scale factor on k80, p100, v100),
``philly_vc_ee9e8c_seed0.trace`` (2000 jobs: type, steps, arrival, scale
factor) and ``cluster_specs_heterogeneous.json`` (``"v100:p100:k80"``
device counts, Gavel's order). Gavel's k80/p100/v100 are the catalogue's
K80/P100/V100.

Mapping to a Xinhe trace:

* runtime on a chip = total steps / the job type's isolated throughput there
  at the job's scale factor. Where the matrix lacks that scale factor (A3C
  and CycleGAN are measured at 1 device only; the trace also asks for 7, 16,
  20, 32), the largest measured scale factor below is scaled linearly: the
  same assumption on every chip, so the chips' speed ratios are the measured
  ones.
* ``relative_speed`` = the job's per-chip throughput ratios, anchored on the
  V100's catalogue prior versus the reference chip (A100), and
  ``reference_runtime_s`` = V100 runtime x that prior; so runtime on each
  chip is exactly steps / throughput. A chip with zero throughput (the job
  does not run there) is left out: the job then names the chips it can use.
* a job is a gang of ``scale factor`` replicas of one device each, on nodes
  of 4 devices (Gavel's simulated servers); tenant = the model family of the
  job type (ResNet-18, LM, Transformer, ...: the Philly trace names no user).
"""

from __future__ import annotations

import ast
import json
from functools import cache
from pathlib import Path

from controlplane.model.catalogue import Catalogue, default_catalogue
from controlplane.sim.errors import SimInputError
from controlplane.sim.fleet import Fleet, make_pool
from controlplane.sim.trace import TraceJob

GAVEL_MODELS = {"v100": "V100", "p100": "P100", "k80": "K80"}
SPEC_ORDER = ("v100", "p100", "k80")  # Gavel's cluster-spec order
THROUGHPUTS = "simulation_throughputs.json"
PHILLY = "philly_vc_ee9e8c_seed0.trace"
CLUSTERS = "cluster_specs_heterogeneous.json"
DEVICES_PER_NODE = 4

Throughputs = dict[str, dict[tuple[str, int], float]]  # chip -> (type, scale) -> steps/s


def available(directory: str | Path) -> bool:
    """True when the Gavel files this module reads are all present."""
    d = Path(directory)
    return all((d / name).is_file() for name in (THROUGHPUTS, PHILLY, CLUSTERS))


@cache
def load_throughputs(directory: str) -> Throughputs:
    """Isolated (``"null"``) throughputs of consolidated gangs per chip."""
    path = Path(directory) / THROUGHPUTS
    raw = json.loads(path.read_text(encoding="utf-8"))
    table: Throughputs = {}
    for chip in SPEC_ORDER:
        if chip not in raw:
            raise SimInputError(f"{path}: no '{chip}' throughputs")
        table[chip] = {}
        for key, entry in raw[chip].items():
            job_type, scale = ast.literal_eval(key)
            table[chip][(str(job_type), int(scale))] = float(entry["null"])
    return table


def throughput(table: Throughputs, chip: str, job_type: str, scale: int) -> float:
    """Steps/s at ``scale`` devices; linear from the largest measured scale below."""
    measured = [s for (t, s) in table[chip] if t == job_type and s <= scale]
    if not measured:
        raise SimInputError(f"Gavel matrix has no throughput for {job_type!r} on {chip}")
    base = max(measured)
    return table[chip][(job_type, base)] * scale / base


def gavel_fleet(directory: str | Path, catalogue: Catalogue | None = None,
                devices_per_node: int = DEVICES_PER_NODE) -> Fleet:
    """The heterogeneous cluster of the Philly experiments (300:300:300)."""
    path = Path(directory) / CLUSTERS
    spec = json.loads(path.read_text(encoding="utf-8"))["philly"][0]
    counts = [int(c) for c in str(spec).split(":")]
    pools = []
    for chip, devices in zip(SPEC_ORDER, counts, strict=True):
        if devices:
            nodes = -(-devices // devices_per_node)
            pools.append(make_pool(f"{chip}-pool", "gavel", GAVEL_MODELS[chip], nodes,
                                   devices_per_node, catalogue=catalogue))
    return Fleet(tuple(pools))


def gavel_trace(directory: str | Path, limit: int = 0,
                catalogue: Catalogue | None = None) -> list[TraceJob]:
    """The Philly-derived trace as TraceJobs (the first ``limit``; 0 = all)."""
    cat = catalogue or default_catalogue()
    table = load_throughputs(str(directory))
    path = Path(directory) / PHILLY
    jobs: list[TraceJob] = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if limit and len(jobs) >= limit:
                break
            if line.strip():
                jobs.append(_philly_job(line, line_no, table, cat, f"{path}:{line_no}"))
    return sorted(jobs, key=lambda j: j.submit_time_s)


def _philly_job(line: str, index: int, table: Throughputs, catalogue: Catalogue,
                where: str) -> TraceJob:
    fields = line.rstrip("\n").split("\t")
    if len(fields) != 7:
        raise SimInputError(f"{where}: expected 7 tab-separated fields, got {len(fields)}")
    job_type, steps, arrival, scale = fields[0], int(fields[4]), float(fields[5]), int(fields[6])
    try:
        rates = {chip: throughput(table, chip, job_type, scale) for chip in SPEC_ORDER}
    except SimInputError as exc:
        raise SimInputError(f"{where}: {exc}") from None
    # A zero throughput means the job cannot run on that chip (e.g. memory):
    # the job then names the chips it can run on.
    usable = {GAVEL_MODELS[c]: r for c, r in rates.items() if r > 0}
    if not usable:
        raise SimInputError(f"{where}: {job_type!r} has zero throughput on every chip")
    base_model, base = ("V100", rates["v100"]) if rates["v100"] > 0 else max(
        usable.items(), key=lambda item: item[1])
    anchor = catalogue.relative_speed(base_model)
    speed = tuple(sorted((m, anchor * r / base) for m, r in usable.items()))
    models = frozenset(usable) if len(usable) < len(rates) else frozenset()
    return TraceJob(
        job_id=f"philly-{index:04d}",
        submit_time_s=arrival,
        tenant=job_type.split(" (")[0],
        priority=0,
        replicas=scale,
        devices_per_replica=1,
        min_device_memory_bytes=0,
        families=frozenset(),
        models=models,
        reference_runtime_s=steps / base * anchor,
        speed=speed,
    )
