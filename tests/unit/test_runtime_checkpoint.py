"""xinhe_runtime's checkpoint protocol and progress reports, down to a real
interrupted-and-resumed training process giving the exact same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import xinhe_runtime as xr

EXAMPLE = [sys.executable, "-m", "xinhe_runtime.examples.checkpointed_train"]


@pytest.fixture
def ckpt(tmp_path, monkeypatch):
    """A checkpoint directory in the environment, and a clean signal state after."""
    directory = tmp_path / "ckpt"
    directory.mkdir()
    monkeypatch.setenv("XINHE_CHECKPOINT_DIR", str(directory))
    monkeypatch.delenv("XINHE_PROGRESS_FILE", raising=False)
    handler = signal.getsignal(signal.SIGUSR1)
    yield directory
    signal.signal(signal.SIGUSR1, handler)
    xr._signal_state.update(requested=False, answered=False)


def write_json(data):
    return lambda path: Path(path).write_text(json.dumps(data))


def wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# -- saving and resuming ------------------------------------------------------------------
def test_nothing_to_resume_without_a_directory_or_a_mark(ckpt, monkeypatch):
    assert xr.resume_path() is None
    (ckpt / "step-1").write_text("{}")
    assert xr.resume_path() is None, "written but never marked"
    monkeypatch.delenv("XINHE_CHECKPOINT_DIR")
    assert xr.resume_path() is None


def test_save_with_a_writer_marks_the_complete_file(ckpt):
    first = xr.save_checkpoint(write_json({"step": 1}), name="step-1")
    second = xr.save_checkpoint(write_json({"step": 2}), name="step-2")
    assert xr.resume_path() == second == str(ckpt / "step-2")
    assert json.loads(Path(first).read_text()) == {"step": 1}
    assert (ckpt / "LATEST").read_text() == "step-2\n"
    assert sorted(p.name for p in ckpt.iterdir()) == ["LATEST", "step-1", "step-2"]


def test_a_failing_writer_leaves_the_last_good_checkpoint(ckpt):
    xr.save_checkpoint(write_json({"step": 1}), name="step-1")

    def crash(path):
        Path(path).write_text('{"step": 2, "half')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        xr.save_checkpoint(crash, name="step-2")
    assert xr.resume_path() == str(ckpt / "step-1")
    assert sorted(p.name for p in ckpt.iterdir()) == ["LATEST", "step-1"]
    with pytest.raises(RuntimeError, match="did not create"):
        xr.save_checkpoint(lambda path: None, name="step-3")


def test_directory_checkpoints_and_default_names(ckpt):
    def shard_writer(path):
        Path(path).mkdir()
        for rank in range(2):
            (Path(path) / f"shard-{rank}").write_text(str(rank))

    saved = xr.save_checkpoint(shard_writer)
    assert Path(saved).name.startswith("ckpt-") and xr.resume_path() == saved
    assert sorted(p.name for p in Path(saved).iterdir()) == ["shard-0", "shard-1"]
    with pytest.raises(FileExistsError, match="use a new name"):
        xr.save_checkpoint(shard_writer, name=Path(saved).name)


def test_marking_a_checkpoint_the_job_wrote_itself(ckpt):
    (ckpt / "model.pt").write_bytes(b"weights")
    assert xr.save_checkpoint("model.pt") == str(ckpt / "model.pt")
    assert xr.resume_path() == str(ckpt / "model.pt")
    with pytest.raises(FileNotFoundError, match="write it, then mark it"):
        xr.mark_checkpoint("missing.pt")


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden", "LATEST", "..", 7])
def test_bad_checkpoint_names_are_refused(ckpt, name):
    with pytest.raises(ValueError, match="bad checkpoint name"):
        xr.mark_checkpoint(name)


def test_a_tampered_mark_is_not_followed(ckpt):
    (ckpt / "LATEST").write_text("../../etc/passwd\n")
    assert xr.resume_path() is None


def test_saving_without_a_directory_says_how_to_get_one(monkeypatch):
    monkeypatch.delenv("XINHE_CHECKPOINT_DIR", raising=False)
    with pytest.raises(RuntimeError, match=r"checkpoint\.dir"):
        xr.save_checkpoint(write_json({}), name="x")
    with pytest.raises(TypeError):
        xr.save_checkpoint(42)  # type: ignore[arg-type]


# -- checkpoint requests ----------------------------------------------------------------------
def test_request_file_asks_and_checkpoint_done_answers(ckpt):
    assert not xr.should_checkpoint()
    (ckpt / xr.REQUEST_FILE).touch()
    assert xr.should_checkpoint()
    xr.save_checkpoint(write_json({"step": 5}), name="step-5")
    marker = xr.checkpoint_done()
    assert not xr.should_checkpoint() and not (ckpt / xr.REQUEST_FILE).exists()
    done = json.loads(Path(marker).read_text())
    assert done["name"] == "step-5" and done["pid"] == os.getpid()


def test_sigusr1_asks_for_a_checkpoint(ckpt):
    os.kill(os.getpid(), signal.SIGUSR1)  # the handler installed at import catches it
    wait_for(xr.should_checkpoint, what="SIGUSR1 to be noted")
    xr.checkpoint_done("step-0")
    assert not xr.should_checkpoint()


def test_under_xinhe_an_attempt_answers_one_request(ckpt, monkeypatch):
    """A gang's agents all ask the shared directory; rank 0 answers once per attempt."""
    monkeypatch.setenv("XINHE_ATTEMPT", "2")
    (ckpt / xr.REQUEST_FILE).touch()
    assert xr.should_checkpoint()
    xr.checkpoint_done("step-5")
    (ckpt / xr.REQUEST_FILE).touch()  # the sibling replica's agent, a moment late
    os.kill(os.getpid(), signal.SIGUSR1)
    time.sleep(0.05)
    assert xr._signal_state["requested"] and not xr.should_checkpoint()
    monkeypatch.delenv("XINHE_ATTEMPT")  # outside Xinhe every request counts
    assert xr.should_checkpoint()


