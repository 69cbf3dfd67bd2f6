"""The sandbox with the real component: typed proxies, outcomes, limits, and the adversarial corpus.

Every test runs real programs in real wasmtime instances. Each corpus entry asserts the
exact outcome and then that the same host still serves a normal run.
"""

from __future__ import annotations

import datetime
import decimal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from charter.audit import AuditLog, Decision, verify_log
from charter.audit import Outcome as AuditOutcome
from charter.backends import InMemoryBackend
from charter.compiler import compile_contract
from charter.compiler.artifact import CompiledContract
from charter.contract.checker import load_contract
from charter.errors import UsageError
from charter.gate import CallRequest, Denied, PassThroughGate
from charter.principal import Principal
from charter.runner import Runner
from charter.sandbox import (
    CallLimitExceeded,
    Completed,
    MemoryExceeded,
    Outcome,
    OutputLimitExceeded,
    Paused,
    ProgramError,
    ProgramRejected,
    ProgramSyntaxError,
    Refused,
    RunContext,
    Sandbox,
    SandboxLimits,
    TimedOut,
    Trapped,
)
from tests.conftest import ALL_ORDER_SCOPES, ROOT, Governed, charter

ORDER = {
    "id": 123,
    "customer": "acme",
    "items": [{"sku": "A-1", "quantity": 2, "unit_price": decimal.Decimal("10.00")}],
    "total": decimal.Decimal("20.00"),
    "refunded": decimal.Decimal("0.00"),
    "placed_at": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
    "note": None,
    "status": "dispatched",
}
CLOCK = datetime.datetime(2026, 11, 21, 12, 0, tzinfo=datetime.UTC)
MIB = 2**20


@pytest.fixture(scope="module")
def orders() -> CompiledContract:
    return compile_contract(load_contract(ROOT / "contracts" / "orders.yaml"))


@pytest.fixture(scope="module")
def sandbox(orders: CompiledContract) -> Sandbox:
    sandbox = Sandbox(pool_size=2)
    sandbox.warm(orders)
    return sandbox


class Recorder:
    """An in-memory backend that remembers every call it performed."""

    def __init__(self, **overrides: Any) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.overrides = overrides

    def backend(self) -> InMemoryBackend:
        def handler(name: str) -> Any:
            def handle(**arguments: Any) -> Any:
                self.calls.append((name, arguments))
                if name in self.overrides:
                    return self.overrides[name](**arguments)
                if name == "list_orders":
                    return [ORDER, {**ORDER, "id": 124, "status": "pending"}]
                return {**ORDER, "id": arguments.get("id", 123)}

            return handle

        return InMemoryBackend({name: handler(name) for name in ("get_order", "list_orders", "cancel_order")})


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def context(seed: int = 7, scopes: frozenset[str] = frozenset({"orders:read"})) -> RunContext:
    return RunContext(principal=Principal("alice", scopes), clock=CLOCK, seed=seed, run_id="run-test")


def run(
    sandbox: Sandbox,
    orders: CompiledContract,
    program: str,
    *,
    gate: Any = None,
    seed: int = 7,
    **limits: Any,
) -> Outcome:
    base = SandboxLimits.from_contract(orders.gate.limits).tightened(cpu_seconds=1.0, wall_seconds=5.0)
    return sandbox.run(
        program,
        contract=orders,
        gate=gate or PassThroughGate(orders, Recorder().backend()),
        context=context(seed),
        limits=base.tightened(**limits) if limits else base,
    )


def assert_healthy(sandbox: Sandbox, orders: CompiledContract) -> None:
    outcome = run(sandbox, orders, 'order = orders.get_order(id=5)\nconclude(f"{order.id} {order.status}")')
    assert outcome == Completed(answer="5 dispatched", stats=outcome.stats)


# --- typed proxies and conclusions --------------------------------------------------------


def test_proxy_returns_typed_records(sandbox: Sandbox, orders: CompiledContract, recorder: Recorder) -> None:
    program = """
order = orders.get_order(id=123)
assert isinstance(order, Order) and isinstance(order.items[0], LineItem)
import datetime, decimal
assert isinstance(order.total, decimal.Decimal) and isinstance(order.placed_at, datetime.datetime)
conclude(f"{order.id} {order.status} {order.total} {order.items[0].sku} {order.placed_at.year}", data={"total": order.total})
"""
    outcome = run(sandbox, orders, program, gate=PassThroughGate(orders, recorder.backend()))
    assert isinstance(outcome, Completed)
    assert outcome.answer == "123 dispatched 20.00 A-1 2026"
    assert outcome.data == {"total": "20.00"}
    assert recorder.calls == [("get_order", {"id": 123})]
    assert outcome.stats.calls == 1


def test_list_operation_returns_list_of_records(sandbox: Sandbox, orders: CompiledContract) -> None:
    program = 'found = orders.list_orders(status="pending")\nconclude(",".join(f"{o.id}:{o.status}" for o in found))'
    outcome = run(sandbox, orders, program)
    assert isinstance(outcome, Completed)
    assert outcome.answer == "123:dispatched,124:pending"


def test_refuse_is_its_own_outcome(sandbox: Sandbox, orders: CompiledContract) -> None:
    outcome = run(sandbox, orders, 'refuse("Order 123 is dispatched; it cannot be cancelled.")')
    assert outcome == Refused(reason="Order 123 is dispatched; it cannot be cancelled.", stats=outcome.stats)


@pytest.mark.parametrize(
    ("program", "error_type", "message"),
    [
        # A call the program gets wrong is a ContractViolation (INVALID_ARGUMENTS), as the README says.
        (
            "orders.get_order(123)",
            "ContractViolation",
            "orders.get_order() takes keyword arguments only, e.g. orders.get_order(id=...)",
        ),
        (
            "orders.get_order(idd=1)",
            "ContractViolation",
            "orders.get_order() got an unexpected keyword argument 'idd'; did you mean 'id'?",
        ),
        ("orders.get_order()", "ContractViolation", "orders.get_order() missing required keyword argument 'id'"),
        ('orders.get_order(id="123")', "ContractViolation", "orders.get_order(): id must be an int, not str"),
        (
            'orders.list_orders(status="lost")',
            "ContractViolation",
            "orders.list_orders(): status must be one of pending, confirmed, picking, packed, dispatched, delivered, "
            "cancelled; got 'lost'",
        ),
        (
            "orders.get_ordr(id=1)",
            "AttributeError",
            "contract orders 1.0.0 has no operation 'get_ordr'; did you mean 'get_order'?",
        ),
        ("orders.get_order(id=1).status = 'x'", "AttributeError", "Order is read-only: it is what the system returned"),
        ("x = 1 / 0", "ZeroDivisionError", "division by zero"),
        ("pass", "NoConclusion", "the program ended without calling conclude(answer) or refuse(reason)"),
        (
            "conclude(42)",
            "TypeError",
            "conclude(answer, data=None): the answer is text for the caller; put values in data=",
        ),
        (
            'conclude("x", data=object())',
            "TypeError",
            "the conclusion cannot be encoded as JSON: object values cannot be sent or concluded; use str, int, Decimal, lists or dicts",
        ),
    ],
)
def test_program_errors_are_typed(
    sandbox: Sandbox, orders: CompiledContract, program: str, error_type: str, message: str
) -> None:
    outcome = run(sandbox, orders, program)
    assert isinstance(outcome, ProgramError), outcome
    assert (outcome.error_type, outcome.error_message) == (error_type, message)


