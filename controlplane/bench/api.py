"""`xinhe bench api`: drive the real server through gRPC and measure it.

A control plane (SQLite, inline scheduler) and simulated agents run as
processes (LocalFleet) in a temporary directory. Phases:

1. submit-to-running on an idle fleet: one 1-device job at a time that runs
   ``true``; latency from the client's submit to the job's RUNNING event
   (server clock, same host).
2. sustained load: every node cordoned (so the phase measures the API and
   store, not process spawning), ``clients`` processes x ``threads`` each
   call SubmitJob for ``duration_s`` seconds, one GetJob per ``get_every``
   submissions, one tenant per process (each under the per-tenant limit).
3. verification: the server is stopped, then every acknowledged id must
   exist exactly once with its client key, no job may exist that no client
   saw acknowledged, and the store consistency checker must pass.

``soak_jobs`` > 0 replaces phase 2 by a soak: that many jobs submitted and
run to completion through the agents, then verified the same way.
"""

from __future__ import annotations

import multiprocessing
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from controlplane.bench.scheduler import nearest_rank
from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet
from controlplane.model import states
from controlplane.store.check import check_store
from controlplane.store.sqlite import SqliteStore
from xinhe.v1 import common_pb2, jobs_pb2

TARGETS = {"submissions_per_s": 2000, "submit_p99_ms": 50, "submit_to_running_p99_ms": 100}
SERVER_ARGS = ("--schedule-interval", "0.2", "--stop-grace", "1", "--heartbeat-interval", "1")


@dataclass
class ClientResult:
    """What one load process saw: acknowledged (key, id) pairs and latencies."""

    acked: list[tuple[str, str]] = field(default_factory=list)
    submit_s: list[float] = field(default_factory=list)
    get_s: list[float] = field(default_factory=list)
    exhausted: int = 0
    errors: list[str] = field(default_factory=list)
    first: float = float("inf")  # wall time of the first submit sent
    last: float = 0.0  # wall time of the last answer


def bench_spec(tenant: str) -> common_pb2.JobSpec:
    spec = common_pb2.JobSpec(name="bench", queue=f"{tenant}/default", command=["true"],
                              replicas=1)
    spec.resources.accelerators = 1
    return spec


def _load_thread(address: str, tenant: str, prefix: str, window: tuple[float, float],
                 get_every: int, out: ClientResult, lock: threading.Lock) -> None:
    """Submit (retrying RESOURCE_EXHAUSTED with the same key) from
    ``window[0]`` (connected and warmed up by then) until ``window[1]``."""
    spec = bench_spec(tenant)
    start_at, until = window
    with XinheClient(address, timeout=30) as client:
        client.wait_ready(30)
        time.sleep(max(0.0, start_at - time.time()))
        with lock:
            out.first = min(out.first, time.time())
        i = 0
        while time.time() < until:
            key = f"{prefix}-{i}"
            start = time.perf_counter()
            try:
                job = client.submit(spec, client_key=key)
            except grpc.RpcError as exc:
                with lock:
                    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        out.exhausted += 1
                    else:
                        out.errors.append(f"{exc.code().name}: {exc.details()}")
                time.sleep(0.01)
                continue  # same key: a retry must not create a second job
            took = time.perf_counter() - start
            got = None
            if get_every and i % get_every == 0:
                start = time.perf_counter()
                client.get(job.id)
                got = time.perf_counter() - start
            with lock:
                out.acked.append((key, job.id))
                out.submit_s.append(took)
                if got is not None:
                    out.get_s.append(got)
                out.last = max(out.last, time.time())
            i += 1


