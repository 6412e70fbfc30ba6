"""The agent's restart journal and re-adoption of replicas, with real processes."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from agents.adopted import AdoptedReplica
from agents.journal import JournalEntry, ReplicaJournal, is_alive, process_start_time
from agents.launcher import Launcher, ReplicaPhase
from agents.replica_output import chunk_ends

PY = sys.executable


def entry(job: str = "j", attempt: int = 1, rank: int = 0, **kw) -> JournalEntry:
    fields = dict(job_id=job, attempt=attempt, rank=rank, epoch=3, pid=os.getpid(),
                  start_time=process_start_time(os.getpid()) or 0, output_dir="/tmp/x",
                  device_indices=(1, 2))
    fields.update(kw)
    return JournalEntry(**fields)


def test_journal_round_trip_ends_and_compacts(tmp_path):
    journal = ReplicaJournal(tmp_path / "j.jsonl")
    for i in range(40):
        journal.record(entry(f"job-{i}"))
    for i in range(30):
        journal.end((f"job-{i}", 1, 0))
    again = ReplicaJournal(tmp_path / "j.jsonl").load()
    assert sorted(e.job_id for e in again) == sorted(f"job-{i}" for i in range(30, 40))
    assert again[0].device_indices == (1, 2) and again[0].epoch == 3
    # compaction rewrote the file: far fewer lines than the 70 appended
    assert len((tmp_path / "j.jsonl").read_text().splitlines()) < 40


def test_journal_skips_a_torn_last_line(tmp_path):
    journal = ReplicaJournal(tmp_path / "j.jsonl")
    journal.record(entry("a"))
    with open(tmp_path / "j.jsonl", "a") as out:
        out.write('{"op":"launch","job_id":"b","att')
    assert [e.job_id for e in ReplicaJournal(tmp_path / "j.jsonl").load()] == ["a"]


def test_a_recycled_pid_is_not_the_replica():
    me = entry()
    assert is_alive(me)
    assert not is_alive(dataclasses.replace(me, start_time=me.start_time + 1))
    assert process_start_time(2 ** 22 + 7) is None


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.states: list[tuple[ReplicaPhase, int, str]] = []
        self.chunks: list[tuple[str, bytes]] = []
        self.done = threading.Event()

    def on_state(self, proc, phase, code, message) -> None:
        with self.lock:
            self.states.append((phase, code, message))
        if phase.terminal:
            self.done.set()

    def on_output(self, proc, stream, data) -> None:
        with self.lock:
            self.chunks.append((stream, data))

    def text(self, stream: str = "stdout") -> str:
        with self.lock:
            return b"".join(d for s, d in self.chunks if s == stream).decode()


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


AGENT = """
import sys, time
from agents.launcher import Launcher, ReplicaSpec
spec = ReplicaSpec(job_id="job-1", attempt=1, rank=0,
                   command=(sys.executable, "-c", sys.argv[2]), epoch=7)
