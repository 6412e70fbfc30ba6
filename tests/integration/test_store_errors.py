"""The store fails under a running control plane: every RPC that needs it
answers UNAVAILABLE (never INTERNAL), a transaction that fails half-way
leaves nothing behind, and the server recovers when the store comes back.

How the failure is made real: the control plane runs in this process on a
real SQLite store, and the test installs a SQLite *authorizer* on the
store's own connections. SQLite then refuses the chosen statements exactly
as it refuses them on a failing database (an ``sqlite3.DatabaseError`` from
the engine, mid-transaction when the denied statement is not the first), so
the store's own error handling and rollback are what is tested. Filling a
tmpfs would need mount privileges, and RLIMIT_FSIZE does not fail writes
that reuse WAL space, so neither is dependable in CI. The agent is a real
process whose output keeps flowing through the outage.
"""

from __future__ import annotations

import collections
import secrets
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import psycopg
import pytest

from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, start_agent
from controlplane.model import states
from controlplane.server import ControlPlane
from controlplane.settings import ServerSettings
from controlplane.store.base import StoreError
from controlplane.store.check import check_store
from controlplane.store.postgres import PostgresStore
from controlplane.store.sqlite import SqliteStore
from tests.integration.conftest import wait_for, wait_ready_nodes, wait_terminal
from tests.unit.test_store import require_postgres
from xinhe.v1 import agent_pb2, agent_pb2_grpc, common_pb2, jobs_pb2

J = common_pb2
T = TypeVar("T")
LINES = 150
PRINTER = ("import time\n"
           f"for i in range({LINES}):\n"
           "    print(f'line {i:04d}', flush=True)\n"
           "    time.sleep(0.03)\n")
WRITES = {sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE}


def printer(name: str) -> J.JobSpec:
    spec = J.JobSpec(name=name, queue="lab-a/default", replicas=1,
                     command=[sys.executable, "-c", PRINTER])
    spec.resources.accelerators = 1
    spec.reference_runtime.FromSeconds(60)
    return spec


