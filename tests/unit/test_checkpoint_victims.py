"""Checkpoint-aware preemption, end to end in-process: the agent sees a job's
checkpoints (the runtime's LATEST mark), the report carries the time, the
control plane keeps it with the job's progress, and the core's victim
choice loses the least work since the last checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import xinhe_runtime
from agents.progress import NO_PROGRESS, ProgressWatcher, Report, last_checkpoint_at
from controlplane.model.catalogue import default_catalogue
from controlplane.scheduler.core import schedule
from controlplane.scheduler.types import ClusterSnapshot, PendingJob, Policy
from controlplane.services.throughput import ThroughputTable
from controlplane.services.translate import running_view
from protos.xinhe.v1 import common_pb2
from tests.unit.builders import nodes

NOW = 1_700_000_000.0


def line(step: int, speed: float) -> bytes:
    return f'{{"step": {step}, "steps_per_second": {speed}}}\n'.encode()


def mark(directory: Path, name: str, at: float) -> None:
    """A checkpoint as the runtime completes one, marked at time ``at``."""
    (directory / name).write_text("weights")
    os.environ["XINHE_CHECKPOINT_DIR"] = str(directory)
    try:
        xinhe_runtime.mark_checkpoint(name)
    finally:
        del os.environ["XINHE_CHECKPOINT_DIR"]
    os.utime(directory / "LATEST", (at, at))


# -- agent side -------------------------------------------------------------------------
def test_no_mark_no_checkpoint(tmp_path: Path) -> None:
    assert last_checkpoint_at(tmp_path) is None
    assert last_checkpoint_at(tmp_path / "missing") is None
    mark(tmp_path, "step-10", NOW - 30)
    assert last_checkpoint_at(tmp_path) == NOW - 30


def test_watcher_reports_each_new_checkpoint_with_progress(tmp_path: Path) -> None:
    sent: list[Report] = []
    watcher = ProgressWatcher(lambda ref, r: sent.append(r), poll_interval=3600,
                              min_interval=0)
    progress, ckpt = tmp_path / "p.jsonl", tmp_path / "ckpt"
    ckpt.mkdir()
    watcher.watch("k", "ref", progress, ckpt)
    watcher.poll_once()
    assert sent == []  # neither progress nor a checkpoint yet
    mark(ckpt, "step-5", NOW - 100)
    watcher.poll_once()  # a checkpoint alone is reported, flagged as no progress
    assert sent == [Report(0, 0.0, 0.0, NOW - 100, progress=False)]
    progress.write_bytes(line(7, 2.0))
    watcher.poll_once()
    assert sent[-1] == Report(7, 2.0, 0.0, NOW - 100)
    watcher.poll_once()
    assert len(sent) == 2  # nothing new: nothing sent
    mark(ckpt, "step-9", NOW - 10)
    watcher.poll_once()  # a newer checkpoint is news even without a new step
    assert sent[-1] == Report(7, 2.0, 0.0, NOW - 10)
    watcher.stop()


def test_watcher_without_a_checkpoint_dir_reports_none(tmp_path: Path) -> None:
    sent: list[Report] = []
    watcher = ProgressWatcher(lambda ref, r: sent.append(r), poll_interval=3600,
                              min_interval=0)
    (tmp_path / "LATEST").write_text("x\n")  # not watched: no dir given
    progress = tmp_path / "p.jsonl"
    progress.write_bytes(line(1, 1.0))
    watcher.watch("k", "ref", progress)
    watcher.poll_once()
    assert sent == [Report(1, 1.0, 0.0)] and NO_PROGRESS.checkpoint_at is None
    watcher.stop()


# -- control plane ----------------------------------------------------------------------
def test_table_keeps_the_newest_checkpoint_per_job() -> None:
    table = ThroughputTable(default_catalogue())
    assert table.last_checkpoint("j") is None
    table.note_checkpoint("j", NOW - 50)
    table.note_checkpoint("j", NOW - 500)  # a late, older report never goes back
    assert table.last_checkpoint("j") == NOW - 50
    table.forget_job("j")
    assert table.last_checkpoint("j") is None


def running_job(job_id: str, node: str, started: float) -> common_pb2.Job:
    job = common_pb2.Job(id=job_id, tenant="t")
    job.spec.priority = 0
    job.started_at.FromNanoseconds(int(started * 1e9))
    job.placement.pool, job.placement.model = "p", "910B"
    job.placement.estimated_runtime.FromSeconds(36_000)
    job.placement.replicas.add(rank=0, node=node, device_indices=list(range(8)))
    return job


def test_running_view_counts_from_the_checkpoint_or_the_attempt_start() -> None:
    job = running_job("j", "p-000", NOW - 3600)
    assert running_view(job).seconds_since_checkpoint == 0.0  # unknown
    assert running_view(job, NOW, NOW - 60).seconds_since_checkpoint == 60.0
    # A checkpoint from before this attempt started: the attempt resumed from it.
    assert running_view(job, NOW, NOW - 7200).seconds_since_checkpoint == 3600.0


def test_the_victim_is_the_job_that_loses_least_since_its_checkpoint() -> None:
    """"old" has run 2 h but checkpointed 10 s ago; "young" has run 30 min and
    never checkpointed. Without checkpoint times the core would stop "young"
    (less run time); with them it stops "old" (10 s lost, not 30 min)."""
    old, young = running_job("old", "p-000", NOW - 7200), running_job("young", "p-001", NOW - 1800)
    table = ThroughputTable(default_catalogue())
    table.note_checkpoint("old", NOW - 10)
    hi = PendingJob("hi", "t", "t/q", priority=5, order=0, replicas=1, devices_per_replica=8,
                    reference_runtime_s=600)
    fleet = tuple(n for n in nodes(2, free=()))

    def victims(with_checkpoints: bool) -> list[str]:
        runs = tuple(running_view(j, NOW, table.last_checkpoint(j.id) if with_checkpoints
                                  else None) for j in (old, young))
        decisions = schedule(ClusterSnapshot(fleet, runs), [hi], Policy(), NOW)
        return [p.job_id for p in decisions.preemptions]

    assert victims(with_checkpoints=False) == ["young"]
    assert victims(with_checkpoints=True) == ["old"]
