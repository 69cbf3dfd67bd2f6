"""The quota index: what each allowed call added to a quota, so a total is an index range scan.

    contract, quota, key, at, amount, run_id, call, counted

One row per (allowed Decision, quota it recorded): `key` is the canonical JSON of the quota's
`per` values, `at` the decision's time (ISO-8601 UTC, compared as text: every receipt writes
it the same way), `amount` what the call added. The rows are keyed by the contract's *name*,
not its version, so publishing a new version does not reset a day's total.

Like the runs index (charter.audit.index), it is not signed: it is derived from the receipts,
written in the same transaction as the receipt it follows, and rebuilt from them by the
migration that adds it (`fill_quota_index`, which may be run again at any time: it deletes
and re-derives every row). `charter audit verify` checks the receipts, never the index.

Counting rule: every ALLOW counts from the moment its Decision is durable, unless its Outcome
is `failed` and the backend did not act (the row is then marked `counted = 0` in the Outcome's
transaction). An Outcome `failed` with RESULT_INVALID or RESULT_TOO_LARGE is a call whose
backend acted but whose result was withheld, and an `unknown` Outcome is a call in doubt: both
keep counting (fail closed).

A total costs one range scan of the covering index (contract, quota, key, at): O(log n + k)
for the k rows of that key in the window, whatever the size of the log.

Both engines run the same statements (SQL written once, sqlite3 style: see charter.db); the
readers take their connections and locks from the AuditLog (`log.reader()`, `log.lock()`),
so a log in PostgreSQL serves them unchanged. `counted` is an INTEGER 0/1 in both.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from charter.audit.receipts import Decision, Outcome, Receipt, decode_body
from charter.db import Connection

if TYPE_CHECKING:  # the store imports this module
    from charter.audit._pg_locks import LogLock
    from charter.audit.store import AuditLog

__all__ = [
    "QUOTA_INDEX_SQL",
    "QuotaReader",
    "fill_quota_index",
    "index_quota_receipt",
    "quota_total",
    "recount",
]

QUOTA_INDEX_SQL = (
    """CREATE TABLE quota_counts (
        contract TEXT NOT NULL,
        quota    TEXT NOT NULL,
        key      TEXT NOT NULL,
        at       TEXT NOT NULL,
        amount   INTEGER NOT NULL,
        run_id   TEXT NOT NULL,
        call     INTEGER NOT NULL,
        counted  INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (run_id, call, quota)
    )""",
    # Covering: a total reads only this index, never the table.
    "CREATE INDEX quota_counts_by_key ON quota_counts (contract, quota, key, at, counted, amount)",
)

# Failed outcomes whose backend acted (the result was withheld): still counted.
_ACTED = frozenset({"RESULT_INVALID", "RESULT_TOO_LARGE"})

# A decision's row, again (a rebuild): the same values, kept as they are.
_INSERT = (
    "INSERT INTO quota_counts (contract, quota, key, at, amount, run_id, call, counted) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT (run_id, call, quota) DO UPDATE SET contract = excluded.contract, "
    "key = excluded.key, at = excluded.at, amount = excluded.amount, counted = 1"
)
_LOCKS = ".quota-locks"
_BUCKETS = 1 << 20  # lock slots: two keys sharing one only wait on each other


def index_quota_receipt(connection: Connection, receipt: Receipt) -> None:
    """Keep the index up to date with one receipt just inserted (same transaction)."""
    if isinstance(receipt, Decision):
        if receipt.decision != "ALLOW" or not receipt.quotas:
            return
        for q in receipt.quotas:  # a call has a quota or two: one statement each
            connection.execute(
                _INSERT, (receipt.contract, q.id, q.key, receipt.at, q.amount, receipt.run_id, receipt.call)
            )
    elif isinstance(receipt, Outcome) and receipt.status == "failed" and receipt.code not in _ACTED:
        connection.execute(
            "UPDATE quota_counts SET counted = 0 WHERE run_id = ? AND call = ?", (receipt.run_id, receipt.call)
        )


def fill_quota_index(connection: Connection) -> None:
    """(Re)build the index from the receipts in the log: the migration's backfill, and a rebuild."""
    connection.execute("DELETE FROM quota_counts")
    rows = connection.execute("SELECT body FROM receipts WHERE kind IN ('decision', 'outcome') ORDER BY log_seq")
    for (body,) in rows.fetchall():
        try:
            receipt = decode_body(body)
        except ValueError:  # an altered receipt: `audit verify` reports it; the index skips it
            continue
        index_quota_receipt(connection, receipt)


