"""The sustained-load phase of `xinhe bench api`: client processes x threads
submitting as fast as the server answers, one call at a time per thread.

A call is SubmitJob (``batch`` 1) or SubmitJobs with ``batch`` items. Every
thread connects first and reports ready; the clock starts for all of them at
once when the last is ready (a loaded machine may take seconds to start the
processes), and each thread then submits for ``duration_s``. A
RESOURCE_EXHAUSTED call is retried with the same keys (a retry must not
create a second job); one GetJob follows every ``get_every``-th call.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from controlplane.bench.scheduler import nearest_rank
from controlplane.client import XinheClient
from xinhe.v1 import common_pb2

# Longest wait for every client thread to connect before the clock starts.
READY_TIMEOUT_S = 120.0
# Each thread is a caller with its own connection (gRPC would otherwise share
# one per process), as callers on many hosts would be: with API front ends
# the kernel spreads connections, not calls.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


@dataclass(frozen=True)
class LoadPlan:
    address: str
    clients: int
    threads: int
    duration_s: float
    get_every: int = 5
    batch: int = 1  # items per call; 1 = SubmitJob, more = SubmitJobs
    tenant_prefix: str = "bench"  # tenants <prefix>0, <prefix>1, ...

    def tenants(self) -> list[str]:
        return [f"{self.tenant_prefix}{c}" for c in range(self.clients)]


@dataclass
class ClientResult:
    """What one load process saw: acknowledged (key, id) pairs and latencies."""

    acked: list[tuple[str, str]] = field(default_factory=list)
    call_s: list[float] = field(default_factory=list)  # per call
    item_s: list[float] = field(default_factory=list)  # per call / its items
    get_s: list[float] = field(default_factory=list)
    exhausted: int = 0
    errors: list[str] = field(default_factory=list)
    first: float = float("inf")  # wall time of the first call sent
    last: float = 0.0  # wall time of the last answer
    cpu_s: float = 0.0  # CPU of the process (all threads) from the start signal to its end


def bench_spec(tenant: str) -> common_pb2.JobSpec:
    spec = common_pb2.JobSpec(name="bench", queue=f"{tenant}/default", command=["true"],
                              replicas=1)
    spec.resources.accelerators = 1
    return spec


def _send(client: XinheClient, spec: common_pb2.JobSpec, keys: list[str],
          out: ClientResult, lock: threading.Lock) -> list[tuple[str, str]]:
    """One call; the (key, id) pairs it acknowledged."""
    if len(keys) == 1:
        return [(keys[0], client.submit(spec, client_key=keys[0]).id)]
    acked = []
    for key, result in zip(keys, client.submit_many([spec] * len(keys), keys), strict=True):
        if result.error_code:
            with lock:
                out.errors.append(f"item {result.error_code}: {result.error_message}")
        else:
            acked.append((key, result.job.id))
    return acked


def _load_thread(plan: LoadPlan, tenant: str, prefix: str, gate: tuple[Any, Any],
                 out: ClientResult, lock: threading.Lock) -> None:
    ready, go = gate
    spec = bench_spec(tenant)
    with XinheClient(plan.address, timeout=30, channel_options=OWN_CONNECTION) as client:
        client.wait_ready(60)
        ready.put(prefix)
        if not go.wait(READY_TIMEOUT_S + 30):
            return
        until = time.time() + plan.duration_s
        with lock:
            out.first = min(out.first, time.time())
        i = calls = 0
        while time.time() < until:
            keys = [f"{prefix}-{i + k}" for k in range(plan.batch)]
            start = time.perf_counter()
            try:
                acked = _send(client, spec, keys, out, lock)
            except grpc.RpcError as exc:
                with lock:
                    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        out.exhausted += 1
                    else:
                        out.errors.append(f"{exc.code().name}: {exc.details()}")
                time.sleep(0.01)
                continue  # same keys: a retry must not create a second job
            took = time.perf_counter() - start
            got = None
            if plan.get_every and calls % plan.get_every == 0 and acked:
                start = time.perf_counter()
                client.get(acked[0][1])
                got = time.perf_counter() - start
            with lock:
                out.acked.extend(acked)
                out.call_s.append(took)
                out.item_s.append(took / len(keys))
                if got is not None:
                    out.get_s.append(got)
                out.last = max(out.last, time.time())
            i += plan.batch
            calls += 1


def load_process(plan: LoadPlan, tenant: str, gate: tuple[Any, Any]) -> ClientResult:
    """One client process: ``plan.threads`` threads of synchronous calls."""
    out, lock = ClientResult(), threading.Lock()
    workers = [threading.Thread(target=_load_thread, args=(
        plan, tenant, f"{tenant}-t{t}", gate, out, lock)) for t in range(plan.threads)]
    for w in workers:
        w.start()
    gate[1].wait(READY_TIMEOUT_S + 30)
    cpu = time.process_time()  # the load's own CPU: not the start-up and imports
    for w in workers:
        w.join()
    out.cpu_s = time.process_time() - cpu
    return out


def run_load(plan: LoadPlan) -> tuple[list[ClientResult], float]:
    """Results of every client process and the measured window (seconds from
    the first call sent to the last answer received)."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(plan.clients) as pool:
        ready, go = manager.Queue(), manager.Event()
        pending = pool.starmap_async(load_process, [
            (plan, tenant, (ready, go)) for tenant in plan.tenants()])
        _await_ready(ready, plan.clients * plan.threads, pending)
        go.set()
        results = pending.get()
    first = min(r.first for r in results)
    last = max((r.last for r in results), default=first)
    return results, max(last - first, 1e-9)


def _await_ready(ready: Any, n: int, pending: Any) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    seen = 0
    while seen < n and time.monotonic() < deadline and not pending.ready():
        try:
            ready.get(timeout=0.5)
            seen += 1
        except queue.Empty:
            continue


def _ms(values: list[float], q: float) -> float:
    return round(nearest_rank(values, q) * 1000, 2)


def summarise(results: list[ClientResult], wall_s: float, batch: int = 1) -> dict[str, Any]:
    """Throughput and latencies; ``submit_*`` are per call, ``item_*`` per
    call divided by its items (the same when ``batch`` is 1)."""
    calls = [s for r in results for s in r.call_s]
    items = [s for r in results for s in r.item_s]
    get = [s for r in results for s in r.get_s]
    acked = sum(len(r.acked) for r in results)
    return {"batch": batch, "calls": len(calls), "submissions": acked, "wall_s": round(wall_s, 2),
            "submissions_per_s": round(acked / wall_s, 1) if wall_s else 0.0,
            "submit_p50_ms": _ms(calls, 50), "submit_p99_ms": _ms(calls, 99),
            "item_p50_ms": _ms(items, 50), "item_p99_ms": _ms(items, 99),
            "get_p50_ms": _ms(get, 50), "get_p99_ms": _ms(get, 99), "gets": len(get),
            "resource_exhausted": sum(r.exhausted for r in results),
            "errors": [e for r in results for e in r.errors][:10]}
