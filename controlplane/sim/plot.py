"""Optional PNG of utilisation and queue length over time (needs matplotlib,
the ``plot`` extra); the simulator itself never requires it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from controlplane.sim.engine import SimResult
from controlplane.sim.errors import SimInputError
from controlplane.sim.speeds import Physics


def plot_timelines(results: Sequence[SimResult], physics: Physics, path: str | Path) -> None:
    """One column per policy: fleet utilisation (top) and queue length (bottom)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SimInputError(
            "--plot needs matplotlib: pip install 'xinhe-orchestrator[plot]'") from None
    total = physics.fleet.devices
    fig, axes = plt.subplots(2, len(results), figsize=(5 * len(results), 6), squeeze=False,
                             sharex=True)
    for col, result in enumerate(results):
        hours = [s.time / 3600 for s in result.timeline]
        util = [sum(s.busy.values()) / total for s in result.timeline]
        axes[0][col].step(hours, util, where="post")
        axes[0][col].set_title(result.policy)
        axes[0][col].set_ylim(0, 1.05)
        axes[1][col].step(hours, [s.queued for s in result.timeline], where="post")
        axes[1][col].set_xlabel("hours")
    axes[0][0].set_ylabel("devices busy (share)")
    axes[1][0].set_ylabel("jobs queued")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
