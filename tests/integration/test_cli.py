"""The tenant CLI against a real server: submit, jobs, job, logs, nodes, pools."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from controlplane.client import XinheClient
from tests.integration.conftest import wait_terminal
from xinhe.v1 import common_pb2

ROOT = Path(__file__).resolve().parents[2]


def xinhe(fleet, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "XINHE_SERVER": fleet.address, "COLUMNS": "200",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    proc = subprocess.run([sys.executable, "-m", "controlplane.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=60, cwd=ROOT, input="")
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_submit_follow_and_inspect_an_example(fleet, client: XinheClient) -> None:
    out = xinhe(fleet, "submit", "examples/mlu-finetune.yaml", "--key", "cli-1").stdout
    job_id = out.split()[0]
    assert job_id.startswith("j-")
    assert xinhe(fleet, "submit", "examples/mlu-finetune.yaml", "--key", "cli-1").stdout.split()[
        0] == job_id
    logs = xinhe(fleet, "logs", "-f", job_id).stdout
    assert "device=mlu backend=cncl" in logs
    assert wait_terminal(client, job_id).state == common_pb2.JOB_STATE_SUCCEEDED
    shown = xinhe(fleet, "job", job_id).stdout
    assert "SUCCEEDED" in shown and "mlu" in shown and "placed" in shown
    assert job_id in xinhe(fleet, "jobs", "--state", "succeeded").stdout


def test_gang_example_and_operator_views(fleet, client: XinheClient) -> None:
    job_id = xinhe(fleet, "submit", "examples/gang-ascend-or-nvidia.yaml").stdout.split()[0]
    done = wait_terminal(client, job_id, timeout=90)
    assert done.state == common_pb2.JOB_STATE_SUCCEEDED, done.state_reason
    assert len(done.placement.replicas) == 2
    nodes = xinhe(fleet, "nodes").stdout
    assert "n-910b-0" in nodes and "READY" in nodes
    pools = xinhe(fleet, "pools").stdout
    assert "MLU370-X8" in pools and "ascend" in pools


def test_cli_errors_are_one_clear_line(fleet) -> None:
    proc = xinhe(fleet, "job", "j-nope", check=False)
    assert proc.returncode == 1
    assert "NOT_FOUND" in proc.stderr and "Traceback" not in proc.stderr
    bad = xinhe(fleet, "submit", "-", check=False)
    assert bad.returncode == 2