def test_program_error_carries_program_lines(sandbox: Sandbox, orders: CompiledContract) -> None:
    program = "def check(order):\n    return order.total / 0\n\ncheck(orders.get_order(id=1))\n"
    outcome = run(sandbox, orders, program)
    assert isinstance(outcome, ProgramError)
    assert outcome.line == 2
    assert [(f.line, f.function, f.text) for f in outcome.traceback] == [
        (4, "<module>", "check(orders.get_order(id=1))"),
        (2, "check", "return order.total / 0"),
    ]
    assert "line 2, in check" in outcome.format_traceback()


def test_syntax_error_has_line_and_column(sandbox: Sandbox, orders: CompiledContract) -> None:
    outcome = run(sandbox, orders, 'order = orders.get_order(id=1)\nif order.status == "x"\n    refuse("no")\n')
    assert isinstance(outcome, ProgramSyntaxError)
    assert (outcome.line, outcome.column, outcome.text) == (2, 23, 'if order.status == "x"')
    assert outcome.error_message == "expected ':'"


def test_print_is_returned_with_the_outcome(sandbox: Sandbox, orders: CompiledContract) -> None:
    outcome = run(sandbox, orders, 'print("checking", 123)\nconclude("done")')
    assert isinstance(outcome, Completed)
    assert outcome.output == "checking 123\n"


def test_clock_and_randomness_come_from_the_context(sandbox: Sandbox, orders: CompiledContract) -> None:
    program = (
        "import datetime, time, random\n"
        "conclude(f'{datetime.datetime.now(datetime.UTC).isoformat()} {time.time()} {random.random()!r} "
        "{random.Random().random()!r}')"
    )
    first, again, other_seed = (run(sandbox, orders, program, seed=s) for s in (7, 7, 8))
    assert isinstance(first, Completed)
    assert isinstance(again, Completed)
    assert isinstance(other_seed, Completed)
    stamp, epoch, _, _ = first.answer.split()
    assert stamp == CLOCK.isoformat()
    assert float(epoch) == CLOCK.timestamp()
    assert first.answer == again.answer  # a replay with the recorded seed sees the same values
    assert first.answer != other_seed.answer


def test_contract_violation_is_catchable_with_its_data(sandbox: Sandbox, orders: CompiledContract) -> None:
    class DenyingGate:
        blocking = False

        def call(self, request: CallRequest) -> Any:
            raise Denied(
                "STATE_VIOLATION",
                "Order 123 cannot be cancelled: it is dispatched.",
                boundary="no_cancel_after_picking",
            )

    program = """
try:
    orders.cancel_order(id=123, reason="customer asked")
except ContractViolation as violation:
    refuse(f"{violation.code}|{violation.boundary}|{violation.operation}|{violation.reason}")
"""
    outcome = run(sandbox, orders, program, gate=DenyingGate())
    assert outcome == Refused(
        reason="STATE_VIOLATION|no_cancel_after_picking|orders.cancel_order|Order 123 cannot be cancelled: it is dispatched.",
        stats=outcome.stats,
    )


def test_uncaught_violation_is_reported_as_such(sandbox: Sandbox, orders: CompiledContract) -> None:
    class DenyingGate:
        blocking = False

        def call(self, request: CallRequest) -> Any:
            raise Denied("FORBIDDEN_SCOPE", "cancel_order needs scope orders:write")

    outcome = run(sandbox, orders, 'orders.cancel_order(id=1, reason="x")', gate=DenyingGate())
    assert isinstance(outcome, ProgramError)
    assert outcome.error_type == "ContractViolation"
    assert outcome.violation is not None
    assert outcome.violation.code == "FORBIDDEN_SCOPE"


def test_backend_failure_is_operation_error(sandbox: Sandbox, orders: CompiledContract) -> None:
    def broken(**_: Any) -> Any:
        raise ConnectionError("database is down")

    recorder = Recorder(get_order=broken)
    program = "try:\n    orders.get_order(id=1)\nexcept OperationError as e:\n    conclude(f'{e.code}: {e.message}')"
    outcome = run(sandbox, orders, program, gate=PassThroughGate(orders, recorder.backend()))
    assert outcome == Completed(
        answer="BACKEND_ERROR: get_order failed in the backend (ConnectionError)", stats=outcome.stats
    )


def test_a_broken_gate_denies_and_never_reaches_the_backend(
    sandbox: Sandbox, orders: CompiledContract, recorder: Recorder
) -> None:
    class BrokenGate:
        blocking = False

        def call(self, request: CallRequest) -> Any:
            raise KeyError("bug in the gate")

    program = "try:\n    orders.cancel_order(id=1, reason='x')\nexcept ContractViolation as v:\n    refuse(v.code)"
    outcome = run(sandbox, orders, program, gate=BrokenGate())
    assert outcome == Refused(reason="GATE_ERROR", stats=outcome.stats)
    assert recorder.calls == []


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_a_base_exception_from_a_host_call_ends_the_run_without_its_text(
    sandbox: Sandbox, orders: CompiledContract, kind: type[BaseException]
) -> None:
    class InterruptedGate:
        blocking = False

        def call(self, request: CallRequest) -> Any:
            raise kind("password hunter2")

    outcome = run(sandbox, orders, "orders.get_order(id=1)\nconclude('no')", gate=InterruptedGate())
    assert outcome == Trapped(reason=f"host error in call 'get_order': {kind.__name__}", stats=outcome.stats)
    assert_healthy(sandbox, orders)


def test_the_pass_through_gates_backend_failures_of_any_kind_are_operation_errors(
    sandbox: Sandbox, orders: CompiledContract
) -> None:
    def interrupted(id: int) -> Any:
        raise KeyboardInterrupt("password hunter2")

    gate = PassThroughGate(orders, InMemoryBackend({"get_order": interrupted}))
    program = (
        "try:\n    orders.get_order(id=1)\nexcept OperationError as error:\n    conclude(error.code + ' ' + str(error))"
    )
    outcome = run(sandbox, orders, program, gate=gate)
    assert outcome == Completed(
        answer="BACKEND_ERROR get_order failed in the backend (KeyboardInterrupt)", stats=outcome.stats
    )


def test_gate_sees_decoded_arguments_and_the_principal(sandbox: Sandbox, orders: CompiledContract) -> None:
    seen: list[CallRequest] = []

    class Spy:
        blocking = False

        def call(self, request: CallRequest) -> Any:
            seen.append(request)
            return ORDER

    run(sandbox, orders, 'orders.cancel_order(id=9, reason="late")\nconclude("ok")', gate=Spy())
    assert [(r.operation, r.arguments, r.principal.id, r.sequence, r.run_id) for r in seen] == [
        ("cancel_order", {"id": 9, "reason": "late"}, "alice", 1, "run-test")
    ]


# --- limits -----------------------------------------------------------------------------------


def test_limits_can_be_tightened_per_run_but_never_loosened(orders: CompiledContract) -> None:
    limits = SandboxLimits.from_contract(orders.gate.limits)
    assert limits.tightened(max_calls=3).max_calls == 3
    with pytest.raises(UsageError, match=r"above the contract's 5\.0; a run may tighten"):
        limits.tightened(cpu_seconds=60)
    with pytest.raises(UsageError, match="unknown sandbox limit 'cpu'"):
        limits.tightened(cpu=1)


