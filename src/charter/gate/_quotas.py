"""Quotas over time: check 14 of the gate (after guards, before approval).

For each quota of the operation: key = canonical JSON of its `per` values, amount = its `sum`
(or 1 for `count: true`); if the total counted in the window plus the amount exceeds `max`,
the call is denied QUOTA_EXCEEDED. Totals come from the audit store's quota index
(charter.audit.quotas), which the Decision receipts feed: the receipt is what counts a call.

Atomicity. The total is read under a lock of (contract name, quota id, key), and the lock is
held until the call's Decision receipt is durable (or the call is denied, or the gate fails):
`QuotaHold` carries the locks from the check to `DecisionRecorder.decision` (`_decisions`), which releases
them once the receipt is written. So two runs racing for the same key cannot both read the
total before either is counted. The lock has two layers:

- in the process, the bucket (a hash of contract, quota and key, one of 2**20) is held by one thread;
- across processes sharing one audit log, the log's lock of that bucket (`AuditLog.lock`), held
  by the same thread for the same span: on SQLite (two `charter exec`) a POSIX record lock
  (`fcntl.lockf`) on that bucket's byte of `<audit.db>.quota-locks` (charter.audit._locks, best
  effort: not on Windows (no fcntl), nor when the lock file cannot be opened: there the
  guarantee is within one process); on PostgreSQL (several workers and hosts) an advisory lock
  of the database, which every worker's reader of that log shares.

Locks are taken in bucket order, all before any total is read, so two calls never wait on each
other in a cycle. A `window: run` quota counts this run's calls only (kept in the session).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import cel
import msgspec

from charter.audit._pg_locks import LogLock
from charter.audit.quotas import QuotaReader
from charter.audit.receipts import QuotaSeen
from charter.compiler.artifact import GateTable, OperationRule, QuotaRule
from charter.contract._quotas import amount_text
from charter.contract.cel_guards import activation
from charter.gate._receipts import Verdict

__all__ = ["QuotaChecks", "QuotaHold", "QuotaSession", "utc_now"]


def utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    # The same text as charter.audit.now_iso, so the index compares times as text.
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(slots=True)
class QuotaHold:
    """One call's quota reservations: the locks held from the totals' read until its Decision is
    durable, what the receipt records, and the decision's time. `release` is idempotent."""

    seen: tuple[QuotaSeen, ...] = ()
    at: str | None = None  # the decision's time, when quotas were checked
    windows: dict[str, int | None] = field(default_factory=dict)  # quota id -> window seconds (None: run)
    _locks: list[LogLock] = field(default_factory=list)  # each: acquire(), release(), ordered

    @property
    def holds(self) -> bool:
        """Whether the call has a quota: checked totals to record, or locks held until its receipt."""
        return bool(self.seen or self._locks or self.windows)

    def release(self) -> None:
        locks, self._locks = self._locks, []
        for lock in reversed(locks):
            lock.release()


@dataclass(frozen=True, slots=True)
class _Compiled:
    rule: QuotaRule
    sum: Any  # cel.Program | None
    per: tuple[Any, ...]


class QuotaChecks:
    """The quotas of one contract version, compiled once (part of ContractGate)."""

    def __init__(self, table: GateTable) -> None:
        self.contract = table.contract
        self._by_operation: dict[str, tuple[_Compiled, ...]] = {
            name: tuple(
                _Compiled(q, cel.compile(q.sum) if q.sum else None, tuple(cel.compile(k) for k in q.per))
                for q in rule.quotas
            )
            for name, rule in table.operations.items()
            if rule.quotas
        }

    def of(self, operation: str) -> tuple[_Compiled, ...]:
        return self._by_operation.get(operation, ())


