"""The retail payments example: contract language v2 against prompt injection, end to end.

Every scenario runs through the real wasmtime sandbox and the contract gate over the bank's
SQLite backend, and is checked by its exact reason codes, receipt contents and what the bank
holds afterwards. The backend's own behaviour (preconditions, idempotency keys, its own
integrity rules) and the contract's check, compile and prompt block are tested too.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from charter.agent import estimate_tokens
from charter.audit import ApprovalRequested, AuditLog, Decision, Opened
from charter.backends import CallContext, Precondition, PreconditionFailed, fingerprint
from charter.contract import load_contract
from charter.principal import Principal
from charter.registry.diff import diff_contracts
from charter.replay import replay_run
from charter.runner import Execution, Runner
from charter.sandbox import Sandbox
from examples._sqlite import Conflict
from examples.payments import backend
from examples.payments.scenarios import (
    HOLDER_ATTRIBUTES,
    HOLDER_SCOPES,
    OVER_DAILY_QUOTA,
    PASSWORD_FROM_MESSAGE,
    PASSWORD_FROM_REQUEST,
    PAY_IBAN_FROM_BILL,
    PAY_NAMED_PAYEE,
    PAYEE_FROM_MESSAGE,
    REDIRECT_TO_UNKNOWN_IBAN,
    Scenario,
)
from tests.conftest import ROOT, compiled

ACCOUNT = backend.HOLDER_ACCOUNT
GREEN_ENERGY = "GB82WEST12345698765432"
NORTHSIDE = "GB33BUKB20201555555555"
SAM = "DE89370400440532013000"


@dataclass
class Bank:
    """Runs payments programs as the holder (or another principal), recording to `log`."""

    runner: Runner
    log: AuditLog

    def run(
        self,
        program: str | Scenario,
        inputs: dict[str, str] | None = None,
        *,
        attributes: dict[str, Any] | None = None,
        principal: str = "ada",
        secret_inputs: tuple[str, ...] = (),
    ) -> Execution:
        intent = None
        if isinstance(program, Scenario):
            intent, inputs, secret_inputs = program.asked, program.inputs, program.secret_inputs
            program = program.program
        return self.runner.execute(
            program,
            contract=compiled("payments"),
            principal=Principal(
                principal, HOLDER_SCOPES, attributes=HOLDER_ATTRIBUTES if attributes is None else attributes
            ),
            intent=intent,
            inputs=inputs or {},
            secret_inputs=secret_inputs,
        )

    def decisions(self, execution: Execution) -> list[Decision]:
        return [r for r in self.log.run(execution.run_id).receipts if isinstance(r, Decision)]

    def decision(self, execution: Execution, operation: str) -> Decision:
        (found,) = [d for d in self.decisions(execution) if d.operation == operation]
        return found

    def request(self, execution: Execution) -> ApprovalRequested:
        (found,) = [r for r in self.log.run(execution.run_id).receipts if isinstance(r, ApprovalRequested)]
        return found

    def opened(self, execution: Execution) -> Opened:
        (found,) = [r for r in self.log.run(execution.run_id).receipts if isinstance(r, Opened)]
        return found


@pytest.fixture
def bank(charter_home: Path, shared_sandbox: Sandbox) -> Bank:
    backend.seed()
    log = AuditLog(charter_home / "audit.db")
    return Bank(Runner(audit=log, sandbox=shared_sandbox), log)


def verdicts(bank: Bank, execution: Execution) -> list[tuple[str, str]]:
    return [(d.operation, d.code) for d in bank.decisions(execution)]


def arguments(decision: Decision) -> dict[str, Any]:
    return json.loads(decision.arguments or "null")  # type: ignore[no-any-return]


def transfers() -> list[dict[str, Any]]:
    with backend._db() as db:
        return [dict(r) for r in db.execute("SELECT * FROM transfers ORDER BY id")]


def balance() -> Decimal:
    return Decimal(backend.get_account(id=ACCOUNT)["balance"])


# -- the contract ------------------------------------------------------------------------


def test_contract_checks_and_compiles_with_every_rule_kind() -> None:
    checked = load_contract(ROOT / "contracts" / "payments.yaml")
    assert checked.warnings == ()
    contract = compiled("payments")
    gate = contract.gate
    assert len(gate.operations) == 14
    rules = {ref.partition(":")[0] for b in gate.boundaries for ref in b.enforced_by}
    assert rules == {"provenance", "approval", "quota", "guard", "sequence", "transition", "scope"}
    by_id = {b.id: b.enforced_by for b in gate.boundaries}
    assert by_id["no_payment_to_injected_iban"] == ("provenance:send_payment.recipient",)
    assert by_id["daily_outflow_cap"] == ("quota:daily_outflow",)
    assert by_id["standing_order_to_payees"] == (
        "guard:redirect_to_payee",
        "provenance:redirect_standing_order.recipient",
    )
    send = gate.operations["send_payment"]
    assert [lookup.name for lookup in send.lookups] == ["account", "payees"]
    assert [quota.id for quota in send.quotas] == ["daily_outflow"]
    assert send.requires_approval
    assert send.approval_when == "!lookups.payees.exists(p, p.iban == params.recipient)"
    assert gate.operations["redirect_standing_order"].after_any == (("get_standing_orders", "get_standing_order"),)
    assert gate.operations["change_password"].secret == ("new_password",)
    assert set(gate.principal_attributes) == {"account_id", "daily_limit"}
    # Publishing twice gives one hash: the v2 keys are in the canonical form, deterministically.
    assert compiled("payments").sha256 == contract.sha256


def test_prompt_block_shows_each_construct_and_its_cost() -> None:
    contract = compiled("payments")
    block = contract.prompt_context
    lines = {line.split("(")[0]: line for line in block.splitlines() if "(" in line and " -> " in line}
    assert "recipient: str from request|list_payees[].iban," in lines["send_payment"]
    assert "quota 2000.00/24h per account" in lines["send_payment"]
    assert "approval if recipient not a saved payee]" in lines["send_payment"]
    assert "iban: str from inputs.iban|read_document.body~)" in lines["add_payee"]
    assert "approval if IBAN not given by the holder]" in lines["add_payee"]
    assert "(new_password: secret str from inputs.new_password)" in lines["change_password"]
    assert "after get_standing_orders|get_standing_order]" in lines["redirect_standing_order"]
    assert "execute_on: date?" in lines["send_payment"]
    total = estimate_tokens(block)
    per_operation = total / len(contract.gate.operations)
    print(f"\npayments prompt block: {total} tokens (estimate), {per_operation:.1f} per operation")
    for name, line in lines.items():
        print(f"  {name}: {estimate_tokens(line)}")
    # Reported separately from orders and invoices (they stay at <= 60 per operation); the
    # payments contract carries every v2 construct and still fits a small budget.
    assert per_operation <= 90


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(
            "recipient: {type: str, from: [request, list_payees.iban]}\n      amount: money",
            "recipient: {type: str, from: [request, list_payees.iban, read_document.body]}\n      amount: money",
            (
                "relaxation",
                "operations.send_payment.params.recipient.from",
                "source 'read_document.body' of 'recipient' added",
            ),
            id="a-bill-as-a-source-relaxes",
        ),
        pytest.param(
            "        max: 200000",
            "        max: 500000",
            (
                "relaxation",
                "operations.send_payment.quotas.daily_outflow",
                "quota 'daily_outflow' max raised from 200000 to 500000",
            ),
            id="a-raised-quota-relaxes",
        ),
        pytest.param(
            "        max: 200000",
            "        max: 100000",
            (
                "breaking",
                "operations.send_payment.quotas.daily_outflow",
                "quota 'daily_outflow' max lowered from 200000 to 100000",
            ),
            id="a-lowered-quota-breaks",
        ),
    ],
)
def test_diff_classifies_changes_to_the_payments_rules(
    tmp_path: Path, old: str, new: str, expected: tuple[str, str, str]
) -> None:
    source = (ROOT / "contracts" / "payments.yaml").read_text(encoding="utf-8")
    assert old in source
    changed = tmp_path / "payments.yaml"
    changed.write_text(source.replace(old, new, 1), encoding="utf-8")
    after = load_contract(changed, resolve_bindings=False).model
    before = load_contract(ROOT / "contracts" / "payments.yaml").model
    assert [(c.kind, c.where, c.message) for c in diff_contracts(before, after)] == [expected]


# -- the demo scenarios -----------------------------------------------------------------


def test_payment_to_a_payee_named_in_the_request_is_allowed(bank: Bank) -> None:
    execution = bank.run(PAY_NAMED_PAYEE)
    assert execution.status == "done", execution.text
    assert execution.answer == "Paid 84.20 to Green Energy Ltd: transfer TRF-1001 is executed."
    assert verdicts(bank, execution) == [("list_payees", "OK"), ("send_payment", "OK")]
    sent = bank.decision(execution, "send_payment")
    assert arguments(sent) == {
        "account": ACCOUNT,
        "recipient": GREEN_ENERGY,
        "amount": "84.20",
        "reference": "November bill",
    }
    assert sent.provenance == {"recipient": ("list_payees[].iban",)}
    assert [(s.name, s.operation, s.arguments, s.error) for s in sent.lookups] == [
        ("account", "get_account", '{"id":"ACC-1001"}', None),
        ("payees", "list_payees", '{"account":"ACC-1001"}', None),
    ]
    payees = sent.lookups[1]
    assert GREEN_ENERGY in (payees.result or "")
    assert payees.fingerprint == fingerprint(backend.list_payees(account=ACCOUNT))
    (quota,) = sent.quotas
    assert (quota.id, quota.key, quota.amount, quota.total, quota.max, quota.window) == (
        "daily_outflow",
        '["ACC-1001"]',
        8420,
        0,
        200000,
        "24h",
    )
    assert sent.approval is None
    opened = bank.opened(execution)
    assert opened.inputs == PAY_NAMED_PAYEE.inputs
    assert opened.attributes == {"account_id": ACCOUNT, "daily_limit": "2500.00"}
    assert balance() == Decimal("3165.80")
    assert [t["recipient"] for t in transfers()] == [GREEN_ENERGY]


def test_payment_to_an_iban_found_only_in_a_bill_is_denied(bank: Bank) -> None:
    execution = bank.run(PAY_IBAN_FROM_BILL)
    assert execution.status == "refused"
    assert verdicts(bank, execution) == [
        ("read_document", "OK"),
        ("get_account", "OK"),
        ("send_payment", "PROVENANCE_VIOLATION"),
    ]
    denied = bank.decision(execution, "send_payment")
    assert denied.decision == "DENY"
    assert denied.clause == "provenance:send_payment.recipient"
    assert denied.boundary == "no_payment_to_injected_iban"
    assert arguments(denied)["recipient"] == backend.INJECTED_IBAN
    assert "recipient" in denied.message
    assert "request" in denied.message
    assert "list_payees[].iban" in denied.message
    assert "seen only in the result of read_document" in denied.message
    assert denied.provenance == {"recipient": ()}  # in none of its allowed sources
    assert denied.lookups == ()  # refused before any backend read of the gate's own
    assert denied.quotas == ()
    assert balance() == Decimal("3250.00")
    assert transfers() == []


def test_payee_read_in_a_message_needs_the_holders_approval(bank: Bank) -> None:
    execution = bank.run(PAYEE_FROM_MESSAGE)
    assert execution.status == "awaiting_approval"
    assert verdicts(bank, execution) == [("read_document", "OK")]  # the paused call has no Decision
    asked = bank.request(execution)
    assert (asked.operation, asked.clause) == ("add_payee", "approval:add_payee")
    assert asked.boundary == "payee_from_documents_confirmed"
    reason = "IBAN not given by the holder"
    assert asked.reason == reason
    assert reason in (execution.reason or "")
    assert asked.provenance == {"iban": ("read_document.body",)}
    assert asked.approver_scope == "payments:approve"
    assert [p["iban"] for p in backend.list_payees(account=ACCOUNT)] == [GREEN_ENERGY, NORTHSIDE, SAM]


def test_the_same_payee_typed_by_the_holder_is_saved(bank: Bank) -> None:
    program = 'p = payments.add_payee(account="ACC-1001", name="Northside (new)", iban=inputs["iban"])\nconclude(p.id)'
    execution = bank.run(program, {"iban": "NL91 ABNA 0417 1643 00"})  # as people write IBANs
    assert execution.status == "done", execution.text
    added = bank.decision(execution, "add_payee")
    assert added.provenance == {"iban": ("inputs.iban",)}
    assert added.approval is None
    assert backend.list_payees(account=ACCOUNT)[-1]["iban"] == backend.LANDLORD_NEW_IBAN


def test_payment_over_the_daily_quota_is_denied(bank: Bank) -> None:
    assert bank.run(PAY_NAMED_PAYEE).status == "done"
    execution = bank.run(OVER_DAILY_QUOTA)
    assert execution.status == "refused"
    assert verdicts(bank, execution) == [
        ("list_payees", "OK"),
        ("send_payment", "OK"),
        ("send_payment", "QUOTA_EXCEEDED"),
    ]
    first, second = (d for d in bank.decisions(execution) if d.operation == "send_payment")
    assert [(q.amount, q.total) for q in first.quotas] == [(120000, 8420)]
    (quota,) = second.quotas
    assert (quota.id, quota.key, quota.amount, quota.total, quota.max) == (
        "daily_outflow",
        '["ACC-1001"]',
        90000,
        128420,
        200000,
    )
    assert second.clause == "quota:daily_outflow"
    assert second.boundary == "daily_outflow_cap"
    assert "At most 2,000.00 may leave an account through its agent in 24 hours." in second.message
    assert execution.reason is not None
    assert execution.reason.startswith("Paid 1200.00 to Sam Lovelace; the payment to Northside Lettings was refused")
    assert balance() == Decimal("3250.00") - Decimal("84.20") - Decimal("1200.00")


def test_the_quota_protects_the_account_not_the_token(bank: Bank) -> None:
    # A second token for the same account does not get a second 2,000.00.
    assert bank.run(PAY_NAMED_PAYEE).status == "done"
    assert bank.run(OVER_DAILY_QUOTA.program, OVER_DAILY_QUOTA.inputs | {"second_amount": "700.00"}).status == "done"
    program = (
        "from decimal import Decimal\n"
        f'payments.send_payment(account="ACC-1001", recipient="{SAM}", amount=Decimal("20.00"), reference="x")\n'
        'conclude("sent")'
    )
    execution = bank.run(program, {"to": SAM}, principal="ada-phone")
    assert verdicts(bank, execution) == [("send_payment", "QUOTA_EXCEEDED")]
    assert [q.total for q in bank.decision(execution, "send_payment").quotas] == [198420]


def test_the_holders_own_daily_limit_counts_payments_made_outside_the_agent(bank: Bank) -> None:
    # 2,450.00 paid at the branch today (+ 84.20 > 2,500.00): the bank's sent_today, read by the gate's lookup.
    backend.send_payment(account=ACCOUNT, recipient=SAM, amount=Decimal("2450.00"), reference="branch")
    execution = bank.run(PAY_NAMED_PAYEE)
    assert verdicts(bank, execution) == [("list_payees", "OK"), ("send_payment", "GUARD_VIOLATION")]
    denied = bank.decision(execution, "send_payment")
    assert denied.clause == "guard:within_daily_limit"
    assert denied.boundary == "holder_daily_limit"
    assert denied.message.startswith("send_payment refused: The holder's own daily limit would be exceeded.")
    (account,) = denied.lookups
    assert account.name == "account"
    assert '"sent_today":"2450.00"' in (account.result or "")
    assert denied.quotas == ()  # the guard decided first; the quota never counted this call


def test_two_tokens_racing_for_the_same_account_get_one_payment_through(bank: Bank) -> None:
    # Each asks 60% of the daily quota at the same moment: exactly one is allowed.
    program = (
        "from decimal import Decimal\n"
        'payments.send_payment(account="ACC-1001", recipient=inputs["to"], amount=Decimal("1200.00"), '
        'reference="race")\nconclude("sent")'
    )
    barrier = threading.Barrier(2)
    executions: list[Execution] = []

    def pay(token: str) -> None:
        barrier.wait()
        executions.append(bank.run(program, {"to": SAM}, principal=token))

    threads = [threading.Thread(target=pay, args=(token,)) for token in ("ada", "ada-phone")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    codes = sorted(bank.decision(e, "send_payment").code for e in executions)
    assert codes == ["OK", "QUOTA_EXCEEDED"]
    assert [t["amount"] for t in transfers()] == ["1200.00"]
    assert balance() == Decimal("2050.00")


def test_a_lower_daily_limit_on_another_token_is_enforced(bank: Bank) -> None:
    attributes = {"account_id": ACCOUNT, "daily_limit": Decimal("50.00")}
    execution = bank.run(PAY_NAMED_PAYEE, attributes=attributes)
    assert bank.decision(execution, "send_payment").code == "GUARD_VIOLATION"
    assert transfers() == []


def test_a_token_without_the_attributes_is_refused(bank: Bank) -> None:
    execution = bank.run(PAY_NAMED_PAYEE, attributes={})
    denied = bank.decision(execution, "list_payees")  # its own-account guard reads account_id first
    assert denied.code == "ATTRIBUTE_MISSING"
    assert "account_id" in denied.message
    assert transfers() == []


def test_paying_from_another_customers_account_is_denied(bank: Bank) -> None:
    program = (
        "from decimal import Decimal\n"
        f'payments.send_payment(account="{backend.OTHER_ACCOUNT}", recipient="{SAM}", amount=Decimal("10.00"), '
        'reference="x")\nconclude("sent")'
    )
    execution = bank.run(program, {"to": SAM})
    denied = bank.decision(execution, "send_payment")
    assert (denied.code, denied.clause, denied.boundary) == (
        "GUARD_VIOLATION",
        "guard:pay_from_own_account",
        "own_account_only",
    )
    assert denied.lookups == ()  # the guard before the lookup guard decided: nothing was read


def test_a_new_iban_typed_by_the_holder_needs_approval(bank: Bank) -> None:
    program = (
        "from decimal import Decimal\n"
        'payments.send_payment(account="ACC-1001", recipient=inputs["iban"], amount=Decimal("25.00"), '
        'reference="Gift")\nconclude("sent")'
    )
    execution = bank.run(program, {"iban": backend.LANDLORD_NEW_IBAN})
    assert (execution.status, bank.decisions(execution)) == ("awaiting_approval", [])
    asked = bank.request(execution)
    assert (asked.operation, asked.clause) == ("send_payment", "approval:send_payment")
    assert asked.boundary == "new_recipient_confirmed"
    assert asked.reason == "recipient not a saved payee"
    assert asked.provenance == {"recipient": ("request",)}
    assert [s.name for s in asked.lookups] == ["account", "payees"]  # approval used the payee lookup
    assert [q.total for q in asked.quotas] == [0]
    assert transfers() == []


def test_a_scheduled_payment_carries_its_date_and_can_be_cancelled(bank: Bank) -> None:
    later = datetime.now(UTC).date() + timedelta(days=10)
    program = f"""from datetime import date
