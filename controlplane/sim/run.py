"""One comparison: the same jobs on the same fleet under several policies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from controlplane.sim.engine import SchedulingPolicy, SimResult, simulate
from controlplane.sim.report import compare, summarize
from controlplane.sim.speeds import Physics
from controlplane.sim.trace import TraceJob


@dataclass(frozen=True)
class Comparison:
    results: tuple[SimResult, ...]
    summaries: tuple[dict[str, Any], ...]

    def as_json(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {"inputs": inputs, "policies": list(self.summaries),
                "ratios": compare(self.summaries)}


def run_policies(jobs: Sequence[TraceJob], physics: Physics,
                 policies: Sequence[SchedulingPolicy],
                 checkpoint_every_s: float = 600.0,
                 restart_cost_s: float = 60.0) -> Comparison:
    """Simulate each policy on the same input (deterministic); a migrated
    job spends ``restart_cost_s`` restarting."""
    results = tuple(simulate(jobs, physics, p, checkpoint_every_s, restart_cost_s)
                    for p in policies)
    return Comparison(results, tuple(summarize(r, physics) for r in results))
