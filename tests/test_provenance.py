"""Provenance (`from:` params): the checker, the compiled rules, and the gate's host-side ledger,
through the real sandbox, gate and a SQLite audit log."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgspec
import pytest

from charter.audit import AuditLog, Decision, Opened
from charter.audit import Outcome as CallOutcome
from charter.compiler import CompiledContract, compile_contract
from charter.contract import load_contract
from charter.errors import ContractError, UsageError
from charter.gate._provenance import SEEN_INDEX_CHARS, Check, ProvenanceLedger, normalise, occurs
from charter.principal import Principal
from charter.runner import Execution, Runner
from charter.sandbox import Sandbox
from tests.conftest import ROOT, WriteContract

CONTRACT = """\
contract: payments_lite
version: 1.0.0
summary: Payments used by the provenance tests.
owners: [tests@example.com]
changelog: First.
binding:
  python: tests.data.provenance_backend
enums:
  Priority: [low, high]
records:
  Payee: {iban: str, name: str}
  Document: {sender: str, body: str}
  Sent: {id: int, recipient: str}
operations:
  list_payees:
    kind: read
    doc: The account's payees.
    returns: list[Payee]
  read_document:
    kind: read
    doc: One document of the inbox.
    params: {id: int}
    returns: Document
  echo:
    kind: read
    doc: Returns its text.
    params: {text: str}
    returns: str
  fail_with:
    kind: read
    doc: Always fails, naming its text.
    params: {text: str}
    returns: str
  send_payment:
    kind: write
    doc: Pay a payee.
    params:
      recipient: {type: str, from: [request, list_payees.iban]}
      note: {type: 'str?', from: [request, {source: read_document.body, match: token}]}
      priority: {type: 'Priority?', from: [request]}
    returns: Sent
    scopes: [pay:write]
  send_mail:
    kind: write
    doc: Mail people.
    params:
      recipients: {type: 'list[str]', from: [request, "list_payees[].name"]}
      link: {type: 'str?', from: [{source: read_document.body, match: token}]}
    returns: Sent
    guards:
      - id: known_names_only
        when: 'params.recipients.size() <= 1 || "request" in provenance.recipients'
        message: Several recipients must all be named in the request.
    scopes: [pay:write]
boundaries:
  - id: pay_known_only
    text: Pay only an IBAN the user typed or a known payee's.
    enforced_by: [{provenance: send_payment.recipient}]
