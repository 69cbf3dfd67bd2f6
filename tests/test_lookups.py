"""Lookups (contract language v2): reads the gate performs before deciding, with the real
sandbox, the contract gate, a Python backend and a real audit log on SQLite."""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from charter.audit import AuditLog, Decision, LookupSeen
from charter.backends import (
    BackendFailure,
    BackendNotFound,
    BackendUnavailable,
    CallContext,
    ContractBackend,
    fingerprint,
)
from charter.compiler import CompiledContract, compile_contract
from charter.contract import load_contract
from charter.errors import ContractError
from charter.principal import Principal
from charter.runner import Runner
from charter.sandbox import Sandbox
from tests.conftest import ROOT, WriteContract

CONTRACT = ROOT / "tests" / "data" / "lookups.yaml"
PAYER = Principal("ada", frozenset({"pay:write", "mail:write"}))
LANDLORD = "GB29NWBK60161331926819"
PAYEES_JSON = '[{"iban":"GB29NWBK60161331926819","name":"Landlord"},{"iban":"DE89370400440532013000","name":"Gym"}]'


class Counting(ContractBackend):
    """The test backend, counting what it was asked to do, with faults injected per operation."""

    def __init__(self, contract: CompiledContract, faults: Mapping[str, Any]) -> None:
        super().__init__(contract)
        self.faults = dict(faults)
        self.invoked: list[tuple[str, dict[str, Any]]] = []

    def invoke(self, operation: str, arguments: Mapping[str, Any], context: CallContext | None = None) -> Any:
        self.invoked.append((operation, dict(arguments)))
        fault = self.faults.get(operation)
        if isinstance(fault, BaseException):
            raise fault
        result = super().invoke(operation, arguments, context)
        return fault(result) if callable(fault) else result

    @property
    def operations(self) -> list[str]:
        return [name for name, _ in self.invoked]


class Harness:
    def __init__(self, log: AuditLog, sandbox: Sandbox) -> None:
        self.log = log
        self.sandbox = sandbox
        self.contract = compile_contract(load_contract(CONTRACT))

    def run(self, program: str, **faults: Any) -> tuple[Any, Counting, list[Decision]]:
        backend = Counting(self.contract, faults)
        runner = Runner(audit=self.log, sandbox=self.sandbox, backend_for=lambda _: backend)
        execution = runner.execute(program, contract=self.contract, principal=PAYER)
        decided = [r for r in self.log.run(execution.run_id).receipts if isinstance(r, Decision)]
        return execution, backend, decided


@pytest.fixture
def harness(charter_home: Path, shared_sandbox: Sandbox) -> Iterator[Harness]:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.data import lookups_state as data

    saved = copy.deepcopy((data.PAYEES, data.ACCOUNTS, data.CONTACTS))
    data.SENT.clear()
    yield Harness(AuditLog(charter_home / "audit.db"), shared_sandbox)
    data.PAYEES, data.ACCOUNTS, data.CONTACTS = saved
    data.SENT.clear()


def pay(recipient: str, amount: str = "10.00", account: str = "acc-1") -> str:
    return (
        "from decimal import Decimal\n"
        f"r = mailer.send_payment(account={account!r}, recipient={recipient!r}, amount=Decimal({amount!r}))\n"
        "conclude(r)\n"
    )


def mail(*recipients: str) -> str:
    return f"conclude(mailer.send_mail(recipients={list(recipients)!r}, body='hi'))\n"


def sent() -> list[dict[str, Any]]:
    from tests.data import lookups_state as data

    return data.SENT


# -- allow and deny, with the exact receipt --------------------------------------------------


def test_a_payment_to_a_known_payee_is_allowed_and_the_decision_records_both_lookups(harness: Harness) -> None:
    from tests.data import lookups_state as data

    execution, backend, [decision] = harness.run(pay(LANDLORD))
    assert execution.status == "done", execution.outcome
    assert sent() == [{"account": "acc-1", "recipient": LANDLORD, "amount": "10.00"}]
    # The gate read the payees, then the account (when within_limit was evaluated), then the write ran.
    assert backend.invoked == [
        ("list_payees", {"account": "acc-1"}),
        ("get_account", {"id": "acc-1"}),
        ("send_payment", {"account": "acc-1", "recipient": LANDLORD, "amount": pytest.approx(10)}),
    ]
    assert (decision.decision, decision.code) == ("ALLOW", "OK")
    assert decision.lookups == (
        LookupSeen(
            name="payees",
            operation="list_payees",
            arguments='{"account":"acc-1"}',
            fingerprint=fingerprint(data.PAYEES["acc-1"]),
            result=PAYEES_JSON,
            error=None,
        ),
        LookupSeen(
            name="account",
            operation="get_account",
            arguments='{"id":"acc-1"}',
            fingerprint=fingerprint(data.ACCOUNTS["acc-1"]),
            result='{"id":"acc-1","limit":"500.00","owner":"ada"}',
            error=None,
        ),
    )


