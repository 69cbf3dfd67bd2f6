"""The approvals index: one row per approval request, so listing and deciding read no receipt bodies.

    approval_id, run_id (the paused run), logical_run_id, contract, version, contract_sha256,
    operation, call, principal (the requester), reason, approver_scope, requested_at, expires,
    status (pending | approved | denied), decided_by, decided_at, decision_reason, expired (0/1),
    decision_log_seq, resume_run, resume_sealed (0/1), resume_runs (JSON list), request_log_seq

Like the runs index (charter.audit.index) it is not signed and `charter audit verify` never
consults it: it is derived from the receipts, written by the audit writer in the same
transaction as the receipt it follows, and rebuilt from them by the migration that adds it
(`fill_approvals_index`, which may be run again at any time). The rules:

- an ApprovalRequested receipt inserts the request, `pending`;
- an ApprovalDecided record sets the decision (the first one: a second decision of the same
  approval is a finding of `audit verify`, never a change of the index);
- an Opened receipt naming an approval (a resumed run) appends its run to `resume_runs` and
  makes it `resume_run`, not yet sealed;
- that run's Sealed receipt sets `resume_sealed`.

Times are kept as ISO-8601 UTC with microseconds (`2026-11-29T18:48:48.123456+00:00`), the
form every receipt writes, so `expires` compares as text with `now_iso()`.

This module imports only the receipts (and charter.db's types): the audit writer calls it,
and `charter.approvals` itself builds on the audit log. Its statements run unchanged on SQLite
and PostgreSQL (`expired` and `resume_sealed` are INTEGER 0/1 in both).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from charter.audit.receipts import ApprovalDecided, ApprovalRequested, Opened, Receipt, Sealed, decode_body
from charter.db import Connection

__all__ = ["APPROVALS_INDEX_SQL", "fill_approvals_index", "index_approval_receipt", "receipt_time", "utc_text"]

APPROVALS_INDEX_SQL = (
    """CREATE TABLE approvals (
        approval_id      TEXT PRIMARY KEY,
        run_id           TEXT NOT NULL,
        logical_run_id   TEXT NOT NULL,
        contract         TEXT NOT NULL,
        version          TEXT NOT NULL,
        contract_sha256  TEXT NOT NULL,
        operation        TEXT NOT NULL,
        call             INTEGER NOT NULL,
        principal        TEXT NOT NULL,
        reason           TEXT NOT NULL,
        approver_scope   TEXT NOT NULL,
        requested_at     TEXT NOT NULL,
        expires          TEXT NOT NULL,
        status           TEXT NOT NULL,
        decided_by       TEXT,
        decided_at       TEXT,
        decision_reason  TEXT,
        expired          INTEGER NOT NULL DEFAULT 0,
        decision_log_seq INTEGER,
        resume_run       TEXT,
        resume_sealed    INTEGER NOT NULL DEFAULT 0,
        resume_runs      TEXT NOT NULL DEFAULT '[]',
        request_log_seq  INTEGER NOT NULL UNIQUE
    )""",
    "CREATE INDEX approvals_by_status ON approvals (status, expires)",
    "CREATE INDEX approvals_by_contract ON approvals (contract, request_log_seq)",
    "CREATE INDEX approvals_by_resume ON approvals (resume_run)",
)

_KINDS = ("approval_request", "approval_decision", "open", "seal")


def utc_text(moment: str | datetime) -> str:
    """`moment` as the index keeps times: ISO-8601 UTC with microseconds (naive means UTC).
    ValueError for a text that is no ISO-8601 time."""
    parsed = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).isoformat(timespec="microseconds")


def receipt_time(text: str) -> str:
    """A receipt's time as the index keeps it (`utc_text`), or as written if it does not parse."""
    # A receipt's time that does not parse is kept as written: the index must never refuse a
    # receipt the log took (the writer's transaction would fail every run's receipts with it).
    try:
        return utc_text(text)
    except ValueError:
        return text


def index_approval_receipt(connection: Connection, receipt: Receipt, log_seq: int) -> None:
    """Keep the index up to date with one receipt just inserted (same transaction)."""
    if isinstance(receipt, ApprovalRequested):
        connection.execute(
            # The first request of an id stays (a rebuild meets it again): no conflict target, so a
            # clash on either unique key (approval_id, request_log_seq) is skipped, as OR IGNORE did.
            "INSERT INTO approvals (approval_id, run_id, logical_run_id, contract, version, "
            "contract_sha256, operation, call, principal, reason, approver_scope, requested_at, expires, status, "
            "request_log_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?) ON CONFLICT DO NOTHING",
            (
                receipt.approval_id,
                receipt.run_id,
                receipt.logical_run_id,
                receipt.contract,
                receipt.version,
                receipt.contract_sha256,
                receipt.operation,
                receipt.call,
                receipt.principal,
                receipt.reason,
                receipt.approver_scope,
                receipt_time(receipt.at),
                receipt_time(receipt.expires),
                log_seq,
            ),
        )
    elif isinstance(receipt, ApprovalDecided):
        connection.execute(
            "UPDATE approvals SET status = ?, decided_by = ?, decided_at = ?, decision_reason = ?, expired = ?, "
            "decision_log_seq = ? WHERE approval_id = ? AND decision_log_seq IS NULL",
            (
                receipt.decision,
                receipt.approver,
                receipt_time(receipt.at),
                receipt.reason,
                int(receipt.expired),
                log_seq,
                receipt.approval_id,
            ),
        )
    elif isinstance(receipt, Opened) and receipt.approval_id is not None:
        row = connection.execute(
            "SELECT resume_runs FROM approvals WHERE approval_id = ?", (receipt.approval_id,)
        ).fetchone()
        if row is None:  # names no request this log holds: `audit verify` reports the link
            return
        runs = [*json.loads(row[0]), receipt.run_id]
        connection.execute(
            "UPDATE approvals SET resume_runs = ?, resume_run = ?, resume_sealed = 0 WHERE approval_id = ?",
            (json.dumps(runs), receipt.run_id, receipt.approval_id),
        )
    elif isinstance(receipt, Sealed):
        connection.execute("UPDATE approvals SET resume_sealed = 1 WHERE resume_run = ?", (receipt.run_id,))


def fill_approvals_index(connection: Connection) -> None:
    """(Re)build the index from the receipts in the log: the migration's backfill, and a rebuild."""
    connection.execute("DELETE FROM approvals")
    rows = connection.execute(
        f"SELECT log_seq, body FROM receipts WHERE kind IN ({', '.join('?' * len(_KINDS))}) ORDER BY log_seq", _KINDS
    )
    for log_seq, body in rows.fetchall():
        try:
            receipt = decode_body(body)
        except ValueError:  # an altered receipt: `audit verify` reports it; the index skips it
            continue
        index_approval_receipt(connection, receipt, log_seq)
