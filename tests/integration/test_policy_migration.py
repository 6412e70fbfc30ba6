"""Policy-triggered migration, end to end: a real server with the policy's
migration section on, two real agent processes (a slow and a fast simulated
family), the deterministic checkpointed training example.

The training job starts on the slow chip because the fast one is busy with
a job expected to run for ages; that job ends early; the policy moves the
training job to the fast chip, and it finishes with exactly the result of a
run that was never moved.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.cli.migrate import migration_seconds
from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet
from tests.integration.conftest import (
    FAST,
    job_logs,
    train_spec,
    wait_for,
    wait_ready_nodes,
    wait_terminal,
)
from tests.integration.test_migration import expected_result, requested_steps, result
from xinhe.v1 import common_pb2

J = common_pb2
FLEET = (
    AgentSpec("pm-h100", "h100", "east", ("H100:1",)),
    AgentSpec("pm-mlu", "mlu", "west", ("MLU370-X8:1",)),
)
POLICY = """\
migration:
  enabled: true
  min_gain_ratio: 1.5
  restart_cost_s: 5
  max_per_round: 1
  min_interval_s: 0.5
  cooldown_s: 600
"""
STEPS = 4000
STEP_SLEEP = 0.003


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XinheClient]:
    root = tmp_path_factory.mktemp("policy-migration")
    policy = root / "policy.yaml"
    policy.write_text(POLICY)
    with (LocalFleet(root, FLEET, scheduler="inline",
                     server_args=[*FAST, "--policy", str(policy)]) as fleet,
          XinheClient(fleet.address) as c):
        wait_ready_nodes(c, len(FLEET))
        yield c


def training(checkpoint_dir: Path) -> common_pb2.JobSpec:
    spec = J.JobSpec(name="policy-moved", queue="lab-a/default", replicas=1,
                     command=[sys.executable, "-m", "xinhe_runtime.examples.checkpointed_train"],
                     args=["--steps", str(STEPS), "--every", "100000000",
                           "--step-sleep", str(STEP_SLEEP)],
                     checkpoint_dir=str(checkpoint_dir))
    spec.resources.accelerators = 1
    spec.reference_runtime.FromSeconds(36000)
    return spec


def test_the_policy_moves_a_job_to_the_fast_chip_once_it_frees(
        client: XinheClient, tmp_path: Path) -> None:
    # Expected to hold the H100 for ages (so the training job does not wait
    # for it), it really ends after a few seconds.
    blocker_spec = train_spec("blocker", families=("nvidia",), steps=30, step_sleep=0.1)
    blocker_spec.reference_runtime.FromSeconds(10**6)
    blocker = client.submit(blocker_spec)
    wait_for(lambda: client.get(blocker.id).state == J.JOB_STATE_RUNNING, 60, "blocker running")
    job = client.submit(training(tmp_path / "ckpt"))
    first = wait_for(lambda: (j := client.get(job.id)).state == J.JOB_STATE_RUNNING and j, 60,
                     "training running")
    assert first.placement.model == "MLU370-X8"  # the fast chip is busy
    wait_for(lambda: "training on" in job_logs(client, job.id), 30, "training output")

    assert wait_terminal(client, blocker.id).state == J.JOB_STATE_SUCCEEDED
    done = wait_terminal(client, job.id, timeout=120)
    assert done.state == J.JOB_STATE_SUCCEEDED, done.state_reason
    assert (done.attempt, done.placement.model) == (2, "H100")
    assert done.placement_target == ""  # the pin ended once it ran on the target

    events = list(client.watch(job.id))
    [moving] = [e for e in events if e.kind == "migrating"]
    assert moving.message.startswith("migrating to model H100: policy: moving from pool mlu")
    text = job_logs(client, job.id)
    got, want = result(text), expected_result(STEPS)
    for key in ("steps", "w", "b", "loss"):  # bit for bit, as if never moved
        assert got[key] == want[key], key
    [asked] = requested_steps(text)
    assert 0 < asked < STEPS and got["resumed_from"] == asked
    seconds = migration_seconds(events, 2)
    print(f"\npolicy migration MLU370-X8 -> H100: checkpoint request -> running again "
          f"{seconds:.2f}s (server clock)")
    assert seconds is not None and seconds < 10.0
