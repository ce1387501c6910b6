"""One worker at a time sets a study up: its tables, the study row and its MLflow parent run.

Workers started at the same moment on one storage would each find no study (or no parent run)
and create one. On SQLite a file lock beside the database serialises them on this machine
(`tunelab.tracking.store.sqlite_lock`); on a PostgreSQL server, where workers run on several
machines, a session-level advisory lock taken in the database itself does, so no worker has to
be started first. Other server URLs get no lock (Optuna's `load_if_exists` still holds).
`study_lock` is the same per study: a worker holds it while it claims a trial slot
(`sweeps.claims`). Taking a PostgreSQL lock is retried while the server restarts.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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

    from sweeps.storage import connection_lost, retry

    engine = create_engine(url, poolclass=NullPool)
    try:
        connection = retry(engine.connect, "taking the sweep lock")
        with connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            connection.commit()
            try:
                yield
            finally:
                try:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    connection.commit()
                except Exception as err:  # the server restarted: the lock went with the session
                    if not connection_lost(err):
                        raise
    finally:
        engine.dispose()


@contextmanager
def setup_lock(url: str, key: int = LOCK_KEY) -> Iterator[None]:
    """The lock that serialises study setup on storage `url` (see module doc)."""
    if url.startswith(("postgresql", "postgres")):
        with postgres_lock(url, key):
            yield
    else:
        with sqlite_lock(url):
            yield


def study_lock(url: str, study_name: str) -> Any:
    """The lock of one study on storage `url`: held while a worker claims a trial slot."""
    return setup_lock(url, zlib.crc32(f"tunelab claim {study_name}".encode()))
