"""Quotas over time: counted from the audit log's signed Decision receipts, per key, in a sliding window.

Gate sessions over one real AuditLog (SQLite) and an in-test backend; the clock is the gate's
injected clock, so the window slides without sleeping. The race runs real threads (gate
sessions, and once real sandbox runs) against one log.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from charter.agent._tokens import estimate_tokens
from charter.audit import AuditLog, Decision, Opened, Outcome, RunRecord, now_iso, verify_log
from charter.audit.quotas import fill_quota_index
from charter.audit.receipts import QuotaSeen, text_sha256
from charter.backends import BackendFailure, CallContext
from charter.bench._quotas import run_quota_bench
from charter.compiler import CompiledContract, compile_contract
from charter.compiler.artifact import QuotaRule
from charter.contract import load_contract
from charter.gate import CallRequest, ContractGate, Denied, GateSession, OperationFailed
from charter.principal import Principal
from charter.replay import replay_run
from charter.runner import Execution, Runner
from charter.sandbox import Sandbox
from tests.conftest import ROOT

WALLET = """\
contract: wallet
version: 1.0.0
summary: Payments out of customers' accounts.
owners: [tests@example.com]
changelog: First.
binding:
  python: tests.data.shop_backend
operations:
  send_payment:
    kind: write
    doc: Send money from an account.
    params: {account: str, amount: money, recipient: str}
    returns: str
    scopes: [pay:write]
    quotas:
      - id: daily_outflow
        sum: params.amount
        per: [params.account]
        window: 24h
        max: 200000
        message: At most 2,000.00 may be sent per day from one account.
  reset_pin:
    kind: write
    doc: Reset an account's PIN.
    params: {account: str}
    returns: str
    scopes: [pay:write]
    quotas:
      - {id: pin_resets, count: true, per: [params.account], window: run, max: 2, message: At most two resets a run.}
boundaries:
  - id: outflow_capped
    text: No account sends more than 2,000.00 a day.
    enforced_by: [{quota: daily_outflow}]
"""

ADA = Principal("ada", frozenset({"pay:write"}))
BOB = Principal("bob", frozenset({"pay:write"}))
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    """The gate's clock, moved by hand; `pause` makes each reading wait (widens a race)."""

    def __init__(self, now: datetime = T0, pause: float = 0.0) -> None:
        self.now = now
        self.pause = pause

    def __call__(self) -> datetime:
        if self.pause:
            time.sleep(self.pause)
        return self.now


class Wallet:
    """The backend: records what it was asked; `fail` makes the next call fail this way."""

    blocking = True

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail: BackendFailure | None = None
        self.reply: Any = "done"
        self._lock = threading.Lock()

    def invoke(self, operation: str, arguments: Mapping[str, Any], context: CallContext | None = None) -> Any:
        with self._lock:
            self.calls.append((operation, dict(arguments)))
            failure, self.fail = self.fail, None
        if failure is not None:
            raise failure
        return self.reply


def wallet_contract(tmp_path: Path, text: str = WALLET) -> CompiledContract:
    path = tmp_path / f"wallet-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(text, encoding="utf-8")
    return compile_contract(load_contract(path, resolve_bindings=False))