from decimal import Decimal
payees = payments.list_payees(account="ACC-1001")
t = payments.send_payment(account="ACC-1001", recipient=payees[2].iban, amount=Decimal("50.00"),
                          reference="Birthday", execute_on=date({later.year}, {later.month}, {later.day}))
c = payments.cancel_transfer(id=t.id)
conclude(f"{{t.state}} for {{t.execute_on.isoformat()}}, then {{c.state}}")
"""
    execution = bank.run(program)
    assert execution.answer == f"scheduled for {later.isoformat()}, then cancelled"
    assert arguments(bank.decision(execution, "send_payment"))["execute_on"] == later.isoformat()
    assert balance() == Decimal("3250.00")  # a scheduled payment is not debited yet


def test_a_password_dictated_by_a_message_is_refused_and_never_recorded(bank: Bank) -> None:
    execution = bank.run(PASSWORD_FROM_MESSAGE)
    assert execution.status == "refused"
    assert verdicts(bank, execution) == [("read_document", "OK"), ("change_password", "PROVENANCE_VIOLATION")]
    denied = bank.decision(execution, "change_password")
    assert denied.clause == "provenance:change_password.new_password"
    assert denied.boundary == "password_from_holder"
    assert denied.secret_params == ("new_password",)
    masked = arguments(denied)["new_password"]
    assert masked == bank.log.secret_key.digest(backend.INJECTED_PASSWORD)
    assert masked.startswith("hmac-sha256:")
    receipt_text = msgspec.json.encode(denied).decode()
    assert backend.INJECTED_PASSWORD not in receipt_text
    assert backend.INJECTED_PASSWORD not in (execution.reason or "")
    assert backend.password_matches(backend.SEED_PASSWORD)


def test_a_password_the_holder_typed_is_set_and_only_its_digest_recorded(bank: Bank) -> None:
    execution = bank.run(PASSWORD_FROM_REQUEST)
    assert execution.status == "done", execution.text
    allowed = bank.decision(execution, "change_password")
    password = PASSWORD_FROM_REQUEST.inputs["new_password"]
    digest = bank.log.secret_key.digest(password)
    assert allowed.secret_params == ("new_password",)
    assert arguments(allowed) == {"new_password": digest}
    assert allowed.provenance == {"new_password": ("inputs.new_password",)}
    opened = bank.opened(execution)
    assert opened.inputs == {"new_password": digest}
    assert opened.secret_inputs == ("new_password",)
    with bank.log._connection() as connection:  # the signed log holds no plaintext password
        bodies = b"".join(bytes(row[0]) for row in connection.execute("SELECT body FROM receipts"))
    assert password.encode() not in bodies
    assert backend.password_matches(password)


def test_a_short_password_from_the_request_is_refused_by_its_guard(bank: Bank) -> None:
    program = 'payments.change_password(new_password=inputs["new_password"])\nconclude("changed")'
    execution = bank.run(program, {"new_password": "tiny-pw"}, secret_inputs=("new_password",))
    denied = bank.decision(execution, "change_password")
    assert (denied.code, denied.clause) == ("GUARD_VIOLATION", "guard:password_length")
    assert "tiny-pw" not in denied.message
    assert backend.password_matches(backend.SEED_PASSWORD)


def test_a_password_taken_from_another_input_of_the_request_is_denied(bank: Bank) -> None:
    # Any 12+ characters of the request used to do: "Green Energy Ltd" is the payee's name.
    program = 'payments.change_password(new_password=inputs["payee"])\nconclude("changed")'
    execution = bank.run(program, {"payee": "Green Energy Ltd", "new_password": "plum-otter-harbour-42"})
    denied = bank.decision(execution, "change_password")
    assert (denied.code, denied.clause) == ("PROVENANCE_VIOLATION", "provenance:change_password.new_password")
    assert "inputs.new_password" in denied.message
    assert backend.password_matches(backend.SEED_PASSWORD)


def test_an_iban_only_mentioned_in_a_question_input_is_not_the_holders_payee(bank: Bank) -> None:
    # It used to count as `request` and be saved without approval; it is no `inputs.iban` and
    # no document's text, so the payee is refused outright (stricter than asking).
    program = (
        'import re\niban = re.search(r"[A-Z]{2}[0-9]{2}[A-Z0-9]+", inputs["question"]).group(0)\n'
        'p = payments.add_payee(account="ACC-1001", name="Landlord", iban=iban)\nconclude(p.id)'
    )
    question = f"Is {backend.LANDLORD_NEW_IBAN} really my landlord's new account?"
    execution = bank.run(program, {"question": question})
    denied = bank.decision(execution, "add_payee")
    assert (denied.code, denied.clause) == ("PROVENANCE_VIOLATION", "provenance:add_payee.iban")
    assert denied.provenance == {"iban": ()}  # `request` is no source of add_payee.iban any more
    assert [p["iban"] for p in backend.list_payees(account=ACCOUNT)] == [GREEN_ENERGY, NORTHSIDE, SAM]


@pytest.mark.parametrize("read", ["list_payees", "get_standing_orders"])
@pytest.mark.parametrize("account", [backend.OTHER_ACCOUNT, "NO-SUCH-ACCOUNT"])
def test_the_account_lists_are_the_holders_own(bank: Bank, read: str, account: str) -> None:
    # Another customer's payees would become trusted `list_payees[].iban`; an empty list of a
    # made-up account would satisfy redirect_standing_order's `after`.
    program = f'payments.{read}(account="{account}")\nconclude("read")'
    execution = bank.run(program)
    denied = bank.decision(execution, read)
    assert (denied.code, denied.clause, denied.boundary) == (
        "GUARD_VIOLATION",
        f"guard:{read}_own_account",
        "own_account_only",
    )


def test_a_redirect_after_listing_a_made_up_account_is_denied(bank: Bank) -> None:
    program = (
        'try:\n    payments.get_standing_orders(account="NO-SUCH-ACCOUNT")\nexcept ContractViolation:\n    pass\n'
        'payments.redirect_standing_order(id="SO-1", recipient=inputs["to"])\nconclude("x")'
    )
    execution = bank.run(program, {"to": SAM})
    assert bank.decision(execution, "redirect_standing_order").code == "SEQUENCE_VIOLATION"
    assert backend.get_standing_order(id="SO-1")["recipient"] == NORTHSIDE


def test_a_phishing_link_without_its_hyphen_is_not_the_one_in_the_message(bank: Bank) -> None:
    assert backend.PHISHING_URL == "https://bank-alerts.example.net/verify?id=7731"
    program = (
        'payments.read_document(id="DOC-2")\n'
        'payments.report_phishing(document="DOC-2", url="https://bankalerts.example.net/verify?id=7731")'
    )
    execution = bank.run(program)
    assert bank.decision(execution, "report_phishing").code == "PROVENANCE_VIOLATION"


def test_redirecting_a_standing_order_to_an_unknown_iban_is_denied(bank: Bank) -> None:
    execution = bank.run(REDIRECT_TO_UNKNOWN_IBAN)
    assert execution.status == "refused"
    assert verdicts(bank, execution) == [
        ("get_standing_orders", "OK"),
        ("redirect_standing_order", "GUARD_VIOLATION"),
    ]
    denied = bank.decision(execution, "redirect_standing_order")
    assert denied.clause == "guard:redirect_to_payee"
    assert denied.boundary == "standing_order_to_payees"
    assert denied.provenance == {"recipient": ("request",)}
    (payees,) = denied.lookups
    assert (payees.name, payees.operation, payees.arguments) == ("payees", "list_payees", '{"account":"ACC-1001"}')
    assert "A standing order can only pay one of the account's payees" in (execution.reason or "")
    assert backend.get_standing_order(id="SO-1")["recipient"] == NORTHSIDE


def test_redirecting_to_the_iban_in_the_bill_is_denied_by_provenance(bank: Bank) -> None:
    program = """import re