def test_contract_pins_its_limits(orders: CompiledContract) -> None:
    limits = SandboxLimits.from_contract(orders.gate.limits)
    assert (limits.max_calls, limits.memory_bytes, limits.cpu_seconds) == (50, 128 * MIB, 5.0)


def test_wall_time_holds_while_a_backend_hangs(sandbox: Sandbox, orders: CompiledContract) -> None:
    release = threading.Event()
    returned_while_blocked: list[bool] = []

    class HangingBackend:
        blocking = True

        def invoke(self, operation: str, arguments: Any) -> Any:
            release.wait(timeout=30)
            return ORDER

    outcome = run(
        sandbox, orders, "orders.get_order(id=1)", gate=PassThroughGate(orders, HangingBackend()), wall_seconds=0.5
    )
    returned_while_blocked.append(not release.is_set())
    release.set()
    assert outcome == TimedOut(limit="wall", seconds=0.5, stats=outcome.stats)
    assert returned_while_blocked == [True]  # the run ended while the backend was still blocked
    assert_healthy(sandbox, orders)


def test_runs_in_parallel_threads_stay_apart(sandbox: Sandbox, orders: CompiledContract) -> None:
    results: dict[int, Outcome] = {}

    def worker(n: int) -> None:
        results[n] = run(sandbox, orders, f"o = orders.get_order(id={n})\nconclude(str(o.id))")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {n: getattr(o, "answer", o) for n, o in results.items()} == {n: str(n) for n in range(6)}


def test_invalid_principal_is_a_usage_error(sandbox: Sandbox, orders: CompiledContract) -> None:
    # Refused where the Principal is made (charter.principal), before the sandbox sees it.
    with pytest.raises(UsageError, match=r"has U\+001F \(a control character\) at position 3"):
        sandbox.run(
            'conclude("x")',
            contract=orders,
            gate=PassThroughGate(orders, Recorder().backend()),
            context=RunContext(principal=Principal("eve\x1fadmin")),
        )


# --- the adversarial corpus -------------------------------------------------------------------

RAW = 'host = conclude.__globals__["host"]\n'  # the raw host import, reached through the runtime
OS = '[os] = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == "_wrap_close"]\nos = os.__init__.__globals__\n'


def raw_call(operation: str, arguments: str) -> str:
    """A program calling the raw host import and concluding with the host's error payload."""
    return (
        RAW
        + f"try:\n    host.call({operation!r}, {arguments!r})\nexcept Exception as error:\n    conclude(error.value)\n"
    )


def violation(code: str, message: str) -> dict[str, Any]:
    return {"error": "contract_violation", "code": code, "message": message, "boundary": None}


