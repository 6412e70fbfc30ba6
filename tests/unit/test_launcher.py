"""The process launcher, with real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from agents.launcher import CHUNK_BYTES, Launcher, ReplicaPhase, ReplicaProcess, ReplicaSpec

PY = sys.executable
PRINT_ENV = "import json, os; print(json.dumps(dict(os.environ)))"


class Recorder:
    """Collects what a replica reports, thread-safely."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.states: list[tuple[ReplicaPhase, int, str]] = []
        self.output: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self.chunk_sizes: list[int] = []

    def on_state(self, proc: ReplicaProcess, phase: ReplicaPhase, code: int, msg: str) -> None:
        with self.lock:
            self.states.append((phase, code, msg))

    def on_output(self, proc: ReplicaProcess, stream: str, data: bytes) -> None:
        with self.lock:
            self.output[stream] += data
            self.chunk_sizes.append(len(data))

    @property
    def phases(self) -> list[ReplicaPhase]:
        return [s[0] for s in self.states]

    def text(self, stream: str = "stdout") -> str:
        return self.output[stream].decode()


def spec(*command: str, **overrides) -> ReplicaSpec:
    fields = dict(job_id="j-1", attempt=2, rank=1, command=command, job_name="demo",
                  world_size=4, master_addr="10.0.0.5", master_port=29500,
                  family="ascend", model="910B", device_indices=(2, 3))
    fields.update(overrides)
    return ReplicaSpec(**fields)


@pytest.fixture
def launcher(tmp_path: Path) -> Launcher:
    return Launcher(tmp_path / "work", runtime_grace=0.3)


def run(launcher: Launcher, replica: ReplicaSpec, device_env=None,
        timeout: float = 5.0) -> tuple[ReplicaProcess, Recorder]:
    rec = Recorder()
    proc = launcher.start(replica, device_env or {}, rec.on_state, rec.on_output)
    assert proc.wait(timeout), f"replica still running after {timeout}s: {rec.states}"
    return proc, rec