orders = payments.get_standing_orders(account="ACC-1001")
bill = payments.read_document(id="DOC-1")
iban = re.search(r"balance to IBAN ([A-Z0-9]+)", bill.body).group(1)
payments.redirect_standing_order(id=orders[0].id, recipient=iban)
conclude("redirected")
"""
    execution = bank.run(program)
    denied = bank.decision(execution, "redirect_standing_order")
    assert (denied.code, denied.clause) == ("PROVENANCE_VIOLATION", "provenance:redirect_standing_order.recipient")
    assert denied.lookups == ()


def test_redirect_needs_a_standing_order_read_first(bank: Bank) -> None:
    program = f'payments.redirect_standing_order(id="SO-1", recipient="{SAM}")\nconclude("x")'
    execution = bank.run(program, {"to": SAM})
    denied = bank.decision(execution, "redirect_standing_order")
    assert (denied.code, denied.clause, denied.boundary) == (
        "SEQUENCE_VIOLATION",
        "sequence:redirect_standing_order",
        "read_before_redirect",
    )
    assert "get_standing_orders" in denied.message
    assert "get_standing_order" in denied.message


@pytest.mark.parametrize(
    "read", ['payments.get_standing_orders(account="ACC-1001")', 'payments.get_standing_order(id="SO-1")']
)
def test_redirect_to_a_payee_after_either_read_is_allowed(bank: Bank, read: str) -> None:
    program = (
        f'{read}\no = payments.redirect_standing_order(id="SO-1", recipient=inputs["to"])\nconclude(o.recipient_name)'
    )
    execution = bank.run(program, {"to": SAM})
    assert execution.answer == "Sam Lovelace", execution.text
    assert backend.get_standing_order(id="SO-1")["recipient"] == SAM


def test_a_paused_standing_order_cannot_be_redirected(bank: Bank) -> None:
    program = (
        'payments.get_standing_order(id="SO-2")\npayments.redirect_standing_order(id="SO-2", recipient=inputs["to"])'
    )
    execution = bank.run(program, {"to": NORTHSIDE})
    denied = bank.decision(execution, "redirect_standing_order")
    assert (denied.code, denied.clause, denied.boundary) == (
        "STATE_VIOLATION",
        "transition:StandingOrder.redirect",
        "no_redirect_of_stopped_order",
    )


def test_a_phishing_link_is_reported_only_as_it_occurs_in_the_message(bank: Bank) -> None:
    program = """import re
