"""Group commit for one audit log, led by the callers' own threads (leader/follower).

`store.RunRecorder` hands its receipts to the log's `Writer`, which signs, chains, inserts
and commits them; the recorder decides which receipts must be durable before its caller goes
on (README, "Durability"). Kept apart from the store so the commit protocol can be read alone.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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

__all__ = ["BUSY_TIMEOUT_MS", "Chained", "Head", "Record", "Writer", "connect"]  # for charter.audit.store


class Chained(Protocol):
    """What the writer chains a receipt after: its run's (or record's) last link so far."""

    last_link: str


class Record:
    """The chain position of a record of its own (an ApprovalDecided): one receipt, prev ""."""

    last_link = ""


@dataclass(frozen=True, slots=True)
class Head:
    """Where a writer's stream ends after a commit: its last receipt's position and link.

    `stream` "" is the one chain of a SQLite log, where stream_seq is the log_seq. `key_id`
    is the key that signed that receipt."""

    stream: str
    stream_seq: int
    log_seq: int
    link: str
    key_id: str


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

    def __init__(self, path: Path, key: SigningKey, *, on_commit: Callable[[Head], None] | None = None) -> None:
        self._path = path
        self._key = key
        # Told the head after each commit (charter.audit._checkpoints); it must not raise.
        self._on_commit = on_commit
        self._head: Head | None = None  # set by the leader's _write
        self._queue: list[_Batch] = []
        self._committing = False
        self._changed = threading.Condition(threading.Lock())
        self._connection: sqlite3.Connection | None = None  # used by the leader only
        self.commits = 0  # transactions committed (each one fsync): what the benchmark counts

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
            raise AuditError(f"the audit log at {self._path} could not be written: {batch.error}") from batch.error

    def _commit(self, batches: list[_Batch]) -> None:
        with component("audit.commit"):
            try:
                if self._connection is None:
                    self._connection = connect(self._path)
                self._write(self._connection, batches)
                self.commits += 1
            except BaseException as error:  # every waiter must learn it, whatever happened
                for batch in batches:
                    batch.error = error
                if self._connection is not None:
                    with contextlib.suppress(sqlite3.Error):
                        self._connection.close()
                self._connection = None
                return
        if self._on_commit is not None and self._head is not None:
            self._on_commit(self._head)

    def _write(self, connection: sqlite3.Connection, batches: list[_Batch]) -> None:
        key = self._key
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
        if run_links:  # this commit wrote receipts (a refused record alone writes none)
            self._head = Head("", log_seq, log_seq, log_link, key.key_id)
        for recorder, link in run_links.items():
            recorder.last_link = link


def _holds_run(connection: sqlite3.Connection, run_id: str) -> bool:
    return connection.execute("SELECT 1 FROM receipts WHERE run_id = ? LIMIT 1", (run_id,)).fetchone() is not None
