"""Schema of the PostgreSQL store, as an ordered list of versioned migrations.

The shape follows ``sqlite_schema`` table for table and column for column, so
both stores answer the same queries the same way. ``schema_migrations`` holds
one row per applied migration; on open, the missing ones run in one
transaction under an advisory lock, so several servers starting at once
against one database migrate it exactly once. Append new migrations, never
edit applied ones.

Sequences (``GENERATED ... AS IDENTITY``) order jobs, events and logs; they
may leave gaps (a rolled-back insert consumes a value), which cursors allow.
The fencing epoch is NOT a sequence: it lives in ``counters`` and is updated
inside the placing transaction, so a rolled-back placement consumes nothing.
"""

from __future__ import annotations

import contextlib
import re

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from controlplane.store.base import StoreError

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: initial schema (the same tables as SQLite migration 1).
    (
        """CREATE TABLE jobs (
            seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- submission order
            id         TEXT    NOT NULL UNIQUE,
            tenant     TEXT    NOT NULL,
            queue      TEXT    NOT NULL,
            client_key TEXT    NOT NULL DEFAULT '',
            state      INTEGER NOT NULL,
            priority   INTEGER NOT NULL DEFAULT 0,
            attempt    INTEGER NOT NULL DEFAULT 1,
            epoch      BIGINT  NOT NULL DEFAULT 0,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            data       BYTEA   NOT NULL                                 -- xinhe.v1.Job
        )""",
        # Idempotent submission: the arbiter of INSERT ... ON CONFLICT DO NOTHING.
        "CREATE UNIQUE INDEX jobs_client_key ON jobs (tenant, client_key) WHERE client_key <> ''",
        "CREATE INDEX jobs_state ON jobs (state, seq)",
        "CREATE INDEX jobs_tenant ON jobs (tenant, seq)",
        "CREATE INDEX jobs_queue ON jobs (queue, seq)",
        """CREATE TABLE events (
            seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            job_id     TEXT    NOT NULL REFERENCES jobs (id),
            time       DOUBLE PRECISION NOT NULL,
            from_state INTEGER NOT NULL,
            to_state   INTEGER NOT NULL,
            kind       TEXT    NOT NULL,
            message    TEXT    NOT NULL DEFAULT '',
            attempt    INTEGER NOT NULL
        )""",
        "CREATE INDEX events_job ON events (job_id, seq)",
        """CREATE TABLE replicas (
            job_id    TEXT    NOT NULL REFERENCES jobs (id),
            attempt   INTEGER NOT NULL,
            rank      INTEGER NOT NULL,
            epoch     BIGINT  NOT NULL,
            node      TEXT    NOT NULL,
            state     INTEGER NOT NULL DEFAULT 0,
            exit_code INTEGER NOT NULL DEFAULT 0,
            message   TEXT    NOT NULL DEFAULT '',
            PRIMARY KEY (job_id, attempt, rank)
        )""",
        "CREATE INDEX replicas_node ON replicas (node)",
        # No foreign key on logs, as in SQLite: one bad chunk must not fail a batch.
        """CREATE TABLE logs (
            seq     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            job_id  TEXT    NOT NULL,
            attempt INTEGER NOT NULL,
            rank    INTEGER NOT NULL,
            stream  INTEGER NOT NULL,
            data    BYTEA   NOT NULL,
            time    DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX logs_job ON logs (job_id, seq)",
        """CREATE TABLE nodes (
            name          TEXT    PRIMARY KEY,
            cordoned      BOOLEAN NOT NULL DEFAULT FALSE,
            cordon_reason TEXT    NOT NULL DEFAULT '',
            data          BYTEA   NOT NULL                              -- xinhe.v1.Node
        )""",
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
        "INSERT INTO counters (name, value) VALUES ('epoch', 0)",
    ),
    # 2: bearer tokens (SHA-256 of the secret only) and the audit trail.
    (
        """CREATE TABLE tokens (
            id          TEXT PRIMARY KEY,
            kind        TEXT NOT NULL,                  -- tenant | admin | agent
            tenant      TEXT NOT NULL DEFAULT '',
            token_hash  TEXT NOT NULL UNIQUE,           -- sha256 hex of the secret
            description TEXT NOT NULL DEFAULT '',
            created_at  DOUBLE PRECISION NOT NULL,
            revoked_at  DOUBLE PRECISION
        )""",
        """CREATE TABLE audit (
            seq     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            time    DOUBLE PRECISION NOT NULL,
            actor   TEXT NOT NULL,
            action  TEXT NOT NULL,
            target  TEXT NOT NULL DEFAULT '',
            outcome TEXT NOT NULL,
            detail  TEXT NOT NULL DEFAULT ''
        )""",
    ),
    # 3: log chunks carry the agent's byte offset in their replica stream;
    # one chunk per offset, so chunks an agent resends after a reconnect are
    # stored once (at-least-once delivery, deduplicated). NULL: no position.
    (
        "ALTER TABLE logs ADD COLUMN byte_offset BIGINT",
        "CREATE UNIQUE INDEX logs_offset ON logs (job_id, attempt, rank, stream, byte_offset)"
        " WHERE byte_offset IS NOT NULL",
    ),
    # 4: the elected leader's advertised address (one row), so followers
    # can point clients and agents to it (services/leader.py).
    (
        """CREATE TABLE leader (
            id      INTEGER PRIMARY KEY CHECK (id = 1),
            address TEXT NOT NULL,
            since   DOUBLE PRECISION NOT NULL
        )""",
    ),
    # 5: an agent token may be bound to one node: it registers and connects
    # only as that node ('' = unbound, any node). The leader term, raised by
    # each newly elected leader, fences a deposed one's writes (PostgreSQL;
    # SQLite has one leader by construction and keeps it at 0).
    (
        "ALTER TABLE tokens ADD COLUMN node TEXT NOT NULL DEFAULT ''",
        """CREATE TABLE leader_term (
            id   INTEGER PRIMARY KEY CHECK (id = 1),
            term BIGINT NOT NULL
        )""",
        "INSERT INTO leader_term (id, term) VALUES (1, 0)",
    ),
    # 6: learned throughput per (job type, chip model) (services/throughput.py),
    # so a restarted or newly elected control plane keeps what it learned.
    # ``ordinal``: the order models were first measured for a type (the
    # anchor of its speed factors).
    (
        """CREATE TABLE IF NOT EXISTS throughput (
            job_type         TEXT    NOT NULL,
            model            TEXT    NOT NULL,
            steps_per_second DOUBLE PRECISION NOT NULL,
            reports          BIGINT  NOT NULL,
            ordinal          BIGINT  NOT NULL,
            updated_at       DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (job_type, model)
        )""",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_schema_name(name: str) -> str:
    """``name`` if it is a plain lower-case PostgreSQL identifier, else ValueError
    (it is interpolated as an identifier, and mixed case would need quoting
    everywhere an operator types it)."""
    if not _SCHEMA_NAME.fullmatch(name):
        raise ValueError(f"invalid schema name {name!r}: use lower-case letters, digits "
                         "and '_' (at most 63, not starting with a digit)")
    return name


def use_schema(conn: psycopg.Connection, schema: str) -> None:
    """Create ``schema`` if missing and put it first on the search path of
    ``conn`` (an autocommit connection), so every unqualified name is in it."""
    ident = sql.Identifier(check_schema_name(schema))
    exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    if not exists:  # an existing schema needs no CREATE privilege
        # IF NOT EXISTS is not race-free: a server starting at the same moment
        # may create it between the check and the insert.
        with contextlib.suppress(pg_errors.UniqueViolation, pg_errors.DuplicateSchema):
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
    conn.execute(sql.SQL("SET search_path TO {}").format(ident))


def migrate(conn: psycopg.Connection) -> int:
    """Bring the schema on ``conn``'s search path to :data:`SCHEMA_VERSION`.

    One transaction under an advisory lock keyed by the schema, so concurrent
    starts serialise. Returns the version found before migrating; StoreError
    for a schema written by a newer server (never downgrade silently).
    """
    with conn.transaction():
        schema = conn.execute("SELECT current_schema()").fetchone()[0]
        if schema is None:
            raise StoreError("the search_path names no existing schema; create the schema "
                             "first or pass PostgresStore(schema=...)")
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('xinhe.migrate.' || %s))",
                     (schema,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                     " version INTEGER PRIMARY KEY,"
                     " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        found = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations"
                             ).fetchone()[0]
        if found > SCHEMA_VERSION:
            raise StoreError(f"database schema version {found} is newer than this "
                             f"server's ({SCHEMA_VERSION}); upgrade the server")
        for version, statements in enumerate(MIGRATIONS[found:], start=found + 1):
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
    return found
