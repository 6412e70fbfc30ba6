"""Kill -9 soak: a client submits without pause while the control plane is
SIGKILLed and restarted three times. Every acknowledged submission exists
exactly once afterwards, the job running throughout ran once, and the store
passes the consistency checker."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import grpc

from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet
from controlplane.model import states
from controlplane.store.check import check_store
from controlplane.store.sqlite import SqliteStore
from tests.integration.conftest import (
    FAST,
    job_logs,
    train_spec,
    wait_for,
    wait_ready_nodes,
    wait_terminal,
)
from xinhe.v1 import common_pb2

J = common_pb2


class Submitter:
    """Submits one job per client key, retrying a key until the server
    acknowledges it (as a real client must: an unanswered call may or may
    not have been stored). Records key -> job id of every acknowledgement."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.acked: dict[str, str] = {}
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Submitter:
        self._thread.start()
        return self

    def _run(self) -> None:
        client, i = XinheClient(self.address, timeout=5.0), 0
        while not self._stop.is_set():
            key = f"soak-{i}"
            try:
                job = client.submit(train_spec(f"soak-{i}", steps=1), client_key=key)
            except grpc.RpcError:
                self.errors += 1
                client.close()  # a fresh channel: no reconnect backoff to sit out
                client = XinheClient(self.address, timeout=5.0)
                self._stop.wait(0.05)
                continue
            self.acked[key] = job.id
            i += 1
            self._stop.wait(0.02)
        client.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_acknowledged_submissions_survive_three_sigkills(tmp_path: Path) -> None:
    agents = [AgentSpec("soak", "h100", "east", ("H100:8",))]
    with LocalFleet(tmp_path, agents, scheduler="inline", server_args=FAST) as fleet:
        client = XinheClient(fleet.address)
        wait_ready_nodes(client, 1)
        # Holds all 8 devices through the soak, so the soak's jobs stay queued.
        anchor = client.submit(train_spec("anchor", devices=8, steps=300, step_sleep=0.04))
        wait_for(lambda: "xinhe job " in job_logs(client, anchor.id), 30, "anchor running")
        client.close()

        submitter = Submitter(fleet.address).start()
        for _ in range(3):
            seen = len(submitter.acked)
            wait_for(lambda s=seen: len(submitter.acked) >= s + 15, 30, "acknowledged submits")
            fleet.server.kill()
            fleet.start_server()
        after = len(submitter.acked)
        wait_for(lambda: len(submitter.acked) >= after + 5, 30, "submits after the last kill")
        submitter.stop()
        assert submitter.errors > 0, "the kills should have failed some calls"

        client = XinheClient(fleet.address)
        done = wait_terminal(client, anchor.id, timeout=60)
        assert (done.state, done.attempt) == (J.JOB_STATE_SUCCEEDED, 1), done.state_reason
        assert job_logs(client, anchor.id).count("xinhe job ") == 1, "anchor started twice"
        client.close()

    store = SqliteStore(tmp_path / "data" / "xinhe.db")
    try:
        jobs = store.jobs_in_states(states.ALL_STATES)
        by_key = Counter(j.client_key for j in jobs if j.client_key)
        ids = {j.client_key: j.id for j in jobs if j.client_key}
        assert all(by_key[k] == 1 and ids[k] == job_id for k, job_id in submitter.acked.items())
        assert all(j.attempt == 1 for j in jobs), "a job was run more than once"
        report = check_store(store)
        assert report.ok, report.violations[:10]
    finally:
        store.close()
