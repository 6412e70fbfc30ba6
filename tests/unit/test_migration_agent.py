"""Migration, agent side: checkpoint-then-stop against real job processes."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

import xinhe_runtime
from agents import checkpoint
from agents.checkpoint import Checkpointer, request_checkpoint
from agents.launcher import Launcher, ReplicaPhase, ReplicaProcess, ReplicaSpec

PY = sys.executable
IGNORES_REQUESTS = ("import signal, sys, time; signal.signal(signal.SIGUSR1, signal.SIG_IGN); "
                    "print('up', flush=True); time.sleep(60)")


class Phases:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[ReplicaPhase, str]] = []
        self.output = bytearray()

    def on_state(self, proc: ReplicaProcess, phase: ReplicaPhase, code: int, msg: str) -> None:
        with self.lock:
            self.seen.append((phase, msg))

    def on_output(self, proc: ReplicaProcess, stream: str, data: bytes) -> None:
        with self.lock:
            self.output += data

    def wait_output(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if text.encode() in self.output:
                    return
            time.sleep(0.02)
        raise AssertionError(f"no {text!r} in output: {bytes(self.output)!r}")


def start(tmp_path: Path, command: tuple[str, ...], ckpt: Path | None) -> tuple[ReplicaProcess,
                                                                                 Phases]:
    phases = Phases()
    spec = ReplicaSpec(job_id="j-mig", attempt=1, rank=0, command=command,
                       checkpoint_dir=str(ckpt) if ckpt else "")
    proc = Launcher(tmp_path / "work").start(spec, {}, phases.on_state, phases.on_output)
    return proc, phases


def test_file_names_match_the_job_side_runtime() -> None:
    assert checkpoint.REQUEST_FILE == xinhe_runtime.REQUEST_FILE
    assert checkpoint.DONE_FILE == xinhe_runtime.DONE_FILE


def test_a_checkpointing_job_answers_and_is_then_stopped(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    command = (PY, "-m", "xinhe_runtime.examples.checkpointed_train", "--steps", "1000000",
               "--every", "1000000", "--step-sleep", "0.005")
    proc, phases = start(tmp_path, command, ckpt)
    phases.wait_output("training on")
    outcome = Checkpointer.checkpoint(proc, timeout=30)
    assert outcome.completed, outcome.message
    assert (ckpt / outcome.name).exists()
    assert (ckpt / "LATEST").read_text().strip() == outcome.name
    assert not (ckpt / checkpoint.REQUEST_FILE).exists()  # the job cleared it
    saved = json.loads((ckpt / outcome.name).read_text())
    assert saved["step"] > 0 and outcome.name == f"step-{saved['step']:09d}.json"
    proc.stop(5, reason="test")
    assert proc.wait(15)


def test_checkpointer_stops_the_replica_saying_how_the_checkpoint_went(tmp_path: Path) -> None:
    command = (PY, "-m", "xinhe_runtime.examples.checkpointed_train", "--steps", "1000000",
               "--step-sleep", "0.005")
    proc, phases = start(tmp_path, command, tmp_path / "ckpt")
    phases.wait_output("training on")
    checkpointer = Checkpointer()
    assert checkpointer.start(proc, timeout=30, grace=5, reason="migrating to family ascend")
    assert not checkpointer.start(proc, timeout=30, grace=5, reason="again")  # one at a time
    assert proc.wait(40)
    phase, message = phases.seen[-1]
    assert phase is ReplicaPhase.STOPPED
    assert message.startswith("migrating to family ascend: checkpoint step-")
    assert "complete in" in message
    assert not checkpointer.start(proc, timeout=30, grace=5, reason="after the end")


def test_a_job_that_never_answers_times_out_and_the_request_is_withdrawn(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    proc, phases = start(tmp_path, (PY, "-c", IGNORES_REQUESTS), ckpt)
    phases.wait_output("up")
    outcome = Checkpointer.checkpoint(proc, timeout=0.3)
    assert not outcome.completed and "no checkpoint within 0.3s" in outcome.message
    assert outcome.seconds >= 0.3
    assert not (ckpt / checkpoint.REQUEST_FILE).exists()
    proc.stop(0.5)
    assert proc.wait(15)


def test_a_stale_done_file_from_an_earlier_checkpoint_does_not_count(tmp_path: Path) -> None:
    (tmp_path / checkpoint.DONE_FILE).write_text('{"name": "old"}')
    old = time.time() - 60
    os.utime(tmp_path / checkpoint.DONE_FILE, (old, old))
    signals: list[int] = []
    outcome = request_checkpoint(tmp_path, signals.append, lambda: False, timeout=0.1)
    assert not outcome.completed and len(signals) == 1


def test_a_process_that_exits_ends_the_wait_early(tmp_path: Path) -> None:
    outcome = request_checkpoint(tmp_path, lambda sig: None, lambda: True, timeout=30)
    assert not outcome.completed and "exited" in outcome.message and outcome.seconds < 5


def test_a_job_without_checkpoint_dir_is_not_signalled(tmp_path: Path) -> None:
    proc, phases = start(tmp_path, (PY, "-c", IGNORES_REQUESTS), None)
    phases.wait_output("up")
    outcome = Checkpointer.checkpoint(proc, timeout=5)
    assert not outcome.completed and "no checkpoint directory" in outcome.message
    proc.stop(0.5)
    assert proc.wait(15)


@pytest.mark.parametrize("answer_after", [0.0, 0.05])
def test_an_answer_written_after_the_request_counts(tmp_path: Path, answer_after: float) -> None:
    def answer(sig: int) -> None:
        def write() -> None:
            time.sleep(answer_after)
            (tmp_path / checkpoint.DONE_FILE).write_text('{"name": "step-7"}')
        threading.Thread(target=write, daemon=True).start()

    outcome = request_checkpoint(tmp_path, answer, lambda: False, timeout=10)
    assert outcome.completed and outcome.name == "step-7"


def write_done(directory: Path, record: dict, age_s: float) -> None:
    path = directory / checkpoint.DONE_FILE
    path.write_text(json.dumps(record))
    then = time.time() - age_s
    os.utime(path, (then, then))


def test_a_gang_siblings_earlier_answer_for_this_attempt_counts(tmp_path: Path) -> None:
    write_done(tmp_path, {"name": "step-5", "attempt": 3, "rank": 0}, age_s=1)
    outcome = request_checkpoint(tmp_path, lambda sig: None, lambda: False, timeout=5, attempt=3)
    assert outcome.completed and outcome.name == "step-5"
    assert not (tmp_path / checkpoint.REQUEST_FILE).exists()  # ours, withdrawn


def test_an_earlier_answer_of_another_attempt_does_not_count(tmp_path: Path) -> None:
    write_done(tmp_path, {"name": "step-5", "attempt": 2, "rank": 0}, age_s=1)
    outcome = request_checkpoint(tmp_path, lambda sig: None, lambda: False, timeout=0.1,
                                 attempt=3)
    assert not outcome.completed
