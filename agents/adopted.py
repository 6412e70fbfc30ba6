"""A replica an earlier agent on this node launched, watched by this one.

After a restart the agent finds the replicas of its journal (journal.py)
still running in their own process groups. It is not their parent, so it
cannot wait for them: it polls that the process (same pid, same start time)
is still there, and once it is gone reads the exit status the wrapper left
(replica_wrapper.py). No exit file means the status is unknown, which is
reported as a failure: success is reported only for an exit status of 0.

Output is resumed with the same chunk boundaries as before the restart
(replica_output.py), so the control plane's per-offset deduplication keeps
the log whole and without copies. The handle reports through the same
callbacks as :class:`~agents.launcher.ReplicaProcess`, except that it
starts with RUNNING (the replica was already running), reported at once by
:meth:`AdoptedReplica.start` as :meth:`agents.agent.Agent.adopt` expects.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path

from agents.journal import JournalEntry, is_alive
from agents.launcher import (
    READER_JOIN_SECONDS,
    OutputCallback,
    ReplicaPhase,
    ReplicaSpec,
    StateCallback,
)
from agents.replica_output import STREAMS, OutputTail, read_exit_status
from agents.signals import ASK_SIGNALS, GroupStopper, ask_group

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2


def spec_of(entry: JournalEntry) -> ReplicaSpec:
    """What the journal knows of the replica's spec (no command: it runs)."""
    return ReplicaSpec(job_id=entry.job_id, attempt=entry.attempt, rank=entry.rank,
                       command=(), epoch=entry.epoch, family=entry.family,
                       device_indices=tuple(entry.device_indices),
                       max_runtime=entry.max_runtime or None,
                       checkpoint_dir=entry.checkpoint_dir)


class AdoptedReplica(GroupStopper):
    """The :class:`~agents.launcher.ReplicaHandle` of a journalled replica.

    Built stopped: the agent reads :attr:`log_offsets` (where the resent
    output starts), then calls :meth:`start`.
    """

    def __init__(self, entry: JournalEntry, on_state: StateCallback,
                 on_output: OutputCallback | None = None, *, runtime_grace: float = 10.0,
                 replay_bytes: int = 16 << 20) -> None:
        self.entry = entry
        self.spec = spec_of(entry)
        self.phase: ReplicaPhase | None = ReplicaPhase.RUNNING
        self.returncode: int | None = None
        self._on_state = on_state
        self._on_output = on_output
        self._runtime_grace = runtime_grace
        self._lock = threading.Lock()
        self._stop_reason: str | None = None
        self._expired = False
        self._gone = False
        self._exited = threading.Event()
        self._done = threading.Event()
        self._timers: list[threading.Timer] = []
        output_dir = Path(entry.output_dir)
        self._tails = [OutputTail(output_dir, stream, self._emit, self._exited, resume=True,
                                  replay_bytes=replay_bytes) for stream in STREAMS]

    @property
    def log_offsets(self) -> dict[str, int]:
        """Per stream, the log offset of the first chunk this handle emits."""
        return {tail.stream: tail.start_offset for tail in self._tails}

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def start(self) -> None:
        """Report RUNNING, then resend the output and watch the process."""
        self._report(ReplicaPhase.RUNNING, 0, "re-adopted after an agent restart")
        for tail in self._tails:
            tail.start()
        if self.entry.max_runtime:
            left = self.entry.launched_at + self.entry.max_runtime - time.time()
            self._timer(max(0.0, left), self._expire)
        threading.Thread(target=self._watch, daemon=True,
                         name=f"adopted-{self.spec.label}").start()

    def stop(self, grace: float = 10.0, reason: str = "") -> None:
        """SIGTERM the group now, SIGKILL after ``grace``; a no-op once ended."""
        with self._lock:
            if self._done.is_set() or self._gone:
                return
            if self._stop_reason is None:
                self._stop_reason = reason or "stopped on request"
        self._terminate(grace)

    def send_signal(self, sig: int) -> None:
        self._signal_group(signal.Signals(sig))

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    # -- internals ---------------------------------------------------------
    def _emit(self, stream: str, data: bytes) -> None:
        if self._on_output is not None:
            self._on_output(self, stream, data)  # type: ignore[arg-type]

    def _expire(self) -> None:
        with self._lock:
            if self._gone:
                return
            self._expired = True
        log.warning("adopted replica %s exceeded max runtime", self.spec.label)
        self._terminate(self._runtime_grace)

    def _signal_group(self, sig: signal.Signals) -> None:
        # Only while the journalled process is the one running under that pid:
        # a recycled pid (another start time) is never signalled.
        with self._lock:
            if self._gone or not is_alive(self.entry):
                return
            if sig in ASK_SIGNALS:
                ask_group(self.entry.pid, sig)  # never kill what does not handle it
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.entry.pid, sig)

    def _watch(self) -> None:
        while is_alive(self.entry):
            time.sleep(POLL_SECONDS)
        with self._lock:
            self._gone = True
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()
        self._exited.set()
        for tail in self._tails:
            tail.join(READER_JOIN_SECONDS)
        phase, code, message = self._outcome()
        self.returncode = code
        self._report(phase, code, message)
        self._done.set()

    def _report(self, phase: ReplicaPhase, code: int, message: str) -> None:
        self.phase = phase
        try:
            self._on_state(self, phase, code, message)  # type: ignore[arg-type]
        except Exception:
            log.exception("state callback failed for %s", self.spec.label)

    def _outcome(self) -> tuple[ReplicaPhase, int, str]:
        status = read_exit_status(Path(self.entry.output_dir))
        code = status[0] if status else -1
        if self._stop_reason is not None:
            return ReplicaPhase.STOPPED, code, self._stop_reason
        if self._expired:
            return ReplicaPhase.FAILED, code, f"exceeded max runtime ({self.entry.max_runtime:g}s)"
        if status is None:
            return (ReplicaPhase.FAILED, -1, "exit status unknown: the replica ended while "
                    "the agent was down and left no exit status")
        if status == (0, False):
            return ReplicaPhase.SUCCEEDED, 0, ""
        if status[1]:
            return ReplicaPhase.FAILED, code, f"killed by signal {_signal_name(-code)}"
        return ReplicaPhase.FAILED, code, f"exited with code {code}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
