"""Ask-signals (SIGUSR1: checkpoint) for only the processes that handle them.

A process that has not installed a handler dies of SIGUSR1 (its default
action), so signalling a replica's whole process group would kill a shell
wrapper around the job, or the job itself while it is still importing its
runtime. The agent therefore signals only the members of the group whose
``SigCgt`` mask in ``/proc/<pid>/status`` says they catch the signal; the
request file in the checkpoint directory reaches the others. Where ``/proc``
cannot tell (not Linux), the whole group is signalled as before.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

PROC = Path("/proc")


def _group_of(stat: str) -> int:
    """The process group id from a ``/proc/<pid>/stat`` line (the command name,
    in parentheses, may itself hold spaces and parentheses)."""
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[2])  # state, ppid, pgrp, ...


def _catches(status: str, sig: int) -> bool:
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    return False


def catchers(pgid: int, sig: int, proc: Path = PROC) -> list[int] | None:
    """Pids in process group ``pgid`` that catch ``sig``; None when ``proc`` is absent."""
    if not proc.is_dir():
        return None
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if _group_of((entry / "stat").read_text()) != pgid:
                continue
            if _catches((entry / "status").read_text(), sig):
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile, or not ours to read
    return sorted(found)


def ask_group(pgid: int, sig: signal.Signals, proc: Path = PROC) -> list[int] | None:
    """Send ``sig`` to the members of ``pgid`` that catch it; the pids signalled
    (None: ``proc`` could not tell, so the whole group was signalled)."""
    members = catchers(pgid, sig, proc)
    if members is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        return None
    for pid in members:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return members


# Signals that ask a job for something rather than end it.
ASK_SIGNALS = frozenset({signal.SIGUSR1, signal.SIGUSR2})


class GroupStopper:
    """SIGTERM now and SIGKILL after a grace, for a replica's process group.

    Shared by the replica handles that own a group (a launched process, an
    adopted one): the class provides ``_lock`` (a lock), ``_timers`` (a list)
    and ``_signal_group(sig)``, which decides whether the group may still be
    signalled.
    """

    _lock: threading.Lock
    _timers: list[threading.Timer]

    def _signal_group(self, sig: signal.Signals) -> None:
        raise NotImplementedError

    def _timer(self, seconds: float, action: Callable[[], None]) -> None:
        timer = threading.Timer(seconds, action)
        timer.daemon = True
        with self._lock:
            self._timers.append(timer)
        timer.start()

    def _terminate(self, grace: float) -> None:
        if grace <= 0:
            self._signal_group(signal.SIGKILL)
            return
        self._signal_group(signal.SIGTERM)
        self._timer(grace, lambda: self._signal_group(signal.SIGKILL))