class QuotaSession:
    """Quota checks for one run (part of GateSession)."""

    def __init__(
        self,
        checks: QuotaChecks,
        reader: QuotaReader | None,
        clock: Callable[[], datetime],
        boundary_note: Callable[[tuple[str, ...]], tuple[str, str | None]],
    ) -> None:
        self._checks = checks
        self._reader = reader
        self._clock = clock
        self._note = boundary_note
        self._lock = threading.Lock()
        self._run_totals: dict[tuple[str, str], int] = {}  # (quota, key) -> counted in this run
        self._run_calls: dict[int, tuple[tuple[str, str, int], ...]] = {}  # call -> its run-window amounts

    def check(self, rule: OperationRule, variables: Mapping[str, Any], hold: QuotaHold) -> Verdict | None:
        """None if every quota of `rule` has room for this call, else the denial. The locks stay
        in `hold` (the caller releases them once the decision is recorded). Raises on a broken
        rule or an unreadable index: the gate turns that into GATE_ERROR (fail closed)."""
        quotas = self._checks.of(rule.name)
        if not quotas:
            return None
        if self._reader is None:
            raise RuntimeError("quotas are counted from the audit log, and this run writes to no log file")
        context = activation(variables)
        planned: list[tuple[QuotaRule, str, int]] = []
        for compiled in quotas:
            values = [program.execute(context) for program in compiled.per]
            key = msgspec.json.encode(values, order="sorted").decode("utf-8")
            amount = 1
            if compiled.sum is not None:
                value = compiled.sum.execute(context)
                if isinstance(value, bool) or not isinstance(value, int):
                    raise TypeError(f"quota {compiled.rule.id}: sum gave {type(value).__name__}, not an int")
                amount = max(value, 0)  # a negative amount adds nothing: it never makes room
            planned.append((compiled.rule, key, amount))
        reader = self._reader
        buckets = sorted(
            {reader.lock(self._checks.contract, q.id, key) for q, key, _ in planned if q.window_seconds is not None},
        )
        for lock in buckets:
            lock.acquire()
            hold._locks.append(lock)
        now = self._clock()
        hold.at = _iso(now)
        seen: list[QuotaSeen] = []
        denial: Verdict | None = None
        for quota, key, amount in planned:
            if quota.window_seconds is None:
                with self._lock:
                    total = self._run_totals.get((quota.id, key), 0)
            else:
                since = _iso(now - timedelta(seconds=quota.window_seconds))
                total = self._reader.total(self._checks.contract, quota.id, key, since)
            hold.windows[quota.id] = quota.window_seconds
            seen.append(
                QuotaSeen(
                    id=quota.id,
                    key=key,
                    amount=amount,
                    total=total,
                    max=quota.max,
                    window=quota.window,
                    money=quota.money,
                )
            )
            if denial is None and total + amount > quota.max:
                denial = self._exceeded(rule, quota, total, amount)
        hold.seen = tuple(seen)
        return denial

    def _exceeded(self, rule: OperationRule, quota: QuotaRule, total: int, amount: int) -> Verdict:
        note, boundary = self._note(quota.boundaries)
        span = "in this run" if quota.window_seconds is None else f"in the last {quota.window}"
        shown = {n: amount_text(v, quota.money) for n, v in (("total", total), ("max", quota.max), ("add", amount))}
        return Verdict(
            "QUOTA_EXCEEDED",
            f"{rule.name} refused: {quota.message} (quota {quota.id}: {shown['total']} counted {span} for this key, "
            f"max {shown['max']}; this call would add {shown['add']}){note}",
            clause=f"quota:{quota.id}",
            boundary=boundary,
        )

    def counted(self, call: int, hold: QuotaHold) -> None:
        """An ALLOW's Decision is durable: its `window: run` amounts count in this run."""
        amounts = tuple((q.id, q.key, q.amount) for q in hold.seen if hold.windows.get(q.id, 0) is None)
        if not amounts:
            return
        with self._lock:
            self._run_calls[call] = amounts
            for quota, key, amount in amounts:
                self._run_totals[(quota, key)] = self._run_totals.get((quota, key), 0) + amount

    def outcome(self, call: int, status: str, code: str | None) -> None:
        """An allowed call's outcome: a `failed` one whose backend did not act stops counting
        (the same rule as the audit store's index, for `window: run` quotas)."""
        if status != "failed" or code in ("RESULT_INVALID", "RESULT_TOO_LARGE"):
            return
        with self._lock:
            for quota, key, amount in self._run_calls.pop(call, ()):
                self._run_totals[(quota, key)] -= amount
