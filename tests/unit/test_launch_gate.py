"""The launch gate: a replica's command starts only once the agent has
journalled it, and never when the agent went away before releasing it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from agents.launcher import Launcher, ReplicaPhase, ReplicaProcess
from agents.replica_wrapper import GO, NOT_RELEASED
from tests.unit.test_launcher import Recorder, spec

WRAPPER = Path(__file__).parents[2] / "agents" / "replica_wrapper.py"


def wrapper(tmp_path: Path, marker: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-I", "-S", str(WRAPPER), str(tmp_path / "exit"),
         "sh", "-c", f"touch {marker}; read line || true; echo stdin-was-empty"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_an_unreleased_wrapper_never_runs_the_command(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    proc = wrapper(tmp_path, marker)
    time.sleep(0.3)  # the wrapper is up and waiting
    assert not marker.exists()
    assert proc.stdin is not None
    proc.stdin.close()  # what the agent's death does to the pipe
    assert proc.wait(10) is not None and proc.stderr is not None
    err = proc.stderr.read()
    assert proc.returncode == NOT_RELEASED
    assert b"not started" in err
    assert not marker.exists() and not (tmp_path / "exit").exists()


def test_a_released_wrapper_runs_the_command_with_an_empty_stdin(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    proc = wrapper(tmp_path, marker)
    assert proc.stdin is not None
    proc.stdin.write(GO + b"more bytes the command must not see\n")
    proc.stdin.close()
    assert proc.wait(10) is not None and proc.stdout is not None
    out = proc.stdout.read()
    assert proc.returncode == 0 and marker.exists()
    assert out == b"stdin-was-empty\n"
    assert (tmp_path / "exit").read_text() == "exit 0\n"


def test_the_journal_is_written_before_the_command_starts(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    seen: list[bool] = []
    launcher = Launcher(tmp_path / "work", runtime_grace=0.3)
    journal = launcher._journal

    def slow_journal(process: ReplicaProcess) -> None:
        time.sleep(0.5)  # a slow disk: the command must still be held back
        seen.append(marker.exists())
        journal(process)

    launcher._journal = slow_journal  # type: ignore[method-assign]
    rec = Recorder()
    proc = launcher.start(spec("touch", str(marker)), {}, rec.on_state, rec.on_output)
    assert proc.wait(10)
    assert seen == [False] and marker.exists()
    assert rec.phases[-1] == ReplicaPhase.SUCCEEDED
    assert [e.job_id for e in launcher.recover()] == ["j-1"]
