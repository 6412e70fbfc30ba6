"""Words for the core's decisions: estimates as H:MM:SS, runner-up pools.

Formatting is the expensive part of a decision, so placements format their
explanation on first read (``PlacementDecision.explanation``) from the
candidates they carry. This module imports no scheduler type at run time, so
``types`` can use it without an import cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controlplane.scheduler.types import Candidate, PlacementDecision

# How many runner-up candidates an explanation names; the rest are counted.
EXPLAIN_OTHERS = 3
# Objectives as explanations name them (see ``core_objective``); fastest
# finish is the default and goes unnamed.
OBJECTIVE_WORDS = {"cost": "lowest cost", "energy": "lowest energy",
                   "pinned": "pinned family (fastest within it)"}
BETTER = {"cost": "cheaper", "energy": "more efficient"}


def clock(seconds: float) -> str:
    """A duration as H:MM:SS (hours may exceed 24)."""
    total = max(round(seconds), 0)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def figures(cand: Candidate) -> str:
    """", cost 1.20, 0.4 kWh, incl. 0:30:00 data transfer": what is known."""
    out = f", cost {cand.cost:.2f}" if cand.cost else ""
    out += f", {cand.energy_kwh:.1f} kWh" if cand.energy_kwh else ""
    if cand.transfer_s:
        out += f", incl. {clock(cand.transfer_s)} data transfer"
    return out


def describe(cand: Candidate, now: float) -> str:
    """``pool (model) H:MM:SS`` with its figures and a note when it does
    not fit now."""
    busy = "" if cand.fits_now else f" (busy, starts in {clock(cand.start_s - now)})"
    return f"{cand.pool} ({cand.model}) {clock(cand.finish_s - now)}{figures(cand)}{busy}"


def explain_placement(decision: PlacementDecision) -> str:
    """"chose pool p (M): est. finish 0:10:05; others: q (N) 0:31:40, ..."."""
    now, cands = decision.decided_at, decision.candidates
    if not cands:
        return f"chose pool {decision.pool} ({decision.model})"
    chosen = cands[decision.chosen_index]
    head = (f"chose pool {chosen.pool} ({chosen.model}): est. finish "
            f"{clock(chosen.finish_s - now)}{figures(chosen)}")
    words = OBJECTIVE_WORDS.get(decision.objective)
    tail = f"; objective: {words}" if words else ""
    others = [c for i, c in enumerate(cands) if i != decision.chosen_index]
    more = max(len(others) - EXPLAIN_OTHERS, 0) + decision.others_not_compared
    if not others and not more:
        return f"{head}; no other candidates{tail}"
    # With figures (which hold commas) the candidates are set apart by ";".
    sep = "; " if any((c.cost, c.energy_kwh, c.transfer_s) for c in cands) else ", "
    named = sep.join(describe(c, now) for c in others[:EXPLAIN_OTHERS])
    return f"{head}; others: {named}" + (f" (+{more} more)" if more > 0 else "") + tail


def explain_wait_for_faster(fast: Candidate, slow: Candidate, now: float,
                            reserved: bool = True, objective: str = "") -> str:
    """Why a job stays queued although some pool could take it now."""
    better = BETTER.get(objective, "faster")
    text = (
        f"waiting for {better} pool {fast.pool} ({fast.model}): est. finish "
        f"{clock(fast.finish_s - now)}{figures(fast)} there (starts in "
        f"{clock(fast.start_s - now)}) vs {clock(slow.finish_s - now)}{figures(slow)} if "
        f"started now on pool {slow.pool} ({slow.model})"
    )
    if objective in BETTER:
        text += f"; objective: {OBJECTIVE_WORDS[objective]}"
    return f"{text}; devices reserved for it there" if reserved else text


def explain_reserved(capacity: str, fast: Candidate, now: float) -> str:
    """A capacity wait that holds a reservation: when and where it should start."""
    return (
        f"{capacity}; reserved pool {fast.pool} ({fast.model}): expected start in "
        f"{clock(fast.start_s - now)}, est. finish {clock(fast.finish_s - now)}"
    )