CORPUS: list[tuple[str, str, dict[str, Any], Any]] = [
    # (id, program, limits, expected outcome without stats; a dict for raw-call payloads)
    ("infinite-loop", "while True:\n    pass", {}, TimedOut(limit="cpu", seconds=1.0)),
    ("busy-loop-with-calls", "while True:\n    sum(range(1000))", {}, TimedOut(limit="cpu", seconds=1.0)),
    (
        "sleep",
        "import time\ntime.sleep(10)",
        {},
        ProgramError(
            error_type="RuntimeError",
            error_message="time.sleep is not available in a Charter program: a run never waits; its clock is virtual and stands still",
        ),
    ),
    (
        "python-recursion",
        "def f(n):\n    return f(n + 1)\nf(0)",
        {},
        ProgramError(error_type="RecursionError", error_message="maximum recursion depth exceeded"),
    ),
    (
        "parser-bomb",
        'eval("(" * 10**6)',
        {},
        ProgramError(
            error_type="MemoryError", error_message="Parser stack overflowed - Python source too complex to parse"
        ),
    ),
    (
        "c-recursion",
        "x = []\nfor _ in range(10**5):\n    x = [x]\nrepr(x)",
        {},
        Trapped(reason="the program recursed too deeply in the interpreter (wasm call stack exhausted)"),
    ),
    ("memory-bomb-list", "x = [0] * 10**9", {}, MemoryExceeded(limit_bytes=128 * MIB)),
    (
        "memory-bomb-growth",
        "x = []\nwhile True:\n    x.append(bytearray(10**6))",
        {},
        MemoryExceeded(limit_bytes=128 * MIB),
    ),
    (
        "memory-bomb-small-limit",
        "x = bytearray(80 * 2**20)",
        {"memory_bytes": 64 * MIB},
        MemoryExceeded(limit_bytes=64 * MIB),
    ),
    ("huge-print", 'print("x" * 10**6)', {}, OutputLimitExceeded(limit_bytes=65536)),
    ("print-flood", 'while True:\n    print("spam")', {}, OutputLimitExceeded(limit_bytes=65536)),
    (
        "print-flood-caught",
        'while True:\n    try:\n        print("spam" * 100)\n    except BaseException:\n        pass',
        {},
        OutputLimitExceeded(limit_bytes=65536),
    ),
    ("import-os", "import os", {}, "ImportError: import of 'os' is not allowed"),
    ("import-socket", "import socket", {}, "ImportError: import of 'socket' is not allowed"),
    ("import-subprocess", "import subprocess", {}, "ImportError: import of 'subprocess' is not allowed"),
    ("import-ctypes", "from ctypes import CDLL", {}, "ImportError: import of 'ctypes' is not allowed"),
    ("import-ssl", "import ssl", {}, "ImportError: import of 'ssl' is not allowed"),
    ("import-sys", "import sys\nsys.exit(0)", {}, "ImportError: import of 'sys' is not allowed"),
    (
        "import-relative",
        "from . import x",
        {},
        ProgramError(error_type="ImportError", error_message="relative imports are not available in a Charter program"),
    ),
    ("dunder-import", '__import__("os")', {}, "ImportError: import of 'os' is not allowed"),
    (
        "open-passwd",
        'open("/etc/passwd").read()',
        {},
        ProgramError(
            error_type="RuntimeError",
            error_message="open() is not available in a Charter program: a program has no filesystem; use the contract's operations",
        ),
    ),
    ("environ-via-subclasses", OS + 'conclude(str(sorted(os["environ"])))', {}, Completed(answer="[]")),
    (
        "listdir-via-subclasses",
        OS + 'os["listdir"]("/")',
        {},
        ProgramError(
            error_type="PermissionError",
            error_message="os.listdir is not available in a Charter program: it has no host access",
        ),
    ),
    (
        "open-via-io",
        OS + 'os["open"]("/etc/passwd", 0)',
        {},
        ProgramError(
            error_type="PermissionError",
            error_message="os.open is not available in a Charter program: it has no host access",
        ),
    ),
    (
        "real-import-via-subclasses",
        OS + 'os["sys"].modules["builtins"].__import__("socket")',
        {},
        ProgramError(error_type="ImportError", error_message="module 'socket' is not available in a Charter program"),
    ),
    (
        "importlib-via-subclasses",
        OS + 'os["sys"].modules["importlib"].import_module("socket")',
        {},
        ProgramError(error_type="ModuleNotFoundError", error_message="No module named 'socket'"),
    ),
    (
        "forged-outcome",
        'conclude.__globals__["_RUN"].status = "refused"\nconclude("x")',
        {},
        ProgramError(
            error_type="RuntimeError",
            error_message="the program already concluded; conclude() or refuse() ends it once",
        ),
    ),
    (
        "exit-via-subclasses",
        OS + 'os["_exit"](0)',
        {},
        ProgramError(
            error_type="PermissionError",
            error_message="os._exit is not available in a Charter program: it has no host access",
        ),
    ),
    (
        "raw-undeclared-operation",
        raw_call("delete_all_orders", "{}"),
        {},
        violation(
            "UNKNOWN_OPERATION",
            "contract orders 1.0.0 has no operation 'delete_all_orders'; did you mean 'list_orders'?",
        ),
    ),
    (
        "raw-homoglyph",
        raw_call("get_\u043erder", '{"id":1}'),
        {},
        violation(
            "UNKNOWN_OPERATION",
            "contract orders 1.0.0 has no operation 'get_\\\\u043e(CYRILLIC SMALL LETTER O)rder'; did you mean 'get_order'?",
        ),
    ),
    (
        "raw-zero-width",
        raw_call("get_order\u200b", '{"id":1}'),
        {},
        violation(
            "UNKNOWN_OPERATION",
            "contract orders 1.0.0 has no operation 'get_order\\\\u200b(ZERO WIDTH SPACE)'; did you mean 'get_order'?",
        ),
    ),
    (
        "raw-trailing-space",
        raw_call("get_order ", '{"id":1}'),
        {},
        violation(
            "UNKNOWN_OPERATION", "contract orders 1.0.0 has no operation 'get_order '; did you mean 'get_order'?"
        ),
    ),
    (
        "raw-nul",
        raw_call("get_order\x00", '{"id":1}'),
        {},
        violation(
            "UNKNOWN_OPERATION",
            "contract orders 1.0.0 has no operation 'get_order\\\\u0000(unnamed)'; did you mean 'get_order'?",
        ),
    ),
    (
        "raw-control-operation",
        raw_call("$abort", '{"reason":"timeout"}'),
        {},
        violation("UNKNOWN_OPERATION", "contract orders 1.0.0 has no operation '$abort'"),
    ),
    (
        "raw-duplicate-keys",
        raw_call("get_order", '{"id":1,"id":2}'),
        {},
        violation("MALFORMED_CALL", "duplicate key 'id' in the arguments"),
    ),
    (
        "raw-nan",
        raw_call("get_order", '{"id":NaN}'),
        {},
        violation("MALFORMED_CALL", "NaN is not a JSON number; send finite numbers only"),
    ),
    (
        "raw-infinity",
        raw_call("get_order", '{"id":-Infinity}'),
        {},
        violation("MALFORMED_CALL", "-Infinity is not a JSON number; send finite numbers only"),
    ),
    (
        "raw-float-overflow",
        raw_call("get_order", '{"id":1e400}'),
        {},
        violation("MALFORMED_CALL", "number 1e400 is out of range"),
    ),
    (
        "raw-absurd-integer",
        raw_call("get_order", '{"id":' + "9" * 5000 + "}"),
        {},
        violation("MALFORMED_CALL", "integer of 5000 digits; integers must fit in 64 bits"),
    ),
    (
        "raw-integer-beyond-64-bits",
        raw_call("get_order", '{"id":18446744073709551616}'),
        {},
        violation("MALFORMED_CALL", "integer 18446744073709551616 does not fit in 64 bits"),
    ),
    (
        "raw-lone-surrogate",
        raw_call("list_orders", '{"customer":"\\ud800"}'),
        {},
        violation("MALFORMED_CALL", "a string in the arguments contains a lone surrogate (not valid Unicode)"),
    ),
    (
        "raw-not-json",
        raw_call("get_order", "{id: 1}"),
        {},
        violation(
            "MALFORMED_CALL", "arguments are not JSON: Expecting property name enclosed in double quotes at character 1"
        ),
    ),
    (
        "raw-not-object",
        raw_call("get_order", "[1]"),
        {},
        violation("MALFORMED_CALL", "arguments must be a JSON object, not list"),
    ),
    (
        "raw-deep-nesting",
        raw_call("get_order", '{"id":' + "[" * 50 + "]" * 50 + "}"),
        {},
        violation("MALFORMED_CALL", "arguments nested deeper than 16 levels"),
    ),
    (
        "raw-wrong-type",
        raw_call("get_order", '{"id":"123"}'),
        {},
        violation("INVALID_ARGUMENTS", "get_order: Expected `int`, got `str` - at `$.id`"),
    ),
    (
        "raw-unknown-argument",
        raw_call("get_order", '{"id":1,"admin":true}'),
        {},
        violation("INVALID_ARGUMENTS", "get_order: Object contains unknown field `admin`"),
    ),
    (
        "huge-call-arguments",
        "orders.list_orders(customer='x' * 10**6)",
        {},
        "ContractViolation: arguments of 1000015 characters exceed the limit of 65536 bytes",
    ),
    (
        "retry-denied-call-in-loop",
        "while True:\n    try:\n        orders.cancel_order(id=123, reason='again')\n    except ContractViolation:\n        pass",
        {"max_calls": 10},
        CallLimitExceeded(limit=10),
    ),
    ("system-exit", "raise SystemExit(3)", {}, ProgramError(error_type="SystemExit", error_message="3")),
    (
        "keyboard-interrupt",
        "raise KeyboardInterrupt",
        {},
        ProgramError(error_type="KeyboardInterrupt", error_message=""),
    ),
    (
        "str-never-returns",
        "class Evil(Exception):\n    def __str__(self):\n        while True:\n            pass\nraise Evil(Evil())",
        {},
        ProgramError(error_type="Evil", error_message="<Evil object>"),
    ),
    (
        "str-raises",
        "class Evil(Exception):\n    def __str__(self):\n        raise ValueError('no')\nraise Evil()",
        {},
        ProgramError(error_type="Evil", error_message=""),
    ),
    (
        "conclude-then-swallow",
        "try:\n    conclude('first')\nexcept BaseException:\n    pass\nconclude('second')",
        {},
        Completed(answer="first"),
    ),
    (
        "call-after-conclusion",
        "try:\n    conclude('done')\nexcept BaseException:\n    orders.cancel_order(id=1, reason='sneaky')",
        {},
        Completed(answer="done"),
    ),
    (
        "subclasses-walk-to-gc",
        "import json\nobjs = [c for c in object.__subclasses__()]\nconclude(str(len(objs) > 100))",
        {},
        Completed(answer="True"),
    ),
    (
        "null-byte-program",
        "conclude('a')\x00",
        {},
        ProgramSyntaxError(error_type="SyntaxError", error_message="source code string cannot contain null bytes"),
    ),
    (
        "oversize-program",
        "#" * 300_000,
        {},
        ProgramRejected(reason="the program is 300000 characters; the limit is 262144 bytes"),
    ),
    (
        "lone-surrogate-program",
        "conclude('\ud800')",
        {},
        ProgramRejected(reason="the program text contains a lone surrogate; it must be valid Unicode"),
    ),
    ("lone-surrogate-output", "print('\\ud800')\nconclude('\\udfff')", {}, Completed(answer="?", output="?\n")),
]


@pytest.fixture
def healthy_after(sandbox: Sandbox, orders: CompiledContract) -> Iterator[None]:
    yield
    assert_healthy(sandbox, orders)