"""

SCOPES = frozenset({"pay:write"})
BILL_IBAN = "FR1420041010050500013M02606"
PAYEE_IBAN = "GB29 NWBK 6016 1331 9268 19"


@pytest.fixture
def contract(write_contract: WriteContract) -> CompiledContract:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return compile_contract(load_contract(write_contract(CONTRACT, name="payments_lite.yaml")))


class Pay:
    def __init__(self, contract: CompiledContract, log: AuditLog, sandbox: Sandbox) -> None:
        self.contract, self.log = contract, log
        self.runner = Runner(audit=log, sandbox=sandbox)

    def run(self, program: str, *, intent: str | None = None, **kwargs: object) -> Execution:
        return self.runner.execute(
            program, contract=self.contract, principal=Principal("ada", SCOPES), intent=intent, **kwargs
        )

    def decisions(self, execution: Execution) -> list[Decision]:
        return [c for c in execution.calls if isinstance(c, Decision)]


@pytest.fixture
def pay(contract: CompiledContract, charter_home: Path, shared_sandbox: Sandbox) -> Pay:
    return Pay(contract, AuditLog(charter_home / "audit.db"), shared_sandbox)


def _last(pay: Pay, execution: Execution) -> Decision:
    return pay.decisions(execution)[-1]


# -- normalisation and token matching ---------------------------------------------------------


def test_normalisation_folds_case_width_spaces_and_hyphens() -> None:
    assert normalise("GB29 NWBK 6016 1331 9268 19") == "gb29nwbk60161331926819"
    assert normalise("ＧＢ２９-nwbk") == "gb29nwbk"  # NFKC full-width
    assert normalise("ＧＢ２９ ＮＷＢＫ ６０１６ １３３１ ９２６８ １９") == "gb29nwbk60161331926819"


@pytest.mark.parametrize(
    ("seen", "sent"),
    [
        ("ann-smith@corp.com", "annsmith@corp.com"),
        ("billing@straße-bank.de", "billing@strasse-bank.de"),  # casefold would make ß ss
        ("https://bank-alerts.example.net/verify?id=7731", "https://bankalerts.example.net/verify?id=7731"),
        ("O'Brien-Smith", "O'BrienSmith"),
    ],
)
def test_separators_count_in_values_that_are_not_code_like(seen: str, sent: str) -> None:
    """Only a value made of letters, digits, spaces and hyphens (an IBAN, a card or phone
    number) loses its separators; in an address or a URL they are part of the value."""
    assert normalise(seen) != normalise(sent)
    assert not occurs(sent, f"please write to {seen} today")
    assert occurs(seen, f"please write to {seen} today")
    assert occurs("Ann-Smith@Corp.com", "please write to ann-smith@corp.com today")  # case still folds
    assert normalise("Straße") != normalise("STRASSE")


def test_token_boundaries_are_judged_before_separators_are_removed() -> None:
    assert occurs("eve@x.com", "please mail eve@x.com'.The rest")
    assert not occurs("eve@x.com", "mail steve@x.com now")  # 'st' glued to it: not a token
    assert not occurs("eve@x.com", "eve@x.comet")
    assert occurs("GB29NWBK60161331926819", "pay GB29 NWBK 6016 1331 9268 19 today")
    assert occurs("GB29 NWBK 6016 1331 9268 19", "pay GB29NWBK60161331926819.")
    assert occurs("ＧＢ２９ＮＷＢＫ60161331926819", "iban: gb29-nwbk-6016-1331-9268-19")
    assert not occurs("", "anything")
    assert not occurs("bob", "bobby")
    assert occurs("eve-x@mail.com", "from: eve-x@mail.com")
    assert not occurs("eve-x@mail.com", "from: steve-x@mail.com")


# -- the checker -------------------------------------------------------------------------------


def _problems(write_contract: WriteContract, old: str, new: str) -> list[str]:
    text = CONTRACT.replace(old, new, 1)
    assert text != CONTRACT
    with pytest.raises(ContractError) as caught:
        load_contract(write_contract(text))
    return [f"{p.line}:{p.column}: {p.message}" for p in caught.value.problems]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "from: [request, list_payees.iban]",
            "from: [request, list_payee.iban]",
            "38:46: param 'send_payment.recipient': unknown source 'list_payee.iban' (did you mean 'list_payees'?): "
            "write request, inputs.<name>, principal, principal.<attribute> or <read operation>.<field path>",
        ),
        (
            "from: [request, list_payees.iban]",
            "from: [request, list_payees.ibn]",
            "38:46: param 'send_payment.recipient': source 'list_payees.ibn': Payee has no field 'ibn' "
            "(did you mean 'iban'?)",
        ),
        (
            "from: [request, list_payees.iban]",
            "from: [request, send_mail.recipient]",
            "38:46: param 'send_payment.recipient': source 'send_mail.recipient': send_mail is a write operation; "
            "a source is a read operation's result at a field path",
        ),
        (
            "from: [request, list_payees.iban]",
            "from: [request, read_document]",
            "38:46: param 'send_payment.recipient': source 'read_document' names the whole result of read_document: "
            "any text anywhere in it would count, which would launder injected text (a search echoing its query, a "
            "document's sender); name one text field, e.g. 'read_document.sender'",
        ),
        (
            "from: [request, list_payees.iban]",
            "from: [request, 'list_payees[]']",
            "38:46: param 'send_payment.recipient': source 'list_payees[]' names the whole result of list_payees: "
            "any text anywhere in it would count, which would launder injected text (a search echoing its query, a "
            "document's sender); name one text field, e.g. 'list_payees[].iban'",
        ),
        (
            "from: [request, list_payees.iban]",
            "from: [request, 'read_document[].body']",
            "38:46: param 'send_payment.recipient': source 'read_document[].body': read_document is Document, not a "
            "list; remove the '[]'",
        ),
        (
            "from: [request, list_payees.iban]",
            "from: [request, request.text]",
            "38:46: param 'send_payment.recipient': source 'request.text': request is the request's whole text and "
            "inputs; write 'request'",
        ),
        (
            "from: [request, list_payees.iban]",
            "from: [principal]",
            "38:37: param 'send_payment.recipient': source 'principal': the contract declares no principal attributes "
            "(principal.attributes)",
        ),
        (
            "from: [request, list_payees.iban]",
            "from: [{source: principal, match: token}]",
            "38:46: param 'send_payment.recipient': source 'principal': principal attributes match exactly; "
            "`match: token` applies to request and read results",
        ),
        (
            "from: [request, list_payees.iban]",
            "from: [{source: inputs.to, match: token}]",
            "38:46: param 'send_payment.recipient': source 'inputs.to': an input matches exactly (the value must "
            "equal it); `match: token` applies to request and read results",
        ),
        (
            "from: [request, list_payees.iban]",
            "from: [inputs.to-iban]",
            "38:37: param 'send_payment.recipient': source 'inputs.to-iban': write inputs.<name>, the name of one "
            "input of the request (an identifier)",
        ),
        (
            "from: [request, list_payees.iban]",
            "from: []",
            "38:36: param 'send_payment.recipient': `from:` lists no source; name at least one, or remove it",
        ),
        (
            "priority: {type: 'Priority?', from: [request]}",
            "priority: {type: 'list[Priority]', from: [request]}",
            "40:48: param 'send_payment.priority' is list[Priority]: provenance (`from:`) applies to str, enum and "
            "list[str] params",
        ),
        (
            "enforced_by: [{provenance: send_payment.recipient}]",
            "enforced_by: [{provenance: send_payment.note2}]",
            "58:32: boundary 'pay_known_only' is enforced by the provenance of 'send_payment.note2', but param "
            "'note2' of send_payment is not one of its params (did you mean 'note'?)",
        ),
        (
            "enforced_by: [{provenance: send_payment.recipient}]",
            "enforced_by: [{provenance: send_paymnt.recipient}]",
            "58:32: boundary 'pay_known_only' is enforced by the provenance of 'send_paymnt.recipient': write "
            "operation.param, naming an operation of this contract (did you mean 'send_payment'?)",
        ),
        (
            '"request" in provenance.recipients',
            '"request" in provenance.recipient',
            "52:15: guard 'known_names_only': 'provenance' has no field 'recipient' (did you mean 'recipients'?)",
        ),
    ],
    ids=[
        "unknown_operation",
        "unknown_field",
        "write_operation",
        "whole_operation",
        "record_ending_path",
        "brackets_on_a_record",
        "request_with_a_path",
        "principal_without_attributes",
        "token_on_principal",
        "token_on_input",
        "input_not_an_identifier",
        "empty_from",
        "not_a_text_param",
        "boundary_unknown_param",
        "boundary_unknown_operation",
        "guard_unknown_provenance_param",
    ],
)
def test_checker_refuses_bad_sources(write_contract: WriteContract, old: str, new: str, expected: str) -> None:
    assert _problems(write_contract, old, new) == [expected]


def test_duplicate_source_warns(write_contract: WriteContract) -> None:
    text = CONTRACT.replace(
        "from: [request, list_payees.iban]", "from: [request, list_payees.iban, 'list_payees[].iban']"
    )
    checked = load_contract(write_contract(text))
    assert [f"{w.line}:{w.column}: {w.message}" for w in checked.warnings] == [
        "38:64: warning: param 'send_payment.recipient' lists source 'list_payees[].iban' twice (items 1 and 2)"
    ]


def test_an_input_source_takes_that_input_whole_and_nothing_else(write_contract: WriteContract) -> None:
    """`inputs.to`: equal to the request's input `to` (normalised), not a part of it, not another input."""
    text = CONTRACT.replace("from: [request, list_payees.iban]", "from: [inputs.to, list_payees.iban]")
    compiled = compile_contract(load_contract(write_contract(text)))
    op = compiled.gate.operations["send_payment"]
    (source, _) = op.provenance[0].sources
    assert (source.kind, source.label, source.input, source.match) == ("input", "inputs.to", "to", "exact")
    other = "DE89370400440532013000"
    ledger = ProvenanceLedger(
        compiled.gate, (f"pay {PAYEE_IBAN}",), None, {"to": PAYEE_IBAN, "memo": other, "to2": f"send {BILL_IBAN}"}
    )
    none = {"note": (), "priority": ()}
    assert ledger.check(op, {"recipient": "gb29nwbk60161331926819"}) == Check({"recipient": ("inputs.to",), **none})
    for value in (other, BILL_IBAN):  # another input's value; a part of one
        check = ledger.check(op, {"recipient": value})
        assert check is not None
        assert "must come from inputs.to or list_payees[].iban" in (check.violation or "")
    absent = ProvenanceLedger(compiled.gate, (PAYEE_IBAN,), None, {}).check(op, {"recipient": PAYEE_IBAN})
    assert absent is not None
    assert absent.violation is not None  # `request` is no `inputs.to`


