"""Tail the progress files jobs write (``xinhe_runtime.report_progress``) and
forward the newest report of each replica to the control plane.

A job appends one JSON line per report to ``$XINHE_PROGRESS_FILE``; the
agent polls the file about once a second from the offset it reached, keeps
a trailing partial line for the next poll and skips junk (anything that is
not a JSON object with a non-negative ``step`` and a finite, non-negative
``steps_per_second``), so a job can never break its agent by what it writes.
Only the newest report matters: it is sent best effort (no ack, no resend),
at most once per ``min_interval`` per replica, because the control plane
learns speeds from it and a lost report is simply superseded by the next.

Beside progress, the watcher reports when the replica last completed a
checkpoint: the modification time of ``<checkpoint_dir>/LATEST``, which
``xinhe_runtime.mark_checkpoint`` replaces only once a checkpoint is
complete. The control plane uses it to preempt the jobs that lose least.
A new checkpoint is sent even when the job reports no progress.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

log = logging.getLogger(__name__)

MAX_READ_BYTES = 1 << 20  # per poll; a runaway job cannot make the agent read gigabytes
MAX_LINE_BYTES = 64 << 10  # a "line" longer than this is junk and dropped


# The runtime's mark of the newest complete checkpoint (agents/runtime).
LATEST_MARK = "LATEST"


@dataclass(frozen=True)
class Report:
    """One valid progress line, with the newest checkpoint's time.

    ``progress`` False: no line yet, only a checkpoint to report.
    ``checkpoint_at``: when the last checkpoint completed (epoch seconds),
    None when none is known."""

    step: int
    steps_per_second: float
    time: float
    checkpoint_at: float | None = None
    progress: bool = True


NO_PROGRESS = Report(step=0, steps_per_second=0.0, time=0.0, progress=False)


def last_checkpoint_at(directory: str | Path) -> float | None:
    """When the newest complete checkpoint in ``directory`` was marked (the
    LATEST mark's modification time), or None when there is none (never
    raises: a missing or unreadable directory is simply no checkpoint)."""
    try:
        return (Path(directory) / LATEST_MARK).stat().st_mtime
    except (OSError, ValueError):
        return None


def parse_line(line: bytes) -> Report | None:
    """The report in one line, or None for junk (never raises)."""
    try:
        data = json.loads(line.decode("utf-8"))
        step, speed = int(data["step"]), float(data["steps_per_second"])
        when = float(data.get("time", 0.0) or 0.0)
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
        return None
    if isinstance(data.get("step"), bool) or step < 0 or not math.isfinite(speed) \
            or speed < 0 or not math.isfinite(when):
        return None
    return Report(step=step, steps_per_second=speed, time=when)


class ProgressTailer:
    """Reads the new complete lines of one file; remembers the newest report."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.offset = 0
        self.partial = b""
        self.latest: Report | None = None

    def poll(self) -> Report | None:
        """Read what was appended since the last poll; returns the newest valid
        report seen so far (None until there is one). A missing file is no
        error (the job may not have reported yet); a truncated one is re-read
        from the start."""
        try:
            with open(self.path, "rb") as fh:
                size = fh.seek(0, 2)
                if size < self.offset:  # truncated or replaced: start over
                    self.offset, self.partial = 0, b""
                fh.seek(self.offset)
                data = fh.read(MAX_READ_BYTES)
        except OSError:
            return self.latest
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        if len(self.partial) > MAX_LINE_BYTES:
            self.partial = b""
        for line in lines:
            report = parse_line(line) if line.strip() else None
            if report is not None:
                self.latest = report
        return self.latest


Send = Callable[[object, Report], None]


class _Watched:
    __slots__ = ("checkpoint_dir", "ref", "sent", "sent_at", "tailer")

    def __init__(self, ref: object, path: str | Path,
                 checkpoint_dir: str | Path | None = None) -> None:
        self.ref = ref
        self.tailer = ProgressTailer(path)
        self.checkpoint_dir = checkpoint_dir
        self.sent: Report | None = None
        self.sent_at = float("-inf")


class ProgressWatcher:
    """One thread polling every watched replica's file; ``send(ref, report)``
    gets a replica's newest report when it changed, at most once per
    ``min_interval`` seconds per replica (a final flush on :meth:`unwatch`)."""

    def __init__(self, send: Send, poll_interval: float = 1.0,
                 min_interval: float = 2.0) -> None:
        self.send = send
        self.poll_interval = poll_interval
        self.min_interval = min_interval
        self._lock = threading.Lock()
        self._watched: dict[object, _Watched] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, key: object, ref: object, path: str | Path,
              checkpoint_dir: str | Path | None = None) -> None:
        """Watch ``path`` for progress and, when given, ``checkpoint_dir``'s
        LATEST mark for completed checkpoints."""
        with self._lock:
            self._watched[key] = _Watched(ref, path, checkpoint_dir or None)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="xinhe-progress",
                                                daemon=True)
                self._thread.start()

    def unwatch(self, key: object) -> None:
        """Stop watching; the last unsent report is sent first."""
        with self._lock:
            watched = self._watched.pop(key, None)
        if watched is not None:
            self._check(watched, force=True)

    def stop(self) -> None:
        self._stop.set()

    def poll_once(self) -> None:
        with self._lock:
            watched = list(self._watched.values())
        for item in watched:
            self._check(item, force=False)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.poll_once()
            except Exception:  # best effort: progress must never stop the agent
                log.exception("progress poll failed")

    def _check(self, item: _Watched, force: bool) -> None:
        report = item.tailer.poll()
        if item.checkpoint_dir is not None:
            mark = last_checkpoint_at(item.checkpoint_dir)
            if mark is not None:
                report = replace(report or NO_PROGRESS, checkpoint_at=mark)
        now = time.monotonic()
        if report is None or report == item.sent:
            return
        if not force and now - item.sent_at < self.min_interval:
            return
        item.sent, item.sent_at = report, now
        self.send(item.ref, report)