def quota_total(connection: Connection, contract: str, quota: str, key: str, since: str) -> int:
    """The counted amounts of (contract, quota, key) decided strictly after `since` (ISO-8601 UTC)."""
    row = connection.execute(
        "SELECT COALESCE(SUM(amount), 0) FROM quota_counts "
        "WHERE contract = ? AND quota = ? AND key = ? AND at > ? AND counted = 1",
        (contract, quota, key, since),
    ).fetchone()
    return int(row[0])


class QuotaReader:
    """Reads totals from one audit log, and takes its quota locks (charter.gate._quotas)."""

    def __init__(self, log: AuditLog) -> None:
        self.log = log

    def total(self, contract: str, quota: str, key: str, since: str) -> int:
        """The counted amounts of (contract, quota, key) decided strictly after `since` (ISO-8601 UTC)."""
        with self.log.reader() as connection:
            return quota_total(connection, contract, quota, key, since)

    def lock(self, contract: str, quota: str, key: str) -> LogLock:
        """The lock of (contract, quota, key) among the log's users (not taken): best effort, one
        of 2**20 slots (see charter.gate._quotas on what it guarantees)."""
        return self.log.lock(_LOCKS, f"{contract}\0{quota}\0{key}", slots=_BUCKETS, best_effort=True)


def recount(log: AuditLog, decision: Decision, window_seconds: dict[str, int | None]) -> dict[str, int]:
    """Each of `decision`'s quota totals as the receipts written before it give it (replay's check).

    A total is what the gate counted when it decided: the allowed Decisions of the same contract
    name, quota id and key in the window (`window: run`: of the same run) written before this
    one, less those whose failed Outcome (backend did not act) was written before it too. A
    scan of the log, for an offline check; the gate itself reads the index. `window_seconds`:
    quota id -> seconds (None: run), from the pinned contract; a quota missing there is skipped."""
    wanted = {q.id: q for q in decision.quotas if q.id in window_seconds}
    totals = dict.fromkeys(wanted, 0)
    if not wanted:
        return totals
    at = datetime.fromisoformat(decision.at)
    since = {
        quota: None if seconds is None else (at - timedelta(seconds=seconds)).isoformat(timespec="microseconds")
        for quota, seconds in window_seconds.items()
    }
    counted: dict[tuple[str, int], list[tuple[str, int]]] = {}
    with log.connect() as connection:
        rows = connection.execute(
            "SELECT body FROM receipts WHERE kind IN ('decision', 'outcome') AND log_seq < ? ORDER BY log_seq",
            (decision.log_seq,),
        )
        for (body,) in rows:
            try:
                receipt = decode_body(body)
            except ValueError:
                continue
            if isinstance(receipt, Decision):
                if receipt.decision != "ALLOW" or receipt.contract != decision.contract:
                    continue
                for seen in receipt.quotas:
                    mine = wanted.get(seen.id)
                    if mine is None or seen.key != mine.key:
                        continue
                    start = since[seen.id]
                    if start is None and receipt.run_id != decision.run_id:
                        continue
                    if start is not None and receipt.at <= start:
                        continue
                    totals[seen.id] += seen.amount
                    counted.setdefault((receipt.run_id, receipt.call), []).append((seen.id, seen.amount))
            elif isinstance(receipt, Outcome) and receipt.status == "failed" and receipt.code not in _ACTED:
                for quota, amount in counted.pop((receipt.run_id, receipt.call), []):
                    totals[quota] -= amount
    return totals
