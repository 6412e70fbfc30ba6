"""The control plane's engine: wires the services and runs the background
loop (scheduling rounds on change or interval, lost-node detection)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from controlplane.model import states
from controlplane.model.catalogue import Catalogue
from controlplane.scheduler.host import SchedulerHost
from controlplane.scheduler.types import Policy
from controlplane.services.agents import AgentSessions
from controlplane.services.allocations import Allocations
from controlplane.services.context import Context
from controlplane.services.fleet import Fleet
from controlplane.services.jobs import JobService
from controlplane.services.migration import MigrationService
from controlplane.services.migration_policy import MigrationPolicy, PolicyMigrations
from controlplane.services.pending import PendingQueue, PendingTrackingStore
from controlplane.services.preemption import PreemptionService
from controlplane.services.reconcile import Reconciler
from controlplane.services.scheduling import RoundResult, run_round
from controlplane.services.throughput import ThroughputTable
from controlplane.services.throughput_persist import ThroughputPersistence
from controlplane.settings import ServerSettings
from controlplane.store.base import Store, StoreError

log = logging.getLogger(__name__)
# Seconds between safety-net rebuilds of the in-memory queue from the store.
RESYNC_S = 30.0
# A woken round waits this many times the previous round's length (see
# Controller._next_round_at).
ROUND_SHARE_WAIT = 4.0


class Controller:
    def __init__(self, store: Store, catalogue: Catalogue, settings: ServerSettings,
                 host: SchedulerHost, policy: Policy | None = None,
                 clock: Callable[[], float] = time.time,
                 migration: MigrationPolicy | None = None) -> None:
        queue = PendingQueue(catalogue)
        store = PendingTrackingStore(store, queue)
        throughput = ThroughputTable(catalogue)
        queue.throughput, throughput.on_change = throughput, queue.refresh_speed
        self.ctx = Context(store=store, fleet=Fleet(store, clock()), catalogue=catalogue,
                           settings=settings, clock=clock, pending=queue,
                           throughput=throughput)
        self.host = host
        migration = migration or MigrationPolicy()
        # With policy migration on, a job may start on a slower free chip and
        # move up later (MigrationPolicy.core_policy).
        self.policy = migration.core_policy(policy or Policy())
        self.reconciler = Reconciler(self.ctx)
        self.jobs = JobService(self.ctx)
        self.migrations = MigrationService(self.ctx, self.jobs)
        self.preemptions = PreemptionService(self.ctx, self.reconciler, self.migrations)
        # Policy-triggered migration (the policy file's migration section; off by default).
        self.policy_migrations = PolicyMigrations(self.ctx, self.migrations,
                                                  migration,
                                                  self.policy.default_runtime_s, self.policy)
        self.agents = AgentSessions(self.ctx, self.reconciler)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        self.last_round: RoundResult | None = None
        # Observer of every round (the metrics exporter); None = nobody.
        self.on_round: Callable[[RoundResult], None] | None = None
        self._restore_allocations()
        # Learned throughput: loaded before the queue is translated (it sets
        # the jobs' speed factors), written in batches by the loop.
        self.throughput_store = ThroughputPersistence(throughput, store, self._live_jobs)
        self.throughput_store.load()
        queue.resync(store)
        self._resynced_at = time.monotonic()

    def _live_jobs(self) -> set[str]:
        """Jobs whose progress is still shown: active, or queued again."""
        live = {job.id for job in self.ctx.store.jobs_in_states(states.ACTIVE)}
        return live | {job.job_id for job in self.ctx.pending.pending()}

    def _save_throughput(self) -> None:
        """Write learned throughput if due; a store outage only delays it."""
        try:
            self.throughput_store.maybe_flush(time.monotonic())
        except StoreError as exc:
            log.warning("could not save learned throughput (retried): %s", exc)

    def _restore_allocations(self) -> None:
        """Rebuild device holds from durable state after a (re)start."""
        # A MIGRATING or PREEMPTED job's replicas may still be stopping: keep
        # their devices.
        for job in self.ctx.store.jobs_in_states(
                states.ACTIVE | {states.MIGRATING, states.PREEMPTED}):
            self.ctx.allocations.hold(job.id, job.attempt, job.placement)

    def start(self, rebuild: bool = False) -> None:
        """Run the loop. With ``rebuild``, or when it ran before (a replica
        elected again after losing leadership), first reload the in-memory
        state from the store: another leader may have changed it."""
        if rebuild or self._started:
            self.rebuild()
        self._started = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="controller", daemon=True)
        self._thread.start()

    def rebuild(self) -> None:
        """Forget in-memory state and reload it from the store: device holds,
        the pending queue, the fleet (every node disconnected until its agent
        registers here)."""
        with self.ctx.lock:
            self.ctx.fleet.close_all()
            self.ctx.fleet = Fleet(self.ctx.store, self.ctx.clock())
            self.ctx.allocations = Allocations()
            self._restore_allocations()
            self.throughput_store.load()
            self.ctx.pending.resync(self.ctx.store)
            self._resynced_at = time.monotonic()

    def stop(self) -> None:
        """Stop the loop and close every agent stream (shutdown, or this
        replica lost leadership); ``start`` may be called again."""
        self._stop.set()
        self.ctx.wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.ctx.fleet.close_all()
        try:  # what was learned since the last batch
            self.throughput_store.flush()
        except StoreError as exc:
            log.warning("could not save learned throughput on stop: %s", exc)

    def tick(self) -> RoundResult:
        """One pass of the loop: handle lost nodes, then a scheduling round."""
        now = self.ctx.clock()
        for node in self.ctx.fleet.lost_nodes(now, self.ctx.settings.node_lost_timeout_s):
            jobs = self.reconciler.on_node_lost(node)
            log.warning("node %s lost: %d job(s) requeued or failed", node, len(jobs))
        self.migrations.resend_pending(now)
        self.preemptions.resend_pending(now)
        result = run_round(self.ctx, self.host, self.policy, preempt=self.preemptions.apply)
        self.policy_migrations.after_round(self.ctx.clock())
        self._save_throughput()
        self.last_round = result
        if self.on_round is not None:
            self.on_round(result)
        return result

    def _next_round_at(self, started: float, gap: float, busy: bool) -> float:
        """Earliest start of the next woken round. After a round that left
        jobs waiting (``busy``: more arrive than can be placed): ``gap``
        after it started, so the wakes of a burst make one round. After a
        round that placed all it found, the next wake runs at once (a lone
        submission on an idle fleet is not delayed). And
        when a round is slow (a long queue), ROUND_SHARE_WAIT times its
        length after it ended, so rounds take at most a fifth of the time
        (and of the GIL) from the API threads. Call after the round ran."""
        ended = time.monotonic()
        return max(started + gap if busy else 0.0,
                   ended + ROUND_SHARE_WAIT * (ended - started))

    def _maybe_resync(self, now: float) -> None:
        """Rebuild the in-memory queue from the store now and then: a safety
        net against a change that bypassed the tracking store."""
        if now - self._resynced_at >= RESYNC_S:
            self._resynced_at = now
            self.ctx.pending.resync(self.ctx.store)

    def _loop(self) -> None:
        interval = self.ctx.settings.schedule_interval_s
        gap = self.ctx.settings.schedule_min_gap_s
        next_at = 0.0
        while not self._stop.is_set():
            if self.ctx.wake.wait(interval):
                # Coalesce: the wakes of a burst of submissions make one round.
                self._stop.wait(max(0.0, next_at - time.monotonic()))
            self.ctx.wake.clear()
            if self._stop.is_set():
                return
            started = time.monotonic()
            busy = True
            try:
                self._maybe_resync(started)
                result = self.tick()
                busy = result.pending > result.placed
                if result.placed:
                    log.info("round: %d pending, %d placed in %.1f ms", result.pending,
                             result.placed, result.seconds * 1000)
            except StoreError as exc:  # an outage, not a bug: no traceback per round
                log.warning("scheduling round failed, store unavailable: %s; retrying", exc)
                time.sleep(min(interval, 1.0))
            except Exception:
                log.exception("scheduling round failed; retrying next interval")
                time.sleep(min(interval, 1.0))
            next_at = self._next_round_at(started, gap, busy)
