"""Cross-architecture migration, end to end: a real server, three real agent
processes on three simulated families, the deterministic checkpointed
training example, and `xinhe migrate` through the API and the CLI.

The migrated run moves nvidia -> ascend -> cambricon and must finish with the
very same result and step count as a run that was never moved.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from controlplane.cli.migrate import migration_seconds
from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet
from tests.integration.conftest import FAST, job_logs, wait_for, wait_ready_nodes, wait_terminal
from xinhe.v1 import common_pb2

J = common_pb2
FLEET = (
    AgentSpec("m-h100", "h100", "east", ("H100:2",)),
    AgentSpec("m-910b", "910b", "west", ("910B:2",)),
    AgentSpec("m-mlu", "mlu", "west", ("MLU370-X8:2",)),
)
STEPS = 2500
# Fast steps on the slow chip too; one migration costs well under a second of
# them, so the run spans both migrations with room to spare.
STEP_SLEEP = 0.003


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    root = tmp_path_factory.mktemp("migration-fleet")
    with LocalFleet(root, FLEET, scheduler="inline", server_args=FAST) as running:
        yield running


@pytest.fixture(scope="module")
def client(fleet: LocalFleet) -> Iterator[XinheClient]:
    with XinheClient(fleet.address) as c:
        wait_ready_nodes(c, len(FLEET))
        yield c


def train(name: str, checkpoint_dir: Path | None, *, families: tuple[str, ...] = (),
          steps: int = STEPS) -> common_pb2.JobSpec:
    """The checkpointed example; it checkpoints only when asked to."""
    spec = J.JobSpec(name=name, queue="lab-a/default", replicas=1,
                     command=[sys.executable, "-m", "xinhe_runtime.examples.checkpointed_train"],
                     args=["--steps", str(steps), "--every", "100000000",
                           "--step-sleep", str(STEP_SLEEP)])
    spec.resources.accelerators = 1
    spec.resources.families.extend(families)
    spec.reference_runtime.FromSeconds(3600)
    if checkpoint_dir is not None:
        spec.checkpoint_dir = str(checkpoint_dir)
    return spec


def wait_running(client: XinheClient, job_id: str, attempt: int = 1,
                 timeout: float = 60.0) -> common_pb2.Job:
    return wait_for(lambda: (j := client.get(job_id)).state == J.JOB_STATE_RUNNING
                    and j.attempt == attempt and j, timeout,
                    f"job {job_id} attempt {attempt} running")  # type: ignore[return-value]


def result(text: str) -> dict:
    [line] = [ln for ln in text.splitlines() if ln.startswith("result ")]
    return json.loads(line.split(" ", 1)[1])


def requested_steps(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"checkpoint at step (\d+) \(requested\)", text)]


def expect_error(code: grpc.StatusCode, call, *args) -> str:
    with pytest.raises(grpc.RpcError) as err:
        call(*args)
    assert err.value.code() == code, err.value.details()
    return err.value.details()


def test_refusals_are_clear(client: XinheClient, tmp_path: Path) -> None:
    plain = client.submit(train("no-ckpt", None, steps=10**7))
    bounded = client.submit(train("two-families", tmp_path / "b", families=("nvidia", "ascend"),
                                  steps=10**7))
    client.cordon("m-mlu", "keep a cambricon job queued")
    try:
        queued = client.submit(train("queued", tmp_path / "q", families=("cambricon",)))
        wait_running(client, plain.id)
        wait_running(client, bounded.id)
        details = expect_error(grpc.StatusCode.FAILED_PRECONDITION, client.migrate,
                               plain.id, "ascend")
        assert "job has no checkpoint_dir: it cannot be migrated" in details
        details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, client.migrate,
                               bounded.id, "tpu-v5")
        assert details.startswith("target:") and "not a known family" in details
        details = expect_error(grpc.StatusCode.FAILED_PRECONDITION, client.migrate,
                               bounded.id, "cambricon")
        assert "outside the job's allowed accelerators" in details
        details = expect_error(grpc.StatusCode.FAILED_PRECONDITION, client.migrate,
                               queued.id, "cambricon")
        assert "is QUEUED: only a RUNNING job can be migrated" in details
        assert client.get(bounded.id).state == J.JOB_STATE_RUNNING  # refusals change nothing
    finally:
        client.uncordon("m-mlu")
        for job in (plain, bounded, queued):
            client.cancel(job.id, "test over")
    for job in (plain, bounded, queued):
        assert wait_terminal(client, job.id).state == J.JOB_STATE_CANCELLED


def migrate_cli(fleet: LocalFleet, job_id: str, target: str) -> str:
    env = {**os.environ, "XINHE_SERVER": fleet.address, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "controlplane.cli.main", "migrate", job_id, "--to", target,
         "--wait", "--timeout", "60"], env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def first_output_after_request(client: XinheClient, events: list[common_pb2.JobEvent],
                               job_id: str, attempt: int) -> float:
    """Seconds from the checkpoint request to the resumed attempt's first output."""
    asked = [e for e in events if e.kind == "migrating" and e.attempt == attempt - 1][-1]
    first = next(c for c in client.logs(job_id) if c.attempt == attempt)
    return first.time.ToNanoseconds() / 1e9 - asked.time.ToNanoseconds() / 1e9