def load_process(address: str, tenant: str, threads: int, window: tuple[float, float],
                 get_every: int) -> ClientResult:
    """One client process: ``threads`` threads of synchronous calls."""
    out, lock = ClientResult(), threading.Lock()
    workers = [threading.Thread(target=_load_thread, args=(
        address, tenant, f"{tenant}-t{t}", window, get_every, out, lock))
        for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return out


def _ms(values: list[float], q: float) -> float:
    return round(nearest_rank(values, q) * 1000, 2)


def vm_kib(pid: int) -> dict[str, float]:
    """Resident and peak resident memory of a process, MiB (Linux /proc)."""
    found = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = round(int(value.split()[0]) / 1024, 1)
    except OSError:
        pass
    return {"rss_mb": found.get("VmRSS", 0.0), "peak_rss_mb": found.get("VmHWM", 0.0)}


def submit_to_running(client: XinheClient, n: int, timeout: float = 30.0) -> dict[str, Any]:
    """Latency from submit to RUNNING for ``n`` jobs in sequence."""
    latencies, missed = [], 0
    for i in range(n):
        t0 = time.time()
        job = client.submit(bench_spec("latency"), client_key=f"latency-{i}")
        running = None
        stream = client.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=job.id, follow=True),
                                      timeout=timeout)
        for event in stream:
            if event.to_state == states.RUNNING:
                running = event.time.seconds + event.time.nanos / 1e9
            if states.is_terminal(event.to_state):
                break
        if running is None:
            missed += 1
        else:
            latencies.append(max(0.0, running - t0))
    return {"jobs": n, "never_running": missed, "p50_ms": _ms(latencies, 50),
            "p99_ms": _ms(latencies, 99), "max_ms": _ms(latencies, 100)}


WARMUP_S = 3.0  # client processes start (imports, connect) before the clock runs


def run_load(address: str, clients: int, threads: int, duration_s: float,
             get_every: int) -> tuple[list[ClientResult], float]:
    """Results of every client process and the measured window (seconds from
    the first submit sent to the last answer received)."""
    start_at = time.time() + WARMUP_S
    window = (start_at, start_at + duration_s)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(clients) as pool:
        results = pool.starmap(load_process, [
            (address, f"bench{c}", threads, window, get_every) for c in range(clients)])
    first = min(r.first for r in results)
    last = max((r.last for r in results), default=first)
    return results, max(last - first, 1e-9)


def verify(db: Path, acked: list[tuple[str, str]], tenants: set[str]) -> dict[str, Any]:
    """Zero lost (every acknowledged id stored, with its key) and zero
    duplicated (no key or id twice, no job nobody saw acknowledged)."""
    with SqliteStore(db) as store:
        jobs = [j for j in store.jobs_in_states(states.ALL_STATES) if j.tenant in tenants]
        report = check_store(store, histories=len(jobs) <= 50_000)
    by_id = {j.id: j for j in jobs}
    lost = [i for k, i in acked if i not in by_id or by_id[i].client_key != k]
    acked_ids = {i for _, i in acked}
    unacked = [j.id for j in jobs if j.id not in acked_ids]
    keys = [k for k, _ in acked]
    by_state = Counter(states.state_name(j.state) for j in jobs)
    return {"acknowledged": len(acked), "stored": len(jobs), "by_state": dict(by_state),
            "lost": len(lost),
            "duplicated_keys": len(keys) - len(set(keys)),
            "duplicated_ids": len(acked) - len(acked_ids),
            "stored_but_never_acknowledged": len(unacked), "consistency": report.as_json()}


def summarise(results: list[ClientResult], wall_s: float) -> dict[str, Any]:
    submit = [s for r in results for s in r.submit_s]
    get = [s for r in results for s in r.get_s]
    acked = sum(len(r.acked) for r in results)
    return {"submissions": acked, "wall_s": round(wall_s, 2),
            "submissions_per_s": round(acked / wall_s, 1) if wall_s else 0.0,
            "submit_p50_ms": _ms(submit, 50), "submit_p99_ms": _ms(submit, 99),
            "get_p50_ms": _ms(get, 50), "get_p99_ms": _ms(get, 99), "gets": len(get),
            "resource_exhausted": sum(r.exhausted for r in results),
            "errors": [e for r in results for e in r.errors][:10]}


def _agents(n: int) -> list[AgentSpec]:
    return [AgentSpec(f"bench-{i:03d}", f"pool-{i % 4}", "local", ("H100:8",),
                      ("--heartbeat-interval", "2")) for i in range(n)]


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench api: timed out waiting for {what}")
        time.sleep(0.2)


