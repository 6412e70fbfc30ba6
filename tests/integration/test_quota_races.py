"""Quotas cannot be exceeded through races: many clients submit at once into
a tenant with a nominal quota and no borrowing, on a real server with real
agents and idle capacity to spare (so only the quota holds jobs back).
A watcher reads the server's store (its own SQLite connection, one
consistent snapshot per read) while it runs: the devices held by the
tenant's active jobs never exceed the quota at any instant, and every job
still completes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet
from controlplane.model import states
from tests.integration.conftest import FAST, train_spec, wait_for, wait_ready_nodes
from xinhe.v1 import common_pb2

J = common_pb2
QUOTA = 4
POLICY = f"""\
quotas:
  lab-a:
    nvidia: {{devices: {QUOTA}, borrow_limit: 0}}
"""
# Two pools of one family: the quota spans both. With two scheduler shards
# the pools hash to different shards (controlplane/scheduler/shards.py), and
# neither shard may place up to the quota on its own.
AGENTS = (AgentSpec("race-h100", "h100-east", "east", ("H100:8",)),
          AgentSpec("race-a100", "a100-east", "east", ("A100:8",)))
CLIENTS, JOBS_EACH = 8, 3
HOLDING = sorted({J.JOB_STATE_SCHEDULED, J.JOB_STATE_STARTING, J.JOB_STATE_RUNNING,
                  J.JOB_STATE_PREEMPTED, J.JOB_STATE_MIGRATING})


class HeldDevices:
    """Samples the devices held by a tenant's jobs, straight from the store."""

    def __init__(self, db: Path, tenant: str) -> None:
        self.db, self.tenant = db, tenant
        self.peak, self.samples = 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def held(self, conn: sqlite3.Connection) -> int:
        marks = ", ".join("?" * len(HOLDING))
        rows = conn.execute(f"SELECT data FROM jobs WHERE tenant = ? AND state IN ({marks})",
                            (self.tenant, *HOLDING)).fetchall()
        jobs = [J.Job.FromString(data) for (data,) in rows]
        return sum(len(j.placement.replicas) * j.spec.resources.accelerators for j in jobs)

    def _run(self) -> None:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            while not self._stop.wait(0.01):
                try:
                    held = self.held(conn)
                except sqlite3.OperationalError:
                    continue  # busy for a moment (checkpoint): sample again
                self.peak, self.samples = max(self.peak, held), self.samples + 1
        finally:
            conn.close()

    def __enter__(self) -> HeldDevices:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture(scope="module", params=[1, 2], ids=["one-shard", "two-shards"])
def fleet(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    root = tmp_path_factory.mktemp("quota-races")
    policy = root / "policy.yaml"
    policy.write_text(POLICY)
    args = [*FAST, "--policy", str(policy), "--scheduler-shards", str(request.param)]
    with LocalFleet(root, AGENTS, scheduler="inline", server_args=args) as running:
        yield running


def _submit_all(address: str, client_no: int, start: threading.Barrier,
                ids: list[str]) -> None:
    with XinheClient(address, timeout=30) as client:
        start.wait(30)
        for i in range(JOBS_EACH):
            spec = train_spec(f"race-{client_no}-{i}", devices=1 + (i + client_no) % 2,
                              steps=3, step_sleep=0.1)
            ids.append(client.submit(spec, client_key=f"race-{client_no}-{i}").id)


def test_concurrent_submissions_never_exceed_the_quota(fleet: LocalFleet) -> None:
    admin = XinheClient(fleet.address, timeout=30)
    wait_ready_nodes(admin, len(AGENTS))
    ids: list[str] = []
    start = threading.Barrier(CLIENTS)
    submitters = [threading.Thread(target=_submit_all, args=(fleet.address, n, start, ids))
                  for n in range(CLIENTS)]
    with HeldDevices(fleet.root / "data" / "xinhe.db", "lab-a") as watcher:
        for t in submitters:
            t.start()
        for t in submitters:
            t.join(120)
        assert len(ids) == CLIENTS * JOBS_EACH
        deadline = time.monotonic() + 240
        wait_for(lambda: all(states.is_terminal(admin.get(i).state) for i in ids),
                 max(1.0, deadline - time.monotonic()), "every job to end")
    final = [admin.get(i) for i in ids]
    assert all(j.state == J.JOB_STATE_SUCCEEDED for j in final), [
        (j.id, j.state_reason) for j in final if j.state != J.JOB_STATE_SUCCEEDED]
    assert watcher.samples > 50
    assert 0 < watcher.peak <= QUOTA, f"lab-a held {watcher.peak} devices, quota {QUOTA}"
    assert not any(j.placement.borrowed for j in final)
    admin.close()
