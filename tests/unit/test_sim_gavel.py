"""Gavel's matrix and Philly-derived trace as input (skipped when absent)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from controlplane.sim import gavel
from controlplane.sim.engine import simulate
from controlplane.sim.policies import FifoFirstFit, XinheCorePolicy
from controlplane.sim.report import summarize
from controlplane.sim.speeds import Physics, offered_load, scale_to_load

GAVEL = Path(__file__).resolve().parents[2] / ".." / "shared" / "traces" / "gavel"
pytestmark = pytest.mark.skipif(not gavel.available(GAVEL), reason="Gavel files absent")


def raw_throughput(chip: str, job_type: str, scale: int) -> float:
    raw = json.loads((GAVEL / gavel.THROUGHPUTS).read_text())
    return raw[chip][str((job_type, scale))]["null"]


def test_fleet_is_the_300_300_300_cluster_in_gavel_order() -> None:
    fleet = gavel.gavel_fleet(GAVEL)
    assert [(p.model, p.devices) for p in fleet.pools] == [
        ("V100", 300), ("P100", 300), ("K80", 300)]


def test_runtime_on_each_chip_is_steps_over_throughput() -> None:
    jobs = gavel.gavel_trace(GAVEL, limit=5)
    physics = Physics.of(gavel.gavel_fleet(GAVEL))
    line = (GAVEL / gavel.PHILLY).read_text().splitlines()[4].split("\t")
    job_type, steps, scale = line[0], int(line[4]), int(line[6])
    job = next(j for j in jobs if j.job_id == "philly-0005")
    assert (job.replicas, job.devices_per_replica) == (scale, 1)
    for chip, model in gavel.GAVEL_MODELS.items():
        rate = raw_throughput(chip, job_type, scale)
        if rate > 0:
            assert physics.runtime_s(job, model) == pytest.approx(steps / rate)
        else:  # cannot run there: the job names only the chips it runs on
            assert model not in job.models and job.models
    assert job.tenant == job_type.split(" (")[0]


def test_missing_scale_factor_is_linear_from_the_largest_measured() -> None:
    table = gavel.load_throughputs(str(GAVEL))
    keys = [ast.literal_eval(k) for k in json.loads((GAVEL / gavel.THROUGHPUTS).read_text())
            ["v100"]]
    assert ("A3C", 1) in keys and ("A3C", 4) not in keys
    assert gavel.throughput(table, "v100", "A3C", 4) == pytest.approx(
        4 * raw_throughput("v100", "A3C", 1))


def test_xinhe_beats_agnostic_fifo_on_a_loaded_slice() -> None:
    physics = Physics.of(gavel.gavel_fleet(GAVEL))
    jobs = scale_to_load(gavel.gavel_trace(GAVEL, limit=300), physics, 2.5)
    assert offered_load(jobs, physics) == pytest.approx(2.5)
    xinhe = summarize(simulate(jobs, physics, XinheCorePolicy()), physics)
    fifo = summarize(simulate(jobs, physics, FifoFirstFit()), physics)
    assert xinhe["jobs"] == fifo["jobs"] == 300
    assert xinhe["lower_bound_avg_jct_s"] <= xinhe["avg_jct_s"] < fifo["avg_jct_s"]


def test_absent_directory_is_reported_unavailable(tmp_path) -> None:
    assert not gavel.available(tmp_path)
