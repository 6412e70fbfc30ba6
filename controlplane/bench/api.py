"""`xinhe bench api`: drive the real server through gRPC and measure it.

A control plane (SQLite, inline scheduler) and simulated agents run as
processes (LocalFleet) in a temporary directory. Phases:

1. submit-to-running on an idle fleet: one 1-device job at a time that runs
   ``true``; latency from the client's submit to the job's RUNNING event
   (server clock, same host).
2. sustained load: every node cordoned (so the phase measures the API and
   store, not process spawning), ``clients`` processes x ``threads`` each
   call SubmitJob for ``duration_s`` seconds, one GetJob per ``get_every``
   calls, one tenant per process (each under the per-tenant limit); with
   ``batch`` > 1 the same load again (other tenants) with SubmitJobs calls of
   ``batch`` items, reported beside it with the ratios (``api_load``).
3. verification: the server is stopped, then every acknowledged id must
   exist exactly once with its client key, no job may exist that no client
   saw acknowledged, and the store consistency checker must pass.

``soak_jobs`` > 0 replaces phase 2 by a soak: that many jobs submitted and
run to completion through the agents, then verified the same way, plus:
every job SUCCEEDED on its first attempt (ran exactly once). The soak's
agents are simulated agents hosted in one process (``xinhe agent
--simulated-count``, agents/sim_fleet.py): real Register/Connect streams,
but replicas that spawn nothing and "run" 0-1 s, so 200 agents fit a small
machine and the soak measures the control plane.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc

from controlplane.bench.api_load import (
    ClientResult,
    LoadPlan,
    bench_spec,
    run_load,
    summarise,
)
from controlplane.bench.procs import child_pids, cpu_s
from controlplane.bench.scheduler import nearest_rank
from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet
from controlplane.model import states
from controlplane.store.check import check_store
from controlplane.store.sqlite import SqliteStore
from xinhe.v1 import common_pb2, jobs_pb2

TARGETS = {"submissions_per_s": 2000, "submit_p99_ms": 50, "submit_to_running_p99_ms": 100}
SERVER_ARGS = ("--schedule-interval", "0.2", "--stop-grace", "1", "--heartbeat-interval", "1")


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


def _agents(n: int) -> list[AgentSpec]:
    return [AgentSpec(f"bench-{i:03d}", f"pool-{i % 4}", "local", ("H100:8",),
                      ("--heartbeat-interval", "2")) for i in range(n)]


def _soak_agents(n: int) -> list[AgentSpec]:
    """``n`` simulated agents in one process (nodes soak-0000 ...)."""
    return [AgentSpec("soak", "soak", "local", ("H100:8",),
                      ("--heartbeat-interval", "2", "--simulated-count", str(n)))]


def _soak_server_env(agents: int) -> dict[str, str]:
    # Every Connect stream holds a server worker for its life: room for all
    # the agents plus the soak's clients.
    return {"XINHE_MAX_WORKERS": str(agents + 64)}


SOAK_SECONDS = tuple(i / 10 for i in range(11))  # a soak job sleeps one of these


def soak_spec(i: int) -> common_pb2.JobSpec:
    """The soak's ``i``-th job: 1 device, ``sleep`` 0.0-1.0 s (a simulated
    agent runs a ``sleep N`` replica for N seconds without a process)."""
    spec = bench_spec("soak")
    spec.command[:] = ["sleep", f"{SOAK_SECONDS[i % len(SOAK_SECONDS)]:.1f}"]
    return spec


def soak_outcome(db: Path, expected: int, tenant: str = "soak") -> dict[str, Any]:
    """Ran exactly once: every soak job SUCCEEDED on its first attempt (a
    lost or duplicated run would have failed, retried or been fenced)."""
    with SqliteStore(db) as store:
        jobs = [j for j in store.jobs_in_states(states.ALL_STATES) if j.tenant == tenant]
    once = [j for j in jobs if j.state == common_pb2.JOB_STATE_SUCCEEDED and j.attempt == 1]
    return {"succeeded_first_attempt": len(once),
            "not_succeeded_once": max(expected, len(jobs)) - len(once)}


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


class InFlight:
    """Holds the soak's submitters back while ``limit`` of its jobs are
    unfinished (ended = terminal count of GetClusterSummary, polled), so the
    soak measures jobs flowing through the agents rather than a queue 100k
    deep (the scheduler benchmark measures that)."""

    def __init__(self, client: XinheClient, limit: int) -> None:
        self.limit = limit
        self._client = client
        self._cond = threading.Condition()
        self._submitted = 0
        self._ended = 0
        self._base = self._terminal()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, daemon=True, name="soak-in-flight")
        self._poller.start()

    def acquire(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._submitted - self._ended < self.limit)
            self._submitted += 1

    def close(self) -> None:
        self._stop.set()
        self._poller.join(5.0)

    def _terminal(self) -> int:
        summary = self._client.summary()
        return sum(c.count for c in summary.jobs if states.is_terminal(c.state))

    def _poll(self) -> None:
        started = last_note = time.monotonic()
        while not self._stop.wait(0.5):
            try:
                ended = self._terminal() - self._base
            except grpc.RpcError:
                continue  # a slow answer: the next poll catches up
            with self._cond:
                self._ended = ended
                self._cond.notify_all()
            if time.monotonic() - last_note >= 30:  # progress of a long soak, on stderr
                last_note = time.monotonic()
                print(f"soak: {ended} jobs ended in {last_note - started:.0f}s "
                      f"({ended / (last_note - started):.1f}/s)", file=sys.stderr, flush=True)


def soak(client: XinheClient, jobs: int, clients: int,
         in_flight: int = 0) -> tuple[list[tuple[str, str]], float]:
    """Submit ``jobs`` 1-device jobs (threads share the work), at most
    ``in_flight`` unfinished at a time (0 = no bound), and wait until every
    one has ended."""
    acked: list[tuple[str, str]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    window = InFlight(client, in_flight or jobs)

    def worker(w: int) -> None:
        try:
            submit_share(w)
        except BaseException as exc:  # re-raised by soak() once every thread ended
            with lock:
                failures.append(exc)

    def submit_share(w: int) -> None:
        with XinheClient(client.target, timeout=60) as c:
            for i in range(w, jobs, clients):
                key = f"soak-{i}"
                window.acquire()
                while True:
                    try:
                        job = c.submit(soak_spec(i), client_key=key)
                        break
                    except grpc.RpcError as exc:
                        if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                            raise
                        time.sleep(0.05)
                with lock:
                    acked.append((key, job.id))

    start = time.perf_counter()
    # Daemons: an interrupted soak (Ctrl-C) exits instead of waiting on its window.
    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    window.close()
    if failures:
        raise RuntimeError(f"bench api soak: {len(failures)} submitting thread(s) failed: "
                           f"{failures[0]}") from failures[0]
    live = sorted(states.NON_TERMINAL)
    _wait(lambda: not client._call(client.jobs.ListJobs, jobs_pb2.ListJobsRequest(
        states=live, page_size=1)).jobs, max(3600, jobs / 10), "the soak's jobs to end")
    return acked, time.perf_counter() - start


def bench_api(*, clients: int = 4, threads: int = 4, duration_s: float = 10.0, agents: int = 4,
              latency_jobs: int = 50, get_every: int = 5, soak_jobs: int = 0,
              root: Path | None = None, batch: int = 1,
              api_workers: int = 0) -> dict[str, Any]:
    """Run the benchmark; returns the JSON report (see the module doc)."""
    with tempfile.TemporaryDirectory(prefix="xinhe-bench-api-") as tmp:
        base = Path(root or tmp)
        fleet = LocalFleet(base, _soak_agents(agents) if soak_jobs else _agents(agents),
                           scheduler="inline",
                           server_args=[*SERVER_ARGS, "--api-workers", str(api_workers)],
                           server_env=_soak_server_env(agents) if soak_jobs else None)
        report: dict[str, Any] = {"setup": {"clients": clients, "threads_per_client": threads,
                                            "duration_s": duration_s, "agents": agents,
                                            "store": "sqlite", "scheduler": "inline",
                                            "batch": batch, "api_workers": api_workers}}
        with fleet, XinheClient(fleet.address, timeout=60) as client:
            client.wait_ready(60)
            _wait(lambda: _ready(client, agents), 60 + 2.0 * agents, f"{agents} agents")
            report["submit_to_running"] = submit_to_running(client, latency_jobs)
            if soak_jobs:
                in_flight = max(200, 2 * 8 * agents)  # twice the fleet's devices
                acked, wall = soak(client, soak_jobs, clients * threads, in_flight)
                # Baseline: what the fleet could finish if placing, launching
                # and reporting cost nothing (devices / mean job duration).
                capacity = 8 * agents / (sum(SOAK_SECONDS) / len(SOAK_SECONDS))
                report["soak"] = {"jobs": soak_jobs, "in_flight_max": in_flight,
                                  "fleet_capacity_jobs_per_s": round(capacity, 1),
                                  "ratio_to_fleet_capacity": round(soak_jobs / wall / capacity, 4),
                                  "wall_s": round(wall, 1),
                                  "jobs_per_s": round(soak_jobs / wall, 1),
                                  "agent_host_memory": vm_kib(fleet.agents["soak"].pid)}
                tenants = {"soak"}
            else:
                for node in client.nodes():
                    client.cordon(node.name, "bench api: measure the API, not launches")
                plan = LoadPlan(fleet.address, clients, threads, duration_s, get_every)
                acked, tenants = timed_loads(plan, batch, report,
                                             fleet.server.pid if fleet.server else None)
            report["server_memory"] = vm_kib(fleet.server.pid) if fleet.server else {}
        report["verification"] = verify(base / "data" / "xinhe.db", acked, tenants)
        if soak_jobs:
            report["soak"].update(soak_outcome(base / "data" / "xinhe.db", soak_jobs))
    report["targets"] = targets_met(report)
    return report


def cpu_snapshot(server_pid: int | None) -> dict[str, float]:
    """CPU seconds so far of the control-plane process and of its API front
    ends (its children)."""
    if not server_pid:
        return {}
    return {"control_plane": cpu_s(server_pid),
            "front_ends": sum(cpu_s(p) for p in child_pids(server_pid))}


def cpu_per_submission(before: dict[str, float], after: dict[str, float],
                       results: list[ClientResult], submissions: int) -> dict[str, float]:
    """CPU milliseconds per acknowledged submission of each kind of process
    over a load: server side from /proc around it (front ends replaced
    meanwhile are not counted), clients as each measured its own from the
    start signal (their start-up excluded), and all together."""
    n = max(submissions, 1)
    out = {k: round((after[k] - before.get(k, 0.0)) * 1000 / n, 3) for k in after}
    out["clients"] = round(sum(r.cpu_s for r in results) * 1000 / n, 3)
    out["total"] = round(sum(out.values()), 3)
    return out


def timed_loads(plan: LoadPlan, batch: int, report: dict[str, Any],
                server_pid: int | None = None) -> tuple[list[tuple[str, str]], set[str]]:
    """The single-call load (``load``) and, with ``batch`` > 1, the batched
    one (``load_batched``, tenants batch0...) and their ratios
    (``batched_vs_single``); returns every acknowledged (key, id) and the
    tenants used. Each load reports the CPU it cost per submission
    (``cpu_snapshot``)."""
    plans = [plan]
    if batch > 1:
        plans.append(replace(plan, batch=batch, tenant_prefix="batch"))
    acked: list[tuple[str, str]] = []
    for each in plans:
        before = cpu_snapshot(server_pid)
        results, wall = run_load(each)
        summary = summarise(results, wall, each.batch)
        summary["cpu_ms_per_submission"] = cpu_per_submission(
            before, cpu_snapshot(server_pid), results, summary["submissions"])
        report["load" if each.batch == 1 else "load_batched"] = summary
        acked += [a for r in results for a in r.acked]
    if batch > 1:
        report["batched_vs_single"] = ratios(report["load"], report["load_batched"])
    return acked, {t for each in plans for t in each.tenants()}


def ratios(single: dict[str, Any], batched: dict[str, Any]) -> dict[str, Any]:
    """Batched figures over single-call ones, measured in the same run."""
    def ratio(key: str) -> float | None:
        return round(batched[key] / single[key], 2) if single.get(key) else None

    return {"submissions_per_s_single": single["submissions_per_s"],
            "submissions_per_s_batched": batched["submissions_per_s"],
            "throughput_ratio": ratio("submissions_per_s"),
            "call_p99_ratio": ratio("submit_p99_ms"),
            "item_p99_ratio": round(batched["item_p99_ms"] / single["submit_p99_ms"], 2)
            if single.get("submit_p99_ms") else None}


def targets_met(report: dict[str, Any]) -> dict[str, Any]:
    """Which targets this run met; ``submissions_per_s`` and
    ``submit_p99_ms`` are the single-call figures (SubmitJob), the
    ``_batched`` ones SubmitJobs' (None when not run)."""
    load, latency = report.get("load", {}), report.get("submit_to_running", {})
    batched = report.get("load_batched")
    checks = report.get("verification", {})
    timed = "load" in report  # a soak has no timed load phase: None = not measured
    rate, p99 = TARGETS["submissions_per_s"], TARGETS["submit_p99_ms"]
    return {
        "submissions_per_s": load.get("submissions_per_s", 0) >= rate if timed else None,
        "submit_p99_ms": 0 < load.get("submit_p99_ms", 1e9) < p99 if timed else None,
        "submissions_per_s_batched": batched.get("submissions_per_s", 0) >= rate
        if batched else None,
        "submit_p99_ms_batched": 0 < batched.get("submit_p99_ms", 1e9) < p99
        if batched else None,
        "submit_to_running_p99_ms":
            0 < latency.get("p99_ms", 1e9) < TARGETS["submit_to_running_p99_ms"],
        "zero_lost_or_duplicated": checks.get("lost", 1) == 0
            and checks.get("duplicated_keys", 1) == 0
            and checks.get("stored_but_never_acknowledged", 1) == 0,
        "store_consistent": checks.get("consistency", {}).get("ok", False),
        "soak_each_job_ran_once": report["soak"].get("not_succeeded_once", 1) == 0
        if "soak" in report else None,
    }
