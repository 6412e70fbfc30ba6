"""The agent's half of the checkpoint protocol (migration).

Asked by the control plane to checkpoint a replica, the agent

1. writes ``<checkpoint_dir>/.xinhe-checkpoint-request`` and sends SIGUSR1 to
   the replica's process group (a job polls ``xinhe_runtime.should_checkpoint()``,
   which sees either);
2. waits until ``.xinhe-checkpoint-done`` answers it: newer than the request,
   or naming the replica's attempt (the job calls ``checkpoint_done()`` once
   the checkpoint is complete and marked), or the timeout passes, or the
   process exits;
3. stops the replica (SIGTERM, SIGKILL after the grace), with a message that
   says how the checkpoint went; the control plane re-places the job.

Waiting happens on a thread per request, so the agent's connection keeps
flowing. The file names are those of ``xinhe_runtime`` (not imported here:
importing it installs a SIGUSR1 handler in the importing process).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agents.launcher import ReplicaProcess

log = logging.getLogger(__name__)

REQUEST_FILE = ".xinhe-checkpoint-request"
DONE_FILE = ".xinhe-checkpoint-done"
POLL_SECONDS = 0.02


@dataclass(frozen=True)
class CheckpointOutcome:
    """How a checkpoint request ended: ``completed`` only when the job answered."""

    completed: bool
    message: str
    seconds: float
    name: str = ""


def _answer(directory: Path, since_ns: int, attempt: int | None) -> dict | None:
    """The job's done record when it answers this request, else None.

    It answers when written after our request, or, when it names the
    replica's ``attempt``, whenever in that attempt: in a gang, rank 0 may
    answer a sibling agent's request before ours was even written (and an
    attempt is migrated at most once, so that answer is the one we wait for).
    """
    path = directory / DONE_FILE
    try:
        fresh = path.stat().st_mtime_ns >= since_ns
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # absent, or being replaced right now: look again
    if not isinstance(record, dict):
        record = {}
    same_attempt = attempt is not None and record.get("attempt") == attempt
    return record if fresh or same_attempt else None


def request_checkpoint(directory: Path, send_signal: Callable[[int], None],
                       exited: Callable[[], bool], timeout: float,
                       attempt: int | None = None, clock: Callable[[], float] = time.monotonic,
                       sleep: Callable[[float], None] = time.sleep) -> CheckpointOutcome:
    """Ask the job in ``directory`` for a checkpoint and wait for its answer.

    Never raises for the job's sake: an unwritable directory or a job that
    does not answer ends as ``completed=False`` with the reason, so the
    caller can stop the replica either way (it resumes from its last
    complete checkpoint). A request left unanswered is withdrawn, so the
    resumed job is not asked again by a stale file.
    """
    started = clock()
    request = directory / REQUEST_FILE
    try:
        directory.mkdir(parents=True, exist_ok=True)
        request.write_text(json.dumps({"time": time.time(), "pid": os.getpid()}) + "\n",
                           encoding="utf-8")
        since = request.stat().st_mtime_ns
    except OSError as err:
        return CheckpointOutcome(False, f"cannot write the checkpoint request: {err}", 0.0)
    send_signal(signal.SIGUSR1)
    while True:
        record = _answer(directory, since, attempt)
        elapsed = clock() - started
        if record is not None:
            _withdraw(request, since)
            name = str(record.get("name", ""))
            return CheckpointOutcome(True, f"checkpoint {name or '(unnamed)'} complete in "
                                           f"{elapsed:.2f}s", elapsed, name)
        if exited():
            return CheckpointOutcome(False, "the process exited before checkpointing", elapsed)
        if elapsed >= timeout:
            _withdraw(request, since)
            return CheckpointOutcome(False, f"no checkpoint within {timeout:g}s; resuming from "
                                            f"the last complete one", elapsed)
        sleep(POLL_SECONDS)


def _withdraw(request: Path, since_ns: int) -> None:
    """Remove our request if it is still there (answered by a sibling, or
    never answered), so the resumed job is not asked again by a stale file."""
    try:
        if request.stat().st_mtime_ns == since_ns:
            request.unlink()
    except OSError:
        pass


class Checkpointer:
    """Runs checkpoint-then-stop requests, at most one per replica at a time."""

    def __init__(self, default_timeout: float = 120.0) -> None:
        self.default_timeout = default_timeout
        self._lock = threading.Lock()
        self._active: set[tuple[str, int, int]] = set()

    def start(self, process: ReplicaProcess, timeout: float, grace: float,
              reason: str) -> bool:
        """Checkpoint then stop ``process`` on a new thread; False when a request
        for it is already running or it has ended (repeats are harmless)."""
        key = process.spec.key
        with self._lock:
            if key in self._active or process.done:
                return False
            self._active.add(key)
        thread = threading.Thread(
            target=self._run, args=(process, timeout or self.default_timeout, grace, reason),
            name=f"checkpoint-{process.spec.label}", daemon=True)
        thread.start()
        return True

    def _run(self, process: ReplicaProcess, timeout: float, grace: float, reason: str) -> None:
        try:
            outcome = self.checkpoint(process, timeout)
            log.info("replica %s: %s", process.spec.label, outcome.message)
            process.stop(grace, reason=f"{reason or 'migrating'}: {outcome.message}")
        finally:
            with self._lock:
                self._active.discard(process.spec.key)

    @staticmethod
    def checkpoint(process: ReplicaProcess, timeout: float) -> CheckpointOutcome:
        if not process.spec.checkpoint_dir:
            return CheckpointOutcome(False, "the job has no checkpoint directory", 0.0)
        in_backend = getattr(process, "checkpoint", None)
        if in_backend is not None:  # a backend that reaches the job its own way (pods: exec)
            return in_backend(timeout)
        return request_checkpoint(Path(process.spec.checkpoint_dir), process.send_signal,
                                  lambda: process.done, timeout, process.spec.attempt)