def test_a_payment_to_an_unknown_iban_is_denied_by_the_lookup_guard(harness: Harness) -> None:
    execution, backend, [decision] = harness.run(pay("XX00ATTACKER"))
    assert execution.status == "refused"
    assert sent() == []
    assert backend.operations == ["list_payees"]  # the account is never read: known_payee decided first
    assert (decision.decision, decision.code, decision.clause, decision.boundary) == (
        "DENY",
        "GUARD_VIOLATION",
        "guard:known_payee",
        "known_payees_only",
    )
    assert decision.message == (
        "send_payment refused: The recipient must be one of the account's known payees. (guard known_payee) "
        "(hard boundary known_payees_only: Money goes only to the account's known payees.)"
    )
    assert [(s.name, s.arguments, s.result, s.error) for s in decision.lookups] == [
        ("payees", '{"account":"acc-1"}', PAYEES_JSON, None)
    ]


def test_an_optional_lookup_result_is_null_tested_and_a_missing_account_denies(harness: Harness) -> None:
    from tests.data import lookups_state as data

    data.PAYEES["acc-2"] = data.PAYEES["acc-1"]  # known payees, but no account acc-2
    execution, backend, [decision] = harness.run(pay(LANDLORD, account="acc-2"))
    assert execution.status == "refused"
    assert (decision.code, decision.clause) == ("GUARD_VIOLATION", "guard:within_limit")
    assert [(s.name, s.result) for s in decision.lookups] == [("payees", PAYEES_JSON), ("account", "null")]
    assert backend.operations == ["list_payees", "get_account"]


def test_the_limit_read_by_lookup_is_money_in_cents_like_params(harness: Harness) -> None:
    allowed, _, _ = harness.run(pay(LANDLORD, amount="500.00"))
    assert allowed.status == "done", allowed.outcome
    denied, _, [decision] = harness.run(pay(LANDLORD, amount="500.01"))
    assert denied.status == "refused"
    assert decision.clause == "guard:within_limit"


def test_lookups_are_not_performed_when_an_earlier_check_denies(harness: Harness) -> None:
    # An earlier guard of the same operation: no lookup, since no rule naming one was evaluated.
    _, backend, [decision] = harness.run(pay(LANDLORD, amount="0"))
    assert (decision.code, decision.clause) == ("GUARD_VIOLATION", "guard:positive_amount")
    assert backend.invoked == []
    assert decision.lookups == ()
    # A check before the guards (argument types): nothing reaches the backend either.
    program = (
        'host = conclude.__globals__["host"]\n'  # the raw host import, past the typed proxies
        "try:\n"
        '    host.call(\'send_payment\', \'{"account": "acc-1", "recipient": 1, "amount": "1"}\', 0)\n'
        "except Exception as error:\n"
        "    refuse(error.value)\n"
    )
    _, backend, [decision] = harness.run(program)
    assert decision.code == "INVALID_ARGUMENTS"
    assert backend.invoked == []
    assert decision.lookups == ()


def test_a_lookup_is_performed_once_per_call_and_again_for_the_next_call(harness: Harness) -> None:
    program = pay(LANDLORD).replace("conclude(r)\n", "") + pay(LANDLORD, amount="20.00")
    execution, backend, decided = harness.run(program)
    assert execution.status == "done", execution.outcome
    assert backend.operations == [
        "list_payees",
        "get_account",
        "send_payment",
        "list_payees",
        "get_account",
        "send_payment",
    ]
    assert [len(d.lookups) for d in decided] == [2, 2]


# -- list params checked element-wise ----------------------------------------------------------


