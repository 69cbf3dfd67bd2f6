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
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import msgspec

from charter.audit.receipts import Asked, Concluded, Decision, Opened, Receipt, Sealed, decode_body
from charter.status import status_of, status_of_closing

__all__ = ["RUNS_INDEX_SQL", "RunFilter", "RunSummary", "fill_runs_index", "index_receipt", "list_runs"]

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

_COLUMNS = (
    "run_id, kind, contract, version, contract_sha256, principal, intent, status, cause, denial_code, "
    "denial_operation, opened_at, sealed_at, parent, opened_seq"
)


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
    """Which runs to list; None matches any. `since`: an ISO-8601 UTC time, compared as text
    with the opening's time (both are written the same way)."""

    contract: str | None = None
    status: str | None = None
    cause: str | None = None
    principal: str | None = None
    since: str | None = None


def index_receipt(connection: sqlite3.Connection, receipt: Receipt, log_seq: int) -> None:
    """Keep the index up to date with one receipt just inserted (same transaction)."""
    if isinstance(receipt, Opened | Asked):
        ended = status_of(receipt, None)
        connection.execute(
            f"INSERT OR REPLACE INTO runs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, NULL, ?, ?)",
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
                "UPDATE runs SET (denial_code, denial_operation) = (SELECT denial_code, denial_operation FROM runs "
                "WHERE parent = ?1 AND denial_code IS NOT NULL ORDER BY opened_seq LIMIT 1) "
                "WHERE run_id = ?1 AND denial_code IS NULL",
                (receipt.run_id,),
            )


def fill_runs_index(connection: sqlite3.Connection) -> None:
    """Build the index from the receipts already in the log (the migration's backfill)."""
    rows = connection.execute(
        "SELECT log_seq, body FROM receipts WHERE kind IN ('open', 'ask', 'decision', 'seal', 'conclude') "
        "ORDER BY log_seq"
    )
    for log_seq, body in rows.fetchall():
        try:
            receipt = decode_body(body)
        except ValueError:  # an altered receipt: `audit verify` reports it; the index skips it
            continue
        index_receipt(connection, receipt, log_seq)


def list_runs(
    connection: sqlite3.Connection, filters: RunFilter, limit: int, before: int | None = None
) -> list[RunSummary]:
    """Up to `limit` runs matching `filters`, newest first, opened before cursor `before`."""
    clauses, params = ["1 = 1"], []
    for column in ("contract", "status", "cause", "principal"):
        value = getattr(filters, column)
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if filters.since is not None:
        clauses.append("opened_at >= ?")
        params.append(filters.since)
    if before is not None:
        clauses.append("opened_seq < ?")
        params.append(before)
    query = f"SELECT {_COLUMNS} FROM runs WHERE {' AND '.join(clauses)} ORDER BY opened_seq DESC LIMIT ?"
    found = connection.execute(query, (*params, limit)).fetchall()
    names = [c.strip() for c in _COLUMNS.split(",")]
    return [
        RunSummary(**{("cursor" if n == "opened_seq" else n): v for n, v in zip(names, row, strict=True)})
        for row in found
    ]
