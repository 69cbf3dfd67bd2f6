"""The commit rule of the audit log (README, "Durability"): what is on disk when a gate call
returns, the group commit led by the callers' own threads, and the gate on the caller's thread
when the backend cannot block. Real gate sessions over a real SQLite log; the crash side (kill -9
at every boundary) is in tests/test_audit.py."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from charter.audit import ApprovalRequested, AuditLog, Decision, Outcome, verify_log
from charter.backends import CallContext, InMemoryBackend
from charter.bench.sandbox import ORDER
from charter.compiler import CompiledContract
from charter.gate import ApprovalPending, ContractGate, GrantedApproval
from charter.principal import Principal
from charter.runner import Runner
from tests.conftest import compiled
from tests.test_quotas import Clock, Run, wallet_contract

LEDGER = """\
contract: ledger
version: 1.0.0
summary: Balances and payments.
owners: [tests@example.com]
changelog: First.
binding:
  python: tests.data.shop_backend
operations:
  balance:
    kind: read
    doc: An account's balance.
    params: {account: str}
    returns: str
    scopes: [pay:read]
  statement:
    kind: read
    doc: An account's statement; each one is billed, so they are counted.
    params: {account: str}
    returns: str
    scopes: [pay:read]
    quotas:
      - {id: statements, count: true, per: [params.account], window: 24h, max: 5, message: Five a day.}
  send_payment:
    kind: write
    doc: Send money from an account.
    params: {account: str, amount: money}
    returns: str
    scopes: [pay:write]
  audit_trail:
    kind: read
    doc: Every login to an account; a human approves each look.
    params: {account: str}
    returns: str
    scopes: [pay:read]
    requires_approval: true
"""

ADA = Principal("ada", frozenset({"pay:read", "pay:write"}))


class Teller:
    """The backend: answers every call, and notes the thread each ran on."""

    def __init__(self, *, blocking: bool) -> None:
        self.blocking = blocking
        self.threads: list[int] = []

    def invoke(self, operation: str, arguments: Mapping[str, Any], context: CallContext | None = None) -> Any:
        self.threads.append(threading.get_ident())
        return "done"


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "audit.db")


@pytest.fixture
def ledger(tmp_path: Path) -> CompiledContract:
    return wallet_contract(tmp_path, LEDGER)


def on_disk(log: AuditLog, run_id: str) -> list[tuple[str, int | None]]:
    """The run's receipts as another reader of the file sees them: (kind, call)."""
    return [(row.kind, getattr(row.decoded(), "call", None)) for row in log.stored(run_id)]


def new_run(log: AuditLog, ledger: CompiledContract, *, blocking: bool = True) -> Run:
    return Run(log, ContractGate(ledger, Teller(blocking=blocking), clock=Clock()), ADA)


def test_a_plain_reads_decision_rides_on_the_runs_next_durable_commit(log: AuditLog, ledger: CompiledContract) -> None:
    run = new_run(log, ledger)
    assert run.call("balance", account="GB01") == "OK"
    assert run.call("balance", account="GB02") == "OK"
    # Both reads reached the backend; neither is on disk yet: nothing they returned has left.
    assert on_disk(log, run.run_id) == [("open", None)]
    assert [type(r).__name__ for r in run.recorder.written[1:]] == ["Decision", "Outcome", "Decision", "Outcome"]
    assert run.call("send_payment", account="GB01", amount="5.00") == "OK"
    # The write's decision and outcome are durable before it acts / before the program sees it,
    # and the reads are written first, in order, in the write decision's commit.
    assert on_disk(log, run.run_id) == [
        ("open", None),
        ("decision", 1),
        ("outcome", 1),
        ("decision", 2),
        ("outcome", 2),
        ("decision", 3),
        ("outcome", 3),
    ]
    report = verify_log(log, log.trusted_keys())
    assert report.ok, report.findings


def test_a_read_with_a_quota_is_durable_when_it_returns_and_counts_for_other_runs(
    log: AuditLog, ledger: CompiledContract
) -> None:
    run = new_run(log, ledger)
    assert run.call("statement", account="GB01") == "OK"
    # Other runs count the quota from the log, under a lock held until the Decision is on disk.
    assert on_disk(log, run.run_id) == [("open", None), ("decision", 1)]
    with closing(sqlite3.connect(log.path)) as db:
        counted = db.execute("SELECT COUNT(*) FROM quota_counts WHERE quota = 'statements' AND counted = 1").fetchone()
    assert counted == (1,)


