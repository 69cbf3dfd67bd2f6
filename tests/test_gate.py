"""The contract gate with the real sandbox, the example SQLite backends and a real audit log.

Each reason code is produced by a real program, and each test checks three things: what
the program was told, the receipt the gate committed, and that the backend was (or was
not) touched.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from charter.audit import AuditLog, Decision, Opened, Outcome, verify_log
from charter.backends import BackendFailure, CallContext, ContractBackend
from charter.compiler import CompiledContract, compile_contract
from charter.contract import load_contract
from charter.principal import Principal
from charter.runner import Runner
from charter.sandbox import Halted, SandboxLimits
from tests.conftest import ALL_ORDER_SCOPES as ALL
from tests.conftest import ROOT, Governed, charter, compiled

RAW = 'host = conclude.__globals__["host"]\n'  # the raw host import, reached through the runtime
D = "from decimal import Decimal\n"


def raw_call(operation: str, arguments: str) -> str:
    """The raw host import, past the typed proxies; refuses with the host's error payload."""
    call = f"try:\n    host.call({operation!r}, {arguments!r})\nexcept Exception as error:\n    refuse(error.value)\n"
    return RAW + call + "conclude('went through')\n"


def decisions(governed: Governed, run_id: str) -> list[Decision]:
    return [r for r in governed.log.run(run_id).receipts if isinstance(r, Decision)]


def order(order_id: int) -> dict[str, Any]:
    from examples.orders import backend

    return backend.get_order(id=order_id)


# (name, program, code, words the message must contain)
REFUSALS = [
    (
        "unknown-operation",
        raw_call("delete_all_orders", "{}"),
        "UNKNOWN_OPERATION",
        "contract orders 1.0.0 has no operation 'delete_all_orders'",
    ),
    ("malformed", raw_call("get_order", "[1]"), "MALFORMED_CALL", "arguments must be a JSON object"),
    (
        "too-large",
        raw_call("get_order", '{"id": "' + "x" * 70_000 + '"}'),
        "ARGUMENTS_TOO_LARGE",
        "exceed the limit of 65536 bytes",
    ),
    ("invalid-arguments", raw_call("get_order", '{"id": "123"}'), "INVALID_ARGUMENTS", "get_order: Expected `int`"),
    (
        "money-as-float",
        raw_call("refund_order", '{"id": 125, "amount": 5.5, "reason": "late"}'),
        "INVALID_ARGUMENTS",
        "got a float",
    ),
    (
        "not-found",
        'orders.cancel_order(id=999, reason="moved")',
        "NOT_FOUND",
        "Order 999 was not found",
    ),
    (
        "state",
        'orders.cancel_order(id=123, reason="moved")',
        "STATE_VIOLATION",
        "Order 123 cannot be cancelled: it is dispatched; cancel is allowed only from pending, confirmed. "
        "(hard boundary no_cancel_after_picking: Never cancel an order in picking, packed, or dispatched state.)",
    ),
    (
        "guard",
        'orders.cancel_order(id=101, reason="   ")',
        "GUARD_VIOLATION",
        "A cancellation needs a reason the customer gave. (guard cancel_reason_given)",
    ),
    (
        "guard-money-in-cents",
        D + 'orders.verify_refund(id=125)\norders.refund_order(id=125, amount=Decimal("299.97"), reason="late")',
        "GUARD_VIOLATION",
        "(hard boundary refund_capped_by_total: Never refund more than the order total",
    ),
    (
        "sequence",
        D + 'orders.refund_order(id=125, amount=Decimal("5.00"), reason="late")',
        "SEQUENCE_VIOLATION",
        "expected step verify_refund, received step refund_order",
    ),
    (
        "sequence-other-entity",
        D + 'orders.verify_refund(id=123)\norders.refund_order(id=125, amount=Decimal("5.00"), reason="late")',
        "SEQUENCE_VIOLATION",
        "refund_order on Order 125 must follow verify_refund on Order 125",
    ),
    (
        "write-limit",
        D
        + "orders.confirm_order(id=101)\n"
        + 'orders.cancel_order(id=101, reason="a")\n'
        + 'orders.cancel_order(id=102, reason="b")\n'
        + "orders.verify_refund(id=125)\n"
        + 'orders.refund_order(id=125, amount=Decimal("1.00"), reason="late")\n'
        + "orders.verify_refund(id=123)\n"
        + 'orders.refund_order(id=123, amount=Decimal("1.00"), reason="late")\n'
        + "orders.verify_refund(id=104)\n"
        + 'orders.refund_order(id=104, amount=Decimal("1.00"), reason="late")\n',
        "LIMIT_EXCEEDED",
        "the run already made 5 writes, the contract's limit (limits.max_writes = 5)",
    ),
]


