"""The node agent against a fake AgentService served by a real gRPC server."""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from agents.accelerators.simulated import SimulatedAdapter
from agents.agent import Agent, AgentConfig
from xinhe.v1 import agent_pb2, agent_pb2_grpc, common_pb2

PY = sys.executable
STARTING, RUNNING = agent_pb2.REPLICA_STATE_STARTING, agent_pb2.REPLICA_STATE_RUNNING
SUCCEEDED, FAILED = agent_pb2.REPLICA_STATE_SUCCEEDED, agent_pb2.REPLICA_STATE_FAILED
STOPPED = agent_pb2.REPLICA_STATE_STOPPED


def wait_for(predicate: Callable[[], object], timeout: float = 3.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
        time.sleep(0.01)


class FakeAgentService(agent_pb2_grpc.AgentServiceServicer):
    """Records what agents send; tests push control messages and drop streams."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.registers: list[agent_pb2.RegisterRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.first_messages: list[agent_pb2.AgentMessage] = []
        self.messages: list[agent_pb2.AgentMessage] = []
        self.stop_on_register: list[agent_pb2.ReplicaRef] = []
        self.auto_ack = True
        self.streams = 0
        self._control: queue.Queue[agent_pb2.ControlMessage | None] = queue.Queue()

    # -- servicer ----------------------------------------------------------
    def Register(self, request, context):
        with self.lock:
            self.registers.append(request)
            self.metadata.append(dict(context.invocation_metadata()))
            n = len(self.registers)
        return agent_pb2.RegisterResponse(
            session_id=f"session-{n}", stop=self.stop_on_register,
            heartbeat_interval=Duration(nanos=100_000_000))

    def Connect(self, request_iterator, context) -> Iterator[agent_pb2.ControlMessage]:
        with self.lock:
            self.streams += 1
        threading.Thread(target=self._read, args=(request_iterator,), daemon=True).start()
        while context.is_active():
            try:
                message = self._control.get(timeout=0.05)
            except queue.Empty:
                continue
            if message is None:
                return  # drop the stream
            yield message

    def _read(self, request_iterator) -> None:
        first = True
        try:
            for message in request_iterator:
                with self.lock:
                    if first:
                        self.first_messages.append(message)
                        first = False
                    self.messages.append(message)
                if message.HasField("status") and self.auto_ack:
                    self.ack(message.status.agent_sequence)
        except grpc.RpcError:
            pass

    # -- test controls -------------------------------------------------------
    def send(self, **body) -> None:
        self._control.put(agent_pb2.ControlMessage(**body))

    def ack(self, sequence: int) -> None:
        self.send(ack=agent_pb2.Ack(agent_sequence=sequence))

    def drop_stream(self) -> None:
        self._control.put(None)

    def statuses(self, job_id: str | None = None) -> list[agent_pb2.ReplicaStatus]:
        with self.lock:
            return [m.status for m in self.messages if m.HasField("status")
                    and (job_id is None or m.status.ref.job_id == job_id)]

    def states(self, job_id: str) -> list[int]:
        return [s.state for s in self.statuses(job_id)]

    def logs(self, job_id: str) -> bytes:
        with self.lock:
            return b"".join(m.logs.data for m in self.messages
                            if m.HasField("logs") and m.logs.job_id == job_id)

    def heartbeats(self) -> list[agent_pb2.Heartbeat]:
        with self.lock:
            return [m.heartbeat for m in self.messages if m.HasField("heartbeat")]


@pytest.fixture
def fake():
    service = FakeAgentService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    agent_pb2_grpc.add_AgentServiceServicer_to_server(service, server)
    service.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield service
    server.stop(grace=None)


@pytest.fixture
def sim() -> SimulatedAdapter:
    return SimulatedAdapter("H100:2", node="n1")


@pytest.fixture
def agent(fake, sim, tmp_path: Path):
    config = AgentConfig(server=f"127.0.0.1:{fake.port}", node_name="n1", pool="h100-sim",
                         region="east", address="10.0.0.7", work_dir=tmp_path,
                         token="s3cret", stop_grace=1.0, cpu_millis=8000,
                         memory_bytes=64 << 30, backoff_initial=0.05, backoff_max=0.2)
    node_agent = Agent(config, [sim])
    node_agent.start()
    wait_for(lambda: fake.first_messages, what="the first Connect message")
    yield node_agent
    node_agent.shutdown(grace=0.5, flush_timeout=0.5)


def launch(job_id: str = "j-1", code: str = "print('hello')", attempt: int = 1,
           epoch: int = 1, devices=(1,), **extra) -> agent_pb2.LaunchReplica:
    return agent_pb2.LaunchReplica(
        ref=agent_pb2.ReplicaRef(job_id=job_id, attempt=attempt, rank=0, epoch=epoch),
        job_name="demo", command=[PY, "-c", code], family="nvidia", model="H100",
        device_indices=list(devices), world_size=1, master_addr="10.0.0.7",
        master_port=29500, **extra)


SLEEPER = "import time; print('up', flush=True); time.sleep(30)"


def test_registers_with_inventory_and_opens_the_stream(fake, agent):
    (request,) = fake.registers
    assert request.protocol_version == agent_pb2.PROTOCOL_VERSION_1
    assert (request.node_name, request.pool, request.region, request.address) == (
        "n1", "h100-sim", "east", "10.0.0.7")
    assert (request.cpu_millis, request.memory_bytes) == (8000, 64 << 30)
    assert request.agent_version
    assert [(d.index, d.family, d.model, d.healthy) for d in request.devices] == [
        (0, "nvidia", "H100", True), (1, "nvidia", "H100", True)]
    assert fake.metadata[0]["authorization"] == "Bearer s3cret"
    first = fake.first_messages[0]
    assert first.session_id == "session-1" and first.HasField("heartbeat")
    assert len(first.heartbeat.devices) == 2


def test_heartbeats_keep_flowing(fake, agent):
    wait_for(lambda: len(fake.heartbeats()) >= 3, what="three heartbeats")


def test_launch_reports_lifecycle_logs_and_device_env(fake, agent):
    code = "import os; print(os.environ['XINHE_DEVICE'], os.environ['CUDA_VISIBLE_DEVICES'])"
    fake.send(launch=launch(code=code))
    wait_for(lambda: SUCCEEDED in fake.states("j-1"), what="SUCCEEDED")
    statuses = fake.statuses("j-1")
    assert [s.state for s in statuses] == [STARTING, RUNNING, SUCCEEDED]
    sequences = [s.agent_sequence for s in statuses]
    assert sequences == sorted(set(sequences)) and sequences[0] > 0
    assert statuses[-1].ref.epoch == 1
    assert fake.logs("j-1") == b"cuda 1\n"
    with fake.lock:  # every byte of output goes out before the verdict
        kinds = [m.WhichOneof("body") for m in fake.messages
                 if m.logs.job_id == "j-1" or m.status.ref.job_id == "j-1"]
        chunks = [m.logs for m in fake.messages if m.HasField("logs")]
    assert kinds[:2] == ["status", "status"] and kinds[-1] == "status"
    assert set(kinds[2:-1]) == {"logs"}
    assert {(c.attempt, c.rank, c.stream) for c in chunks} == {
        (1, 0, common_pb2.LOG_STREAM_STDOUT)}
    wait_for(lambda: not agent.held_replicas(), what="the acked replica to be forgotten")


def test_device_health_change_sends_an_inventory_update(fake, agent, sim):
    sim.mark_unhealthy([0], "XID 79: GPU has fallen off the bus")
    update = wait_for(lambda: [m.inventory for m in list(fake.messages)
                               if m.HasField("inventory")], what="InventoryUpdate")[0]
    assert [(d.index, d.healthy) for d in update.devices] == [(0, False), (1, True)]
    assert update.devices[0].health_reason.startswith("XID 79")


def test_busy_devices_show_in_heartbeats(fake, agent, sim):
    fake.send(launch=launch(code=SLEEPER))
    wait_for(lambda: b"up" in fake.logs("j-1"))
    beat = wait_for(lambda: [h for h in fake.heartbeats() if h.running], what="running ref")[-1]
    assert [r.job_id for r in beat.running] == ["j-1"]
    util = {d.index: d.utilization_ratio for d in beat.devices}
    assert util[1] > 0.8 and util[0] < 0.1
    fake.send(stop=agent_pb2.StopReplica(ref=launch().ref, reason="cancel"))
    wait_for(lambda: STOPPED in fake.states("j-1"))
    assert sim.busy() == set()


def test_unacked_status_is_resent_after_reconnect(fake, agent):
    fake.auto_ack = False
    fake.send(launch=launch())
    wait_for(lambda: SUCCEEDED in fake.states("j-1"), what="SUCCEEDED")
    sent = [s.agent_sequence for s in fake.statuses("j-1")]
    fake.drop_stream()
    wait_for(lambda: len(fake.registers) == 2, what="re-registration")
    # Register lists the unacked replica; Connect delivers its statuses again.
    assert [r.state for r in fake.registers[1].replicas] == [SUCCEEDED]
    wait_for(lambda: len(fake.statuses("j-1")) == 2 * len(sent), what="the resend")
    assert [s.agent_sequence for s in fake.statuses("j-1")] == sent + sent
    assert fake.first_messages[1].session_id == "session-2"
    fake.ack(sent[-1])
    wait_for(lambda: not agent.held_replicas(), what="the acked replica to be forgotten")


def test_duplicate_launch_is_answered_not_rerun(fake, agent, tmp_path):
    marker = tmp_path / "runs.txt"
    code = f"open({str(marker)!r}, 'a').write('ran\\n')"
    fake.send(launch=launch(code=code))
    wait_for(lambda: SUCCEEDED in fake.states("j-1"))
    wait_for(lambda: not agent.held_replicas(), what="ack")
    fake.send(launch=launch(code=code))
    wait_for(lambda: fake.states("j-1").count(SUCCEEDED) == 2, what="the re-report")
    assert marker.read_text() == "ran\n"
    assert fake.states("j-1") == [STARTING, RUNNING, SUCCEEDED, SUCCEEDED]


def test_duplicate_launch_of_a_running_replica_re_reports_running(fake, agent):
    fake.send(launch=launch(code=SLEEPER))
    wait_for(lambda: b"up" in fake.logs("j-1"))
    fake.send(launch=launch(code=SLEEPER))
    wait_for(lambda: fake.states("j-1") == [STARTING, RUNNING, RUNNING])
    assert fake.logs("j-1").count(b"up") == 1


def test_launch_with_a_stale_epoch_is_ignored(fake, agent):
    fake.send(launch=launch(code=SLEEPER, attempt=2, epoch=5))
    wait_for(lambda: RUNNING in fake.states("j-1"))
    fake.send(launch=launch(attempt=1, epoch=4))
    fake.send(launch=launch(job_id="j-probe"))  # processed after the stale one
    wait_for(lambda: SUCCEEDED in fake.states("j-probe"))
    assert {s.ref.attempt for s in fake.statuses("j-1")} == {2}


def test_stop_replica_stops_it(fake, agent):
    fake.send(launch=launch(code=SLEEPER))
    wait_for(lambda: b"up" in fake.logs("j-1"))
    fake.send(stop=agent_pb2.StopReplica(ref=launch().ref, reason="cancelled",
                                         grace=Duration(nanos=200_000_000)))
    wait_for(lambda: STOPPED in fake.states("j-1"), what="STOPPED")
    assert fake.statuses("j-1")[-1].message == "cancelled"


def test_stop_of_an_unknown_replica_reports_nothing(fake, agent):
    fake.send(stop=agent_pb2.StopReplica(ref=launch(job_id="nobody").ref))
    fake.send(launch=launch(job_id="j-probe"))
    wait_for(lambda: SUCCEEDED in fake.states("j-probe"))
    assert fake.statuses("nobody") == []


def test_register_response_stops_stale_replicas(fake, agent):
    fake.send(launch=launch(code=SLEEPER))
    wait_for(lambda: b"up" in fake.logs("j-1"))
    fake.stop_on_register = [launch().ref]
    fake.drop_stream()
    wait_for(lambda: STOPPED in fake.states("j-1"), what="STOPPED after re-register")
    assert [r.state for r in fake.registers[1].replicas] == [RUNNING]


def test_bad_device_index_fails_the_replica(fake, agent):
    fake.send(launch=launch(devices=(7,)))
    wait_for(lambda: FAILED in fake.states("j-1"))
    assert "not on node n1" in fake.statuses("j-1")[-1].message


def test_max_runtime_from_the_launch(fake, agent):
    limited = launch(code=SLEEPER)
    limited.max_runtime.FromTimedelta(timedelta(milliseconds=200))
    fake.send(launch=limited)
    wait_for(lambda: FAILED in fake.states("j-1"))
    assert fake.statuses("j-1")[-1].message.startswith("exceeded max runtime")


def test_shutdown_stops_replicas_and_reports(fake, agent):
    fake.send(launch=launch(code=SLEEPER))
    wait_for(lambda: b"up" in fake.logs("j-1"))
    agent.shutdown(grace=0.5, flush_timeout=1.0)
    assert fake.states("j-1")[-1] == STOPPED


def test_agent_keeps_retrying_until_the_server_appears(tmp_path, sim):
    service = FakeAgentService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    agent_pb2_grpc.add_AgentServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.stop(None)  # the port is known but nothing listens yet
    config = AgentConfig(server=f"127.0.0.1:{port}", node_name="n1", work_dir=tmp_path,
                         backoff_initial=0.05, backoff_max=0.1, rpc_timeout=0.5)
    node_agent = Agent(config, [sim])
    node_agent.start()
    try:
        time.sleep(0.3)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        agent_pb2_grpc.add_AgentServiceServicer_to_server(service, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        wait_for(lambda: service.first_messages, timeout=4.0, what="connection")
    finally:
        node_agent.shutdown(grace=0.2, flush_timeout=0.2)
        server.stop(None)


# -- the `xinhe agent` entry point --------------------------------------------
def test_cli_flags_build_config_and_simulated_adapters(tmp_path):
    import argparse

    from agents.main import add_arguments, build_adapters, build_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--node", "n9", "--simulate", "910B:2", "--simulate", "H100:1",
                              "--heartbeat-interval", "2", "--token", "t"])
    config = build_config(args)
    assert (config.node_name, config.pool, config.region) == ("n9", "default", "local")
    assert config.work_dir == Path("xinhe-agent/n9") and config.heartbeat_interval == 2.0
    assert config.token == "t"
    assert [(a.family, a.indices) for a in build_adapters(args)] == [
        ("ascend", (0, 1)), ("nvidia", (2,))]
    assert not hasattr(args, "log_level")  # leaves `xinhe --log-level` alone


def test_agent_process_registers_and_exits_cleanly_on_sigterm(fake, tmp_path):
    import signal
    import subprocess

    proc = subprocess.Popen(
        [PY, "-m", "agents.main", "--server", f"127.0.0.1:{fake.port}", "--node", "proc-1",
         "--simulate", "MLU370-X8:4", "--work-dir", str(tmp_path), "--log-level", "DEBUG"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: fake.first_messages, timeout=10.0, what="the agent process")
        assert [d.model for d in fake.registers[0].devices] == ["MLU370-X8"] * 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10.0) == 0
    finally:
        proc.kill()
        proc.wait()


def test_backoff_doubles_to_its_cap_with_jitter_and_resets():
    from agents.agent import Backoff

    backoff = Backoff(0.2, 5.0)
    delays = [backoff.next() for _ in range(8)]
    steps = [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert all(step / 2 <= d <= step for d, step in zip(delays, steps, strict=True))
    backoff.reset()
    assert backoff.next() <= 0.2
