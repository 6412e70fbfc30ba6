"""The scheduling policy file, and the stored-job facts quotas and preemption
need (RunningView translation, the requeue after preemption, quota use)."""

from __future__ import annotations

import shutil
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from controlplane.observability.collector import quota_use
from controlplane.scheduler.types import Policy, Quota
from controlplane.services.policy import KNOWN_KEYS, PolicyError, load_policy, parse_policy
from controlplane.services.reconcile import next_transition
from controlplane.services.translate import running_view
from controlplane.store.base import ReplicaRecord
from xinhe.v1 import agent_pb2, common_pb2

J = common_pb2
ROOT = Path(__file__).resolve().parents[2]
FULL = """\
default_runtime_s: 1800
wait_for_faster_margin: 1.2
max_placements_per_round: 100
max_reservations_per_round: 64
fair_share: true
tenant_weights: {lab-a: 2, lab-b: 0.5}
quotas:
  lab-a:
    910B: {devices: 8, borrow_limit: 4}
    nvidia: {devices: 16}
  lab-b:
    ascend: {devices: 0, borrow_limit: null}
max_preemptions_per_round: 2
preemption_cooldown_s: 60
"""


def test_every_key_reaches_the_policy() -> None:
    policy = parse_policy(yaml.safe_load(FULL))
    assert policy == Policy(
        default_runtime_s=1800.0, wait_for_faster_margin=1.2, max_placements_per_round=100,
        max_reservations_per_round=64, fair_share=True,
        tenant_weights=(("lab-a", 2.0), ("lab-b", 0.5)),
        quotas=(Quota("lab-a", "910B", 8, 4), Quota("lab-a", "nvidia", 16, None),
                Quota("lab-b", "ascend", 0, None)),
        max_preemptions_per_round=2, preemption_cooldown_s=60.0)
    # migration: its own section (services/migration_policy.load_migration_policy)
    assert {f.name for f in fields(Policy)} >= KNOWN_KEYS - {"migration"}


def test_an_empty_file_is_the_default_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("# nothing set\n")
    assert load_policy(path) == Policy()


def test_the_helm_charts_rendered_policy_loads() -> None:
    """The chart renders values.yaml `policy:` into the file the server reads:
    real helm, then this module's loader."""
    from tests.deploy.chart import ROOT as CHART_ROOT
    from tests.deploy.chart import of_kind, render

    if not (CHART_ROOT / ".tools/bin/helm").is_file() and shutil.which("helm") is None:
        pytest.skip("helm not installed: run bash scripts/tools/helm.sh (tests/deploy need it)")
    sets = ("policy.fairShare=true", "policy.tenantWeights.lab-a=2",
            "policy.quotas.lab-a.910B.devices=8", "policy.quotas.lab-a.910B.borrow_limit=4",
            "policy.maxPreemptionsPerRound=3")
    [config] = [d for d in of_kind(render(sets=sets), "ConfigMap")
                if "policy.yaml" in d["data"]]
    policy = parse_policy(yaml.safe_load(config["data"]["policy.yaml"]))
    assert (policy.fair_share, policy.tenant_weights) == (True, (("lab-a", 2.0),))
    assert policy.quotas == (Quota("lab-a", "910B", 8, 4),)
    assert (policy.max_preemptions_per_round, policy.preemption_cooldown_s) == (3, 300.0)
    [default] = [d for d in of_kind(render(), "ConfigMap") if "policy.yaml" in d["data"]]
    assert parse_policy(yaml.safe_load(default["data"]["policy.yaml"])).quotas == ()


