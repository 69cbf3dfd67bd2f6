"""The audit log on SQLite: append-only, group commit, a durable commit before every action.

Receipts are committed in groups, led by the callers' own threads (`Writer`: the first
waiter with no commit in progress signs, chains, inserts and commits everything queued,
once, with `synchronous=FULL`, and wakes the others). A caller that needs its receipt
durable (the opening, a write's decision, a quota-held or approval-related decision, a
pause, a seal) waits for that commit, so no action ever runs before its receipt is on disk.
A write's Outcome receipt is durable too before its result reaches the program
(`outcome(..., durable=True)`): once the program can act on a write's result, a crash can
no longer lose what the write did. A read's Decision and Outcome are kept by the run's
recorder without waiting: they become durable with the run's next durable receipt (a
write's decision or outcome, or the seal), which always comes before anything the read
returned can leave the sandbox; if the process dies first, the read is missing from the
log, which loses nothing that left the sandbox (README, "Durability").

The schema has no UPDATE or DELETE path: triggers refuse both on receipts. Only the
`head` row (the log's last log_seq and link) is overwritten, in the same transaction
as the receipts it points at, so a truncated log no longer reaches its head.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from charter._paths import charter_home
from charter.approvals._index import APPROVALS_INDEX_SQL, fill_approvals_index
from charter.audit._checkpoints import CheckpointWriter, checkpoints_path
from charter.audit._keyring import keyring_path, signing_key_for, trusted_keys
from charter.audit._locks import side_lock
from charter.audit._pg_locks import LogLock, lock_session, pg_lock
from charter.audit._pg_schema import AUDIT_PG_SCHEMA
from charter.audit._writer import BUSY_TIMEOUT_MS, Chained, Head, Record, Writer, connect
from charter.audit.index import (
    DENIALS_INDEX_SQL,
    IN_DOUBT_INDEX_SQL,
    RUNS_INDEX_SQL,
    RunFilter,
    RunSummary,
    fill_denials_index,
    fill_in_doubt_index,
    fill_runs_index,
    list_runs,
)
from charter.audit.keys import (
    PublicKey,
    SecretKey,
    SigningKey,
    load_or_create_secret_key,
)
from charter.audit.quotas import QUOTA_INDEX_SQL, QuotaReader, fill_quota_index
from charter.audit.receipts import (
    ApprovalDecided,
    ApprovalRequested,
    Asked,
    Attempted,
    Closing,
    Concluded,
    Decision,
    Opened,
    Opening,
    Outcome,
    Receipt,
    Sealed,
    StoredReceipt,
    decode_body,
)
from charter.db import Connection, Database, PgConnection
from charter.errors import AuditError, RunNotFound, StoreUnavailable, UsageError
from charter.migrations import Schema, Step
from charter.status import Status, status_of

__all__ = [
    "AUDIT_SCHEMA",
    "AuditLog",
    "BackendError",
    "Head",
    "LogSnapshot",
    "RunRecord",
    "RunRecorder",
    "now_iso",
    "record_of",
]

# The log's schema, one step per version (charter.migrations). Step 1 is the schema of
# release 0.1.0, which wrote no version: its statements are idempotent, so it adopts a 0.1
# log as it is. A later step is one more entry (e.g. a table, created once, in its step).
AUDIT_SCHEMA = Schema(
    "audit log",
    (
        Step(
            1,
            "receipts, head and keys; triggers that refuse UPDATE and DELETE of receipts (release 0.1.0)",
            (
                """CREATE TABLE IF NOT EXISTS receipts (
                    log_seq   INTEGER PRIMARY KEY,
                    run_id    TEXT NOT NULL,
                    seq       INTEGER NOT NULL,
                    kind      TEXT NOT NULL,
                    body      BLOB NOT NULL,
                    signature BLOB NOT NULL,
                    link      TEXT NOT NULL,
                    UNIQUE (run_id, seq)
                )""",
                "CREATE INDEX IF NOT EXISTS receipts_by_kind ON receipts (kind, run_id)",
                """CREATE TABLE IF NOT EXISTS head (
                    one     INTEGER PRIMARY KEY CHECK (one = 1),
                    log_seq INTEGER NOT NULL,
                    link    TEXT NOT NULL
                )""",
                "CREATE TABLE IF NOT EXISTS keys (key_id TEXT PRIMARY KEY, public_key BLOB NOT NULL)",
                """CREATE TRIGGER IF NOT EXISTS receipts_no_update BEFORE UPDATE ON receipts
                BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: receipts cannot be updated'); END""",
                """CREATE TRIGGER IF NOT EXISTS receipts_no_delete BEFORE DELETE ON receipts
                BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: receipts cannot be deleted'); END""",
            ),
        ),
        Step(
            2,
            "backend_errors: backend and gate exception texts withheld from programs, callers and the "
            "signed log (receipts hold their type and sha256); outside the chain on purpose, so an "
            "operator may delete a row holding a secret and nothing that verifies the log depends on it",
            (
                """CREATE TABLE backend_errors (
                    run_id         TEXT NOT NULL,
                    call           INTEGER NOT NULL,
                    operation      TEXT NOT NULL,
                    error_type     TEXT NOT NULL,
                    message_sha256 TEXT NOT NULL,
                    message        TEXT NOT NULL,
                    PRIMARY KEY (run_id, call)
                )""",
            ),
        ),
        Step(
            3,
            "runs: an index of runs (kind, contract, version, principal, status, cause, first denial, times, "
            "parent) kept in each receipt's transaction and built from the receipts on upgrade; `audit list` "
            "reads it, newest first, without decoding receipts; not signed, never consulted by verify",
            RUNS_INDEX_SQL,
            fill=fill_runs_index,
        ),
        Step(
            4,
            "quota_counts: what each allowed call added to each quota (contract name, quota id, key, time), "
            "kept in each receipt's transaction and built from the receipts on upgrade, so a quota's total "
            "is an index range scan; not signed, never consulted by verify",
            QUOTA_INDEX_SQL,
            fill=fill_quota_index,
        ),
        Step(
            5,
            "approvals: one row per approval request (run, operation, requester, approver scope, expiry, "
            "decision, resume runs), kept in each receipt's transaction and built from the receipts on upgrade; "
            "`charter approvals` and the approval API read it; not signed, never consulted by verify",
            APPROVALS_INDEX_SQL,
            fill=fill_approvals_index,
        ),
        Step(
            6,
            "denials: one row per DENY decision (run, principal, contract, version, operation, code, boundary, "
            "clause, time), kept in each receipt's transaction and built from the receipts on upgrade, so the "
            "review app's overview counts which rules fire most without decoding receipts; and indexes of the "
            "runs index by contract, principal and first denial code for its filters; not signed, never "
            "consulted by verify",
            DENIALS_INDEX_SQL,
            fill=fill_denials_index,
        ),
        Step(
            7,
            "runs.in_doubt: how many of a sealed run's allowed calls were left in doubt (a write whose effect is "
            "not known), kept in the seal's transaction and counted from the seals on upgrade, so the review "
            "app's overview lists such runs without decoding receipts; not signed, never consulted by verify",
            IN_DOUBT_INDEX_SQL,
            fill=fill_in_doubt_index,
        ),
    ),
)

