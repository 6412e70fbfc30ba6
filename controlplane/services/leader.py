"""Leader election: of several control-plane replicas on one store, exactly
one leads (schedules, holds agent sessions); the others follow.

An :class:`Elector` decides; the server reacts through two callbacks,
``on_elected`` (rebuild state from the store, then serve) and
``on_deposed`` (stop at once). Electors:

* :class:`AlwaysLeader` — SQLite (one replica by construction) or election
  turned off: leads from ``start()`` to ``stop()``.
* :class:`PostgresElector` — a PostgreSQL *session* advisory lock held on a
  dedicated connection. PostgreSQL releases it the moment that backend ends
  (the leader crashed, was killed, or lost its connection), so a follower
  polling ``pg_try_advisory_lock`` every ``poll_s`` takes over within about
  one poll. The leader checks its connection every poll too and deposes
  itself on the first error, before a follower can have been elected for
  longer than the TCP timeouts below. Each leader raises the store's
  *leader term* when elected and fences its store to that term
  (``Store.set_leader_term``): job-state writes of a deposed leader that has
  not noticed yet fail inside their own transaction, so the window where two
  replicas think they lead changes nothing twice. The per-job epoch
  (compare-and-set on every placement) fences agents the same way.

* :class:`~controlplane.services.leader_lease.LeaseElector` — a Kubernetes
  Lease (``coordination.k8s.io/v1``), for replicas in a cluster; fenced
  through the same store leader term (:func:`raise_leader_term`).

The leader publishes the address clients and agents should use in the
``leader`` table (one row), so a follower can point callers to it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from controlplane.store import is_postgres_dsn

if TYPE_CHECKING:  # psycopg is imported where used: clients import this module
    import psycopg

log = logging.getLogger(__name__)

# Trailing metadata key on a follower's UNAVAILABLE answer: the leader's address.
LEADER_METADATA = "x-xinhe-leader"
ELECTION_MODES = ("auto", "postgres", "none", "kubernetes")
# libpq settings of the election connection: a leader cut off from the
# database notices within a few seconds even without a FIN; operators see
# the connection by name in pg_stat_activity.
_CONNECTION = {"application_name": "xinhe-leader-election", "keepalives": 1,
               "keepalives_idle": 2, "keepalives_interval": 1, "keepalives_count": 2,
               "tcp_user_timeout": 4000}

Callback = Callable[[], None]


class Elector(Protocol):
    """Decides whether this replica leads. ``start`` must return promptly;
    the callbacks are called from the elector's own thread (or from
    ``start`` for :class:`AlwaysLeader`), never concurrently. ``address``
    is what this replica advertises while it leads; ``term`` is the leader
    term this replica was elected in (None: no election, nothing to fence)."""

    address: str
    term: int | None

    def start(self, on_elected: Callback, on_deposed: Callback) -> None: ...

    def stop(self) -> None: ...

    def is_leader(self) -> bool: ...

    def leader_address(self) -> str:
        """The current leader's advertised address; "" when unknown."""
        ...


class AlwaysLeader:
    """The only replica: leads while started."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.term: int | None = None
        self._leading = False

    def start(self, on_elected: Callback, on_deposed: Callback) -> None:
        self._leading = True
        self._on_deposed = on_deposed
        on_elected()

    def stop(self) -> None:
        if self._leading:
            self._leading = False
            self._on_deposed()

    def is_leader(self) -> bool:
        return self._leading

    def leader_address(self) -> str:
        return self.address if self._leading else ""


class PollingElector:
    """What electors polling on a thread of their own share: the thread, the
    callbacks, whether this replica leads and who does. Subclasses implement
    ``poll`` (one election step) and set ``interval_s``."""

    thread_name = "leader-election"

    def __init__(self, address: str, interval_s: float) -> None:
        self.address = address
        self.interval_s = interval_s
        self.term: int | None = None
        self._leading = False
        self._leader = ""  # the leader's address, as a follower last learned it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_elected: Callback = lambda: None
        self._on_deposed: Callback = lambda: None

    def start(self, on_elected: Callback, on_deposed: Callback) -> None:
        self._on_elected, self._on_deposed = on_elected, on_deposed
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def is_leader(self) -> bool:
        return self._leading

    def leader_address(self) -> str:
        return self.address if self._leading else self._leader

    def poll(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval_s)

    def _halt(self) -> None:
        """End the polling thread (before a stopping leader steps down)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _depose(self, why: str) -> None:
        if not self._leading:
            return
        self._leading = False
        self._leader = ""  # unknown until the next poll learns it
        log.warning("no longer leader: %s", why)
        self._on_deposed()


