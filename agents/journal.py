"""The agent's restart journal: which replicas it launched, on disk.

Replicas run in their own sessions, so they outlive an agent killed with
SIGKILL. The journal lets the next agent on the node find them again: one
JSON line per launched replica, appended (and flushed to the kernel) right
after the wrapper is spawned and before it is released to run the command
(replica_wrapper's launch gate) or reported RUNNING, and
an ``end`` line once the control plane has acknowledged its final state.
The file is rewritten without the ended replicas when they outnumber the
live ones, so it stays as small as the node's live work.

Durability: the lines reach the page cache, not the platter (no fsync per
launch). That survives the agent dying, which is what the journal is for; a
host crash kills the replicas too, and then there is nothing to re-adopt.

A process is identified by its pid *and* its start time (field 22 of
``/proc/<pid>/stat``), so a pid the kernel recycled for an unrelated
process is never mistaken for the replica.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

Key = tuple[str, int, int]


@dataclass(frozen=True)
class JournalEntry:
    """One launched replica, as the next agent needs to find and watch it."""

    job_id: str
    attempt: int
    rank: int
    epoch: int  # fencing epoch of the assignment
    pid: int  # the replica's process-group leader (the exit-code wrapper)
    start_time: int  # /proc/<pid>/stat starttime, in clock ticks since boot
    output_dir: str  # stdout/stderr files, their chunk indexes and the exit file
    progress_file: str = ""
    launched_at: float = 0.0  # wall-clock seconds
    max_runtime: float = 0.0  # seconds; 0 = no limit
    device_indices: tuple[int, ...] = ()
    family: str = ""
    checkpoint_dir: str = ""  # so a migration can still checkpoint the replica

    @property
    def key(self) -> Key:
        return (self.job_id, self.attempt, self.rank)

    def to_line(self) -> str:
        return json.dumps({"op": "launch", **asdict(self)}, separators=(",", ":")) + "\n"

    @classmethod
    def from_json(cls, record: dict) -> JournalEntry:
        fields = {k: record[k] for k in cls.__dataclass_fields__ if k in record}
        fields["device_indices"] = tuple(fields.get("device_indices", ()))
        return cls(**fields)


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks since boot), None when there is
    no such process or it is a zombie (ended, waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def is_alive(entry: JournalEntry) -> bool:
    """The journalled process still runs (same pid, same start time)."""
    return entry.pid > 0 and process_start_time(entry.pid) == entry.start_time


class ReplicaJournal:
    """Append-only JSON lines of launched and ended replicas. Thread-safe."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._live: dict[Key, JournalEntry] = {}
        self._ended = 0
        self.load()  # an end must find the launches a previous process wrote

    def load(self) -> list[JournalEntry]:
        """The replicas launched and not ended, per the file. Lines that do
        not parse (a torn last line) are skipped with a warning."""
        live: dict[Key, JournalEntry] = {}
        ended = 0
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                key = (str(record["job_id"]), int(record["attempt"]), int(record["rank"]))
                if record.get("op") == "end":
                    ended += live.pop(key, None) is not None
                else:
                    live[key] = JournalEntry.from_json(record)
            except (ValueError, KeyError, TypeError) as err:
                log.warning("journal %s line %d skipped: %s", self.path, number, err)
        with self._lock:
            self._live, self._ended = live, ended
        return list(live.values())

    def record(self, entry: JournalEntry) -> None:
        """Note a launch; on return the line is in the kernel's hands."""
        with self._lock:
            self._live[entry.key] = entry
            self._append(entry.to_line())

    def end(self, key: Key) -> None:
        """Note that a replica is over for good (its final state acked)."""
        with self._lock:
            if self._live.pop(key, None) is None:
                return
            self._ended += 1
            if self._ended > max(16, len(self._live)):
                self._compact()
            else:
                self._append(json.dumps({"op": "end", "job_id": key[0], "attempt": key[1],
                                         "rank": key[2]}) + "\n")

    def live(self) -> list[JournalEntry]:
        with self._lock:
            return list(self._live.values())

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(line)

    def _compact(self) -> None:
        """Rewrite with the live entries only; atomic (rename over)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as out:
            out.writelines(entry.to_line() for entry in self._live.values())
        os.replace(tmp, self.path)
        self._ended = 0