def _ready(client: XinheClient, n: int) -> bool:
    """Whether ``n`` nodes are READY; a server too busy to answer is not."""
    try:
        nodes = client.nodes()
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
            return False
        raise
    return sum(1 for x in nodes if x.status == common_pb2.NODE_STATUS_READY) >= n


def soak(client: XinheClient, jobs: int, clients: int) -> tuple[list[tuple[str, str]], float]:
    """Submit ``jobs`` 1-device jobs (threads share the work) and wait until
    every one has ended."""
    acked: list[tuple[str, str]] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        with XinheClient(client.target, timeout=60) as c:
            for i in range(w, jobs, clients):
                key = f"soak-{i}"
                while True:
                    try:
                        job = c.submit(bench_spec("soak"), client_key=key)
                        break
                    except grpc.RpcError as exc:
                        if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                            raise
                        time.sleep(0.05)
                with lock:
                    acked.append((key, job.id))

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    live = sorted(states.NON_TERMINAL)
    _wait(lambda: not client._call(client.jobs.ListJobs, jobs_pb2.ListJobsRequest(
        states=live, page_size=1)).jobs, 3600, "the soak's jobs to end")
    return acked, time.perf_counter() - start


def bench_api(*, clients: int = 4, threads: int = 4, duration_s: float = 10.0, agents: int = 4,
              latency_jobs: int = 50, get_every: int = 5, soak_jobs: int = 0,
              root: Path | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON report (see the module doc)."""
    with tempfile.TemporaryDirectory(prefix="xinhe-bench-api-") as tmp:
        base = Path(root or tmp)
        fleet = LocalFleet(base, _agents(agents), scheduler="inline",
                           server_args=list(SERVER_ARGS))
        report: dict[str, Any] = {"setup": {"clients": clients, "threads_per_client": threads,
                                            "duration_s": duration_s, "agents": agents,
                                            "store": "sqlite", "scheduler": "inline"}}
        with fleet, XinheClient(fleet.address, timeout=60) as client:
            client.wait_ready(60)
            _wait(lambda: _ready(client, agents), 60 + 2.0 * agents, f"{agents} agents")
            report["submit_to_running"] = submit_to_running(client, latency_jobs)
            if soak_jobs:
                acked, wall = soak(client, soak_jobs, clients * threads)
                report["soak"] = {"jobs": soak_jobs, "wall_s": round(wall, 1),
                                  "jobs_per_s": round(soak_jobs / wall, 1)}
                tenants = {"soak"}
            else:
                for node in client.nodes():
                    client.cordon(node.name, "bench api: measure the API, not launches")
                results, wall = run_load(fleet.address, clients, threads, duration_s,
                                         get_every)
                report["load"] = summarise(results, wall)
                acked = [a for r in results for a in r.acked]
                tenants = {f"bench{c}" for c in range(clients)}
            report["server_memory"] = vm_kib(fleet.server.pid) if fleet.server else {}
        report["verification"] = verify(base / "data" / "xinhe.db", acked, tenants)
    report["targets"] = targets_met(report)
    return report


def targets_met(report: dict[str, Any]) -> dict[str, Any]:
    load, latency = report.get("load", {}), report.get("submit_to_running", {})
    checks = report.get("verification", {})
    timed = "load" in report  # a soak has no timed load phase: None = not measured
    return {
        "submissions_per_s": load.get("submissions_per_s", 0) >= TARGETS["submissions_per_s"]
        if timed else None,
        "submit_p99_ms": 0 < load.get("submit_p99_ms", 1e9) < TARGETS["submit_p99_ms"]
        if timed else None,
        "submit_to_running_p99_ms":
            0 < latency.get("p99_ms", 1e9) < TARGETS["submit_to_running_p99_ms"],
        "zero_lost_or_duplicated": checks.get("lost", 1) == 0
            and checks.get("duplicated_keys", 1) == 0
            and checks.get("stored_but_never_acknowledged", 1) == 0,
        "store_consistent": checks.get("consistency", {}).get("ok", False),
    }
