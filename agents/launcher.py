"""Run one replica as a local process and report what happens to it.

Each replica runs in its own session (hence its own process group), so a
stop reaches every process the job forked: SIGTERM to the group, SIGKILL
after the grace period. When the leader exits, whatever it left behind in
its group is killed too: a finished replica must release its devices.

Each replica runs under a tiny wrapper (replica_wrapper.py) that records
the command's exit status in a file, and writes its output into files that
two tail threads follow (replica_output.py): unlike pipes, both survive the
agent, so an agent restarted on the node re-adopts the replica from its
restart journal (journal.py, adopted.py) and still reports its true end.
Output is handed on in chunks of at most ``CHUNK_BYTES``; the final state is
reported only after both files are drained, so a consumer sees every byte
before the verdict. A third thread waits for exit (blocking, no polling).
Nothing here knows about protobuf: the agent translates.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agents.journal import JournalEntry, ReplicaJournal, process_start_time
from agents.replica_output import CHUNK_BYTES, EXIT_FILE, STREAMS, OutputTail
from agents.replica_wrapper import GO
from agents.signals import ASK_SIGNALS, GroupStopper, ask_group
from controlplane.model.catalogue import Catalogue, default_catalogue

log = logging.getLogger(__name__)

__all__ = ["CHUNK_BYTES"]  # re-exported: other backends chunk output the same
READER_JOIN_SECONDS = 5.0
WRAPPER = Path(__file__).with_name("replica_wrapper.py")
# Names the launcher owns; inherited values would mislead the job.
TORCH_DIST_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")


class ReplicaPhase(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def terminal(self) -> bool:
        return self in (ReplicaPhase.SUCCEEDED, ReplicaPhase.FAILED, ReplicaPhase.STOPPED)


@dataclass(frozen=True)
class ReplicaSpec:
    """What to run for one replica of one attempt of a job."""

    job_id: str
    attempt: int
    rank: int
    command: tuple[str, ...]
    job_name: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    working_dir: str = ""
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 0
    max_runtime: float | None = None  # seconds; None = no limit
    checkpoint_dir: str = ""
    family: str = ""
    model: str = ""
    device_indices: tuple[int, ...] = ()
    epoch: int = 0  # fencing epoch of the assignment (labels a pod)
    cpu_millis: int = 0  # CPU to reserve (pods request it; processes ignore it)
    memory_bytes: int = 0  # host memory to reserve (pods request it)
    image: str = ""  # container image (pods; "" = the executor's default)

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.job_id, self.attempt, self.rank)

    @property
    def label(self) -> str:
        return f"{self.job_id}/a{self.attempt}/r{self.rank}"


#: (process, phase, exit code, message). Called from the launcher's threads.
StateCallback = Callable[["ReplicaProcess", ReplicaPhase, int, str], None]
#: (process, "stdout" | "stderr", chunk).
OutputCallback = Callable[["ReplicaProcess", str, bytes], None]


class ReplicaProcess(GroupStopper):
    """One replica's process: start it, watch it, stop it.

    States are reported through ``on_state`` in order: STARTING, RUNNING,
    then exactly one of SUCCEEDED (exit 0), FAILED (non-zero exit, killed by
    a signal, could not start, or exceeded ``max_runtime``) or STOPPED
    (ended after :meth:`stop`).
    """

    def __init__(self, spec: ReplicaSpec, env: Mapping[str, str], cwd: Path,
                 on_state: StateCallback, on_output: OutputCallback | None = None,
                 runtime_grace: float = 10.0, output_dir: Path | None = None,
                 on_spawn: Callable[[ReplicaProcess], None] | None = None) -> None:
        self.spec = spec
        self.env = dict(env)
        self.cwd = cwd
        self.output_dir = output_dir or cwd / ".xinhe-output"
        self._on_spawn = on_spawn
        self._on_state = on_state
        self._on_output = on_output
        self._runtime_grace = runtime_grace
        self._lock = threading.Lock()
        self._popen: subprocess.Popen[bytes] | None = None
        self._reaped = False
        self._stop_reason: str | None = None
        self._expired = False
        self._timers: list[threading.Timer] = []
        self._readers: list[OutputTail] = []
        self._exited = threading.Event()
        self._done = threading.Event()
        self.phase: ReplicaPhase | None = None
        self.returncode: int | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def start(self) -> None:
        """Spawn the process; a command that cannot start ends FAILED."""
        self._report(ReplicaPhase.STARTING, 0, "")
        try:
            self.cwd.mkdir(parents=True, exist_ok=True)
            popen = self._spawn()
        except (OSError, ValueError, subprocess.SubprocessError) as err:
            log.warning("replica %s could not start: %s", self.spec.label, err)
            self._finish(ReplicaPhase.FAILED, 127, f"could not start: {err}")
            return
        with self._lock:
            self._popen = popen
            stopped_early = self._stop_reason is not None
        if stopped_early:  # never released: the wrapper exits without running it
            _close_gate(popen)
            self._terminate(0)
        log.info("replica %s started, pid %d", self.spec.label, popen.pid)
        if self._on_spawn is not None:  # journalled before the command may run
            try:
                self._on_spawn(self)
            except Exception:
                log.exception("journal entry for %s failed", self.spec.label)
        if not stopped_early:
            _release(popen)
        self._report(ReplicaPhase.RUNNING, 0, "")
        self._readers = [OutputTail(self.output_dir, stream, self._emit_output, self._exited)
                         for stream in STREAMS]
        for reader in self._readers:
            reader.start()
        if self.spec.max_runtime:
            self._timer(self.spec.max_runtime, self._expire)
        self._thread(self._wait_for_exit, popen)

    def stop(self, grace: float = 10.0, reason: str = "") -> None:
        """SIGTERM the group now, SIGKILL after ``grace`` seconds. Non-blocking.

        A replica that already ended is left as it is.
        """
        with self._lock:
            if self._done.is_set() or self._reaped:
                return
            if self._stop_reason is None:
                self._stop_reason = reason or "stopped on request"
        self._terminate(grace)

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the replica's process group (e.g. SIGUSR1: checkpoint).

        A no-op once the leader is reaped, so a reused pid is never signalled.
        """
        self._signal_group(signal.Signals(sig))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the final state is reported; False on timeout."""
        return self._done.wait(timeout)

    # -- internals ---------------------------------------------------------
    def _thread(self, target: Callable[..., None], *args: object) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, daemon=True,
                                  name=f"replica-{self.spec.label}-{target.__name__}")
        thread.start()
        return thread

    def _spawn(self) -> subprocess.Popen[bytes]:
        """The wrapper running the command, its output going to fresh files."""
        _check_executable(self.spec.command, self.env, self.cwd)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for name in (*STREAMS, *(f"{s}.idx" for s in STREAMS), EXIT_FILE):
            (self.output_dir / name).unlink(missing_ok=True)
        with open(self.output_dir / "stdout", "wb") as out, \
                open(self.output_dir / "stderr", "wb") as err:
            return subprocess.Popen(
                [sys.executable, "-I", "-S", str(WRAPPER), str(self.output_dir / EXIT_FILE),
                 *self.spec.command], cwd=self.cwd, env=self.env,
                stdin=subprocess.PIPE, stdout=out, stderr=err, start_new_session=True)

    def _emit_output(self, stream: str, data: bytes) -> None:
        if self._on_output is not None:
            self._on_output(self, stream, data)

    def _expire(self) -> None:
        with self._lock:
            if self._reaped:
                return
            self._expired = True
        log.warning("replica %s exceeded max runtime %.1fs", self.spec.label,
                    self.spec.max_runtime or 0)
        self._terminate(self._runtime_grace)

    def _signal_group(self, sig: signal.Signals) -> None:
        # The unreaped leader keeps its pid (= the group id) from being reused,
        # so signalling the group is safe exactly until it is reaped.
        with self._lock:
            if self._popen is None or self._reaped:
                return
            try:
                if sig in ASK_SIGNALS:
                    ask_group(self._popen.pid, sig)  # never kill what does not handle it
                else:
                    os.killpg(self._popen.pid, sig)
            except ProcessLookupError:
                pass
            except PermissionError as err:
                log.warning("cannot signal replica %s: %s", self.spec.label, err)

    def _wait_for_exit(self, popen: subprocess.Popen[bytes]) -> None:
        if hasattr(os, "waitid"):
            with contextlib.suppress(ChildProcessError):
                os.waitid(os.P_PID, popen.pid, os.WEXITED | os.WNOWAIT)
            self._signal_group(signal.SIGKILL)  # leftovers of the finished leader
        returncode = popen.wait()
        with self._lock:
            self._reaped = True
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()
        self._exited.set()
        for reader in self._readers:
            reader.join(READER_JOIN_SECONDS)
        self._finish(*self._outcome(returncode))

    def _outcome(self, returncode: int) -> tuple[ReplicaPhase, int, str]:
        if self._stop_reason is not None:
            return ReplicaPhase.STOPPED, returncode, self._stop_reason
        if self._expired:
            limit = self.spec.max_runtime or 0
            return ReplicaPhase.FAILED, returncode, f"exceeded max runtime ({limit:g}s)"
        if returncode == 0:
            return ReplicaPhase.SUCCEEDED, 0, ""
        if returncode < 0:
            return ReplicaPhase.FAILED, returncode, f"killed by signal {_signal_name(-returncode)}"
        return ReplicaPhase.FAILED, returncode, f"exited with code {returncode}"

    def _finish(self, phase: ReplicaPhase, code: int, message: str) -> None:
        self.returncode = code
        self._report(phase, code, message)
        self._done.set()

    def _report(self, phase: ReplicaPhase, code: int, message: str) -> None:
        self.phase = phase
        try:
            self._on_state(self, phase, code, message)
        except Exception:
            log.exception("state callback failed for %s", self.spec.label)


def _check_executable(command: tuple[str, ...], env: Mapping[str, str], cwd: Path) -> None:
    """Raise the error exec would, before the wrapper runs: a command that
    cannot start fails at once, with the reason, not as a wrapper exit code."""
    if not command:
        raise ValueError("empty command")
    program = command[0]
    if os.sep in program:
        path = Path(program) if os.path.isabs(program) else cwd / program
        found = str(path) if path.is_file() and os.access(path, os.X_OK) else None
    else:
        found = shutil.which(program, path=env.get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(2, "No such file or directory (or not executable)", program)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


class ReplicaHandle(Protocol):
    """What the agent holds for a running replica, whatever runs it.

    :class:`ReplicaProcess` is the local implementation; other backends (a
    Kubernetes pod) provide the same members and report through the same
    callbacks, in the same order, with the handle as first argument.
    """

    spec: ReplicaSpec
    phase: ReplicaPhase | None

    @property
    def done(self) -> bool: ...
    def stop(self, grace: float = 10.0, reason: str = "") -> None: ...
    def send_signal(self, sig: int) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...


class ReplicaBackend(Protocol):
    """Where the agent runs replicas: :class:`Launcher` (local processes) by default."""

    def start(self, spec: ReplicaSpec, device_env: Mapping[str, str],
              on_state: StateCallback,
              on_output: OutputCallback | None = None) -> ReplicaHandle: ...


def job_env(spec: ReplicaSpec, device_env: Mapping[str, str]) -> dict[str, str]:
    """The variables a replica gets from Xinhe, in increasing precedence: the
    job's env, the adapter's device env, then the runtime variables (rank,
    world size, master address...). Shared by every backend so a pod and a
    process see the same runtime contract."""
    env = dict(spec.env)
    env.update(device_env)
    env.update(_runtime_vars(spec))
    return env


def _release(popen: subprocess.Popen[bytes]) -> None:
    """Let the wrapper start the command (replica_wrapper's launch gate)."""
    try:
        assert popen.stdin is not None
        popen.stdin.write(GO)
        popen.stdin.close()
    except (OSError, ValueError):  # the wrapper is gone already: its exit tells
        _close_gate(popen)


def _close_gate(popen: subprocess.Popen[bytes]) -> None:
    """Close the gate unreleased: the wrapper exits without running the command."""
    try:
        if popen.stdin is not None:
            popen.stdin.close()
    except OSError:
        pass


class Launcher:
    """Renders a replica's environment and working directory, then runs it.

    Every launch is written to the restart journal (``<work_dir>/journal.jsonl``)
    before it is reported RUNNING; :meth:`recover` finds the journalled
    replicas again after the agent restarted, :meth:`release` forgets one.
    """

    def __init__(self, work_dir: str | Path, catalogue: Catalogue | None = None,
                 runtime_grace: float = 10.0) -> None:
        self.work_dir = Path(work_dir)
        self.runtime_grace = runtime_grace
        self.journal = ReplicaJournal(self.work_dir / "journal.jsonl")
        catalogue = catalogue or default_catalogue()
        self._device_vars = frozenset(
            var for fam in catalogue.families.values()
            for var in (*fam.visible_devices_env, *fam.container_visible_devices_env))

    def start(self, spec: ReplicaSpec, device_env: Mapping[str, str],
              on_state: StateCallback,
              on_output: OutputCallback | None = None) -> ReplicaProcess:
        """Start ``spec``; states and output arrive through the callbacks."""
        process = ReplicaProcess(spec, self.render_env(spec, device_env),
                                 self.replica_dir(spec), on_state, on_output,
                                 runtime_grace=self.runtime_grace,
                                 output_dir=self.output_dir(spec), on_spawn=self._journal)
        process.start()
        return process

    def output_dir(self, spec: ReplicaSpec) -> Path:
        """Output files, chunk indexes and exit file of one replica (agent-owned)."""
        return self.work_dir / "output" / _replica_name(spec)

    def recover(self) -> list[JournalEntry]:
        """The journalled replicas not released yet: alive or ended while the
        agent was away. The agent re-adopts them (agents/adopted.py)."""
        return self.journal.load()

    def release(self, key: tuple[str, int, int]) -> None:
        """The replica's final state is acknowledged: forget it, drop its files."""
        self.journal.end(key)
        job_id, attempt, rank = key
        name = _replica_name(ReplicaSpec(job_id=job_id, attempt=attempt, rank=rank,
                                         command=()))
        shutil.rmtree(self.work_dir / "output" / name, ignore_errors=True)

    def _journal(self, process: ReplicaProcess) -> None:
        spec, pid = process.spec, process.pid or 0
        self.journal.record(JournalEntry(
            job_id=spec.job_id, attempt=spec.attempt, rank=spec.rank, epoch=spec.epoch,
            pid=pid, start_time=process_start_time(pid) or 0,
            output_dir=str(process.output_dir), progress_file=str(self.progress_file(spec)),
            launched_at=time.time(), max_runtime=spec.max_runtime or 0.0,
            device_indices=spec.device_indices, family=spec.family,
            checkpoint_dir=spec.checkpoint_dir))

    def replica_dir(self, spec: ReplicaSpec) -> Path:
        """The replica's cwd: its working_dir, else one under the work dir."""
        if spec.working_dir:
            return Path(spec.working_dir)
        return self.work_dir / "replicas" / _replica_name(spec)

    def render_env(self, spec: ReplicaSpec, device_env: Mapping[str, str]) -> dict[str, str]:
        """The process environment, in increasing precedence: the agent's own
        (minus inherited XINHE_*, visible-device and rank variables), the
        job's env, the adapter's device env, then the runtime variables."""
        env = {k: v for k, v in os.environ.items() if not self._owned(k)}
        env.setdefault("PYTHONUNBUFFERED", "1")  # logs stream as they happen
        env.update(job_env(spec, device_env))
        progress = self.progress_file(spec)
        progress.parent.mkdir(parents=True, exist_ok=True)
        env[PROGRESS_ENV] = str(progress)
        return env

    def progress_file(self, spec: ReplicaSpec) -> Path:
        """Where the replica's xinhe_runtime.report_progress lines go (the
        agent tails it); one per replica and attempt, under the work dir."""
        return self.work_dir / "progress" / f"{_replica_name(spec)}.jsonl"

    def _owned(self, name: str) -> bool:
        return (name.startswith("XINHE_") or name in self._device_vars
                or name in TORCH_DIST_VARS)


PROGRESS_ENV = "XINHE_PROGRESS_FILE"  # xinhe_runtime.PROGRESS_ENV


def _replica_name(spec: ReplicaSpec) -> str:
    safe_job = "".join(c if c.isalnum() or c in "._-" else "_" for c in spec.job_id)
    return f"{safe_job}-a{spec.attempt}-r{spec.rank}"


def _runtime_vars(spec: ReplicaSpec) -> dict[str, str]:
    rank, world = str(spec.rank), str(spec.world_size)
    addr, port = spec.master_addr or "127.0.0.1", str(spec.master_port)
    env = {
        "XINHE_JOB_ID": spec.job_id, "XINHE_JOB_NAME": spec.job_name,
        "XINHE_ATTEMPT": str(spec.attempt), "XINHE_RANK": rank,
        "XINHE_WORLD_SIZE": world, "XINHE_LOCAL_RANK": "0",
        "XINHE_MASTER_ADDR": addr, "XINHE_MASTER_PORT": port,
        "RANK": rank, "WORLD_SIZE": world, "LOCAL_RANK": "0",
        "MASTER_ADDR": addr, "MASTER_PORT": port,
    }
    if spec.checkpoint_dir:
        env["XINHE_CHECKPOINT_DIR"] = spec.checkpoint_dir
    if spec.family:
        env["XINHE_ACCELERATOR_FAMILY"] = spec.family
    if spec.model:
        env["XINHE_ACCELERATOR_MODEL"] = spec.model
    return env
