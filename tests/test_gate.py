"""The contract gate with the real sandbox, the example SQLite backends and a real audit log.

Each reason code is produced by a real program, and each test checks three things: what
the program was told, the receipt the gate committed, and that the backend was (or was
not) touched.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from charter.audit import AuditLog, Decision, Outcome
from charter.backends import CallContext, ContractBackend
from charter.compiler import CompiledContract
from charter.principal import Principal
from charter.runner import Runner
from charter.sandbox import Halted
from tests.conftest import Governed, compiled

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
        "replay",
        D
        + "orders.verify_refund(id=125)\n"
        + 'orders.refund_order(id=125, amount=Decimal("1.00"), reason="late")\n'
        + 'orders.refund_order(id=125, amount=Decimal("2.00"), reason="late")',
        "REPLAY",
        "already made this write with other arguments",
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
    if code not in ("LIMIT_EXCEEDED", "REPLAY"):  # these runs make allowed writes first
        assert {o: order(o) for o in before} == before, "a denied call changed the backend"


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


def test_the_same_write_twice_runs_once(governed: Governed) -> None:
    program = (
        D
        + "orders.verify_refund(id=125)\n"
        + 'a = orders.refund_order(id=125, amount=Decimal("1.00"), reason="late")\n'
        + 'b = orders.refund_order(id=125, amount=Decimal("1.00"), reason="late")\n'
        + "conclude(str(b.refunded), {'same': a.refunded == b.refunded})"
    )
    execution = governed.run(program)
    assert (execution.answer, execution.data) == ("21.00", {"same": True})
    assert order(125)["refunded"] == Decimal("21.00")  # refunded once, not twice
    outcomes = [r for r in governed.log.run(execution.run_id).receipts if isinstance(r, Outcome)]
    assert [o.status for o in outcomes] == ["ok", "ok", "replayed"]
    assert outcomes[1].result == outcomes[2].result


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


def test_a_payment_that_needs_approval_is_refused(charter_home: Path, governed: Governed) -> None:
    from examples.invoices import backend as invoices

    invoices.seed()
    runner = Runner(audit=governed.log, sandbox=governed.runner.sandbox)
    execution = runner.execute(
        'invoices.pay_invoice(number="INV-1003")',
        contract=compiled("invoices"),
        principal=Principal("kim", frozenset({"invoices:pay"})),
    )
    assert execution.status == "refused"
    assert execution.reason is not None
    assert execution.reason.startswith("pay_invoice requires human approval before it runs")
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
        if isinstance(fault, Exception):
            raise fault
        result = super().invoke(operation, arguments, context)
        self.performed.append(operation)
        return fault(result) if callable(fault) else result


def faulty_runner(governed: Governed, **faults: Any) -> tuple[Runner, Faulty]:
    backend = Faulty(governed.contract, faults)
    return Runner(audit=governed.log, sandbox=governed.runner.sandbox, backend_for=lambda _: backend), backend


CANCEL_101 = 'orders.cancel_order(id=101, reason="moved")\nconclude("cancelled")'


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        (
            RuntimeError("database is locked"),
            "reading Order 101 through get_order failed (RuntimeError: database is locked)",
        ),
        (lambda order: {**order, "refunded": "not money"}, "the gate failed (InvalidOperation"),
        (lambda order: ["not", "an", "order"], "get_order returned list, not a Order"),
    ],
    ids=["reader-raises", "reader-returns-garbage", "reader-returns-wrong-type"],
)
def test_a_broken_state_read_is_a_denial(governed: Governed, fault: Any, words: str) -> None:
    runner, backend = faulty_runner(governed, get_order=fault)
    execution = runner.execute(
        CANCEL_101, contract=governed.contract, principal=Principal("ada", frozenset({"orders:write"}))
    )
    assert execution.status == "refused"
    assert execution.reason is not None
    assert words in execution.reason
    assert "cancel_order" not in backend.performed
    assert order(101)["status"] == "pending"
    assert [d.code for d in decisions(governed, execution.run_id)] == ["GATE_ERROR"]


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


def test_a_failing_backend_is_an_operation_error_with_its_outcome_recorded(governed: Governed) -> None:
    runner, _ = faulty_runner(governed, cancel_order=ConnectionError("backend went away"))
    program = (
        'try:\n    orders.cancel_order(id=101, reason="moved")\n'
        "except OperationError as error:\n    conclude(error.code + ': ' + str(error))"
    )
    execution = runner.execute(
        program, contract=governed.contract, principal=Principal("ada", frozenset({"orders:write"}))
    )
    assert execution.answer is not None
    assert execution.answer.startswith(
        "BACKEND_ERROR: cancel_order failed in the backend: ConnectionError: backend went away"
    )
    [outcome] = [r for r in governed.log.run(execution.run_id).receipts if isinstance(r, Outcome)]
    assert (outcome.status, outcome.code) == ("failed", "BACKEND_ERROR")


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