def test_a_source_field_named_like_a_param_of_its_read_warns(write_contract: WriteContract) -> None:
    """read_document(body=...) may echo its argument into .body: anything passed would be laundered."""
    text = CONTRACT.replace(
        "    params: {id: int}\n    returns: Document", "    params: {id: int, body: 'str?'}\n    returns: Document"
    )
    assert text != CONTRACT
    warnings = [w.message for w in load_contract(write_contract(text)).warnings]
    expected = (
        "warning: param 'send_payment.note': source 'read_document.body' ends at a field named like read_document's "
        "param 'body': if the read echoes its argument there, any value the program passes it would count as seen; "
        "name a field the backend fills from its own data"
    )
    assert expected in warnings
    assert len(warnings) == 2  # send_mail.link names it too
    assert load_contract(write_contract(CONTRACT)).warnings == ()


def test_compiled_rules_and_harvest_plan(contract: CompiledContract) -> None:
    rules = {r.param: r for r in contract.gate.operations["send_payment"].provenance}
    assert [(s.label, s.kind, s.match, s.path) for s in rules["recipient"].sources] == [
        ("request", "request", "exact", ()),
        ("list_payees[].iban", "result", "exact", ("iban",)),
    ]
    assert rules["recipient"].boundaries == ("pay_known_only",)
    assert [(s.label, s.match) for s in rules["note"].sources] == [
        ("request", "exact"),
        ("read_document.body", "token"),
    ]
    plan = {op: [s.label for s in sources] for op, sources in contract.gate.provenance_paths.items()}
    assert plan == {
        "list_payees": ["list_payees[].iban", "list_payees[].name"],
        "read_document": ["read_document.body"],
    }
    # An operation without `from:` params compiles as before: the field is left out of gate.json.
    assert "provenance" not in msgspec.to_builtins(contract.gate.operations["echo"])


def test_prompt_shows_sources_compactly(contract: CompiledContract) -> None:
    from charter.agent._tokens import estimate_tokens

    line = next(x for x in contract.prompt_context.splitlines() if x.startswith("send_payment("))
    assert "recipient: str from request|list_payees[].iban" in line
    assert "note: str? from request|read_document.body~" in line
    assert estimate_tokens(" from request|list_payees[].iban") <= 12


# -- the gate, through the sandbox -------------------------------------------------------------


def test_value_from_the_request_passes(pay: Pay) -> None:
    program = f'r = payments_lite.send_payment(recipient="{BILL_IBAN}")\nconclude(str(r.id))'
    execution = pay.run(program, intent=f"Pay 10 EUR to {BILL_IBAN.lower()} please")
    assert execution.status == "done", execution.reason
    decision = _last(pay, execution)
    assert (decision.decision, decision.provenance) == (
        "ALLOW",
        {"recipient": ("request",), "note": (), "priority": ()},
    )


def test_value_copied_from_a_document_is_denied_with_the_exact_message(pay: Pay) -> None:
    program = (
        "doc = payments_lite.read_document(id=1)\n"
        "iban = [w for w in doc.body.split() if w.startswith('FR')][0]\n"
        "payments_lite.send_payment(recipient=iban)\n"
        "conclude('paid')"
    )
    execution = pay.run(program, intent="Pay my electricity bill")
    assert execution.status == "refused"
    decision = _last(pay, execution)
    assert decision.code == "PROVENANCE_VIOLATION"
    assert decision.message == (
        "send_payment refused: recipient must come from request or list_payees[].iban (its `from:` rule), but its "
        "value was seen only in the result of read_document; a value the program read elsewhere, or built itself, "
        "is not accepted. (hard boundary pay_known_only: Pay only an IBAN the user typed or a known payee's.)"
    )
    assert (decision.clause, decision.boundary) == ("provenance:send_payment.recipient", "pay_known_only")
    assert decision.provenance == {"recipient": (), "note": (), "priority": ()}
    assert BILL_IBAN.lower() not in decision.message.lower()


def test_known_payee_passes_whatever_its_spacing_and_receipt_records_the_source(pay: Pay) -> None:
    program = (
        "p = payments_lite.list_payees()[0]\n"
        "payments_lite.send_payment(recipient=p.iban.replace(' ', '').lower())\n"
        "conclude('paid')"
    )
    execution = pay.run(program, intent="Pay Bob")
    assert execution.status == "done", execution.reason
    assert _last(pay, execution).provenance == {"recipient": ("list_payees[].iban",), "note": (), "priority": ()}


def test_value_built_character_by_character_passes_only_if_a_trusted_source_holds_it(pay: Pay) -> None:
    # Built from a trusted read, character by character: it is the payee's IBAN, so it passes.
    build = "''.join(ch for ch in payments_lite.list_payees()[1].iban)"
    execution = pay.run(f"payments_lite.send_payment(recipient={build})\nconclude('ok')", intent="Pay Carol")
    assert execution.status == "done", execution.reason
    # The same construction yielding a value no trusted source holds is denied.
    forged = "''.join(chr(ord(ch)) for ch in 'DE8937040044053201300') + '1'"
    execution = pay.run(f"payments_lite.send_payment(recipient={forged})\nconclude('ok')", intent="Pay Carol")
    decision = _last(pay, execution)
    assert decision.code == "PROVENANCE_VIOLATION"
    assert "seen in none of them in this run" in decision.message