def test_every_recipient_of_a_mail_must_be_a_known_contact(harness: Harness) -> None:
    allowed, backend, [decision] = harness.run(mail("bob@example.com", "eve@example.com"))
    assert allowed.status == "done", allowed.outcome
    assert backend.operations == ["list_contacts", "send_mail"]
    assert decision.lookups[0].result == (
        '[{"email":"bob@example.com","name":"Bob","note":null},{"email":"eve@example.com","name":"Eve","note":null}]'
    )
    denied, backend, [decision] = harness.run(mail("bob@example.com", "mallory@evil.example"))
    assert denied.status == "refused"
    assert (decision.code, decision.clause) == ("GUARD_VIOLATION", "guard:known_recipients")
    assert backend.operations == ["list_contacts"]
    assert sent() == [{"recipients": ["bob@example.com", "eve@example.com"], "body": "hi"}]


# -- LOOKUP_FAILED: every way a lookup can fail to give a checked value ------------------------


SECRET = "connection string postgres://admin:hunter2@db"


@pytest.mark.parametrize(
    ("fault", "why"),
    [
        (RuntimeError(SECRET), "the read failed"),
        (
            BackendFailure("BACKEND_ERROR", "payee service said no", detail=SECRET),
            "the read failed (payee service said no)",
        ),
        (BackendNotFound("NOT_FOUND", "no such account"), "nothing was found (no such account)"),
        (
            BackendUnavailable("binding module missing", detail=SECRET),
            "the backend cannot perform it (binding module missing)",
        ),
        (
            lambda payees: [{"iban": 7, "name": "x"}],
            "its result is not the contract's list[Payee] (Expected `str`, got `int` - at `$[0].iban`)",
        ),
        (
            lambda payees: {"iban": LANDLORD},
            "its result is not the contract's list[Payee] (Expected `array`, got `object` - at `$`)",
        ),
    ],
    ids=["raises", "backend-failure", "not-found", "unavailable", "mistyped-field", "wrong-shape"],
)
def test_a_lookup_that_fails_denies_lookup_failed_naming_it(harness: Harness, fault: Any, why: str) -> None:
    execution, backend, [decision] = harness.run(pay(LANDLORD), list_payees=fault)
    # An unavailable backend is the server's fault, as for the entity read: BACKEND_UNAVAILABLE
    # (the surfaces answer 503), not a refusal of the request.
    unavailable = isinstance(fault, BackendUnavailable)
    code = "BACKEND_UNAVAILABLE" if unavailable else "LOOKUP_FAILED"
    assert execution.status == ("failed" if unavailable else "refused")
    assert sent() == []
    assert backend.operations == ["list_payees"]
    message = (
        f"send_payment refused: lookup payees (list_payees) failed: {why}; the gate does not decide on a value it "
        "could not read."
    )
    assert (decision.decision, decision.code, decision.message) == ("DENY", code, message)
    assert decision.clause == "lookup:send_payment.payees"
    assert execution.reason is not None
    assert message in execution.reason
    assert SECRET not in execution.reason
    assert SECRET not in decision.message
    [seen] = decision.lookups
    assert (seen.name, seen.operation, seen.arguments, seen.result, seen.error) == (
        "payees",
        "list_payees",
        '{"account":"acc-1"}',
        None,
        why,
    )
    withheld = harness.log.backend_errors(execution.run_id)
    if isinstance(fault, RuntimeError) or getattr(fault, "detail", None):
        assert [w.message for w in withheld] == [SECRET]  # for the operator only
        assert decision.error_sha256 is not None


def test_a_lookup_arg_that_cannot_be_evaluated_denies_lookup_failed(
    write_contract: WriteContract, charter_home: Path, shared_sandbox: Sandbox
) -> None:
    # 10 / amount-in-cents divides by zero for a zero amount: a value fault check cannot see.
    text = CONTRACT.read_text(encoding="utf-8").replace(
        "args: {account: params.account}}", "args: {account: 'params.account + string(10 / params.amount)'}}"
    )
    text = text.replace(
        "      - id: positive_amount\n        when: params.amount > 0\n",
        "      - id: positive_amount\n        when: 'true'\n",
    )
    contract = compile_contract(load_contract(write_contract(text)))
    backend = Counting(contract, {})
    runner = Runner(audit=AuditLog(charter_home / "audit.db"), sandbox=shared_sandbox, backend_for=lambda _: backend)
    execution = runner.execute(pay(LANDLORD, amount="0"), contract=contract, principal=PAYER)
    assert execution.status == "refused"
    assert backend.invoked == []
    [decision] = [r for r in runner.audit.run(execution.run_id).receipts if isinstance(r, Decision)]
    assert decision.code == "LOOKUP_FAILED"
    assert "lookup payees (list_payees) failed: its arg 'account' could not be evaluated" in decision.message
    assert decision.lookups[0].arguments == "null"


