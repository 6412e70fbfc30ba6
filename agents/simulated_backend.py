"""A replica backend that runs nothing: each replica "runs" for a while.

For load tests and soaks of the control plane: hundreds of agents in one
process (agents/sim_fleet.py) cannot each spawn real processes on a small
machine, and the control plane cannot tell the difference. A replica reports
STARTING and RUNNING at once, one line of output, then SUCCEEDED (or FAILED
with the exit code it was given) when its time is up, or STOPPED when it is
stopped. How long it runs: N seconds for a ``sleep N`` command (so one job
spec means the same on real and simulated agents), else the job's env
``SIMULATED_SECONDS``, else the backend's ``default_seconds``. Its exit code:
1 for ``false``, else the env's ``SIMULATED_EXIT_CODE``, else 0.

One timer thread serves every replica of every agent sharing the backend.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping

from agents.launcher import OutputCallback, ReplicaPhase, ReplicaSpec, StateCallback

log = logging.getLogger(__name__)

DURATION_ENV = "SIMULATED_SECONDS"  # XINHE_* job variables are reserved for Xinhe
EXIT_CODE_ENV = "SIMULATED_EXIT_CODE"


class SimulatedReplica:
    """The :class:`~agents.launcher.ReplicaHandle` of a replica that runs nothing."""

    def __init__(self, backend: SimulatedBackend, spec: ReplicaSpec, on_state: StateCallback,
                 on_output: OutputCallback | None, seconds: float, exit_code: int) -> None:
        self.spec = spec
        self.phase: ReplicaPhase | None = None
        self.returncode: int | None = None
        self.seconds = seconds
        self._backend = backend
        self._on_state = on_state
        self._on_output = on_output
        self._exit_code = exit_code
        self._lock = threading.Lock()
        self._done = threading.Event()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def stop(self, grace: float = 10.0, reason: str = "") -> None:
        """Ends the replica STOPPED at once (a simulated job obeys SIGTERM)."""
        self._finish(ReplicaPhase.STOPPED, -signal.SIGTERM, reason or "stopped on request")

    def send_signal(self, sig: int) -> None:
        """Signals change nothing (a simulated job has no checkpoint to write)."""

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def _begin(self) -> None:
        self._report(ReplicaPhase.STARTING, 0, "")
        self._report(ReplicaPhase.RUNNING, 0, "")
        self._backend.at(self.seconds, self._complete)

    def _complete(self) -> None:
        if self._on_output is not None and not self.done:
            line = f"simulated replica {self.spec.label} ran {self.seconds:g}s\n"
            self._on_output(self, "stdout", line.encode())  # type: ignore[arg-type]
        if self._exit_code == 0:
            self._finish(ReplicaPhase.SUCCEEDED, 0, "")
        else:
            self._finish(ReplicaPhase.FAILED, self._exit_code,
                         f"exited with code {self._exit_code}")

    def _finish(self, phase: ReplicaPhase, code: int, message: str) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._done.set()  # first end wins; later ones are ignored
            self.returncode = code
        self._report(phase, code, message)

    def _report(self, phase: ReplicaPhase, code: int, message: str) -> None:
        self.phase = phase
        try:
            self._on_state(self, phase, code, message)  # type: ignore[arg-type]
        except Exception:
            log.exception("state callback failed for %s", self.spec.label)


class SimulatedBackend:
    """Starts :class:`SimulatedReplica` s; thread-safe, shareable by many agents."""

    def __init__(self, default_seconds: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.default_seconds = default_seconds
        self._clock = clock
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self.started = 0  # replicas started, for reports

    def start(self, spec: ReplicaSpec, device_env: Mapping[str, str],
              on_state: StateCallback,
              on_output: OutputCallback | None = None) -> SimulatedReplica:
        seconds, code = self.plan(spec)
        replica = SimulatedReplica(self, spec, on_state, on_output, seconds, code)
        with self._cond:
            self.started += 1
        replica._begin()
        return replica

    def plan(self, spec: ReplicaSpec) -> tuple[float, int]:
        """(seconds, exit code) of a replica; see the module doc."""
        command = tuple(spec.command)
        seconds = _number(spec.env.get(DURATION_ENV), self.default_seconds)
        if len(command) == 2 and command[0].rsplit("/", 1)[-1] == "sleep":
            seconds = _number(command[1], seconds)
        code = int(_number(spec.env.get(EXIT_CODE_ENV), 0))
        if command[:1] and command[0].rsplit("/", 1)[-1] == "false":
            code = 1
        return max(0.0, seconds), code

    def at(self, delay: float, action: Callable[[], None]) -> None:
        """Run ``action`` on the timer thread ``delay`` seconds from now."""
        with self._cond:
            heapq.heappush(self._heap, (self._clock() + delay, next(self._order), action))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="simulated-replicas")
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > self._clock():
                    wait = self._heap[0][0] - self._clock() if self._heap else None
                    self._cond.wait(wait)
                _, _, action = heapq.heappop(self._heap)
            try:
                action()
            except Exception:
                log.exception("simulated replica action failed")


def _number(text: str | None, default: float) -> float:
    if text is None or text == "":
        return default
    try:
        return float(text)
    except ValueError:
        log.warning("%s=%r is not a number; using %g", DURATION_ENV, text, default)
        return default
