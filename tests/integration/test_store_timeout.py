"""PostgreSQL down: store calls fail within ``store_timeout_s`` and the API
answers UNAVAILABLE in seconds (not DEADLINE_EXCEEDED after the pool's
default 30 s), nothing half-written, and service resumes when the database
returns. The database is taken away for this test's store only, by a proxy
(tests/integration/pgproxy.py); the shared server keeps running."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from controlplane.client import XinheClient
from controlplane.model import states
from controlplane.server import ControlPlane
from controlplane.settings import ServerSettings
from controlplane.store import open_store
from controlplane.store.base import StoreError
from controlplane.store.check import check_store
from controlplane.store.postgres import PostgresStore
from tests.integration.conftest import wait_for
from tests.integration.pgproxy import PgProxy
from tests.integration.test_store_errors import printer
from tests.unit.test_store import ScratchSchemas, job, require_postgres

TIMEOUT_S = 2.0
BOUND_S = TIMEOUT_S + 3.0  # the call's answer time, with slack for a loaded machine


@pytest.fixture
def proxy() -> Iterator[PgProxy]:
    p = PgProxy(require_postgres())
    yield p
    p.close()


@pytest.fixture
def scratch() -> Iterator[ScratchSchemas]:
    schemas = ScratchSchemas(require_postgres())
    yield schemas
    schemas.drop_all()


def timed(call: Callable[[], object]) -> tuple[float, BaseException | None]:
    start = time.monotonic()
    try:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    except (StoreError, grpc.RpcError) as exc:
        return time.monotonic() - start, exc
    return time.monotonic() - start, None


def test_the_store_timeout_reaches_the_postgres_store(tmp_path: Path,
                                                     scratch: ScratchSchemas) -> None:
    class Settings:
        store_dsn = scratch.dsn + ("&" if "?" in scratch.dsn else "?") + \
            f"options=-csearch_path%3D{scratch.name('opened')}"
        data_dir = tmp_path
        store_timeout_s = 1.5

    PostgresStore(scratch.dsn, schema=scratch.name("opened")).close()
    store = open_store(Settings())
    try:
        assert isinstance(store, PostgresStore) and store._pool.timeout == 1.5
    finally:
        store.close()
    with pytest.raises(ValueError, match="op_timeout"):
        PostgresStore(scratch.dsn, schema=scratch.name("opened"), op_timeout=0)


def test_a_store_call_fails_within_its_timeout_and_writes_nothing(
        proxy: PgProxy, scratch: ScratchSchemas) -> None:
    store = PostgresStore(proxy.dsn, schema=scratch.name("down"), pool_size=2,
                          op_timeout=TIMEOUT_S)
    try:
        store.create_job(job("j-before"), 0.0)
        proxy.down()
        for call in (lambda: store.get_job("j-before"),
                     lambda: store.create_job(job("j-during"), 0.0),
                     lambda: store.list_jobs(),
                     lambda: store.create_job(job("j-again"), 0.0)):
            took, error = timed(call)
            assert isinstance(error, StoreError), error
            assert took < BOUND_S, f"{took:.1f}s"
        proxy.up()
        wait_for(lambda: _answers(store), 30, "the store to reconnect")
        assert store.get_job("j-before") is not None
        assert store.get_job("j-during") is None and store.get_job("j-again") is None
    finally:
        store.close()


def _answers(store: PostgresStore) -> bool:
    try:
        store.count_jobs_by_state()
    except StoreError:
        return False
    return True


def test_the_api_answers_unavailable_in_seconds_while_postgres_is_down(
        tmp_path: Path, proxy: PgProxy, scratch: ScratchSchemas,
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = PostgresStore(proxy.dsn, schema=scratch.name("api"), pool_size=4,
                          op_timeout=TIMEOUT_S)
    monkeypatch.setattr("controlplane.server.open_store", lambda _settings: store)
    cp = ControlPlane(ServerSettings(listen="127.0.0.1:0", data_dir=tmp_path,
                                     scheduler="inline", schedule_interval_s=0.2))
    cp.start()
    client = XinheClient(cp.address, timeout=30)  # far longer than the store's bound
    try:
        before = client.submit(printer("before"), client_key="before")
        proxy.down()
        calls = {"SubmitJob": lambda: client.submit(printer("during"), client_key="during"),
                 "GetJob": lambda: client.get(before.id),
                 "ListJobs": lambda: client.list(),
                 "CancelJob": lambda: client.cancel(before.id)}
        for name, call in calls.items():
            took, error = timed(call)
            assert isinstance(error, grpc.RpcError), (name, error)
            assert error.code() == grpc.StatusCode.UNAVAILABLE, (name, error)
            assert took < BOUND_S, f"{name} answered after {took:.1f}s"
        proxy.up()
        wait_for(lambda: timed(lambda: client.get(before.id))[1] is None, 30, "recovery")
        assert client.submit_full(printer("during"), client_key="during").created
        keys = sorted(j.client_key for j in cp.store.jobs_in_states(states.ALL_STATES))
        assert keys == ["before", "during"]
        assert client.get(before.id).state != states.CANCELLED
        report = check_store(cp.store)
        assert report.ok, report.violations[:10]
    finally:
        client.close()
        cp.stop(grace=1)