Launcher(sys.argv[1]).start(spec, {}, lambda *a: None, lambda *a: None)
print("launched", flush=True)
time.sleep(60)
"""


def launch(work: Path, code: str) -> None:
    """A launcher in another process (the old agent), SIGKILLed once the
    replica is journalled: its tail threads die with it, as in production."""
    agent = subprocess.Popen([PY, "-c", AGENT, str(work), code], stdout=subprocess.PIPE,
                             cwd=Path(__file__).resolve().parents[2])
    assert agent.stdout is not None
    assert agent.stdout.readline() == b"launched\n"
    agent.kill()
    agent.wait(10)


def stdout_of(work: Path) -> str:
    path = work / "output" / "job-1-a1-r0" / "stdout"
    return path.read_text() if path.exists() else ""


def adopt(work: Path) -> tuple[AdoptedReplica, Recorder]:
    """What a restarted agent does: read the journal, watch the replica."""
    entries = Launcher(work).recover()
    assert [e.key for e in entries] == [("job-1", 1, 0)] and entries[0].epoch == 7
    rec = Recorder()
    handle = AdoptedReplica(entries[0], rec.on_state, rec.on_output, runtime_grace=0.3)
    return handle, rec


TICKS = ("import sys, time\n"
         "for i in range(8):\n"
         "    print(f'tick {i}', flush=True); time.sleep(0.15)\n"
         "sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)\n")


def test_adopted_replica_reports_its_true_end_and_whole_output(tmp_path):
    work = tmp_path / "work"
    launch(work, TICKS)
    wait_until(lambda: "tick 2" in stdout_of(work))
    handle, rec = adopt(work)
    assert handle.log_offsets["stdout"] == 0  # nothing shipped: resend from the start
    handle.start()
    assert rec.done.wait(10), rec.states
    assert rec.states[-1][:2] == (ReplicaPhase.SUCCEEDED, 0)
    assert rec.text() == "".join(f"tick {i}\n" for i in range(8))
    ends = chunk_ends(work / "output" / "job-1-a1-r0" / "stdout.idx")
    assert ends[-1] == len(rec.text())


def test_resent_chunks_keep_their_boundaries(tmp_path):
    work = tmp_path / "work"
    out = work / "output" / "job-1-a1-r0"
    out.mkdir(parents=True)
    (out / "stdout").write_bytes(b"aaaabbbbbbcc")
    (out / "stdout.idx").write_text("4\n10\n")  # the old agent shipped [0,4) and [4,10)
    (out / "exit").write_text("exit 0\n")
    (out / "stderr").write_bytes(b"")
    rec = Recorder()
    gone = entry("job-1", output_dir=str(out), pid=2 ** 22 + 7)
    handle = AdoptedReplica(gone, rec.on_state, rec.on_output, replay_bytes=8)
    assert handle.log_offsets == {"stdout": 4, "stderr": 0}  # [0,4) is past the replay bound
    handle.start()
    assert rec.done.wait(10)
    assert [d for s, d in rec.chunks if s == "stdout"] == [b"bbbbbb", b"cc"]
    assert rec.states[-1][:2] == (ReplicaPhase.SUCCEEDED, 0)


def test_adopted_replica_failing_is_never_success(tmp_path):
    work = tmp_path / "work"
    launch(work, "import time; time.sleep(0.5); raise SystemExit(3)")
    handle, rec = adopt(work)
    handle.start()
    assert rec.done.wait(10)
    assert rec.states[-1] == (ReplicaPhase.FAILED, 3, "exited with code 3")


def test_adopted_replica_that_left_no_status_fails(tmp_path):
    work = tmp_path / "work"
    launch(work, "import time; time.sleep(0.3)")
    exit_file = work / "output" / "job-1-a1-r0" / "exit"
    wait_until(exit_file.exists)
    exit_file.unlink()  # as if the wrapper itself had been SIGKILLed
    handle, rec = adopt(work)
    handle.start()
    assert rec.done.wait(10)
    assert rec.states[-1][0] is ReplicaPhase.FAILED and "unknown" in rec.states[-1][2]


def test_adopted_replica_can_be_stopped(tmp_path):
    work = tmp_path / "work"
    launch(work, "import time; print('up', flush=True); time.sleep(30)")
    wait_until(lambda: "up" in stdout_of(work))
    handle, rec = adopt(work)
    handle.start()
    pid = Launcher(work).recover()[0].pid
    handle.stop(grace=1.0, reason="stale epoch")
    assert rec.done.wait(10)
    assert rec.states[-1][0] is ReplicaPhase.STOPPED and rec.states[-1][2] == "stale epoch"
    assert process_start_time(pid) is None


def test_release_forgets_the_replica(tmp_path):
    work = tmp_path / "work"
    launch(work, "pass")
    Launcher(work).release(("job-1", 1, 0))
    assert Launcher(work).recover() == []
    assert not (work / "output" / "job-1-a1-r0").exists()
