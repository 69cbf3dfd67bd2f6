"""Idempotency-Key, with the semantics payment APIs use.

- The first request with a key runs; its response is stored under (principal, key).
- The same key and the same request again: the stored response, and nothing runs.
- The same key with a different request: refused (422), nothing runs.
- The same key while the first is still running: 409, nothing runs.
- A stored answer goes only to a token holding every scope the first request's token
  held (403 otherwise): a read-only token of a principal never replays its write run.

A claim records, before anything runs, the run id the request will run under and its
owner: a worker id (host:pid:start-nonce) and a lease that a heartbeat renews while the
run is live. A claim whose lease expired has lost its owner (a crash, a SIGKILL) and is
resolved from the audit log by whoever next claims the key (`Orphaned`): a sealed run
gives its stored response (rebuilt from the seal if the process died before storing
it), an opened but never sealed run gives `in_doubt` with its run id, and a run that was
never opened is taken over and runs (nothing ran). Never a 409 forever, never a second
execution. Leases are checked at claim time, so workers sharing one store resolve each
other's orphans.

Keys live beside the audit log, for `ttl_hours` (default 24): in SQLite (idempotency.db) or
in PostgreSQL (table idempotency, every worker of a deployment sharing it). On SQLite a store
holds one connection, shared by its threads under a lock: a claim costs one transaction, never a new
connection, and this process's claims never wait in SQLite's sleeping busy handler (they
queue on the lock; only another process writing the same file can make SQLite wait). A
claim is committed durably (fsync) before its run starts: a lost claim would let a retry
run the request again. A completion or a release is not fsynced on its own (it becomes
durable with the next claim's commit or the WAL's checkpoint): if one is lost, the claim
is still `running` and its lease runs out, and the next retry resolves it from the audit
log (`Orphaned`) exactly as after a crash. On PostgreSQL each call takes a connection from the
process's pool and every commit is durable (synchronous_commit).

One claim per (principal, key), across threads, store objects and processes: SQLite gets it
from BEGIN IMMEDIATE (one writer per file); the claim is written so that it needs no more on
PostgreSQL (READ COMMITTED): an `INSERT ... ON CONFLICT (principal, key) DO NOTHING` against
the primary key decides the winner (a second inserter waits for the first's commit and then
inserts nothing), and a take-over is one `UPDATE ... WHERE owner IS NOT DISTINCT FROM <the
orphan's owner>`, which PostgreSQL re-checks on the row as the first taker committed it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from charter._profile import component
from charter.audit import SecretKey
from charter.db import Connection, Database, PgSchema, PgStep, write_transaction
from charter.db._stores import open_schema, reachable
from charter.migrations import Schema, Step

__all__ = [
    "IDEMPOTENCY_PG_SCHEMA",
    "IDEMPOTENCY_SCHEMA",
    "Claimed",
    "IdempotencyStore",
    "KeyInProgress",
    "KeyReused",
    "Orphaned",
    "ScopeMismatch",
    "StoredResponse",
    "request_digest",
    "request_fingerprint",
]

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
        Step(
            2,
            "a claim knows its run and its owner: run_id (allocated before the claim), owner "
            "(host:pid:start-nonce) and lease_expires (renewed while the run is live), and the first "
            "token's scopes (a JSON array) that a replay must hold; NULL in rows of release 0.1",
            (
                "ALTER TABLE idempotency ADD COLUMN run_id TEXT",
                "ALTER TABLE idempotency ADD COLUMN owner TEXT",
                "ALTER TABLE idempotency ADD COLUMN lease_expires REAL",
                "ALTER TABLE idempotency ADD COLUMN scopes TEXT",
            ),
        ),
    ),
)

# The same table in PostgreSQL: version 1 is the whole of SQLite's version 2.
IDEMPOTENCY_PG_SCHEMA = PgSchema(
    "idempotency store",
    (
        PgStep(
            1,
            "idempotency keys by principal, with each claim's run, owner, lease and scopes (SQLite version 2)",
            (
                """CREATE TABLE idempotency (
                    principal TEXT NOT NULL,
                    key TEXT NOT NULL,
                    request_sha256 TEXT NOT NULL,
                    state TEXT NOT NULL,
                    status INTEGER,
                    body BYTEA,
                    created DOUBLE PRECISION NOT NULL,
                    run_id TEXT,
                    owner TEXT,
                    lease_expires DOUBLE PRECISION,
                    scopes TEXT,
                    PRIMARY KEY (principal, key)
                )""",
                "CREATE INDEX idempotency_created ON idempotency (created)",
            ),
        ),
    ),
    mutable=("idempotency",),
)
FILENAME = "idempotency.db"  # the SQLite file in the home

DEFAULT_LEASE_SECONDS = 30.0
_PRUNE_EVERY_SECONDS = 60.0  # expired keys are deleted at most this often (by index), not at every claim


class KeyReused(Exception):
    """The key was first used for another request."""


class KeyInProgress(Exception):
    """The first request with this key has not finished and its owner's lease is live."""