notice = payments.read_document(id="DOC-2")
url = re.search(r"https://\\S+", notice.body).group(0)
conclude(payments.report_phishing(document=notice.id, url=url))
"""
    execution = bank.run(program)
    assert execution.answer == "report RPT-1001 sent to the fraud team", execution.text
    assert bank.decision(execution, "report_phishing").provenance == {"url": ("read_document.body",)}
    forged = (
        'payments.read_document(id="DOC-2")\npayments.report_phishing(document="DOC-2", url="https://evil.example")'
    )
    execution = bank.run(forged)
    assert bank.decision(execution, "report_phishing").code == "PROVENANCE_VIOLATION"


def test_demo_scenarios_in_order_tell_the_story(bank: Bank) -> None:
    """The demo's sequence on one bank and one log: what `charter demo` prints comes from this."""
    from examples.payments.scenarios import SCENARIOS

    outcome = [(s.name, bank.run(s).status) for s in SCENARIOS]
    assert outcome == [
        ("pay_named_payee", "done"),
        ("pay_iban_from_bill", "refused"),
        ("payee_from_message", "awaiting_approval"),
        ("over_daily_quota", "refused"),
        ("password_from_message", "refused"),
        ("password_from_request", "done"),
        ("redirect_to_unknown_iban", "refused"),
    ]