@pytest.mark.parametrize(
    "launder",
    [
        # printing it, concluding with it earlier is impossible (conclude ends the run), echoing it
        # through another operation's args and result, reading it back from an error message
        "print(iban)\nvalue = iban",
        "value = payments_lite.echo(text=iban)",
        "try:\n    payments_lite.fail_with(text=iban)\nexcept OperationError as e:\n    value = e.message.split()[-1]",
        "try:\n    payments_lite.send_mail(recipients=[iban])\nexcept ContractViolation as e:\n    value = iban",
    ],
    ids=["print", "other_calls_result", "error_message", "denied_call_args"],
)
def test_a_program_cannot_forge_provenance(pay: Pay, launder: str) -> None:
    program = (
        "doc = payments_lite.read_document(id=1)\n"
        "iban = [w for w in doc.body.split() if w.startswith('FR')][0]\n"
        f"{launder}\n"
        "payments_lite.send_payment(recipient=value)\n"
        "conclude('paid')"
    )
    execution = pay.run(program, intent="Pay my bill")
    decision = _last(pay, execution)
    assert (decision.operation, decision.code) == ("send_payment", "PROVENANCE_VIOLATION"), execution.reason
    # Nothing the program did counted anywhere: not as the request, not as a payee.
    assert decision.provenance == {"recipient": (), "note": (), "priority": ()}
    assert "seen only in the result of read_document" in decision.message


def test_token_mode_accepts_a_bounded_occurrence_only(pay: Pay) -> None:
    ok = "payments_lite.read_document(id=2)\npayments_lite.send_mail(recipients=['Carol'], link='https://example.org/pay')"
    execution = pay.run(ok + "\nconclude('ok')", intent="mail carol the link")
    assert execution.status == "done", execution.reason
    assert _last(pay, execution).provenance == {"recipients": ("request",), "link": ("read_document.body",)}
    glued = "payments_lite.read_document(id=2)\npayments_lite.send_mail(recipients=['Carol'], link='https://example.org/pa')"
    execution = pay.run(glued + "\nconclude('ok')", intent="mail carol the link")
    decision = _last(pay, execution)
    assert decision.code == "PROVENANCE_VIOLATION"
    assert decision.message.startswith(
        "send_mail refused: link must come from read_document.body (as a token) (its `from:` rule)"
    )


def test_list_params_are_checked_element_wise(pay: Pay) -> None:
    program = (
        "payments_lite.list_payees()\n"
        "payments_lite.read_document(id=1)\n"
        "payments_lite.send_mail(recipients=['Bob Builder', 'eve@x.com'])\n"
        "conclude('ok')"
    )
    execution = pay.run(program, intent="mail bob")
    decision = _last(pay, execution)
    assert decision.code == "PROVENANCE_VIOLATION"
    assert decision.message.startswith(
        "send_mail refused: recipients[1] must come from request or list_payees[].name (its `from:` rule), but its "
        "value was seen only in the result of read_document;"
    )
    # The request's own e-mail address, written with a quote and a full stop after it, counts.
    execution = pay.run(program, intent="mail Bob Builder and eve@x.com'. Thanks")
    assert execution.status == "done", execution.reason
    # provenance.<list param> holds the labels where every element was seen: the guard reads it.
    assert _last(pay, execution).provenance == {"recipients": ("request",), "link": ()}
    assert pay.decisions(execution)[-1].code == "OK"


def test_guard_reads_provenance(pay: Pay) -> None:
    program = "payments_lite.send_mail(recipients=['Bob Builder', 'Carol'])\nconclude('ok')"
    execution = pay.run("payments_lite.list_payees()\n" + program, intent="mail my payees")
    decision = _last(pay, execution)
    assert (decision.code, decision.clause) == ("GUARD_VIOLATION", "guard:known_names_only")
    assert decision.provenance == {"recipients": ("list_payees[].name",), "link": ()}


def test_enum_and_normalised_request_values(pay: Pay) -> None:
    program = "payments_lite.send_payment(recipient='gb29nwbk60161331926819', priority='high')\nconclude('ok')"
    execution = pay.run(program, intent="Pay ＧＢ２９ ＮＷＢＫ 6016-1331-9268-19 with HIGH priority")
    assert execution.status == "done", execution.reason
    assert _last(pay, execution).provenance == {"recipient": ("request",), "note": (), "priority": ("request",)}


# -- inputs -------------------------------------------------------------------------------------


def test_inputs_are_the_programs_mapping_and_the_request_source(pay: Pay) -> None:
    program = (
        "assert type(inputs).__name__ == 'mappingproxy'\n"
        "try:\n    inputs['x'] = 'y'\nexcept TypeError:\n    pass\nelse:\n    raise AssertionError('writable')\n"
        "r = payments_lite.send_payment(recipient=inputs['iban'])\n"
        "conclude(inputs['iban'], data=sorted(inputs))"
    )
    execution = pay.run(program, inputs={"iban": BILL_IBAN, "memo": "rent"})
    assert execution.status == "done", execution.reason
    assert execution.data == ["iban", "memo"]
    opened = next(iter(pay.log.stored(execution.run_id))).decoded()
    assert isinstance(opened, Opened)
    assert (opened.inputs, opened.secret_inputs) == ({"iban": BILL_IBAN, "memo": "rent"}, ())


def test_secret_inputs_are_recorded_as_digests_only(pay: Pay, charter_home: Path) -> None:
    secret = "S3cret-Passw0rd-4242"
    program = "payments_lite.send_payment(recipient=inputs['iban'], note=inputs['pin'])\nconclude('ok')"
    execution = pay.run(program, inputs={"iban": BILL_IBAN, "pin": secret}, secret_inputs=["pin"])
    assert execution.status == "done", execution.reason
    opened = next(iter(pay.log.stored(execution.run_id))).decoded()
    assert isinstance(opened, Opened)
    assert opened.secret_inputs == ("pin",)
    assert opened.inputs is not None
    assert opened.inputs["pin"] == pay.log.secret_key.digest(secret)
    assert opened.inputs["pin"].startswith("hmac-sha256:")
    # The note's value itself is not a secret param (the types engineer masks those), so only the
    # Opened receipt is asserted here: nowhere in it, nor in the Decision's provenance.
    assert _last(pay, execution).provenance == {"recipient": ("request",), "note": ("request",), "priority": ()}
    raw = b"".join(r.body for r in list(pay.log.stored(execution.run_id))[:1])
    assert secret.encode() not in raw


