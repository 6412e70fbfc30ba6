"""A real control plane and real agent processes on localhost."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet
from controlplane.model.states import is_terminal
from xinhe.v1 import common_pb2

FLEET = (
    AgentSpec("n-h100", "h100", "east", ("H100:8",)),
    AgentSpec("n-910b-0", "910b", "west", ("910B:8",)),
    AgentSpec("n-910b-1", "910b", "west", ("910B:8",)),
    AgentSpec("n-mlu", "mlu", "west", ("MLU370-X8:4",)),
)
FAST = ["--schedule-interval", "0.2", "--stop-grace", "1", "--heartbeat-interval", "0.5"]


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def wait_ready_nodes(client: XinheClient, n: int, timeout: float = 60.0) -> None:
    client.wait_ready(timeout)
    wait_for(lambda: sum(1 for x in client.nodes()
                         if x.status == common_pb2.NODE_STATUS_READY) >= n,
             timeout, f"{n} ready nodes")


def wait_terminal(client: XinheClient, job_id: str, timeout: float = 60.0) -> common_pb2.Job:
    return wait_for(lambda: (j := client.get(job_id)) and is_terminal(j.state) and j,
                    timeout, f"job {job_id} to end")  # type: ignore[return-value]


def train_spec(name: str, *, queue: str = "lab-a/default", replicas: int = 1, devices: int = 1,
               families: tuple[str, ...] = (), models: tuple[str, ...] = (), steps: int = 20,
               step_sleep: float = 0.0, extra_args: tuple[str, ...] = (),
               retries: int = 0) -> common_pb2.JobSpec:
    spec = common_pb2.JobSpec(
        name=name, queue=queue, replicas=replicas,
        command=[sys.executable, "-m", "xinhe_runtime.examples.train"],
        args=["--steps", str(steps), "--step-sleep", str(step_sleep), *extra_args])
    spec.resources.accelerators = devices
    spec.resources.families.extend(families)
    spec.resources.models.extend(models)
    spec.reference_runtime.FromSeconds(3600)
    if retries:
        spec.retry.max_attempts = retries + 1
    return spec


def job_logs(client: XinheClient, job_id: str) -> str:
    """A job's output, each replica's stream reassembled before joining, so
    chunk boundaries of concurrent ranks cannot split a line."""
    streams: dict[tuple[int, int, int], bytearray] = {}
    for chunk in client.logs(job_id):
        streams.setdefault((chunk.attempt, chunk.rank, chunk.stream), bytearray()).extend(
            chunk.data)
    return "".join(bytes(data).decode(errors="replace") + ("" if data.endswith(b"\n") else "\n")
                   for _, data in sorted(streams.items()) if data)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    root = tmp_path_factory.mktemp("fleet")
    with LocalFleet(root, FLEET, scheduler="inline", server_args=FAST) as running:
        yield running


@pytest.fixture(scope="module")
def client(fleet: LocalFleet) -> Iterator[XinheClient]:
    with XinheClient(fleet.address) as c:
        wait_ready_nodes(c, len(FLEET))
        yield c


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)