def test_migrated_twice_across_families_it_ends_exactly_like_an_unmoved_run(
        client: XinheClient, fleet: LocalFleet, tmp_path: Path) -> None:
    reference = client.submit(train("unmoved", tmp_path / "ref", families=("nvidia",)))
    job = client.submit(train("moved", tmp_path / "moved"))
    first = wait_running(client, job.id)
    assert first.placement.family == "nvidia"  # the fastest chip when any will do
    wait_for(lambda: "training on" in job_logs(client, job.id), 30, "the job to start training")

    called = time.monotonic()
    migrating = client.migrate(job.id, "ascend", "test: move to ascend")
    assert migrating.state == J.JOB_STATE_MIGRATING
    assert migrating.placement_target == "family:ascend"
    second = wait_running(client, job.id, attempt=2)
    wall_1 = time.monotonic() - called
    assert (second.placement.family, second.placement.model) == ("ascend", "910B")
    wait_for(lambda: "training on ascend" in job_logs(client, job.id), 30, "attempt 2 output")

    out = migrate_cli(fleet, job.id, "cambricon")
    assert re.search(r"RUNNING attempt 3 on mlu MLU370-X8 x1 on m-mlu", out), out
    seconds = re.search(r"migrated in ([0-9.]+)s", out)
    assert seconds, out

    done = wait_terminal(client, job.id, timeout=120)
    unmoved = wait_terminal(client, reference.id, timeout=120)
    assert done.state == unmoved.state == J.JOB_STATE_SUCCEEDED, done.state_reason
    assert done.attempt == 3 and done.placement.family == "cambricon"
    moved_text, unmoved_text = job_logs(client, job.id), job_logs(client, reference.id)
    moved_result, unmoved_result = result(moved_text), result(unmoved_text)
    assert unmoved_result["resumed_from"] == 0
    for key in ("steps", "w", "b", "loss"):  # bit for bit: floats round-trip through JSON
        assert moved_result[key] == unmoved_result[key], key
    assert moved_result["steps"] == STEPS
    # Nothing before the requested checkpoint was lost: the last attempt
    # resumed exactly where the second migration checkpointed it.
    asked = requested_steps(moved_text)
    assert len(asked) == 2 and 0 < asked[0] < asked[1] < STEPS
    assert moved_result["resumed_from"] == asked[1]

    events = list(client.watch(job.id))
    kinds = [e.kind for e in events]
    assert kinds.count("migrating") == 2 and kinds.count("migrated") == 2
    migrated = [e.message for e in events if e.kind == "migrated"]
    assert all("complete in" in m for m in migrated), migrated
    times = [migration_seconds(events, 2), migration_seconds(events, 3)]
    output = [first_output_after_request(client, events, job.id, a) for a in (2, 3)]
    print(f"\nmigration time (checkpoint request -> running again, server clock): "
          f"nvidia->ascend {times[0]:.2f}s, ascend->cambricon {times[1]:.2f}s; "
          f"-> first output of the resumed job {output[0]:.2f}s, {output[1]:.2f}s; "
          f"API call -> RUNNING seen by the client {wall_1:.2f}s")
    assert all(t is not None and t < 10.0 for t in times), times


def expected_result(steps: int) -> dict:
    """What an uninterrupted run computes, evaluated here in-process."""
    from xinhe_runtime.examples import checkpointed_train as example

    data, state = example.dataset(), {"step": 0, "w": 0.0, "b": 0.0}
    while state["step"] < steps:
        state = example.train_step(state, data)
    return {"steps": state["step"], "w": state["w"], "b": state["b"],
            "loss": example.loss(state, data)}


def test_a_gang_migrates_to_a_pool_and_every_rank_resumes_from_one_checkpoint(
        client: XinheClient, tmp_path: Path) -> None:
    spec = train("gang", tmp_path / "gang", steps=1500)
    spec.replicas = 2
    job = client.submit(spec)
    first = wait_running(client, job.id)
    assert len(first.placement.replicas) == 2
    wait_for(lambda: job_logs(client, job.id).count("training on") == 2, 30, "both ranks")
    target = "910b" if first.placement.pool != "910b" else "mlu"
    moved = client.migrate(job.id, target)
    assert moved.placement_target == f"pool:{target}"
    second = wait_running(client, job.id, attempt=2)
    assert second.placement.pool == target
    done = wait_terminal(client, job.id, timeout=120)
    assert done.state == J.JOB_STATE_SUCCEEDED, done.state_reason
    text = job_logs(client, job.id)
    results = [json.loads(ln.split(" ", 1)[1]) for ln in text.splitlines()
               if ln.startswith("result ")]
    assert len(results) == 2
    [asked] = requested_steps(text)  # only rank 0 writes checkpoints
    assert {r["resumed_from"] for r in results} == {asked}
    expected = expected_result(1500)
    for r in results:
        assert {k: r[k] for k in expected} == expected


def test_a_job_that_never_checkpoints_is_moved_anyway_after_the_timeout(
        client: XinheClient, tmp_path: Path) -> None:
    spec = J.JobSpec(name="deaf", queue="lab-a/default", replicas=1,
                     command=[sys.executable, "-m", "xinhe_runtime.examples.train"],
                     args=["--steps", "100000000", "--step-sleep", "0.01"],
                     checkpoint_dir=str(tmp_path / "deaf"))
    spec.resources.accelerators = 1
    job = client.submit(spec)
    wait_running(client, job.id)
    client.migrate(job.id, "cambricon", checkpoint_timeout=0.5)
    moved = wait_running(client, job.id, attempt=2)
    assert moved.placement.family == "cambricon"
    [event] = [e for e in client.watch(job.id) if e.kind == "migrated"]
    assert "no checkpoint within 0.5s; resuming from the last complete one" in event.message
    client.cancel(job.id, "test over")
    assert wait_terminal(client, job.id).state == J.JOB_STATE_CANCELLED