def test_on_checkpoint_chains_the_previous_handler(ckpt):
    calls = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append("previous"))
    previous = xr.on_checkpoint(lambda: calls.append("callback"))
    assert callable(previous)
    os.kill(os.getpid(), signal.SIGUSR1)
    wait_for(lambda: len(calls) == 2, what="both handlers")
    assert calls == ["previous", "callback"] and xr.should_checkpoint()


def test_on_checkpoint_outside_the_main_thread_is_a_clear_error(ckpt):
    errors = []
    thread = threading.Thread(target=lambda: _capture(errors, lambda: xr.on_checkpoint(print)))
    thread.start()
    thread.join()
    assert len(errors) == 1 and "main thread" in str(errors[0])
    with pytest.raises(TypeError):
        xr.on_checkpoint("not callable")  # type: ignore[arg-type]


def _capture(errors, action):
    try:
        action()
    except RuntimeError as err:
        errors.append(err)


# -- progress -------------------------------------------------------------------------------
def test_progress_is_a_no_op_outside_xinhe(ckpt, tmp_path):
    assert xr.report_progress(10, 2.5) is False
    assert list(tmp_path.glob("*.jsonl")) == []


def test_progress_appends_one_json_line_per_report(ckpt, tmp_path, monkeypatch):
    progress = tmp_path / "progress.jsonl"
    monkeypatch.setenv("XINHE_PROGRESS_FILE", str(progress))
    monkeypatch.setenv("XINHE_JOB_ID", "j-7")
    assert xr.report_progress(10, 2.5) and xr.report_progress(20, 3)
    lines = [json.loads(line) for line in progress.read_text().splitlines()]
    assert [(r["step"], r["steps_per_second"], r["job_id"]) for r in lines] == [
        (10, 2.5, "j-7"), (20, 3.0, "j-7")]
    assert lines[0]["time"] <= lines[1]["time"]


