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


def clock(seconds: float) -> str:
    """A duration as H:MM:SS (hours may exceed 24)."""
    total = max(round(seconds), 0)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def describe(cand: Candidate, now: float) -> str:
    """``pool (model) H:MM:SS`` with a note when it does not fit now."""
    busy = "" if cand.fits_now else f" (busy, starts in {clock(cand.start_s - now)})"
    return f"{cand.pool} ({cand.model}) {clock(cand.finish_s - now)}{busy}"


def explain_placement(decision: PlacementDecision) -> str:
    """"chose pool p (M): est. finish 0:10:05; others: q (N) 0:31:40, ..."."""
    now, cands = decision.decided_at, decision.candidates
    if not cands:
        return f"chose pool {decision.pool} ({decision.model})"
    chosen = cands[decision.chosen_index]
    head = f"chose pool {chosen.pool} ({chosen.model}): est. finish {clock(chosen.finish_s - now)}"
    others = [c for i, c in enumerate(cands) if i != decision.chosen_index]
    more = max(len(others) - EXPLAIN_OTHERS, 0) + decision.others_not_compared
    if not others and not more:
        return f"{head}; no other candidates"
    named = ", ".join(describe(c, now) for c in others[:EXPLAIN_OTHERS])
    return f"{head}; others: {named}" + (f" (+{more} more)" if more > 0 else "")


def explain_wait_for_faster(fast: Candidate, slow: Candidate, now: float,
                            reserved: bool = True) -> str:
    """Why a job stays queued although some pool could take it now."""
    text = (
        f"waiting for faster pool {fast.pool} ({fast.model}): est. finish "
        f"{clock(fast.finish_s - now)} there (starts in {clock(fast.start_s - now)}) "
        f"vs {clock(slow.finish_s - now)} if started now on pool {slow.pool} ({slow.model})"
    )
    return f"{text}; devices reserved for it there" if reserved else text


def explain_reserved(capacity: str, fast: Candidate, now: float) -> str:
    """A capacity wait that holds a reservation: when and where it should start."""
    return (
        f"{capacity}; reserved pool {fast.pool} ({fast.model}): expected start in "
        f"{clock(fast.start_s - now)}, est. finish {clock(fast.finish_s - now)}"
    )
