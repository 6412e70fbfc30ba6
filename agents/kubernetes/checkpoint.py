"""The checkpoint protocol inside a pod (migration on Kubernetes).

The host agent writes the request file and signals the process group
itself (``agents/checkpoint.py``). The executor cannot assume it can reach
the job's checkpoint directory (shared storage mounted in the pod, not on
the executor), so it does both inside the container through exec:

1. ``REQUEST_SCRIPT``: print the current done marker (the baseline), write
   ``<dir>/.xinhe-checkpoint-request``, and ``kill -USR1 1``. PID 1 gets the
   signal only when it handles it (the kernel shields a namespace's init
   from signals it does not catch), so a job under a shell is not killed by
   it: it sees the request file instead (``should_checkpoint()`` sees either);
2. ``DONE_SCRIPT``, every ``poll`` seconds: read ``.xinhe-checkpoint-done``.
   The job answered when the marker names the replica's attempt or differs
   from the baseline. Gives up after ``timeout`` (withdrawing the request,
   so the resumed job is not asked again) or when the pod ends.

The image needs a POSIX ``sh`` with ``cat``, ``mkdir``, ``printf``, ``rm``
and ``kill`` (busybox has them all). Without them, or without the
``pods/exec`` right, the outcome says so and the replica is stopped anyway:
it resumes from its last complete checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence

from agents.checkpoint import DONE_FILE, REQUEST_FILE, CheckpointOutcome
from agents.kubernetes.podexec import ExecResult

# argv = ["sh", "-c", SCRIPT, "xinhe-checkpoint", <dir>, ...]: the directory
# is passed as an argument, never spliced into the script.
REQUEST_SCRIPT = (
    f'cat "$1/{DONE_FILE}" 2>/dev/null; '
    f'mkdir -p "$1" && printf "%s\\n" "$2" > "$1/{REQUEST_FILE}" || exit 3; '
    'kill -USR1 1 2>/dev/null; exit 0')
DONE_SCRIPT = f'cat "$1/{DONE_FILE}"'
WITHDRAW_SCRIPT = f'rm -f "$1/{REQUEST_FILE}"'
ARGV0 = "xinhe-checkpoint"
EXEC_TIMEOUT_S = 15.0
POLL_S = 0.5

#: Runs argv in the replica's container with a timeout (``PodReplica.exec``).
Exec = Callable[[Sequence[str], float], ExecResult]


def script(body: str, directory: str, *args: str) -> list[str]:
    return ["sh", "-c", body, ARGV0, directory, *args]


def _record(text: str) -> dict | None:
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _failure(what: str, result: ExecResult) -> str:
    detail = result.error or result.stderr.strip() or f"exit code {result.code}"
    return f"{what} in the pod failed: {detail}"


def request_in_pod(run: Exec, directory: str, attempt: int, exited: Callable[[], bool],
                   timeout: float, poll: float = POLL_S,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> CheckpointOutcome:
    """Ask the job in the pod for a checkpoint and wait for its answer.

    Never raises: an exec the API refuses or a job that does not answer ends
    as ``completed=False`` with the reason, so the caller stops the pod either way.
    """
    started = clock()
    stamp = json.dumps({"time": time.time(), "attempt": attempt})
    try:
        asked = run(script(REQUEST_SCRIPT, directory, stamp), EXEC_TIMEOUT_S)
    except Exception as err:  # ApiException (403: no pods/exec right, 404...), socket errors
        return CheckpointOutcome(False, f"cannot exec in the pod: {_reason(err)}", 0.0)
    if not asked.ok:
        return CheckpointOutcome(False, _failure("writing the checkpoint request", asked),
                                 clock() - started)
    baseline = asked.stdout.strip()
    while True:
        record = _answer(run, directory, attempt, baseline)
        elapsed = clock() - started
        if record is not None:
            name = str(record.get("name", ""))
            return CheckpointOutcome(True, f"checkpoint {name or '(unnamed)'} complete in "
                                           f"{elapsed:.2f}s", elapsed, name)
        if exited():
            return CheckpointOutcome(False, "the pod ended before checkpointing", elapsed)
        if elapsed >= timeout:
            _withdraw(run, directory)
            return CheckpointOutcome(False, f"no checkpoint within {timeout:g}s; resuming from "
                                            f"the last complete one", elapsed)
        sleep(poll)


def _answer(run: Exec, directory: str, attempt: int, baseline: str) -> dict | None:
    try:
        result = run(script(DONE_SCRIPT, directory), EXEC_TIMEOUT_S)
    except Exception:  # a blip of the API server: ask again next poll
        return None
    text = result.stdout.strip()
    if not result.ok or not text:
        return None  # no marker yet (cat exits 1)
    record = _record(text)
    if record is None:
        return None  # being replaced right now: look again
    return record if record.get("attempt") == attempt or text != baseline else None


def _withdraw(run: Exec, directory: str) -> None:
    with contextlib.suppress(Exception):  # the pod is stopped next anyway
        run(script(WITHDRAW_SCRIPT, directory), EXEC_TIMEOUT_S)


def _reason(err: BaseException) -> str:
    status = getattr(err, "status", None)
    if isinstance(status, int) and status:
        return f"HTTP {status} {getattr(err, 'reason', '') or ''}".strip()
    return str(err)