class Run:
    """One run's gate session over the log; `pay` makes one call and says how it was decided."""

    def __init__(self, log: AuditLog, gate: ContractGate, principal: Principal = ADA) -> None:
        contract = gate.contract
        self.run_id = uuid.uuid4().hex
        self.principal = principal
        opened = Opened(
            run_id=self.run_id,
            seq=0,
            at=now_iso(),
            intent=None,
            program="",
            program_sha256=text_sha256(""),
            principal=principal.id,
            scopes=tuple(sorted(principal.scopes)),
            contract=contract.name,
            version=contract.version,
            contract_sha256=contract.sha256,
            clock="",
            seed=0,
            limits={},
            host="test",
            pid=0,
        )
        self.recorder = log.open_run(opened)
        self.session: GateSession = gate.session(self.recorder, principal, max_result_bytes=65536)
        self.sequence = 0

    def call(self, operation: str, **arguments: Any) -> str:
        self.sequence += 1
        request = CallRequest(
            run_id=self.run_id,
            sequence=self.sequence,
            operation=operation,
            arguments=arguments,
            principal=self.principal,
            deadline=time.monotonic() + 60,
        )
        try:
            self.session.call(request)
        except Denied as denied:
            return denied.code
        except OperationFailed as failed:
            return f"failed:{failed.code}"
        return "OK"

    def pay(self, amount: str, account: str = "GB01") -> str:
        return self.call("send_payment", account=account, amount=amount, recipient="GB99")

    def decisions(self) -> list[Decision]:
        return [r for r in self.recorder.written if isinstance(r, Decision)]


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "audit.db")


@pytest.fixture
def wallet(tmp_path: Path) -> CompiledContract:
    return wallet_contract(tmp_path)


def test_allows_up_to_the_cap_and_denies_above_it_with_the_total_seen(log: AuditLog, wallet: CompiledContract) -> None:
    backend, clock = Wallet(), Clock()
    run = Run(log, ContractGate(wallet, backend, clock=clock))
    assert run.pay("1500.00") == "OK"
    assert run.pay("500.00") == "OK"  # exactly the cap: allowed
    assert run.pay("0.01") == "QUOTA_EXCEEDED"
    assert len(backend.calls) == 2

    first, second, third = run.decisions()
    assert first.quotas == (
        QuotaSeen(id="daily_outflow", key='["GB01"]', amount=150000, total=0, max=200000, window="24h", money=True),
    )
    assert second.quotas[0].total == 150000
    assert third.decision == "DENY"
    assert third.code == "QUOTA_EXCEEDED"
    assert third.clause == "quota:daily_outflow"
    assert third.boundary == "outflow_capped"
    assert third.quotas == (
        QuotaSeen(id="daily_outflow", key='["GB01"]', amount=1, total=200000, max=200000, window="24h", money=True),
    )
    assert third.message == (
        "send_payment refused: At most 2,000.00 may be sent per day from one account. (quota daily_outflow: "
        "2000.00 counted in the last 24h for this key, max 2000.00; this call would add 0.01) "
        "(hard boundary outflow_capped: No account sends more than 2,000.00 a day.)"
    )
    # The decision's time is the gate's clock: the window is measured on it.
    assert first.at == T0.isoformat(timespec="microseconds")
    assert verify_log(log, log.trusted_keys()).ok


def test_the_window_slides_on_the_gate_clock(log: AuditLog, wallet: CompiledContract) -> None:
    clock = Clock()
    gate = ContractGate(wallet, Wallet(), clock=clock)
    run = Run(log, gate)
    assert run.pay("1200.00") == "OK"
    clock.now = T0 + timedelta(hours=12)
    assert run.pay("800.00") == "OK"
    assert run.pay("0.01") == "QUOTA_EXCEEDED"
    # (at - 24h, at]: the first payment is in the window until 24 hours have passed, then out.
    clock.now = T0 + timedelta(hours=24, microseconds=-1)
    assert run.pay("0.01") == "QUOTA_EXCEEDED"
    clock.now = T0 + timedelta(hours=24)
    assert run.pay("1200.00") == "OK"
    assert run.decisions()[-1].quotas[0].total == 80000


def test_totals_are_per_account_not_per_principal(log: AuditLog, wallet: CompiledContract) -> None:
    gate = ContractGate(wallet, Wallet(), clock=Clock())
    ada, bob = Run(log, gate, ADA), Run(log, gate, BOB)
    assert ada.pay("2000.00", account="GB01") == "OK"
    # A second principal on the same account does not get a second allowance...
    assert bob.pay("1.00", account="GB01") == "QUOTA_EXCEEDED"
    # ...and another account has its own.
    assert ada.pay("2000.00", account="GB02") == "OK"
    assert bob.decisions()[0].quotas[0].total == 200000