@pytest.mark.parametrize(
    ("inputs", "secret", "message"),
    [
        ({"1x": "v"}, (), "input name '1x' must be an identifier of at most 64 characters, e.g. recipient"),
        ({"x": 3}, (), "input 'x' must be text, got int"),
        ({"x": "a\x00b"}, (), "input 'x' must be text of at most 16384 characters without NUL"),
        ({"x": "v"}, ("y",), "secret input 'y' is not one of the inputs sent"),
        ({f"x{i}": "v" for i in range(33)}, (), "33 inputs were sent; at most 32 are accepted"),
    ],
)
def test_bad_inputs_are_refused_before_the_run_opens(
    pay: Pay, inputs: dict[str, object], secret: tuple[str, ...], message: str
) -> None:
    with pytest.raises(UsageError) as caught:
        pay.run("conclude('x')", inputs=inputs, secret_inputs=secret)  # type: ignore[arg-type]
    assert str(caught.value) == message
    assert pay.log.run_ids() == []


# -- the ledger rebuilt from receipts ------------------------------------------------------------


def test_ledger_rebuilds_from_opened_and_outcome_receipts(pay: Pay) -> None:
    program = (
        "payments_lite.list_payees()\n"
        "try:\n    payments_lite.fail_with(text='XX00FEEDBEEF')\nexcept OperationError:\n    pass\n"
        "conclude('ok')"
    )
    execution = pay.run(program, intent="look at my payees", inputs={"memo": "AB12 3456"})
    assert execution.status == "done", execution.reason
    receipts = [r.decoded() for r in pay.log.stored(execution.run_id)]
    opened = receipts[0]
    ledger = ProvenanceLedger.rebuild(pay.contract.gate, opened, receipts[1:])
    rule = pay.contract.gate.operations["send_payment"]
    assert ledger.check(rule, {"recipient": "DE89 3704 0044 0532 0130 00"}).labels["recipient"] == (  # type: ignore[union-attr]
        "list_payees[].iban",
    )
    assert ledger.check(rule, {"recipient": "ab123456"}).labels["recipient"] == ("request",)  # type: ignore[union-attr]
    # Text seen only in error feedback does not re-enter the ledger.
    check = ledger.check(rule, {"recipient": "XX00FEEDBEEF"})
    assert check is not None
    assert check.violation is not None
    assert "seen in none of them" in check.violation
    assert isinstance(receipts[-2], CallOutcome)


def test_seen_index_is_bounded(contract: CompiledContract) -> None:
    ledger = ProvenanceLedger(contract.gate)
    big = json.dumps({"sender": "s", "body": "x" * (SEEN_INDEX_CHARS + 10)})
    ledger.record("read_document", big)
    ledger.record("read_document", json.dumps({"sender": "late-sender", "body": "b"}))
    rule = contract.gate.operations["send_payment"]
    check = ledger.check(rule, {"recipient": "late-sender"})
    assert check is not None
    assert check.violation is not None
    assert "seen in none of them in this run" in check.violation  # beyond the bound: not indexed


# -- inputs on every surface: exec, HTTP, MCP; a secret input never stored in plaintext ---------

SECRET = "Tr0ub4dor-and-3-horses"
READS_INPUTS = "conclude(inputs['who'] + ':' + str(len(inputs['pin'])), data=sorted(inputs))"


def _stored_nowhere(home: Path, secret: str) -> None:
    """No file under CHARTER_HOME (audit log, its WAL, idempotency store...) holds `secret`."""
    files = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.name.startswith("audit.db") for p in files)
    for path in files:
        assert secret.encode() not in path.read_bytes(), path


def _opened_inputs(home: Path, run_id: str) -> tuple[dict[str, str] | None, tuple[str, ...]]:
    opened = AuditLog(home / "audit.db").run(run_id).opened
    assert isinstance(opened, Opened)
    return opened.inputs, opened.secret_inputs


def test_exec_takes_inputs_and_secret_inputs(charter_home: Path, tmp_path: Path) -> None:
    from tests.conftest import charter

    assert charter("contract", "publish", "contracts/orders.yaml").returncode == 0
    program = tmp_path / "program.py"
    program.write_text(READS_INPUTS, encoding="utf-8")
    ran = charter(
        "exec", "-c", "orders", str(program), "--input", "who=ada", "--secret-input", f"pin={SECRET}", "--json"
    )
    assert ran.returncode == 0, ran.stderr
    body = json.loads(ran.stdout)
    assert (body["answer"], body["data"]) == (f"ada:{len(SECRET)}", ["pin", "who"])
    inputs, secret = _opened_inputs(charter_home, body["run_id"])
    assert secret == ("pin",)
    assert inputs is not None
    assert inputs["who"] == "ada"
    assert inputs["pin"].startswith("hmac-sha256:")
    _stored_nowhere(charter_home, SECRET)
    bad = charter("exec", "-c", "orders", str(program), "--input", "who")
    assert (bad.returncode, bad.stderr.strip()) == (1, "error: --input takes NAME=VALUE, got 'who'")