class PostgresElector(PollingElector):
    """Leads while holding a session advisory lock keyed by the database and
    schema (so separate installs on one server do not collide)."""

    def __init__(self, dsn: str, address: str, *, schema: str | None = None,
                 poll_s: float = 1.0, connect_timeout: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        if poll_s <= 0:
            raise ValueError(f"poll_s must be positive, got {poll_s}")
        super().__init__(address, poll_s)
        self.dsn = dsn
        self.schema = schema
        self.connect_timeout = connect_timeout
        self.clock = clock
        self._conn: psycopg.Connection | None = None
        self._key: int | None = None

    @property
    def poll_s(self) -> float:
        return self.interval_s

    def stop(self) -> None:
        """Stop campaigning; a leader steps down and releases the lock now,
        so a follower takes over at its next poll. The unlock is explicit:
        closing the connection alone releases the lock only once the
        server's backend has exited, a moment later."""
        self._halt()
        leading = self._leading
        self._depose("stopping")
        if leading and self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (self._key,))
        self._disconnect()

    def poll(self) -> None:
        """One election step: check the lock (or the connection holding it),
        campaign when following, learn the leader's address."""
        import psycopg

        try:
            conn = self._connect()
            if self._leading:
                conn.execute("SELECT 1")  # the lock lives as long as this backend
                return
            if conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()[0]:
                self.term = self._begin_term(conn)
                self._publish(conn)
                self._leading = True
                log.info("elected leader for term %s (advertising %s)", self.term,
                         self.address)
                self._on_elected()
            else:
                row = conn.execute("SELECT address FROM leader WHERE id = 1").fetchone()
                self._leader = row[0] if row else ""
        except psycopg.Error as exc:
            log.warning("leader election: database error: %s", exc)
            if self._leading:
                self._depose("lost the election connection")
            self._disconnect()

    def _connect(self) -> psycopg.Connection:
        import psycopg

        from controlplane.store.postgres_schema import use_schema

        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(self.dsn, autocommit=True, **_CONNECTION,
                                   connect_timeout=max(1, round(self.connect_timeout)))
            if self.schema:
                use_schema(conn, self.schema)
            # Keyed by where the tables live, not by the DSN's spelling.
            self._key = conn.execute(
                "SELECT hashtextextended('xinhe.leader.' || current_database() || '.'"
                " || coalesce(current_schema(), ''), 0)").fetchone()[0]
            self._conn = conn
        return self._conn

    @staticmethod
    def _begin_term(conn: psycopg.Connection) -> int:
        return _begin_term(conn)

    def _publish(self, conn: psycopg.Connection) -> None:
        conn.execute("INSERT INTO leader (id, address, since) VALUES (1, %s, %s)"
                     " ON CONFLICT (id) DO UPDATE SET address = EXCLUDED.address,"
                     " since = EXCLUDED.since", (self.address, self.clock()))

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()  # ends the backend: releases the lock if held


def _begin_term(conn: psycopg.Connection) -> int:
    """Raise the store's leader term: from its commit on, writes fenced to an
    earlier term are refused. Waits for fenced writes in flight (they hold
    the row FOR SHARE)."""
    return conn.execute("UPDATE leader_term SET term = term + 1 WHERE id = 1"
                        " RETURNING term").fetchone()[0]


def raise_leader_term(dsn: str, connect_timeout: float = 5.0) -> int:
    """Raise the PostgreSQL store's leader term on a short connection (an
    elector that does not hold a PostgreSQL session, e.g. the Lease one)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True, **_CONNECTION,
                         connect_timeout=max(1, round(connect_timeout))) as conn:
        return _begin_term(conn)


DEFAULT_LEASE_NAME = "xinhe-control-plane"
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def lease_elector(store_dsn: str, address: str, poll_s: float, name: str = DEFAULT_LEASE_NAME,
                  namespace: str = "") -> Elector:
    """A LeaseElector with the in-cluster API credentials (else the local
    kubeconfig), in ``namespace`` or else the pod's own."""
    import socket
    import uuid
    from pathlib import Path

    from kubernetes import client, config

    from controlplane.services.leader_lease import LeaseElector

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    if not namespace and Path(SERVICE_ACCOUNT_NAMESPACE).exists():
        namespace = Path(SERVICE_ACCOUNT_NAMESPACE).read_text().strip()
    identity = f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    return LeaseElector(client.CoordinationV1Api(), namespace or "default",
                        name or DEFAULT_LEASE_NAME, identity, address,
                        lambda: raise_leader_term(store_dsn), retry_s=min(poll_s, 2.0))


def make_elector(mode: str, store_dsn: str, address: str, poll_s: float = 1.0,
                 lease_name: str = DEFAULT_LEASE_NAME, lease_namespace: str = "") -> Elector:
    """The elector for ``mode``: "auto" elects on a PostgreSQL store and
    always leads on SQLite; "postgres" requires a PostgreSQL store;
    "kubernetes" elects on a Lease (PostgreSQL store too: replicas share it);
    "none" always leads (one replica only!)."""
    if mode not in ELECTION_MODES:
        raise ValueError(f"unknown leader election {mode!r} (one of {', '.join(ELECTION_MODES)})")
    postgres = bool(store_dsn) and is_postgres_dsn(store_dsn)
    if mode in ("postgres", "kubernetes") and not postgres:
        raise ValueError(f"leader election {mode!r} needs a postgresql:// store DSN "
                         "(the replicas share the store)")
    if mode == "kubernetes":
        return lease_elector(store_dsn, address, poll_s, lease_name, lease_namespace)
    if mode == "none" or not postgres:
        return AlwaysLeader(address)
    return PostgresElector(store_dsn, address, poll_s=poll_s)