def test_failed_outcomes_stop_counting_and_unknown_ones_keep_counting(log: AuditLog, wallet: CompiledContract) -> None:
    backend = Wallet()
    run = Run(log, ContractGate(wallet, backend, clock=Clock()))
    backend.fail = BackendFailure("INSUFFICIENT_FUNDS", "not enough money")
    assert run.pay("1500.00") == "failed:INSUFFICIENT_FUNDS"
    assert run.pay("2000.00") == "OK"  # the failed payment did not count
    assert run.decisions()[1].quotas[0].total == 0

    backend.fail = BackendFailure("TIMEOUT", "no answer", in_doubt=True)
    assert run.pay("1000.00", account="GB02") == "failed:TIMEOUT"
    assert [o.status for o in run.recorder.written if isinstance(o, Outcome)][-1] == "unknown"
    # In doubt: it may have been sent, so it counts (fail closed).
    assert run.pay("1000.01", account="GB02") == "QUOTA_EXCEEDED"
    assert run.decisions()[-1].quotas[0].total == 100000
    with sqlite3.connect(log.path) as db:
        rows = db.execute("SELECT key, amount, counted FROM quota_counts ORDER BY at, call").fetchall()
    assert sorted(rows) == [('["GB01"]', 150000, 0), ('["GB01"]', 200000, 1), ('["GB02"]', 100000, 1)]


def test_a_write_whose_result_was_withheld_still_counts(log: AuditLog, wallet: CompiledContract) -> None:
    # The backend acted, but returned what the contract does not declare: the outcome is
    # failed RESULT_INVALID, and the payment was made, so it counts.
    backend = Wallet()
    backend.reply = {"not": "a str"}
    run = Run(log, ContractGate(wallet, backend, clock=Clock()))
    assert run.pay("1500.00") == "failed:RESULT_INVALID"
    assert run.pay("600.00") == "QUOTA_EXCEEDED"
    assert run.decisions()[1].quotas[0].total == 150000


def test_a_new_version_does_not_reset_the_total(tmp_path: Path, log: AuditLog, wallet: CompiledContract) -> None:
    clock = Clock()
    assert Run(log, ContractGate(wallet, Wallet(), clock=clock)).pay("1900.00") == "OK"
    newer = wallet_contract(tmp_path, WALLET.replace("version: 1.0.0", "version: 1.1.0"))
    assert newer.sha256 != wallet.sha256
    run = Run(log, ContractGate(newer, Wallet(), clock=clock))
    assert run.pay("200.00") == "QUOTA_EXCEEDED"
    assert run.decisions()[0].quotas[0].total == 190000


def test_a_run_window_counts_this_run_only_and_denials_do_not_count(log: AuditLog, wallet: CompiledContract) -> None:
    gate = ContractGate(wallet, Wallet(), clock=Clock())
    run = Run(log, gate)
    assert [run.call("reset_pin", account="GB01") for _ in range(3)] == ["OK", "OK", "QUOTA_EXCEEDED"]
    assert run.call("reset_pin", account="GB02") == "OK"
    assert run.decisions()[2].quotas == (
        QuotaSeen(id="pin_resets", key='["GB01"]', amount=1, total=2, max=2, window="run"),
    )
    assert Run(log, gate).call("reset_pin", account="GB01") == "OK"  # a new run starts at 0