@pytest.mark.parametrize(("text", "message"), [
    ("quota: {}", "unknown key(s) quota"),
    ("- 1", "must be a mapping"),
    ("fair_share: yes please", "fair_share: expected true or false"),
    ("wait_for_faster_margin: 0.5", "wait_for_faster_margin: must be a finite number >= 1"),
    ("max_preemptions_per_round: 1.5", "max_preemptions_per_round: expected an integer"),
    ("max_preemptions_per_round: true", "max_preemptions_per_round: expected an integer"),
    ("preemption_cooldown_s: -1", "preemption_cooldown_s: must be a finite number >= 0"),
    ("default_runtime_s: .nan", "default_runtime_s: must be a finite number"),
    ("tenant_weights: {lab-a: 0}", "tenant_weights.lab-a: a weight must be > 0"),
    ("tenant_weights: [lab-a]", "tenant_weights: expected a mapping"),
    ("quotas: {lab-a: {910B: 8}}", "quotas.lab-a.910B: expected {devices: N"),
    ("quotas: {lab-a: {910B: {borrow_limit: 2}}}", "quotas.lab-a.910B.devices: required"),
    ("quotas: {lab-a: {910B: {devices: -1}}}", "quotas.lab-a.910B.devices: must be"),
    ("quotas: {lab-a: {910B: {devices: 1, borrow: 2}}}",
     "quotas.lab-a.910B: unknown key(s) borrow"),
    ("quotas: {lab-a: {910B: {devices: 1, borrow_limit: x}}}",
     "quotas.lab-a.910B.borrow_limit: expected an integer"),
    ("quotas: {lab-a: {}}", "quotas.lab-a: expected a mapping of family or model"),
    ("quotas: {lab-a: {910: {devices: 1}}}", "quotas.lab-a.910: a tenant, family or model"),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert str(err.value).startswith(f"policy file {path}: ")
    assert message in str(err.value)


def test_a_missing_or_broken_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="No such file"):
        load_policy(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("quotas: {lab-a: [")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(broken)


def test_the_server_cli_refuses_a_bad_policy(tmp_path: Path, capsys) -> None:
    from controlplane.cli.main import main

    path = tmp_path / "policy.yaml"
    path.write_text("fair_share: 3\n")
    code = main(["server", "--policy", str(path), "--data-dir", str(tmp_path / "d"),
                 "--scheduler", "inline", "--listen", "127.0.0.1:0"])
    assert code == 2
    assert "fair_share: expected true or false" in capsys.readouterr().err


# -- stored jobs as the preemption logic sees them ----------------------------
def placed(state: int = J.JOB_STATE_RUNNING, *, borrowed: bool = False) -> J.Job:
    job = J.Job(id="j-1", tenant="lab-b", state=state, attempt=1, epoch=7)
    job.spec.priority = 3
    job.placement.pool, job.placement.family, job.placement.model = "910b", "ascend", "910B"
    job.placement.borrowed = borrowed
    job.placement.replicas.add(rank=0, node="n-0", device_indices=[0, 1, 2, 3])
    job.placement.replicas.add(rank=1, node="n-1", device_indices=[0, 1])
    job.placement.replicas.add(rank=2, node="n-0", device_indices=[4])
    job.scheduled_at.FromSeconds(1000)
    job.started_at.FromSeconds(1010)
    return job


def test_running_view_carries_what_preemption_needs() -> None:
    job = placed(borrowed=True)
    job.last_preempted_at.FromSeconds(900)
    view = running_view(job)
    assert (view.borrowed, view.priority, view.preemptible) == (True, 3, True)
    assert (view.started_at, view.last_preempted_at) == (1010.0, 900.0)
    assert view.nodes == (("n-0", 5), ("n-1", 2)) and view.devices == 7
    assert view.seconds_since_checkpoint == 0.0  # unknown: the core counts from started_at


def test_running_view_of_a_never_preempted_starting_job() -> None:
    job = placed(J.JOB_STATE_SCHEDULED)
    job.ClearField("started_at")
    view = running_view(job)
    assert (view.borrowed, view.last_preempted_at, view.started_at) == (False, None, 1000.0)


def row(rank: int, state: int, message: str = "") -> ReplicaRecord:
    return ReplicaRecord(job_id="j-1", attempt=1, rank=rank, epoch=7, node=f"n-{rank}",
                         state=state, exit_code=0, message=message)


def test_a_preempted_job_is_requeued_once_every_replica_ended() -> None:
    job = placed(J.JOB_STATE_PREEMPTED)
    R = agent_pb2
    assert next_transition(job, [row(0, R.REPLICA_STATE_STOPPED),
                                 row(1, R.REPLICA_STATE_RUNNING)]) == []
    [step] = next_transition(job, [row(0, R.REPLICA_STATE_STOPPED, "checkpoint complete"),
                                   row(1, R.REPLICA_STATE_FAILED)])
    assert (step.to_state, step.kind) == (J.JOB_STATE_QUEUED, "requeued")
    assert step.increment_attempt and step.clear_placement and step.expect_epoch == 7
    assert step.updates is None  # the queued job shows its live wait reason
    assert "rank 0: checkpoint complete" in step.message


def test_quota_use_counts_active_jobs_against_matching_quotas() -> None:
    quotas = (Quota("lab-b", "910B", 4), Quota("lab-b", "ascend", 2, 8),
              Quota("lab-a", "910B", 8))
    queued = placed(J.JOB_STATE_QUEUED)
    use = quota_use(quotas, [placed(), placed(J.JOB_STATE_STARTING), queued])
    assert use[("lab-b", "910B", "used")] == 14 and use[("lab-b", "910B", "borrowed")] == 10
    assert use[("lab-b", "ascend", "nominal")] == 2
    assert (use[("lab-a", "910B", "used")], use[("lab-a", "910B", "borrowed")]) == (0, 0)
