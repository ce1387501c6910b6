"""One worker at a time sets a study up: its tables, the study row and its MLflow parent run.

Workers started at the same moment on one storage would each find no study (or no parent run)
and create one. On SQLite a file lock beside the database serialises them on this machine
(`tunelab.tracking.store.sqlite_lock`); on a PostgreSQL server, where workers run on several
machines, a session-level advisory lock taken in the database itself does, so no worker has to
be started first. Other server URLs get no lock (Optuna's `load_if_exists` still holds).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager

from tunelab.tracking.store import sqlite_lock

LOCK_KEY = zlib.crc32(b"tunelab sweep setup")  # one advisory lock id for every tunelab sweep


@contextmanager
def postgres_lock(url: str, key: int = LOCK_KEY) -> Iterator[None]:
    """Hold PostgreSQL advisory lock `key` on the database of `url` (waits for its holder).

    The lock belongs to the session: it is released when the block ends or, if the worker
    dies, when its connection closes.
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            connection.commit()
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()
    finally:
        engine.dispose()


@contextmanager
def setup_lock(url: str) -> Iterator[None]:
    """The lock that serialises study setup on storage `url` (see module doc)."""
    if url.startswith(("postgresql", "postgres")):
        with postgres_lock(url):
            yield
    else:
        with sqlite_lock(url):
            yield
