"""Review-app sessions and one-time sign-in links, in a store of their own.

    sign_in_links  code_sha256, token_sha256, principal, created, expires, used
    sessions       id_sha256, token_sha256, principal, csrf, created, last_seen

Only the sha256 of a link code or a session id is stored, as for API tokens: a copy of the
file signs no one in. A session is bound to the API token it was started with (by that
token's sha256): it ends when the token is revoked, and acts with the token's scopes as they
are now. A session ends after IDLE_SECONDS without a request or ABSOLUTE_SECONDS after it
started, whichever is first (OWASP Session Management Cheat Sheet: idle and absolute
timeouts); sign-in always starts a new session id (rotation: a session id planted before
sign-in is never the signed-in one).

The store is a SQLite file beside the audit log (default $CHARTER_HOME/ui-sessions.db), or
two tables of a PostgreSQL database (`SessionStore(database=...)`), so every process serving
one deployment shares its sessions. Each method is one statement or a short sequence whose
rule holds without a lock on either engine: a link is redeemed by one `UPDATE ... WHERE used
IS NULL`, which PostgreSQL (READ COMMITTED) re-checks on the row a concurrent redeemer
committed, so a code signs in once.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from charter.db import Connection, Database, PgSchema, PgStep
from charter.db._stores import open_schema, reachable
from charter.migrations import Schema, Step

__all__ = [
    "ABSOLUTE_SECONDS",
    "IDLE_SECONDS",
    "LINK_SECONDS",
    "SESSIONS_PG_SCHEMA",
    "SESSIONS_SCHEMA",
    "Session",
    "SessionStore",
]

IDLE_SECONDS = 30 * 60.0
ABSOLUTE_SECONDS = 12 * 3600.0
LINK_SECONDS = 15 * 60.0  # a sign-in link not used within this is refused

SESSIONS_SCHEMA = Schema(
    "review-app session store",
    (
        Step(
            1,
            "one-time sign-in links and sessions, each by the sha256 of its secret, bound to an API token's sha256",
            (
                """CREATE TABLE sign_in_links (
                    code_sha256  TEXT PRIMARY KEY,
                    token_sha256 TEXT NOT NULL,
                    principal    TEXT NOT NULL,
                    created      REAL NOT NULL,
                    expires      REAL NOT NULL,
                    used         REAL
                )""",
                """CREATE TABLE sessions (
                    id_sha256    TEXT PRIMARY KEY,
                    token_sha256 TEXT NOT NULL,
                    principal    TEXT NOT NULL,
                    csrf         TEXT NOT NULL,
                    created      REAL NOT NULL,
                    last_seen    REAL NOT NULL
                )""",
                "CREATE INDEX sessions_by_token ON sessions (token_sha256)",
            ),
        ),
    ),
)

# The same tables in PostgreSQL (version 1 = SQLite's version 1).
SESSIONS_PG_SCHEMA = PgSchema(
    "review-app session store",
    (
        PgStep(
            1,
            "one-time sign-in links and sessions, each by the sha256 of its secret, bound to an API token's sha256",
            (
                """CREATE TABLE sign_in_links (
                    code_sha256  TEXT PRIMARY KEY,
                    token_sha256 TEXT NOT NULL,
                    principal    TEXT NOT NULL,
                    created      DOUBLE PRECISION NOT NULL,
                    expires      DOUBLE PRECISION NOT NULL,
                    used         DOUBLE PRECISION
                )""",
                """CREATE TABLE sessions (
                    id_sha256    TEXT PRIMARY KEY,
                    token_sha256 TEXT NOT NULL,
                    principal    TEXT NOT NULL,
                    csrf         TEXT NOT NULL,
                    created      DOUBLE PRECISION NOT NULL,
                    last_seen    DOUBLE PRECISION NOT NULL
                )""",
                "CREATE INDEX sessions_by_token ON sessions (token_sha256)",
            ),
        ),
    ),
    mutable=("sign_in_links", "sessions"),
)
FILENAME = "ui-sessions.db"  # the SQLite file's default name in the home


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    """A live session. `id` is the secret the cookie holds: known only when the session is
    started (`SessionStore.start`) or presented (`SessionStore.get`); `csrf` is the token every
    form of the session carries (OWASP CSRF Prevention Cheat Sheet: synchronizer token)."""

    id: str
    token_sha256: str
    principal: str
    csrf: str
    created: float  # Unix time, seconds
    last_seen: float


class SessionStore:
    """Sign-in links and sessions. Thread-safe; every method is one short transaction.

    `clock` (seconds, Unix time) is injectable so expiry can be tested without waiting."""

    def __init__(
        self, path: Path | None = None, *, database: Database | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        """`path`: the SQLite file; `database`: the store of a deployment (SQLite:
        `database.home / "ui-sessions.db"`; PostgreSQL: its tables). Raises SchemaMismatch for a
        store of another version; the methods raise StoreUnavailable when PostgreSQL is down."""
        self._clock = clock
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if database is not None and database.is_postgres:
            self.path = database.home / FILENAME  # never opened
            self.database = database
            with self._session() as connection:
                open_schema(connection, database, FILENAME, SESSIONS_SCHEMA, SESSIONS_PG_SCHEMA)
            return
        if path is None:
            path = (database.home if database is not None else _home()) / FILENAME
        self.path = path
        self.database = Database("sqlite", f"sqlite:{path.parent}", path.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Owner-only, as the token file: it holds no secret that signs anyone in, but each
        # session's CSRF token and who signed in when. SQLite gives its -wal and -shm files
        # the database file's mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        open_schema(self._db, self.database, path.name, SESSIONS_SCHEMA, SESSIONS_PG_SCHEMA)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()

    @contextmanager
    def _session(self) -> Iterator[Connection]:
        """SQLite: the held connection under `_lock`; PostgreSQL: one from the pool."""
        with reachable("review-app session store", self.database):
            if self._db is None:
                with self.database.connect(FILENAME) as connection:
                    yield connection
                return
            with self._lock:
                yield self._db

    def _now(self) -> float:
        return self._clock()

    # -- sign-in links ----------------------------------------------------------------------

    def create_link(self, token_sha256: str, principal: str, *, seconds: float = LINK_SECONDS) -> str:
        """A one-time sign-in code for the token with sha256 `token_sha256`, valid `seconds`."""
        code = secrets.token_urlsafe(32)
        now = self._now()
        with self._session() as db:
            db.execute(
                "INSERT INTO sign_in_links VALUES (?, ?, ?, ?, ?, NULL)",
                (_sha256(code), token_sha256, principal, now, now + seconds),
            )
        return code

    def redeem_link(self, code: str) -> tuple[str, str] | None:
        """(token_sha256, principal) of an unused, unexpired link, now used; None otherwise
        (unknown, used or expired: the three are not told apart to the presenter)."""
        now = self._now()
        with self._session() as db:
            row = db.execute(
                "UPDATE sign_in_links SET used = ? WHERE code_sha256 = ? AND used IS NULL AND expires > ? "
                "RETURNING token_sha256, principal",
                (now, _sha256(code), now),
            ).fetchone()
        return None if row is None else (row[0], row[1])

    # -- sessions ---------------------------------------------------------------------------

    def start(self, token_sha256: str, principal: str, *, replacing: str | None = None) -> Session:
        """A new session (a new id, always); `replacing`: the id of the session the browser
        held before, which ends. Expired sessions and links are deleted here, so the file holds
        only what could still sign someone in."""
        now = self._now()
        session = Session(secrets.token_urlsafe(32), token_sha256, principal, secrets.token_urlsafe(32), now, now)
        with self._session() as db:
            if replacing:
                db.execute("DELETE FROM sessions WHERE id_sha256 = ?", (_sha256(replacing),))
            db.execute(
                "DELETE FROM sessions WHERE last_seen < ? OR created < ?",
                (now - IDLE_SECONDS, now - ABSOLUTE_SECONDS),
            )
            db.execute("DELETE FROM sign_in_links WHERE expires <= ?", (now,))
            db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?)",
                (_sha256(session.id), token_sha256, principal, session.csrf, now, now),
            )
        return session

    def get(self, session_id: str) -> Session | None:
        """The live session with this id, its idle clock restarted; None if unknown or expired
        (an expired one is deleted)."""
        now = self._now()
        digest = _sha256(session_id)
        with self._session() as db:
            row = db.execute(
                "SELECT token_sha256, principal, csrf, created, last_seen FROM sessions WHERE id_sha256 = ?",
                (digest,),
            ).fetchone()
            if row is None:
                return None
            token_sha256, principal, csrf, created, last_seen = row
            if now - last_seen > IDLE_SECONDS or now - created > ABSOLUTE_SECONDS:
                db.execute("DELETE FROM sessions WHERE id_sha256 = ?", (digest,))
                return None
            db.execute("UPDATE sessions SET last_seen = ? WHERE id_sha256 = ?", (now, digest))
        return Session(session_id, token_sha256, principal, csrf, created, now)

    def end(self, session_id: str) -> None:
        """Sign out: the session ends (nothing if it had already)."""
        with self._session() as db:
            db.execute("DELETE FROM sessions WHERE id_sha256 = ?", (_sha256(session_id),))


def _home() -> Path:
    from charter._paths import charter_home

    return charter_home()
