"""Schema of the SQLite store, as an ordered list of migrations.

``PRAGMA user_version`` records how many migrations a database has had; on
open, the missing ones run in one transaction. Append new migrations, never
edit applied ones. The shape (tables, columns, indexes) is plain SQL so the
PostgreSQL store can follow it with the same names.

Jobs and nodes are stored as serialized ``xinhe.v1`` messages (``data``)
plus the columns needed to filter and order them; the message is the source
of truth and the columns are kept in step with it by the store.
"""

from __future__ import annotations

import sqlite3

from controlplane.store.base import StoreError

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: initial schema.
    (
        """CREATE TABLE jobs (
            seq        INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order, list cursor
            id         TEXT    NOT NULL UNIQUE,
            tenant     TEXT    NOT NULL,
            queue      TEXT    NOT NULL,
            client_key TEXT    NOT NULL DEFAULT '',
            state      INTEGER NOT NULL,
            priority   INTEGER NOT NULL DEFAULT 0,
            attempt    INTEGER NOT NULL DEFAULT 1,
            epoch      INTEGER NOT NULL DEFAULT 0,
            created_at REAL    NOT NULL,
            updated_at REAL    NOT NULL,
            data       BLOB    NOT NULL                    -- xinhe.v1.Job
        )""",
        # Idempotent submission: one job per (tenant, client key), when a key is given.
        "CREATE UNIQUE INDEX jobs_client_key ON jobs (tenant, client_key) WHERE client_key != ''",
        "CREATE INDEX jobs_state ON jobs (state, seq)",
        "CREATE INDEX jobs_tenant ON jobs (tenant, seq)",
        "CREATE INDEX jobs_queue ON jobs (queue, seq)",
        """CREATE TABLE events (
            seq        INTEGER PRIMARY KEY AUTOINCREMENT,  -- global event order
            job_id     TEXT    NOT NULL REFERENCES jobs (id),
            time       REAL    NOT NULL,
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
            epoch     INTEGER NOT NULL,
            node      TEXT    NOT NULL,
            state     INTEGER NOT NULL DEFAULT 0,
            exit_code INTEGER NOT NULL DEFAULT 0,
            message   TEXT    NOT NULL DEFAULT '',
            PRIMARY KEY (job_id, attempt, rank)
        ) WITHOUT ROWID""",
        "CREATE INDEX replicas_node ON replicas (node)",
        # No foreign key on logs: a batch from an agent must not fail as a whole
        # because one chunk names a job the API layer should have refused.
        """CREATE TABLE logs (
            seq     INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id  TEXT    NOT NULL,
            attempt INTEGER NOT NULL,
            rank    INTEGER NOT NULL,
            stream  INTEGER NOT NULL,
            data    BLOB    NOT NULL,
            time    REAL    NOT NULL
        )""",
        "CREATE INDEX logs_job ON logs (job_id, seq)",
        """CREATE TABLE nodes (
            name          TEXT    PRIMARY KEY,
            cordoned      INTEGER NOT NULL DEFAULT 0,
            cordon_reason TEXT    NOT NULL DEFAULT '',
            data          BLOB    NOT NULL                 -- xinhe.v1.Node
        )""",
        # Store-wide counters; "epoch" is the fencing epoch of assignments.
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
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
            created_at  REAL NOT NULL,
            revoked_at  REAL
        )""",
        """CREATE TABLE audit (
            seq     INTEGER PRIMARY KEY AUTOINCREMENT,
            time    REAL NOT NULL,
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
        "ALTER TABLE logs ADD COLUMN byte_offset INTEGER",
        "CREATE UNIQUE INDEX logs_offset ON logs (job_id, attempt, rank, stream, byte_offset)"
        " WHERE byte_offset IS NOT NULL",
    ),
    # 4: the elected leader's advertised address (one row), so followers
    # can point clients and agents to it (services/leader.py).
    (
        """CREATE TABLE leader (
            id      INTEGER PRIMARY KEY CHECK (id = 1),
            address TEXT NOT NULL,
            since   REAL NOT NULL
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
            term INTEGER NOT NULL
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
            steps_per_second REAL    NOT NULL,
            reports          INTEGER NOT NULL,
            ordinal          INTEGER NOT NULL,
            updated_at       REAL    NOT NULL,
            PRIMARY KEY (job_type, model)
        )""",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)

PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    # FULL: a commit is on disk before it returns (acknowledged = durable).
    "PRAGMA synchronous = FULL",
    "PRAGMA foreign_keys = ON",
    "PRAGMA busy_timeout = 10000",
)


def configure(conn: sqlite3.Connection) -> None:
    """Set the connection pragmas (outside any transaction)."""
    for pragma in PRAGMAS:
        conn.execute(pragma)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION` in one transaction.

    Returns the version found before migrating. Raises StoreError for a
    database written by a newer version (never downgrade silently).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        if found > SCHEMA_VERSION:
            raise StoreError(f"database schema version {found} is newer than this "
                             f"server's ({SCHEMA_VERSION}); upgrade the server")
        for statements in MIGRATIONS[found:]:
            for statement in statements:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return found
