"""Idempotency-Key, with the semantics payment APIs use.

- The first request with a key runs; its response is stored under (principal, key).
- The same key and the same request again: the stored response, and nothing runs.
- The same key with a different request: refused (422), nothing runs.
- The same key while the first is still running: 409, nothing runs.

Keys live in SQLite beside the audit log, for `ttl_hours` (default 24).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from charter.migrations import Schema, Step

__all__ = ["IDEMPOTENCY_SCHEMA", "IdempotencyStore", "KeyInProgress", "KeyReused", "StoredResponse"]

# The store's schema, one step per version (charter.migrations); step 1 is release
# 0.1.0's, idempotent so it adopts a 0.1 store as it is.
IDEMPOTENCY_SCHEMA = Schema(
    "idempotency store",
    (
        Step(
            1,
            "idempotency keys by principal, indexed by creation time (release 0.1.0)",
            (
                """CREATE TABLE IF NOT EXISTS idempotency (
                    principal TEXT NOT NULL,
                    key TEXT NOT NULL,
                    request_sha256 TEXT NOT NULL,
                    state TEXT NOT NULL,            -- running | done
                    status INTEGER,
                    body BLOB,
                    created REAL NOT NULL,
                    PRIMARY KEY (principal, key)
                )""",
                # every claim prunes expired keys: by index, not by a scan of a day's keys
                "CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency (created)",
            ),
        ),
    ),
)


class KeyReused(Exception):
    """The key was first used for another request."""


class KeyInProgress(Exception):
    """The first request with this key has not finished."""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: bytes


def request_digest(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(b"\x1f".join((method.encode(), path.encode(), body))).hexdigest()


class IdempotencyStore:
    def __init__(self, path: Path, *, ttl_hours: float = 24.0) -> None:
        self.path = path
        self._ttl = ttl_hours * 3600
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            IDEMPOTENCY_SCHEMA.open(db, path)  # created if new; another version is refused

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        connection.execute("PRAGMA journal_mode=WAL")
        return connection

    def claim(self, principal: str, key: str, digest: str) -> StoredResponse | None:
        """None: the caller runs the request and then calls `complete` or `release`.
        A stored response: the request ran before; answer it again."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM idempotency WHERE created < ?", (time.time() - self._ttl,))
            row = db.execute(
                "SELECT request_sha256, state, status, body FROM idempotency WHERE principal = ? AND key = ?",
                (principal, key),
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO idempotency (principal, key, request_sha256, state, created) "
                    "VALUES (?, ?, ?, 'running', ?)",
                    (principal, key, digest, time.time()),
                )
            db.execute("COMMIT")
        if row is None:
            return None
        first_digest, state, status, body = row
        if first_digest != digest:
            raise KeyReused(key)
        if state != "done":
            raise KeyInProgress(key)
        return StoredResponse(status, bytes(body))

    def complete(self, principal: str, key: str, response: StoredResponse) -> None:
        with self._connect() as db:
            db.execute(
                "UPDATE idempotency SET state = 'done', status = ?, body = ? WHERE principal = ? AND key = ?",
                (response.status, response.body, principal, key),
            )

    def release(self, principal: str, key: str) -> None:
        """The request failed before it produced a response: the key may be used again."""
        with self._connect() as db:
            db.execute(
                "DELETE FROM idempotency WHERE principal = ? AND key = ? AND state = 'running'", (principal, key)
            )