def wait_for_output(rec: Recorder, needle: str, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while needle not in rec.text():
        assert time.monotonic() < deadline, f"no {needle!r} in output: {rec.text()!r}"
        time.sleep(0.01)


def test_env_is_rendered_for_the_replica(launcher, monkeypatch, tmp_path):
    monkeypatch.setenv("XINHE_JOB_ID", "inherited-should-vanish")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    monkeypatch.setenv("RANK", "99")
    monkeypatch.setenv("KEEP_ME", "yes")
    device_env = {"ASCEND_RT_VISIBLE_DEVICES": "2,3", "XINHE_DEVICE": "npu",
                  "XINHE_DIST_BACKEND": "hccl", "XINHE_ACCELERATOR_FAMILY": "ascend"}
    replica = spec(PY, "-c", PRINT_ENV, env={"EPOCHS": "3"},
                   checkpoint_dir=str(tmp_path / "ckpt"))
    _, rec = run(launcher, replica, device_env)
    env = json.loads(rec.text())
    assert {k: env[k] for k in (
        "XINHE_JOB_ID", "XINHE_JOB_NAME", "XINHE_ATTEMPT", "XINHE_RANK", "XINHE_WORLD_SIZE",
        "XINHE_LOCAL_RANK", "XINHE_MASTER_ADDR", "XINHE_MASTER_PORT", "XINHE_CHECKPOINT_DIR",
        "XINHE_ACCELERATOR_FAMILY", "XINHE_ACCELERATOR_MODEL", "XINHE_DEVICE",
        "XINHE_DIST_BACKEND", "ASCEND_RT_VISIBLE_DEVICES", "RANK", "WORLD_SIZE",
        "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "EPOCHS", "KEEP_ME")} == {
        "XINHE_JOB_ID": "j-1", "XINHE_JOB_NAME": "demo", "XINHE_ATTEMPT": "2",
        "XINHE_RANK": "1", "XINHE_WORLD_SIZE": "4", "XINHE_LOCAL_RANK": "0",
        "XINHE_MASTER_ADDR": "10.0.0.5", "XINHE_MASTER_PORT": "29500",
        "XINHE_CHECKPOINT_DIR": str(tmp_path / "ckpt"), "XINHE_ACCELERATOR_FAMILY": "ascend",
        "XINHE_ACCELERATOR_MODEL": "910B", "XINHE_DEVICE": "npu", "XINHE_DIST_BACKEND": "hccl",
        "ASCEND_RT_VISIBLE_DEVICES": "2,3", "RANK": "1", "WORLD_SIZE": "4",
        "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29500", "LOCAL_RANK": "0",
        "EPOCHS": "3", "KEEP_ME": "yes"}
    assert "CUDA_VISIBLE_DEVICES" not in env


def test_checkpoint_dir_absent_when_unset(launcher):
    _, rec = run(launcher, spec(PY, "-c", PRINT_ENV))
    assert "XINHE_CHECKPOINT_DIR" not in json.loads(rec.text())


def test_cwd_is_a_fresh_replica_dir_or_the_working_dir(launcher, tmp_path):
    proc, rec = run(launcher, spec(PY, "-c", "import os; print(os.getcwd())"))
    assert Path(rec.text().strip()) == proc.cwd
    assert proc.cwd.parent.parent == tmp_path / "work" and proc.cwd.is_dir()
    _, rec = run(launcher, spec(PY, "-c", "import os; print(os.getcwd())",
                                working_dir=str(tmp_path)))
    assert Path(rec.text().strip()) == tmp_path


def test_success_reports_starting_running_succeeded_and_logs(launcher):
    code = "import sys; print('out'); print('err', file=sys.stderr)"
    proc, rec = run(launcher, spec(PY, "-c", code))
    assert rec.states == [(ReplicaPhase.STARTING, 0, ""), (ReplicaPhase.RUNNING, 0, ""),
                          (ReplicaPhase.SUCCEEDED, 0, "")]
    assert (rec.text("stdout"), rec.text("stderr")) == ("out\n", "err\n")
    assert proc.returncode == 0 and proc.done


def test_large_output_arrives_whole_in_bounded_chunks(launcher):
    _, rec = run(launcher, spec(PY, "-c", "import sys; sys.stdout.write('x' * 300000)"))
    assert len(rec.output["stdout"]) == 300000
    assert max(rec.chunk_sizes) <= CHUNK_BYTES


@pytest.mark.parametrize("code, exit_code, message", [
    ("raise SystemExit(3)", 3, "exited with code 3"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", -9,
     "killed by signal SIGKILL"),
])
def test_failure_exit_codes(launcher, code, exit_code, message):
    _, rec = run(launcher, spec(PY, "-c", code))
    assert rec.states[-1] == (ReplicaPhase.FAILED, exit_code, message)


def test_command_not_found_fails_with_the_error(launcher):
    proc, rec = run(launcher, spec("/no/such/xinhe-binary", "--flag"))
    assert rec.phases == [ReplicaPhase.STARTING, ReplicaPhase.FAILED]
    assert "could not start" in rec.states[-1][2] and "xinhe-binary" in rec.states[-1][2]
    assert proc.pid is None


def test_missing_working_dir_fails(launcher, tmp_path):
    bad = tmp_path / "file"
    bad.write_text("not a directory")
    _, rec = run(launcher, spec(PY, "-c", "pass", working_dir=str(bad / "sub")))
    assert rec.phases[-1] is ReplicaPhase.FAILED


def test_stop_terminates_politely(launcher):
    rec = Recorder()
    code = "import time; print('up', flush=True); time.sleep(30)"
    proc = launcher.start(spec(PY, "-c", code), {}, rec.on_state, rec.on_output)
    wait_for_output(rec, "up")
    proc.stop(grace=5.0, reason="cancelled by tenant")
    assert proc.wait(3.0)
    assert rec.states[-1] == (ReplicaPhase.STOPPED, -signal.SIGTERM, "cancelled by tenant")


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(launcher):
    rec = Recorder()
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            "print('armed', flush=True); time.sleep(30)")
    proc = launcher.start(spec(PY, "-c", code), {}, rec.on_state, rec.on_output)
    wait_for_output(rec, "armed")
    started = time.monotonic()
    proc.stop(grace=0.3)
    assert proc.wait(3.0)
    assert time.monotonic() - started >= 0.25
    assert rec.states[-1][:2] == (ReplicaPhase.STOPPED, -signal.SIGKILL)


def test_stop_reaches_the_whole_process_group(launcher, tmp_path):
    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys, time;"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']);"
            f"open({str(pid_file)!r}, 'w').write(str(c.pid));"
            "print('forked', flush=True); time.sleep(30)")
    rec = Recorder()
    proc = launcher.start(spec(PY, "-c", code), {}, rec.on_state, rec.on_output)
    wait_for_output(rec, "forked")
    proc.stop(grace=1.0)
    assert proc.wait(3.0)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 2.0
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie left to init counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return True


def test_max_runtime_fails_the_replica(launcher):
    replica = spec(PY, "-c", "import time; time.sleep(30)", max_runtime=0.2)
    _, rec = run(launcher, replica, timeout=3.0)
    phase, _, message = rec.states[-1]
    assert phase is ReplicaPhase.FAILED and message.startswith("exceeded max runtime")


def test_stop_after_exit_changes_nothing(launcher):
    proc, rec = run(launcher, spec(PY, "-c", "pass"))
    proc.stop(grace=0.1)
    assert rec.phases[-1] is ReplicaPhase.SUCCEEDED and len(rec.states) == 3


def test_leftovers_of_a_finished_replica_are_killed(launcher, tmp_path):
    pid_file = tmp_path / "orphan.pid"
    code = ("import subprocess, sys;"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'],"
            " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL);"
            f"open({str(pid_file)!r}, 'w').write(str(c.pid))")
    _, rec = run(launcher, spec(PY, "-c", code))
    assert rec.phases[-1] is ReplicaPhase.SUCCEEDED
    orphan = int(pid_file.read_text())
    deadline = time.monotonic() + 2.0
    while _alive(orphan) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(orphan)
