"""Ask-signals reach only the processes that handle them (real processes, /proc)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents import signals

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")

CATCHER = """
import signal, sys, time
got = []
signal.signal(signal.SIGUSR1, lambda *_: got.append(1))
print("ready", flush=True)
while not got:
    time.sleep(0.01)
print("asked", flush=True)
"""


def test_sigcgt_and_stat_parsing() -> None:
    assert signals._catches("Name:\tx\nSigCgt:\t0000000000004002\n", signal.SIGUSR1) is False
    assert signals._catches("SigCgt:\t0000000000004002\n", signal.SIGINT)  # bit 1 = signal 2
    assert signals._catches("Name:\tx\n", signal.SIGUSR1) is False
    mask = format(1 << (signal.SIGUSR1 - 1), "016x")
    assert signals._catches(f"SigCgt:\t{mask}\n", signal.SIGUSR1)
    assert signals._group_of("42 (we (ird) name) S 1 4242 4242 0 -1") == 4242
    assert signals.catchers(1, signal.SIGUSR1, Path("/nonexistent")) is None


def test_a_shell_wrapper_survives_and_the_job_is_asked(tmp_path: Path) -> None:
    """bash does not catch SIGUSR1: killpg would end the replica; ask_group does not."""
    script = tmp_path / "catcher.py"
    script.write_text(CATCHER)
    shell = subprocess.Popen(["bash", "-c", f"{sys.executable} {script}; echo wrapper-done"],
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert shell.stdout is not None
        assert shell.stdout.readline().strip() == "ready"
        asked = signals.ask_group(shell.pid, signal.SIGUSR1)
        assert asked and shell.pid not in asked  # the python child only
        assert shell.stdout.readline().strip() == "asked"
        assert shell.stdout.readline().strip() == "wrapper-done"
        assert shell.wait(timeout=10) == 0
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()


def test_a_process_without_a_handler_is_not_signalled() -> None:
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        time.sleep(0.1)
        assert signals.ask_group(sleeper.pid, signal.SIGUSR1) == []
        time.sleep(0.2)
        assert sleeper.poll() is None  # SIGUSR1's default action would have ended it
    finally:
        sleeper.kill()
        sleeper.wait()