BACKEND_ERROR_MAX_CHARS = 1024  # of a withheld message kept in backend_errors
SEAL_RETRY_S = 1.0  # how often a seal the database refused is tried again (PostgreSQL)
SEAL_DEFERRED = "audit_unavailable"  # the cause of a seal written late: the log could not be written
_BACKEND_ERROR_SQL = (
    "INSERT INTO backend_errors VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, call) DO UPDATE SET "
    "operation = excluded.operation, error_type = excluded.error_type, "
    "message_sha256 = excluded.message_sha256, message = excluded.message"
)
_COLUMNS_SQL = "SELECT log_seq, run_id, seq, kind, body, signature, link FROM receipts"
_PAGE = 2000  # receipts per query when the whole log is read from PostgreSQL


class BackendError(msgspec.Struct, frozen=True, kw_only=True):
    """One withheld exception text: a row of the redactable backend_errors table."""

    run_id: str
    call: int
    operation: str
    error_type: str
    message_sha256: str  # of the whole message, as the receipt records it
    message: str  # the first BACKEND_ERROR_MAX_CHARS characters


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class RunRecorder:
    """Writes one run's receipts in order. Made by `AuditLog.open_run`.

    A program run records decisions and outcomes and ends with `seal`; an intent run
    records attempts and ends with `conclude`.
    """

    def __init__(
        self,
        writer: Writer,
        opened: Opening,
        path: Path | None = None,
        *,
        secret_key: SecretKey | None = None,
        quotas: QuotaReader | None = None,
        database: Database | None = None,
        on_unsealed: Callable[[RunRecorder, Sealed], None] | None = None,
    ) -> None:
        self._path = path
        self._database = database if database is not None and database.is_postgres else None
        # PostgreSQL: a seal that could not be written is handed here to be retried (AuditLog).
        self._on_unsealed = on_unsealed
        # What the gate records in place of a secret param's value (None: no log folder, no key).
        self.secret_key = secret_key
        self.run_id = opened.run_id
        self.opened = opened
        self.last_link = ""  # set by the commit's leader after each commit
        self._writer = writer
        self._lock = threading.Lock()
        self._next_seq = 0
        self._pending: list[tuple[Chained, Receipt]] = []
        self._awaiting_outcome: dict[int, str] = {}  # call -> operation
        self.sealed: Closing | None = None
        self.written: list[Receipt] = []  # this run's receipts in order, as handed to the writer
        # Reads quota totals from this run's log (None: no log to count from).
        self.quotas = quotas
        self._append(opened, durable=True)

    def _append(self, draft: Receipt, *, durable: bool) -> None:
        with self._lock:
            if self.sealed is not None:
                raise AuditError(f"run {self.run_id} is sealed; no receipt may follow its seal")
            receipt = msgspec.structs.replace(draft, run_id=self.run_id, seq=self._next_seq)
            self._next_seq += 1
            self.written.append(receipt)
            self._pending.append((self, receipt))
            if not durable:
                return
            items, self._pending = self._pending, []
            if isinstance(receipt, Sealed | Concluded):
                self.sealed = receipt
            # Waiting under the lock keeps a late outcome from slipping in between.
            try:
                self._writer.submit(items, wait=True)
            except AuditError:
                if self._on_unsealed is not None:  # PostgreSQL: see `seal`
                    # Not written: its caller fails closed, so it never took effect and is
                    # dropped (its seq is freed, the run's chain stays whole); the receipts
                    # kept before it (a read's) did happen and go with the next durable one.
                    self._pending = items[:-1]
                    self._next_seq -= 1
                    self.written.pop()
                    if self.sealed is receipt:
                        self.sealed = None
                raise

    def decision(self, decision: Decision, *, durable: bool = True) -> None:
        """Durable when it returns; the caller may act only after that. Without `durable` (a
        read's decision the gate found nothing relies on: no quota, no approval) it is recorded
        with the run's next durable receipt, as a read's outcome is (see the module).

        Raises AuditError if a durable decision could not be written."""
        self._append(decision, durable=durable)
        if decision.decision == "ALLOW":
            self._awaiting_outcome[decision.call] = decision.operation

    def approval_requested(self, receipt: ApprovalRequested) -> None:
        """A call paused for a human's approval, in place of its Decision: durable when it
        returns (the run then ends paused; a resume finds the request by this receipt)."""
        self._append(receipt, durable=True)

    def outcome(self, outcome: Outcome, *, durable: bool = False) -> bool:
        """Recorded with the run's next durable receipt, or, with `durable` (a write's outcome),
        on disk when this returns. False if the run was sealed first.

        Raises AuditError if a durable outcome could not be written."""
        try:
            self._append(outcome, durable=durable)
        except AuditError:
            if self.sealed is not None:
                return False
            raise  # not on disk: the call stays in doubt in the seal
        if outcome.status != "unknown":  # an unknown outcome leaves the call in doubt
            self._awaiting_outcome.pop(outcome.call, None)
        return True

    def backend_error(self, error: BackendError) -> None:
        """Keep a withheld exception text in the redactable table (not the signed log). Best
        effort: the receipt already holds its type and hash, and losing the text loses no
        decision."""
        if self._path is None:
            return
        row = (
            self.run_id,
            error.call,
            error.operation,
            error.error_type,
            error.message_sha256,
            error.message[:BACKEND_ERROR_MAX_CHARS],
        )
        if self._database is not None:
            with contextlib.suppress(Exception), self._database.pg_connection() as pg:
                pg.execute(_BACKEND_ERROR_SQL, row)
            return
        with contextlib.suppress(sqlite3.Error), closing(connect(self._path)) as connection:
            connection.execute(_BACKEND_ERROR_SQL, row)

    def seal(self, sealed: Sealed) -> Sealed:
        with self._lock:
            in_doubt = tuple(sorted(self._awaiting_outcome))
            receipts = self._next_seq
        final = msgspec.structs.replace(sealed, in_doubt=in_doubt, receipts=receipts)
        try:
            self._append(final, durable=True)
        except AuditError:
            if self._on_unsealed is not None:
                # PostgreSQL (design19.md): the log keeps the seal and retries it until written,
                # as `interrupted` (the gate refused to go on: the run did not end normally).
                self._on_unsealed(self, final)
            raise
        assert isinstance(self.sealed, Sealed)
        return self.sealed

    def retry_seal(self, draft: Sealed) -> bool:
        """Write the seal `seal` could not (AuditLog's retry thread): status interrupted, with
        the calls in doubt now. True once written; False if it still cannot be."""
        with self._lock:
            if self.sealed is not None:
                return True
            in_doubt = tuple(sorted(self._awaiting_outcome))
            receipts = self._next_seq
        final = msgspec.structs.replace(
            draft,
            at=now_iso(),
            in_doubt=in_doubt,
            receipts=receipts,
            run_status="interrupted",
            cause=SEAL_DEFERRED,
        )
        try:
            self._append(final, durable=True)
        except AuditError:
            return False
        return True

    def attempt(self, attempted: Attempted) -> None:
        """Durable when it returns: the attempt's program may run after that."""
        self._append(attempted, durable=True)

    def conclude(self, concluded: Concluded) -> Concluded:
        with self._lock:
            receipts = self._next_seq
        self._append(msgspec.structs.replace(concluded, receipts=receipts), durable=True)
        assert isinstance(self.sealed, Concluded)
        return self.sealed


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run as the log holds it, receipts decoded, in order: a program run (opened by
    Opened, sealed by Sealed) or an intent run (Asked ... Concluded)."""

    opened: Opening
    receipts: tuple[Receipt, ...]
    sealed: Closing | None

    @property
    def run_id(self) -> str:
        return self.opened.run_id

    @property
    def status(self) -> Status:
        """How the run ended, in the one vocabulary (charter.status); `interrupted` if never sealed."""
        return status_of(self.opened, self.sealed).status

    @property
    def cause(self) -> str | None:
        """Why, in one machine word: the sandbox outcome's tag or the deciding gate code."""
        return status_of(self.opened, self.sealed).cause

    def program_runs(self) -> list[str]:
        """The program runs an intent run's attempts started, in order ([] for a program run).
        Each attempt names its run before the program runs, so an unconcluded run names them too."""
        return [r.program_run for r in self.receipts if isinstance(r, Attempted) and r.program_run is not None]

    def in_doubt(self) -> list[Decision]:
        """Allowed calls with no known outcome: the action may or may not have happened."""
        done = {r.call for r in self.receipts if isinstance(r, Outcome) and r.status != "unknown"}
        return [r for r in self.receipts if isinstance(r, Decision) and r.decision == "ALLOW" and r.call not in done]


