"""A partitioned agent: its traffic is cut (the agent and its replica keep
running) until the control plane declares the node lost and requeues the job
on another node; when the partition heals, fencing stops the stale copy and
the job's outcome comes from the surviving attempt alone."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from pathlib import Path

from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet, start_agent
from tests.integration.conftest import (
    FAST,
    job_logs,
    wait_for,
    wait_ready_nodes,
    wait_terminal,
)
from xinhe.v1 import common_pb2

J = common_pb2
# Writes its pid per attempt, runs ~15 s, then says which attempt finished.
WORKER = ("import os, sys, time\n"
          "attempt = os.environ['XINHE_ATTEMPT']\n"
          "open(os.path.join(sys.argv[1], 'pid-' + attempt), 'w').write(str(os.getpid()))\n"
          "for _ in range(500):\n"
          "    time.sleep(0.03)\n"
          "print('finished attempt', attempt, flush=True)\n")


class PartitionProxy:
    """A TCP relay to ``upstream`` that can cut every connection and refuse
    new ones (a partition), then heal. Runs on daemon threads."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self._open = True
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                if not self._open:
                    conn.close()
                    continue
                try:
                    up = socket.create_connection(self.upstream, timeout=5)
                except OSError:
                    conn.close()
                    continue
                self._sockets += [conn, up]
            for src, dst in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            self._open = False
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def heal(self) -> None:
        with self._lock:
            self._open = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_partitioned_agent_is_fenced_and_the_job_runs_once(tmp_path: Path) -> None:
    island = AgentSpec("island", "910b", "west", ("910B:8",))
    mainland = AgentSpec("mainland", "910b", "west", ("910B:8",))
    args = [*FAST, "--node-lost-timeout", "2"]
    marks = tmp_path / "marks"
    marks.mkdir()
    with LocalFleet(tmp_path, [mainland], scheduler="inline", server_args=args) as fleet:
        proxy = PartitionProxy(fleet.address)
        fleet.agents["island"] = start_agent(proxy.address, island, tmp_path / "agents",
                                             tmp_path / "logs")
        client = XinheClient(fleet.address)
        wait_ready_nodes(client, 2)
        client.cordon("mainland")  # the first attempt must start on the island
        spec = J.JobSpec(name="partitioned", queue="lab-a/default", replicas=1,
                         command=[sys.executable, "-c", WORKER, str(marks)])
        spec.resources.accelerators = 1
        spec.reference_runtime.FromSeconds(60)
        spec.retry.max_attempts = 3
        job = client.submit(spec)
        wait_for(lambda: (marks / "pid-1").exists(), 30, "attempt 1 running on the island")
        stale_pid = int((marks / "pid-1").read_text())
        client.uncordon("mainland")

        proxy.cut()  # the island's agent and replica keep running, unheard
        wait_for(lambda: (marks / "pid-2").exists(), 30, "attempt 2 on the mainland")
        assert client.get(job.id).placement.replicas[0].node == "mainland"
        assert alive(stale_pid) and fleet.agents["island"].alive()

        proxy.heal()  # the island returns: fencing stops its stale copy
        wait_for(lambda: not alive(stale_pid), 30, "the stale copy to be stopped")
        done = wait_terminal(client, job.id, timeout=60)
        assert (done.state, done.attempt) == (J.JOB_STATE_SUCCEEDED, 2), done.state_reason
        text = job_logs(client, job.id)
        assert text.count("finished attempt") == 1 and "finished attempt 2" in text
        assert os.path.exists(marks / "pid-2") and not (marks / "pid-3").exists()
        client.close()
        proxy.close()
