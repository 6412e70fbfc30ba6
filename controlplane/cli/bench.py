"""`xinhe bench scheduler`: time the pure core against naive first-fit.

Prints JSON: placements per second, round latency p50/p99 and peak memory
for the Xinhe core and a naive first-fit on the same synthetic fleet
(8 models, 6 families) and queue; ``--curve`` adds the scaling curve over
1k, 10k and 50k nodes (that one takes minutes).
"""

from __future__ import annotations

import argparse
import json

from controlplane.bench.scheduler import CURVE_NODES, bench, curve


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (scheduler core, API)")
    what = p.add_subparsers(dest="bench_target", metavar="TARGET")
    what.required = True
    s = what.add_parser("scheduler", help="the scheduler core vs naive first-fit (JSON)")
    s.add_argument("--nodes", type=int, default=10_000, help="nodes of 8 devices")
    s.add_argument("--jobs", type=int, default=100_000, help="pending jobs")
    s.add_argument("--rounds", type=int, default=3, help="rounds timed per policy")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--shards", type=int, default=1,
                   help="also time the round split into this many shards of pools, in "
                        "this process and on one local Ray actor per shard")
    s.add_argument("--curve", action="store_true",
                   help=f"also time {', '.join(map(str, CURVE_NODES))} nodes (slow)")
    s.set_defaults(func=run)
    register_api(what)


def register_api(what: argparse._SubParsersAction) -> None:
    a = what.add_parser("api", help="the real server through gRPC: throughput, latency (JSON)")
    a.add_argument("--clients", type=int, default=4, help="client processes")
    a.add_argument("--threads", type=int, default=4, help="threads per client process")
    a.add_argument("--duration", type=float, default=10.0, help="seconds of sustained load")
    a.add_argument("--agents", type=int, default=4, help="simulated agents (8 devices each)")
    a.add_argument("--latency-jobs", type=int, default=50,
                   help="jobs timed from submit to running on the idle fleet")
    a.add_argument("--batch", type=int, default=1,
                   help="items per SubmitJobs call: > 1 also runs the load with batched calls "
                        "and reports both (default 1: SubmitJob only)")
    a.add_argument("--api-workers", type=int, default=0,
                   help="the server's --api-workers (API front-end processes; default 0)")
    a.add_argument("--soak", action="store_true",
                   help="instead of timed load: run --soak-jobs jobs through --agents to the "
                        "end (defaults 100000 jobs, 200 agents; takes long)")
    a.add_argument("--soak-jobs", type=int, default=None,
                   help="jobs of the soak (implies --soak; default 100000); the soak's "
                        "agents are simulated agents hosted in one process")
    a.set_defaults(func=run_api)


def run_api(args: argparse.Namespace) -> int:
    from controlplane.bench.api import bench_api
    from controlplane.services.submit_many import MAX_ITEMS

    if min(args.clients, args.threads, args.agents) < 1 or args.duration <= 0:
        raise SystemExit("xinhe bench api: --clients, --threads, --agents must be >= 1 "
                         "and --duration > 0")
    if args.api_workers < 0:
        raise SystemExit("xinhe bench api: --api-workers must be >= 0")
    if not 1 <= args.batch <= MAX_ITEMS:
        raise SystemExit(f"xinhe bench api: --batch must be 1 to {MAX_ITEMS}")
    soaking = args.soak or args.soak_jobs is not None
    soak_jobs = 100_000 if args.soak_jobs is None else args.soak_jobs
    if soaking and soak_jobs < 1:
        raise SystemExit("xinhe bench api: --soak-jobs must be >= 1")
    agents = 200 if soaking and args.agents == 4 else args.agents
    report = bench_api(clients=args.clients, threads=args.threads, duration_s=args.duration,
                       agents=agents, latency_jobs=args.latency_jobs,
                       soak_jobs=soak_jobs if soaking else 0, batch=args.batch,
                       api_workers=args.api_workers)
    print(json.dumps(report, indent=2))
    targets = report["targets"]
    # A soak also fails when a job did not run exactly once.
    ok = targets["zero_lost_or_duplicated"] and targets.get("soak_each_job_ran_once") is not False
    return 0 if ok else 1


def run(args: argparse.Namespace) -> int:
    if min(args.nodes, args.jobs, args.rounds, args.shards) < 1:
        raise SystemExit("xinhe bench scheduler: --nodes, --jobs, --rounds and --shards "
                         "must be >= 1")
    report = bench(args.nodes, args.jobs, args.rounds, args.seed, shards=args.shards)
    if args.curve:
        report["curve"] = curve(args.jobs, rounds=1, seed=args.seed)
    print(json.dumps(report, indent=2))
    return 0
