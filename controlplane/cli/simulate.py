"""`xinhe simulate`: replay a trace on a fleet under Xinhe's core and baselines.

Inputs: a fleet CSV and a trace CSV, or the Gavel files (``--gavel DIR``),
or a seeded synthetic workload (``--synthetic N``) on the fleet (default:
the synthetic Chinese-chip fleet). Prints a table and JSON (or writes the
JSON to ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from controlplane.scheduler.types import Policy
from controlplane.sim import gavel, synth
from controlplane.sim.errors import SimInputError
from controlplane.sim.fleet import Fleet, read_fleet
from controlplane.sim.knobs import (
    SIM_OBJECTIVES,
    parse_quotas,
    with_knobs,
    with_migration,
    with_objective,
    with_start_then_migrate,
)
from controlplane.sim.plot import plot_timelines
from controlplane.sim.policies import POLICIES, make_policies
from controlplane.sim.report import table
from controlplane.sim.run import run_policies
from controlplane.sim.speeds import Physics, offered_load, scale_to_load
from controlplane.sim.trace import TraceJob, read_trace


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="replay a job trace on a fleet: Xinhe vs baselines")
    p.add_argument("--fleet", help="fleet CSV: pool,region,model,nodes,devices_per_node,"
                                   "cost_per_device_hour")
    p.add_argument("--trace", help="trace CSV (see README: Simulating the scheduler)")
    p.add_argument("--gavel", metavar="DIR", help="use Gavel's Philly-derived trace and "
                   "300:300:300 K80/P100/V100 cluster from DIR")
    p.add_argument("--gavel-jobs", type=int, default=0, help="first N Gavel jobs (0 = all)")
    p.add_argument("--synthetic", type=int, metavar="N", default=0,
                   help="N seeded synthetic jobs (Chinese-chip fleet unless --fleet)")
    p.add_argument("--seed", type=int, default=0, help="seed of --synthetic")
    p.add_argument("--load", type=float, default=0.0,
                   help="rescale arrivals to this offered load (1.0 = fleet just keeps up)")
    p.add_argument("--policies", default="xinhe,fifo,pinned",
                   help=f"comma-separated, from {','.join(POLICIES)}")
    p.add_argument("--quotas", default="", metavar="SPEC",
                   help="tenant:family_or_model=devices[+borrow],... e.g. "
                        "lab-a:ascend=16+8 (no +N: unlimited borrowing)")
    p.add_argument("--checkpoint-every", type=float, default=600.0, metavar="S",
                   help="jobs checkpoint every S s; a preempted job loses what it ran "
                        "since (0 = nothing lost)")
    p.add_argument("--max-preemptions", type=int, default=8,
                   help="preemptions per scheduling round (0 = never preempt)")
    p.add_argument("--preemption-cooldown", type=float, default=300.0, metavar="S",
                   help="a job preempted less than S s ago is not preempted again")
    p.add_argument("--restart-cost", type=float, default=60.0, metavar="S",
                   help="a migrated job restarts for S s (checkpoint, stop, restore)")
    p.add_argument("--migrations-per-round", type=int, default=4, metavar="N",
                   help="xinhe moves at most N running jobs to faster free chips per "
                        "round (0 = never migrate)")
    p.add_argument("--start-slack", type=float, default=Policy.start_then_migrate_slack,
                   metavar="F", help="xinhe starts a job on a free slower chip, to move up "
                   "later, when that finishes at most this share later than waiting for "
                   "the faster one")
    p.add_argument("--start-margin", type=float, default=Policy.start_then_migrate_margin,
                   metavar="X", help="... and within X times waiting's finish even if "
                   "never moved")
    p.add_argument("--no-defrag", action="store_true",
                   help="xinhe does not move running jobs within a pool to make room for "
                        "a waiting gang")
    p.add_argument("--objective", choices=SIM_OBJECTIVES, default="fastest",
                   help="placement objective of every job for the policies that drive the "
                        "core: earliest finish, lowest cost (device-hours x pool "
                        "cost_per_device_hour) or lowest energy (x chip power)")
    p.add_argument("--json", metavar="FILE", help="write the JSON report here (not stdout)")
    p.add_argument("--plot", metavar="PNG", help="utilisation and queue over time "
                   "(needs the 'plot' extra: matplotlib)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        physics, jobs, inputs = load_inputs(args)
        policies = make_policies(args.policies)
        quotas = parse_quotas(args.quotas)
        with_knobs(policies, quotas, args.max_preemptions, args.preemption_cooldown)
        with_migration(policies, args.restart_cost, args.migrations_per_round)
        with_start_then_migrate(policies, args.start_slack, args.start_margin,
                                not args.no_defrag)
        with_objective(policies, args.objective)
        inputs["objective"] = args.objective
        if args.checkpoint_every < 0:
            raise SimInputError("--checkpoint-every must be >= 0")
        inputs["quotas"] = args.quotas
        inputs["restart_cost_s"] = args.restart_cost
        inputs["migrations_per_round"] = args.migrations_per_round
        inputs["start_then_migrate"] = {"slack": args.start_slack,
                                        "margin": args.start_margin}
        inputs["defrag"] = not args.no_defrag
    except (SimInputError, ValueError, OSError) as exc:
        print(f"xinhe simulate: {exc}", file=sys.stderr)
        return 2
    comparison = run_policies(jobs, physics, policies, args.checkpoint_every,
                              args.restart_cost)
    report = comparison.as_json(inputs)
    print(table(comparison.summaries))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
    else:
        print(json.dumps(report, indent=2))
    if args.plot:
        try:
            plot_timelines(comparison.results, physics, args.plot)
        except SimInputError as exc:
            print(f"xinhe simulate: {exc}", file=sys.stderr)
            return 2
    return 0


def load_inputs(args: argparse.Namespace) -> tuple[Physics, list[TraceJob], dict[str, Any]]:
    """Fleet and trace from the flags; arrivals rescaled when --load is set."""
    sources = [bool(args.trace), bool(args.gavel), bool(args.synthetic)]
    if sum(sources) != 1:
        raise SimInputError("give exactly one of --trace, --gavel DIR, --synthetic N")
    if args.gavel:
        if not gavel.available(args.gavel):
            raise SimInputError(f"{args.gavel}: Gavel files not found (see its README.md)")
        fleet = read_fleet(args.fleet) if args.fleet else gavel.gavel_fleet(args.gavel)
        jobs = gavel.gavel_trace(args.gavel, args.gavel_jobs)
    elif args.synthetic:
        fleet = read_fleet(args.fleet) if args.fleet else synth.chinese_fleet()
        jobs = synth.synthetic_trace(args.synthetic, args.seed, args.load or 1.2, fleet)
    else:
        if not args.fleet:
            raise SimInputError("--trace needs --fleet")
        fleet, jobs = read_fleet(args.fleet), read_trace(args.trace)
    physics = Physics.of(fleet)
    if args.load:
        jobs = scale_to_load(jobs, physics, args.load)
    return physics, jobs, describe_inputs(args, fleet, jobs, physics)


def describe_inputs(args: argparse.Namespace, fleet: Fleet, jobs: list[TraceJob],
                    physics: Physics) -> dict[str, Any]:
    source = args.trace or (f"gavel:{args.gavel}" if args.gavel else f"synthetic:{args.seed}")
    return {
        "trace": source,
        "jobs": len(jobs),
        "fleet": {p.name: f"{p.nodes}x{p.devices_per_node} {p.model}" for p in fleet.pools},
        "devices": fleet.devices,
        "offered_load": round(offered_load(jobs, physics), 3),
    }
