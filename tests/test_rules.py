"""Principal attributes, any-of sequences and conditional approval (contract v2), end to end:
the real sandbox, the contract gate and a real audit log, over tests/data/transfers.yaml."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from charter.agent._tokens import estimate_tokens
from charter.audit import ApprovalRequested, Asked, AuditLog, Decision, Opened
from charter.compiler import CompiledContract, compile_contract
from charter.contract import load_contract
from charter.errors import InvalidPrincipal
from charter.principal import Principal, parse_attribute
from charter.registry import Registry
from charter.runner import Execution, Runner
from charter.sandbox import Sandbox
from tests.conftest import ROOT, charter

CONTRACT = ROOT / "tests" / "data" / "transfers.yaml"
PAY = frozenset({"bank:pay", "bank:close"})
GOLD = {"account_id": "A1", "daily_limit": "2000.00", "tier": "gold"}
BASIC = {**GOLD, "tier": "basic"}
D = "from decimal import Decimal\n"
READ = 'transfers.get_standing_orders(account="A1")\n'


@functools.cache
def transfers() -> CompiledContract:
    return compile_contract(load_contract(CONTRACT))


@dataclass
class Bank:
    runner: Runner
    log: AuditLog

    def run(self, program: str, attributes: Mapping[str, Any] = GOLD, scopes: frozenset[str] = PAY) -> Execution:
        """Run `program` for ada with `attributes`; a program that does not conclude ends with "ok"."""
        principal = Principal("ada", scopes, attributes)
        if "conclude(" not in program:
            program += '\nconclude("ok")'
        return self.runner.execute(program, contract=transfers(), principal=principal)

    def decisions(self, run_id: str) -> list[Decision]:
        return [r for r in self.log.run(run_id).receipts if isinstance(r, Decision)]


@pytest.fixture
def bank(charter_home: Path, shared_sandbox: Sandbox) -> Bank:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.data import rules_backend

    rules_backend.reset()
    log = AuditLog(charter_home / "audit.db")
    return Bank(Runner(audit=log, sandbox=shared_sandbox), log)


def sent() -> list[dict[str, Any]]:
    from tests.data import rules_backend

    return [d for d in rules_backend.done() if "amount" in d]


def pay(amount: str, account: str = "A1") -> str:
    return f'transfers.send_payment(account="{account}", amount=Decimal("{amount}"), recipient="GB01")\n'


# -- principal attributes ------------------------------------------------------------------


def test_attributes_reach_guards_typed_and_are_recorded_in_the_opened_receipt(bank: Bank) -> None:
    execution = bank.run(D + READ + pay("1999.99") + 'conclude("paid")')
    assert (execution.status, execution.answer) == ("done", "paid")
    assert sent() == [{"account": "A1", "amount": "1999.99", "recipient": "GB01"}]
    opened = bank.log.run(execution.run_id).opened
    assert isinstance(opened, Opened)
    assert opened.attributes == GOLD
    [_, payment] = bank.decisions(execution.run_id)
    assert (payment.decision, payment.code, payment.approval) == ("ALLOW", "OK", None)


def test_a_payment_above_the_principals_own_limit_is_a_guard_violation(bank: Bank) -> None:
    execution = bank.run(D + READ + pay("2000.01"))
    assert (execution.status, execution.cause) == ("refused", "GUARD_VIOLATION")
    assert execution.reason == (
        "send_payment refused: A payment is at most the principal's daily limit. (guard within_limit)"
    )
    # The limit is the principal's: another principal's limit lets the same payment through.
    raised = bank.run(D + READ + pay("2000.01"), attributes={**GOLD, "daily_limit": "5000"})
    assert raised.status == "done", raised.reason
    other_account = bank.run(D + READ + pay("1.00", account="A2"))
    assert (other_account.cause, other_account.reason) == (
        "GUARD_VIOLATION",
        "send_payment refused: Payments leave only the principal's own account. (guard own_account)",
    )
    assert [s["amount"] for s in sent()] == ["2000.01"]


def test_a_missing_attribute_denies_naming_it_and_how_the_operator_binds_it(bank: Bank) -> None:
    execution = bank.run(D + READ + pay("1.00"), attributes={"account_id": "A1", "tier": "gold"})
    [read, payment] = bank.decisions(execution.run_id)
    assert (read.decision, read.code) == ("ALLOW", "OK")  # a rule without attributes needs none
    assert (payment.decision, payment.code, payment.clause) == (
        "DENY",
        "ATTRIBUTE_MISSING",
        "principal.attributes.daily_limit",
    )
    assert payment.message == (
        "send_payment refused: its rules use the principal attribute daily_limit (money), which principal ada "
        "does not have; the operator binds it with `charter token add --attr daily_limit=...` or "
        "`charter exec --attr daily_limit=...`."
    )
    assert sent() == []


def test_a_mistyped_attribute_denies_attribute_invalid_without_echoing_it(bank: Bank) -> None:
    execution = bank.run(D + READ + pay("1.00"), attributes={**GOLD, "daily_limit": "abc"})
    [_, payment] = bank.decisions(execution.run_id)
    assert (payment.code, payment.clause) == ("ATTRIBUTE_INVALID", "principal.attributes.daily_limit")
    assert payment.message == (
        "send_payment refused: the principal attribute daily_limit of principal ada is not a valid money, the "
        "type the contract declares for it (Expected `money` as a decimal string of ASCII digits with at most 2 "
        'decimal places, no exponent or spaces (e.g. "12.50")); the operator binds it with `charter token add '
        "--attr daily_limit=...` or `charter exec --attr daily_limit=...`."
    )
    enum = bank.run(D + READ + pay("1.00"), attributes={**GOLD, "tier": "platinum"})
    assert enum.cause == "ATTRIBUTE_INVALID"
    assert "tier of principal ada is not a valid Tier" in (enum.reason or "")
    cents = bank.run(D + READ + pay("1.00"), attributes={**GOLD, "daily_limit": "1.001"})
    assert cents.cause == "ATTRIBUTE_INVALID"
    assert sent() == []


@pytest.mark.parametrize(
    "limit",
    ["2e3", " 2000.00", "2000.00 ", "\uff12\uff10\uff10\uff10", "2_000"],
    ids=["exponent", "leading-space", "trailing-space", "full-width", "underscore"],
)
def test_a_money_attribute_is_exactly_ascii_decimal_text(bank: Bank, limit: str) -> None:
    # Decimal() reads each as 2000: an operator's typo must not become a limit silently.
    execution = bank.run(D + READ + pay("1.00"), attributes={**GOLD, "daily_limit": limit})
    [_, payment] = bank.decisions(execution.run_id)
    assert (payment.code, payment.clause) == ("ATTRIBUTE_INVALID", "principal.attributes.daily_limit")
    assert "(Expected `money` as a decimal string of ASCII digits with at most 2 decimal places" in payment.message
    assert sent() == []


def scalar_attributes_contract(tmp_path: Path) -> CompiledContract:
    """transfers.yaml with an int, a float and a bool attribute that a guard reads."""
    source = CONTRACT.read_text(encoding="utf-8")
    source = source.replace("tier: Tier}", "tier: Tier, max_items: int, ratio: float, vip: bool}")
    source = source.replace(
        "when: params.amount <= principal.attributes.daily_limit",
        "when: params.amount <= principal.attributes.daily_limit && principal.attributes.max_items > 0 "
        "&& principal.attributes.ratio > 0.0 && principal.attributes.vip",
    )
    path = tmp_path / "transfers.yaml"
    path.write_text(source, encoding="utf-8")
    return compile_contract(load_contract(path))


SCALARS = {"max_items": "3", "ratio": "0.5", "vip": "true"}


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("max_items", "\uff13", "Expected `int` as ASCII digits with an optional minus, e.g. 42"),  # full-width 3
        ("max_items", " 3", "Expected `int` as ASCII digits with an optional minus, e.g. 42"),
        ("max_items", "1_0", "Expected `int` as ASCII digits with an optional minus, e.g. 42"),
        ("ratio", "nan", "Expected `float` as a JSON number, e.g. 0.25 or 1e-3"),
        ("ratio", "0.5 ", "Expected `float` as a JSON number, e.g. 0.25 or 1e-3"),
        ("ratio", "\uff10.5", "Expected `float` as a JSON number, e.g. 0.25 or 1e-3"),
        ("vip", " true", "Expected `bool` as true or false"),
    ],
    ids=["int-full-width", "int-space", "int-underscore", "float-nan", "float-space", "float-full-width", "bool-space"],
)
def test_scalar_attributes_are_read_as_json_writes_them(
    bank: Bank, tmp_path: Path, name: str, text: str, expected: str
) -> None:
    # int() and float() take full-width digits, spaces and underscores; an attribute is the JSON text.
    contract = scalar_attributes_contract(tmp_path)
    principal = Principal("ada", PAY, {**GOLD, **SCALARS})
    fine = bank.runner.execute(D + READ + pay("1.00") + 'conclude("ok")', contract=contract, principal=principal)
    assert fine.status == "done", fine.outcome
    principal = Principal("ada", PAY, {**GOLD, **SCALARS, name: text})
    execution = bank.runner.execute(D + READ + pay("1.00"), contract=contract, principal=principal)
    [_, payment] = bank.decisions(execution.run_id)
    assert (payment.code, payment.clause) == ("ATTRIBUTE_INVALID", f"principal.attributes.{name}")
    assert f"({expected});" in payment.message
    assert len(sent()) == 1  # only the first run's payment


def test_the_attribute_check_comes_after_scopes_and_before_the_sequence(bank: Bank) -> None:
    no_scope = bank.run(D + pay("1.00"), attributes={}, scopes=frozenset())
    assert no_scope.cause == "FORBIDDEN_SCOPE"
    missing = bank.run(D + pay("1.00"), attributes={})  # no read first either
    assert missing.cause == "ATTRIBUTE_MISSING"


def test_principal_attributes_are_read_only_and_checked() -> None:
    principal = Principal("ada", frozenset(), {"daily_limit": "2000.00"})
    with pytest.raises(TypeError):
        principal.attributes["daily_limit"] = "9999999.00"  # type: ignore[index]
    assert hash(principal) == hash(Principal("ada", frozenset(), {"daily_limit": "2000.00"}))
    assert principal != Principal("ada", frozenset(), {"daily_limit": "9000.00"})
    with pytest.raises(InvalidPrincipal, match="attribute name 'Daily' is not valid"):
        Principal("ada", frozenset(), {"Daily": "1"})
    with pytest.raises(InvalidPrincipal, match="control or invisible character"):
        Principal("ada", frozenset(), {"note": "a\u200bb"})
    assert parse_attribute("daily_limit=2000.00") == ("daily_limit", "2000.00")
    assert parse_attribute("note=a=b") == ("note", "a=b")
    with pytest.raises(InvalidPrincipal, match="has no '='"):
        parse_attribute("daily_limit")


# -- any-of sequences ------------------------------------------------------------------------


def test_an_any_of_sequence_is_met_by_any_one_member(bank: Bank) -> None:
    denied = bank.run(D + pay("1.00"))
    assert (denied.cause, denied.reason) == (
        "SEQUENCE_VIOLATION",
        "send_payment must follow one of get_standing_orders, get_standing_order in the same run: expected step "
        "get_standing_orders|get_standing_order, received step send_payment.",
    )
    [decision] = bank.decisions(denied.run_id)
    assert decision.clause == "sequence:send_payment"
    first = bank.run(D + READ + pay("1.00"))
    second = bank.run(D + 'transfers.get_standing_order(id="SO-1")\n' + pay("2.00"))
    assert (first.status, second.status) == ("done", "done")
    assert [s["amount"] for s in sent()] == ["1.00", "2.00"]


def test_an_any_of_group_of_entity_reads_counts_per_entity_beside_an_all_of_step(bank: Bank) -> None:
    program = READ + 'transfers.audit_account(id="A1")\n'
    wrong_entity = bank.run(program + 'transfers.close_account(id="A2")')
    assert wrong_entity.reason == (
        "close_account on Account A2 must follow one of get_account, audit_account on Account A2 in the same run: "
        "expected step get_account|audit_account, received step close_account."
    )
    no_all_of = bank.run('transfers.get_account(id="A1")\ntransfers.close_account(id="A1")')
    assert no_all_of.reason is not None
    assert no_all_of.reason.startswith("close_account on Account A1 must follow get_standing_orders in the same run")
    same_entity = bank.run(program + 'a = transfers.close_account(id="A1")\nconclude(a.id)')
    assert (same_entity.status, same_entity.answer) == ("done", "A1")
    from tests.data import rules_backend

    assert rules_backend.done() == [{"closed": "A1"}]


def test_an_approval_condition_over_the_entity_reads_it_first(bank: Bank) -> None:
    # No guard of close_account reads the entity: the approval condition alone makes the gate read it.
    rich = bank.run(READ + 'transfers.get_account(id="A9")\ntransfers.close_account(id="A9")')
    assert rich.status == "awaiting_approval"
    [request] = requests(bank.log, rich.run_id)
    assert (request.operation, request.reason) == ("close_account", "the account holds more than 5000.00")
    assert request.observed is not None
    assert (request.observed.entity, request.observed.key) == ("Account", "A9")
    from tests.data import rules_backend

    assert rules_backend.done() == []


# -- conditional approval ----------------------------------------------------------------------


def requests(log: AuditLog, run_id: str) -> list[ApprovalRequested]:
    return [r for r in log.run(run_id).receipts if isinstance(r, ApprovalRequested)]


def test_a_true_approval_condition_pauses_with_its_reason_in_the_receipt(bank: Bank) -> None:
    execution = bank.run(D + READ + pay("500.01"), attributes=BASIC)
    assert (execution.status, execution.cause) == ("awaiting_approval", "APPROVAL_REQUIRED")
    assert [d.operation for d in bank.decisions(execution.run_id)] == ["get_standing_orders"]  # none for the payment
    [request] = requests(bank.log, execution.run_id)
    assert (request.operation, request.clause, request.boundary, request.approval_id) == (
        "send_payment",
        "approval:send_payment",
        "big_payments_approved",
        execution.approval_id,
    )
    assert request.reason == "a payment above 500.00 from a basic account"
    assert sent() == []


def test_a_false_approval_condition_lets_the_call_through(bank: Bank) -> None:
    small = bank.run(D + READ + pay("500.00"), attributes=BASIC)
    gold = bank.run(D + READ + pay("1500.00"), attributes=GOLD)
    assert (small.status, gold.status) == ("done", "done")
    assert [d.approval for d in bank.decisions(gold.run_id)] == [None, None]
    assert [s["amount"] for s in sent()] == ["500.00", "1500.00"]


def test_approval_is_checked_only_once_every_other_check_passed(bank: Bank) -> None:
    # Above the limit AND above the approval threshold: the guard decides, no approval is asked.
    execution = bank.run(D + READ + pay("2500.00"), attributes=BASIC)
    [_, payment] = bank.decisions(execution.run_id)
    assert (payment.code, payment.approval) == ("GUARD_VIOLATION", None)
    out_of_order = bank.run(D + pay("600.00"), attributes=BASIC)
    assert out_of_order.cause == "SEQUENCE_VIOLATION"


def test_an_approval_condition_that_cannot_be_evaluated_fails_closed(bank: Bank) -> None:
    program = D + 'transfers.split_payment(account="A1", amount=Decimal("10.00"), parts=0)'
    execution = bank.run(program)
    [decision] = bank.decisions(execution.run_id)
    assert (decision.decision, decision.code, decision.clause) == (
        "DENY",
        "GATE_ERROR",
        "requires_approval:split_payment",
    )
    assert decision.message.startswith("split_payment refused: its requires_approval condition could not be evaluated")
    fine = bank.run(D + 'transfers.split_payment(account="A1", amount=Decimal("10.00"), parts=2)')
    large = bank.run(D + 'transfers.split_payment(account="A1", amount=Decimal("300.00"), parts=2)')
    assert (fine.status, large.status, large.cause) == ("done", "awaiting_approval", "APPROVAL_REQUIRED")
    assert sent() == [{"account": "A1", "amount": "10.00", "parts": 2}]


def test_the_bool_form_pauses_every_call_and_records_why(charter_home: Path, shared_sandbox: Sandbox) -> None:
    from examples.invoices import backend as invoices

    invoices.seed()
    log = AuditLog(charter_home / "audit.db")
    contract = compile_contract(load_contract(ROOT / "contracts" / "invoices.yaml"))
    execution = Runner(audit=log, sandbox=shared_sandbox).execute(
        'invoices.pay_invoice(number="INV-1003")', contract=contract, principal=Principal("kim", {"invoices:pay"})
    )
    assert [r for r in log.run(execution.run_id).receipts if isinstance(r, Decision)] == []
    [request] = requests(log, execution.run_id)
    assert (request.operation, request.clause) == ("pay_invoice", "approval:pay_invoice")
    assert request.reason == "every call of pay_invoice needs a human's approval"
    assert request.approver_scope == "invoices:approve"  # no approvals block: the default scope


# -- the prompt and stubs --------------------------------------------------------------------


def test_the_prompt_and_stubs_show_any_of_and_the_approval_condition() -> None:
    prompt, stubs = transfers().prompt_context, transfers().stub_source
    assert (
        "send_payment(account: str, amount: money, recipient: str) -> Account [write, after "
        "get_standing_orders|get_standing_order, approval if a payment above 500.00 from a basic account]"
    ) in prompt
    assert (
        "[write, after get_standing_orders, get_account|audit_account, approval if the account holds more than "
        "5000.00] # Close an account."
    ) in prompt
    assert "Must follow a successful get_standing_orders or get_standing_order in the same program." in stubs
    assert "Requires human approval if a payment above 500.00 from a basic account." in stubs
    # What each construct adds to the line: an any-of member, the approval's words around its reason.
    assert estimate_tokens("|get_standing_order") <= 12
    assert estimate_tokens(", approval if ") <= 12


# -- bound by the operator, never by the caller: tokens, HTTP, the CLI ------------------------


def test_a_tokens_attributes_reach_a_run_over_http_and_a_body_cannot_set_them(
    charter_home: Path, shared_sandbox: Sandbox
) -> None:
    from charter.agent import Charter, ScriptedModel
    from charter.server import CharterService, IdempotencyStore, TokenStore, create_app, serving

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.data import rules_backend

    rules_backend.reset()
    registry = Registry()
    registry.publish(load_contract(CONTRACT), CONTRACT.read_text(encoding="utf-8"))
    log = AuditLog(charter_home / "audit.db")
    agent = Charter(model=ScriptedModel(lambda _: 'refuse("no")'), audit=log, sandbox=shared_sandbox)
    service = CharterService.create(registry=registry, audit=log, agent=agent)
    store = TokenStore(charter_home / "tokens.yaml")
    token = store.add("ada", "ada", ["bank:pay"], {"account_id": "A1", "daily_limit": "100.00", "tier": "gold"})
    assert "daily_limit: '100.00'" in (charter_home / "tokens.yaml").read_text(encoding="utf-8")
    app = create_app(service, store, IdempotencyStore(charter_home / "idempotency.db"))
    program = D + READ + pay("150.00") + 'conclude("paid")'
    with (
        serving(app, name="charter-api") as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client,
    ):
        answer = client.post("/v1/programs", json={"contract": "transfers", "program": program}).json()
        asked = client.post("/v1/intents", json={"contract": "transfers", "intent": "Pay GB01 150.00"}).json()
        forged = [
            client.post(
                "/v1/programs",
                json={"contract": "transfers", "program": program, field: value},
            )
            for field, value in (
                ("attributes", {"daily_limit": "999999.00"}),
                ("principal", {"id": "ada", "attributes": {"daily_limit": "999999.00"}}),
            )
        ]
    assert (answer["status"], answer["cause"]) == ("refused", "GUARD_VIOLATION")
    opened = log.run(answer["run_id"]).opened
    assert isinstance(opened, Opened)
    assert opened.attributes == {"account_id": "A1", "daily_limit": "100.00", "tier": "gold"}
    intent = log.run(asked["run_id"]).opened
    assert isinstance(intent, Asked)
    assert intent.attributes == {"account_id": "A1", "daily_limit": "100.00", "tier": "gold"}
    for response in forged:  # refused outright: a caller cannot raise its own limit
        assert response.status_code == 422, response.text
    assert rules_backend.done() == []


def test_charter_token_add_and_exec_bind_attributes(charter_home: Path, tmp_path: Path) -> None:
    added = charter("token", "add", "ada", "-p", "ada", "-s", "bank:pay", "--attr", "daily_limit=50.00")
    assert added.returncode == 0, added.stderr
    listed = charter("token", "list")
    assert "ada: ada bank:pay [daily_limit=50.00]" in listed.stdout
    bad = charter("token", "add", "bob", "-p", "bob", "--attr", "Daily=1")
    assert bad.returncode == 1
    assert "attribute name 'Daily' is not valid" in bad.stderr
    published = charter("contract", "publish", str(CONTRACT))
    assert published.returncode == 0, published.stderr
    program = tmp_path / "pay.py"
    program.write_text(D + READ + pay("60.00"), encoding="utf-8")
    args = ["exec", str(program), "-c", "transfers", "-p", "ada", "-s", "bank:pay", "--json"]
    attrs = ["--attr", "account_id=A1", "--attr", "daily_limit=50.00", "--attr", "tier=gold"]
    ran = charter(*args, *attrs)
    assert ran.returncode == 2, ran.stderr  # refused: 60.00 is above ada's own 50.00
    assert '"cause": "GUARD_VIOLATION"' in ran.stdout
    run_id = json.loads(ran.stdout)["run_id"]
    shown = charter("audit", "show", run_id)
    assert 'attributes: {"account_id":"A1","daily_limit":"50.00","tier":"gold"}' in shown.stdout, shown.stdout
    twice = charter(*args, "--attr", "tier=gold", "--attr", "tier=basic")
    assert twice.returncode == 1
    assert "attribute tier is given twice" in twice.stderr
    # An attribute the contract does not declare is never read by the gate: a typo would leave
    # the real one unbound, so exec and run refuse it before anything runs.
    declared = "it declares account_id, daily_limit, tier"
    for command in (args, ["run", "pay GB01 1.00", "-c", "transfers", "-p", "ada", "-s", "bank:pay"]):
        undeclared = charter(*command, *attrs, "--attr", "daily_limt=1.00")
        assert undeclared.returncode == 1, undeclared.stdout
        assert (
            "--attr daily_limt: contract transfers 1.0.0 declares no principal attribute 'daily_limt' (did you "
            f"mean 'daily_limit'?); {declared}"
        ) in undeclared.stderr


def test_mcp_stdio_binds_the_operators_attributes_and_refuses_them_as_arguments(charter_home: Path) -> None:
    import os

    import anyio
    from mcp import Client, MCPError, StdioServerParameters

    from tests.data import rules_backend

    rules_backend.reset()
    assert charter("contract", "publish", str(CONTRACT)).returncode == 0
    args = ["-m", "charter", "mcp", "-p", "ada", "-s", "bank:pay", "--attr", "account_id=A1"]
    args += ["--attr", "daily_limit=100.00", "--attr", "tier=gold"]
    server = StdioServerParameters(command=sys.executable, args=args, env=dict(os.environ), cwd=str(ROOT))
    program = D + READ + pay("150.00")

    async def session() -> tuple[dict[str, Any], MCPError]:
        async with Client(server) as client:
            result = await client.call_tool("execute_program", {"contract": "transfers", "program": program})
            with pytest.raises(MCPError) as raised:
                await client.call_tool(
                    "execute_program",
                    {"contract": "transfers", "program": program, "attributes": {"daily_limit": "999999.00"}},
                )
            return json.loads(result.content[0].text), raised.value

    answer, refused = anyio.run(session)
    assert (answer["status"], answer["cause"]) == ("refused", "GUARD_VIOLATION")  # 150.00 > ada's 100.00
    assert "attributes" in str(refused.error)
    opened = AuditLog(charter_home / "audit.db").run(answer["run_id"]).opened
    assert isinstance(opened, Opened)
    assert opened.attributes == {"account_id": "A1", "daily_limit": "100.00", "tier": "gold"}
    assert rules_backend.done() == []
