"""The program line the guest reports with every call (issue 16), through the real sandbox and gate.

The guest finds the innermost frame of the program's own code ("<program>") and sends its line
across the host import (a u32); the host puts it on the CallRequest and the gate's Decision
receipt keeps it. It is the guest's word: a program can misreport it, so these tests also show
that a hostile line changes nothing but the number recorded, and never fails the host.
"""

from __future__ import annotations

from typing import Any

import pytest

from charter.audit import Decision, verify_log
from charter.gate import CallRequest, PassThroughGate
from charter.principal import Principal
from charter.sandbox import Completed, RunContext, Sandbox, SandboxLimits, Trapped
from tests.conftest import Governed, compiled
from tests.test_sandbox import RAW, Recorder


def lines_of(governed: Governed, program: str) -> list[tuple[int, str, int | None]]:
    """(call, operation, line) of every Decision of the run, after checking it concluded."""
    execution = governed.run(program)
    assert execution.status == "done", execution.outcome
    return [
        (r.call, r.operation, r.line) for r in governed.log.run(execution.run_id).receipts if isinstance(r, Decision)
    ]


def test_a_call_at_top_level_reports_its_line(governed: Governed) -> None:
    program = "first = orders.get_order(id=101)\n\nsecond = orders.get_order(id=102)\nconclude('ok')\n"
    assert lines_of(governed, program) == [(1, "get_order", 1), (2, "get_order", 3)]


def test_a_call_in_a_nested_function_reports_the_line_inside_the_function(governed: Governed) -> None:
    program = (
        "def fetch(order_id):\n"
        "    def inner():\n"
        "        return orders.get_order(id=order_id)\n"  # line 3: the innermost program frame
        "    return inner()\n"
        "\n"
        "fetch(101)\n"
        "conclude('ok')\n"
    )
    assert lines_of(governed, program) == [(1, "get_order", 3)]


def test_calls_in_a_loop_and_a_comprehension_report_their_lines(governed: Governed) -> None:
    program = (
        "for order_id in (101, 102):\n"
        "    orders.get_order(id=order_id)\n"  # line 2, twice
        "found = [\n"
        "    orders.get_order(id=i)\n"  # line 4: where the call stands inside the comprehension
        "    for i in (101, 102)\n"
        "]\n"
        "conclude('ok')\n"
    )
    assert lines_of(governed, program) == [
        (1, "get_order", 2),
        (2, "get_order", 2),
        (3, "get_order", 4),
        (4, "get_order", 4),
    ]


def test_a_call_after_and_inside_multi_line_statements(governed: Governed) -> None:
    program = (
        "wanted = {\n"
        "    'a': 101,\n"
        "    'b': 102,\n"
        "}\n"
        "order = orders.get_order(id=wanted['a'])\n"  # line 5, after a statement of four lines
        "other = orders.get_order(\n"  # line 6: a call written over three lines reports where it starts
        "    id=wanted['b'],\n"
        ")\n"
        "conclude('ok')\n"
    )
    assert lines_of(governed, program) == [(1, "get_order", 5), (2, "get_order", 6)]


def test_a_call_through_a_lambda_passed_to_a_builtin_reports_the_lambdas_line(governed: Governed) -> None:
    # map() is the interpreter's own code between the program's frames: the innermost program
    # frame is the lambda's, on line 2.
    program = "ids = (101, 102)\nfound = list(map(lambda i: orders.get_order(id=i), ids))\nconclude('ok')\n"
    assert lines_of(governed, program) == [(1, "get_order", 2), (2, "get_order", 2)]


# --- the guest is untrusted: a hostile line is only a number on the receipt --------------------


def test_a_hostile_line_on_the_raw_host_import_is_recorded_and_changes_nothing_else(governed: Governed) -> None:
    program = RAW + (
        "host.call('get_order', '{\"id\": 101}', 4294967295)\n"  # the largest u32
        "host.call('get_order', '{\"id\": 102}', 0)\n"  # 0: the guest did not say
        "conclude('ok')\n"
    )
    execution = governed.run(program)
    assert execution.status == "done", execution.outcome
    decisions = [r for r in governed.log.run(execution.run_id).receipts if isinstance(r, Decision)]
    assert [(d.call, d.decision, d.code, d.line) for d in decisions] == [
        (1, "ALLOW", "OK", 4294967295),
        (2, "ALLOW", "OK", None),
    ]
    assert verify_log(governed.log, governed.log.trusted_keys(), every_signature=True).ok


@pytest.mark.parametrize("line", ["-1", "2**32", "'7'", "1.5", "None"])
def test_a_line_that_is_not_a_u32_never_reaches_the_host(governed: Governed, line: str) -> None:
    # The guest's own binding cannot lower it to a u32 and stops the interpreter (a trap, as
    # for any raw call with values of the wrong type): the host sees no call, records the run
    # as trapped, and serves the next run as usual.
    program = RAW + (
        f"orders.get_order(id=101)\nhost.call('get_order', '{{\"id\": 102}}', {line})\nconclude('not reached')\n"
    )
    execution = governed.run(program)
    assert isinstance(execution.outcome, Trapped), execution.outcome
    assert execution.status == "failed"
    record = governed.log.run(execution.run_id)
    assert [(r.call, r.arguments, r.line) for r in record.receipts if isinstance(r, Decision)] == [(1, '{"id":101}', 2)]
    assert record.sealed is not None
    assert record.sealed.status == "trap"
    assert verify_log(governed.log, governed.log.trusted_keys(), every_signature=True).ok
    assert lines_of(governed, "orders.get_order(id=103)\nconclude('ok')\n") == [(1, "get_order", 1)]


def test_a_program_can_misreport_its_line_and_the_receipt_says_it_is_the_guests_word(governed: Governed) -> None:
    # Code compiled under the program's file name counts as the program's: the line is
    # whatever the guest says. The receipt records it as reported, never as proven.
    program = "exec(compile('\\n' * 999 + 'orders.get_order(id=101)', '<program>', 'exec'))\nconclude('ok')\n"
    assert lines_of(governed, program) == [(1, "get_order", 1000)]


class _RequestsGate(PassThroughGate):
    """Passes calls through and keeps each CallRequest as the host built it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.requests: list[CallRequest] = []

    def call(self, request: CallRequest) -> Any:
        self.requests.append(request)
        return super().call(request)


def test_the_host_puts_the_line_on_the_call_request(shared_sandbox: Sandbox) -> None:
    orders = compiled("orders")
    gate = _RequestsGate(orders, Recorder().backend())
    limits = SandboxLimits.from_contract(orders.gate.limits).tightened(cpu_seconds=2.0, wall_seconds=10.0)
    program = RAW + "orders.get_order(id=1)\nhost.call('get_order', '{\"id\": 2}', 0)\nconclude('ok')\n"
    outcome = shared_sandbox.run(
        program,
        contract=orders,
        gate=gate,
        context=RunContext(principal=Principal("alice", frozenset({"orders:read"}))),
        limits=limits,
    )
    assert isinstance(outcome, Completed), outcome
    assert [(r.sequence, r.operation, r.line) for r in gate.requests] == [(1, "get_order", 2), (2, "get_order", None)]
