"""API front ends (`xinhe server --api-workers N`) against a real control
plane, real front-end processes and a real agent: every call answered as
the control plane itself answers it, concurrent SubmitJob calls batched
without losing or doubling one, front ends replaced when they die and gone
when the control plane dies. (Authentication and tenant isolation through
front ends: tests/integration/test_auth.py runs all its cases both ways.)"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from controlplane.api.frontends import FrontEnds
from controlplane.bench.api_load import OWN_CONNECTION
from controlplane.bench.procs import alive, child_pids
from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet
from controlplane.model import states
from controlplane.observability.instruments import ControlPlaneMetrics
from tests.integration.conftest import (
    FAST,
    job_logs,
    train_spec,
    wait_for,
    wait_ready_nodes,
    wait_terminal,
)
from xinhe.v1 import common_pb2, jobs_pb2

Code = grpc.StatusCode
WORKERS = 2


def all_at_once(caller: Callable[[int], None], n: int, timeout: float) -> None:
    """``caller(0)`` ... ``caller(n - 1)`` in threads of their own."""
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    root = tmp_path_factory.mktemp("frontends")
    agent = AgentSpec("fe-h100", "h100", "east", ("H100:8",))
    with LocalFleet(root, [agent], scheduler="inline",
                    server_args=[*FAST, "--api-workers", str(WORKERS)]) as running:
        with XinheClient(running.address) as c:
            wait_ready_nodes(c, 1)
        yield running


def test_the_server_runs_its_front_ends_as_children(fleet: LocalFleet) -> None:
    assert fleet.server is not None
    assert len(child_pids(fleet.server.pid)) == WORKERS


def test_concurrent_submissions_are_each_stored_once(fleet: LocalFleet) -> None:
    """32 callers, each on its own connection (spread over the front ends),
    submit at once; 8 more submit one key together: one job for it."""
    acked: list[tuple[str, str]] = []
    shared: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(40)

    def caller(n: int) -> None:
        try:
            with XinheClient(fleet.address, channel_options=OWN_CONNECTION) as c:
                start.wait(30)
                if n >= 32:
                    job = c.submit(train_spec("same", steps=1), client_key="the-same-key")
                    with lock:
                        shared.append(job.id)
                    return
                for i in range(10):
                    key = f"fe-{n}-{i}"
                    job = c.submit(train_spec(key, steps=1), client_key=key)
                    with lock:
                        acked.append((key, job.id))
        except BaseException as exc:
            with lock:
                errors.append(exc)

    all_at_once(caller, 40, 120)
    assert not errors, errors[0]
    assert len(acked) == 320 and len({i for _, i in acked}) == 320
    assert len(shared) == 8 and len(set(shared)) == 1
    with XinheClient(fleet.address) as c:
        stored = {j.client_key: j.id for j in c.list() if j.client_key.startswith("fe-")
                  or j.client_key == "the-same-key"}
    assert stored == {**dict(acked), "the-same-key": shared[0]}


def test_refusals_read_as_the_control_plane_words_them(fleet: LocalFleet) -> None:
    with XinheClient(fleet.address) as c:
        bad = train_spec("bad")
        del bad.command[:]
        with pytest.raises(grpc.RpcError) as info:
            c.submit(bad)
        assert info.value.code() == Code.INVALID_ARGUMENT
        assert info.value.details().startswith("spec.command:"), info.value.details()
        raw = c._channel.unary_unary("/xinhe.v1.JobService/SubmitJob")
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\xff\xff\xff", timeout=10)
        assert info.value.code() == Code.INVALID_ARGUMENT
        assert info.value.details().startswith("request:")
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\x0a" + b"\xff" * 5 * 1024 * 1024, timeout=10)
        assert info.value.code() == Code.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as info:
            c.get("j-none")
        assert info.value.code() == Code.NOT_FOUND
        with pytest.raises(grpc.RpcError) as info:
            c._channel.unary_unary("/xinhe.v1.JobService/Nothing")(b"", timeout=10)
        assert info.value.code() == Code.UNIMPLEMENTED


def test_jobs_run_through_the_agent_stream_and_stream_back(fleet: LocalFleet) -> None:
    """The agent's Connect stream, WatchJob and log streams all pass the
    front ends; the job runs once and its output arrives."""
    with XinheClient(fleet.address) as c:
        job = c.submit(train_spec("streamed", steps=3), client_key="streamed")
        seen = [e.to_state for e in c.jobs.WatchJob(
            jobs_pb2.WatchJobRequest(job_id=job.id, follow=True), timeout=60)]
        assert seen[-1] == common_pb2.JOB_STATE_SUCCEEDED
        assert states.RUNNING in seen
        done = wait_terminal(c, job.id)
        assert done.state == common_pb2.JOB_STATE_SUCCEEDED, done.state_reason
        assert done.attempt == 1
        assert "result {\"rank\": 0" in job_logs(c, job.id)


def test_rate_limited_batches_admit_what_single_calls_would(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """A batch over the tenant's rate is refused whole upstream; its calls
    are then tried one by one, so the burst is used and the rest refused."""
    root = tmp_path_factory.mktemp("frontends-rate")
    with LocalFleet(root, [], scheduler="inline",
                    server_args=[*FAST, "--api-workers", "1", "--submit-rate", "0.01",
                                 "--submit-burst", "6"]) as small:
        outcomes: list[Code] = []
        lock = threading.Lock()
        start = threading.Barrier(20)

        def caller(n: int) -> None:
            with XinheClient(small.address, channel_options=OWN_CONNECTION) as c:
                c.wait_ready(30)
                start.wait(30)
                try:
                    c.submit(train_spec(f"r{n}"), client_key=f"r-{n}")
                    code = Code.OK
                except grpc.RpcError as exc:
                    code = exc.code()
                with lock:
                    outcomes.append(code)

        all_at_once(caller, 20, 60)
        assert outcomes.count(Code.OK) == 6, outcomes
        assert outcomes.count(Code.RESOURCE_EXHAUSTED) == 14, outcomes


def test_a_dead_front_end_is_replaced_and_all_leave_with_the_server(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("frontends-kill")
    small = LocalFleet(root, [], scheduler="inline",
                       server_args=[*FAST, "--api-workers", str(WORKERS)])
    with small:
        assert small.server is not None
        server = small.server.pid
        first = child_pids(server)
        assert len(first) == WORKERS
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(child_pids(server)) == WORKERS and victim not in child_pids(server),
                 30, "a new front end")
        with XinheClient(small.address, timeout=10) as c:
            for i in range(10):  # each on a fresh connection: any front end answers
                with XinheClient(small.address, timeout=10,
                                 channel_options=OWN_CONNECTION) as fresh:
                    fresh.submit(train_spec(f"k{i}"), client_key=f"k-{i}")
            assert len([j for j in c.list() if j.client_key.startswith("k-")]) == 10
        fronts = child_pids(server)
        os.kill(server, signal.SIGKILL)
        started = time.monotonic()
        wait_for(lambda: not any(alive(p) for p in fronts), 10,
                 "front ends to leave after their control plane died")
        assert time.monotonic() - started < 10


def test_front_end_counts_and_restarts_reach_the_metrics() -> None:
    """FrontEnds tells the metrics what runs; a killed one is counted as
    restarted once it is replaced (``xinhe_api_frontends``,
    ``xinhe_api_frontend_restarts_total``)."""
    metrics = ControlPlaneMetrics()
    fronts = FrontEnds(2, "127.0.0.1:0", [])
    fronts.on_change = metrics.frontends
    fronts.start()
    try:
        sample = metrics.registry.get_sample_value
        assert sample("xinhe_api_frontends", {"state": "configured"}) == 2
        assert sample("xinhe_api_frontends", {"state": "running"}) == 2
        os.kill(fronts.pids()[0], signal.SIGKILL)
        wait_for(lambda: sample("xinhe_api_frontend_restarts_total") == 1, 30, "a restart")
        assert sample("xinhe_api_frontends", {"state": "running"}) == 2
        assert fronts.restarts == 1
    finally:
        fronts.stop()
    assert not any(alive(p) for p in fronts.pids())