# -- check time --------------------------------------------------------------------------------


def check_errors(write_contract: WriteContract, replace: dict[str, str]) -> list[str]:
    text = CONTRACT.read_text(encoding="utf-8")
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    with pytest.raises(ContractError) as caught:
        load_contract(write_contract(text))
    return [f"{p.line}:{p.column}: {p.message}" for p in caught.value.problems]


LOOKUP_ERRORS = [
    pytest.param(
        {"operation: list_payees,": "operation: list_payes,"},
        ["34:27: lookup 'payees' of 'send_payment' names unknown operation 'list_payes' (did you mean 'list_payees'?)"],
        id="unknown_operation",
    ),
    pytest.param(
        {"operation: list_payees,": "operation: send_mail,"},
        [
            "34:27: lookup 'payees' of 'send_payment' names write operation 'send_mail'; only a `kind: read` "
            "operation may be looked up (the gate performs a lookup before deciding, so it must not act)"
        ],
        id="lookup_of_a_write",
    ),
    pytest.param(
        {"args: {account: params.account}": "args: {acount: params.account}"},
        [
            "34:46: lookup 'payees' of 'send_payment' does not pass account, required by 'list_payees': add "
            "`args: {account: <CEL over params and principal>}`",
            "34:47: lookup 'payees' of 'send_payment' passes 'acount', which is not a param of 'list_payees' "
            "(did you mean 'account'?)",
        ],
        id="unknown_arg_and_missing_param",
    ),
    pytest.param(
        {"args: {account: params.account}": "args: {account: params.amount}"},
        ["34:56: lookup 'payees' of 'send_payment', arg 'account': params.amount is money, but the param is str"],
        id="arg_of_the_wrong_type",
    ),
    pytest.param(
        {"args: {account: params.account}": "args: {account: params.acount}"},
        [
            "34:56: lookup 'payees' of 'send_payment', arg 'account': 'params' has no field 'acount' "
            "(did you mean 'account'?)"
        ],
        id="arg_unknown_field",
    ),
    pytest.param(
        {"args: {account: params.account}": "args: {account: entity.id}"},
        [
            "34:56: lookup 'payees' of 'send_payment', arg 'account': unknown name 'entity'; a lookup arg may use params, "
            "principal"
        ],
        id="arg_uses_a_name_it_may_not",
    ),
    pytest.param(
        {"args: {account: params.account}": "args: {account: 'size(params.recipient)'}"},
        [
            "34:56: lookup 'payees' of 'send_payment', arg 'account': size(params.recipient) gives money or int, but the param is str"
        ],
        id="arg_expression_of_the_wrong_type",
    ),
    pytest.param(
        {"      payees: {operation": "      Payees: {operation"},
        ["34:7: lookup name 'Payees' of 'send_payment' must be lower snake_case"],
        id="lookup_name_not_snake_case",
    ),
    pytest.param(
        {"p.iban == params.recipient": "p.ibna == params.recipient"},
        ["41:15: guard 'known_payee': unknown field 'ibna' (did you mean 'iban'?)"],
        id="misspelled_field_inside_a_macro_over_a_lookup",
    ),
    pytest.param(
        {"params.amount <= lookups.account.limit": "params.amount <= lookups.account.limt"},
        ["44:15: guard 'within_limit': 'lookups.account' has no field 'limt' (did you mean 'limit'?)"],
        id="misspelled_field_of_a_record_lookup",
    ),
    pytest.param(
        {"lookups.account != null && params.amount": "params.amount"},
        ["44:15: guard 'within_limit': lookups.account may be null; test lookups.account != null first"],
        id="optional_lookup_without_a_null_test",
    ),
    pytest.param(
        {"lookups.payees.exists(p, p.iban == params.recipient)": "lookups.payes.exists(p, p.iban == params.recipient)"},
        ["41:15: guard 'known_payee': 'lookups' has no field 'payes' (did you mean 'payees'?)"],
        id="guard_names_an_undeclared_lookup",
    ),
    pytest.param(
        {"p.iban == params.recipient": "p.iban.startsWith(params.amount)"},
        [
            "41:15: guard 'known_payee': type error: startsWith() is not defined for the given argument types "
            "(CEL never converts types; money is an int of cents in guards)"
        ],
        id="lookup_field_compared_with_another_type",
    ),
    pytest.param(
        {"c.email == r": "c.note.startsWith(r)"},
        [
            "56:15: guard 'known_recipients': lookups.contacts.note may be null; test lookups.contacts.note != null "
            "first"
        ],
        id="optional_field_of_a_lookup_item",
    ),
]


