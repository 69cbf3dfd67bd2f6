"""The runs index: one row per run, so listing runs reads no receipt bodies.

    run_id, kind (program | intent), contract, version, contract_sha256, principal, intent,
    status, cause (charter.status), denial_code, denial_operation (the run's first DENY;
    an intent run's is its program runs' first), opened_at, sealed_at, parent, opened_seq

The index is not a receipt and is not signed: it is derived from the receipts, written in
the same transaction as the receipt it follows (a row at the opening, updated by the
run's first DENY and by its seal or conclusion), and rebuilt from them by the migration
that adds it. `charter audit verify` checks the receipts, never the index.

A run that is never sealed keeps the row its opening wrote: status `interrupted` with cause
`never_sealed` (`never_concluded` for an intent run) and no `sealed_at`, exactly what
`RunRecord.status` says of it; a run still going reads the same until it is sealed.

Rows are listed newest first by `opened_seq` (the log_seq of the opening receipt), which is
also the paging cursor: pass the last row's `cursor` as `before` to get the next page.

The denials index (`denials`, schema step 6) has one row per DENY decision:

    log_seq, run_id, principal, contract, version, operation, code, boundary, clause, at

kept in the same transaction as the decision's receipt and rebuilt from the receipts on
upgrade (`fill_denials_index`), so "which rules fire most" is a GROUP BY, not a log scan.

The statements here (index maintenance, `list_runs`, `attempts_of`) run unchanged on SQLite
and PostgreSQL (SQL written once, sqlite3 style: see charter.db): upserts are
`ON CONFLICT ... DO`, never `INSERT OR REPLACE`; a run-id prefix is matched with LIKE on
lowercase hex digits only, where SQLite's case-insensitive LIKE and PostgreSQL's agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec

from charter.audit.receipts import Asked, Concluded, Decision, Opened, Receipt, Sealed, decode_body
from charter.db import Connection
from charter.status import status_of, status_of_closing

__all__ = [
    "DENIALS_INDEX_SQL",
    "IN_DOUBT_INDEX_SQL",
    "RUNS_INDEX_SQL",
    "RunFilter",
    "RunSummary",
    "attempts_of",
    "fill_denials_index",
    "fill_in_doubt_index",
    "fill_runs_index",
    "index_receipt",
    "list_runs",
]

RUNS_INDEX_SQL = (
    """CREATE TABLE runs (
        run_id           TEXT PRIMARY KEY,
        kind             TEXT NOT NULL,
        contract         TEXT NOT NULL,
        version          TEXT NOT NULL,
        contract_sha256  TEXT NOT NULL,
        principal        TEXT NOT NULL,
        intent           TEXT,
        status           TEXT NOT NULL,
        cause            TEXT,
        denial_code      TEXT,
        denial_operation TEXT,
        opened_at        TEXT NOT NULL,
        sealed_at        TEXT,
        parent           TEXT,
        opened_seq       INTEGER NOT NULL UNIQUE
    )""",
    "CREATE INDEX runs_by_status ON runs (status, opened_seq)",
    "CREATE INDEX runs_by_parent ON runs (parent)",
)

# Schema step 6: the denials index, and indexes for the runs filters people use most.
DENIALS_INDEX_SQL = (
    """CREATE TABLE denials (
        log_seq    INTEGER PRIMARY KEY,
        run_id     TEXT NOT NULL,
        principal  TEXT NOT NULL,
        contract   TEXT NOT NULL,
        version    TEXT NOT NULL,
        operation  TEXT NOT NULL,
        code       TEXT NOT NULL,
        boundary   TEXT,
        clause     TEXT,
        at         TEXT NOT NULL
    )""",
    "CREATE INDEX denials_by_time ON denials (at)",
    "CREATE INDEX denials_by_principal ON denials (principal, at)",
    "CREATE INDEX runs_by_contract ON runs (contract, opened_seq)",
    "CREATE INDEX runs_by_principal ON runs (principal, opened_seq)",
    "CREATE INDEX runs_by_denial_code ON runs (denial_code, opened_seq)",
)

IN_DOUBT_INDEX_SQL = (
    # How many of a sealed program run's allowed calls were left in doubt (their outcome never
    # learned: a write whose effect is not known); NULL until it is sealed.
    "ALTER TABLE runs ADD COLUMN in_doubt INTEGER",
    "CREATE INDEX runs_in_doubt ON runs (in_doubt) WHERE in_doubt > 0",
)

_COLUMNS = (
    "run_id, kind, contract, version, contract_sha256, principal, intent, status, cause, denial_code, "
    "denial_operation, opened_at, sealed_at, parent, opened_seq"
)


_NAMES = [c.strip() for c in _COLUMNS.split(",")]
# An opening indexed again (a rebuild) writes the row afresh, as its first indexing did: what
# INSERT OR REPLACE did, spelt so both engines take it.
_REOPENED = ", ".join(f"{n} = excluded.{n}" for n in _NAMES if n != "run_id")
_HEX = re.compile(r"[0-9a-f]{1,32}")


class RunSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the runs index. `cursor` pages: `list_runs(before=row.cursor)` continues after it."""

    run_id: str
    kind: str  # program | intent
    contract: str
    version: str
    contract_sha256: str
    principal: str
    intent: str | None
    status: str  # charter.status.Status
    cause: str | None
    denial_code: str | None  # the run's first DENY (an intent run: its program runs' first)
    denial_operation: str | None
    opened_at: str  # ISO-8601 UTC
    sealed_at: str | None  # None: never sealed (interrupted, or still running)
    parent: str | None  # the intent run a program run is an attempt of
    cursor: int


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Which runs to list; None matches any. `since` (opened_at >= since) and `until`
    (opened_at < until): ISO-8601 UTC times, compared as text with the opening's time (both
    are written the same way). `code`: the run's first denial's reason code. `run_prefix`:
    lowercase hex digits the run id starts with (ValueError otherwise). `top_level`: only
    runs no intent started (intent runs, and program runs of their own). `in_doubt`: only
    sealed runs that left an allowed call in doubt (its outcome never learned)."""

    contract: str | None = None
    status: str | None = None
    cause: str | None = None
    principal: str | None = None
    since: str | None = None
    version: str | None = None
    code: str | None = None
    until: str | None = None
    run_prefix: str | None = None
    top_level: bool = False
    in_doubt: bool = False


def index_receipt(connection: Connection, receipt: Receipt, log_seq: int) -> None:
    """Keep the runs and denials indexes up to date with one receipt just inserted (same transaction)."""
    _index_run(connection, receipt, log_seq)
    _index_denial(connection, receipt, log_seq)
    _index_in_doubt(connection, receipt)


def _index_in_doubt(connection: Connection, receipt: Receipt) -> None:
    # Apart from _index_run: step 3's backfill runs before step 7 adds the column.
    if isinstance(receipt, Sealed):
        connection.execute("UPDATE runs SET in_doubt = ? WHERE run_id = ?", (len(receipt.in_doubt), receipt.run_id))


def _index_denial(connection: Connection, receipt: Receipt, log_seq: int) -> None:
    if isinstance(receipt, Decision) and receipt.decision == "DENY":
        connection.execute(
            # A rebuild meets the row again: the same receipt, the same values.
            "INSERT INTO denials (log_seq, run_id, principal, contract, version, operation, code, boundary, clause, "
            "at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (log_seq) DO NOTHING",
            (
                log_seq,
                receipt.run_id,
                receipt.principal,
                receipt.contract,
                receipt.version,
                receipt.operation,
                receipt.code,
                receipt.boundary,
                receipt.clause,
                receipt.at,
            ),
        )


def _index_run(connection: Connection, receipt: Receipt, log_seq: int) -> None:
    if isinstance(receipt, Opened | Asked):
        ended = status_of(receipt, None)
        connection.execute(
            f"INSERT INTO runs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, NULL, ?, ?) "
            f"ON CONFLICT (run_id) DO UPDATE SET {_REOPENED}",
            (
                receipt.run_id,
                "intent" if isinstance(receipt, Asked) else "program",
                receipt.contract,
                receipt.version,
                receipt.contract_sha256,
                receipt.principal,
                receipt.intent,
                ended.status,
                ended.cause,
                receipt.at,
                receipt.parent if isinstance(receipt, Opened) else None,
                log_seq,
            ),
        )
    elif isinstance(receipt, Decision):
        if receipt.decision == "DENY":
            connection.execute(
                "UPDATE runs SET denial_code = ?, denial_operation = ? WHERE run_id = ? AND denial_code IS NULL",
                (receipt.code, receipt.operation, receipt.run_id),
            )
    elif isinstance(receipt, Sealed | Concluded):
        ended = status_of_closing(receipt)
        connection.execute(
            "UPDATE runs SET status = ?, cause = ?, sealed_at = ? WHERE run_id = ?",
            (ended.status, ended.cause, receipt.at, receipt.run_id),
        )
        if isinstance(receipt, Concluded):  # the request's first denial is its program runs' first
            connection.execute(
                "UPDATE runs SET (denial_code, denial_operation) = (SELECT c.denial_code, c.denial_operation "
                "FROM runs c WHERE c.parent = ? AND c.denial_code IS NOT NULL ORDER BY c.opened_seq LIMIT 1) "
                "WHERE run_id = ? AND denial_code IS NULL",
                (receipt.run_id, receipt.run_id),
            )


def fill_runs_index(connection: Connection) -> None:
    """Build the runs index from the receipts already in the log (step 3's backfill; the
    denials table does not exist yet at that step)."""
    for log_seq, receipt in _receipts(connection, "'open', 'ask', 'decision', 'seal', 'conclude'"):
        _index_run(connection, receipt, log_seq)


def fill_denials_index(connection: Connection) -> None:
    """Build the denials index from the decisions already in the log (step 6's backfill)."""
    for log_seq, receipt in _receipts(connection, "'decision'"):
        _index_denial(connection, receipt, log_seq)


def fill_in_doubt_index(connection: Connection) -> None:
    """Count each sealed run's calls in doubt from the seals already in the log (step 7's backfill)."""
    for _, receipt in _receipts(connection, "'seal'"):
        _index_in_doubt(connection, receipt)


def _receipts(connection: Connection, kinds: str) -> list[tuple[int, Receipt]]:
    rows = connection.execute(f"SELECT log_seq, body FROM receipts WHERE kind IN ({kinds}) ORDER BY log_seq")
    found = []
    for log_seq, body in rows.fetchall():
        try:
            found.append((log_seq, decode_body(body)))
        except ValueError:  # an altered receipt: `audit verify` reports it; the index skips it
            continue
    return found


def list_runs(connection: Connection, filters: RunFilter, limit: int, before: int | None = None) -> list[RunSummary]:
    """Up to `limit` runs matching `filters`, newest first, opened before cursor `before`.
    ValueError for a `run_prefix` that is not lowercase hex digits."""
    clauses, params = ["1 = 1"], []
    for column in ("contract", "version", "status", "cause", "principal"):
        value = getattr(filters, column)
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if filters.code is not None:
        clauses.append("denial_code = ?")
        params.append(filters.code)
    if filters.since is not None:
        clauses.append("opened_at >= ?")
        params.append(filters.since)
    if filters.until is not None:
        clauses.append("opened_at < ?")
        params.append(filters.until)
    if filters.run_prefix is not None:
        if not _HEX.fullmatch(filters.run_prefix):  # no LIKE wildcards: hex digits only
            raise ValueError(f"run id prefix {filters.run_prefix[:40]!r}: give lowercase hex digits (0-9, a-f)")
        clauses.append("run_id LIKE ?")
        params.append(filters.run_prefix + "%")
    if filters.top_level:
        clauses.append("parent IS NULL")
    if filters.in_doubt:
        clauses.append("in_doubt > 0")
    if before is not None:
        clauses.append("opened_seq < ?")
        params.append(before)
    query = f"SELECT {_COLUMNS} FROM runs WHERE {' AND '.join(clauses)} ORDER BY opened_seq DESC LIMIT ?"
    return _summaries(connection.execute(query, (*params, limit)).fetchall())


def attempts_of(connection: Connection, run_id: str) -> list[RunSummary]:
    """The program runs an intent run started (its attempts' runs), in the order opened."""
    found = connection.execute(f"SELECT {_COLUMNS} FROM runs WHERE parent = ? ORDER BY opened_seq", (run_id,))
    return _summaries(found.fetchall())


def _summaries(rows: list[tuple[Any, ...]]) -> list[RunSummary]:
    return [
        RunSummary(**{("cursor" if n == "opened_seq" else n): v for n, v in zip(_NAMES, row, strict=True)})
        for row in rows
    ]
