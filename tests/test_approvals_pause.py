"""Human approvals, the pause (issue 16): a flagged call stops its run with a signed request,
and a session holding the human's decision applies it at that call.

Real sandbox, real gate, real SQLite audit log and the payments and invoices example
backends. A resumed run is opened here by hand (the same program, clock, seed and inputs,
its session given the `GrantedApproval`), so the gate's part is tested on its own; the full
resume (answering earlier calls from the record, the worker) is charter.approvals'.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from charter.agent import Charter, ScriptedModel
from charter.audit import ApprovalRequested, AuditLog, Concluded, Decision, Opened, Outcome, Sealed
from charter.audit.receipts import text_sha256
from charter.compiler.artifact import CompiledContract
from charter.gate import GrantedApproval
from charter.gate._writes import write_key
from charter.principal import Principal
from charter.runner import Runner, conclusion_of, sealed_receipt
from charter.sandbox import Completed, Halted, Paused, RunContext, Sandbox, SandboxLimits
from charter.sandbox import Outcome as RunOutcome
from charter.status import status_of_outcome
from examples.payments import backend
from examples.payments.scenarios import HOLDER_ATTRIBUTES, HOLDER_SCOPES
from tests.conftest import compiled

ACCOUNT = backend.HOLDER_ACCOUNT
NEW_IBAN = backend.LANDLORD_NEW_IBAN  # not a saved payee: send_payment's approval rule holds
OTHER_NEW_IBAN = "FR1420041010050500013M02606"
PAY_NEW_IBAN = """from decimal import Decimal
t = payments.send_payment(account="ACC-1001", recipient=inputs["iban"], amount=Decimal(inputs["amount"]),
                          reference="Deposit")