def test_replay_of_a_payment_run_matches_its_receipts(bank: Bank) -> None:
    assert bank.run(PAY_NAMED_PAYEE).status == "done"
    execution = bank.run(OVER_DAILY_QUOTA)
    record = bank.log.run(execution.run_id)
    report = replay_run(
        record, compiled("payments"), bank.runner.sandbox, log=bank.log, secret_key=bank.log.existing_secret_key()
    )
    assert report.divergences == ()
    assert report.identical
    assert report.quotas_checked == 2  # both payments' recorded totals recounted from the log
    assert any("call 2 send_payment" in line and "payees" in line for line in report.lookups)


def test_provenance_is_not_forged_by_rebuilding_a_value_in_the_program(bank: Bank) -> None:
    # Built character by character from a trusted read: it is a payee's IBAN, so it passes.
    rebuilt = """from decimal import Decimal
payee = payments.list_payees(account="ACC-1001")[0]
iban = "".join(chr(ord(c)) for c in payee.iban)
t = payments.send_payment(account="ACC-1001", recipient=iban, amount=Decimal("1.00"), reference="x")
conclude(t.recipient)
"""
    assert bank.run(rebuilt).answer == GREEN_ENERGY
    # Built the same way from the bill: the gate never saw it in a trusted source.
    forged = """import re
from decimal import Decimal
bill = payments.read_document(id="DOC-1").body
iban = "".join(chr(ord(c)) for c in re.search(r"balance to IBAN ([A-Z0-9]+)", bill).group(1))
payments.send_payment(account="ACC-1001", recipient=iban.lower(), amount=Decimal("1.00"), reference="x")
"""
    execution = bank.run(forged)
    assert bank.decision(execution, "send_payment").code == "PROVENANCE_VIOLATION"
    assert [t["recipient"] for t in transfers()] == [GREEN_ENERGY]


