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
    p = sub.add_parser("bench", help="benchmarks (scheduler core)")
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


def run(args: argparse.Namespace) -> int:
    if min(args.nodes, args.jobs, args.rounds) < 1:
        raise SystemExit("xinhe bench scheduler: --nodes, --jobs and --rounds must be >= 1")
    report = bench(args.nodes, args.jobs, args.rounds, args.seed)
    if args.curve:
        report["curve"] = curve(args.jobs, rounds=1, seed=args.seed)
    print(json.dumps(report, indent=2))
    return 0
