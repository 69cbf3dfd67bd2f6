"""Resuming a run paused for approval: the real sandbox, the contract gate, SQLite audit logs and
the orders example service. Every backend invocation is counted (the program's reads, the gate's
own entity reads, the writes), so "answered from the record" and "executed once" are facts the
tests check, not assumptions."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from charter.approvals import ApprovalStore
from charter.approvals.resume import Resumer
from charter.approvals.worker import ResumeWorker
from charter.audit import AuditLog, Decision, Opened, Outcome, Sealed, verify_log
from charter.backends import CallContext, ContractBackend
from charter.compiler import CompiledContract, compile_contract
from charter.contract import load_contract
from charter.gate import CallRequest, RunHalted
from charter.gate._writes import write_key
from charter.principal import Principal
from charter.registry import Registry
from charter.replay import RecordedAnswers, ResumeGate, replay_run
from charter.runner import Runner
from charter.sandbox import Sandbox
from charter.server._tokens import TokenStore
from tests.conftest import ROOT, charter

ADA_SCOPES = frozenset({"orders:read", "orders:write", "orders:refund"})
RITA = Principal("rita", frozenset({"orders:approve"}))

# The orders contract with a human approval on every refund and every cancellation.
FLAGGED = (
    (ROOT / "contracts" / "orders.yaml")
    .read_text(encoding="utf-8")
    .replace("    after: [verify_refund]\n", "    after: [verify_refund]\n    requires_approval: true\n", 1)
    .replace(
        '    binding: {http: {method: POST, path: "/orders/{id}/cancel"}}\n',
        '    binding: {http: {method: POST, path: "/orders/{id}/cancel"}}\n    requires_approval: true\n',
        1,
    )
)

REFUND = (
    "from decimal import Decimal\n"
    "o = orders.get_order(id=123)\n"
    "v = orders.verify_refund(id=123)\n"
    'r = orders.refund_order(id=123, amount=Decimal("10.00"), reason="damaged")\n'
)
REFUND_THEN_READ = REFUND + "x = orders.get_order(id=102)\nconclude('refunded ' + str(r.refunded) + ' ' + x.status)\n"


class Counting:
    """A backend that records every invocation (operation, idempotency key) before passing it on."""

    def __init__(self, inner: Any, calls: list[tuple[str, str | None]]) -> None:
        self.inner = inner
        self.calls = calls

    def invoke(self, operation: str, arguments: Mapping[str, Any], context: CallContext | None = None) -> Any:
        self.calls.append((operation, context.idempotency_key if context is not None else None))
        return self.inner.invoke(operation, arguments, context)

    def close(self) -> None:
        self.inner.close()


@dataclass
class Env:
    home: Path
    log: AuditLog
    registry: Registry
    contract: CompiledContract
    runner: Runner
    store: ApprovalStore
    calls: list[tuple[str, str | None]]
    principals: dict[str, Principal | None] = field(default_factory=dict)

    def principal_of(self, principal_id: str) -> Principal | None:
        return self.principals.get(principal_id, Principal(principal_id, ADA_SCOPES))

    @property
    def resumer(self) -> Resumer:
        return Resumer(self.runner, self.registry, principal_of=self.principal_of, store=self.store)

    def run(self, program: str, **kwargs: Any) -> Any:
        return self.runner.execute(program, contract=self.contract, principal=Principal("ada", ADA_SCOPES), **kwargs)

    def paused(self, program: str) -> tuple[str, str]:
        """Run `program` until it pauses: (run id, approval id)."""
        execution = self.run(program)
        assert (execution.status, execution.cause) == ("awaiting_approval", "APPROVAL_REQUIRED"), execution.reason
        assert execution.approval_id is not None
        return execution.run_id, execution.approval_id

    def ops(self, since: int = 0) -> list[str]:
        return [op for op, _ in self.calls[since:]]


def _publish(home: Path, text: str, name: str = "flagged.yaml") -> CompiledContract:
    path = home.parent / name
    path.write_text(text, encoding="utf-8")
    checked = load_contract(path)
    Registry().publish(checked, text)
    return compile_contract(checked)


@pytest.fixture
def env(charter_home: Path, shared_sandbox: Sandbox) -> Env:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from examples.orders import backend

    backend.seed()
    contract = _publish(charter_home, FLAGGED)
    calls: list[tuple[str, str | None]] = []
    log = AuditLog(charter_home / "audit.db")
    runner = Runner(audit=log, sandbox=shared_sandbox, backend_for=lambda c: Counting(ContractBackend(c), calls))
    return Env(charter_home, log, Registry(), contract, runner, ApprovalStore(log), calls)


def _order(order_id: int) -> dict[str, Any]:
    from examples.orders import backend

    return backend.get_order(id=order_id)


def _decision_link(log: AuditLog, approval_id: str) -> str:
    return next(iter(log.stored(approval_id))).link


def _log_verifies(env: Env) -> bool:
    return verify_log(env.log, env.log.trusted_keys()).ok


# -- pause, approve, resume ----------------------------------------------------------------


def test_an_approved_resume_answers_the_reads_from_the_record_and_writes_once(env: Env) -> None:
    paused_id, approval_id = env.paused(REFUND_THEN_READ)
    # the program's two reads and the gate's own read of the order for the refund's guards
    assert env.ops() == ["get_order", "verify_refund", "get_order"]
    env.store.decide(approval_id, RITA, "approved", "checked the parcel photos")
    before = len(env.calls)

    execution = env.resumer.resume(approval_id)

    assert (execution.status, execution.answer) == ("done", "refunded 10.00 confirmed"), execution.reason
    # No second read of the program's get_order(123) or verify_refund: the gate re-reads the order
    # to check the refund against the state now, the refund is sent once, then the live read.
    assert env.calls[before:] == [
        ("get_order", None),
        ("refund_order", write_key(approval_id, 3)),
        ("get_order", None),
    ]
    assert _order(123)["refunded"] == Decimal("10.00")
    resumed = env.log.run(execution.run_id)
    paused = env.log.run(paused_id)
    opened = resumed.opened
    assert isinstance(opened, Opened)
    assert isinstance(paused.opened, Opened)
    assert (opened.resumes, opened.approval_id, opened.recovers) == (paused_id, approval_id, ())
    assert opened.approval_link == _decision_link(env.log, approval_id)
    assert opened.logical_run_id == paused_id
    assert (opened.program, opened.clock, opened.seed) == (
        paused.opened.program,
        paused.opened.clock,
        paused.opened.seed,
    )
    # the resumed run's own receipts start at the approved call
    first = next(r for r in resumed.receipts if isinstance(r, Decision))
    assert (first.call, first.operation, first.approval_id, first.decision) == (3, "refund_order", approval_id, "ALLOW")
    assert first.idempotency_key == write_key(approval_id, 3)
    assert _log_verifies(env)

    # `audit replay` of the resumed run answers the calls before it from the chain
    report = replay_run(resumed, env.contract, env.runner.sandbox, log=env.log)
    assert report.identical, report.divergences
    assert report.replayed_calls == 4
    with pytest.raises(ValueError, match="needs the audit log"):
        replay_run(resumed, env.contract, env.runner.sandbox)
    shown = charter("audit", "replay", execution.run_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["identical"] is True

    # resuming again is idempotent: the sealed resume's answer, nothing runs
    again = env.resumer.resume(approval_id)
    assert (again.run_id, again.answer) == (execution.run_id, execution.answer)
    assert len(env.calls) == before + 3


def test_a_denied_approval_is_a_denial_the_program_catches(env: Env) -> None:
    program = REFUND.replace(
        'r = orders.refund_order(id=123, amount=Decimal("10.00"), reason="damaged")\n',
        "try:\n"
        '    orders.refund_order(id=123, amount=Decimal("10.00"), reason="damaged")\n'
        "except ContractViolation as error:\n"
        "    conclude('not refunded: ' + error.code + ' | ' + str(error))\n",
    )
    _, approval_id = env.paused(program)
    env.store.decide(approval_id, RITA, "denied", "no photos of the damage")
    before = len(env.calls)

    execution = env.resumer.resume(approval_id)

    assert execution.status == "done", execution.reason
    assert execution.answer is not None
    assert execution.answer.startswith("not refunded: APPROVAL_DENIED | ")
    assert "refund_order was denied by rita: no photos of the damage" in execution.answer
    assert env.ops(before) == []  # nothing read or written: the denial needs no state
    assert _order(123)["refunded"] == Decimal("0.00")
    decision = next(r for r in env.log.run(execution.run_id).receipts if isinstance(r, Decision))
    assert (decision.decision, decision.code, decision.clause) == ("DENY", "APPROVAL_DENIED", "approval:refund_order")


def test_a_state_change_while_waiting_fails_the_recheck(env: Env) -> None:
    from examples.orders import backend

    _, approval_id = env.paused(REFUND_THEN_READ)
    # while the request waits, the order is refunded up to its total another way
    backend.refund_order(id=123, amount=Decimal("1345.00"), reason="late")
    env.store.decide(approval_id, RITA, "approved", "fine")
    before = len(env.calls)

    execution = env.resumer.resume(approval_id)

    assert (execution.status, execution.cause) == ("refused", "GUARD_VIOLATION"), execution.reason
    assert "refund_order" not in env.ops(before)  # re-checked against the state now, never sent
    assert _order(123)["refunded"] == Decimal("1345.00")


# -- divergence ----------------------------------------------------------------------------


def _request(sequence: int, operation: str, arguments: dict[str, Any]) -> CallRequest:
    return CallRequest(
        run_id="x",
        sequence=sequence,
        operation=operation,
        arguments=arguments,
        principal=Principal("ada", ADA_SCOPES),
        deadline=time.monotonic() + 60,
    )


class _Live:
    blocking = True

    def __init__(self) -> None:
        self.live: list[int] = []
        self.absorbed: list[int] = []

    def call(self, request: CallRequest) -> Any:
        self.live.append(request.sequence)
        return None

    def absorb(self, request: CallRequest, decision: Decision, outcome: Outcome | None) -> None:
        self.absorbed.append(request.sequence)

    def close(self, reason: str) -> None:
        pass


def test_the_shared_answering_class_halts_diverged_on_another_call(env: Env) -> None:
    paused_id, _ = env.paused(REFUND_THEN_READ)
    answers = RecordedAnswers([env.log.run(paused_id)], env.contract, env.log.secret_key)
    live = _Live()
    gate = ResumeGate(live, answers)

    assert json.loads(gate.call(_request(1, "get_order", {"id": 123})).text)["id"] == 123
    for request in (_request(2, "verify_refund", {"id": 125}), _request(2, "get_order", {"id": 123})):
        with pytest.raises(RunHalted) as halted:
            gate.call(request)
        assert halted.value.code == "DIVERGED"
        assert f"the record of run {paused_id}" in halted.value.message
    gate.call(_request(3, "refund_order", {"id": 123, "amount": "10.00", "reason": "damaged"}))  # not recorded
    assert (live.absorbed, live.live) == ([1], [3])


def test_a_resume_whose_program_differs_from_the_record_halts_diverged(env: Env) -> None:
    paused_id, approval_id = env.paused(REFUND_THEN_READ)
    env.store.decide(approval_id, RITA, "approved", "fine")
    paused = env.log.run(paused_id)
    assert isinstance(paused.opened, Opened)
    before = len(env.calls)
    # A program that reads another order first: call 1's arguments hash differs from the record.
    other = msgspec.structs.replace(paused.opened, program=paused.opened.program.replace("id=123)\nv", "id=102)\nv"))
    answers = RecordedAnswers([paused], env.contract, env.log.secret_key)

    execution = env.runner.resume_run(
        other,
        contract=env.contract,
        principal=Principal("ada", ADA_SCOPES),
        approval_id=approval_id,
        approval_link=_decision_link(env.log, approval_id),
        answers=answers,
    )

    assert (execution.status, execution.cause) == ("failed", "DIVERGED")
    assert "call 1 is get_order" in (execution.reason or "")
    assert env.ops(before) == []
    assert [r for r in env.log.run(execution.run_id).receipts if isinstance(r, Decision)] == []


# -- the record, the principal, the contract -------------------------------------------------


def test_a_tampered_receipt_stops_the_resume_before_anything_runs(env: Env) -> None:
    paused_id, approval_id = env.paused(REFUND_THEN_READ)
    env.store.decide(approval_id, RITA, "approved", "fine")
    # An attacker with write access to the database changes what call 1 "returned".
    row = next(r for r in env.log.stored(paused_id) if r.kind == "outcome")
    with sqlite3.connect(env.log.path) as db:
        db.execute("DROP TRIGGER receipts_no_update")
        db.execute(
            "UPDATE receipts SET body = ? WHERE log_seq = ?",
            (row.body.replace(b"barbara@example.com", b"mallory@example.com"), row.log_seq),
        )
    before = len(env.calls)

    execution = env.resumer.resume(approval_id)

    assert (execution.status, execution.cause) == ("failed", "TAMPERED")
    assert f"run {paused_id}: receipt {row.log_seq}:" in (execution.reason or "")
    assert env.ops(before) == []
    assert _order(123)["refunded"] == Decimal("0.00")
    sealed = env.log.run(execution.run_id).sealed
    assert isinstance(sealed, Sealed)
    assert (sealed.status, sealed.cause) == ("halted", "TAMPERED")


def test_a_tampered_decision_record_stops_the_resume(env: Env) -> None:
    _, approval_id = env.paused(REFUND_THEN_READ)
    env.store.decide(approval_id, RITA, "denied", "no photos")
    # An attacker turns the denial into an approval in the database.
    row = next(iter(env.log.stored(approval_id)))
    with sqlite3.connect(env.log.path) as db:
        db.execute("DROP TRIGGER receipts_no_update")
        db.execute(
            "UPDATE receipts SET body = ? WHERE log_seq = ?",
            (row.body.replace(b'"decision":"denied"', b'"decision":"approved"', 1), row.log_seq),
        )
    before = len(env.calls)

    execution = env.resumer.resume(approval_id)

    assert (execution.status, execution.cause) == ("failed", "TAMPERED")
    assert f"decision record {approval_id}: receipt {row.log_seq}: its signature does not verify" in (
        execution.reason or ""
    )
    assert env.ops(before) == []
    assert _order(123)["refunded"] == Decimal("0.00")


def test_one_resume_of_an_approval_at_a_time(env: Env) -> None:
    from charter.approvals import ResumeInProgress
    from charter.approvals.resume import _resume_lock

    _, approval_id = env.paused(REFUND_THEN_READ)
    env.store.decide(approval_id, RITA, "approved", "fine")
    before = len(env.calls)
    with _resume_lock(env.log, approval_id), pytest.raises(ResumeInProgress) as busy:
        env.resumer.resume(approval_id)
    assert busy.value.code == "RESUME_IN_PROGRESS"
    assert env.ops(before) == []
    assert env.store.resume_runs(approval_id) == []
    assert env.resumer.resume(approval_id).status == "done"  # released


def test_a_revoked_principal_is_refused(env: Env) -> None:
    _, approval_id = env.paused(REFUND_THEN_READ)
    env.store.decide(approval_id, RITA, "approved", "fine")
    env.principals["ada"] = None
    before = len(env.calls)

    execution = env.resumer.resume(approval_id)

    assert (execution.status, execution.cause) == ("refused", "PRINCIPAL_REVOKED")
    assert env.ops(before) == []


def test_the_resume_runs_with_the_scopes_both_granted_and_held_now(env: Env) -> None:
    _, approval_id = env.paused(REFUND_THEN_READ)
    env.store.decide(approval_id, RITA, "approved", "fine")
    # ada lost orders:refund since, and gained orders:approve: neither widens the resume
    env.principals["ada"] = Principal("ada", frozenset({"orders:read", "orders:write", "orders:approve"}))
    before = len(env.calls)

    execution = env.resumer.resume(approval_id)

    opened = env.log.run(execution.run_id).opened
    assert isinstance(opened, Opened)
    assert opened.scopes == ("orders:read", "orders:write")
    assert (execution.status, execution.cause) == ("refused", "FORBIDDEN_SCOPE")
    assert "refund_order" not in env.ops(before)


def test_the_pinned_contract_version_is_used_after_a_newer_publish(env: Env) -> None:
    _, approval_id = env.paused(REFUND_THEN_READ)
    newer = FLAGGED.replace("version: 1.0.0", "version: 1.1.0").replace(
        "    doc: One order.\n", "    doc: One order, as the service holds it.\n", 1
    )
    published = _publish(env.home, newer, "newer.yaml")
    assert published.sha256 != env.contract.sha256
    env.store.decide(approval_id, RITA, "approved", "fine")

    execution = env.resumer.resume(approval_id)

    assert execution.status == "done", execution.reason
    opened = env.log.run(execution.run_id).opened
    assert isinstance(opened, Opened)
    assert (opened.version, opened.contract_sha256) == ("1.0.0", env.contract.sha256)


# -- chains --------------------------------------------------------------------------------


def test_a_chain_of_two_approvals(env: Env) -> None:
    program = (
        REFUND
        + 'c = orders.cancel_order(id=102, reason="customer asked")\n'
        + "conclude(str(r.refunded) + ' ' + c.status)\n"
    )
    first_run, first = env.paused(program)
    env.store.decide(first, RITA, "approved", "refund ok")
    second_execution = env.resumer.resume(first)
    assert (second_execution.status, second_execution.cause) == ("awaiting_approval", "APPROVAL_REQUIRED")
    second = second_execution.approval_id
    assert second is not None
    assert second != first
    env.store.decide(second, RITA, "approved", "cancel ok")
    before = len(env.calls)

    execution = env.resumer.resume(second)

    assert (execution.status, execution.answer) == ("done", "10.00 cancelled"), execution.reason
    # the refund is answered from the first resume's record: only the cancel's read and write run
    assert env.ops(before) == ["get_order", "cancel_order"]
    assert [op for op, _ in env.calls].count("refund_order") == 1
    assert env.calls[-1] == ("cancel_order", write_key(second, 4))
    opened = env.log.run(execution.run_id).opened
    assert isinstance(opened, Opened)
    assert (opened.resumes, opened.logical_run_id) == (second_execution.run_id, first_run)
    report = replay_run(env.log.run(execution.run_id), env.contract, env.runner.sandbox, log=env.log)
    assert report.identical, report.divergences


# -- kill -9 at each boundary of a resume ----------------------------------------------------

_CHILD = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from charter.approvals import ApprovalStore
from charter.approvals.resume import Resumer
from charter.audit import AuditLog
from charter.backends import ContractBackend
from charter.principal import Principal
from charter.registry import Registry
from charter.runner import Runner

mode, approval_id, counter = sys.argv[1], sys.argv[2], Path(sys.argv[3])

class Killing:
    def __init__(self, inner):
        self.inner = inner
    def invoke(self, operation, arguments, context=None):
        seen = counter.read_text().splitlines() if counter.exists() else []
        if mode == "after-opened" and not seen:
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "after-outcome" and operation == "get_order" and "refund_order" in seen:
            os.kill(os.getpid(), signal.SIGKILL)
        with counter.open("a") as out:
            out.write(operation + "\\n")
        while mode == "hold" and operation == "refund_order" and not counter.with_suffix(".go").exists():
            time.sleep(0.02)  # the resume holds its lock, inside the approved call, until told to go on
        result = self.inner.invoke(operation, arguments, context)
        if mode == "before-outcome" and operation == "refund_order":
            os.kill(os.getpid(), signal.SIGKILL)  # the write was made; its Outcome never is
        return result
    def close(self):
        self.inner.close()

log = AuditLog(Path(os.environ["CHARTER_HOME"]) / "audit.db")
runner = Runner(audit=log, backend_for=lambda c: Killing(ContractBackend(c)))
resumer = Resumer(runner, Registry(), principal_of=lambda p: Principal(p, frozenset({scopes!r})))
execution = resumer.resume(approval_id)
print(execution.status, execution.cause, execution.run_id)
"""


