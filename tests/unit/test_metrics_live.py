"""Metrics of a real control plane (in-process, real gRPC, real SQLite) with
a real agent on simulated Ascend devices, read back over HTTP as Prometheus
would read them."""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents.accelerators.simulated import SimulatedAdapter
from agents.agent import Agent, AgentConfig
from agents.metrics import AgentMetricsServer
from controlplane.client import XinheClient
from controlplane.model.catalogue import default_catalogue
from controlplane.observability import metrics as m
from controlplane.server import ControlPlane
from controlplane.settings import ServerSettings
from xinhe.v1 import common_pb2

J = common_pb2
CHIP_MEMORY = default_catalogue().find_model("910B").memory_bytes
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def scrape(url: str) -> tuple[Samples, dict[str, str]]:
    """(samples by (name, sorted labels), help text by family name)."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples: Samples = {}
    helps = {}
    for fam in text_string_to_metric_families(text):
        helps[fam.name] = fam.documentation
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, helps


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    settings = ServerSettings(listen="127.0.0.1:0", data_dir=tmp_path / "data",
                              scheduler="inline", heartbeat_interval_s=0.2,
                              schedule_interval_s=0.1, stop_grace_s=1.0)
    cp = ControlPlane(settings)
    cp.start()
    cp.metrics.serve("127.0.0.1", 0)
    yield cp
    cp.stop(grace=1.0)


@pytest.fixture
def adapter() -> SimulatedAdapter:
    return SimulatedAdapter("910B:4", node="n0")


@pytest.fixture
def agent(plane: ControlPlane, adapter: SimulatedAdapter, tmp_path: Path) -> Iterator[Agent]:
    config = AgentConfig(server=plane.address, node_name="n0", pool="910b", region="west",
                         work_dir=tmp_path / "work", heartbeat_interval=0.2, stop_grace=1.0)
    running = Agent(config, [adapter])
    running.start()
    running.connected.wait(30)
    yield running
    running.shutdown(grace=1.0)


def sleeper(devices: int) -> J.JobSpec:
    spec = J.JobSpec(name="sleeper", queue="lab-a/default", replicas=1,
                     command=[sys.executable, "-c", "import time; time.sleep(120)"])
    spec.resources.accelerators = devices
    spec.resources.families.append("ascend")
    return spec


def test_every_control_plane_metric_is_exposed_with_its_help(plane: ControlPlane) -> None:
    _samples, helps = scrape(plane.metrics.url)
    for defn in m.of(m.Source.CONTROL_PLANE):
        assert helps.get(defn.base_name) == defn.help, defn.name


def test_fleet_jobs_api_and_agent_metrics_follow_a_running_job(
        plane: ControlPlane, agent: Agent, adapter: SimulatedAdapter) -> None:
    url = plane.metrics.url
    pool = {"pool": "910b", "region": "west", "family": "ascend", "model": "910B"}
    wait_for(lambda: sample(scrape(url)[0], "xinhe_accelerators", state="free", **pool) == 4,
             what="4 free devices")
    with XinheClient(plane.address) as client:
        job = client.submit(sleeper(devices=3))
        with pytest.raises(grpc.RpcError):
            client.submit(J.JobSpec(name="bad", queue=""))
        wait_for(lambda: client.get(job.id).state == J.JOB_STATE_RUNNING, what="running")
        samples, _ = scrape(url)
        assert sample(samples, "xinhe_accelerators", state="allocated", **pool) == 3
        assert sample(samples, "xinhe_accelerators", state="free", **pool) == 1
        assert sample(samples, "xinhe_accelerator_utilization_ratio", pool="910b",
                      region="west", family="ascend") == pytest.approx(0.75)
        assert sample(samples, "xinhe_jobs", state="RUNNING", tenant="lab-a",
                      family="ascend") == 1
        assert sample(samples, "xinhe_tenant_accelerators_allocated", tenant="lab-a",
                      family="ascend") == 3
        assert sample(samples, "xinhe_agents_connected") == 1
        assert sample(samples, "xinhe_nodes", pool="910b", region="west", status="READY") == 1
        assert sample(samples, "xinhe_job_queue_wait_seconds_count", tenant="lab-a",
                      family="ascend") == 1
        calls = {"service": "xinhe.v1.JobService", "method": "SubmitJob"}
        assert sample(samples, "xinhe_grpc_requests_total", code="OK", **calls) == 1
        assert sample(samples, "xinhe_grpc_requests_total", code="INVALID_ARGUMENT",
                      **calls) == 1
        check_agent_metrics(agent, busy=3)
        adapter.mark_unhealthy([3], "ECC errors")
        wait_for(lambda: sample(scrape(url)[0], "xinhe_accelerators", state="unhealthy",
                                **pool) == 1, what="unhealthy device seen")
        client.cancel(job.id)
        wait_for(lambda: sample(scrape(url)[0], "xinhe_jobs_cancelled_total", tenant="lab-a",
                                family="ascend") == 1, what="cancellation counted")


def check_agent_metrics(agent: Agent, busy: int) -> None:
    server = AgentMetricsServer(agent)
    server.serve("127.0.0.1", 0)
    try:
        labels = {"node": "n0", "pool": "910b", "family": "ascend", "model": "910B"}
        samples = wait_for(lambda: (s := scrape(server.url)[0]) and sum(
            1 for i in range(4) if (sample(s, "xinhe_device_utilization_ratio", device=str(i),
                                           **labels) or 0) > 0.5) == busy and s,
            what=f"{busy} busy devices")
        assert sample(samples, "xinhe_agent_replicas_running", node="n0") == 1
        assert sample(samples, "xinhe_agent_connected", node="n0") == 1
        for i in range(4):
            device = {"device": str(i), **labels}
            assert sample(samples, "xinhe_device_memory_bytes", **device) == CHIP_MEMORY
            assert 0 < sample(samples, "xinhe_device_temperature_celsius", **device) < 100
            assert sample(samples, "xinhe_device_healthy", **device) == 1
        assert {n for n, _ in samples} >= {d.name for d in m.of(m.Source.AGENT)}
    finally:
        server.close()


def test_top_reads_the_control_plane_and_explains_an_unreachable_one(
        plane: ControlPlane, agent: Agent, capsys: pytest.CaptureFixture[str]) -> None:
    from controlplane.cli import top

    snap = wait_for(lambda: (s := top.fetch(plane.metrics.url)).pools and s, what="a pool")
    assert snap.pools[("910b", "west", "ascend", "910B")]["free"] == 4
    assert snap.utilisation() == {"ascend": 0.0}
    assert snap.agents == 1
    args = argparse.Namespace(metrics="http://127.0.0.1:1/metrics", interval=1.0, once=True)
    assert top.run(args) == 2
    assert "is the control plane running with --metrics-port" in capsys.readouterr().err
