"""Migration in the simulator, on cases small enough to compute by hand.
Speeds are the jobs' own: H100 = 2, MLU370-X8 = 0.5 (as test_sim_engine)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from controlplane.scheduler.core_migrate import MigrationKnobs
from controlplane.scheduler.types import Policy
from controlplane.sim.engine import simulate
from controlplane.sim.errors import SimInputError
from controlplane.sim.fleet import Fleet, make_pool
from controlplane.sim.knobs import with_migration, with_start_then_migrate
from controlplane.sim.policies import MIGRATE, XinheCorePolicy, make_policies
from controlplane.sim.report import summarize, table
from controlplane.sim.speeds import Physics
from tests.unit.test_sim_engine import TWO_CHIPS, job

STATIC = MigrationKnobs()


def finishes(jobs, policy, checkpoint_every_s: float = 0.0, fleet: Fleet = TWO_CHIPS):
    result = simulate(jobs, Physics.of(fleet), policy, checkpoint_every_s)
    assert not result.unfinished
    return result, {r.job.job_id: (r.finish, r.model, r.migrations) for r in result.records}


def test_a_job_starts_on_the_idle_slow_chip_and_moves_when_the_fast_one_frees() -> None:
    """a holds the H100 until 500. Waiting, b would finish at 1000; instead it
    starts on the MLU at 10 (490 s there: 24.5 % of its work), moves at 500,
    restarts for 60 s and does the remaining 75.5 % in 377.5 s: 937.5."""
    jobs = [job("a", 0, runtime=1000), job("b", 10, runtime=1000)]
    _, static = finishes(jobs, XinheCorePolicy(migration=STATIC))
    assert static["b"] == pytest.approx((1000, "H100", 0))
    result, moved = finishes(jobs, XinheCorePolicy())
    assert moved["b"] == pytest.approx((937.5, "H100", 1))
    assert result.migrations == 1
    # b's finish on the MLU (at 2010) was cancelled by the move: no sample there
    assert result.timeline[-1].time == pytest.approx(937.5)


def test_a_move_loses_the_work_since_the_last_checkpoint() -> None:
    """Checkpoints every 400 s. b starts on the MLU at 10 (waiting 890 s for
    the H100 is not worth it) and moves at 900 after 890 s there: it keeps
    the checkpoint at 800 s (40 % of its work) and redoes the rest."""
    jobs = [job("a", 0, runtime=1800), job("b", 10, runtime=1000)]
    result, got = finishes(jobs, XinheCorePolicy(), checkpoint_every_s=400)
    assert got["b"] == pytest.approx((900 + 60 + 0.6 * 500, "H100", 1))
    assert result.lost_device_s["t"] == pytest.approx(90)


def test_a_short_wait_is_still_a_wait() -> None:
    """The H100 frees in 40 s: moving later would not pay the restart."""
    _, got = finishes([job("a", 0), job("b", 10)], XinheCorePolicy())
    assert got["b"] == pytest.approx((100, "H100", 0))


def test_no_move_when_the_gain_is_too_small() -> None:
    """A job that runs as fast on the MLU as on the H100 never moves."""
    same = (("H100", 1.0), ("MLU370-X8", 1.0))
    jobs = [job("a", 0, runtime=900, speed=same), job("b", 10, runtime=900, speed=same),
            job("c", 20, runtime=900, speed=same)]
    result, _ = finishes(jobs, XinheCorePolicy())
    assert result.migrations == 0


def test_the_report_counts_moves_and_labels_both_utilisations() -> None:
    physics = Physics.of(TWO_CHIPS)
    jobs = [job("a", 0, runtime=1000), job("b", 10, runtime=1000)]
    summaries = [summarize(simulate(jobs, physics, p, checkpoint_every_s=0), physics)
                 for p in make_policies("xinhe,xinhe-static")]
    assert [s["migrations"] for s in summaries] == [1, 0]
    # xinhe-static: b waits 10..500 with the MLU idle: cambricon 0 % while work waits.
    assert summaries[1]["utilisation_while_waiting"]["cambricon"] == 0.0
    # xinhe: the MLU works whenever b waits (it never waits).
    assert summaries[0]["utilisation_while_waiting"]["cambricon"] is None
    text = table(summaries)
    assert "while work waits/overall" in text and "cambricon=0%/" in text


def test_a_family_no_waiting_job_could_use_is_not_counted_idle() -> None:
    """b may only run on the H100: the idle MLU is not idle *while work waits*."""
    fleet = TWO_CHIPS
    jobs = [job("a", 0, runtime=1000, named=("nvidia",)),
            job("b", 10, runtime=1000, named=("nvidia",))]
    physics = Physics.of(fleet)
    summary = summarize(simulate(jobs, physics, XinheCorePolicy()), physics)
    assert summary["utilisation_while_waiting"] == {"cambricon": None, "nvidia": 1.0}
    assert summary["utilisation"]["cambricon"] == 0.0


def test_migration_knobs_from_the_command_line() -> None:
    policies = make_policies("xinhe,xinhe-static,pinned,fifo")
    with_migration(policies, restart_cost_s=120.0, per_round=2)
    knobs = [getattr(p, "migration", None) for p in policies]
    assert knobs[0] == replace(MIGRATE, restart_cost_s=120.0, max_per_round=2)
    assert knobs[1] == knobs[2] == STATIC and knobs[3] is None  # never migrate
    with_migration(policies, restart_cost_s=60.0, per_round=0)
    assert not policies[0].migration.enabled
    with pytest.raises(SimInputError, match="must be >= 0"):
        with_migration(policies, restart_cost_s=-1.0, per_round=1)


def test_start_then_migrate_knobs_from_the_command_line() -> None:
    policies = make_policies("xinhe,xinhe-static,fifo")
    with_start_then_migrate(policies, slack=0.1, margin=3.0, defrag=False)
    xinhe, static = policies[0], policies[1]
    assert (xinhe.policy.start_then_migrate_slack, xinhe.policy.start_then_migrate_margin,
            xinhe.defrag) == (0.1, 3.0, False)
    assert static.policy == Policy() and static.defrag  # never migrates: left alone
    for slack, margin in ((-0.1, 3.0), (0.1, 0.5)):
        with pytest.raises(SimInputError, match="--start-slack must be >= 0"):
            with_start_then_migrate(policies, slack=slack, margin=margin, defrag=True)


# -- work-conserving with migration: the slow family works while jobs wait -----------------
UP = (("H100", 2.0), ("MLU370-X8", 0.8))  # 2.5x: past the wait margin, inside the move-up one


def burst(n: int, gap_s: float, runtime: float, slow_nodes: int) -> tuple[Physics, list]:
    """``n`` one-device jobs every ``gap_s`` onto 8 H100s and ``slow_nodes`` x 8
    MLUs (2.5x slower for these jobs): more work than the H100s take."""
    fleet = Fleet((make_pool("slow", "west", "MLU370-X8", slow_nodes, 8),
                   make_pool("fast", "east", "H100", 1, 8)))
    jobs = [job(f"j{i:02d}", i * gap_s, runtime=runtime, speed=UP) for i in range(n)]
    return Physics.of(fleet), jobs


@pytest.mark.parametrize("shape", [(30, 60, 1800, 1), (20, 100, 3600, 1), (30, 120, 3600, 1)])
def test_the_slow_family_works_while_jobs_wait_for_the_fast_one(shape: tuple) -> None:
    """Jobs that would wait a while for an H100 start on the idle MLUs and move up
    (paying the restart): every family >= 90 % busy while work waits, and no
    worse on average than the rule before (move only when it costs nothing),
    which leaves the MLUs idle a quarter of that time or more."""
    physics, jobs = burst(*shape)
    before = XinheCorePolicy(Policy(start_then_migrate_slack=0.0))
    old, new = (summarize(simulate(jobs, physics, p, checkpoint_every_s=600), physics)
                for p in (before, XinheCorePolicy()))
    assert old["utilisation_while_waiting"]["cambricon"] <= 0.78
    assert all(u >= 0.9 for u in new["utilisation_while_waiting"].values())
    assert new["avg_jct_s"] <= old["avg_jct_s"]
    assert new["migrations"] > 0


@pytest.mark.parametrize("shape", [(40, 30, 3600, 2), (30, 60, 3600, 1), (60, 20, 3600, 2),
                                   (48, 10, 3600, 2), (64, 5, 7200, 3), (20, 100, 1800, 1)])
def test_every_family_stays_busy_while_work_waits(shape: tuple) -> None:
    physics, jobs = burst(*shape)
    got = summarize(simulate(jobs, physics, XinheCorePolicy(), checkpoint_every_s=600),
                    physics)
    assert all(u is None or u >= 0.9 for u in got["utilisation_while_waiting"].values())


def test_short_jobs_still_wait_rather_than_pay_a_restart_as_long_as_themselves() -> None:
    """200 s jobs (100 s on the H100): a move's 60 s restart is over the 30 %
    slack, so a short wait stays a wait, as without the rule (which leaves
    the MLUs idle most of the time work waits)."""
    physics, jobs = burst(48, 10, 200, 2)
    got = [summarize(simulate(jobs, physics, p, checkpoint_every_s=600), physics)
           for p in (XinheCorePolicy(), XinheCorePolicy(Policy(start_then_migrate_slack=0.0)))]
    assert got[0]["utilisation_while_waiting"] == got[1]["utilisation_while_waiting"]
    assert got[0]["utilisation_while_waiting"]["cambricon"] < 0.9


def test_running_jobs_move_within_the_pool_so_a_waiting_gang_fits() -> None:
    """Two 8-device A100 nodes: a and b fill node 0, c half of node 1; b
    ends at 100, leaving 4 free on each node. The 8-device gang g arrives
    at 200: moving a onto node 1's free half clears node 0, so g starts at
    200 and a pays the 60 s restart; without it g waits for a (100 000)."""
    fleet = Fleet((make_pool("a100", "east", "A100", 2, 8),))
    jobs = [job("a", 0, devices=4, runtime=100_000), job("b", 0, devices=4, runtime=100),
            job("c", 1, devices=4, runtime=100_000), job("g", 200, devices=8, runtime=1000)]
    result, moved = finishes(jobs, XinheCorePolicy(), fleet=fleet)
    assert moved["g"] == pytest.approx((1200, "A100", 0))
    assert moved["a"] == pytest.approx((100_060, "A100", 1))
    assert moved["c"] == pytest.approx((100_001, "A100", 0))
    assert result.migrations == 1
    _, kept = finishes(jobs, XinheCorePolicy(defrag=False), fleet=fleet)
    assert kept["g"] == pytest.approx((101_000, "A100", 0))
