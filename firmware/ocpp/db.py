"""The OCPP store: one SQLite file shared by the device model, the message queue, profiles,
the authorization list and cache, and the certificate index.

Same durability rule as the session store: WAL with synchronous=FULL, autocommit, so a row
written before a message is sent is on disk when the send happens. Each module creates its own
tables (prefixed with the module's name) with CREATE TABLE IF NOT EXISTS.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def open_db(path: Path | str) -> sqlite3.Connection:
    """Open (or create) the OCPP store; ":memory:" gives a throwaway one for tests."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # It holds the BasicAuthPassword: owner only (the -wal and -shm files follow the
        # database file's mode).
        Path(path).touch(mode=0o600, exist_ok=True)
        Path(path).chmod(0o600)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One database transaction: all of the block's writes or none. Inside a caller's
    transaction it is a savepoint of it, so a module's write joins the caller's (a queued
    TransactionEvent and its transaction's next seqNo commit together)."""
    if db.in_transaction:
        db.execute("SAVEPOINT nested")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK TO nested")
            db.execute("RELEASE nested")
            raise
        db.execute("RELEASE nested")
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
