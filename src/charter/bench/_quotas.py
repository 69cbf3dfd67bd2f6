"""`charter bench gate`, quota part: the cost of one quota check next to one plain guard, same run.

The quota check is the gate's own (`QuotaSession.check`: evaluate the key and the sum, take
the key's lock, read the total from the audit store's quota index, release) on an index
holding k = 1,000 counted calls of the checked key inside the window and 50,000 rows of
other keys. The guard is the gate's own guard check (`params.amount <= 500000`) on the same
call. Both are timed in the same process, one after the other, without the receipt write
both decisions share (an fsync, measured by the gate bench above). The index rows are put in
directly (not through 51,000 signed receipts) to keep the set-up short; the check reads only
the index.
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from charter.audit import AuditLog, Opened, now_iso
from charter.audit.receipts import text_sha256
from charter.backends import CallContext
from charter.compiler import compile_contract
from charter.contract._yaml import load_yaml
from charter.contract.checker import check_contract_data
from charter.db import write_transaction
from charter.gate import ContractGate
from charter.gate._quotas import QuotaHold
from charter.principal import Principal

__all__ = ["run_quota_bench"]

_CONTRACT = """\
contract: bench_wallet
version: 1.0.0
summary: Payments, for the quota benchmark.
owners: [bench@example.com]
changelog: First.
binding: {python: bench_wallet_backend}
operations:
  send_payment:
    kind: write
    doc: Send money.
    params: {account: str, amount: money}
    returns: str
    scopes: [pay:write]
    guards:
      - {id: small_payment, when: params.amount <= 500000, message: At most 5000.00 a payment.}
    quotas:
      - {id: daily_outflow, sum: params.amount, per: [params.account], window: 24h, max: 1000000000000,
         message: A daily cap.}
"""


class _NoBackend:
    blocking = False

    def invoke(self, operation: str, arguments: Any, context: Any = None) -> Any:
        raise AssertionError("the quota benchmark calls no backend")


def run_quota_bench(k: int = 1000, others: int = 50_000, checks: int = 2000) -> dict[str, Any]:
    """Microseconds per quota check and per plain guard check, and their ratio."""
    data, source = load_yaml(_CONTRACT, "bench_wallet.yaml")
    contract = compile_contract(check_contract_data(data, source))
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="charter-bench-quota-") as scratch:
        log = AuditLog(Path(scratch) / "audit.db")
        rows = [("bench_wallet", "daily_outflow", '["GB01"]', _at(now, i, k), 100, "bench", i, 1) for i in range(k)] + [
            ("bench_wallet", "daily_outflow", f'["X{i % 5000}"]', _at(now, i, others), 100, "other", i, 1)
            for i in range(others)
        ]
        with log.connect() as db, write_transaction(db):
            for row in rows:
                db.execute(
                    "INSERT INTO quota_counts (contract, quota, key, at, amount, run_id, call, counted) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
        principal = Principal("bench", frozenset({"pay:write"}))
        opened = Opened(
            run_id="quota-bench",
            seq=0,
            at=now_iso(),
            intent=None,
            program="",
            program_sha256=text_sha256(""),
            principal=principal.id,
            scopes=tuple(principal.scopes),
            contract=contract.name,
            version=contract.version,
            contract_sha256=contract.sha256,
            clock="",
            seed=0,
            limits={},
            host="bench",
            pid=0,
        )
        session = ContractGate(contract, _NoBackend()).session(log.open_run(opened), principal, max_result_bytes=1)
        rule = contract.gate.operations["send_payment"]
        variables = session._checks.variables(rule, {"account": "GB01", "amount": "10.00"}, None, None)
        lookups = session._gate._lookups.start(_outside_a_call)  # the plain guard reads no lookup

        def quota() -> None:
            hold = QuotaHold()
            try:
                session._state.quotas.check(rule, variables, hold)
            finally:
                hold.release()
            if hold.seen[0].total != 100 * k:
                raise RuntimeError(f"the benchmark's quota saw {hold.seen[0].total}, not {100 * k}")

        def guard() -> None:
            if session._gate._rules.guard_violation(rule, variables, lookups, False) is not None:
                raise RuntimeError("the benchmark's plain guard did not hold")

        timings = {}
        for name, one in (("guard", guard), ("quota", quota)):
            for _ in range(50):  # warm: connections, compiled programs, SQLite's page cache
                one()
            started = time.perf_counter()
            for _ in range(checks):
                one()
            timings[name] = (time.perf_counter() - started) / checks * 1e6
    return {
        "k": k,
        "other_rows": others,
        "checks": checks,
        "plain_guard_us": timings["guard"],
        "quota_check_us": timings["quota"],
        "quota_over_guard": timings["quota"] / timings["guard"],
    }


def _at(now: datetime, i: int, n: int) -> str:
    """Spread n calls over the last 23 hours, inside a 24h window."""
    return (now - timedelta(seconds=(i + 1) * 23 * 3600 / n)).isoformat(timespec="microseconds")


def _outside_a_call() -> CallContext:
    raise RuntimeError("the benchmark's guard performed a lookup")