@pytest.mark.parametrize("step, speed", [(-1, 1.0), (1, float("nan")), (1, -2.0), ("x", 1.0)])
def test_bad_progress_warns_and_never_raises(ckpt, tmp_path, monkeypatch, step, speed):
    progress = tmp_path / "progress.jsonl"
    monkeypatch.setenv("XINHE_PROGRESS_FILE", str(progress))
    with pytest.warns(RuntimeWarning, match="report_progress"):
        assert xr.report_progress(step, speed) is False
    assert not progress.exists()


def test_unwritable_progress_file_never_raises(ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("XINHE_PROGRESS_FILE", str(tmp_path))  # a directory
    with pytest.warns(RuntimeWarning):
        assert xr.report_progress(1, 1.0) is False


# -- the example job, as real processes --------------------------------------------------------
def job_env(directory: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XINHE_")}
    env.update(XINHE_CHECKPOINT_DIR=str(directory),
               XINHE_PROGRESS_FILE=str(directory.parent / f"{directory.name}.progress"))
    return env


def final_result(output: str) -> dict:
    line = next(line for line in output.splitlines() if line.startswith("result "))
    return json.loads(line.removeprefix("result "))


def run_job(directory: Path, *args: str) -> dict:
    done = subprocess.run([*EXAMPLE, "--steps", "300", *args], env=job_env(directory),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return final_result(done.stdout)


def start_job(directory: Path) -> subprocess.Popen:
    return subprocess.Popen([*EXAMPLE, "--steps", "300", "--step-sleep", "0.005"],
                            env=job_env(directory), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def stop(job: subprocess.Popen) -> str:
    if job.poll() is None:
        job.kill()
    output, _ = job.communicate(timeout=30)
    return output


@pytest.fixture
def straight(tmp_path):
    """The result of the example run straight through, untouched."""
    result = run_job(tmp_path / "straight")
    assert (result["steps"], result["resumed_from"]) == (300, 0)
    return result


def same_training(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in ("steps", "w", "b", "loss"))


def test_interrupted_and_resumed_job_ends_exactly_where_a_straight_run_does(
        tmp_path, straight):
    directory = tmp_path / "interrupted"
    job = start_job(directory)
    try:
        wait_for(lambda: (directory / "LATEST").exists() or job.poll() is not None,
                 what="the first periodic checkpoint")
        assert job.poll() is None, stop(job)
        job.send_signal(signal.SIGUSR1)
        wait_for(lambda: (directory / xr.DONE_FILE).exists() or job.poll() is not None,
                 what="the requested checkpoint")
        job.send_signal(signal.SIGTERM)
        assert job.wait(timeout=30) == -signal.SIGTERM, "stopped before finishing"
    finally:
        output = stop(job)
    assert "(requested)" in output and "result " not in output
    requested = json.loads((directory / xr.DONE_FILE).read_text())["name"]
    resumed = run_job(directory)
    assert 0 < int(requested.split("-")[1].split(".")[0]) <= resumed["resumed_from"] < 300
    assert same_training(resumed, straight), (resumed, straight)


def test_request_file_gets_a_checkpoint_and_the_job_carries_on(tmp_path, straight):
    directory = tmp_path / "requested"
    job = start_job(directory)
    try:
        wait_for(lambda: directory.exists() or job.poll() is not None, what="the job to start")
        (directory / xr.REQUEST_FILE).touch()
        wait_for(lambda: (directory / xr.DONE_FILE).exists() or job.poll() is not None,
                 what="the requested checkpoint")
        assert job.wait(timeout=120) == 0
    finally:
        output = stop(job)
    assert not (directory / xr.REQUEST_FILE).exists()
    assert output.count("(requested)") == 1
    assert same_training(final_result(output), straight)
    progress = [json.loads(line) for line in
                (tmp_path / "requested.progress").read_text().splitlines()]
    assert progress[-1]["step"] == 300 and all(p["steps_per_second"] > 0 for p in progress)


def test_a_run_resumed_after_completion_has_nothing_left_to_do(tmp_path, straight):
    directory = tmp_path / "straight"
    again = run_job(directory)
    assert again["resumed_from"] == 300 and same_training(again, straight)