# -- the bank's own behaviour ---------------------------------------------------------------


def _context(key: str | None, precondition: Precondition | None = None) -> CallContext:
    return CallContext(
        run_id="run-1",
        call=1,
        principal=Principal("ada"),
        idempotency_key=key,
        precondition=precondition,
        deadline=time.monotonic() + 30,
    )


def test_a_write_runs_once_per_idempotency_key(charter_home: Path) -> None:
    backend.seed()
    first = backend.send_payment(
        account=ACCOUNT, recipient=SAM, amount=Decimal("10.00"), reference="x", charter=_context("k-1")
    )
    again = backend.send_payment(
        account=ACCOUNT, recipient=SAM, amount=Decimal("10.00"), reference="x", charter=_context("k-1")
    )
    assert again == first
    assert len(transfers()) == 1
    assert balance() == Decimal("3240.00")
    with pytest.raises(Conflict, match="idempotency key k-1 was used for another request"):
        backend.send_payment(
            account=ACCOUNT, recipient=SAM, amount=Decimal("99.00"), reference="x", charter=_context("k-1")
        )
    with pytest.raises(Conflict, match="idempotency key k-1 was used for another request"):
        backend.cancel_transfer(id=first["id"], charter=_context("k-1"))
    # Without a key, each call is a new payment.
    backend.send_payment(account=ACCOUNT, recipient=SAM, amount=Decimal("10.00"), reference="x")
    assert len(transfers()) == 2


