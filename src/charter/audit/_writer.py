"""Group commit for one audit log, led by the callers' own threads (leader/follower).

`store.RunRecorder` hands its receipts to the log's `Writer`, which signs, chains, inserts
and commits them; the recorder decides which receipts must be durable before its caller goes
on (README, "Durability"). Kept apart from the store so the commit protocol can be read alone.

SQLite: one chain (the stream ""), BEGIN IMMEDIATE makes each commit the file's one writer.
PostgreSQL (design19.md): each Writer appends to a stream of its own, `<host>:<pid>:<8 hex>`,
on one connection it holds (replaced after any error: a restarted database costs one failed
group at most, none if the session died while idle). log_seq comes from a sequence, stream_seq
and log_prev from the stream's own `stream_heads` row, updated in the same transaction: writers
never wait on one another's row. After each commit that wrote receipts, the subscribers get the
stream's `Head` (the signed checkpoints outside the database are built on it).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from charter._profile import component
from charter.approvals._index import index_approval_receipt
from charter.audit.index import index_receipt
from charter.audit.keys import SigningKey
from charter.audit.quotas import index_quota_receipt
from charter.audit.receipts import Receipt, canonical, kind_of, link_of
from charter.db._sqlite import BUSY_TIMEOUT_MS
from charter.db._sqlite import sqlite_connect as connect
from charter.errors import AuditError

if TYPE_CHECKING:
    from charter.db import Database, PgConnection

__all__ = [
    "BUSY_TIMEOUT_MS",
    "Chained",
    "Head",
    "Record",
    "Writer",
    "connect",
    "new_stream_id",
]  # for charter.audit.store


@dataclass(frozen=True, slots=True)
class Head:
    """Where one writer's stream stands after a commit: its last receipt's stream_seq, log_seq
    and link, and the key that signed it. SQLite: stream "" and stream_seq = log_seq."""

    stream: str
    stream_seq: int
    log_seq: int
    link: str
    key_id: str


def new_stream_id() -> str:
    """A writer's stream on PostgreSQL: `<host>:<pid>:<8 hex>`, made when the writer starts."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Chained(Protocol):
    """What the writer chains a receipt after: its run's (or record's) last link so far."""

    last_link: str


class Record:
    """The chain position of a record of its own (an ApprovalDecided): one receipt, prev ""."""

    last_link = ""


@dataclass(slots=True)
class _Batch:
    items: list[tuple[Chained, Receipt]]
    done: bool = False
    error: BaseException | None = None


