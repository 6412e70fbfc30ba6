"""Progress tailing (agent side) and the learned throughput table (control plane)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from agents.launcher import Launcher, ReplicaSpec
from agents.progress import ProgressTailer, ProgressWatcher, Report, parse_line
from controlplane.model.catalogue import default_catalogue
from controlplane.scheduler.core_estimate import job_speed
from controlplane.services.pending import PendingQueue
from controlplane.services.throughput import (
    MEANINGFUL_CHANGE,
    Rate,
    ThroughputTable,
    attach_progress,
    factors,
    job_type,
)
from xinhe.v1 import common_pb2

CAT = default_catalogue()


def line(step: object, sps: object, **extra: object) -> bytes:
    return (json.dumps({"step": step, "steps_per_second": sps, **extra}) + "\n").encode()


# -- tailer ------------------------------------------------------------------------------
def test_parse_line_rejects_junk() -> None:
    assert parse_line(line(3, 1.5, time=10.0)) == Report(3, 1.5, 10.0)
    for junk in (b"not json", b"[1, 2]", b"{}", line(-1, 1.0), line(1, -2.0),
                 line(1, "nan"), line(True, 1.0), line("x", 1.0), b"\xff\xfe",
                 line(1, 1.0, time="soon")):
        assert parse_line(junk) is None, junk


def test_tailer_keeps_partial_lines_and_skips_junk(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    tailer = ProgressTailer(path)
    assert tailer.poll() is None  # no file yet: no error
    whole = line(1, 2.0) + b"garbage\n" + line(2, 3.0)
    path.write_bytes(whole + line(3, 4.0)[:7])  # the third line is half written
    assert tailer.poll() == Report(2, 3.0, 0.0)
    with open(path, "ab") as fh:
        fh.write(line(3, 4.0)[7:] + b"{broken\n")
    assert tailer.poll() == Report(3, 4.0, 0.0)  # completed line counts, junk after it not
    assert tailer.poll() == Report(3, 4.0, 0.0)  # nothing new: the newest stays
    path.write_bytes(line(1, 9.0))  # truncated (a new attempt): read from the start
    assert tailer.poll() == Report(1, 9.0, 0.0)


def test_watcher_rate_limits_and_flushes_on_unwatch(tmp_path: Path) -> None:
    sent: list[tuple[object, Report]] = []
    watcher = ProgressWatcher(lambda ref, r: sent.append((ref, r)), poll_interval=3600,
                              min_interval=3600)
    path = tmp_path / "p.jsonl"
    path.write_bytes(line(1, 1.0))
    watcher.watch("k", "ref", path)
    watcher.poll_once()
    path.write_bytes(line(1, 1.0) + line(2, 2.0))
    watcher.poll_once()  # within min_interval: held back
    assert sent == [("ref", Report(1, 1.0, 0.0))]
    watcher.unwatch("k")  # the held-back newest report goes out now
    assert sent[-1] == ("ref", Report(2, 2.0, 0.0)) and len(sent) == 2
    watcher.unwatch("k")
    watcher.stop()
    assert len(sent) == 2


def test_launcher_gives_each_replica_its_own_progress_file(tmp_path: Path) -> None:
    launcher = Launcher(tmp_path)
    specs = [ReplicaSpec(job_id="j-1", attempt=a, rank=r, job_name="n", command=("true",))
             for a, r in ((1, 0), (1, 1), (2, 0))]
    files = {launcher.render_env(s, {})["XINHE_PROGRESS_FILE"] for s in specs}
    assert len(files) == 3
    assert all(Path(f).parent.is_dir() and Path(f).is_relative_to(tmp_path) for f in files)


# -- learned table ------------------------------------------------------------------------
def test_job_type_defaults_to_the_name() -> None:
    assert job_type(common_pb2.JobSpec(name="bert-7")) == "bert-7"
    assert job_type(common_pb2.JobSpec(name="bert-7", job_type="bert")) == "bert"


def test_factors_relative_to_a_measured_reference() -> None:
    got = dict(factors({"A100": Rate(10.0), "910B": Rate(25.0)}, CAT))
    assert got == {"A100": 1.0, "910B": 2.5}


def test_factors_anchored_on_the_first_measured_model_scale_by_its_prior() -> None:
    prior = CAT.relative_speed("H100")
    got = dict(factors({"H100": Rate(5.0, reports=1), "910B": Rate(50.0, reports=9)}, CAT))
    assert got["H100"] == pytest.approx(prior)
    assert got["910B"] == pytest.approx(prior * 10)
    assert factors({}, CAT) == ()


def test_table_averages_ignores_zero_and_reports_meaningful_changes() -> None:
    table = ThroughputTable(CAT)
    changed: list[str] = []
    table.on_change = changed.append
    assert not table.record("t", "H100", 0.0) and not table.record("t", "H100", math.nan)
    assert table.record("t", "nvidia h100 80gb hbm3", 10.0)  # alias -> catalogue name
    assert table.rates("t") == {"H100": 10.0}
    assert table.record("t", "910B", 20.0)
    assert dict(table.speed("t"))["910B"] == pytest.approx(2 * CAT.relative_speed("H100"))
    table.record("t", "910B", 20.0 * (1 + MEANINGFUL_CHANGE / 2))  # EWMA moves < threshold
    assert changed == ["t", "t"]
    table.record("t", "910B", 40.0)
    assert changed == ["t", "t", "t"]
    assert table.rates("t")["910B"] > 20.0 and table.speed("other") == ()


def test_latest_progress_is_attached_to_a_copy() -> None:
    table = ThroughputTable(CAT)
    job = common_pb2.Job(id="j-1")
    assert attach_progress(job, table) is job
    table.note_progress("j-1", 42, 3.5, 1000.0)
    out = attach_progress(job, table)
    assert (out.progress.step, out.progress.steps_per_second) == (42, 3.5)
    assert out.progress.updated_at.seconds == 1000 and not job.HasField("progress")


def test_pending_queue_restamps_queued_jobs_of_a_type_when_speed_changes() -> None:
    table = ThroughputTable(CAT)
    queue = PendingQueue(CAT)
    queue.throughput, table.on_change = table, queue.refresh_speed
    jobs = []
    for i, kind in enumerate(("bert", "bert", "gpt")):
        job = common_pb2.Job(id=f"j-{i}", state=common_pb2.JOB_STATE_QUEUED)
        job.spec.name, job.spec.job_type = f"x-{i}", kind
        job.spec.resources.accelerators = 1
        jobs.append(job)
    queue.observe(jobs)
    table.record("bert", "H100", 1.0)
    table.record("bert", "910B", 10.0)
    by_id = {p.job_id: p for p in queue.pending()}
    speeds = {m: job_speed(by_id["j-0"], m, {}) for m in ("H100", "910B")}
    assert speeds["910B"] == pytest.approx(10 * speeds["H100"])
    assert by_id["j-1"].speed == by_id["j-0"].speed and by_id["j-2"].speed == ()
    late = common_pb2.Job(id="j-9", state=common_pb2.JOB_STATE_QUEUED)
    late.spec.name = "bert"  # no explicit type: the name is the type
    queue.observe([late])
    assert next(p for p in queue.pending() if p.job_id == "j-9").speed == by_id["j-0"].speed