def test_http_program_requests_take_inputs(charter_home: Path, shared_sandbox: Sandbox) -> None:
    import httpx

    from charter.registry import Registry
    from charter.server import CharterService, IdempotencyStore, TokenStore, create_app, serving

    registry = Registry()
    path = ROOT / "contracts" / "orders.yaml"
    registry.publish(load_contract(path), path.read_text(encoding="utf-8"))
    log = AuditLog(charter_home / "audit.db")
    service = CharterService.create(registry=registry, audit=log, agent=None)
    store = TokenStore(charter_home / "tokens.yaml")
    token = store.add("ada", "ada", ["orders:read"])
    app = create_app(service, store, IdempotencyStore(charter_home / "idempotency.db"))
    with (
        serving(app, name="charter-api") as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client,
    ):
        body = {
            "contract": "orders",
            "program": READS_INPUTS,
            "inputs": {"who": "ada", "pin": SECRET},
            "secret_inputs": ["pin"],
        }
        response = client.post("/v1/programs", json=body, headers={"Idempotency-Key": "k1"})
        assert response.status_code == 200, response.text
        assert response.json()["answer"] == f"ada:{len(SECRET)}"
        run_id = response.json()["run_id"]
        for bad in (
            {"inputs": {"who": 3}},
            {"inputs": {"1who": "x"}},
            {"inputs": ["who"]},
            {"inputs": {"who": "x" * 16_385}},
            {"secret_inputs": "pin"},
            {"inputs": {f"x{i}": "v" for i in range(33)}},
        ):
            refused = client.post("/v1/programs", json={"contract": "orders", "program": READS_INPUTS, **bad})
            assert refused.status_code == 422, (bad, refused.text)
        refused = client.post(
            "/v1/programs",
            json={"contract": "orders", "program": READS_INPUTS, "inputs": {"who": "x"}, "secret_inputs": ["pin"]},
        )
        assert refused.status_code == 422
        assert refused.json()["detail"] == "secret input 'pin' is not one of the inputs sent"
    inputs, secret = _opened_inputs(charter_home, run_id)
    assert (secret, inputs is not None and inputs["pin"] == log.secret_key.digest(SECRET)) == (("pin",), True)
    _stored_nowhere(charter_home, SECRET)


def test_mcp_execute_program_takes_inputs(charter_home: Path) -> None:
    import os

    import anyio
    from mcp import Client, StdioServerParameters

    from tests.conftest import charter

    assert charter("contract", "publish", "contracts/orders.yaml").returncode == 0
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "charter", "mcp", "--principal", "ada", "--scope", "orders:read"],
        env=dict(os.environ),
        cwd=str(ROOT),
    )

    async def session() -> tuple[dict[str, object], object, dict[str, object]]:
        async with Client(params) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            arguments = {
                "contract": "orders",
                "program": READS_INPUTS,
                "inputs": {"who": "ada", "pin": SECRET},
                "secret_inputs": ["pin"],
            }
            result = await client.call_tool("execute_program", arguments)
            try:
                await client.call_tool("execute_program", {**arguments, "inputs": {"who": 1}})
            except Exception as error:  # invalid_params
                bad: object = error
            else:
                bad = None
            return json.loads(result.content[0].text), bad, tools["execute_program"].input_schema

    body, bad, schema = anyio.run(session)
    assert body["answer"] == f"ada:{len(SECRET)}"
    assert "input 'who' must be text, got int" in str(bad)
    assert schema["properties"]["inputs"]["additionalProperties"] == {"type": "string", "maxLength": 16384}  # type: ignore[index]
    inputs, secret = _opened_inputs(charter_home, str(body["run_id"]))
    assert secret == ("pin",)
    assert inputs is not None
    assert inputs["pin"].startswith("hmac-sha256:")
    _stored_nowhere(charter_home, SECRET)


# -- diff -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "from: [request, list_payees.iban]",
            "from: [request, list_payees.iban, read_document.sender]",
            ("relaxation", "source 'read_document.sender' of 'recipient' added"),
        ),
        (
            "from: [request, list_payees.iban]",
            "from: [request]",
            ("breaking", "source 'list_payees.iban' of 'recipient' removed"),
        ),
        (
            "recipient: {type: str, from: [request, list_payees.iban]}",
            "recipient: str",
            ("relaxation", "param 'recipient' no longer has a `from:` rule"),
        ),
        (
            "{source: read_document.body, match: token}]}\n      priority",
            "read_document.body]}\n      priority",
            ("breaking", "source 'read_document.body' of 'note' now matches exact (was token)"),
        ),
        (
            "from: [request, list_payees.iban]",
            "from: [request, 'list_payees[].iban']",
            None,
        ),
    ],
    ids=["source_added", "source_removed", "from_removed", "token_to_exact", "same_source_respelled"],
)
def test_diff_classifies_provenance_changes(
    write_contract: WriteContract, old: str, new: str, expected: tuple[str, str] | None
) -> None:
    from charter.registry import diff_contracts

    before = load_contract(write_contract(CONTRACT, name="a.yaml")).model
    text = CONTRACT.replace(old, new, 1)
    assert text != CONTRACT
    if expected is not None and expected[1].startswith("param 'recipient' no longer"):
        text = text.replace("    enforced_by: [{provenance: send_payment.recipient}]", "    advisory: true")
    after = load_contract(write_contract(text, name="b.yaml")).model
    changes = {(c.kind, c.message) for c in diff_contracts(before, after) if ".from" in c.where}
    assert changes == ({expected} if expected else set())
    # The reverse change is classified the other way round.
    reverse = {(c.kind, c.message) for c in diff_contracts(after, before) if ".from" in c.where}
    flipped = {"relaxation": "breaking", "breaking": "relaxation"}
    assert {k for k, _ in reverse} == ({flipped[expected[0]]} if expected else set())


def test_intent_inputs_are_named_in_the_prompt_and_count_as_the_request(pay: Pay, shared_sandbox: Sandbox) -> None:
    from charter.agent import Charter, ScriptedModel

    program = "r = payments_lite.send_payment(recipient=inputs['iban'])\nconclude('paid ' + str(r.id))"
    model = ScriptedModel([f"```python\n{program}\n```"])
    agent = Charter(model=model, audit=pay.log, sandbox=shared_sandbox)
    conclusion = agent.handle(
        "Pay the IBAN I gave you",
        contract=pay.contract,
        principal=Principal("ada", SCOPES),
        inputs={"iban": BILL_IBAN, "pin": SECRET},
        secret_inputs=["pin"],
    )
    assert conclusion.status == "done", conclusion.reason
    asked = model.requests[0].messages[0].text
    assert asked.endswith('\n\nThe request comes with inputs; a program reads them as `inputs["name"]`: iban, pin\n')
    assert BILL_IBAN not in asked
    assert SECRET not in asked
    [run_id] = [r for r in pay.log.run_ids() if r != conclusion.run_id]
    inputs, secret = _opened_inputs(pay.log.path.parent, run_id)
    assert (secret, inputs is not None and inputs["iban"] == BILL_IBAN) == (("pin",), True)
    decision = [r.decoded() for r in pay.log.stored(run_id) if isinstance(r.decoded(), Decision)][-1]
    assert isinstance(decision, Decision)
    assert decision.provenance == {"recipient": ("request",), "note": (), "priority": ()}