@pytest.mark.parametrize(("program", "code", "words"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_each_refusal_reaches_the_program_and_the_receipt(
    governed: Governed, program: str, code: str, words: str
) -> None:
    before = {o: order(o) for o in (101, 102, 104, 123, 125)}
    execution = governed.run(program)
    assert execution.status == "refused", execution.outcome
    assert execution.reason is not None
    assert words in execution.reason
    denied = [d for d in decisions(governed, execution.run_id) if d.decision == "DENY"]
    assert [d.code for d in denied] == [code]
    assert words in denied[0].message
    if code != "LIMIT_EXCEEDED":  # this run makes allowed writes first
        assert {o: order(o) for o in before} == before, "a denied call changed the backend"


MONEY_EXPECTED = (
    "Expected `money` as a decimal string of ASCII digits with at most 2 decimal places, "
    'no exponent or spaces (e.g. "12.50")'
)


@pytest.mark.parametrize(
    "amount",
    ["1e1", "1E+1", " 0.01", "0.01 ", "\uff10.\uff10\uff11", "1_000", "+5", "5.", ".5", "NaN", "Infinity", "0x10"],
    ids=[
        "exponent",
        "exponent-signed",
        "leading-space",
        "trailing-space",
        "full-width",
        "underscore",
        "plus",
        "trailing-point",
        "leading-point",
        "nan",
        "infinity",
        "hex",
    ],
)
def test_money_on_the_raw_host_call_is_exactly_ascii_decimal_text(governed: Governed, amount: str) -> None:
    # Past the proxies: Decimal() would take each of these (1e1 reached the backend as 1E+1).
    arguments = json.dumps({"id": 125, "amount": amount, "reason": "late"})
    before = order(125)
    execution = governed.run(
        RAW + "host.call('verify_refund', '{\"id\": 125}')\n" + raw_call("refund_order", arguments)
    )
    assert execution.status == "refused", execution.outcome
    [verify, refund] = decisions(governed, execution.run_id)
    assert (verify.code, refund.code) == ("OK", "INVALID_ARGUMENTS")
    assert refund.message == f"refund_order: {MONEY_EXPECTED} - at `$.amount`"
    assert order(125) == before


def test_money_nested_in_a_record_argument_is_held_to_the_same_text() -> None:
    # The check walks records and lists: msgspec alone would read "1e1" in `lines[1].price` as 10.
    from charter.compiler.artifact import ParamSpec
    from charter.contract.types import TypeRef
    from charter.gate._arguments import ArgumentChecker, InvalidArguments

    line = TypeRef("record", name="Line")
    params = (ParamSpec(name="lines", type=TypeRef("list", item=line), required=True),)
    checker = ArgumentChecker({"order": params}, {"Line": {"price": TypeRef("money")}}, {})
    assert checker.check("order", {"lines": [{"price": "1.50"}]}) == {"lines": [{"price": Decimal("1.50")}]}
    with pytest.raises(InvalidArguments) as raised:
        checker.check("order", {"lines": [{"price": "1.50"}, {"price": "1e1"}]})
    assert str(raised.value) == f"{MONEY_EXPECTED} - at `$.lines[1].price`"


def test_money_reaches_the_backend_and_the_receipt_in_fixed_point(governed: Governed) -> None:
    # The proxy sends a Decimal as fixed-point text: str(Decimal("1E+1")) would be "1E+1".
    program = (
        D + 'orders.verify_refund(id=125)\nr = orders.refund_order(id=125, amount=Decimal("1E+1"), reason="late")\n'
    )
    execution = governed.run(program + "conclude(str(r.refunded))")
    assert execution.status == "done", execution.outcome
    [_, refund] = decisions(governed, execution.run_id)
    assert refund.code == "OK"
    assert refund.arguments == '{"amount":"10","id":125,"reason":"late"}'


def test_a_scope_the_principal_lacks_is_forbidden(governed: Governed) -> None:
    execution = governed.run('orders.cancel_order(id=101, reason="moved")', scopes=frozenset({"orders:read"}))
    assert execution.reason == "cancel_order needs scope orders:write; principal ada holds orders:read."
    assert [d.code for d in decisions(governed, execution.run_id)] == ["FORBIDDEN_SCOPE"]
    assert order(101)["status"] == "pending"


def test_allowed_calls_record_what_the_gate_observed(governed: Governed) -> None:
    execution = governed.run('o = orders.cancel_order(id=101, reason="moved")\nconclude(o.status)')
    assert (execution.status, execution.answer) == ("done", "cancelled")
    [decision] = decisions(governed, execution.run_id)
    assert (decision.decision, decision.code, decision.operation) == ("ALLOW", "OK", "cancel_order")
    assert decision.observed is not None
    assert (decision.observed.entity, decision.observed.key, decision.observed.state) == ("Order", 101, "pending")
    assert decision.idempotency_key is not None
    assert decision.arguments == '{"id":101,"reason":"moved"}'
    assert (decision.contract, decision.version) == ("orders", "1.0.0")


def write_key(logical_run_id: str, call: int) -> str:
    """The idempotency key a write call must carry: H(logical run id, call sequence)."""
    return hashlib.sha256(f"{logical_run_id}\x1f{call}".encode()).hexdigest()[:32]


def outcomes(governed: Governed, run_id: str) -> list[Outcome]:
    return [r for r in governed.log.run(run_id).receipts if isinstance(r, Outcome)]


def test_a_sequence_step_without_a_key_is_not_given_one(
    governed: Governed, write_contract: Any, shared_sandbox: Any
) -> None:
    source = (ROOT / "contracts" / "orders.yaml").read_text(encoding="utf-8")
    path = write_contract(
        source.replace("    transition: confirm\n", "    transition: confirm\n    after: [list_orders]\n")
    )
    contract = compile_contract(load_contract(path))
    runner = Runner(audit=governed.log, sandbox=shared_sandbox)
    execution = runner.execute("orders.confirm_order(id=101)", contract=contract, principal=Principal("ada", ALL))
    assert execution.reason is not None
    assert execution.reason.startswith(
        "confirm_order on Order 101 must follow list_orders in the same run: expected step list_orders, "
        "received step confirm_order."
    ), execution.reason
    [decision] = decisions(governed, execution.run_id)
    assert decision.code == "SEQUENCE_VIOLATION"
    assert "list_orders on Order" not in decision.message


# -- writes: each call its own action, `idempotent` deduped, in doubt refused ----------------

REFUND_125 = D + "orders.verify_refund(id=125)\n"


def test_two_payments_in_one_run_both_execute_with_their_own_keys(governed: Governed) -> None:
    program = (
        REFUND_125
        + 'a = orders.refund_order(id=125, amount=Decimal("1.00"), reason="late")\n'
        + 'b = orders.refund_order(id=125, amount=Decimal("1.00"), reason="late")\n'
        + 'c = orders.refund_order(id=125, amount=Decimal("2.00"), reason="damaged")\n'
        + "conclude(' '.join(str(x.refunded) for x in (a, b, c)))"
    )
    execution = governed.run(program)
    assert execution.answer == "21.00 22.00 24.00"  # three refunds, none merged, none refused
    assert order(125)["refunded"] == Decimal("24.00")
    writes = [d for d in decisions(governed, execution.run_id) if d.operation == "refund_order"]
    assert [(d.decision, d.code) for d in writes] == [("ALLOW", "OK")] * 3
    assert [d.idempotency_key for d in writes] == [write_key(execution.run_id, n) for n in (2, 3, 4)]
    assert len({d.idempotency_key for d in writes}) == 3
    assert [o.status for o in outcomes(governed, execution.run_id)] == ["ok", "ok", "ok", "ok"]


def test_an_idempotent_write_repeated_with_the_same_arguments_returns_its_first_result(governed: Governed) -> None:
    program = "a = orders.confirm_order(id=101)\nb = orders.confirm_order(id=101)\nconclude(a.status + ' ' + b.status)"
    execution = governed.run(program)
    assert execution.answer == "confirmed confirmed"  # the second was not sent: from confirmed it is refused
    first, second = decisions(governed, execution.run_id)
    assert (first.code, second.code) == ("OK", "REPLAYED")
    assert second.idempotency_key == first.idempotency_key == write_key(execution.run_id, 1)
    assert second.observed is None  # nothing was read: nothing is sent
    ok, replayed = outcomes(governed, execution.run_id)
    assert (ok.status, replayed.status) == ("ok", "replayed")
    assert replayed.result == ok.result
    # Within one run only: a new run confirming again is a new action, checked afresh.
    again = governed.run("orders.confirm_order(id=101)")
    assert [d.code for d in decisions(governed, again.run_id)] == ["STATE_VIOLATION"]


def test_write_keys_derive_from_the_logical_run_and_the_call(governed: Governed) -> None:
    program = REFUND_125 + 'orders.refund_order(id=125, amount=Decimal("1.00"), reason="late")\nconclude("ok")'
    ada = Principal("ada", ALL)

    def keys(logical: str | None) -> list[str | None]:
        execution = governed.runner.execute(program, contract=governed.contract, principal=ada, logical_run_id=logical)
        opened = governed.log.run(execution.run_id).opened
        assert isinstance(opened, Opened)
        assert opened.logical_run_id == logical
        return [d.idempotency_key for d in decisions(governed, execution.run_id) if d.operation == "refund_order"]

    chain = "0" * 31 + "1"
    assert keys(chain) == keys(chain) == [write_key(chain, 2)]  # a continuation of the chain: the same key
    assert keys(None) != keys(None)  # runs of their own: their own keys


def test_the_write_limit_counts_every_write(governed: Governed) -> None:
    program = (
        REFUND_125 + 'for n in range(6):\n    orders.refund_order(id=125, amount=Decimal("1.00"), reason="late")\n'
    )
    execution = governed.run(program)
    assert execution.reason is not None
    assert "the run already made 5 writes, the contract's limit (limits.max_writes = 5)" in execution.reason
    assert [d.code for d in decisions(governed, execution.run_id)] == ["OK"] * 6 + ["LIMIT_EXCEEDED"]
    assert order(125)["refunded"] == Decimal("25.00")


class InDoubtOnce:
    """The first refund reaches the backend and its answer is lost; later ones work."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, result: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise BackendFailure("BACKEND_DISCONNECTED", "refund_order was sent and no answer came", in_doubt=True)
        return result


def test_a_write_after_one_in_doubt_is_refused_in_doubt_and_never_sent(governed: Governed) -> None:
    fault = InDoubtOnce()
    runner, backend = faulty_runner(governed, refund_order=fault)
    program = (
        REFUND_125
        + "orders.verify_refund(id=123)\n"
        + "try:\n"
        + '    orders.refund_order(id=125, amount=Decimal("5.00"), reason="late")\n'
        + "except OperationError:\n"
        + "    pass\n"
        + 'orders.refund_order(id=123, amount=Decimal("1.00"), reason="late")\n'  # another order: allowed
        + "try:\n"
        + '    orders.refund_order(id=125, amount=Decimal("5.00"), reason="late")\n'
        + "except ContractViolation as error:\n"
        + "    conclude(error.code + ' | ' + str(error))\n"
    )
    execution = runner.execute(program, contract=governed.contract, principal=Principal("ada", ALL))
    assert execution.answer is not None
    code, message = execution.answer.split(" | ", 1)
    assert code == "IN_DOUBT"
    assert message == (
        "refund_order on Order 125 refused: call 3 of this run made the same write and got no answer, so it may "
        "have acted; nothing is sent again in this run. Read the entity to learn its state."
    )
    assert fault.calls == 2  # the lost one and order 123's: the repeat never reached the backend
    assert backend.performed.count("refund_order") == 2
    denied = decisions(governed, execution.run_id)[-1]
    assert (denied.decision, denied.code, denied.clause) == ("DENY", "IN_DOUBT", "in_doubt:refund_order")
    assert [(o.call, o.status) for o in outcomes(governed, execution.run_id)][2:] == [(3, "unknown"), (4, "ok")]


def test_a_create_in_doubt_refuses_the_same_create_and_allows_another(governed: Governed) -> None:
    from examples.invoices import backend as invoices

    invoices.seed()
    contract = compiled("invoices")
    fault = InDoubtOnce()
    backend = Faulty(contract, {"create_invoice": fault})
    runner = Runner(audit=governed.log, sandbox=governed.runner.sandbox, backend_for=lambda _: backend)
    create = 'invoices.create_invoice(vendor="Acme", amount=Decimal("{}"), currency="eur", due=datetime(2027, 1, 1))'
    program = (
        D
        + "from datetime import datetime\n"
        + f"try:\n    {create.format('10.00')}\nexcept OperationError:\n    pass\n"
        + f"other = {create.format('12.00')}\n"  # other arguments: another invoice, allowed
        + f"try:\n    {create.format('10.00')}\nexcept ContractViolation as error:\n    conclude(error.code + ' | ' + str(error))\n"
    )
    execution = runner.execute(
        program, contract=contract, principal=Principal("kim", frozenset({"invoices:write", "invoices:read"}))
    )
    assert execution.answer is not None
    assert execution.answer.startswith(
        "IN_DOUBT | create_invoice with these arguments refused: call 1 of this run made the same write"
    )
    assert backend.performed.count("create_invoice") == 2  # the lost one and the other invoice


# -- results: what reaches the program has the contract's types -----------------------------


def with_(field: str, value: Any) -> Any:
    return lambda record: {**record, field: value}


def without(field: str) -> Any:
    return lambda record: {k: v for k, v in record.items() if k != field}


def nested_quantity(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "items": [{**record["items"][0], "quantity": "one"}]}


def second_item_bad(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [records[0], {**records[1], "id": None}, *records[2:]]


CAUGHT = "except OperationError as error:\n    conclude(error.code + ' | ' + str(error))\n"


@pytest.mark.parametrize(
    ("operation", "fault", "path", "words"),
    [
        ("get_order", with_("id", "101"), "$.id", "Expected `int`, got `str`"),
        ("get_order", without("customer"), "$", "Object missing required field `customer`"),
        ("get_order", with_("status", "lost"), "$.status", "Expected `OrderStatus` (a contract enum)"),
        ("get_order", with_("total", "89.001"), "$.total", "Expected money with at most 2 decimal places"),
        ("get_order", with_("total", 89.0), "$.total", "Expected money as a decimal string, got float"),
        ("get_order", with_("placed_at", "yesterday"), "$.placed_at", "Expected `datetime`"),
        ("get_order", nested_quantity, "$.items[0].quantity", "Expected `int`, got `str`"),
        ("list_orders", second_item_bad, "$[1].id", "Expected `int`, got `null`"),
    ],
    ids=["int", "missing-field", "enum", "money-places", "money-float", "datetime", "nested-record", "list-item"],
)
def test_a_result_of_the_wrong_type_fails_closed(
    governed: Governed, operation: str, fault: Any, path: str, words: str
) -> None:
    runner, _ = faulty_runner(governed, **{operation: fault})
    call = "orders.get_order(id=101)" if operation == "get_order" else "orders.list_orders()"
    program = f"try:\n    o = {call}\n    conclude('got it')\n" + CAUGHT
    execution = runner.execute(program, contract=governed.contract, principal=Principal("ada", ALL))
    assert execution.answer is not None
    code, message = execution.answer.split(" | ", 1)
    assert code == "RESULT_INVALID"
    assert f"{words}" in message
    assert message.endswith(f" - at `{path}`. It was withheld from the program.")
    [outcome] = outcomes(governed, execution.run_id)
    assert (outcome.status, outcome.code, outcome.result, outcome.result_sha256) == (
        "failed",
        "RESULT_INVALID",
        None,
        None,
    )
    assert outcome.message == message


SECRET_VALUE = "hunter2"


@pytest.mark.parametrize(
    ("fault", "path", "words"),
    [
        (with_("status", SECRET_VALUE), "$.status", "Expected `OrderStatus` (a contract enum)"),
        (with_("total", SECRET_VALUE + ".5"), "$.total", MONEY_EXPECTED),
        (with_("total", "2.4242"), "$.total", "Expected money with at most 2 decimal places"),
        (with_("placed_at", SECRET_VALUE), "$.placed_at", "Expected `datetime`"),
        (with_("customer", [SECRET_VALUE]), "$.customer", "Expected `str`, got `array`"),
    ],
    ids=["enum", "money-text", "money-places", "datetime", "str"],
)
def test_an_invalid_result_is_named_by_path_and_type_never_by_its_value(
    governed: Governed, fault: Any, path: str, words: str
) -> None:
    runner, _ = faulty_runner(governed, get_order=fault)
    program = "try:\n    orders.get_order(id=101)\n    conclude('got it')\n" + CAUGHT
    execution = runner.execute(program, contract=governed.contract, principal=Principal("ada", ALL))
    assert execution.answer is not None
    assert execution.answer.startswith(
        f"RESULT_INVALID | get_order returned a value that is not the contract's Order: {words} - at `{path}`."
    )
    assert SECRET_VALUE not in execution.answer
    assert "2.4242" not in execution.answer
    assert all(b"hunter2" not in row.body and b"2.4242" not in row.body for row in governed.log.stored())


@pytest.mark.parametrize(
    ("fault", "path", "words"),
    [
        (with_("id", 2**70), "$.id", "Expected `int` that fits in 64 bits"),
        (with_("placed_at", "2026-01-01T10:00:00"), "$.placed_at", "Expected `datetime` with a UTC offset (RFC 3339)"),
        (with_("total", 2), "$.total", "Expected money as a decimal string, got int"),
        (with_("total", "1e2"), "$.total", MONEY_EXPECTED),  # Decimal() reads it as 1E+2
        (with_("total", " 89.00"), "$.total", MONEY_EXPECTED),
        (with_("total", "\uff18\uff19"), "$.total", MONEY_EXPECTED),  # full-width 89
        (with_("refunded", Decimal(2)), None, None),  # a Decimal is money as a program sends it
        (with_("placed_at", "2026-01-01T10:00:00+02:00"), None, None),
    ],
    ids=[
        "int-beyond-64-bits",
        "naive-datetime",
        "int-money",
        "exponent-money",
        "spaced-money",
        "full-width-money",
        "decimal-money",
        "datetime-with-offset",
    ],
)
def test_results_follow_the_rules_arguments_do(
    governed: Governed, fault: Any, path: str | None, words: str | None
) -> None:
    runner, _ = faulty_runner(governed, get_order=fault)
    program = (
        "try:\n    o = orders.get_order(id=101)\n    conclude('got it')\n"
        "except OperationError as error:\n    conclude(error.code + ' | ' + str(error))\n"
    )
    execution = runner.execute(program, contract=governed.contract, principal=Principal("ada", ALL))
    if path is None:
        assert execution.answer == "got it", execution.outcome
        return
    assert execution.answer is not None
    assert execution.answer.startswith(
        f"RESULT_INVALID | get_order returned a value that is not the contract's Order: {words} - at `{path}`."
    )


def test_undeclared_fields_are_dropped_and_named_and_absent_optionals_are_none(governed: Governed) -> None:
    def extras(record: dict[str, Any]) -> dict[str, Any]:
        items = [{**i, "warehouse": "W1"} for i in record["items"]]
        trimmed = {k: v for k, v in record.items() if k != "note"}  # optional: may be absent
        return {**trimmed, "items": items, "internal_cost": "12.00"}

    runner, _ = faulty_runner(governed, get_order=extras)
    program = "o = orders.get_order(id=101)\nconclude(repr(o.note))"
    execution = runner.execute(program, contract=governed.contract, principal=Principal("ada", ALL))
    assert execution.answer == "None", execution.outcome
    [outcome] = outcomes(governed, execution.run_id)
    assert (outcome.status, outcome.dropped) == ("ok", ("$.internal_cost", "$.items[*].warehouse"))
    assert outcome.result is not None
    assert "internal_cost" not in outcome.result
    assert "warehouse" not in outcome.result
    assert '"note":null' in outcome.result


def test_an_oversized_result_is_refused_before_its_outcome(governed: Governed) -> None:
    runner, _ = faulty_runner(governed)
    limits = SandboxLimits.from_contract(governed.contract.gate.limits).tightened(max_result_bytes=1000)
    program = "try:\n    orders.list_orders()\n    conclude('got it')\n" + CAUGHT
    execution = runner.execute(program, contract=governed.contract, principal=Principal("ada", ALL), limits=limits)
    assert execution.answer is not None
    assert execution.answer.startswith("RESULT_TOO_LARGE | list_orders returned ")
    assert "bytes, above the limit of 1000; it was withheld from the program." in execution.answer
    [outcome] = outcomes(governed, execution.run_id)
    assert (outcome.status, outcome.code, outcome.result) == ("failed", "RESULT_TOO_LARGE", None)


def test_too_many_denials_end_the_run(governed: Governed) -> None:
    program = (
        "for attempt in range(100):\n"
        "    try:\n"
        '        orders.cancel_order(id=123, reason="please")\n'
        "    except ContractViolation:\n"
        "        pass\n"
        "conclude('gave up')"
    )
    execution = governed.run(program)
    assert isinstance(execution.outcome, Halted)
    assert execution.outcome.code == "STATE_VIOLATION"
    assert "its limit (limits.max_denials)" in execution.outcome.reason
    assert len(decisions(governed, execution.run_id)) == governed.contract.gate.limits.max_denials == 10


def test_a_payment_that_needs_approval_pauses_the_run(charter_home: Path, governed: Governed) -> None:
    from examples.invoices import backend as invoices

    invoices.seed()
    runner = Runner(audit=governed.log, sandbox=governed.runner.sandbox)
    execution = runner.execute(
        'invoices.pay_invoice(number="INV-1003")',
        contract=compiled("invoices"),
        principal=Principal("kim", frozenset({"invoices:pay"})),
    )
    assert (execution.status, execution.cause) == ("awaiting_approval", "APPROVAL_REQUIRED")
    assert execution.approval_id is not None
    assert execution.reason is not None
    assert "pay_invoice (call 1) needs a human's approval" in execution.reason
    assert decisions(governed, execution.run_id) == []  # the paused call has no Decision
    assert invoices.get_invoice(number="INV-1003")["state"] == "approved"


def test_guards_see_the_principal_and_bindings_record_it(governed: Governed) -> None:
    from examples.invoices import backend as invoices

    invoices.seed()
    runner = Runner(audit=governed.log, sandbox=governed.runner.sandbox)
    contract = compiled("invoices")
    scopes = frozenset({"invoices:read", "invoices:write", "invoices:approve"})
    submitted = runner.execute(
        'i = invoices.submit_invoice(number="INV-1001")\nconclude(i.submitted_by)',
        contract=contract,
        principal=Principal("lee", scopes),
    )
    assert submitted.answer == "lee"
    own = runner.execute(
        'invoices.approve_invoice(number="INV-1001")', contract=contract, principal=Principal("lee", scopes)
    )
    assert own.reason is not None
    assert "The person who submitted an invoice may not approve it. (guard four_eyes)" in own.reason
    large = runner.execute(
        'invoices.approve_invoice(number="INV-1002")', contract=contract, principal=Principal("kim", scopes)
    )
    assert large.reason is not None
    assert "Invoices over 50,000.00 need the invoices:approve_large scope" in large.reason
    other = runner.execute(
        'invoices.approve_invoice(number="INV-1001")\nconclude("approved")',
        contract=contract,
        principal=Principal("kim", scopes),
    )
    assert other.status == "done", other.outcome
    assert invoices.get_invoice(number="INV-1001")["approved_by"] == "kim"


# -- fail closed -------------------------------------------------------------------------


class Faulty(ContractBackend):
    """The example backend with faults injected per operation, and a log of what it performed."""

    def __init__(self, contract: CompiledContract, faults: Mapping[str, Any]) -> None:
        super().__init__(contract)
        self.faults = dict(faults)
        self.performed: list[str] = []

    def invoke(self, operation: str, arguments: Mapping[str, Any], context: CallContext | None = None) -> Any:
        fault = self.faults.get(operation)
        if isinstance(fault, BaseException):
            raise fault
        result = super().invoke(operation, arguments, context)
        self.performed.append(operation)
        return fault(result) if callable(fault) else result


def faulty_runner(governed: Governed, **faults: Any) -> tuple[Runner, Faulty]:
    backend = Faulty(governed.contract, faults)
    return Runner(audit=governed.log, sandbox=governed.runner.sandbox, backend_for=lambda _: backend), backend


CANCEL_101 = 'orders.cancel_order(id=101, reason="moved")\nconclude("cancelled")'


@pytest.mark.parametrize(
    ("fault", "code", "words"),
    [
        (
            RuntimeError("database is locked"),
            "GATE_ERROR",
            "cancel_order refused: reading Order 101 through get_order failed; the gate does not allow what it "
            "cannot check.",
        ),
        (
            with_("refunded", "not money"),
            "RESULT_INVALID",
            "get_order returned Order 101 not as the contract declares it (" + MONEY_EXPECTED + " - at `$.refunded`)",
        ),
        (lambda order: ["not", "an", "order"], "RESULT_INVALID", "(Expected `object`, got `array` - at `$`)"),
        # A mistyped lifecycle field must neither pass nor fail the state check by accident.
        (with_("status", "PENDING"), "RESULT_INVALID", "(Expected `OrderStatus` (a contract enum) - at `$.status`)"),
        (with_("status", 1), "RESULT_INVALID", "(Expected `str`, got `int` - at `$.status`)"),
    ],
    ids=[
        "reader-raises",
        "reader-returns-garbage",
        "reader-returns-wrong-type",
        "reader-returns-unknown-state",
        "reader-returns-mistyped-state",
    ],
)
def test_a_broken_state_read_is_a_denial(governed: Governed, fault: Any, code: str, words: str) -> None:
    runner, backend = faulty_runner(governed, get_order=fault)
    execution = runner.execute(
        CANCEL_101, contract=governed.contract, principal=Principal("ada", frozenset({"orders:write"}))
    )
    assert execution.status == "refused"
    assert execution.reason is not None
    assert words in execution.reason
    assert "database is locked" not in execution.reason
    assert "cancel_order" not in backend.performed
    assert order(101)["status"] == "pending"
    [decision] = decisions(governed, execution.run_id)
    assert (decision.decision, decision.code) == ("DENY", code)


def test_a_receipt_that_cannot_be_written_denies_the_call(governed: Governed) -> None:
    with sqlite3.connect(governed.log.path) as db:
        db.execute(
            "CREATE TRIGGER disk_full BEFORE INSERT ON receipts WHEN NEW.kind = 'decision' "
            "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        )
    runner, backend = faulty_runner(governed)
    execution = runner.execute(
        CANCEL_101, contract=governed.contract, principal=Principal("ada", frozenset({"orders:write"}))
    )
    assert execution.status == "refused"
    assert execution.reason is not None
    assert "its receipt could not be written" in execution.reason
    assert "disk I/O error" in execution.reason
    assert backend.performed == ["get_order"]  # the gate's state read, never the write
    assert order(101)["status"] == "pending"


SECRET = "database password is hunter2"


def test_backend_exception_text_reaches_neither_program_nor_caller_nor_receipt(governed: Governed) -> None:
    runner, _ = faulty_runner(governed, cancel_order=RuntimeError(SECRET))
    program = (
        'try:\n    orders.cancel_order(id=101, reason="moved")\n'
        "except OperationError as error:\n    conclude(error.code + ': ' + str(error), {'args': repr(error.args)})"
    )
    execution = runner.execute(
        program, contract=governed.contract, principal=Principal("ada", frozenset({"orders:write"}))
    )
    assert execution.answer == (
        "BACKEND_ERROR: cancel_order failed in the backend; its error text is withheld from the program "
        "(the operator can read it with `charter audit show`)."
    )
    assert "hunter2" not in repr(execution.data)
    [outcome] = outcomes(governed, execution.run_id)
    digest = hashlib.sha256(SECRET.encode()).hexdigest()
    assert (outcome.status, outcome.code, outcome.error_type, outcome.error_sha256) == (
        "failed",
        "BACKEND_ERROR",
        "RuntimeError",
        digest,
    )
    assert all(b"hunter2" not in row.body for row in governed.log.stored())  # nor any signed receipt
    [kept] = governed.log.backend_errors(execution.run_id)
    assert (kept.call, kept.operation, kept.error_type, kept.message_sha256, kept.message) == (
        1,
        "cancel_order",
        "RuntimeError",
        digest,
        SECRET,
    )
    assert governed.log.forget_backend_errors(execution.run_id) == 1  # redactable, the log still verifies
    assert governed.log.backend_errors(execution.run_id) == []
    assert verify_log(governed.log, governed.log.trusted_keys(), run_id=execution.run_id).ok
    shown = charter("audit", "show", execution.run_id)
    assert "hunter2" not in shown.stdout


class Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError(SECRET)

    def __repr__(self) -> str:
        raise ValueError(SECRET)


@pytest.mark.parametrize(
    "fault",
    [KeyboardInterrupt(SECRET), SystemExit(SECRET), GeneratorExit(SECRET), Unprintable()],
    ids=["KeyboardInterrupt", "SystemExit", "GeneratorExit", "unprintable"],
)
def test_any_exception_a_backend_raises_is_its_failure_with_the_text_withheld(
    governed: Governed, fault: BaseException
) -> None:
    runner, _ = faulty_runner(governed, cancel_order=fault)
    program = (
        'try:\n    orders.cancel_order(id=101, reason="moved")\n'
        "except OperationError as error:\n    conclude(error.code + ': ' + str(error))"
    )
    execution = runner.execute(program, contract=governed.contract, principal=Principal("ada", ALL))
    assert execution.status == "done", execution.outcome
    assert execution.answer == (
        "BACKEND_ERROR: cancel_order failed in the backend; its error text is withheld from the program "
        "(the operator can read it with `charter audit show`)."
    )
    [outcome] = outcomes(governed, execution.run_id)
    name = "tests.test_gate.Unprintable" if isinstance(fault, Unprintable) else type(fault).__name__
    assert (outcome.status, outcome.code, outcome.error_type) == ("failed", "BACKEND_ERROR", name)
    assert all(b"hunter2" not in row.body for row in governed.log.stored())
    [kept] = governed.log.backend_errors(execution.run_id)
    assert kept.message == (
        SECRET
        if not isinstance(fault, Unprintable)
        else "<tests.test_gate.Unprintable: its text could not be formatted>"
    )


@pytest.mark.parametrize(
    "fault", [KeyboardInterrupt(SECRET), SystemExit(SECRET), GeneratorExit(SECRET)], ids=lambda f: type(f).__name__
)
def test_any_exception_of_the_gates_state_read_is_a_denial_with_the_text_withheld(
    governed: Governed, fault: BaseException
) -> None:
    runner, backend = faulty_runner(governed, get_order=fault)
    execution = runner.execute(
        CANCEL_101, contract=governed.contract, principal=Principal("ada", frozenset({"orders:write"}))
    )
    assert (execution.status, execution.cause) == ("refused", "GATE_ERROR"), execution.outcome
    assert execution.reason is not None
    assert "hunter2" not in execution.reason
    assert "cancel_order" not in backend.performed
    [decision] = decisions(governed, execution.run_id)
    assert (decision.decision, decision.code, decision.error_type) == ("DENY", "GATE_ERROR", type(fault).__name__)
    assert all(b"hunter2" not in row.body for row in governed.log.stored())


def unrepresentable(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "id": 10**5000}  # beyond 64 bits, and beyond what Python will even print


def test_a_failure_after_the_backend_acted_is_reported_as_such_never_as_a_denial(governed: Governed) -> None:
    runner, backend = faulty_runner(governed, cancel_order=unrepresentable)
    program = (
        'try:\n    orders.cancel_order(id=101, reason="moved")\n'
        "except OperationError as error:\n    conclude(error.code + ' | ' + str(error))\n"
    )
    execution = runner.execute(program, contract=governed.contract, principal=Principal("ada", ALL))
    assert execution.answer == (
        "RESULT_INVALID | cancel_order returned a value that is not the contract's Order: Expected `int` that fits "
        "in 64 bits - at `$.id`. It was withheld from the program. The write itself was made; read the entity to "
        "learn its state."
    ), execution.outcome
    assert backend.performed == ["get_order", "cancel_order"]
    [decision] = decisions(governed, execution.run_id)
    assert decision.decision == "ALLOW"
    [outcome] = outcomes(governed, execution.run_id)
    assert (outcome.status, outcome.code, outcome.result) == ("failed", "RESULT_INVALID", None)


class Treacherous(dict):  # type: ignore[type-arg]
    """A result whose own code fails while the gate reads it (backend code runs in it)."""

    def items(self) -> Any:
        raise KeyboardInterrupt(SECRET)


def test_a_result_that_fails_while_it_is_checked_is_reported_as_an_action_that_ran(governed: Governed) -> None:
    runner, backend = faulty_runner(governed, cancel_order=Treacherous)
    program = (
        'try:\n    orders.cancel_order(id=101, reason="moved")\n'
        "except OperationError as error:\n    conclude(error.code + ' | ' + str(error))\n"
    )
    execution = runner.execute(program, contract=governed.contract, principal=Principal("ada", ALL))
    assert execution.answer == (
        "RESULT_INVALID | cancel_order ran, but its result could not be checked; it was withheld from the program "
        "(the operator can read why with `charter audit show`). The write itself was made; read the entity to "
        "learn its state."
    ), execution.outcome
    assert backend.performed == ["get_order", "cancel_order"]
    [decision] = decisions(governed, execution.run_id)
    assert decision.decision == "ALLOW"
    [outcome] = outcomes(governed, execution.run_id)
    assert (outcome.status, outcome.code, outcome.error_type) == ("failed", "RESULT_INVALID", "KeyboardInterrupt")
    assert all(b"hunter2" not in row.body for row in governed.log.stored())


def test_the_gates_own_failure_text_is_withheld_too(governed: Governed) -> None:
    runner, _ = faulty_runner(governed, get_order=RuntimeError(SECRET + " " + "x" * 2000))
    execution = runner.execute(
        CANCEL_101, contract=governed.contract, principal=Principal("ada", frozenset({"orders:write"}))
    )
    assert execution.reason is not None
    assert "hunter2" not in execution.reason
    [decision] = decisions(governed, execution.run_id)
    assert (decision.code, decision.error_type) == ("GATE_ERROR", "RuntimeError")
    assert all(b"hunter2" not in row.body for row in governed.log.stored())
    [kept] = governed.log.backend_errors(execution.run_id)
    assert kept.message.startswith(SECRET)
    assert len(kept.message) == 1024  # kept truncated; the hash is of the whole text
    assert (
        kept.message_sha256 == decision.error_sha256 == hashlib.sha256((SECRET + " " + "x" * 2000).encode()).hexdigest()
    )
    shown = charter("audit", "show", execution.run_id)
    assert SECRET in shown.stdout  # the local operator sees it


# -- check-then-act races --------------------------------------------------------------


class Racing(ContractBackend):
    """Holds each state read until both runs have read, so both decide on the same state."""

    def __init__(self, contract: CompiledContract) -> None:
        super().__init__(contract)
        self.both_read = threading.Barrier(2, timeout=20)

    def invoke(self, operation: str, arguments: Mapping[str, Any], context: CallContext | None = None) -> Any:
        result = super().invoke(operation, arguments, context)
        if operation == "get_order":
            self.both_read.wait()
        return result


def test_two_runs_racing_on_one_order_write_once(governed: Governed) -> None:
    backend = Racing(governed.contract)
    runner = Runner(audit=governed.log, sandbox=governed.runner.sandbox, backend_for=lambda _: backend)
    principal = Principal("ada", frozenset({"orders:write"}))
    program = (
        "try:\n    o = orders.cancel_order(id=101, reason={reason!r})\n    conclude(o.note)\n"
        "except OperationError as error:\n    refuse(error.code + ': ' + str(error))"
    )
    results = []

    def race(reason: str) -> None:
        results.append(runner.execute(program.format(reason=reason), contract=governed.contract, principal=principal))

    threads = [threading.Thread(target=race, args=(r,)) for r in ("first", "second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(r.status for r in results) == ["done", "refused"]
    [winner] = [r for r in results if r.status == "done"]
    [loser] = [r for r in results if r.status == "refused"]
    assert order(101)["note"] == winner.answer  # exactly one cancellation is in the database
    assert loser.reason is not None
    assert loser.reason.startswith("PRECONDITION_FAILED: cancel_order: Order 101 changed after the gate checked it")
    # The orders service checked If-Match (the ETag of the gate's read) inside its transaction.
    assert "412 from POST http://127.0.0.1:" in loser.reason
    for run in results:  # both were allowed on the same observed state; the write tied to it decided
        [decision] = decisions(governed, run.run_id)
        assert (decision.decision, decision.observed and decision.observed.state) == ("ALLOW", "pending")


def test_the_audit_log_path_follows_charter_home(charter_home: Path) -> None:
    assert AuditLog().path == charter_home / "audit.db"