class AuditLog:
    """The audit log in one SQLite file (default `<CHARTER_HOME>/audit.db`, keys in `keys/` beside it),
    or in a PostgreSQL database (`database=`; design19.md): there each writer (this object's, in
    one process) appends to a stream of its own (`Writer.stream`), so workers never wait on one
    another's head row; `verify` checks each stream's chain and its `stream_heads` row."""

    def __init__(
        self,
        path: Path | str | None = None,
        *,
        keys_dir: Path | None = None,
        key: SigningKey | None = None,
        database: Database | None = None,
        keyring: Path | str | None = None,
        checkpoints: Path | str | None = None,
    ) -> None:
        # `database`: where the log lives (charter.db); a SQLite database keeps it in
        # `<home>/audit.db`. On PostgreSQL `path` is still `<home>/audit.db` (never opened: the
        # keys folder and messages use it); `database` says where the log really is.
        if database is None and path is None:
            database = Database.from_env()  # CHARTER_DATABASE_URL, else <CHARTER_HOME>/audit.db as before
        if database is not None and path is None:
            path = database.home / "audit.db"
        self.path = Path(path) if path is not None else charter_home() / "audit.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.database = (
            database if database is not None else Database("sqlite", f"sqlite:{self.path.parent}", self.path.parent)
        )
        self._postgres = self.database.is_postgres
        self._subscribers: list[Callable[[Head], None]] = []
        self._pending_seals: list[tuple[RunRecorder, Sealed]] = []
        self._retrying: threading.Thread | None = None
        self._keys_dir = keys_dir or self.path.parent / "keys"
        self._key = key
        self._key_given = key is not None  # a key handed in is the caller's to check
        self._keyring_seen: int | None = None  # the keyring file's mtime when the key was last checked
        # Issue 19 (charter.audit._keyring, _checkpoints): the trusted keys, and the file of
        # signed heads outside the database ("none": off).
        self._keyring = keyring
        self.checkpoints_path = checkpoints_path(self.path, checkpoints)
        self._checkpoints: CheckpointWriter | None = None
        self._secret_key: SecretKey | None = None
        self._writer: Writer | None = None
        self._writer_lock = threading.Lock()
        self._readers = threading.local()
        if self._postgres:
            with self.connect() as pg:
                AUDIT_PG_SCHEMA.open(pg, self.database.shown)  # type: ignore[arg-type]
            return
        with closing(connect(self.path)) as connection:
            AUDIT_SCHEMA.open(connection, self.path)  # created if new; another version is refused

    # -- writing ---------------------------------------------------------------------

    @property
    def signing_key(self) -> SigningKey:
        """The key this log signs with (charter.audit._keyring.signing_key_for). UsageError for a
        key the keyring refuses (revoked, unlisted, no such key)."""
        if self._key is None:
            self._keyring_seen = self._keyring_stamp()
            self._key = signing_key_for(self._keys_dir, self._keyring)
        return self._key

    def _keyring_stamp(self) -> int | None:
        path = keyring_path(self._keys_dir, self._keyring)
        try:
            return path.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def _check_signing_key(self) -> None:
        """Before a run opens: the signing key loads, and is checked again whenever the keyring
        file changed, so a key revoked while the process runs signs no new run (a run already
        under way finishes with it). AuditError: the run must not start (the server answers 503)."""
        if self._key is not None and self._key_given:
            return
        try:
            if self._key is None:
                self.signing_key  # noqa: B018
            elif self._keyring_stamp() != self._keyring_seen:
                self._keyring_seen = self._keyring_stamp()
                signing_key_for(self._keys_dir, self._keyring)
        except UsageError as error:
            raise AuditError(f"no run can be signed: {error}") from error

    @property
    def secret_key(self) -> SecretKey:
        """The HMAC key receipts use in place of secret values (`keys/secrets.key`)."""
        if self._secret_key is None:
            self._secret_key = load_or_create_secret_key(self._keys_dir)
        return self._secret_key

    def existing_secret_key(self) -> SecretKey | None:
        """The HMAC key for secret values if this log's keys folder holds one, never a new one:
        `audit replay` compares digests made with the log's own key, or says it cannot."""
        if self._secret_key is None and not (self._keys_dir / "secrets.key").exists():
            return None
        return self.secret_key

    def _ensure_writer(self) -> Writer:
        with self._writer_lock:
            if self._writer is None:
                key = self.signing_key
                try:
                    with self._connection() as connection:
                        connection.execute(
                            "INSERT INTO keys VALUES (?, ?) ON CONFLICT (key_id) DO NOTHING",
                            (key.key_id, key.public.raw),
                        )
                except StoreUnavailable as error:
                    raise AuditError(str(error)) from error  # the gate fails closed
                if self.checkpoints_path is not None:
                    self._checkpoints = CheckpointWriter(self.checkpoints_path, key)
                    self._subscribers.append(self._checkpoints.record)
                writer = Writer(self.path, key, database=self.database)
                for callback in self._subscribers:
                    writer.subscribe(callback)
                self._writer = writer
            return self._writer

    def subscribe(self, callback: Callable[[Head], None]) -> None:
        """Call `callback(head)` after each commit of this log's writer that wrote receipts (the
        checkpoints, charter.audit._checkpoints): the writer's stream, its last stream_seq, log_seq,
        link and key id. Called in the committing thread after COMMIT; exceptions are ignored."""
        with self._writer_lock:
            self._subscribers.append(callback)
            if self._writer is not None:
                self._writer.subscribe(callback)

    @property
    def stream(self) -> str | None:
        """This object's writer's stream ("" on SQLite), None before it first writes."""
        return self._writer.stream if self._writer is not None else None

    def close(self) -> None:
        """Write the last checkpoint now (also done at process exit). The log stays usable."""
        if self._checkpoints is not None:
            self._checkpoints.close()

    @property
    def commits(self) -> int:
        """Durable commits this AuditLog object has made so far (each one fsync'd transaction)."""
        return self._writer.commits if self._writer is not None else 0

    def open_run(self, opened: Opening) -> RunRecorder:
        """Durably records the run's opening; the program may run once this returns."""
        self._check_signing_key()
        return RunRecorder(
            self._ensure_writer(),
            opened,
            self.path,
            secret_key=self.secret_key,
            quotas=QuotaReader(self),
            database=self.database,
            on_unsealed=self._keep_seal if self._postgres else None,
        )

    def _keep_seal(self, recorder: RunRecorder, draft: Sealed) -> None:
        """A seal that could not be written: kept, and retried every SEAL_RETRY_S by a thread."""
        with self._writer_lock:
            self._pending_seals.append((recorder, draft))
            if self._retrying is None or not self._retrying.is_alive():
                self._retrying = threading.Thread(target=self._retry_seals, name="charter-seal-retry", daemon=True)
                self._retrying.start()

    def _retry_seals(self) -> None:
        while True:
            time.sleep(SEAL_RETRY_S)
            with self._writer_lock:
                waiting = list(self._pending_seals)
            written = [item for item in waiting if item[0].retry_seal(item[1])]
            with self._writer_lock:
                self._pending_seals = [item for item in self._pending_seals if item not in written]
                if not self._pending_seals:
                    self._retrying = None
                    return

    def pending_seals(self) -> list[str]:
        """The runs whose seal could not be written yet (the database was down): their ids. Each
        is retried every SEAL_RETRY_S until written, as `interrupted` with its calls in doubt."""
        with self._writer_lock:
            return [recorder.run_id for recorder, _ in self._pending_seals]

    def append_record(self, receipt: ApprovalDecided) -> StoredReceipt:
        """Durably write a record of its own: one receipt whose run_id is its approval id (seq 0,
        prev ""), signed and chained into the log like any receipt. Not a run: the runs index,
        `runs()`, `run_ids()`, `list_runs` and `resolve` leave it out.

        Returns the receipt as stored. Raises AuditError if it could not be written, or if the
        log already holds a receipt with that run id (a record is written once)."""
        if receipt.run_id != receipt.approval_id:
            raise AuditError(
                f"an approval decision is the record {receipt.approval_id}, not {receipt.run_id}: "
                "its run_id must be its approval_id"
            )
        draft = msgspec.structs.replace(receipt, seq=0, prev="")
        self._ensure_writer().submit([(Record(), draft)], wait=True)
        [stored] = self.stored(receipt.run_id)
        return stored

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection to the log's database for the readers beside it (quota totals, the
        approvals and runs indexes): SQL in sqlite3 style, `?` placeholders, either engine;
        closed (or returned to its pool) on exit. Receipts are written only by the writer.

        PostgreSQL: StoreUnavailable when no connection can be had (the database is down)."""
        if self._postgres:
            with _unavailable(self.database), self.database.pg_connection() as pg:
                yield pg
            return
        connection = connect(self.path)
        try:
            yield connection
        finally:
            connection.close()

    def lock(self, suffix: str, key: str, *, slots: int | None = None, best_effort: bool = False) -> LogLock:
        """The cross-process lock of `key` among the log's users (charter.audit._locks): the quota
        buckets (".quota-locks"), the approval decision (".approval-lock"), a resume (".resume-locks").
        PostgreSQL: a session advisory lock (charter.audit._pg_locks), the same interface."""
        if self._postgres:
            if slots is None:
                return pg_lock(self.database, suffix, key)
            return pg_lock(self.database, suffix, key, slots=slots)
        if slots is None:
            return side_lock(self.path.resolve(), suffix, key, best_effort=best_effort)
        return side_lock(self.path.resolve(), suffix, key, slots=slots, best_effort=best_effort)

    # -- reading ---------------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        with self.connect() as connection:
            yield connection

    def stored(self, run_id: str | None = None) -> Iterator[StoredReceipt]:
        """Rows as stored, in log order; all of them, or one run's."""
        if self._postgres:
            yield from self._pg_stored(run_id)
            return
        query = _COLUMNS_SQL
        params: tuple[str, ...] = ()
        if run_id is not None:
            query += " WHERE run_id = ?"
            params = (run_id,)
        if run_id is not None:
            # One run's rows, from this thread's held connection: a sealed run's answer reads its
            # deciding denial back (log_seq, link), and a connection per read cost ~0.5 ms of CPU.
            # Fetched whole, so no statement is left open to pin the connection to a snapshot.
            rows = self._reader().execute(query + " ORDER BY log_seq", params).fetchall()
            yield from (StoredReceipt(*row) for row in rows)
            return
        with self._connection() as connection:  # the whole log: streamed, on a connection of its own
            for row in connection.execute(query + " ORDER BY log_seq", params):
                yield StoredReceipt(*row)

    def _pg_stored(self, run_id: str | None) -> Iterator[StoredReceipt]:
        if run_id is not None:
            with self.connect() as connection:
                rows = connection.execute(_COLUMNS_SQL + " WHERE run_id = ? ORDER BY log_seq", (run_id,)).fetchall()
            yield from (StoredReceipt(*row) for row in rows)
            return
        after = 0  # the whole log, a page at a time (keyset), no transaction held open across pages
        while True:
            with self.connect() as connection:
                rows = connection.execute(
                    _COLUMNS_SQL + " WHERE log_seq > ? ORDER BY log_seq LIMIT ?", (after, _PAGE)
                ).fetchall()
            yield from (StoredReceipt(*row) for row in rows)
            if len(rows) < _PAGE:
                return
            after = rows[-1][0]

    @contextmanager
    def snapshot(self) -> Iterator[LogSnapshot]:
        """The whole log as of one moment, for `verify`: its receipts in log order, the head row
        and (PostgreSQL) every stream's head row. On PostgreSQL one REPEATABLE READ, read-only
        transaction reads them all, streaming the receipts through a server-side cursor, so
        writers committing meanwhile (whose log_seq may be lower than receipts already read:
        log_seq is taken before commit) never show as a gap or a truncated stream."""
        if not self._postgres:
            yield LogSnapshot(self.stored(), self.head(), None)
            return
        with self.connect() as connection:
            pg: Any = connection
            with pg.raw.transaction():
                pg.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                row = pg.execute("SELECT log_seq, link FROM head WHERE one = 1").fetchone()
                head = (int(row[0]), str(row[1])) if row else None
                heads = {
                    str(r[0]): Head(str(r[0]), int(r[1]), int(r[2]), str(r[3]), str(r[4]))
                    for r in pg.execute("SELECT stream, stream_seq, log_seq, link, key_id FROM stream_heads").fetchall()
                }
                with pg.raw.cursor(name="charter_log_snapshot") as cursor:
                    cursor.itersize = _PAGE
                    cursor.execute(_COLUMNS_SQL + " ORDER BY log_seq")
                    yield LogSnapshot((StoredReceipt(*r) for r in cursor), head, heads)

    def stored_in_stream(self, stream: str, stream_seq: int) -> StoredReceipt | None:
        """Receipt `stream_seq` of writer stream `stream` (PostgreSQL; None on SQLite or if absent)."""
        if not self._postgres or not stream:
            return None
        with self.connect() as connection:
            row = connection.execute(
                _COLUMNS_SQL + " WHERE stream = ? AND stream_seq = ?", (stream, stream_seq)
            ).fetchone()
        return StoredReceipt(*row) if row else None

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection to the log, opened once (autocommit: each statement
        reads the latest commit)."""
        connection: sqlite3.Connection | None = getattr(self._readers, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            self._readers.connection = connection
        return connection

    def stored_at(self, log_seq: int) -> StoredReceipt | None:
        with self._connection() as connection:
            row = connection.execute(_COLUMNS_SQL + " WHERE log_seq = ?", (log_seq,)).fetchone()
        return StoredReceipt(*row) if row else None

    def head(self) -> tuple[int, str] | None:
        """The head of the stream "" (the SQLite log's one chain; on PostgreSQL a log copied from
        SQLite): its last log_seq and link. None: no such receipt. See `heads` for every stream."""
        with self._connection() as connection:
            row = connection.execute("SELECT log_seq, link FROM head WHERE one = 1").fetchone()
        return (int(row[0]), str(row[1])) if row else None

    def stream_heads(self) -> dict[str, Head]:
        """Each writer stream's head row (PostgreSQL; {} on SQLite), by stream."""
        if not self._postgres:
            return {}
        with self._connection() as connection:
            rows = connection.execute(
                "SELECT stream, stream_seq, log_seq, link, key_id FROM stream_heads ORDER BY log_seq"
            ).fetchall()
        return {str(r[0]): Head(str(r[0]), int(r[1]), int(r[2]), str(r[3]), str(r[4])) for r in rows}

    def heads(self) -> list[Head]:
        """Every stream's head: the stream "" (from the head row; key_id of its receipt) and each
        writer stream's, oldest last write first. What a checkpoint or `audit head` records."""
        found: list[Head] = []
        head = self.head()
        if head is not None:
            stored = self.stored_at(head[0])
            key_id = ""
            if stored is not None:
                with contextlib.suppress(ValueError):
                    key_id = stored.decoded().key_id
            found.append(Head("", head[0], head[0], head[1], key_id))
        found.extend(self.stream_heads().values())
        return found

    def trusted_keys(self) -> dict[str, PublicKey]:
        """The keyring's keys (with name and not_after), or without a keyring file the public
        keys beside the private key; never the copies inside the log, which whoever can write
        the log could replace (charter.audit._keyring)."""
        return trusted_keys(self._keys_dir, self._keyring)

    def backend_errors(self, run_id: str) -> list[BackendError]:
        """The exception texts withheld from run `run_id`'s program, by call. Operators only:
        they may hold secrets (servers show them to principals with audit:read)."""
        with self._connection() as connection:
            rows = connection.execute(
                "SELECT run_id, call, operation, error_type, message_sha256, message FROM backend_errors "
                "WHERE run_id = ? ORDER BY call",
                (run_id,),
            ).fetchall()
        return [
            BackendError(run_id=r[0], call=r[1], operation=r[2], error_type=r[3], message_sha256=r[4], message=r[5])
            for r in rows
        ]

    def forget_backend_errors(self, run_id: str) -> int:
        """Delete run `run_id`'s withheld exception texts (the receipts keep their hashes). Returns the count."""
        with self._connection() as connection:
            return int(connection.execute("DELETE FROM backend_errors WHERE run_id = ?", (run_id,)).rowcount)

    def run_ids(self) -> list[str]:
        with self._connection() as connection:
            rows = connection.execute(
                "SELECT run_id FROM receipts WHERE kind IN ('open', 'ask') ORDER BY log_seq"
            ).fetchall()
        return [r[0] for r in rows]

    def resolve(self, prefix: str) -> str:
        """A run id from a unique prefix of it (as `audit list` shows them)."""
        with self._connection() as connection:
            rows = connection.execute(
                "SELECT run_id FROM receipts WHERE kind IN ('open', 'ask') AND run_id LIKE ? LIMIT 2",
                (prefix.replace("%", "").replace("_", "") + "%",),
            ).fetchall()
        if not rows or not prefix:
            raise RunNotFound(f"no run {prefix!r} in the audit log at {self.path}; `charter audit list` shows runs")
        if len(rows) > 1:
            raise RunNotFound(f"run id prefix {prefix!r} is ambiguous in {self.path}; give more of the id")
        return str(rows[0][0])

    def list_runs(
        self, filters: RunFilter | None = None, limit: int = 50, before_cursor: int | None = None
    ) -> list[RunSummary]:
        """Runs from the runs index, newest first: up to `limit` (>= 1) matching `filters`, opened
        before `before_cursor` (the `cursor` of the previous page's last row; None: from the newest).
        Reads no receipt bodies. ValueError for a limit below 1."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        with self._connection() as connection:
            return list_runs(connection, filters or RunFilter(), limit, before_cursor)

    def run(self, run_id: str) -> RunRecord:
        receipts = tuple(row.decoded() for row in self.stored(self.resolve(run_id)))
        return record_of(receipts)

    def runs(self) -> list[RunRecord]:
        """Every run's opening and seal, oldest first (decisions and outcomes left out)."""
        with self._connection() as connection:
            rows = connection.execute(
                "SELECT body FROM receipts WHERE kind IN ('open', 'seal', 'ask', 'conclude') ORDER BY log_seq"
            ).fetchall()
        opened: dict[str, Opening] = {}
        sealed: dict[str, Closing] = {}
        for (body,) in rows:
            receipt = decode_body(body)
            if isinstance(receipt, Opened | Asked):
                opened[receipt.run_id] = receipt
            elif isinstance(receipt, Sealed | Concluded):
                sealed[receipt.run_id] = receipt
        return [RunRecord(opened=o, receipts=(), sealed=sealed.get(rid)) for rid, o in opened.items()]

    # -- the readers beside the log (quota totals, approvals, the runs pages) ------------

    @contextmanager
    def reader(self) -> Iterator[Connection]:
        """A connection for a few short reads (SQL in sqlite3 style, `?`): the quota totals the
        gate reads under its locks, the approvals and runs indexes. Do not hold it across calls.

        SQLite: this thread's connection, opened once and kept (autocommit: each statement reads
        the latest commit; a connection per read cost ~0.5 ms of CPU, on every quota check).
        PostgreSQL: a connection from the pool for the block (a pool hands one out in
        microseconds, and a connection held per thread would exhaust it); while this thread
        holds the log's advisory locks (the quota buckets), their session's connection
        (charter.audit._pg_locks.lock_session): a lock holder never waits on the pool."""
        if self.database.is_postgres:
            with lock_session(self.database.url) as held:
                if held is not None:
                    with _unavailable(self.database):
                        yield PgConnection(held)
                    return
            with self.connect() as connection:
                yield connection
            return
        yield self._reader()


@dataclass(frozen=True, slots=True)
class LogSnapshot:
    """The whole log as `AuditLog.snapshot` read it: receipts (log order), the stream "" head,
    and each writer stream's head row (None on SQLite, which has no streams)."""

    rows: Iterator[StoredReceipt]
    head: tuple[int, str] | None
    stream_heads: dict[str, Head] | None


def record_of(receipts: Sequence[Receipt]) -> RunRecord:
    """The run the receipts (one run's, in order) make up. AuditError if the first is no opening."""
    opened = receipts[0]
    if not isinstance(opened, Opened | Asked):
        raise AuditError(f"run {opened.run_id} does not start with its opening receipt; run `charter audit verify`")
    last = receipts[-1]
    sealed = last if isinstance(last, Sealed | Concluded) else None
    return RunRecord(opened=opened, receipts=tuple(receipts), sealed=sealed)


@contextmanager
def _unavailable(database: Database) -> Iterator[None]:
    """PostgreSQL unreachable (down, restarting, the pool exhausted) -> StoreUnavailable."""
    import psycopg
    import psycopg_pool

    try:
        yield
    except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as error:
        raise StoreUnavailable(f"the audit log in {database.shown} cannot be reached now: {error}") from error


def host_identity() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()