@pytest.mark.usefixtures("healthy_after")
@pytest.mark.parametrize(("program", "limits", "expected"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_adversarial_program(
    sandbox: Sandbox, orders: CompiledContract, program: str, limits: dict[str, Any], expected: Any
) -> None:
    def deny(**_: Any) -> Any:
        raise Denied("STATE_VIOLATION", "Order 123 cannot be cancelled: it is dispatched.")

    outcome = run(
        sandbox, orders, program, gate=PassThroughGate(orders, Recorder(cancel_order=deny).backend()), **limits
    )
    if isinstance(expected, dict):  # a raw host call: the program concluded with the host's error payload
        assert isinstance(outcome, Completed), outcome
        assert msgspec.json.decode(outcome.answer) == expected
    elif isinstance(expected, str):  # an error whose message continues with details (a module list, ...)
        assert isinstance(outcome, ProgramError), outcome
        assert f"{outcome.error_type}: {outcome.error_message}".startswith(expected)
    else:
        if isinstance(outcome, ProgramError):  # where it happened is asserted elsewhere
            outcome = msgspec.structs.replace(outcome, line=None, traceback=())
        assert msgspec.structs.replace(outcome, stats=expected.stats) == expected


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 30


def test_state_left_by_one_run_is_invisible_to_the_next(sandbox: Sandbox, orders: CompiledContract) -> None:
    polluter = """
import json
json.leak = "secret"
__builtins__["leak"] = "secret"
conclude.__globals__["WitWorld"].namespace["leak"] = "secret"
conclude("polluted")
"""
    assert isinstance(run(sandbox, orders, polluter), Completed)
    probe = (
        "import json\nconclude(f\"{getattr(json, 'leak', None)} {globals().get('leak')} {__builtins__.get('leak')}\")"
    )
    outcome = run(sandbox, orders, probe)
    assert outcome == Completed(answer="None None None", stats=outcome.stats)


def test_host_environment_does_not_reach_the_guest(
    sandbox: Sandbox, orders: CompiledContract, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHARTER_TEST_SECRET", "hunter2")
    outcome = run(sandbox, orders, OS + 'conclude(repr(dict(os["environ"])))')
    assert outcome == Completed(answer="{}", stats=outcome.stats)


def test_sandbox_build_command_reports_the_cached_component() -> None:
    result = charter("sandbox", "build")
    assert result.returncode == 0, result.stderr
    assert "Sandbox component ready:" in result.stdout
    assert "/sandbox/" in result.stdout
    assert "runner.wasm" in result.stdout


# --- the contract language at run time: stateless contracts, self-transitions, null-safe
# guards, approval and scope boundaries, malformed calls (issue 13) -------------------------

LOANS = """\
contract: loans
version: 1.0.0
summary: Library loans.
owners: [desk@example.com]
changelog: First.
binding: {python: loans_backend}
records:
  Node: {label: str, next: 'Node?'}
entities:
  Loan:
    key: id
    fields: {id: int, fee: 'money?'}
    lifecycle:
      field: status
      states: [out, returned]
      initial: out
      transitions:
        renew: {from: [out], to: out}
operations:
  get_loan: {kind: read, doc: Fetch one loan., entity: Loan, key: id, params: {id: int}, returns: Loan}
  renew_loan:
    kind: write
    public: true
    doc: Renew a loan for a fee.
    entity: Loan
    key: id
    params: {amount: 'money?', id: int}
    returns: Loan
    transition: renew
    guards:
      - {id: fee_given, when: 'params.amount != null && params.amount > 0', message: A renewal needs a fee.}
      - {id: fee_known, when: 'entity.fee == null || entity.fee >= 0', message: The loan's fee is unknown.}
  waive_fee:
    kind: write
    public: true
    doc: Waive a loan's fee.
    entity: Loan
    key: id
    params: {id: int}
    requires_approval: true
  search:
    kind: read
    doc: Search the catalogue.
    params: {page: 'int?', origin: str, ratio: 'float?', tags: 'list[str]?', since: 'datetime?', path: 'Node?'}
    returns: 'list[str]'
    scopes: [loans:search]
  remark:
    kind: read
    doc: A remark; `has()` is true for a declared param even when it is omitted (a present null).
    params: {note: 'str?'}
    returns: str
    guards:
      - {id: note_declared, when: has(params.note), message: Never shown.}
boundaries:
  - {id: approved_waivers, text: A fee is waived only with approval., enforced_by: [{approval: waive_fee}]}
  - {id: search_scope, text: Only the desk searches., enforced_by: [{scope: search}]}
"""


@pytest.fixture
def loans(tmp_path: Path) -> CompiledContract:
    (tmp_path / "loans_backend.py").write_text(
        "".join(
            f"def {op}(**arguments):\n    pass\n\n\n"
            for op in ("get_loan", "renew_loan", "waive_fee", "search", "remark")
        )
    )
    (tmp_path / "loans.yaml").write_text(LOANS, encoding="utf-8")
    return compile_contract(load_contract(tmp_path / "loans.yaml"))


def loans_backend(calls: list[tuple[str, dict[str, Any]]]) -> InMemoryBackend:
    def handler(name: str) -> Any:
        def handle(**arguments: Any) -> Any:
            calls.append((name, arguments))
            if name == "search":
                return ["Dune"]
            if name == "remark":
                return repr(arguments.get("note", "absent"))
            return {"id": arguments["id"], "fee": None, "status": "out"}

        return handle

    return InMemoryBackend({op: handler(op) for op in ("get_loan", "renew_loan", "waive_fee", "search", "remark")})


def governed_run(
    sandbox: Sandbox, contract: CompiledContract, program: str, backend: InMemoryBackend, tmp_path: Path, scopes: Any
) -> Any:
    runner = Runner(audit=AuditLog(tmp_path / "audit.db"), sandbox=sandbox, backend_for=lambda _: backend)
    return runner.execute(program, contract=contract, principal=Principal("desk", frozenset(scopes)))


def test_self_transitions_null_safe_guards_and_rule_boundaries_run(
    sandbox: Sandbox, loans: CompiledContract, tmp_path: Path
) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    program = """
from decimal import Decimal
out = [loans.renew_loan(id=1, amount=Decimal("2.50")).status, loans.remark()]
for call in (lambda: loans.renew_loan(id=2), lambda: loans.search(origin="web")):
    try:
        call()
    except ContractViolation as error:
        out.append([error.code, error.boundary])
conclude("done", data=out)
"""
    execution = governed_run(sandbox, loans, program, loans_backend(calls), tmp_path, ())
    assert isinstance(execution.outcome, Completed), execution.outcome
    assert execution.outcome.data == [
        "out",  # renew: out -> out, a self-transition
        "'absent'",  # has(params.note) held for the omitted note; the backend got no note
        ["GUARD_VIOLATION", None],  # amount omitted: the guard is false, not a gate error
        ["FORBIDDEN_SCOPE", "search_scope"],
    ]
    assert [name for name, _ in calls if name != "get_loan"] == ["renew_loan", "remark"]
    codes = [r.code for r in execution.calls if isinstance(r, Decision)]
    assert codes == ["OK", "OK", "GUARD_VIOLATION", "FORBIDDEN_SCOPE"]
    # The approval rule's boundary: the waiver pauses the run (the program cannot catch it).
    waiver = "try:\n    loans.waive_fee(id=1)\nexcept ContractViolation as error:\n    conclude(error.code)\n"
    paused = governed_run(sandbox, loans, waiver, loans_backend(calls), tmp_path, ())
    assert isinstance(paused.outcome, Paused), paused.outcome
    assert (paused.outcome.operation, paused.status) == ("waive_fee", "awaiting_approval")
    assert "waive_fee" not in [name for name, _ in calls]


def test_a_stateless_contract_runs(sandbox: Sandbox, tmp_path: Path) -> None:
    (tmp_path / "catalogue_backend.py").write_text("def search(**arguments):\n    pass\n")
    text = (
        LOANS.split("records:", maxsplit=1)[0]
        .replace("loans_backend", "catalogue_backend")
        .replace("loans", "catalogue")
    )
    text += "operations:\n  search:\n    kind: read\n    doc: Search.\n    params: {page: 'int?', origin: str}\n"
    text += "    returns: 'list[str]'\n"
    (tmp_path / "catalogue.yaml").write_text(text, encoding="utf-8")
    contract = compile_contract(load_contract(tmp_path / "catalogue.yaml"))
    assert contract.gate.records == {}
    assert "search(page: int?, origin: str)" in contract.prompt_context
    backend = InMemoryBackend({"search": lambda **arguments: [arguments["origin"], str(arguments.get("page"))]})
    execution = governed_run(
        sandbox, contract, "conclude(', '.join(catalogue.search(origin='web')))", backend, tmp_path, ()
    )
    assert execution.outcome == Completed(answer="web, None", stats=execution.outcome.stats)


MALFORMED_CALLS = [
    ("positional", "loans.search('web')", "loans.search() takes keyword arguments only, e.g. loans.search(origin=...)"),
    ("unknown keyword", "loans.search(origin='web', pge=2)", "unexpected keyword argument 'pge'; did you mean 'page'?"),
    ("missing", "loans.search(page=2)", "loans.search() missing required keyword argument 'origin'"),
    ("wrong type", "loans.search(origin=3)", "loans.search(): origin must be a str, not int"),
    ("bool for int", "loans.search(origin='w', page=True)", "page must be an int, not bool"),
    ("beyond 64 bits", "loans.search(origin='w', page=2**64)", "page must fit in 64 bits"),
    ("NaN", "loans.search(origin='w', ratio=float('nan'))", "ratio must be a finite number, not nan"),
    ("infinity", "loans.search(origin='w', ratio=1e400)", "ratio must be a finite number, not inf"),
    ("lone surrogate", "loans.search(origin='\\ud800')", "origin contains a lone surrogate"),
    ("not a list", "loans.search(origin='w', tags='a')", "tags must be a list, not str"),
    ("list item", "loans.search(origin='w', tags=['a', 1])", "tags[1] must be a str, not int"),
    ("naive type", "loans.search(origin='w', since='2026-01-01')", "since must be a datetime, not str"),
    ("money as float", "loans.renew_loan(id=1, amount=2.5)", "amount must be a Decimal amount"),
    ("record field", "loans.search(origin='w', path={'label': 'a', 'nxt': None})", "path has no field 'nxt'"),
    ("record key", "loans.search(origin='w', path={1: 'a'})", "path has no field 1"),
    (
        "too deep",
        "node = None\nfor i in range(20):\n    node = {'label': str(i), 'next': node}\nloans.search(origin='w', path=node)",
        "arguments nested deeper than 16 levels",
    ),
]


@pytest.mark.parametrize(
    ("program", "words"), [(p, w) for _, p, w in MALFORMED_CALLS], ids=[n for n, _, _ in MALFORMED_CALLS]
)
def test_every_malformed_call_is_a_catchable_invalid_arguments_violation(
    sandbox: Sandbox, loans: CompiledContract, tmp_path: Path, program: str, words: str
) -> None:
    wrapped = "try:\n" + "".join(f"    {line}\n" for line in program.splitlines())
    wrapped += "except ContractViolation as error:\n    conclude(error.code, data=[error.reason, error.operation])\n"
    wrapped += "conclude('went through')\n"
    calls: list[tuple[str, dict[str, Any]]] = []
    execution = governed_run(sandbox, loans, wrapped, loans_backend(calls), tmp_path, {"loans:search"})
    outcome = execution.outcome
    assert isinstance(outcome, Completed), outcome
    assert outcome.answer == "INVALID_ARGUMENTS"
    assert words in outcome.data[0]
    assert outcome.data[1] in ("loans.search", "loans.renew_loan")
    assert calls == []
    assert execution.calls == ()  # refused in the sandbox: nothing reached the host to record


def test_a_malformed_call_that_reaches_the_host_is_recorded(
    sandbox: Sandbox, loans: CompiledContract, tmp_path: Path
) -> None:
    # Three decimal places pass the proxy (a Decimal) and are refused by the gate, with a receipt.
    program = (
        "from decimal import Decimal\ntry:\n    loans.renew_loan(id=1, amount=Decimal('2.505'))\n"
        "except ContractViolation as error:\n    conclude(error.code)\n"
    )
    execution = governed_run(sandbox, loans, program, loans_backend([]), tmp_path, ())
    assert execution.outcome == Completed(answer="INVALID_ARGUMENTS", stats=execution.outcome.stats)
    [decision] = [r for r in execution.calls if isinstance(r, Decision)]
    assert decision.code == "INVALID_ARGUMENTS"
    assert "at most 2 decimal places" in decision.message


def test_a_guard_that_fails_to_evaluate_is_named_in_the_denial(
    sandbox: Sandbox, loans: CompiledContract, tmp_path: Path
) -> None:
    # The checker refuses this guard now; a gate table built without it (an older checker)
    # still fails closed, naming the guard instead of only CEL's "No such overload".
    rule = loans.gate.operations["renew_loan"]
    unsafe = msgspec.structs.replace(rule.guards[0], when="params.amount > 0")
    table = msgspec.structs.replace(
        loans.gate,
        operations={**loans.gate.operations, "renew_loan": msgspec.structs.replace(rule, guards=(unsafe,))},
    )
    contract = msgspec.structs.replace(loans, gate=table, sha256="0" * 64)
    program = "try:\n    loans.renew_loan(id=2)\nexcept ContractViolation as error:\n    conclude(error.reason)\n"
    execution = governed_run(sandbox, contract, program, loans_backend([]), tmp_path, ())
    assert isinstance(execution.outcome, Completed), execution.outcome
    assert execution.outcome.answer.startswith(
        "renew_loan refused: guard fee_given could not be evaluated (TypeError: No such overload"
    )


# --- nothing acts after the conclusion or after the run's end (issue 14, fault 6) ---------------
#
# Each escape attempt, with its exact expected outcome:
#   decimal-subclass-str      a Decimal subclass in conclude(data=...) whose __str__ cancels an order:
#                             the data is copied without running __str__ ("0"); the same __str__
#                             called after the conclusion is refused: DENY CONCLUDED, order unchanged,
#                             the run done with its conclusion.
#   rewritten-runtime         the program switches the guest's own checks off (SESSION.concluded,
#                             _RUN.status) and calls after concluding through the proxy, the raw
#                             host import, and a second $conclude: each refused by the host, DENY
#                             CONCLUDED; the first conclusion stands.
#   in-the-gate-at-wall-time  a call whose entity read is still in the backend when the wall time
#                             ends, and returns before the seal: TimedOut(wall); DENY RUN_ENDED; the
#                             write is never invoked. (A call still queued for a worker is cancelled.)
#   allowed-not-started       an allowed call whose action had not started when the run ended:
#                             Outcome failed NOT_PERFORMED before the seal; the write never invoked;
#                             nothing in doubt.
#   TRAPS (below)             each a ProgramError naming what was attempted, or a Trapped saying
#                             what most likely happened.


def order_now(order_id: int) -> dict[str, Any]:
    from examples.orders import backend

    return backend.get_order(id=order_id)


def decisions_of(governed: Governed, run_id: str) -> list[tuple[int, str, str, str]]:
    return [
        (r.call, r.operation, r.decision, r.code) for r in governed.log.run(run_id).receipts if isinstance(r, Decision)
    ]


def test_a_decimal_subclass_cannot_act_after_conclude(governed: Governed) -> None:
    before = order_now(101)
    program = RAW + (
        "from decimal import Decimal\n"
        "class Evil(Decimal):\n"
        "    def __str__(self):\n"
        '        host.call(\'cancel_order\', \'{"id": 101, "reason": "customer asked"}\')\n'
        "        return '999'\n"
        "evil = Evil('0')\n"
        "try:\n"
        "    conclude('nothing done', data={'refund': evil, 'items': [evil]})\n"
        "finally:\n"
        "    str(evil)  # after the conclusion: the host refuses it\n"
    )
    execution = governed.run(program)
    assert (execution.status, execution.answer, execution.data) == (
        "done",
        "nothing done",
        {"refund": "0", "items": ["0"]},  # copied as the Decimal it is; Evil.__str__ never ran for it
    )
    assert decisions_of(governed, execution.run_id) == [(1, "cancel_order", "DENY", "CONCLUDED")]
    [denied] = [r for r in governed.log.run(execution.run_id).receipts if isinstance(r, Decision)]
    assert "the program already concluded with conclude()" in denied.message
    assert order_now(101) == before
    assert execution.in_doubt == ()


def test_a_rewritten_guest_runtime_is_refused_by_the_host_after_conclude(governed: Governed) -> None:
    before = order_now(101)
    program = RAW + (
        "g = conclude.__globals__\n"
        "try:\n"
        "    conclude('nothing done')\n"
        "except BaseException:\n"
        "    pass\n"
        "g['_proxies'].SESSION.concluded = False  # the guest's own check, switched off\n"
        "g['_RUN'].status = None  # the runtime forgets it concluded\n"
        "attempts = [\n"
        "    lambda: orders.cancel_order(id=101, reason='customer asked'),\n"
        '    lambda: host.call(\'cancel_order\', \'{"id": 101, "reason": "customer asked"}\'),\n'
        '    lambda: host.call(\'$conclude\', \'{"status":"completed","answer":"forged","data":null,"output":""}\'),\n'
        "    lambda: conclude('second'),\n"
        "]\n"
        "for attempt in attempts:\n"
        "    try:\n"
        "        attempt()\n"
        "    except BaseException as error:\n"
        "        print(type(error).__name__)\n"
    )
    execution = governed.run(program)
    assert (execution.status, execution.answer) == ("done", "nothing done")
    assert isinstance(execution.outcome, Completed)
    assert execution.outcome.output == "ContractViolation\nErr\nErr\nValueError\n"
    assert decisions_of(governed, execution.run_id) == [
        (1, "cancel_order", "DENY", "CONCLUDED"),
        (2, "cancel_order", "DENY", "CONCLUDED"),
        (3, "$conclude", "DENY", "CONCLUDED"),
        (4, "$conclude", "DENY", "CONCLUDED"),
    ]
    assert order_now(101) == before
    assert verify_log(governed.log, governed.log.trusted_keys(), run_id=execution.run_id).ok


class _GatedReads:
    """The example backend, with the answer to reads of order 101 held until `release` is set.

    It does not look at the run's deadline (the HTTP binding does): what holds is the gate's."""

    blocking = True

    def __init__(self, inner: Any, release: threading.Event) -> None:
        self.inner = inner
        self.release = release
        self.invoked: list[tuple[str, float]] = []

    def invoke(self, operation: str, arguments: Any, context: Any = None) -> Any:
        self.invoked.append((operation, time.monotonic()))
        result = self.inner.invoke(operation, arguments, context)
        if operation == "get_order" and arguments.get("id") == 101:
            self.release.wait(timeout=30)  # read in time, answered late
        return result


def _slow_runner(governed: Governed, backend: Any) -> Runner:
    return Runner(audit=governed.log, sandbox=governed.runner.sandbox, backend_for=lambda _: backend)


def test_a_call_still_in_the_gate_when_wall_time_ends_never_acts(
    governed: Governed, monkeypatch: pytest.MonkeyPatch
) -> None:
    from charter.audit.store import RunRecorder
    from charter.backends import ContractBackend
    from charter.gate import GateSession

    before = order_now(101)
    release, finished = threading.Event(), threading.Event()
    original_seal, original_call = RunRecorder.seal, GateSession.call

    def seal(self: RunRecorder, sealed: Any) -> Any:
        # The run's wall time has ended; before the seal, the gate's entity read returns.
        release.set()
        assert finished.wait(timeout=10)
        return original_seal(self, sealed)

    def call(self: GateSession, request: CallRequest) -> Any:
        try:
            return original_call(self, request)
        finally:
            finished.set()

    monkeypatch.setattr(RunRecorder, "seal", seal)
    monkeypatch.setattr(GateSession, "call", call)
    backend = _GatedReads(ContractBackend(governed.contract), release)
    limits = SandboxLimits.from_contract(governed.contract.gate.limits).tightened(wall_seconds=0.5)
    execution = _slow_runner(governed, backend).execute(
        "orders.cancel_order(id=101, reason='customer asked')\nconclude('cancelled')",
        contract=governed.contract,
        principal=Principal("ada", ALL_ORDER_SCOPES),
        limits=limits,
    )
    assert isinstance(execution.outcome, TimedOut), execution.outcome
    assert execution.outcome.limit == "wall"
    assert [op for op, _ in backend.invoked] == ["get_order"]  # cancel_order never invoked
    assert decisions_of(governed, execution.run_id) == [(1, "cancel_order", "DENY", "RUN_ENDED")]
    [denied] = [r for r in governed.log.run(execution.run_id).receipts if isinstance(r, Decision)]
    assert denied.message == (
        "cancel_order refused: the run had ended (timeout: The run exceeded its wall time (host calls included) "
        "limit of 0.5 s.); nothing acts after the run's end."
    )
    assert execution.in_doubt == ()
    assert order_now(101) == before
    assert verify_log(governed.log, governed.log.trusted_keys(), run_id=execution.run_id).ok


def test_an_allowed_call_not_started_when_the_run_ends_is_recorded_not_performed(
    governed: Governed, monkeypatch: pytest.MonkeyPatch
) -> None:
    from charter.backends import ContractBackend
    from charter.gate import GateSession

    before = order_now(101)
    closed, finished = threading.Event(), threading.Event()
    original_close, original_begin = GateSession.close, GateSession._begin

    def close(self: GateSession, reason: str) -> None:
        original_close(self, reason)
        closed.set()

    def begin(self: GateSession, request: CallRequest) -> None:
        # Holds the allowed call between its decision and its action until the run has ended.
        closed.wait(timeout=30)
        try:
            original_begin(self, request)
        finally:
            finished.set()

    monkeypatch.setattr(GateSession, "close", close)
    monkeypatch.setattr(GateSession, "_begin", begin)
    backend = _GatedReads(ContractBackend(governed.contract), threading.Event())
    backend.release.set()
    limits = SandboxLimits.from_contract(governed.contract.gate.limits).tightened(wall_seconds=0.5)
    execution = _slow_runner(governed, backend).execute(
        "orders.cancel_order(id=101, reason='customer asked')\nconclude('cancelled')",
        contract=governed.contract,
        principal=Principal("ada", ALL_ORDER_SCOPES),
        limits=limits,
    )
    assert finished.wait(timeout=10)
    assert isinstance(execution.outcome, TimedOut), execution.outcome
    receipts = governed.log.run(execution.run_id).receipts
    calls = [
        (type(r).__name__, r.call, getattr(r, "decision", None) or r.status, r.code)
        for r in receipts
        if isinstance(r, Decision | AuditOutcome)
    ]
    assert calls == [("Decision", 1, "ALLOW", "OK"), ("Outcome", 1, "failed", "NOT_PERFORMED")]
    [not_performed] = [r for r in receipts if isinstance(r, AuditOutcome)]
    assert not_performed.message == (
        "cancel_order was allowed but not performed: the run had ended (timeout: The run exceeded its wall time "
        "(host calls included) limit of 0.5 s.) before its action started."
    )
    assert [op for op, _ in backend.invoked] == ["get_order"]  # cancel_order never invoked
    assert execution.in_doubt == ()
    assert order_now(101) == before
    assert verify_log(governed.log, governed.log.trusted_keys(), run_id=execution.run_id).ok


GUEST = "g = conclude.__globals__\n"  # the guest runtime's own module globals: os, sys, its helpers
UNREACHABLE = "wasm trap: wasm `unreachable` instruction executed"

# (id, program, the exact outcome). Each used to end as an opaque Trapped(UNREACHABLE).
TRAPS: list[tuple[str, str, Outcome]] = [
    (
        "os-stat-via-runtime-globals",
        GUEST + 'g["os"].stat("/")',
        ProgramError(
            error_type="PermissionError",
            error_message="os.stat is not available in a Charter program: it has no host access",
        ),
    ),
    (
        "os-urandom-via-subclasses",
        OS + 'os["urandom"](8)',
        ProgramError(
            error_type="PermissionError",
            error_message="os.urandom is not available in a Charter program: it has no host access",
        ),
    ),
    (
        "system-random-of-the-real-module",
        GUEST + 'g["_confine"]._random.SystemRandom().random()',
        ProgramError(
            error_type="PermissionError",
            error_message="os.urandom is not available in a Charter program: it has no host access",
        ),
    ),
    (
        "the-interpreters-own-clock",
        GUEST + 'g["_confine"]._time.time()',
        ProgramError(
            error_type="PermissionError",
            error_message="the interpreter's own time.time is not available in a Charter program: it has no host access",
        ),
    ),
    (
        "os-stat-caught-by-the-program",
        GUEST + 'try:\n    g["os"].stat("/")\nexcept OSError as error:\n    conclude(type(error).__name__)',
        Completed(answer="PermissionError"),
    ),
    (
        "data-nested-too-deep",
        "x = []\nfor _ in range(500):\n    x = [x]\nconclude('x', data=x)",
        ProgramError(
            error_type="ValueError",
            error_message="the conclusion cannot be encoded as JSON: the data is nested deeper than 100 levels "
            "(or refers to itself)",
        ),
    ),
    (
        "data-refers-to-itself-caught",
        "x = []\nx.append(x)\ntry:\n    conclude('x', data=x)\nexcept ValueError as error:\n    conclude('caught')",
        Completed(answer="caught"),
    ),
    (
        "data-hooks-never-run",
        "import enum, datetime\nclass C(enum.IntEnum):\n    A = 3\n"
        "class S(str):\n    def __str__(self):\n        raise KeyError('hook')\n"
        "class L(list):\n    def __iter__(self):\n        raise KeyError('hook')\n"
        "class K(dict):\n    def items(self):\n        raise KeyError('hook')\n    def __iter__(self):\n        raise KeyError('hook')\n"
        "conclude('x', data=K({C.A: L([C.A, S('b'), (1, 2.5), {3}, datetime.date(2026, 1, 2)])}))",
        Completed(answer="x", data={"3": [3, "b", [1, 2.5], [3], "2026-01-02"]}),
    ),
    (
        "datetime-with-a-programs-tzinfo",
        "import datetime\nclass TZ(datetime.tzinfo):\n    def utcoffset(self, dt):\n        raise KeyError('hook')\n"
        "conclude('x', data=datetime.datetime(2026, 1, 1, tzinfo=TZ()))",
        ProgramError(
            error_type="TypeError",
            error_message="the conclusion cannot be encoded as JSON: a datetime in the data has a tzinfo of type TZ; "
            "use datetime.UTC or another datetime.timezone",
        ),
    ),
    (
        "raw-conclusion-nested-too-deep",
        RAW
        + 'deep = \'{"status":"completed","answer":"a","data":\' + \'[\' * 400000 + \']\' * 400000 + \'}\'\n'
        + "try:\n    host.call('$conclude', deep)\nexcept Exception as error:\n    conclude('refused', data=error.value)",
        Completed(
            answer="refused",
            data='{"error":"operation_error","code":"MALFORMED_CONCLUSION","message":"the conclusion is unreadable: '
            'maximum recursion depth exceeded while deserializing an object","boundary":null}',
        ),
    ),
    (
        "rewritten-runtime-returns-a-deep-outcome",
        GUEST
        + "class J:\n    @staticmethod\n    def dumps(*args, **kwargs):\n"
        + '        return \'{"status":"completed","answer":"a","output":"","data":\' + \'[\' * 400000 + \']\' * 400000 + \'}\'\n'
        + "g['json'] = J\n",
        Trapped(
            reason="the guest returned an unreadable outcome: maximum recursion depth exceeded while deserializing an object"
        ),
    ),
    (
        "real-datetime-now",
        "import datetime\ndatetime.datetime.__mro__[1].now()",
        Trapped(
            reason="the program read the host's clock past the run's virtual one (e.g. the real datetime.now) "
            f"(in the interpreter's PyTime_Time), which a Charter program cannot; the interpreter was stopped ({UNREACHABLE})"
        ),
    ),
    (
        "real-random-seed",
        GUEST + 'g["_confine"]._random.seed()',
        Trapped(
            reason="the program asked the host for randomness (e.g. random.seed() of the real random module) "
            f"(in the interpreter's pyurandom), which a Charter program cannot; the interpreter was stopped ({UNREACHABLE})"
        ),
    ),
]


@pytest.mark.usefixtures("healthy_after")
@pytest.mark.parametrize(("program", "expected"), [t[1:] for t in TRAPS], ids=[t[0] for t in TRAPS])
def test_what_used_to_trap_ends_with_a_clear_reason(
    sandbox: Sandbox, orders: CompiledContract, program: str, expected: Outcome
) -> None:
    outcome = run(sandbox, orders, program)
    if isinstance(outcome, ProgramError):
        outcome = msgspec.structs.replace(outcome, line=None, traceback=())
    assert msgspec.structs.replace(outcome, stats=expected.stats) == expected