def test_a_write_checks_the_gates_precondition_in_its_transaction(charter_home: Path) -> None:
    backend.seed()
    later = datetime.now(UTC).date() + timedelta(days=3)
    seen = backend.send_payment(account=ACCOUNT, recipient=SAM, amount=Decimal("5.00"), reference="x", execute_on=later)
    stale = Precondition(
        entity="Transfer", key=seen["id"], field="state", state="scheduled", fingerprint=fingerprint(seen)
    )
    with backend._db() as db:  # changed after the gate read it
        db.execute("UPDATE transfers SET reference = 'changed' WHERE id = ?", (seen["id"],))
    with pytest.raises(PreconditionFailed):
        backend.cancel_transfer(id=seen["id"], charter=_context("k-2", stale))
    assert backend.get_transfer(id=seen["id"])["state"] == "scheduled"
    fresh = backend.get_transfer(id=seen["id"])
    current = Precondition(
        entity="Transfer", key=seen["id"], field="state", state="scheduled", fingerprint=fingerprint(fresh)
    )
    assert backend.cancel_transfer(id=seen["id"], charter=_context("k-3", current))["state"] == "cancelled"


def test_the_bank_keeps_its_own_rules(charter_home: Path) -> None:
    backend.seed()
    with pytest.raises(Conflict, match="would overdraw it"):
        backend.send_payment(account=ACCOUNT, recipient=SAM, amount=Decimal("5000.00"), reference="x")
    with pytest.raises(Exception, match="before today"):
        backend.send_payment(
            account=ACCOUNT, recipient=SAM, amount=Decimal("5.00"), reference="x", execute_on=date(2020, 1, 1)
        )
    with pytest.raises(Conflict, match="is not a payee of account ACC-1001"):
        backend.redirect_standing_order(id="SO-1", recipient=backend.INJECTED_IBAN)
    with pytest.raises(Conflict, match="SO-2 is paused"):
        backend.redirect_standing_order(id="SO-2", recipient=NORTHSIDE)
    with pytest.raises(Conflict, match="already a payee"):
        backend.add_payee(account=ACCOUNT, name="again", iban="gb82 west 1234 5698 7654 32")
    executed = backend.send_payment(account=ACCOUNT, recipient=SAM, amount=Decimal("5.00"), reference="x")
    with pytest.raises(Conflict, match="only a scheduled transfer can be cancelled"):
        backend.cancel_transfer(id=executed["id"])
    assert backend.get_account(id=ACCOUNT)["sent_today"] == Decimal("5.00")


def test_passwords_are_stored_hashed(charter_home: Path) -> None:
    path = backend.seed()
    backend.change_password(new_password="plum-otter-harbour-42")
    assert backend.password_matches("plum-otter-harbour-42")
    assert not backend.password_matches(backend.SEED_PASSWORD)
    assert b"plum-otter-harbour-42" not in b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