class ScopeMismatch(Exception):
    """The token lacks scopes the first request's token held: it may not see that request's answer."""

    def __init__(self, key: str, missing: tuple[str, ...]) -> None:
        super().__init__(key)
        self.key, self.missing = key, missing


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Claimed:
    """The key is this worker's: run the request under `run_id`, then `complete` or `release`."""

    run_id: str


@dataclass(frozen=True, slots=True)
class Orphaned:
    """The key's owner lost its lease before storing a response: resolve `run_id` from the
    audit log, then `settle` (it ran) or `take_over` (it was never opened). `run_id` is None
    for a claim of release 0.1, which did not record it."""

    run_id: str | None
    owner: str | None


def request_digest(method: str, path: str, body: bytes) -> str:
    """sha256 of the request line and body: a body with no secret inputs, as stored."""
    return hashlib.sha256(b"\x1f".join((method.encode(), path.encode(), body))).hexdigest()


def request_fingerprint(method: str, path: str, body: bytes, key: SecretKey) -> str:
    """What the store keeps of a request (its `request_sha256`) to tell a repeat from another
    request. A body (JSON) naming `secret_inputs` is fingerprinted with each of those inputs'
    values replaced by its keyed digest (`SecretKey.digest`): a plain sha256 over a body
    holding a short password is found by trying candidates, the keyed form is not without
    keys/secrets.key. The same request with the same secret still matches; another does not.
    A body without secret inputs is fingerprinted as before (`request_digest`), so stored
    keys of earlier releases keep matching."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return request_digest(method, path, body)
    names = parsed.get("secret_inputs") if isinstance(parsed, dict) else None
    inputs = parsed.get("inputs") if isinstance(parsed, dict) else None
    if not names or not isinstance(inputs, dict):
        return request_digest(method, path, body)
    masked = {k: key.digest(v) if k in names and isinstance(v, str) else v for k, v in inputs.items()}
    text = json.dumps(parsed | {"inputs": masked}, sort_keys=True, separators=(",", ":"))
    return request_digest(method, path, text.encode("utf-8"))


def worker_id() -> str:
    """This process, uniquely: host:pid:start-nonce (the nonce tells a reused pid apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class IdempotencyStore:
    """Keys by (principal, key). `lease_seconds`: how long a claim outlives a silent owner
    (its heartbeat renews it every third of that).

    `IdempotencyStore(path)`: the SQLite file `path`; `IdempotencyStore(database=db)`: the store
    of `db` (SQLite: `db.home / "idempotency.db"`; PostgreSQL: its table there). Raises
    SchemaMismatch for a store of another schema version; its methods raise StoreUnavailable
    when PostgreSQL cannot be reached."""

    def __init__(
        self,
        path: Path | None = None,
        *,
        database: Database | None = None,
        ttl_hours: float = 24.0,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        if database is None or not database.is_postgres:
            if path is None:
                path = (database.home if database is not None else _home()) / FILENAME
            database = Database("sqlite", f"sqlite:{path.parent}", path.parent)
        self.path = path if path is not None else database.home / FILENAME  # PostgreSQL: never opened
        self.database = database
        self._ttl = ttl_hours * 3600
        self._lease = lease_seconds
        self.worker = worker_id()
        self._live: set[tuple[str, str]] = set()  # keys this worker is running now
        self._live_lock = threading.Lock()
        self._heartbeat: threading.Thread | None = None
        self._pruned = 0.0  # time.time() of the last pruning of expired keys
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        if database.is_postgres:
            with self._session() as connection:
                open_schema(connection, database, FILENAME, IDEMPOTENCY_SCHEMA, IDEMPOTENCY_PG_SCHEMA)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection for the store's life, used by one thread at a time (`_lock`). The
        # timeout only matters when another process writes the same file.
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        open_schema(self._db, database, self.path.name, IDEMPOTENCY_SCHEMA, IDEMPOTENCY_PG_SCHEMA)
        # `finished` reads on a connection of its own: it is called on the event loop, where a
        # WAL reader never waits for the writer (nor for `_lock`, held across a claim's fsync).
        self._reader = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)

    def close(self) -> None:
        """Close the store's connections (the store is not used after; PostgreSQL's pool stays)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()

    @contextmanager
    def _session(self, *, durable: bool = True) -> Iterator[Connection]:
        """The connection to write on. SQLite: the held one, under `_lock`, fsynced at commit
        when `durable`. PostgreSQL: one from the pool (every commit is durable there).
        StoreUnavailable when PostgreSQL cannot be reached."""
        with component("idempotency"), reachable("idempotency store", self.database):
            if self._db is None:
                with self.database.connect(FILENAME) as connection:
                    yield connection
                return
            with self._lock:
                self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                yield self._db

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with component("idempotency"), reachable("idempotency store", self.database):
            if self._reader is None:
                with self.database.connect(FILENAME) as connection:
                    yield connection
                return
            with self._read_lock:
                yield self._reader

    def _write(self, sql: str, parameters: tuple[object, ...], *, durable: bool) -> int:
        """One statement in its own transaction; its row count. `durable`: fsync at commit."""
        with self._session(durable=durable) as db:
            return int(db.execute(sql, parameters).rowcount)

    def claim(
        self, principal: str, key: str, digest: str, *, run_id: str, scopes: Iterable[str]
    ) -> Claimed | StoredResponse | Orphaned:
        """Claimed: the caller runs the request under `run_id` (the one it allocated, or an
        orphaned claim's). A stored response: the request ran before; answer it again.
        Orphaned: its owner died; the caller resolves it from the audit log.

        Raises KeyReused (another request), ScopeMismatch (the token lacks a scope the first
        one held) or KeyInProgress (the first request's owner is live); StoreUnavailable."""
        held = sorted(set(scopes))
        now = time.time()
        with self._session() as db:
            if now - self._pruned > _PRUNE_EVERY_SECONDS:
                db.execute("DELETE FROM idempotency WHERE created < ?", (now - self._ttl,))
                self._pruned = now
            row = None
            while row is None:
                with write_transaction(db):
                    # The primary key decides the one winner per (principal, key): see the module.
                    inserted = db.execute(
                        "INSERT INTO idempotency (principal, key, request_sha256, state, created, run_id, owner, "
                        "lease_expires, scopes) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?) "
                        "ON CONFLICT (principal, key) DO NOTHING",
                        (principal, key, digest, now, run_id, self.worker, now + self._lease, json.dumps(held)),
                    ).rowcount
                    if inserted:
                        break
                    # Another claim holds the key; read it (gone again, released or pruned: claim again).
                    row = db.execute(
                        "SELECT request_sha256, state, status, body, run_id, owner, lease_expires, scopes "
                        "FROM idempotency WHERE principal = ? AND key = ?",
                        (principal, key),
                    ).fetchone()
        if row is None:
            self._started(principal, key)
            return Claimed(run_id)
        first_digest, state, status, body, first_run, owner, lease_expires, first_scopes = row
        if first_digest != digest:
            raise KeyReused(key)
        missing = tuple(sorted(set(json.loads(first_scopes) if first_scopes else ()) - set(held)))
        if missing:
            raise ScopeMismatch(key, missing)
        if state == "done":
            return StoredResponse(status, bytes(body))
        if self._is_live(principal, key, owner, lease_expires, now):
            raise KeyInProgress(key)
        return Orphaned(first_run, owner)

    def finished(
        self, principal: str, key: str, digests: Collection[str], *, scopes: Iterable[str]
    ) -> StoredResponse | None:
        """The stored answer of the key's finished request, if it was one of `digests` and this
        token holds every scope the first one held; otherwise None (`claim` decides). Reads only,
        claims nothing: an overloaded server answers a finished key's replay without a run slot, on
        its event loop (a connection of its own: no wait behind a claim's commit)."""
        with self._reading() as reader:
            row = reader.execute(
                "SELECT request_sha256, state, status, body, scopes FROM idempotency "
                "WHERE principal = ? AND key = ? AND created >= ?",
                (principal, key, time.time() - self._ttl),
            ).fetchone()
        if row is None:
            return None
        first_digest, state, status, body, first_scopes = row
        if state != "done" or first_digest not in digests:
            return None
        if set(json.loads(first_scopes) if first_scopes else ()) - set(scopes):
            return None
        return StoredResponse(status, bytes(body))

    def _is_live(self, principal: str, key: str, owner: str | None, lease_expires: float | None, now: float) -> bool:
        if owner == self.worker:  # ours: live exactly while this process runs it
            with self._live_lock:
                return (principal, key) in self._live
        return lease_expires is not None and lease_expires > now

    def take_over(self, principal: str, key: str, orphan: Orphaned) -> Claimed | None:
        """Claim an orphaned key whose run was never opened, under its run id. None: another
        worker took it first (the caller answers 409)."""
        assert orphan.run_id is not None, "a 0.1 claim names no run: it is settled in doubt, never taken over"
        run_id = orphan.run_id
        taken = self._write(
            "UPDATE idempotency SET owner = ?, lease_expires = ?, run_id = ? WHERE principal = ? AND key = ? "
            "AND state = 'running' AND owner IS NOT DISTINCT FROM ? AND run_id IS NOT DISTINCT FROM ?",
            (self.worker, time.time() + self._lease, run_id, principal, key, orphan.owner, orphan.run_id),
            durable=True,  # as a claim: the run starts next
        )
        if not taken:
            return None
        self._started(principal, key)
        return Claimed(run_id)

    def settle(self, principal: str, key: str, orphan: Orphaned, response: StoredResponse) -> None:
        """Store the answer an orphaned claim's run resolved to; later retries replay it."""
        self._write(
            "UPDATE idempotency SET state = 'done', status = ?, body = ?, owner = ?, lease_expires = NULL "
            "WHERE principal = ? AND key = ? AND state = 'running' AND run_id IS NOT DISTINCT FROM ?",
            (response.status, response.body, self.worker, principal, key, orphan.run_id),
            durable=False,  # lost: the orphan is resolved from the audit log again, to the same answer
        )

    def complete(self, principal: str, key: str, run_id: str, response: StoredResponse) -> None:
        """Store the response of run `run_id`. It replaces an `in_doubt` another worker settled
        while this one had lost its lease: the real answer is better than a doubt."""
        self._ended(principal, key)
        self._write(
            "UPDATE idempotency SET state = 'done', status = ?, body = ?, lease_expires = NULL "
            "WHERE principal = ? AND key = ? AND run_id = ?",
            (response.status, response.body, principal, key, run_id),
            durable=False,  # lost: the lease runs out and the answer is rebuilt from the run's seal
        )

    def release(self, principal: str, key: str, run_id: str) -> None:
        """The request failed before it produced a response: the key may be used again."""
        self._ended(principal, key)
        self._write(
            "DELETE FROM idempotency WHERE principal = ? AND key = ? AND state = 'running' AND run_id = ? "
            "AND owner = ?",
            (principal, key, run_id, self.worker),
            durable=False,  # lost: the lease runs out; the run never opened, so the key is taken over
        )

    def abandon(self, principal: str, key: str) -> None:
        """Stop renewing the key's lease but keep its claim: the request's run started and may
        have acted, yet it has no answer to store (the audit log's database went away). A retry
        gets 409 until the lease runs out, then the run's own answer from the log (`resolved`:
        in doubt, or interrupted once its seal is written): never a second run."""
        self._ended(principal, key)

    # -- the owner's lease ----------------------------------------------------------------

    def _started(self, principal: str, key: str) -> None:
        with self._live_lock:
            self._live.add((principal, key))
            if self._heartbeat is None:
                self._heartbeat = threading.Thread(target=self._beat, name="charter-idempotency-lease", daemon=True)
                self._heartbeat.start()

    def _ended(self, principal: str, key: str) -> None:
        with self._live_lock:
            self._live.discard((principal, key))

    def _beat(self) -> None:
        """Renew the lease of every key this worker is running, every third of a lease."""
        while True:
            time.sleep(self._lease / 3)
            with self._live_lock:
                live = list(self._live)
            if not live:
                continue
            try:
                with self._session(durable=False) as db, write_transaction(db):
                    for p, k in live:
                        db.execute(
                            "UPDATE idempotency SET lease_expires = ? WHERE principal = ? AND key = ? AND owner = ? "
                            "AND state = 'running'",
                            (time.time() + self._lease, p, k, self.worker),
                        )
            except Exception:  # a busy or unreachable store: the next beat tries again, well within the lease
                continue


def _home() -> Path:
    from charter._paths import charter_home

    return charter_home()