class StoreFault:
    """Makes the SQLite store behind a running control plane refuse statements."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    def _install(self, write: Callable | None, read: Callable | None) -> None:
        with self.store._lock:  # no statement runs while the authorizer changes
            self.store._conn.set_authorizer(write)
        with self.store._read_lock:
            self.store._reader.set_authorizer(read)

    def down(self) -> None:
        """The database is gone: every write and every read fails."""
        deny_writes = lambda action, *_: sqlite3.SQLITE_DENY if action in WRITES else 0  # noqa: E731
        self._install(deny_writes, lambda *_: sqlite3.SQLITE_DENY)

    def events_fail(self) -> None:
        """Writes to the event log fail, so a transaction fails half-way."""
        self._install(lambda action, table, *_: sqlite3.SQLITE_DENY
                      if action == sqlite3.SQLITE_INSERT and table == "events" else 0, None)

    def up(self) -> None:
        self._install(None, None)


@pytest.fixture()
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    settings = ServerSettings(listen="127.0.0.1:0", data_dir=tmp_path / "data",
                              scheduler="inline", heartbeat_interval_s=0.5,
                              schedule_interval_s=0.2, stop_grace_s=1.0)
    cp = ControlPlane(settings)
    cp.start()
    agent = start_agent(cp.address, AgentSpec("n1", "h100", "east", ("H100:8",),
                                              ("--stop-grace", "1")), tmp_path / "agents")
    try:
        yield cp
    finally:
        agent.stop(grace=5)
        cp.stop(grace=1)


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_store_outage_is_unavailable_atomic_and_recoverable(plane: ControlPlane) -> None:
    sqlite_store = plane.store.inner
    assert isinstance(sqlite_store, SqliteStore)
    fault = StoreFault(sqlite_store)
    client = XinheClient(plane.address, timeout=10)
    wait_ready_nodes(client, 1)
    job = client.submit(printer("through-the-outage"))
    wait_for(lambda: client.get(job.id).state == J.JOB_STATE_RUNNING, 30, "running")

    fault.down()
    agents = agent_pb2_grpc.AgentServiceStub(grpc.insecure_channel(plane.address))
    register = agent_pb2.RegisterRequest(protocol_version=agent_pb2.PROTOCOL_VERSION_1,
                                         node_name="n2", pool="h100", region="east")
    calls = {
        "SubmitJob": lambda: client.submit(printer("refused"), client_key="during"),
        "GetJob": lambda: client.get(job.id),
        "ListJobs": lambda: client.list(),
        "CancelJob": lambda: client.cancel(job.id),
        "WatchJob": lambda: client.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=job.id),
                                                 timeout=5),
        "StreamLogs": lambda: client.jobs.StreamLogs(
            jobs_pb2.StreamLogsRequest(job_id=job.id), timeout=5),
        "Register": lambda: agents.Register(register, timeout=5),
    }
    codes = {name: code_of(call) for name, call in calls.items()}
    assert codes == dict.fromkeys(calls, grpc.StatusCode.UNAVAILABLE)

    fault.events_fail()  # the job row would be written, its event not
    assert code_of(lambda: client.submit(printer("half"), client_key="half")) == \
        grpc.StatusCode.UNAVAILABLE
    fault.up()

    # Recovered: the refused submissions left nothing; the running job went on,
    # and its output from the outage was resent and stored once.
    for key in ("during", "half"):
        assert client.submit_full(printer(key), client_key=key).created
    done = wait_terminal(client, job.id, timeout=60)
    assert (done.state, done.attempt) == (J.JOB_STATE_SUCCEEDED, 1), done.state_reason
    text = wait_for(lambda: (t := _stdout(client, job.id)).count("\n") >= LINES and t, 30,
                    "all output")
    assert text.splitlines() == [f"line {i:04d}" for i in range(LINES)]
    report = check_store(plane.store)
    assert report.ok, report.violations[:10]
    keys = [j.client_key for j in plane.store.jobs_in_states(states.ALL_STATES)]
    assert sorted(k for k in keys if k) == ["during", "half"]
    client.close()


def _stdout(client: XinheClient, job_id: str) -> str:
    return b"".join(c.data for c in client.logs(job_id)
                    if c.stream == J.LOG_STREAM_STDOUT).decode()



def test_postgres_connections_killed_under_load_recover(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL: the server's backends are terminated (pg_terminate_backend,
    what a failover or an operator does) again and again while a client
    submits. Calls answer OK or UNAVAILABLE, never INTERNAL; the pool replaces
    dead connections; every acknowledged submission exists once."""
    dsn = require_postgres()
    app = f"xinhe_t_{secrets.token_hex(4)}"
    schema = app + "_errors"
    store = PostgresStore(f"{dsn}{'&' if '?' in dsn else '?'}application_name={app}",
                          schema=schema, pool_size=4)
    monkeypatch.setattr("controlplane.server.open_store", lambda _settings: store)
    cp = ControlPlane(ServerSettings(listen="127.0.0.1:0", data_dir=tmp_path,
                                     scheduler="inline", schedule_interval_s=0.2))
    cp.start()
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_terminate_backends, args=(dsn, app, stop, killed))
    try:
        killer.start()
        acked, codes = _submit_until(cp.address, lambda: len(killed) >= 6)
        stop.set()
        killer.join(10)
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
        assert len(killed) >= 6 and acked
        # Recovered: a connection the last sweep killed costs at most one
        # UNAVAILABLE (the pool then replaces every dead one), as a client sees it.
        with XinheClient(cp.address, timeout=10) as client:
            assert _twice(lambda: client.submit_full(printer("after"), client_key="after"))
        jobs = _twice(lambda: cp.store.jobs_in_states(states.ALL_STATES))
        assert sorted(j.client_key for j in jobs if j.client_key != "after") == sorted(acked)
        report = _twice(lambda: check_store(cp.store))
        assert report.ok, report.violations[:10]
    finally:
        stop.set()
        cp.stop(grace=1)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _twice(call: Callable[[], T]) -> T:
    """``call()``, retried once after a store outage error."""
    try:
        return call()
    except (grpc.RpcError, StoreError) as err:
        if isinstance(err, grpc.RpcError) and err.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return call()


def _terminate_backends(dsn: str, app: str, stop: threading.Event,
                        killed: list[int]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.wait(0.5):  # a backend killed now and then, e.g. by failovers
            rows = conn.execute("SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
                                " WHERE application_name = %s", (app,)).fetchall()
            killed += [pid for pid, done in rows if done]


def _submit_until(address: str, done: Callable[[], bool]
                  ) -> tuple[list[str], collections.Counter]:
    """Submit with client keys, retrying each key until acknowledged, until
    ``done()``; returns the acknowledged keys and the status codes seen."""
    acked, codes, i = [], collections.Counter(), 0
    deadline = time.monotonic() + 30
    with XinheClient(address, timeout=10) as client:
        while not done() and time.monotonic() < deadline:
            key = f"k{i}"
            try:
                client.submit(printer(key), client_key=key)
            except grpc.RpcError as err:
                codes[err.code()] += 1
                continue
            codes[grpc.StatusCode.OK] += 1
            acked.append(key)
            i += 1
    return acked, codes
