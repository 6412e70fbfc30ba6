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
    a.add_argument("--soak", action="store_true",
                   help="instead of timed load: run --soak-jobs jobs through --agents to the "
                        "end (defaults 100000 jobs, 200 agents; takes long)")
    a.add_argument("--soak-jobs", type=int, default=100_000)
    a.set_defaults(func=run_api)


def run_api(args: argparse.Namespace) -> int:
    from controlplane.bench.api import bench_api

    if min(args.clients, args.threads, args.agents) < 1 or args.duration <= 0:
        raise SystemExit("xinhe bench api: --clients, --threads, --agents must be >= 1 "
                         "and --duration > 0")
    agents = 200 if args.soak and args.agents == 4 else args.agents
    report = bench_api(clients=args.clients, threads=args.threads, duration_s=args.duration,
                       agents=agents, latency_jobs=args.latency_jobs,
                       soak_jobs=args.soak_jobs if args.soak else 0)
    print(json.dumps(report, indent=2))
    return 0 if report["targets"]["zero_lost_or_duplicated"] else 1


def run(args: argparse.Namespace) -> int:
    if min(args.nodes, args.jobs, args.rounds) < 1:
        raise SystemExit("xinhe bench scheduler: --nodes, --jobs and --rounds must be >= 1")
    report = bench(args.nodes, args.jobs, args.rounds, args.seed)
    if args.curve:
        report["curve"] = curve(args.jobs, rounds=1, seed=args.seed)
    print(json.dumps(report, indent=2))
    return 0
