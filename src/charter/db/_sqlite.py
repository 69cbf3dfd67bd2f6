"""A connection to one SQLite store file, as every store opens it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["BUSY_TIMEOUT_MS", "sqlite_connect"]

BUSY_TIMEOUT_MS = 30_000  # how long a writer waits for another process's write lock


def sqlite_connect(path: Path) -> sqlite3.Connection:
    """Autocommit (transactions are explicit: BEGIN IMMEDIATE), WAL (readers never wait for the
    writer), synchronous=FULL (a commit is on disk when it returns), usable from any thread."""
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    return connection
