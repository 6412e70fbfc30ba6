"""A real server on PostgreSQL (``--store-dsn``) runs a job through a real
agent process, and after a restart still holds it, its events and its logs."""

from __future__ import annotations

from pathlib import Path

import psycopg

from controlplane.client import XinheClient
from controlplane.localfleet import AgentSpec, LocalFleet
from tests.integration.conftest import (
    FAST,
    job_logs,
    train_spec,
    wait_ready_nodes,
    wait_terminal,
)
from tests.unit.test_store import ScratchSchemas, require_postgres
from xinhe.v1 import common_pb2


def _server_dsn(scratch: ScratchSchemas, label: str) -> tuple[str, str]:
    """A DSN whose search_path is a fresh schema (libpq ``options``)."""
    schema = scratch.name(label)
    with psycopg.connect(scratch.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in scratch.dsn else "?"
    return f"{scratch.dsn}{separator}options=-csearch_path%3D{schema}", schema


def test_server_on_postgres_runs_a_job_and_keeps_it_across_restart(tmp_path: Path) -> None:
    scratch = ScratchSchemas(require_postgres())
    dsn, schema = _server_dsn(scratch, "server")
    agents = [AgentSpec("pg-a100", "a100", "east", ("A100:8",))]
    try:
        with LocalFleet(tmp_path, agents, scheduler="inline",
                        server_args=[*FAST, "--store-dsn", dsn]) as fleet:
            with XinheClient(fleet.address) as client:
                wait_ready_nodes(client, 1)
                submitted = client.submit(train_spec("on-postgres", steps=5), client_key="pg-1")
                done = wait_terminal(client, submitted.id)
                assert done.state == common_pb2.JOB_STATE_SUCCEEDED, done.state_reason
                events = list(client.watch(submitted.id))
                logs = job_logs(client, submitted.id)
            assert "xinhe job " in logs

            fleet.server.stop()
            fleet.start_server()
            with XinheClient(fleet.address) as client:
                client.wait_ready(30)
                assert client.get(submitted.id) == done
                assert list(client.watch(submitted.id)) == events
                assert job_logs(client, submitted.id) == logs
                again = client.submit(train_spec("on-postgres", steps=5), client_key="pg-1")
                assert again.id == submitted.id
        # The state lives in PostgreSQL, not in a SQLite file beside it.
        assert not (tmp_path / "data" / "xinhe.db").exists()
        with psycopg.connect(scratch.dsn) as conn:
            count = conn.execute(f"SELECT count(*) FROM {schema}.jobs").fetchone()[0]
        assert count == 1
    finally:
        scratch.drop_all()