# -- replay and show ----------------------------------------------------------------------------


def test_replay_supplies_inputs_and_secret_inputs_as_their_digests(pay: Pay, shared_sandbox: Sandbox) -> None:
    from charter.replay import replay_run

    program = "payments_lite.send_payment(recipient=inputs['iban'], note=inputs.get('pin'))\nconclude('paid')"
    plain = pay.run(program, inputs={"iban": BILL_IBAN})
    report = replay_run(pay.log.run(plain.run_id), pay.contract, shared_sandbox)
    assert (report.identical, report.secret_inputs) == (True, ())
    secret = pay.run(program, inputs={"iban": BILL_IBAN, "pin": SECRET}, secret_inputs=["pin"])
    assert secret.status == "done", secret.reason
    report = replay_run(pay.log.run(secret.run_id), pay.contract, shared_sandbox)
    assert report.secret_inputs == ("pin",)
    # The call recorded the input's digest in its place (masked_inputs), which is what the replay
    # passes: the same call
    assert report.identical, report.divergences
    # A value computed from the secret is not the digest computed from it: that call diverges
    derived = program.replace("inputs.get('pin')", "str(len(inputs['pin']))")
    secret = pay.run(derived, inputs={"iban": BILL_IBAN, "pin": SECRET}, secret_inputs=["pin"])
    report = replay_run(pay.log.run(secret.run_id), pay.contract, shared_sandbox)
    assert not report.identical
    assert report.divergences[0].startswith("call 1 is send_payment with arguments ")


def test_audit_show_prints_inputs_and_provenance(pay: Pay) -> None:
    from tests.conftest import charter

    # The secret input is not passed to a call here: a secret *param* is the secret: true rule's to mask.
    program = "payments_lite.send_payment(recipient=inputs['iban'], note='rent')\nconclude('paid')"
    execution = pay.run(
        program, intent="pay the rent", inputs={"iban": BILL_IBAN, "pin": SECRET}, secret_inputs=["pin"]
    )
    shown = charter("audit", "show", execution.run_id)
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert f"inputs: iban='{BILL_IBAN}', pin=<secret hmac-sha256:" in text
    assert "provenance: recipient <- request; note <- request; priority <- nowhere" in text
    assert SECRET not in shown.stdout


def test_principal_attribute_sources_are_checked_by_name() -> None:
    # Principal attributes are enforced by another part of issue 15; the source check is this one's.
    import yaml

    from charter.contract._provenance import SourceError, resolve_source
    from charter.contract.model import Contract

    data = yaml.safe_load(CONTRACT)
    data["principal"] = {"attributes": {"account_id": "str"}}
    model = Contract.model_validate(data)
    resolved = resolve_source("principal.account_id", model, {}, {})
    assert (resolved.kind, resolved.label, resolved.attribute) == ("principal", "principal.account_id", "account_id")
    assert resolve_source("principal", model, {}, {}).label == "principal"
    with pytest.raises(SourceError) as caught:
        resolve_source("principal.acount_id", model, {}, {})
    assert str(caught.value) == (
        "source 'principal.acount_id': the contract declares no principal attribute 'acount_id' "
        "(did you mean 'account_id'?)"
    )


def test_principal_attribute_values_count_exactly(contract: CompiledContract) -> None:
    from charter.compiler.artifact import OperationRule, ProvenanceRule, SourceRule

    rule = OperationRule(
        **{
            **{f: getattr(contract.gate.operations["send_payment"], f) for f in OperationRule.__struct_fields__},
            "provenance": (
                ProvenanceRule(
                    param="recipient",
                    sources=(SourceRule(kind="principal", label="principal.account_id", attribute="account_id"),),
                ),
            ),
        }
    )
    ledger = ProvenanceLedger(contract.gate, (), {"account_id": "ACC-42 X"})
    assert ledger.check(rule, {"recipient": "acc42x"}).labels == {"recipient": ("principal.account_id",)}  # type: ignore[union-attr]
    check = ledger.check(rule, {"recipient": "ACC"})  # exact: a part of the attribute is not it
    assert check is not None
    assert check.labels == {"recipient": ()}


GATE_READS = CONTRACT.replace(
    "boundaries:",
    """  get_doc:
    kind: read
    doc: One document, as an entity.
    entity: Doc
    key: id
    params: {id: int}
    returns: Doc
  tag_doc:
    kind: write
    doc: Tag a document with a word of its body.
    entity: Doc
    key: id
    params:
      id: int
      tag: {type: str, from: [{source: get_doc.body, match: token}]}
    returns: Doc
    guards:
      - {id: has_body, when: entity.body.size() > 0, message: Only a document with a body.}
    scopes: [pay:write]
  touch_doc:
    kind: write
    doc: Mark a document read; returns its id only.
    entity: Doc
    key: id
    params: {id: int}
    returns: int
    guards:
      - {id: touch_has_body, when: entity.body.size() > 0, message: Only a document with a body.}
    scopes: [pay:write]
boundaries:""",
).replace("enums:", "entities:\n  Doc:\n    key: id\n    fields: {id: int, body: str}\nenums:")