def _child_script() -> str:
    return _CHILD.format(root=str(ROOT), scopes=sorted(ADA_SCOPES))


def _resume_in_child(env: Env, mode: str, approval_id: str, counter: Path) -> subprocess.CompletedProcess[str]:
    script = _child_script()
    return subprocess.run(
        [sys.executable, "-c", script, mode, approval_id, str(counter)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=180,
        check=False,
    )


@pytest.mark.parametrize("mode", ["after-opened", "before-outcome", "after-outcome"])
def test_kill_9_during_a_resume_never_executes_twice_and_loses_no_receipt(env: Env, tmp_path: Path, mode: str) -> None:
    _, approval_id = env.paused(REFUND_THEN_READ)
    env.store.decide(approval_id, RITA, "approved", "fine")
    counter = tmp_path / "invocations.txt"

    killed = _resume_in_child(env, mode, approval_id, counter)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    crashed = env.store.resume_runs(approval_id)
    assert len(crashed) == 1
    crashed_record = env.log.run(crashed[0])
    assert crashed_record.sealed is None
    decided = {r.call for r in crashed_record.receipts if isinstance(r, Decision)}
    outcomes = {r.call: r.status for r in crashed_record.receipts if isinstance(r, Outcome)}
    # what each boundary left on the record, durably
    assert (decided, outcomes) == {
        "after-opened": (set(), {}),
        "before-outcome": ({3}, {}),
        # the read after the refund reached the gate; its Decision rides on the next durable
        # commit, which never came: nothing it could return had left (README, "Durability")
        "after-outcome": ({3}, {3: "ok"}),
    }[mode]
    assert _log_verifies(env)  # every receipt written is there and verifies

    # The approvals index is derived and unsigned: hiding the crashed resume there changes nothing.
    with sqlite3.connect(env.log.path) as db:
        db.execute("UPDATE approvals SET resume_runs = '[]', resume_run = NULL WHERE approval_id = ?", (approval_id,))
    again = _resume_in_child(env, "none", approval_id, counter)
    assert again.returncode == 0, again.stderr
    status, cause, run_id = again.stdout.split()
    writes = counter.read_text().splitlines().count("refund_order")
    resumed = env.log.run(run_id)
    opened = resumed.opened
    assert isinstance(opened, Opened)
    assert opened.recovers == (crashed[0],)
    if mode == "before-outcome":
        # the approved call has a Decision and no Outcome: in doubt, never sent again
        assert (status, cause) == ("failed", "IN_DOUBT")
        assert writes == 1
        assert _order(123)["refunded"] == Decimal("10.00")
        assert [r for r in resumed.receipts if isinstance(r, Decision)] == []
    else:
        assert (status, cause) == ("done", "completed")
        assert writes == 1  # 0 double executions
        assert _order(123)["refunded"] == Decimal("10.00")
        if mode == "after-outcome":  # the refund was answered from the crashed resume's Outcome
            assert not any(isinstance(r, Decision) and r.call == 3 for r in resumed.receipts)
    assert _log_verifies(env)
    # and a third resume returns the sealed one
    assert _resume_in_child(env, "none", approval_id, counter).stdout.split()[2] == run_id


# -- the worker --------------------------------------------------------------------------------


def test_the_worker_resumes_at_start_what_was_approved_while_it_was_down_and_retries(env: Env) -> None:
    _, approval_id = env.paused(REFUND_THEN_READ)
    env.store.decide(approval_id, RITA, "approved", "fine")  # no worker is running
    failures = {"left": 1}

    def flaky(principal_id: str) -> Principal | None:
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("the token store is unreachable")
        return Principal(principal_id, ADA_SCOPES)

    sealed: list[Any] = []
    done = threading.Event()
    resumer = Resumer(env.runner, env.registry, principal_of=flaky, store=env.store)
    worker = ResumeWorker(resumer, env.store, poll_seconds=0.05, on_sealed=lambda e: (sealed.append(e), done.set()))
    worker.start()
    try:
        assert done.wait(60)
    finally:
        worker.stop()
    assert failures["left"] == 0
    assert [(e.status, e.answer) for e in sealed] == [("done", "refunded 10.00 confirmed")]
    assert env.store.pending_resumes() == []
    assert [op for op, _ in env.calls].count("refund_order") == 1


def test_token_store_principal_is_the_union_of_its_tokens(charter_home: Path) -> None:
    tokens = TokenStore(charter_home / "tokens.yaml")
    tokens.add("ada-laptop", "ada", ["orders:read"], {"region": "eu"})
    tokens.add("ada-ci", "ada", ["orders:write"], {"region": "us"})
    tokens.add("bob", "bob", ["orders:refund"])
    principal = tokens.principal("ada")
    assert principal is not None
    assert principal.scopes == frozenset({"orders:read", "orders:write"})
    assert principal.attributes == {"region": "us"}  # the most recent token's
    tokens.revoke("ada-laptop")
    tokens.revoke("ada-ci")
    assert tokens.principal("ada") is None
    assert tokens.principal("carol") is None


# -- a resume the backend's absence stopped (A6) -------------------------------------------------


class Unavailable(Counting):
    """Counting, but while `down` names an operation, calling it raises BackendUnavailable before
    the backend is reached (as a binding module that changed since publish does)."""

    def __init__(self, inner: Any, calls: list[tuple[str, str | None]], down: set[str]) -> None:
        super().__init__(inner, calls)
        self.down = down
        self.reached: list[tuple[str, str | None]] = []  # the invocations that got to the backend

    def invoke(self, operation: str, arguments: Mapping[str, Any], context: CallContext | None = None) -> Any:
        from charter.backends import BackendUnavailable

        if operation in self.down:
            raise BackendUnavailable(f"binding of {operation} changed since it was published")
        self.reached.append((operation, context.idempotency_key if context is not None else None))
        return super().invoke(operation, arguments, context)


def _flaky_env(env: Env, down: set[str]) -> tuple[Env, Unavailable]:
    backends: list[Unavailable] = []

    def backend_for(contract: CompiledContract) -> Unavailable:
        backends.append(Unavailable(ContractBackend(contract), env.calls, down))
        return backends[-1]

    runner = Runner(audit=env.log, sandbox=env.runner.sandbox, backend_for=backend_for)
    flaky = Env(env.home, env.log, env.registry, env.contract, runner, env.store, env.calls)
    flaky.run("conclude('warm')")  # builds the gate, hence the backend
    return flaky, backends[0]


def test_a_resume_the_backend_stopped_before_the_approved_call_is_retried_and_executes_once(env: Env) -> None:
    down: set[str] = set()
    flaky, backend = _flaky_env(env, down)
    paused_id, approval_id = flaky.paused(REFUND_THEN_READ)
    flaky.store.decide(approval_id, RITA, "approved", "fine")

    down.add("refund_order")
    first = flaky.resumer.resume(approval_id)
    assert (first.status, first.cause) == ("failed", "BACKEND_UNAVAILABLE")
    assert flaky.resumer.retryable(first)
    assert [op for op, _ in backend.reached].count("refund_order") == 0
    # the server's run view does not report it as the chain's conclusion: the paused run still stands
    from charter.server._service import _latest_sealed

    stands = _latest_sealed([flaky.log.run(paused_id), flaky.log.run(first.run_id)])
    assert stands is not None
    assert stands.run_id == paused_id

    down.clear()
    second = flaky.resumer.resume(approval_id)  # not the failed one's answer: run again
    assert second.run_id != first.run_id
    assert (second.status, second.answer) == ("done", "refunded 10.00 confirmed")
    assert [r for r in backend.reached if r[0] == "refund_order"] == [("refund_order", write_key(approval_id, 3))]
    opened = flaky.log.run(second.run_id).opened
    assert isinstance(opened, Opened)
    assert opened.recovers == (first.run_id,)
    assert not flaky.resumer.retryable(second)
    assert flaky.resumer.resume(approval_id).run_id == second.run_id  # final now: nothing runs again
    assert [op for op, _ in backend.reached].count("refund_order") == 1
    assert _log_verifies(flaky)
    for run_id in (first.run_id, second.run_id):
        report = replay_run(flaky.log.run(run_id), env.contract, env.runner.sandbox, log=env.log)
        assert report.identical, (run_id, report.divergences)


def test_a_resume_the_backend_stopped_after_the_approved_call_acted_is_final(env: Env) -> None:
    down: set[str] = set()
    flaky, backend = _flaky_env(env, down)
    _, approval_id = flaky.paused(REFUND + "x = orders.list_orders()\nconclude('refunded')\n")
    flaky.store.decide(approval_id, RITA, "approved", "fine")
    down.add("list_orders")  # the read after the refund: the refund's Outcome is ok
    first = flaky.resumer.resume(approval_id)
    assert (first.status, first.cause) == ("failed", "BACKEND_UNAVAILABLE")
    assert [op for op, _ in backend.reached].count("refund_order") == 1
    assert not flaky.resumer.retryable(first)
    down.clear()
    assert flaky.resumer.resume(approval_id).run_id == first.run_id
    assert [op for op, _ in backend.reached].count("refund_order") == 1


def test_the_worker_retries_a_resume_the_backend_stopped_until_it_completes(env: Env) -> None:
    down = {"refund_order"}
    flaky, backend = _flaky_env(env, down)
    _, approval_id = flaky.paused(REFUND_THEN_READ)
    flaky.store.decide(approval_id, RITA, "approved", "fine")
    sealed: list[Any] = []
    done = threading.Event()
    worker = ResumeWorker(
        flaky.resumer, flaky.store, poll_seconds=0.05, on_sealed=lambda e: (sealed.append(e), done.set())
    )
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while approval_id not in worker.failures and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "failed BACKEND_UNAVAILABLE" in worker.failures[approval_id]
        assert not done.is_set()
        down.clear()
        assert done.wait(60)
    finally:
        worker.stop()
    assert [(e.status, e.answer) for e in sealed] == [("done", "refunded 10.00 confirmed")]
    assert [op for op, _ in backend.reached].count("refund_order") == 1
    assert approval_id not in worker.failures


def test_deleting_the_lock_files_while_a_resume_holds_its_lock_does_not_let_a_second_resume_start(
    env: Env, tmp_path: Path
) -> None:
    from charter.approvals import ApprovalError

    _, approval_id = env.paused(REFUND_THEN_READ)
    env.store.decide(approval_id, RITA, "approved", "fine")
    counter = tmp_path / "invocations.txt"
    holder = subprocess.Popen(
        [sys.executable, "-c", _child_script(), "hold", approval_id, str(counter)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        deadline = time.monotonic() + 120
        while "refund_order" not in (counter.read_text() if counter.exists() else "") and holder.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for lock in env.home.glob("audit.db.*lock*"):
            lock.unlink()
        with pytest.raises(ApprovalError, match="being resumed by run") as refused:
            env.resumer.resume(approval_id)
        assert refused.value.code == "RESUME_IN_PROGRESS"
        counter.with_suffix(".go").write_text("go", encoding="utf-8")
        out, err = holder.communicate(timeout=120)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert holder.returncode == 0, err
    status, _, run_id = out.split()
    assert status == "done"
    assert counter.read_text().splitlines().count("refund_order") == 1
    assert env.store.resume_runs(approval_id) == [run_id]  # no second resume was opened
    assert env.resumer.resume(approval_id).run_id == run_id


def test_approvals_resume_on_the_cli_runs_a_retryable_resume_again(env: Env) -> None:
    down = {"refund_order"}
    flaky, backend = _flaky_env(env, down)
    _, approval_id = flaky.paused(REFUND_THEN_READ)
    flaky.store.decide(approval_id, RITA, "approved", "fine")
    first = flaky.resumer.resume(approval_id)
    assert (first.status, first.cause) == ("failed", "BACKEND_UNAVAILABLE")

    again = charter("approvals", "resume", approval_id, "--json")  # the backend is the real one again
    assert again.returncode == 0, again.stdout + again.stderr
    answer = json.loads(again.stdout)
    assert answer["run_id"] != first.run_id
    assert (answer["status"], answer["answer"]) == ("done", "refunded 10.00 confirmed")
    refunds = [d for d in flaky.log.run(answer["run_id"]).receipts if isinstance(d, Decision)]
    assert [(d.operation, d.idempotency_key) for d in refunds if d.operation == "refund_order"] == [
        ("refund_order", write_key(approval_id, 3))
    ]
    assert [op for op, _ in backend.reached].count("refund_order") == 0  # only the CLI's backend reached it
    shown = charter("approvals", "resume", approval_id)
    assert "already resumed as run " + answer["run_id"] in shown.stdout
    assert _log_verifies(flaky)


def test_a_resume_refused_for_the_backend_before_the_approved_call_is_retried_too(env: Env) -> None:
    """B0: the gate's own entity read fails BACKEND_UNAVAILABLE, so the approved call is DENIED
    BACKEND_UNAVAILABLE (not allowed and then failed): the backend was never reached, and the
    approval is not spent."""
    down: set[str] = set()
    flaky, backend = _flaky_env(env, down)
    _, approval_id = flaky.paused(REFUND_THEN_READ)
    flaky.store.decide(approval_id, RITA, "approved", "fine")

    down.add("get_order")  # the entity read of refund_order's transition
    first = flaky.resumer.resume(approval_id)
    assert (first.status, first.cause) == ("failed", "BACKEND_UNAVAILABLE")
    denied = [c for c in first.calls if isinstance(c, Decision) and c.approval_id == approval_id]
    assert [(d.decision, d.code) for d in denied] == [("DENY", "BACKEND_UNAVAILABLE")]
    assert flaky.resumer.retryable(first)
    assert approval_id in flaky.store.pending_resumes()  # found again after a restart, not only in memory

    down.clear()
    second = flaky.resumer.resume(approval_id)
    assert second.run_id != first.run_id
    assert (second.status, second.answer) == ("done", "refunded 10.00 confirmed")
    assert [r for r in backend.reached if r[0] == "refund_order"] == [("refund_order", write_key(approval_id, 3))]
    assert approval_id not in flaky.store.pending_resumes()
    assert _log_verifies(flaky)