conclude(f"sent {t.amount} to {t.recipient}: {t.id}")
"""


@dataclass
class Resumed:
    run_id: str
    outcome: RunOutcome
    status: str
    cause: str | None
    receipts: list[Any]

    def decisions(self) -> list[Decision]:
        return [r for r in self.receipts if isinstance(r, Decision)]


@dataclass
class Bank:
    runner: Runner
    log: AuditLog
    sandbox: Sandbox

    def holder(self) -> Principal:
        return Principal("ada", HOLDER_SCOPES, attributes=HOLDER_ATTRIBUTES)

    def run(
        self,
        program: str = PAY_NEW_IBAN,
        inputs: dict[str, str] | None = None,
        *,
        contract: CompiledContract | None = None,
        principal: Principal | None = None,
        secret_inputs: tuple[str, ...] = (),
    ) -> Any:
        return self.runner.execute(
            program,
            contract=contract or compiled("payments"),
            principal=principal or self.holder(),
            inputs={"iban": NEW_IBAN, "amount": "25.00"} if inputs is None else inputs,
            secret_inputs=secret_inputs,
        )

    def receipts(self, run_id: str) -> list[Any]:
        return list(self.log.run(run_id).receipts)

    def request(self, run_id: str) -> ApprovalRequested:
        (found,) = [r for r in self.receipts(run_id) if isinstance(r, ApprovalRequested)]
        return found

    def resume(
        self,
        paused_run: str,
        granted: GrantedApproval,
        *,
        program: str | None = None,
        inputs: dict[str, str] | None = None,
        contract: CompiledContract | None = None,
        principal: Principal | None = None,
    ) -> Resumed:
        """A new program run continuing `paused_run` under `granted`: its Opened names the paused
        run and the approval, with the same clock, seed and inputs (charter.approvals does this
        for real, answering the calls before the paused one from the record)."""
        contract = contract or compiled("payments")
        principal = principal or self.holder()
        paused = self.receipts(paused_run)[0]
        assert isinstance(paused, Opened)
        program = paused.program if program is None else program
        given = dict(paused.inputs or {}) if inputs is None else inputs
        run_id = secrets.token_hex(16)
        recorder = self.log.open_run(
            msgspec.structs.replace(
                paused,
                run_id=run_id,
                program=program,
                program_sha256=text_sha256(program),
                logical_run_id=paused.logical_run_id or paused_run,
                resumes=paused_run,
                approval_id=granted.approval_id,
                inputs=given or None,
            )
        )
        limits = SandboxLimits.from_contract(contract.gate.limits)
        session = self.runner.gate_for(contract).session(
            recorder,
            principal,
            max_result_bytes=limits.max_result_bytes,
            logical_run_id=paused.logical_run_id or paused_run,
            request=tuple(given.values()),
            inputs=given,
            approval=granted,
        )
        context = RunContext(
            principal=principal,
            run_id=run_id,
            clock=datetime.fromisoformat(paused.clock),
            seed=paused.seed,
            inputs=given,
        )
        outcome = self.sandbox.run(program, contract=contract, gate=session, context=context, limits=limits)
        recorder.seal(sealed_receipt(run_id, outcome))
        status = status_of_outcome(outcome)
        conclusion_of(outcome)  # the same classification the runner applies
        return Resumed(run_id, outcome, status.status, status.cause, self.receipts(run_id))


@pytest.fixture
def bank(charter_home: Path, shared_sandbox: Sandbox) -> Bank:
    backend.seed()
    log = AuditLog(charter_home / "audit.db")
    return Bank(Runner(audit=log, sandbox=shared_sandbox), log, shared_sandbox)


def transfers() -> list[dict[str, Any]]:
    with backend._db() as db:
        return [dict(r) for r in db.execute("SELECT * FROM transfers ORDER BY id")]


def granted_for(request: ApprovalRequested, decision: str = "approved", **changes: Any) -> GrantedApproval:
    fields: dict[str, Any] = {
        "approval_id": request.approval_id,
        "call": request.call,
        "operation": request.operation,
        "args_sha256": request.args_sha256,
        "decision": decision,
        "approver": "rita",
        "reason": "checked with the holder by phone",
    }
    return GrantedApproval(**(fields | changes))


# -- the pause --------------------------------------------------------------------------------


def test_a_flagged_call_pauses_the_run_with_a_signed_request_and_nothing_executes(bank: Bank) -> None:
    execution = bank.run()
    assert (execution.status, execution.cause) == ("awaiting_approval", "APPROVAL_REQUIRED")
    outcome = execution.outcome
    assert isinstance(outcome, Paused)
    assert (outcome.call, outcome.operation, outcome.reason) == (1, "send_payment", "recipient not a saved payee")
    assert re.fullmatch(r"[0-9a-f]{32}", outcome.approval_id)
    assert execution.approval_id == outcome.approval_id
    assert execution.reason == outcome.message

    receipts = bank.receipts(execution.run_id)
    assert [type(r).__name__ for r in receipts] == ["Opened", "ApprovalRequested", "Sealed"]
    opened, asked, sealed = receipts
    assert isinstance(opened, Opened)
    assert isinstance(asked, ApprovalRequested)
    assert isinstance(sealed, Sealed)
    contract = compiled("payments")
    arguments = {"account": ACCOUNT, "recipient": NEW_IBAN, "amount": "25.00", "reference": "Deposit"}
    assert json.loads(asked.arguments or "") == arguments
    assert asked.args_sha256 == hashlib.sha256((asked.arguments or "").encode()).hexdigest()
    expected = {
        "run_id": execution.run_id,
        "approval_id": outcome.approval_id,
        "call": 1,
        "operation": "send_payment",
        "program_sha256": opened.program_sha256,
        "contract": "payments",
        "version": contract.version,
        "contract_sha256": contract.sha256,
        "principal": "ada",
        "logical_run_id": execution.run_id,  # the first run of its chain
        "reason": "recipient not a saved payee",
        "clause": "approval:send_payment",
        "boundary": "new_recipient_confirmed",
        "approver_scope": "payments:approve",  # the contract's approvals block
        "provenance": {"recipient": ("request",)},
        "secret_params": (),
        "masked_inputs": (),
        "line": None,  # reported by the guest (another part of issue 16); none here
    }
    assert {name: getattr(asked, name) for name in expected} == expected
    # expires: the gate's clock at the request plus the contract's 24h
    assert datetime.fromisoformat(asked.expires) - datetime.fromisoformat(asked.at) == timedelta(hours=24)
    assert [(s.name, s.operation) for s in asked.lookups] == [("account", "get_account"), ("payees", "list_payees")]
    (quota,) = asked.quotas
    assert (quota.id, quota.amount, quota.total, quota.max) == ("daily_outflow", 2500, 0, 200000)
    assert (sealed.run_status, sealed.cause, sealed.approval_id) == (
        "awaiting_approval",
        "APPROVAL_REQUIRED",
        outcome.approval_id,
    )
    assert transfers() == []  # the backend was never asked to pay


def test_a_paused_call_is_not_counted_by_its_quota(bank: Bank) -> None:
    assert bank.run(inputs={"iban": NEW_IBAN, "amount": "1900.00"}).status == "awaiting_approval"
    # 1,900.00 waits; had it counted, 200.00 more would exceed the 2,000.00 daily quota.
    payee = "from decimal import Decimal\n" + PAY_NEW_IBAN.split("\n", 1)[1]
    allowed = bank.run(payee, {"iban": "DE89370400440532013000", "amount": "200.00"})
    assert allowed.status == "done", allowed.text
    (decision,) = [r for r in bank.receipts(allowed.run_id) if isinstance(r, Decision)]
    assert [q.total for q in decision.quotas] == [0]


def test_a_call_the_contract_forbids_anyway_is_refused_never_paused(bank: Bank) -> None:
    # From another customer's account to a new IBAN: the approval rule would hold, but the
    # guard refuses first, so nobody is asked to approve a forbidden payment.
    program = PAY_NEW_IBAN.replace('account="ACC-1001"', f'account="{backend.OTHER_ACCOUNT}"')
    execution = bank.run(program)
    assert (execution.status, execution.cause) == ("refused", "GUARD_VIOLATION")
    assert not isinstance(execution.outcome, Paused)
    assert [type(r).__name__ for r in bank.receipts(execution.run_id)] == ["Opened", "Decision", "Sealed"]
    assert transfers() == []


def test_the_bool_form_pauses_too_with_the_default_policy(bank: Bank) -> None:
    from examples.invoices import backend as invoices

    invoices.seed()
    execution = bank.run(
        'invoices.pay_invoice(number="INV-1003")',
        {},
        contract=compiled("invoices"),
        principal=Principal("kim", frozenset({"invoices:pay"})),
    )
    assert execution.status == "awaiting_approval"
    asked = bank.request(execution.run_id)
    assert (asked.operation, asked.reason) == ("pay_invoice", "every call of pay_invoice needs a human's approval")
    assert asked.approver_scope == "invoices:approve"  # invoices has no approvals block: <contract>:approve
    assert datetime.fromisoformat(asked.expires) - datetime.fromisoformat(asked.at) == timedelta(hours=24)
    assert asked.observed is not None
    assert asked.observed.state == "approved"
    assert invoices.get_invoice(number="INV-1003")["state"] == "approved"


def test_a_run_with_secret_inputs_cannot_pause_and_is_refused(bank: Bank) -> None:
    execution = bank.run(inputs={"iban": NEW_IBAN, "amount": "25.00", "pin": "4711-0815"}, secret_inputs=("pin",))
    assert (execution.status, execution.cause) == ("refused", "APPROVAL_REQUIRED")
    assert execution.approval_id is None
    receipts = bank.receipts(execution.run_id)
    assert not [r for r in receipts if isinstance(r, ApprovalRequested)]
    (denied,) = [r for r in receipts if isinstance(r, Decision)]
    assert (denied.decision, denied.code, denied.clause) == (
        "DENY",
        "APPROVAL_REQUIRED",
        "requires_approval:send_payment",
    )
    assert denied.message == (
        "send_payment requires human approval here: recipient not a saved payee; the run has secret inputs, which "
        "Charter never stores, so it cannot be paused and resumed; ask without secret inputs or have the call "
        "approved another way. (hard boundary new_recipient_confirmed: Never pay an IBAN that is not a saved payee "
        "without the holder's confirmation.)"
    )
    assert transfers() == []


# -- the decision, applied at the paused call -------------------------------------------------


def test_an_approved_call_executes_once_under_a_key_derived_from_the_approval(bank: Bank) -> None:
    paused = bank.run()
    asked = bank.request(paused.run_id)
    granted = granted_for(asked)
    resumed = bank.resume(paused.run_id, granted)
    assert resumed.status == "done", resumed.outcome
    assert isinstance(resumed.outcome, Completed)
    (decision,) = resumed.decisions()
    assert (decision.decision, decision.code, decision.call) == ("ALLOW", "OK", 1)
    assert decision.approval_id == asked.approval_id
    assert decision.idempotency_key == write_key(asked.approval_id, 1)
    assert decision.idempotency_key != write_key(paused.run_id, 1)  # not the logical run's own key
    assert decision.args_sha256 == asked.args_sha256
    assert [q.total for q in decision.quotas] == [0]  # every check ran again, quotas included
    [sent] = transfers()
    assert (sent["recipient"], sent["amount"]) == (NEW_IBAN, "25.00")
    # A second resume of the same approval (a crash recovered) sends the same key: the bank
    # applies it once, so the approved payment is never made twice.
    again = bank.resume(paused.run_id, granted)
    (repeated,) = again.decisions()
    assert repeated.idempotency_key == decision.idempotency_key
    assert [t["id"] for t in transfers()] == [sent["id"]]


def test_state_changed_while_waiting_makes_the_approved_call_fail_its_recheck(bank: Bank) -> None:
    from examples.invoices import backend as invoices

    invoices.seed()
    contract = compiled("invoices")
    kim = Principal("kim", frozenset({"invoices:pay"}))
    paused = bank.run('invoices.pay_invoice(number="INV-1003")', {}, contract=contract, principal=kim)
    asked = bank.request(paused.run_id)
    invoices.pay_invoice(number="INV-1003")  # paid at the bank's counter while the request waited
    resumed = bank.resume(paused.run_id, granted_for(asked), contract=contract, principal=kim)
    (decision,) = resumed.decisions()
    assert (decision.decision, decision.code) == ("DENY", "STATE_VIOLATION")  # the approval bypasses nothing
    assert decision.approval_id == asked.approval_id
    assert (resumed.status, resumed.cause) == ("refused", "STATE_VIOLATION")
    assert "it is paid" in decision.message
    assert invoices.get_invoice(number="INV-1003")["state"] == "paid"


def test_a_denied_approval_is_a_denial_the_program_can_catch(bank: Bank) -> None:
    paused = bank.run()
    asked = bank.request(paused.run_id)
    program = (
        "from decimal import Decimal\ntry:\n"
        '    payments.send_payment(account="ACC-1001", recipient=inputs["iban"], amount=Decimal(inputs["amount"]),\n'
        '                          reference="Deposit")\n'
        "except ContractViolation as error:\n    conclude(f'{error.code}: {error.reason}')\n"
    )
    # The same call (same arguments, so the same hash) from a program that catches the denial.
    resumed = bank.resume(
        paused.run_id, granted_for(asked, "denied", reason="not the landlord's account"), program=program
    )
    assert isinstance(resumed.outcome, Completed)
    assert resumed.outcome.answer == "APPROVAL_DENIED: send_payment was denied by rita: not the landlord's account"
    (decision,) = resumed.decisions()
    assert (decision.decision, decision.code, decision.clause, decision.approval_id) == (
        "DENY",
        "APPROVAL_DENIED",
        "approval:send_payment",
        asked.approval_id,
    )
    assert decision.lookups == ()  # refused before the gate read anything
    assert transfers() == []


@pytest.mark.parametrize(
    ("inputs", "program"),
    [
        pytest.param({"iban": NEW_IBAN, "amount": "2500.00"}, None, id="other-arguments"),
        pytest.param(
            {"iban": NEW_IBAN, "amount": "25.00"}, 'payments.get_profile()\nconclude("x")', id="other-operation"
        ),
        pytest.param({"iban": OTHER_NEW_IBAN, "amount": "25.00"}, None, id="another-recipient"),
    ],
)
def test_a_call_other_than_the_approved_one_halts_the_run_diverged(
    bank: Bank, inputs: dict[str, str], program: str | None
) -> None:
    paused = bank.run()
    asked = bank.request(paused.run_id)
    resumed = bank.resume(paused.run_id, granted_for(asked), inputs=inputs, program=program)
    assert isinstance(resumed.outcome, Halted)
    assert resumed.outcome.code == "DIVERGED"
    assert asked.approval_id in resumed.outcome.reason
    assert (resumed.status, resumed.cause) == ("failed", "DIVERGED")
    assert [type(r).__name__ for r in resumed.receipts] == ["Opened", "Sealed"]  # nothing decided, nothing acted
    assert not [r for r in resumed.receipts if isinstance(r, Outcome)]
    assert transfers() == []


def test_a_later_flagged_call_pauses_again(bank: Bank) -> None:
    program = (
        "from decimal import Decimal\n"
        'a = payments.send_payment(account="ACC-1001", recipient=inputs["iban"], amount=Decimal("10.00"), '
        'reference="one")\n'
        'b = payments.send_payment(account="ACC-1001", recipient=inputs["other"], amount=Decimal("20.00"), '
        'reference="two")\nconclude("both")\n'
    )
    paused = bank.run(program, {"iban": NEW_IBAN, "other": OTHER_NEW_IBAN})
    first = bank.request(paused.run_id)
    resumed = bank.resume(paused.run_id, granted_for(first))
    assert isinstance(resumed.outcome, Paused)
    assert resumed.status == "awaiting_approval"
    second = bank.request(resumed.run_id)
    assert (second.call, second.operation, resumed.outcome.call) == (2, "send_payment", 2)
    assert second.approval_id not in (first.approval_id,)
    assert second.logical_run_id == paused.run_id  # one logical run along the chain
    assert json.loads(second.arguments or "")["recipient"] == OTHER_NEW_IBAN
    assert [t["recipient"] for t in transfers()] == [NEW_IBAN]
    sealed = resumed.receipts[-1]
    assert isinstance(sealed, Sealed)
    assert sealed.approval_id == second.approval_id


# -- the Runtime Agent ------------------------------------------------------------------------


def test_an_intent_concludes_awaiting_approval_without_a_second_attempt(bank: Bank) -> None:
    model = ScriptedModel([f"```python\n{PAY_NEW_IBAN}```"])  # a second request would exhaust the script
    charter = Charter(model=model, runner=bank.runner)
    conclusion = charter.handle(
        "Pay my landlord's deposit of 25.00 to their new IBAN",
        contract=compiled("payments"),
        principal=bank.holder(),
        inputs={"iban": NEW_IBAN, "amount": "25.00"},
    )
    assert (conclusion.status, conclusion.cause, conclusion.attempts) == ("awaiting_approval", "APPROVAL_REQUIRED", 1)
    assert len(model.requests) == 1  # no retry, no explanation round
    receipts = bank.receipts(conclusion.run_id)
    concluded = receipts[-1]
    assert isinstance(concluded, Concluded)
    (program_run,) = concluded.program_runs
    asked = bank.request(program_run)
    assert conclusion.approval_id == concluded.approval_id == asked.approval_id
    assert conclusion.data == {
        "approval_id": asked.approval_id,
        "run_id": program_run,
        "operation": "send_payment",
        "call": 1,
        "reason": "recipient not a saved payee",
    }
    assert json.loads(concluded.data or "") == conclusion.data
    assert conclusion.reason is not None
    assert asked.approval_id in conclusion.reason
    assert concluded.status == "awaiting_approval"
    assert transfers() == []
    assert Decimal(backend.get_account(id=ACCOUNT)["balance"]) == Decimal("3250.00")