def race(log: AuditLog, wallet: CompiledContract, clock: Clock) -> list[str]:
    """Two runs on two threads, each asking 60% of the cap at the same moment."""
    gate = ContractGate(wallet, Wallet(), clock=clock)
    runs = [Run(log, gate, ADA), Run(log, gate, BOB)]
    barrier = threading.Barrier(2)
    results: list[str] = []

    def pay(run: Run) -> None:
        barrier.wait()
        results.append(run.pay("1200.00"))

    threads = [threading.Thread(target=pay, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


@pytest.mark.parametrize("attempt", range(6))
def test_two_racing_runs_cannot_both_pass(tmp_path: Path, attempt: int) -> None:
    # The clock pauses after the lock is taken and before the total is read: without the lock
    # both runs would read 0 and both pass.
    log = AuditLog(tmp_path / "audit.db")
    wallet = wallet_contract(tmp_path)
    results = race(log, wallet, Clock(T0 + timedelta(days=attempt), pause=0.05))
    assert sorted(results) == ["OK", "QUOTA_EXCEEDED"]


def test_a_gate_error_releases_the_lock(log: AuditLog, wallet: CompiledContract) -> None:
    clock = Clock()
    gate = ContractGate(wallet, Wallet(), clock=clock)
    broken: Callable[[], datetime] = lambda: (_ for _ in ()).throw(RuntimeError("clock broke"))  # noqa: E731
    gate.clock = broken
    assert Run(log, gate).pay("1.00") == "GATE_ERROR"
    gate.clock = clock
    done: list[str] = []
    worker = threading.Thread(target=lambda: done.append(Run(log, gate).pay("1.00")))
    worker.start()
    worker.join(5)
    assert done == ["OK"]  # not blocked on a lock the broken call left behind


def test_the_index_is_derived_from_the_receipts_and_rebuilt_the_same(log: AuditLog, wallet: CompiledContract) -> None:
    backend = Wallet()
    run = Run(log, ContractGate(wallet, backend, clock=Clock()))
    run.pay("100.00")
    backend.fail = BackendFailure("INSUFFICIENT_FUNDS", "no")
    run.pay("200.00")
    run.pay("300.00", account="GB02")
    with sqlite3.connect(log.path) as db:
        before = db.execute("SELECT * FROM quota_counts ORDER BY run_id, call").fetchall()
        fill_quota_index(db)
        after = db.execute("SELECT * FROM quota_counts ORDER BY run_id, call").fetchall()
    assert len(before) == 3
    assert before == after


def test_the_prompt_and_stubs_show_each_quota_compactly(wallet: CompiledContract) -> None:
    lines = wallet.prompt_context.splitlines()
    assert (
        "send_payment(account: str, amount: money, recipient: str) -> str [write] # Send money from an account. "
        "quota 2000.00/24h per account." in lines
    )
    assert "reset_pin(account: str) -> str [write] # Reset an account's PIN. quota 2/run per account." in lines
    for shown in (" quota 2000.00/24h per account.", " quota 2/run per account."):
        assert estimate_tokens(shown) <= 12
    stub = wallet.stub_source
    assert (
        "Quota `daily_outflow` (quota 2000.00/24h per account): At most 2,000.00 may be sent per day from one "
        "account.\n" in stub
    )
    assert "Quota `pin_resets` (quota 2/run per account): At most two resets a run.\n" in stub
    # The quota enforces a hard boundary: the operation's docstring names it.
    send = stub.split("def send_payment")[1].split("def reset_pin")[0]
    assert "HARD BOUNDARIES:\n          - No account sends more than 2,000.00 a day." in send


def test_the_gate_table_holds_the_quota_rule(wallet: CompiledContract) -> None:
    (rule,) = wallet.gate.operations["send_payment"].quotas
    assert rule == QuotaRule(
        id="daily_outflow",
        sum="params.amount",
        per=("params.account",),
        window="24h",
        window_seconds=86400,
        max=200000,
        message="At most 2,000.00 may be sent per day from one account.",
        boundaries=("outflow_capped",),
        money=True,
    )
    assert wallet.gate.boundaries[0].enforced_by == ("quota:daily_outflow",)
    assert wallet.gate.operations["reset_pin"].quotas[0].window_seconds is None


PAY = 'from decimal import Decimal\nwallet.send_payment(account="GB01", amount=Decimal("1200.00"), recipient="GB99")\nconclude("sent")\n'


def test_racing_sandbox_runs_one_allowed_and_replay_recounts_the_totals(
    tmp_path: Path, log: AuditLog, wallet: CompiledContract, shared_sandbox: Sandbox
) -> None:
    race_two_sandbox_runs(log, wallet, shared_sandbox)


def race_two_sandbox_runs(log: AuditLog, wallet: CompiledContract, shared_sandbox: Sandbox) -> None:
    """Two real runs (sandbox, gate) racing for the one unit left of a quota: exactly one is
    allowed, the backend acts once, the log verifies and replay recounts each run's totals.
    On SQLite here, on PostgreSQL in tests/test_e2e_pg.py."""
    backend = Wallet()
    runner = Runner(audit=log, sandbox=shared_sandbox, backend_for=lambda _: backend)
    barrier = threading.Barrier(2)
    executions: list[Execution] = []

    def run(principal: Principal) -> None:
        barrier.wait()
        executions.append(runner.execute(PAY, contract=wallet, principal=principal))

    threads = [threading.Thread(target=run, args=(p,)) for p in (ADA, BOB)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    decided = sorted(next(c for c in e.calls if isinstance(c, Decision)).code for e in executions)
    assert decided == ["OK", "QUOTA_EXCEEDED"]
    assert len(backend.calls) == 1
    assert verify_log(log, log.trusted_keys()).ok

    for execution in executions:
        report = replay_run(log.run(execution.run_id), wallet, shared_sandbox, log=log)
        assert report.identical, report.divergences
        assert report.quotas_checked == 1


def test_replay_recounts_from_the_receipts_and_the_index_rebuilds_from_them(
    log: AuditLog, wallet: CompiledContract, shared_sandbox: Sandbox
) -> None:
    runner = Runner(audit=log, sandbox=shared_sandbox, backend_for=lambda _: Wallet())
    runner.execute(PAY, contract=wallet, principal=ADA)
    second = runner.execute(PAY, contract=wallet, principal=ADA)
    recorded = next(c for c in second.calls if isinstance(c, Decision))
    assert (recorded.code, recorded.quotas[0].total) == ("QUOTA_EXCEEDED", 120000)
    # The index is derived, the receipts are the record: with the index emptied, replay still
    # recounts the recorded totals from the receipts...
    with closing(sqlite3.connect(log.path)) as db:
        db.execute("DELETE FROM quota_counts")
        db.commit()
    assert replay_run(log.run(second.run_id), wallet, shared_sandbox, log=log).quotas_checked == 1
    # ...and rebuilding the index from them restores what the gate counts.
    with closing(sqlite3.connect(log.path)) as db:
        fill_quota_index(db)
        db.commit()
    assert Run(log, ContractGate(wallet, Wallet())).pay("1200.00") == "QUOTA_EXCEEDED"


def test_totals_and_their_recount_are_per_contract_name_and_key(
    log: AuditLog, wallet: CompiledContract, shared_sandbox: Sandbox
) -> None:
    runner = Runner(audit=log, sandbox=shared_sandbox, backend_for=lambda _: Wallet())
    purse = wallet_contract(log.path.parent, WALLET.replace("contract: wallet", "contract: purse"))
    runner.execute(PAY, contract=wallet, principal=ADA)
    other_name = runner.execute(PAY.replace("wallet.", "purse."), contract=purse, principal=ADA)
    other_key = runner.execute(PAY.replace("GB01", "GB02"), contract=wallet, principal=ADA)
    last = runner.execute(PAY, contract=wallet, principal=ADA)
    codes = [next(c for c in e.calls if isinstance(c, Decision)).code for e in (other_name, other_key, last)]
    assert codes == ["OK", "OK", "QUOTA_EXCEEDED"]
    report = replay_run(log.run(last.run_id), wallet, shared_sandbox, log=log)
    assert report.identical
    assert report.quotas_checked == 1


_PROCESS = """
import os, sys, time
from pathlib import Path
from charter.audit import AuditLog
from charter.compiler import compile_contract
from charter.contract import load_contract
from charter.gate import ContractGate
from tests.test_quotas import ADA, Clock, Run, Wallet
contract = compile_contract(load_contract(Path(sys.argv[1]), resolve_bindings=False))
log = AuditLog(Path(sys.argv[2]))
run = Run(log, ContractGate(contract, Wallet(), clock=Clock(pause=0.3)), ADA)
folder = Path(sys.argv[3])
(folder / f"ready-{os.getpid()}").touch()
while not (folder / "go").exists():
    time.sleep(0.002)
started = time.time()
result = run.pay("1200.00")
print(result, started, time.time())
"""


def race_processes(tmp_path: Path, code: str = "") -> list[tuple[str, float, float]]:
    """Two processes on one audit database, released together once both are ready; each
    pays 60% of the cap. (result, started, ended) of each."""
    contract = tmp_path / "wallet.yaml"
    contract.write_text(WALLET, encoding="utf-8")
    AuditLog(tmp_path / "audit.db").signing_key  # noqa: B018 - keys made once, before the race
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code + _PROCESS, str(contract), str(tmp_path / "audit.db"), str(tmp_path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    found = []
    for process in processes:
        result, started, ended = process.communicate(timeout=120)[0].split()
        found.append((result, float(started), float(ended)))
    return sorted(found)


def test_two_processes_sharing_one_log_cannot_both_pass(tmp_path: Path) -> None:
    # Two `charter exec` processes on one audit database: the per-key lock is also a POSIX
    # record lock on <audit.db>.quota-locks, so the second waits for the first's receipt.
    (first, second) = race_processes(tmp_path)
    assert max(first[1], second[1]) < min(first[2], second[2])  # they did race
    assert [first[0], second[0]] == ["OK", "QUOTA_EXCEEDED"]


def test_the_quota_bench_checks_what_it_times() -> None:
    # Not a timing test: the bench's check must see exactly the k counted calls of its key.
    figures = run_quota_bench(k=20, others=200, checks=3)
    assert (figures["k"], figures["other_rows"]) == (20, 200)
    assert figures["quota_check_us"] > 0
    assert figures["plain_guard_us"] > 0


def test_audit_show_prints_each_quota_of_a_decision(log: AuditLog, wallet: CompiledContract) -> None:
    from charter.cli.audit import _timeline_line

    run = Run(log, ContractGate(wallet, Wallet(), clock=Clock()))
    run.pay("1500.00")
    run.pay("600.00")
    text, _ = _timeline_line(run.decisions()[1])
    assert text.splitlines()[1] == '   quota daily_outflow ["GB01"]: 1500.00+600.00 of 2000.00/24h'
    assert text.splitlines()[2].startswith("-> DENY QUOTA_EXCEEDED: send_payment refused: At most 2,000.00")


def test_replay_reports_a_recorded_total_the_log_does_not_give(
    log: AuditLog, wallet: CompiledContract, shared_sandbox: Sandbox
) -> None:
    runner = Runner(audit=log, sandbox=shared_sandbox, backend_for=lambda _: Wallet())
    runner.execute(PAY, contract=wallet, principal=ADA)
    second = runner.execute(PAY, contract=wallet, principal=ADA)
    record = log.run(second.run_id)
    # The record as a gate that miscounted would have written it (in memory: a changed signed
    # receipt would fail verification, which `audit replay` checks before replaying).
    changed = tuple(
        msgspec.structs.replace(r, quotas=(msgspec.structs.replace(r.quotas[0], total=70000),))
        if isinstance(r, Decision)
        else r
        for r in record.receipts
    )
    report = replay_run(RunRecord(record.opened, changed, record.sealed), wallet, shared_sandbox, log=log)
    assert not report.identical
    assert report.divergences == (
        'call 1: quota daily_outflow key ["GB01"] recorded a total of 70000, the log before it counts 120000 (a '
        "failed outcome written while the call was being decided also makes this difference; the recorded total "
        "is what the gate saw)",
    )
