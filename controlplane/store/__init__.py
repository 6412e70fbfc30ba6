"""Durable state of the control plane behind one interface (see base.Store).

:func:`open_store` picks the implementation: the embedded SQLite file under
the data directory by default, PostgreSQL when a ``postgresql://`` DSN is
configured (``--store-dsn`` / ``XINHE_STORE_DSN``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

from controlplane.store.base import Store

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class StoreSettings(Protocol):
    """The part of ``ServerSettings`` that chooses the store."""

    @property
    def store_dsn(self) -> str: ...

    @property
    def data_dir(self) -> Path: ...

    # Optional (default DEFAULT_TIMEOUT_S): ``store_timeout_s``, the longest
    # a PostgreSQL store call waits for the database.


DEFAULT_TIMEOUT_S = 5.0


def is_postgres_dsn(dsn: str) -> bool:
    return dsn.startswith(POSTGRES_SCHEMES)


def open_store(settings_or_dsn: StoreSettings | str) -> Store:
    """Open (creating and migrating as needed) the configured store.

    A string is a DSN: ``postgresql://...`` opens PostgreSQL,
    ``sqlite:///absolute/path.db`` a SQLite file. Settings with an empty ``store_dsn`` open
    ``<data_dir>/xinhe.db`` (the directory is created). Anything else is a
    ValueError naming what is accepted; an unreachable database is a
    StoreError.
    """
    if isinstance(settings_or_dsn, str):
        dsn = settings_or_dsn
    elif settings_or_dsn.store_dsn:
        dsn = settings_or_dsn.store_dsn
    else:
        data_dir = Path(settings_or_dsn.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        return _sqlite(data_dir / "xinhe.db")
    if is_postgres_dsn(dsn):
        from controlplane.store.postgres import PostgresStore

        timeout = float(getattr(settings_or_dsn, "store_timeout_s", DEFAULT_TIMEOUT_S))
        return PostgresStore(dsn, op_timeout=timeout)
    if dsn.startswith("sqlite:///"):
        return _sqlite(Path(dsn.removeprefix("sqlite://")))
    raise ValueError(f"unsupported store DSN {_redact(dsn)!r}: use postgresql://... "
                     "or sqlite:///path (or leave it empty for <data-dir>/xinhe.db)")


def _sqlite(path: Path) -> Store:
    from controlplane.store.sqlite import SqliteStore

    return SqliteStore(path)


def _redact(dsn: str) -> str:
    """The DSN without a password, for error messages."""
    dsn = re.sub(r"(password\s*=\s*)\S+", r"\1***", dsn)
    return re.sub(r"^([a-z]+://[^:/@]*):[^@/]*@", r"\1:***@", dsn)
