"""Replica output survives control-plane crashes: agents number their log
bytes, hold them until the control plane acknowledges them as stored, and
resend the rest after reconnecting; the store keeps one copy per offset."""

from __future__ import annotations

import sys
from pathlib import Path

from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet
from tests.integration.conftest import FAST, wait_for, wait_ready_nodes, wait_terminal
from xinhe.v1 import common_pb2

J = common_pb2
LINES = 400
PHASE = 100
# Prints numbered lines steadily, each flushed, so output is in flight at any
# moment; line i waits until the gate file holds at least i // PHASE, so the
# test decides when each phase may run (a loaded machine cannot let the job
# finish before the last kill).
PRINTER = ("import os, sys, time\n"
           "rank = os.environ.get('XINHE_RANK', '?')\n"
           "gate = os.environ['GATE_FILE']\n"
           "def opened():\n"
           "    try:\n"
           "        return int(open(gate).read() or 0)\n"
           "    except (OSError, ValueError):\n"
           "        return 0\n"
           f"for i in range({LINES}):\n"
           f"    while opened() < i // {PHASE}:\n"
           "        time.sleep(0.02)\n"
           "    print(f'rank {rank} line {i:05d}', flush=True)\n"
           "    time.sleep(0.015)\n")


def open_gate(gate: Path, phase: int) -> None:
    tmp = gate.with_suffix(".tmp")
    tmp.write_text(str(phase))
    tmp.replace(gate)


def printer_spec(replicas: int, gate: Path) -> common_pb2.JobSpec:
    spec = common_pb2.JobSpec(name="numbered-lines", queue="lab-a/default", replicas=replicas,
                              command=[sys.executable, "-c", PRINTER], env={"GATE_FILE": str(gate)})
    spec.resources.accelerators = 1
    spec.reference_runtime.FromSeconds(60)
    return spec


def lines_per_rank(client: XinheClient, job_id: str) -> dict[int, list[str]]:
    """Each rank's stdout lines, in the order the store holds them."""
    data: dict[int, bytearray] = {}
    for chunk in client.logs(job_id):
        if chunk.stream == J.LOG_STREAM_STDOUT:
            data.setdefault(chunk.rank, bytearray()).extend(chunk.data)
    return {rank: bytes(d).decode().splitlines() for rank, d in data.items()}


def printed(client: XinheClient, job_id: str) -> int:
    return sum(len(v) for v in lines_per_rank(client, job_id).values())


def test_every_line_once_in_order_across_two_control_plane_kills(tmp_path: Path) -> None:
    agents = [AgentSpec("talker", "h100", "east", ("H100:8",))]
    with LocalFleet(tmp_path, agents, scheduler="inline", server_args=FAST) as fleet:
        client = XinheClient(fleet.address)
        wait_ready_nodes(client, 1)
        gate = tmp_path / "gate"
        job = client.submit(printer_spec(replicas=2, gate=gate))
        for kill in range(2):
            seen = printed(client, job.id)
            open_gate(gate, kill + 1)
            # Kill while output flows: some lines stored, more in flight.
            wait_for(lambda s=seen, c=client: printed(c, job.id) > s + 40, 30, "more output")
            client.close()
            fleet.server.kill()  # SIGKILL: batches buffered in memory die with it
            fleet.start_server()
            client = XinheClient(fleet.address)
            wait_ready_nodes(client, 1)
            assert client.get(job.id).state != J.JOB_STATE_SUCCEEDED
        open_gate(gate, LINES // PHASE)

        done = wait_terminal(client, job.id, timeout=90)
        assert done.state == J.JOB_STATE_SUCCEEDED, done.state_reason
        assert done.attempt == 1
        # Output sent before the final status is acknowledged before the status.
        got = wait_for(lambda: (g := lines_per_rank(client, job.id)) and
                       sum(map(len, g.values())) >= 2 * LINES and g, 30, "all output")
        for rank in (0, 1):
            assert got[rank] == [f"rank {rank} line {i:05d}" for i in range(LINES)]
        client.close()
