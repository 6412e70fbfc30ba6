"""Checkpoint-aware preemption end to end: a real server and agent process.

Two low-priority jobs share a 2-device node. "saver" started first and
checkpoints twice a second (xinhe_runtime.save_checkpoint marks LATEST);
"plain" started later and never checkpoints. The agent reports saver's
checkpoint times, so when a high-priority job needs one device the
scheduler stops saver (a second or two of work lost), not plain (all the
seconds it ran) -- although saver has run longer.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet
from tests.integration.conftest import FAST, wait_for, wait_ready_nodes
from xinhe.v1 import common_pb2

J = common_pb2


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XinheClient]:
    root = tmp_path_factory.mktemp("ckpt-victims")
    agents = (AgentSpec("c-910b", "910b", "west", ("910B:2",)),)
    with LocalFleet(root, agents, scheduler="inline", server_args=FAST) as fleet, \
            XinheClient(fleet.address) as c:
        wait_ready_nodes(c, 1)
        yield c


def train(name: str, priority: int, checkpoint_dir: Path | None, every: int) -> J.JobSpec:
    spec = J.JobSpec(name=name, queue="lab-a/default", replicas=1, priority=priority,
                     command=[sys.executable, "-m", "xinhe_runtime.examples.checkpointed_train"],
                     args=["--steps", "1000000", "--every", str(every), "--step-sleep", "0.01"])
    spec.resources.accelerators = 1
    spec.reference_runtime.FromSeconds(3600)
    if checkpoint_dir is not None:
        spec.checkpoint_dir = str(checkpoint_dir)
    return spec


def running(client: XinheClient, job_id: str) -> J.Job | None:
    job = client.get(job_id)
    return job if job.state == J.JOB_STATE_RUNNING and job.attempt == 1 else None


def test_the_victim_is_the_job_with_the_freshest_checkpoint(
        client: XinheClient, tmp_path: Path) -> None:
    saver = client.submit(train("saver", 0, tmp_path / "saver", every=50))
    wait_for(lambda: running(client, saver.id), 60, "saver to run")
    wait_for(lambda: (tmp_path / "saver" / "LATEST").exists(), 60, "saver's first checkpoint")
    plain = client.submit(train("plain", 0, None, every=100_000_000))
    wait_for(lambda: running(client, plain.id), 60, "plain to run")
    # plain must have run clearly longer than saver's checkpoint interval plus
    # the agent's reporting delay (a poll a second, a report per 2 s at most).
    time.sleep(10)
    high = client.submit(train("high", 10, None, every=100_000_000))
    stopped = wait_for(lambda: client.get(saver.id).attempt >= 2 or None, 60,
                       "a victim to be requeued")
    assert stopped
    assert client.get(plain.id).state == J.JOB_STATE_RUNNING
    assert client.get(plain.id).attempt == 1
    events = list(client.watch(saver.id, follow=False))
    assert any(e.kind == "preempted" and high.id in e.message for e in events), \
        [(e.kind, e.message) for e in events]
    for job in (saver, plain, high):
        client.cancel(job.id, "test over")