def test_a_denied_write_is_durable_when_it_returns(log: AuditLog, ledger: CompiledContract) -> None:
    run = new_run(log, ledger)
    assert run.call("send_payment", account="GB01", amount="lots") == "INVALID_ARGUMENTS"
    assert on_disk(log, run.run_id) == [("open", None), ("decision", 1)]
    [decision] = run.decisions()
    assert decision.decision == "DENY"


def test_the_gate_runs_on_the_callers_thread_when_the_backend_cannot_block(log: AuditLog) -> None:
    contract = compiled("orders")
    seen: list[int] = []

    def get_order(id: int) -> dict[str, Any]:
        seen.append(threading.get_ident())
        return {**ORDER, "id": id, "status": "pending"}

    backend = InMemoryBackend({"get_order": get_order})
    assert backend.blocking is False
    runner = Runner(audit=log, backend_for=lambda _: backend)
    principal = Principal("ada", frozenset({"orders:read"}))
    execution = runner.execute("conclude(orders.get_order(id=7).status)", contract=contract, principal=principal)
    assert execution.answer == "pending", execution.outcome
    assert seen == [threading.get_ident()]  # no hop to a gate thread
    gate = ContractGate(contract, backend)
    blocking = ContractGate(contract, Teller(blocking=True))
    run = Run(log, gate, principal)
    assert run.session.blocking is False
    assert Run(log, blocking, principal).session.blocking is True  # a backend that may hang: watchdog


def test_concurrent_runs_share_group_commits_led_by_their_own_threads(log: AuditLog, ledger: CompiledContract) -> None:
    runs = [new_run(log, ledger) for _ in range(8)]
    barrier = threading.Barrier(len(runs))
    errors: list[BaseException] = []

    def work(run: Run) -> None:
        try:
            barrier.wait()
            for _ in range(5):
                assert run.call("balance", account="GB01") == "OK"
                assert run.call("send_payment", account="GB01", amount="1.00") == "OK"
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(run,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert not [t for t in threading.enumerate() if t.name == "charter-audit"]  # no writer thread
    for run in runs:
        stored = [row.decoded() for row in log.stored(run.run_id)]
        assert [r.seq for r in stored] == list(range(21))
        assert [(type(r).__name__, getattr(r, "call", None)) for r in stored[1:]] == [
            (kind, call) for call in range(1, 11) for kind in ("Decision", "Outcome")
        ]
        assert all(r.decision == "ALLOW" for r in stored if isinstance(r, Decision))
        assert all(r.status == "ok" for r in stored if isinstance(r, Outcome))
    report = verify_log(log, log.trusted_keys())
    assert report.ok, report.findings
    assert report.receipts == 8 * 21


def test_a_read_decided_under_an_approval_is_durable_when_it_returns(log: AuditLog, ledger: CompiledContract) -> None:
    paused = new_run(log, ledger)
    with pytest.raises(ApprovalPending) as pending:
        paused.call("audit_trail", account="GB01")
    [requested] = [r for r in paused.recorder.written if isinstance(r, ApprovalRequested)]
    assert requested.approval_id == pending.value.approval_id
    granted = GrantedApproval(
        approval_id=requested.approval_id,
        call=1,
        operation="audit_trail",
        args_sha256=requested.args_sha256,
        decision="approved",
        approver="rita",
        reason="fine",
    )
    resumed = new_run(log, ledger)
    resumed.session = ContractGate(ledger, Teller(blocking=True), clock=Clock()).session(
        resumed.recorder, ADA, max_result_bytes=65536, approval=granted
    )
    assert resumed.call("audit_trail", account="GB01") == "OK"
    # A resume is known by the Decision naming its approval: on disk before the call goes on.
    assert on_disk(log, resumed.run_id) == [("open", None), ("decision", 1)]
    [decision] = resumed.decisions()
    assert decision.approval_id == requested.approval_id
    assert resumed.call("balance", account="GB01") == "OK"  # a plain read after it rides again
    assert on_disk(log, resumed.run_id) == [("open", None), ("decision", 1)]
