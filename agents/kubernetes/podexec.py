"""Run a short command inside a replica's container (``kubectl exec``).

Through the official client's websocket transport
(``kubernetes.stream.stream(core_v1.connect_get_namespaced_pod_exec, ...)``),
which the executor injects so tests can feed recorded frames. The exit
status comes from the API server's error channel, a ``v1.Status`` in JSON:
``Success``, or ``Failure`` with reason ``NonZeroExitCode`` and the code in
``details.causes[reason=ExitCode]``, or another failure (no such binary in
the image, container not running) whose message is kept.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

STDOUT_CHANNEL = 1
STDERR_CHANNEL = 2
ERROR_CHANNEL = 3
EXEC_FAILED = -1  # the command could not run or its status was unreadable

#: ``kubernetes.stream.stream``: calls an API method over a websocket.
StreamFn = Callable[..., Any]


@dataclass(frozen=True)
class ExecResult:
    """What one exec produced. ``code`` is None when it had not finished
    within its timeout, :data:`EXEC_FAILED` when it could not run."""

    code: int | None
    stdout: str
    stderr: str
    error: str = ""  # the API server's message for a failure other than an exit code

    @property
    def ok(self) -> bool:
        return self.code == 0


def default_stream() -> StreamFn:
    from kubernetes.stream import stream  # the optional client, imported when used

    return stream


def exit_status(status_text: str) -> tuple[int, str]:
    """(exit code, error message) from the error channel's ``v1.Status``."""
    if not status_text.strip():
        return EXEC_FAILED, "no exit status on the error channel"
    try:
        status = json.loads(status_text)
    except ValueError:
        return EXEC_FAILED, status_text.strip()
    if not isinstance(status, dict):
        return EXEC_FAILED, status_text.strip()
    if status.get("status") == "Success":
        return 0, ""
    causes = (status.get("details") or {}).get("causes") or []
    for cause in causes:
        if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
            try:
                return int(cause.get("message", "")), ""
            except ValueError:
                break
    return EXEC_FAILED, str(status.get("message") or status.get("reason") or "exec failed")


def run_in_pod(api: Any, stream: StreamFn, pod: str, namespace: str, container: str,
               argv: Sequence[str], timeout: float) -> ExecResult:
    """Run ``argv`` in ``container`` of ``pod``; never blocks past ``timeout``.

    API errors (no exec rights, pod gone) propagate as the client's
    ``ApiException``; the caller decides what they mean.
    """
    client = stream(api.connect_get_namespaced_pod_exec, pod, namespace, command=list(argv),
                    container=container, stdin=False, stdout=True, stderr=True, tty=False,
                    _preload_content=False)
    try:
        client.run_forever(timeout=timeout)
        stdout = client.read_channel(STDOUT_CHANNEL, timeout=0)
        stderr = client.read_channel(STDERR_CHANNEL, timeout=0)
        if client.is_open():
            return ExecResult(None, stdout, stderr, f"no answer within {timeout:g}s")
        code, error = exit_status(client.read_channel(ERROR_CHANNEL, timeout=0))
        return ExecResult(code, stdout, stderr, error)
    finally:
        client.close()
