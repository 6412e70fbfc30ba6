"""Pod status -> replica state, and a loop that keeps watching the pods.

The mapping (``pod_state``) is a pure function of the Pod object:

==========================  ==========================================
pod                         replica
==========================  ==========================================
Pending                     STARTING (the waiting reason as message)
Pending, fatal waiting      FAILED, exit 127 like a command that cannot
(ImagePullBackOff...)       start: retrying an unpullable image only
                            holds devices hostage
Running                     RUNNING
Succeeded                   SUCCEEDED
Failed                      FAILED with the container's exit code and
                            reason (OOMKilled 137, Error 1...), or the
                            pod's reason (DeadlineExceeded = max runtime,
                            Evicted)
Unknown / no status         no change (the node may come back)
==========================  ==========================================

A pod deleted on request ends STOPPED; that is decided by the replica
handle, which knows whether it asked for the deletion.

:class:`PodMonitor` polls one LIST of the executor's pods (by label) per
interval rather than holding a WATCH: one request per interval whatever the
number of pods, no watch-bookmark bookkeeping, and a missed event cannot
leave a replica stuck because the next LIST shows the truth.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from agents.launcher import ReplicaPhase

log = logging.getLogger(__name__)

EXIT_COULD_NOT_START = 127
# Waiting reasons that will not fix themselves. ErrImagePull is retried by
# the kubelet once; ImagePullBackOff means it already failed and backs off.
FATAL_WAITING = frozenset({
    "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
    "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
})

PodState = tuple[ReplicaPhase, int, str]


def _container_status(pod: Any) -> Any | None:
    statuses = (pod.status.container_statuses or []) if pod.status is not None else []
    return statuses[0] if statuses else None


def _waiting(pod: Any) -> tuple[str, str]:
    status = _container_status(pod)
    waiting = status.state.waiting if status is not None and status.state else None
    return (waiting.reason or "", waiting.message or "") if waiting else ("", "")


def _terminated(pod: Any) -> Any | None:
    status = _container_status(pod)
    return status.state.terminated if status is not None and status.state else None


def container_ran(pod: Any) -> bool:
    """Whether the container started at some point (so it has a log)."""
    status = _container_status(pod)
    if status is None or status.state is None:
        return False
    return bool(status.state.running or status.state.terminated)


def _failure(pod: Any) -> tuple[int, str]:
    reason = pod.status.reason or ""
    if reason == "DeadlineExceeded":
        return 0, "exceeded max runtime (activeDeadlineSeconds)"
    term = _terminated(pod)
    if term is None:
        detail = pod.status.message or reason or "pod failed"
        return 0, detail
    code = term.exit_code or 0
    why = term.reason or "Error"
    text = f"{why}: exited with code {code}"
    if term.message:
        text += f" ({term.message.strip()})"
    return code, text


def pod_state(pod: Any) -> PodState | None:
    """The replica state a pod shows, or None when it shows nothing usable."""
    phase = pod.status.phase if pod.status is not None else None
    if phase == "Pending":
        reason, message = _waiting(pod)
        if reason in FATAL_WAITING:
            detail = f"{reason}: {message}" if message else reason
            return ReplicaPhase.FAILED, EXIT_COULD_NOT_START, f"could not start: {detail}"
        return ReplicaPhase.STARTING, 0, reason
    if phase == "Running":
        return ReplicaPhase.RUNNING, 0, ""
    if phase == "Succeeded":
        return ReplicaPhase.SUCCEEDED, 0, ""
    if phase == "Failed":
        code, message = _failure(pod)
        return ReplicaPhase.FAILED, code, message
    return None


class PodObserver(Protocol):
    """What the monitor feeds: the pod as listed, or None once it is gone."""

    name: str

    def observe(self, pod: Any | None) -> None: ...

    @property
    def done(self) -> bool: ...


class PodMonitor:
    """Lists the executor's pods every ``interval`` seconds and tells each
    registered observer what its pod looks like (None when it is gone)."""

    def __init__(self, list_pods: Callable[[], Any], interval: float = 1.0) -> None:
        self._list_pods = list_pods
        self.interval = interval
        self._lock = threading.Lock()
        self._observers: dict[str, PodObserver] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, observer: PodObserver) -> None:
        with self._lock:
            self._observers[observer.name] = observer
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="xinhe-k8s-pod-monitor")
                self._thread.start()

    def close(self) -> None:
        self._stop.set()

    def poll_once(self) -> None:
        """One LIST and one round of observations (the loop's body; tests call it)."""
        with self._lock:  # before the LIST: a pod created later must not look gone
            observers = list(self._observers.values())
        try:
            pods = {p.metadata.name: p for p in self._list_pods().items}
        except Exception as err:  # API errors: try again next round, state unchanged
            log.warning("listing pods failed: %s", err)
            return
        for observer in observers:
            try:
                observer.observe(pods.get(observer.name))
            except Exception:
                log.exception("observing pod %s failed", observer.name)
            if observer.done:
                with self._lock:
                    self._observers.pop(observer.name, None)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll_once()
