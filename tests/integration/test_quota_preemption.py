"""Quotas, borrowing and preemption, end to end: a real server started with a
policy file, a real agent simulating one 8-device 910B node, and the
checkpointed training example.

Tenant lab-a owns the node (nominal quota 8); lab-b has no quota there but
may borrow up to 4 idle devices. lab-b's first job borrows half the node, its
second waits on the borrow limit; when lab-a asks for the whole node, the
scheduler reclaims: lab-b's job is checkpointed, stopped and requeued
(attempt 2, not a failure), and lab-a's job runs on its devices.
"""

from __future__ import annotations

import re
import socket
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet
from tests.integration.conftest import FAST, job_logs, wait_for, wait_ready_nodes
from xinhe.v1 import common_pb2

J = common_pb2
POLICY = """\
quotas:
  lab-a:
    910B: {devices: 8}
  lab-b:
    910B: {devices: 0, borrow_limit: 4}
max_preemptions_per_round: 4
preemption_cooldown_s: 300
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[XinheClient, str]]:
    root = tmp_path_factory.mktemp("quota-fleet")
    policy = root / "policy.yaml"
    policy.write_text(POLICY)
    port = free_port()
    args = [*FAST, "--policy", str(policy), "--metrics-port", str(port)]
    agents = (AgentSpec("q-910b", "910b", "west", ("910B:8",)),)
    with LocalFleet(root, agents, scheduler="inline", server_args=args) as fleet, \
            XinheClient(fleet.address) as client:
        wait_ready_nodes(client, 1)
        yield client, f"http://127.0.0.1:{port}/metrics"


def train(name: str, queue: str, devices: int, checkpoint_dir: Path | None,
          priority: int = 0) -> J.JobSpec:
    """The checkpointed example, long enough to be running when evicted."""
    spec = J.JobSpec(name=name, queue=queue, replicas=1, priority=priority,
                     command=[sys.executable, "-m", "xinhe_runtime.examples.checkpointed_train"],
                     args=["--steps", "1000000", "--every", "100000000", "--step-sleep", "0.01"])
    spec.resources.accelerators = devices
    spec.resources.models.append("910B")
    spec.reference_runtime.FromSeconds(3600)
    if checkpoint_dir is not None:
        spec.checkpoint_dir = str(checkpoint_dir)
    return spec


def state_is(client: XinheClient, job_id: str, state: int, attempt: int = 1) -> J.Job | None:
    job = client.get(job_id)
    return job if job.state == state and job.attempt == attempt else None


def quota_series(url: str) -> dict[tuple[str, str, str], float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    pattern = (r'^xinhe_tenant_quota_devices\{family="([^"]+)",kind="([^"]+)",'
               r'tenant="([^"]+)"\} ([0-9.e+]+)$')
    return {(t, f, k): float(v) for f, k, t, v in re.findall(pattern, text, re.M)}


def test_a_tenant_reclaims_its_quota_from_a_borrower(
        stack: tuple[XinheClient, str], tmp_path: Path) -> None:
    client, metrics_url = stack
    borrower = client.submit(train("borrower", "lab-b/default", 4, tmp_path / "b"))
    running = wait_for(lambda: state_is(client, borrower.id, J.JOB_STATE_RUNNING), 60,
                       "the borrower to run")
    assert running.placement.borrowed, "beyond lab-b's nominal 0: borrowed"
    second = client.submit(train("second", "lab-b/default", 4, None))
    reason = wait_for(lambda: client.get(second.id).state_reason, 30, "a wait reason")
    assert reason.startswith("quota: tenant lab-b uses 4/0 910B devices"), reason
    wait_for(lambda: "training on" in job_logs(client, borrower.id), 30, "borrower output")
    use = quota_series(metrics_url)
    assert use[("lab-b", "910B", "used")] == 4 and use[("lab-b", "910B", "borrowed")] == 4
    assert use[("lab-a", "910B", "nominal")] == 8 and use[("lab-a", "910B", "used")] == 0

    owner = client.submit(train("owner", "lab-a/default", 8, None))
    wait_for(lambda: state_is(client, owner.id, J.JOB_STATE_RUNNING), 60, "the owner to run")
    # The borrower went back to the queue, a new attempt, and waits on quota.
    requeued = wait_for(lambda: state_is(client, borrower.id, J.JOB_STATE_QUEUED, 2), 30,
                        "the borrower requeued")
    assert requeued.HasField("last_preempted_at")
    assert not requeued.placement.replicas
    # It waits (for devices: lab-a holds the node) with a reason, like any job.
    reason = wait_for(lambda: client.get(borrower.id).state_reason, 30, "a wait reason")
    assert not reason.startswith("unschedulable"), reason
    print(f"\nrequeued borrower waits: {reason}")

    events = list(client.watch(borrower.id, follow=False))
    kinds = [(e.kind, e.to_state) for e in events]
    preempted = kinds.index(("preempted", J.JOB_STATE_PREEMPTED))
    assert kinds[preempted + 1] == ("requeued", J.JOB_STATE_QUEUED), kinds
    assert owner.id in events[preempted].message
    assert all(k != "retrying" and s != J.JOB_STATE_FAILED for k, s in kinds)
    # Checkpointed before it stopped (it has a checkpoint_dir).
    assert "checkpoint at step" in job_logs(client, borrower.id)

    use = quota_series(metrics_url)
    assert use[("lab-a", "910B", "used")] == 8 and use[("lab-a", "910B", "borrowed")] == 0
    assert use[("lab-b", "910B", "used")] == 0
    for job in (owner, borrower, second):
        client.cancel(job.id, "test over")


def test_a_higher_priority_job_evicts_one_without_checkpoint_dir(
        stack: tuple[XinheClient, str]) -> None:
    """No checkpoint_dir: the victim is simply stopped and requeued, to start
    again from the beginning once devices free."""
    client, _ = stack
    busy = (J.JOB_STATE_SCHEDULED, J.JOB_STATE_STARTING, J.JOB_STATE_RUNNING,
            J.JOB_STATE_PREEMPTED)
    wait_for(lambda: not [*client.list(states=busy)], 30, "the node to be idle")
    low = client.submit(train("low", "lab-a/default", 8, None, priority=0))
    wait_for(lambda: state_is(client, low.id, J.JOB_STATE_RUNNING), 60, "the low job to run")
    high = client.submit(train("high", "lab-a/default", 8, None, priority=10))
    wait_for(lambda: state_is(client, high.id, J.JOB_STATE_RUNNING), 60, "the high job to run")
    requeued = wait_for(lambda: state_is(client, low.id, J.JOB_STATE_QUEUED, 2), 30,
                        "the low job requeued")
    assert requeued.attempt == 2
    events = list(client.watch(low.id))
    [evicted] = [e for e in events if e.kind == "preempted"]
    assert high.id in evicted.message and "priority" in evicted.message, evicted.message
    assert "checkpoint at step" not in job_logs(client, low.id)
    for job in (high, low):
        client.cancel(job.id, "test over")