def test_the_gates_own_entity_reads_do_not_count(
    write_contract: WriteContract, charter_home: Path, shared_sandbox: Sandbox
) -> None:
    compiled = compile_contract(load_contract(write_contract(GATE_READS, name="gate_reads.yaml")))
    pay = Pay(compiled, AuditLog(charter_home / "audit.db"), shared_sandbox)
    program = (
        "payments_lite.touch_doc(id=1)\n"  # the gate reads Doc 1 (its body holds the IBAN) for the guard
        "try:\n    payments_lite.tag_doc(id=1, tag='FR1420041010050500013M02606')\n"
        "except ContractViolation as e:\n    first = e.code\n"
        "payments_lite.get_doc(id=1)\n"
        "payments_lite.tag_doc(id=1, tag='FR1420041010050500013M02606')\n"
        "conclude(first)"
    )
    execution = pay.run(program)
    assert (execution.status, execution.answer) == ("done", "PROVENANCE_VIOLATION"), execution.reason
    touched, first, _read, second = pay.decisions(execution)
    assert touched.observed is not None  # the gate read the Doc itself for the guard
    assert (first.code, first.provenance) == ("PROVENANCE_VIOLATION", {"tag": ()})
    assert "seen in none of them in this run" in first.message  # the gate's read was not a result
    assert (second.code, second.provenance) == ("OK", {"tag": ("get_doc.body",)})


def test_http_intents_take_inputs(charter_home: Path, shared_sandbox: Sandbox) -> None:
    import httpx

    from charter.agent import Charter, ScriptedModel
    from charter.registry import Registry
    from charter.server import CharterService, IdempotencyStore, TokenStore, create_app, serving

    registry = Registry()
    path = ROOT / "contracts" / "orders.yaml"
    registry.publish(load_contract(path), path.read_text(encoding="utf-8"))
    log = AuditLog(charter_home / "audit.db")
    model = ScriptedModel([f"```python\n{READS_INPUTS}\n```"])
    service = CharterService.create(
        registry=registry, audit=log, agent=Charter(model=model, audit=log, sandbox=shared_sandbox)
    )
    store = TokenStore(charter_home / "tokens.yaml")
    token = store.add("ada", "ada", ["orders:read"])
    app = create_app(service, store, IdempotencyStore(charter_home / "idempotency.db"))
    body = {
        "contract": "orders",
        "intent": "say who",
        "inputs": {"who": "ada", "pin": SECRET},
        "secret_inputs": ["pin"],
    }
    with serving(app, name="charter-api") as url:
        response = httpx.post(f"{url}/v1/intents", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["answer"] == f"ada:{len(SECRET)}"
    assert model.requests[0].messages[0].text.endswith('`inputs["name"]`: pin, who\n')
    [program_run] = log.run(response.json()["run_id"]).program_runs()
    inputs, secret = _opened_inputs(charter_home, program_run)
    assert secret == ("pin",)
    assert inputs == {"who": "ada", "pin": log.secret_key.digest(SECRET)}
    _stored_nowhere(charter_home, SECRET)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (
            '"reqest" in provenance.recipients',
            "52:15: guard 'known_names_only' compares provenance.recipients with 'reqest', which is not one of its "
            "sources (request, list_payees[].name), so it would never match (did you mean 'request'?); write the "
            "source's canonical label ([] after each list step)",
        ),
        (
            '"list_payees.name" in provenance.recipients',
            "52:15: guard 'known_names_only' compares provenance.recipients with 'list_payees.name', which is not one "
            "of its sources (request, list_payees[].name), so it would never match (did you mean "
            "'list_payees[].name'?); write the source's canonical label ([] after each list step)",
        ),
        (
            'provenance.recipients == ["list_payees.name"]',
            "52:15: guard 'known_names_only' compares provenance.recipients with 'list_payees.name', which is not one "
            "of its sources (request, list_payees[].name), so it would never match (did you mean "
            "'list_payees[].name'?); write the source's canonical label ([] after each list step)",
        ),
        (
            '["request", "list_payee[].name"] != provenance.recipients',
            "52:15: guard 'known_names_only' compares provenance.recipients with 'list_payee[].name', which is not "
            "one of its sources (request, list_payees[].name), so it would never match (did you mean "
            "'list_payees[].name'?); write the source's canonical label ([] after each list step)",
        ),
        (
            'provenance.recipients.all(s, s in ["request", "reqest"])',
            "52:15: guard 'known_names_only' compares provenance.recipients with 'reqest', which is not one of its "
            "sources (request, list_payees[].name), so it would never match (did you mean 'request'?); write the "
            "source's canonical label ([] after each list step)",
        ),
        (
            'provenance.recipients.exists(s, s == "list_payee[].name")',
            "52:15: guard 'known_names_only' compares provenance.recipients with 'list_payee[].name', which is not "
            "one of its sources (request, list_payees[].name), so it would never match (did you mean "
            "'list_payees[].name'?); write the source's canonical label ([] after each list step)",
        ),
    ],
)
def test_a_rule_comparing_provenance_with_a_label_it_never_holds_is_refused(
    write_contract: WriteContract, when: str, expected: str
) -> None:
    """A misspelt label would make the rule silently always false: check refuses it."""
    old = "'params.recipients.size() <= 1 || \"request\" in provenance.recipients'"
    assert _problems(write_contract, old, f"'params.recipients.size() <= 1 || {when}'") == [expected]


def test_canonical_labels_in_rules_check(write_contract: WriteContract) -> None:
    text = CONTRACT.replace(
        '"request" in provenance.recipients',
        'provenance.recipients.exists(s, s == "list_payees[].name") || "request" in provenance.recipients'
        ' || provenance.recipients == ["request"] || provenance.recipients.all(s, s in ["list_payees[].name"])',
    )
    assert load_contract(write_contract(text)).model.operations["send_mail"].guards


def test_a_write_may_name_a_read_declared_after_it(write_contract: WriteContract) -> None:
    """Sources resolve against every operation, whatever the order they are declared in."""
    head, _, rest = CONTRACT.partition("  send_payment:\n")
    writes, _, tail = ("  send_payment:\n" + rest).partition("boundaries:\n")
    reads = head.split("operations:\n", 1)[1]
    reordered = head.split("operations:\n", 1)[0] + "operations:\n" + writes + reads + "boundaries:\n" + tail
    checked = load_contract(write_contract(reordered))
    assert list(checked.model.operations)[:2] == ["send_payment", "send_mail"]
    compiled = compile_contract(checked)
    labels = [s.label for s in compiled.gate.operations["send_payment"].provenance[0].sources]
    assert labels == ["request", "list_payees[].iban"]