class Writer:
    """Group commit for one log, led by the callers' own threads (leader/follower).

    A caller hands its receipts over and waits. The first waiter that finds no commit in
    progress becomes the leader: it takes every batch queued, signs, chains, inserts and
    commits them once on the log's one connection, then wakes the followers whose batches
    were in it; a batch queued meanwhile waits for the next leader (one of its own waiters).
    An idle log thus costs no thread hand-off at all, and a busy one still commits many
    callers' receipts with one fsync."""

    def __init__(
        self,
        path: Path,
        key: SigningKey,
        *,
        database: Database | None = None,
        on_commit: Callable[[Head], None] | None = None,
    ) -> None:
        self._path = path
        self._key = key
        self._database = database if database is not None and database.is_postgres else None
        # PostgreSQL: this writer's own stream (one per writer, so writers never share a head row).
        self.stream = new_stream_id() if self._database is not None else ""
        self._on_commit: list[Callable[[Head], None]] = [on_commit] if on_commit is not None else []
        self._queue: list[_Batch] = []
        self._committing = False
        self._changed = threading.Condition(threading.Lock())
        self._connection: sqlite3.Connection | PgConnection | None = None  # used by the leader only
        self.commits = 0  # transactions committed (each one fsync): what the benchmark counts
        self.head: Head | None = None  # after the last commit that wrote a receipt

    def subscribe(self, callback: Callable[[Head], None]) -> None:
        """Call `callback(head)` after each commit that wrote receipts (in the committing thread,
        after the commit; an exception it raises is ignored: the receipts are already durable)."""
        self._on_commit.append(callback)

    @property
    def where(self) -> str:
        return self._database.shown if self._database is not None else str(self._path)

    def submit(self, items: list[tuple[Chained, Receipt]], *, wait: bool = True) -> None:
        """Write `items` durably (in order, after every batch queued before them): on disk
        when this returns. Raises AuditError if they could not be written."""
        batch = _Batch(items)
        with self._changed:
            self._queue.append(batch)
            while self._committing and not batch.done:
                self._changed.wait()
            if batch.done:
                self._raise_for(batch)
                return
            self._committing = True  # this thread leads the next commit
            batches, self._queue = self._queue, []
        try:
            self._commit(batches)
        finally:
            with self._changed:
                self._committing = False
                for led in batches:
                    led.done = True
                self._changed.notify_all()
        self._raise_for(batch)

    def _raise_for(self, batch: _Batch) -> None:
        if batch.error is not None:
            raise AuditError(f"the audit log at {self.where} could not be written: {batch.error}") from batch.error

    def _commit(self, batches: list[_Batch]) -> None:
        with component("audit.commit"):
            try:
                if self._database is not None:
                    if self._connection is None:
                        self._connection = _pg_connect(self._database)
                    try:
                        head = self._write_pg(self._connection, batches)  # type: ignore[arg-type]
                    except _NotBegun:
                        # The held session died while idle (a restarted database): nothing was
                        # sent, so take a new connection and write the group once more.
                        with contextlib.suppress(Exception):
                            self._connection.close()
                        self._connection = None
                        fresh = _pg_connect(self._database)
                        self._connection = fresh
                        head = self._write_pg(fresh, batches)
                else:
                    if self._connection is None:
                        self._connection = connect(self._path)
                    head = self._write(self._connection, batches)  # type: ignore[arg-type]
                self.commits += 1
            except BaseException as error:  # every waiter must learn it, whatever happened
                for batch in batches:
                    batch.error = error
                if self._connection is not None:
                    with contextlib.suppress(Exception):
                        self._connection.close()
                # Dropped: the next commit takes a new connection (a restarted database).
                self._connection = None
                return
        if head is not None:
            self.head = head
            for callback in list(self._on_commit):
                with contextlib.suppress(Exception):
                    callback(head)

    def _write(self, connection: sqlite3.Connection, batches: list[_Batch]) -> Head | None:
        """SQLite: one chain, the stream "", in log_seq order; BEGIN IMMEDIATE makes this the one writer."""
        key = self._key
        wrote = False
        connection.execute("BEGIN IMMEDIATE")
        try:
            row = connection.execute("SELECT log_seq, link FROM head WHERE one = 1").fetchone()
            log_seq, log_link = (row[0], row[1]) if row else (0, "")
            run_links: dict[Chained, str] = {}
            for batch in batches:
                for recorder, draft in batch.items:
                    if isinstance(recorder, Record) and _holds_run(connection, draft.run_id):
                        # Refused here, in the transaction, so a second record fails alone, not the group.
                        batch.error = AuditError(f"the log already holds the record {draft.run_id}")
                        continue
                    log_seq += 1
                    receipt = msgspec.structs.replace(
                        draft,
                        log_seq=log_seq,
                        prev=run_links.get(recorder, recorder.last_link),
                        log_prev=log_link,
                        key_id=key.key_id,
                    )
                    with component("audit.sign"):
                        body = canonical(receipt)
                        signature = key.sign(body)
                    log_link = link_of(body, signature)
                    run_links[recorder] = log_link
                    wrote = True
                    connection.execute(
                        "INSERT INTO receipts VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (log_seq, receipt.run_id, receipt.seq, kind_of(receipt), body, signature, log_link),
                    )
                    index_receipt(connection, receipt, log_seq)
                    index_quota_receipt(connection, receipt)
                    index_approval_receipt(connection, receipt, log_seq)
            connection.execute(
                "INSERT INTO head VALUES (1, ?, ?) ON CONFLICT (one) DO UPDATE SET log_seq = ?, link = ?",
                (log_seq, log_link, log_seq, log_link),
            )
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        for recorder, link in run_links.items():
            recorder.last_link = link
        return Head("", log_seq, log_seq, log_link, key.key_id) if wrote else None

    def _write_pg(self, connection: PgConnection, batches: list[_Batch]) -> Head | None:
        """PostgreSQL: this writer's stream. log_seq from the sequence (unique; increasing within
        the stream, whose one writer commits in order), stream_seq and log_prev from the stream's
        own head row, which no other writer touches: concurrent writers never wait on each other
        here. A record already in the log is refused by UNIQUE (run_id, seq) inside a SAVEPOINT,
        so a duplicate fails alone, not the group (another worker may write it concurrently)."""
        import psycopg

        from charter.audit._pg_schema import LOG_SEQ_SEQUENCE

        key = self._key
        stream = self.stream
        count = sum(len(batch.items) for batch in batches)
        try:
            connection.execute("BEGIN")
        except psycopg.OperationalError as error:
            raise _NotBegun(str(error)) from error
        try:
            row = connection.execute("SELECT stream_seq, link FROM stream_heads WHERE stream = ?", (stream,)).fetchone()
            stream_seq, log_link = (int(row[0]), str(row[1])) if row else (0, "")
            numbers = iter(
                sorted(
                    int(r[0])
                    for r in connection.execute(
                        f"SELECT nextval('{LOG_SEQ_SEQUENCE}') FROM generate_series(1, ?)", (count,)
                    ).fetchall()
                )
            )
            log_seq = 0
            run_links: dict[Chained, str] = {}
            for batch in batches:
                for recorder, draft in batch.items:
                    number = next(numbers)
                    record = isinstance(recorder, Record)
                    receipt = msgspec.structs.replace(
                        draft,
                        log_seq=number,
                        prev=run_links.get(recorder, recorder.last_link),
                        log_prev=log_link,
                        key_id=key.key_id,
                        stream=stream,
                        stream_seq=stream_seq + 1,
                    )
                    with component("audit.sign"):
                        body = canonical(receipt)
                        signature = key.sign(body)
                    link = link_of(body, signature)
                    if record:
                        connection.execute("SAVEPOINT record")
                    try:
                        connection.execute(
                            "INSERT INTO receipts (log_seq, run_id, seq, kind, body, signature, link, stream, "
                            "stream_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (
                                number,
                                receipt.run_id,
                                receipt.seq,
                                kind_of(receipt),
                                body,
                                signature,
                                link,
                                stream,
                                stream_seq + 1,
                            ),
                        )
                        index_receipt(connection, receipt, number)
                        index_quota_receipt(connection, receipt)
                        index_approval_receipt(connection, receipt, number)
                    except psycopg.errors.UniqueViolation:
                        if not record:
                            raise
                        connection.execute("ROLLBACK TO SAVEPOINT record")
                        batch.error = AuditError(f"the log already holds the record {draft.run_id}")
                        continue
                    if record:
                        connection.execute("RELEASE SAVEPOINT record")
                    stream_seq += 1
                    log_seq, log_link = number, link
                    run_links[recorder] = link
            if log_seq:
                connection.execute(
                    "INSERT INTO stream_heads (stream, stream_seq, log_seq, link, key_id) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (stream) DO UPDATE SET stream_seq = excluded.stream_seq, "
                    "log_seq = excluded.log_seq, link = excluded.link, key_id = excluded.key_id, updated_at = now()",
                    (stream, stream_seq, log_seq, log_link, key.key_id),
                )
            connection.execute("COMMIT")  # synchronous_commit on: durable when it returns
        except BaseException:
            with contextlib.suppress(Exception):
                connection.execute("ROLLBACK")
            raise
        for recorder, link in run_links.items():
            recorder.last_link = link
        return Head(stream, stream_seq, log_seq, log_link, key.key_id) if log_seq else None


class _NotBegun(Exception):
    """The writer's connection failed before its transaction began: nothing was written."""


def _pg_connect(database: Database) -> PgConnection:
    """The writer's own connection (autocommit; transactions are explicit), outside the pool:
    it is held for the writer's life, and replaced after any error."""
    import psycopg

    from charter.db import PgConnection

    raw: Any = psycopg.connect(database.url, autocommit=True, connect_timeout=5)
    return PgConnection(raw)


def _holds_run(connection: sqlite3.Connection, run_id: str) -> bool:
    return connection.execute("SELECT 1 FROM receipts WHERE run_id = ? LIMIT 1", (run_id,)).fetchone() is not None
