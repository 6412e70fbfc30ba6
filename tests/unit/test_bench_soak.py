"""The soak of `xinhe bench api`: jobs through many simulated agents hosted
in one process, every job run exactly once, the store consistent."""

from __future__ import annotations

import threading
import time

import pytest

from agents.launcher import ReplicaPhase, ReplicaSpec
from agents.sim_fleet import node_names
from agents.simulated_backend import SimulatedBackend
from controlplane.bench.api import bench_api


class Recorder:
    def __init__(self) -> None:
        self.states: list[tuple[ReplicaPhase, int, str]] = []
        self.output: list[bytes] = []
        self.done = threading.Event()

    def on_state(self, proc, phase, code, message) -> None:
        self.states.append((phase, code, message))
        if phase.terminal:
            self.done.set()

    def on_output(self, proc, stream, data) -> None:
        self.output.append(data)


def spec(*command: str, **env: str) -> ReplicaSpec:
    return ReplicaSpec(job_id="j", attempt=1, rank=0, command=command, env=env)


@pytest.mark.parametrize("replica, seconds, code", [
    (spec("sleep", "0.3"), 0.3, 0),
    (spec("/bin/sleep", "2"), 2.0, 0),
    (spec("false"), 0.25, 1),
    (spec("train.py", SIMULATED_SECONDS="1.5", SIMULATED_EXIT_CODE="3"), 1.5, 3),
    (spec("true"), 0.25, 0),  # the backend's default
])
def test_a_simulated_replica_runs_what_its_command_says(replica, seconds, code):
    assert SimulatedBackend(default_seconds=0.25).plan(replica) == (seconds, code)


def test_a_simulated_replica_reports_like_a_process():
    backend = SimulatedBackend()
    ok, bad = Recorder(), Recorder()
    started = time.monotonic()
    backend.start(spec("sleep", "0.2"), {}, ok.on_state, ok.on_output)
    backend.start(spec("false"), {}, bad.on_state, bad.on_output)
    assert ok.done.wait(5) and bad.done.wait(5)
    assert time.monotonic() - started >= 0.2
    assert [s[0] for s in ok.states] == [ReplicaPhase.STARTING, ReplicaPhase.RUNNING,
                                         ReplicaPhase.SUCCEEDED]
    assert bad.states[-1] == (ReplicaPhase.FAILED, 1, "exited with code 1")
    assert b"ran 0.2s" in b"".join(ok.output)


def test_a_stopped_simulated_replica_ends_stopped_once():
    rec = Recorder()
    replica = SimulatedBackend().start(spec("sleep", "0.3"), {}, rec.on_state, rec.on_output)
    replica.stop(reason="cancelled")
    time.sleep(0.5)  # its timer fires meanwhile and must change nothing
    assert rec.states[-1][0] is ReplicaPhase.STOPPED and len(rec.states) == 3
    assert replica.done


def test_node_names_are_unique_and_sortable():
    names = node_names("sim", 12)
    assert names[0] == "sim-0000" and names == sorted(names) and len(set(names)) == 12


def test_soak_through_twenty_agents_in_one_process_runs_each_job_once():
    report = bench_api(clients=1, threads=4, agents=20, latency_jobs=3, soak_jobs=500)
    soak, checks = report["soak"], report["verification"]
    assert soak["succeeded_first_attempt"] == 500 and soak["not_succeeded_once"] == 0
    assert soak["jobs_per_s"] > 0 and soak["agent_host_memory"]["rss_mb"] > 10
    assert soak["fleet_capacity_jobs_per_s"] == 320.0  # 160 devices / 0.5 s mean
    assert 0 < soak["ratio_to_fleet_capacity"] <= 1
    assert checks["acknowledged"] == checks["stored"] == 500
    assert checks["lost"] == checks["duplicated_keys"] == 0
    assert checks["consistency"]["ok"], checks["consistency"]["violations"]
    targets = report["targets"]
    assert targets["zero_lost_or_duplicated"] and targets["store_consistent"]
    assert targets["soak_each_job_ran_once"]


@pytest.mark.slow
def test_full_soak_100k_jobs_through_200_agents():
    report = bench_api(clients=4, threads=4, agents=200, latency_jobs=10, soak_jobs=100_000)
    assert report["soak"]["not_succeeded_once"] == 0
    assert report["targets"]["zero_lost_or_duplicated"] and report["targets"]["store_consistent"]


def test_simulated_count_needs_simulated_devices(tmp_path):
    from agents.main import main as agent_main

    assert agent_main(["--simulated-count", "3", "--work-dir", str(tmp_path)]) == 2
