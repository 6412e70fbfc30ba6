"""A replica's output and exit status, kept in files the agent can lose and find.

The replica writes stdout and stderr straight into files (no pipe to the
agent: a pipe would break, and the job with it, when the agent dies). The
agent tails each file in chunks of at most ``CHUNK_BYTES``; the byte offset
of a chunk in its file is its log offset. Before a chunk is handed on, its
end offset is appended to a small index file beside the output, so an agent
restarted later resends exactly the same chunks (same start, same length):
the control plane stores one chunk per start offset, so copies are ignored
and nothing is stored twice or cut short.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TextIO

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
POLL_SECONDS = 0.05
STREAMS = ("stdout", "stderr")
EXIT_FILE = "exit"


def chunk_ends(index: Path) -> list[int]:
    """The end offsets recorded in ``index``, increasing; bad lines dropped."""
    ends: list[int] = []
    try:
        lines = index.read_text().split("\n")
    except FileNotFoundError:
        return ends
    for line in lines:
        try:
            end = int(line)
        except ValueError:
            continue  # a torn last line
        if end > (ends[-1] if ends else 0):
            ends.append(end)
    return ends


def read_exit_status(output_dir: Path) -> tuple[int, bool] | None:
    """(code, by signal) from the wrapper's exit file; None when absent or unreadable."""
    try:
        kind, _, value = (output_dir / EXIT_FILE).read_text().strip().partition(" ")
        number = int(value)
    except (OSError, ValueError):
        return None
    if kind == "signal":
        return -number, True
    return (number, False) if kind == "exit" else None


class OutputTail:
    """Follows one output file until the process ended and the file is drained.

    ``emit(stream, data)`` gets each chunk in order. ``replay_bytes`` bounds
    what a re-adopting agent resends of chunks already shipped once.
    """

    def __init__(self, output_dir: Path, stream: str,
                 emit: Callable[[str, bytes], None], exited: threading.Event,
                 *, resume: bool = False, replay_bytes: int = 16 << 20) -> None:
        self.path = output_dir / stream
        self.index = output_dir / f"{stream}.idx"
        self.stream = stream
        self._emit = emit
        self._exited = exited
        self._boundaries: list[int] = []
        self.start_offset = 0  # the log offset of the first chunk this tail emits
        if resume:
            ends = chunk_ends(self.index)
            floor = (ends[-1] if ends else 0) - replay_bytes
            starts = [0, *ends]
            self._boundaries = [b for b in starts if b >= floor] or [starts[-1]]
            self.start_offset = self._boundaries[0]
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"tail-{output_dir.name}-{stream}")

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _run(self) -> None:
        try:
            with open(self.path, "rb") as source, open(self.index, "a") as index:
                self._replay(source)
                self._follow(source, index)
        except OSError as err:
            log.warning("output of %s: %s", self.path, err)

    def _replay(self, source: BinaryIO) -> None:
        """Resend the recorded chunks from ``start_offset``, same boundaries."""
        for start, end in zip(self._boundaries, self._boundaries[1:], strict=False):
            source.seek(start)
            self._hand_on(source.read(end - start))
        source.seek(self._boundaries[-1] if self._boundaries else 0)

    def _follow(self, source: BinaryIO, index: TextIO) -> None:
        while True:
            finished = self._exited.is_set()  # read before the last drain
            data = source.read(CHUNK_BYTES)
            if data:
                index.write(f"{source.tell()}\n")
                index.flush()  # the boundary is known before the chunk leaves
                self._hand_on(data)
                continue
            if finished:
                return
            self._exited.wait(POLL_SECONDS)

    def _hand_on(self, data: bytes) -> None:
        if not data:
            return
        try:
            self._emit(self.stream, data)
        except Exception:
            log.exception("output callback failed for %s", self.path)