@pytest.mark.parametrize(("replace", "expected"), LOOKUP_ERRORS)
def test_malformed_lookups_get_exact_messages(
    write_contract: WriteContract, replace: dict[str, str], expected: list[str]
) -> None:
    assert check_errors(write_contract, replace) == expected


def test_a_lookup_no_rule_uses_is_a_warning(write_contract: WriteContract) -> None:
    text = CONTRACT.read_text(encoding="utf-8").replace(
        "      contacts: {operation: list_contacts}\n",
        "      contacts: {operation: list_contacts}\n      spare: {operation: list_contacts}\n",
    )
    checked = load_contract(write_contract(text))
    assert [f"{w.line}:{w.column}: {w.message}" for w in checked.warnings] == [
        "54:7: warning: lookup 'spare' of 'send_mail' is used by no guard, approval or quota of it, so the gate "
        "never performs it; use it as lookups.spare or remove it"
    ]
    rule = compile_contract(checked).gate.operations["send_mail"]
    assert [(lk.name, lk.rules) for lk in rule.lookups] == [("contacts", ("guard:known_recipients",)), ("spare", ())]


# -- prompt and stubs: the model sees the rule's message, not how the gate checks it -----------


def test_a_lookup_guards_message_reaches_the_prompt_and_the_stubs() -> None:
    compiled = compile_contract(load_contract(CONTRACT))
    assert "Mail goes only to known contacts." in compiled.prompt_context
    assert "Guard `known_recipients`: Mail goes only to known contacts." in compiled.stub_source
    assert "Guard `known_payee`: The recipient must be one of the account's known payees." in compiled.stub_source
    assert "lookups" not in compiled.prompt_context
    assert "list_contacts()" in compiled.prompt_context


# -- diff --------------------------------------------------------------------------------------

KNOWN_PAYEE = (
    "      - id: known_payee\n"
    "        when: lookups.payees.exists(p, p.iban == params.recipient)\n"
    "        message: The recipient must be one of the account's known payees.\n"
)
PAYEES_LOOKUP = "      payees: {operation: list_payees, args: {account: params.account}}\n"


def changes(write_contract: WriteContract, before: dict[str, str], after: dict[str, str]) -> set[tuple[str, str]]:
    from charter.registry import diff_contracts

    def version(replace: dict[str, str], file: str) -> Any:
        text = CONTRACT.read_text(encoding="utf-8")
        for old, new in replace.items():
            assert old in text, old
            text = text.replace(old, new, 1)
        return load_contract(write_contract(text, name=file)).model

    return {(c.kind, c.message) for c in diff_contracts(version(before, "a.yaml"), version(after, "b.yaml"))}


NO_PAYEE_RULE = {KNOWN_PAYEE: "", PAYEES_LOOKUP: "", "    enforced_by: [{guard: known_payee}]": "    advisory: true"}


def test_diff_a_removed_lookup_guard_is_a_relaxation_and_an_added_one_breaking(write_contract: WriteContract) -> None:
    removed = changes(write_contract, {}, NO_PAYEE_RULE)
    guard = "guard 'known_payee' removed (lookups.payees.exists(p, p.iban == params.recipient))"
    lookup = "lookup 'payees' removed (list_payees(account: params.account))"
    assert ("relaxation", guard) in removed
    assert ("relaxation", lookup) in removed
    added = changes(write_contract, NO_PAYEE_RULE, {})
    assert ("breaking", guard.replace("removed", "added")) in added
    assert (
        "breaking",
        "lookup 'payees' added (list_payees(account: params.account)): the gate reads it before deciding",
    ) in added


def test_diff_a_changed_lookup_may_deny_more_and_allow_more(write_contract: WriteContract) -> None:
    other = {"args: {account: params.account}}": "args: {account: principal.id}}"}
    message = "lookup 'payees' changed from list_payees(account: params.account) to list_payees(account: principal.id)"
    assert changes(write_contract, {}, other) == {
        ("breaking", message + " (its rules check other data: may deny more)"),
        ("relaxation", message + " (its rules check other data: may allow more)"),
    }


