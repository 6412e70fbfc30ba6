"""The simulator honours the core's preemptions: victims lose the work since
their last checkpoint, are requeued, and the cost is reported per tenant.
Hand-computable cases on one 8-device A100 node (speed 1.0)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controlplane.cli.main import main
from controlplane.scheduler.types import Policy, Quota
from controlplane.sim.engine import simulate
from controlplane.sim.errors import SimInputError
from controlplane.sim.fleet import Fleet, make_pool
from controlplane.sim.knobs import parse_quotas
from controlplane.sim.policies import XinheCorePolicy
from controlplane.sim.report import summarize
from controlplane.sim.speeds import Physics
from controlplane.sim.trace import TraceJob

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "sim"
ONE_NODE = Physics.of(Fleet((make_pool("a100", "east", "A100", 1, 8),)))


def job(job_id: str, t: float, runtime: float, *, tenant: str = "t",
        priority: int = 0) -> TraceJob:
    return TraceJob(job_id, t, tenant, priority, 1, 8, 0, frozenset(), frozenset(), runtime)


def test_higher_priority_preempts_and_victim_resumes_from_checkpoint() -> None:
    jobs = [job("low", 0, 10_000), job("high", 1000, 100, priority=1)]
    result = simulate(jobs, ONE_NODE, XinheCorePolicy(), checkpoint_every_s=600)
    finish = {r.job.job_id: r.finish for r in result.records}
    # high starts at 1000 (the round after the victim stopped, same time);
    # low kept 600 s (its checkpoint), lost 400 s, resumes at 1100 with 9400 s.
    assert finish == pytest.approx({"high": 1100, "low": 1100 + 9400})
    assert result.preemptions == 1
    assert result.lost_device_s["t"] == pytest.approx(400 * 8)
    tenants = summarize(result, ONE_NODE)["tenants"]
    assert tenants["t"]["preempted"] == 1
    assert tenants["t"]["lost_device_hours"] == pytest.approx(400 * 8 / 3600)


def test_owner_reclaims_borrowed_capacity() -> None:
    jobs = [job("b", 0, 10_000, tenant="lab-b"), job("a", 100, 50, tenant="lab-a")]
    quotas = (Quota("lab-a", "nvidia", 8, 0), Quota("lab-b", "nvidia", 0, None))
    result = simulate(jobs, ONE_NODE, XinheCorePolicy(Policy(quotas=quotas)),
                      checkpoint_every_s=0)
    finish = {r.job.job_id: r.finish for r in result.records}
    assert finish == pytest.approx({"a": 150, "b": 150 + 9900})
    assert result.borrowed_device_s["lab-b"] == pytest.approx(8 * 100 + 8 * 9900)
    assert result.borrowed_device_s["lab-a"] == 0 and result.lost_device_s["lab-b"] == 0


def test_equal_priority_without_quotas_never_preempts() -> None:
    jobs = [job("first", 0, 1000), job("second", 10, 10)]
    result = simulate(jobs, ONE_NODE, XinheCorePolicy())
    assert result.preemptions == 0
    assert {r.job.job_id: r.finish for r in result.records}["second"] == 1010


def test_cooldown_stops_thrashing() -> None:
    """Three escalating priorities arrive close together: the middle job,
    preempted once, is not preempted again within the cooldown."""
    jobs = [job("p0", 0, 5000), job("p1", 10, 5000, priority=1),
            job("p2", 20, 100, priority=2)]
    result = simulate(jobs, ONE_NODE, XinheCorePolicy(Policy(preemption_cooldown_s=0)))
    assert result.preemptions == 2  # p0 by p1, p1 by p2
    calm = simulate(jobs, ONE_NODE, XinheCorePolicy(Policy(preemption_cooldown_s=300)))
    assert calm.preemptions == 2  # p1 was not preempted before: still a victim
    assert {r.job.job_id: r.preemptions for r in calm.records} == {"p0": 1, "p1": 1, "p2": 0}


@pytest.mark.parametrize("text, error", [("lab-a", "bad quota"), ("lab-a:ascend=x", "bad quota"),
                                         (":ascend=4", "names must be set")])
def test_bad_quota_text(text: str, error: str) -> None:
    with pytest.raises(SimInputError, match=error):
        parse_quotas(text)


def test_quota_text() -> None:
    assert parse_quotas("lab-a:ascend=16+8, lab-b:H100=4") == (
        Quota("lab-a", "ascend", 16, 8), Quota("lab-b", "H100", 4, None))


def test_two_tenant_scenario_reports_preemptions_and_quota_use(tmp_path, capsys) -> None:
    trace = tmp_path / "t.csv"
    lines = (EXAMPLES / "two-tenant-trace.csv").read_text().splitlines()[:121]
    trace.write_text("\n".join(lines) + "\n")
    out = tmp_path / "r.json"
    assert main(["simulate", "--fleet", str(EXAMPLES / "chinese-fleet.csv"),
                 "--trace", str(trace), "--policies", "xinhe",
                 "--quotas", "lab-a:nvidia=40+40,lab-b:nvidia=40+40,"
                             "lab-a:ascend=48+48,lab-b:ascend=48+48",
                 "--json", str(out)]) == 0
    summary = json.loads(out.read_text())["policies"][0]
    assert summary["jobs"] == 120 and summary["unfinished"] == 0
    assert set(summary["tenants"]) == {"lab-a", "lab-b"}
    preempted = sum(t["preempted"] for t in summary["tenants"].values())
    assert preempted == summary["preemptions"]
    assert "lab-a:" in capsys.readouterr().out or summary["preemptions"] == 0


def test_cli_rejects_a_bad_quota(capsys) -> None:
    assert main(["simulate", "--synthetic", "5", "--quotas", "nope"]) == 2
    assert "bad quota" in capsys.readouterr().err