def test_diff_a_lookup_no_rule_reads_is_additive(write_contract: WriteContract) -> None:
    spare = {
        "      contacts: {operation: list_contacts}\n": (
            "      contacts: {operation: list_contacts}\n      spare: {operation: list_contacts}\n"
        )
    }
    assert changes(write_contract, {}, spare) == {
        ("additive", "lookup 'spare' added (list_contacts()); no rule reads it")
    }


# -- audit show and replay ---------------------------------------------------------------------


def test_audit_show_and_replay_say_what_lookups_the_gate_saw(harness: Harness) -> None:
    from charter.replay import replay_run
    from tests.conftest import charter
    from tests.data import lookups_state as data

    program = pay(LANDLORD).replace("conclude(r)\n", "") + mail("mallory@evil.example")
    execution, _, decided = harness.run(program)
    assert execution.status == "refused"
    payees = fingerprint(data.PAYEES["acc-1"])
    contacts = fingerprint(data.CONTACTS)
    data.PAYEES["acc-1"] = []  # the backend moved on: replay answers from the record, never reads it
    report = replay_run(harness.log.run(execution.run_id), harness.contract, harness.sandbox)
    assert report.identical
    contacts_json = decided[1].lookups[0].result
    assert report.lookups == (
        f'call 1 send_payment: lookup payees = list_payees({{"account":"acc-1"}}) sha256 {payees[:12]}…: {PAYEES_JSON}',
        f'call 1 send_payment: lookup account = get_account({{"id":"acc-1"}}) sha256 '
        f'{fingerprint(data.ACCOUNTS["acc-1"])[:12]}…: {{"id":"acc-1","limit":"500.00","owner":"ada"}}',
        f"call 2 send_mail: lookup contacts = list_contacts({{}}) sha256 {contacts[:12]}…: {contacts_json}",
    )
    shown = charter("audit", "show", execution.run_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert '"name":"payees","operation":"list_payees"' in shown.stdout.replace(" ", "").replace("\n", "")
    text = charter("audit", "show", execution.run_id)
    assert text.returncode == 0, text.stderr
    flat = "".join(text.stdout.split())
    assert 'lookuppayees=list_payees({"account":"acc-1"})sha256' + payees[:12] in flat
    assert "lookupcontacts=list_contacts({})sha256" + contacts[:12] in flat


def test_a_large_lookup_result_is_recorded_by_its_fingerprint_only(harness: Harness) -> None:
    from charter.audit import lookup_lines
    from tests.data import lookups_state as data

    data.CONTACTS[:] = [{"email": f"person{i}@example.com", "name": "x" * 40} for i in range(100)]
    execution, _, [decision] = harness.run(mail("person7@example.com"))
    assert execution.status == "done", execution.outcome
    [seen] = decision.lookups
    assert (seen.result, seen.error, seen.fingerprint) == (None, None, fingerprint(data.CONTACTS))
    assert lookup_lines(decision) == [
        f"lookup contacts = list_contacts({{}}) sha256 {seen.fingerprint[:12]}… (result above 4096 bytes: "
        "fingerprint only)"
    ]


# -- the HTTP run view: lookups are in the receipts, for audit:read only -----------------------


def test_the_http_run_view_shows_lookups_only_to_audit_read(charter_home: Path, shared_sandbox: Sandbox) -> None:
    import httpx

    from charter.agent import Charter, ScriptedModel
    from charter.registry import Registry
    from charter.server import CharterService, IdempotencyStore, TokenStore, create_app, serving

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    registry = Registry()
    registry.publish(load_contract(CONTRACT), CONTRACT.read_text(encoding="utf-8"))
    log = AuditLog(charter_home / "audit.db")
    agent = Charter(model=ScriptedModel(lambda request: 'refuse("no")'), audit=log, sandbox=shared_sandbox)
    service = CharterService.create(registry=registry, audit=log, agent=agent)
    store = TokenStore(charter_home / "tokens.yaml")
    tokens = {"ada": store.add("ada", "ada", ["pay:write"]), "auditor": store.add("auditor", "auditor", ["audit:read"])}
    app = create_app(service, store, IdempotencyStore(charter_home / "idempotency.db"))

    def client(url: str, who: str) -> httpx.Client:
        return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens[who]}"}, timeout=60)

    with serving(app, name="charter-api") as url:
        with client(url, "ada") as ada:
            answer = ada.post("/v1/programs", json={"contract": "mailer", "program": pay("XX00ATTACKER")}).json()
            view = ada.get(f"/v1/runs/{answer['run_id']}")
        with client(url, "auditor") as auditor:
            audited = auditor.get(f"/v1/runs/{answer['run_id']}").json()
    assert (answer["status"], answer["cause"]) == ("refused", "GUARD_VIOLATION")
    assert view.json()["receipts"] is None
    assert view.json()["calls"] == [
        {
            "call": 1,
            "operation": "send_payment",
            "decision": "DENY",
            "code": "GUARD_VIOLATION",
            "run_id": answer["run_id"],  # each call names its run (a resumed chain spans several)
        }
    ]
    assert "list_payees" not in view.text
    assert "GB29NWBK60161331926819" not in view.text
    assert "list_payees" not in str(answer)
    [decision] = [r for r in audited["receipts"] if r["kind"] == "decision"]
    assert [(s["name"], s["operation"], s["result"]) for s in decision["lookups"]] == [
        ("payees", "list_payees", PAYEES_JSON)
    ]


def test_a_lookup_is_part_of_the_contracts_content_hash(write_contract: WriteContract) -> None:
    text = CONTRACT.read_text(encoding="utf-8")
    before = compile_contract(load_contract(write_contract(text, name="a.yaml")))
    other = text.replace("args: {account: params.account}}", "args: {account: principal.id}}")
    after = compile_contract(load_contract(write_contract(other, name="b.yaml")))
    assert before.sha256 != after.sha256
    assert after.gate.operations["send_payment"].lookups[0].args == {"account": "principal.id"}


def test_no_lookup_reaches_the_backend_after_the_runs_wall_time(harness: Harness) -> None:
    import dataclasses
    import time

    from charter.sandbox import SandboxLimits

    def slow(payees: Any) -> Any:
        time.sleep(1.5)  # past the run's wall time: the next lookup must not be sent
        return payees

    backend = Counting(harness.contract, {"list_payees": slow})
    runner = Runner(audit=harness.log, sandbox=harness.sandbox, backend_for=lambda _: backend)
    limits = dataclasses.replace(SandboxLimits.from_contract(harness.contract.gate.limits), wall_seconds=1.0)
    execution = runner.execute(pay(LANDLORD), contract=harness.contract, principal=PAYER, limits=limits)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
        isinstance(r, Decision) for r in harness.log.run(execution.run_id).receipts
    ):
        time.sleep(0.1)  # the call is still being decided on its worker thread
    assert getattr(execution.outcome, "limit", None) == "wall", execution.outcome
    assert backend.operations == ["list_payees"]  # neither the second lookup nor the write
    assert sent() == []


def test_a_lookup_read_by_index_is_performed_too(
    write_contract: WriteContract, charter_home: Path, shared_sandbox: Sandbox
) -> None:
    text = (
        CONTRACT.read_text(encoding="utf-8")
        .replace("when: lookups.payees.exists(", """when: 'lookups["payees"].exists(""")
        .replace("p.iban == params.recipient)\n", "p.iban == params.recipient)'\n", 1)
    )
    contract = compile_contract(load_contract(write_contract(text)))
    assert contract.gate.operations["send_payment"].lookups[0].rules == ("guard:known_payee",)
    backend = Counting(contract, {})
    runner = Runner(audit=AuditLog(charter_home / "audit.db"), sandbox=shared_sandbox, backend_for=lambda _: backend)
    allowed = runner.execute(pay(LANDLORD), contract=contract, principal=PAYER)
    assert allowed.status == "done", allowed.outcome
    denied = runner.execute(pay("XX00ATTACKER"), contract=contract, principal=PAYER)
    [decision] = [r for r in runner.audit.run(denied.run_id).receipts if isinstance(r, Decision)]
    assert (decision.code, decision.clause) == ("GUARD_VIOLATION", "guard:known_payee")


def test_the_bench_measures_a_lookup_guard_beside_a_plain_guard(shared_sandbox: Sandbox) -> None:
    from charter.bench._lookups import run_lookup_bench

    figures = run_lookup_bench(shared_sandbox, runs=1)  # every run must complete, or it raises
    assert (figures["calls"], figures["payees_looked_up"]) == (40, 20)
    ratio = figures["lookup_guard_ms_per_call"] / figures["plain_guard_ms_per_call"]
    assert figures["lookup_to_plain_ratio"] == pytest.approx(ratio)
