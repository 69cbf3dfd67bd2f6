"""HTTP-bound contracts against the real orders service on loopback, with real network faults.

Every fault goes through a real TCP proxy (tests/faulty_proxy.py): the service is real,
the sockets are real, only the exchange is broken.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from charter.audit import Decision, Outcome, Sealed
from charter.compiler import CompiledContract, compile_contract
from charter.contract import load_contract
from charter.errors import ContractError, UsageError
from charter.principal import Principal
from charter.runner import Execution, Runner
from tests.conftest import ALL_ORDER_SCOPES, ROOT, Governed, compiled
from tests.conftest import charter as charter_cli
from tests.faulty_proxy import FaultyProxy, Plan
from tests.tiny_service import tiny_service

ADA = Principal("ada", ALL_ORDER_SCOPES)


def order(order_id: int) -> dict[str, object]:
    from examples.orders import backend

    return backend.get_order(id=order_id)


@pytest.fixture
def proxy(orders_service: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultyProxy]:
    faulty = FaultyProxy(upstream=orders_service)
    monkeypatch.setenv("CHARTER_SERVICE_ORDERS_URL", faulty.url)
    yield faulty
    faulty.close()


def run(governed: Governed, program: str, contract: CompiledContract | None = None) -> Execution:
    # A new runner builds a new backend, which reads the service URL (the proxy's) afresh.
    runner = Runner(audit=governed.log, sandbox=governed.runner.sandbox)
    return runner.execute(program, contract=contract or governed.contract, principal=ADA)


def receipts(governed: Governed, run_id: str) -> tuple[list[Decision], list[Outcome], Sealed]:
    record = governed.log.run(run_id).receipts
    seal = next(r for r in record if isinstance(r, Sealed))
    return [r for r in record if isinstance(r, Decision)], [r for r in record if isinstance(r, Outcome)], seal


def first_post(action: str) -> Plan:
    """`action` for the first POST; every other request goes through."""
    posts = 0

    def plan(method: str, path: str) -> str:
        nonlocal posts
        if method != "POST":
            return "forward"
        posts += 1
        return action if posts == 1 else "forward"

    return plan


REPORT = "except OperationError as error:\n    conclude(error.code + ' | ' + str(error))\n"


# -- the happy path carries what the service needs ------------------------------------------


def test_a_write_carries_its_receipts_idempotency_key_and_the_etag_of_the_gates_read(
    governed: Governed, proxy: FaultyProxy
) -> None:
    execution = run(governed, 'o = orders.cancel_order(id=101, reason="moved")\nconclude(o.status)')
    assert execution.answer == "cancelled"
    [read, write] = proxy.seen
    assert (read.method, read.path) == ("GET", "/orders/101")  # the gate's state read, through the binding
    assert (write.method, write.path) == ("POST", "/orders/101/cancel")
    [decision], _, _ = receipts(governed, execution.run_id)
    assert write.headers["idempotency-key"] == decision.idempotency_key
    assert write.headers["charter-receipt"] == f"{execution.run_id}/1"
    assert write.headers["if-match"].startswith('"')
    assert write.body == b'{"reason":"moved"}'


def test_query_params_and_path_params_are_encoded(governed: Governed, proxy: FaultyProxy) -> None:
    execution = run(
        governed, 'conclude(str([o.id for o in orders.list_orders(status="pending", customer="ada@example.com")]))'
    )
    assert execution.answer == "[101]"
    assert proxy.seen[0].path == "/orders?status=pending&customer=ada%40example.com"


# -- writes: sent once; in doubt when the answer is lost ------------------------------------


def test_a_dropped_connection_after_the_write_leaves_it_in_doubt_and_never_resent(
    governed: Governed, proxy: FaultyProxy
) -> None:
    proxy.plan = first_post("drop_after")
    program = 'try:\n    orders.cancel_order(id=101, reason="moved")\n' + REPORT
    execution = run(governed, program)
    assert execution.answer is not None
    code, message = execution.answer.split(" | ", 1)
    assert code == "BACKEND_DISCONNECTED"
    assert "it may have taken effect. It was not sent again" in message
    assert len(proxy.forwarded("POST")) == 1  # sent once, no blind retry
    assert order(101)["status"] == "cancelled"  # the service did write
    _, [outcome], seal = receipts(governed, execution.run_id)
    assert (outcome.status, outcome.code) == ("unknown", "BACKEND_DISCONNECTED")
    assert seal.in_doubt == (1,) == execution.in_doubt
    assert [d.call for d in governed.log.run(execution.run_id).in_doubt()] == [1]
    from charter.audit import verify_log

    report = verify_log(governed.log, governed.log.trusted_keys(), run_id=execution.run_id)
    assert report.ok
    assert [(call, op) for _, call, op in report.in_doubt] == [(1, "cancel_order")]
    # The review app's overview lists it among the sealed runs with a call in doubt (the runs index).
    from charter.server._runs_query import overview

    view = overview(governed.log, principal=None)
    assert (view.in_doubt_total, [r.run_id for r in view.in_doubt]) == (1, [execution.run_id])
    # Replayed from its receipts, the program sees the same error and reaches the same conclusion.
    from charter.replay import replay_run

    replayed = replay_run(governed.log.run(execution.run_id), governed.contract, governed.runner.sandbox)
    assert replayed.identical, replayed.divergences
    shown = charter_cli("audit", "show", execution.run_id).stdout
    assert "outcome: unknown" in shown
    assert "BACKEND_DISCONNECTED" in shown


def test_a_repeated_write_after_a_lost_answer_is_refused_in_doubt(governed: Governed, proxy: FaultyProxy) -> None:
    proxy.plan = first_post("drop_after")
    program = (
        "from decimal import Decimal\n"
        "orders.verify_refund(id=125)\n"
        "try:\n"
        '    orders.refund_order(id=125, amount=Decimal("5.00"), reason="late")\n'
        "except OperationError:\n"
        "    pass\n"
        "try:\n"
        '    orders.refund_order(id=125, amount=Decimal("5.00"), reason="late")\n'
        "except ContractViolation as error:\n"
        "    conclude(error.code + ' | ' + str(error))\n"
    )
    execution = run(governed, program)
    assert execution.answer is not None
    assert execution.answer.startswith("IN_DOUBT | refund_order on Order 125 refused: call 2 of this run made")
    assert "may have acted; nothing is sent again in this run" in execution.answer
    assert order(125)["refunded"] == Decimal("25.00")  # 20.00 before: the lost refund did act, once
    assert len(proxy.forwarded("POST")) == 1  # the repeat was not sent, under any key
    decisions, outcomes, seal = receipts(governed, execution.run_id)
    assert [d.code for d in decisions] == ["OK", "OK", "IN_DOUBT"]
    assert [o.status for o in outcomes] == ["ok", "unknown"]
    assert seal.in_doubt == (2,)


def test_a_write_that_times_out_is_in_doubt(governed: Governed, proxy: FaultyProxy, tmp_path: Path) -> None:
    source = (ROOT / "contracts" / "orders.yaml").read_text(encoding="utf-8")
    fast = tmp_path / "orders.yaml"
    fast.write_text(source.replace("timeout_seconds: 5", "timeout_seconds: 0.5"), encoding="utf-8")
    contract = compile_contract(load_contract(fast))
    proxy.plan = first_post("delay_after:1.5")
    execution = run(governed, "try:\n    orders.confirm_order(id=101)\n" + REPORT, contract)
    assert execution.answer is not None
    assert execution.answer.startswith("BACKEND_TIMEOUT | confirm_order (POST ")
    assert "no answer came within the time limit: it may have taken effect" in execution.answer
    _, [outcome], seal = receipts(governed, execution.run_id)
    assert outcome.status == "unknown"
    assert seal.in_doubt == (1,)
    assert len(proxy.forwarded("POST")) == 1


def test_a_500_on_a_write_is_in_doubt_and_not_retried(governed: Governed, proxy: FaultyProxy) -> None:
    proxy.plan = first_post("error_500")
    execution = run(governed, "try:\n    orders.confirm_order(id=101)\n" + REPORT)
    assert execution.answer is not None
    assert execution.answer.startswith("BACKEND_ERROR | confirm_order (POST ")
    assert "was answered 500: the service failed while handling it" in execution.answer
    assert "internal error" not in execution.answer  # a 5xx body is withheld, kept for the operator
    assert [s.method for s in proxy.seen] == ["GET", "POST"]
    assert order(101)["status"] == "pending"
    _, [outcome], _ = receipts(governed, execution.run_id)
    assert (outcome.status, outcome.error_type) == ("unknown", "HTTP 500")
    [kept] = governed.log.backend_errors(execution.run_id)
    assert (kept.call, kept.error_type, kept.message_sha256) == (1, "HTTP 500", outcome.error_sha256)
    assert "internal error" in kept.message


# -- reads: retried, within bounds ----------------------------------------------------------


def test_a_read_is_retried_after_500s_and_succeeds(governed: Governed, proxy: FaultyProxy) -> None:
    failures = iter(["error_500", "close_before"])
    proxy.plan = lambda method, path: next(failures, "forward")
    execution = run(governed, "conclude(orders.get_order(id=102).status)")
    assert execution.answer == "confirmed"
    assert [s.forwarded for s in proxy.seen] == [False, False, True]


def test_a_read_that_keeps_failing_fails_after_its_retries(governed: Governed, proxy: FaultyProxy) -> None:
    proxy.plan = lambda method, path: "error_500"
    execution = run(governed, "try:\n    orders.get_order(id=102)\n" + REPORT)
    assert execution.answer is not None
    assert execution.answer.startswith("BACKEND_ERROR | get_order (GET ")
    assert "failed 3 times; the last: answered 500" in execution.answer
    assert "internal error" not in execution.answer
    _, [outcome], seal = receipts(governed, execution.run_id)
    assert (outcome.status, seal.in_doubt) == ("failed", ())  # a read is never in doubt


def test_an_unreachable_service_denies_writes_it_cannot_check(
    governed: Governed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHARTER_SERVICE_ORDERS_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    execution = run(governed, 'orders.cancel_order(id=101, reason="moved")\nconclude("no")')
    assert execution.status == "refused"
    assert execution.reason is not None
    assert "reading Order 101 through get_order failed" in execution.reason
    assert "Is the service running? Its address comes from CHARTER_SERVICE_ORDERS_URL" in execution.reason
    [decision], outcomes, seal = receipts(governed, execution.run_id)
    assert (decision.decision, decision.code, outcomes, seal.in_doubt) == ("DENY", "GATE_ERROR", [], ())


def test_a_missing_service_address_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    source = (ROOT / "contracts" / "orders.yaml").read_text(encoding="utf-8")
    bare = tmp_path / "orders.yaml"
    bare.write_text(source.replace(', base_url: "http://127.0.0.1:8701"', ""), encoding="utf-8")
    monkeypatch.delenv("CHARTER_SERVICE_ORDERS_URL")
    from charter.backends import ContractBackend

    with pytest.raises(UsageError, match="set CHARTER_SERVICE_ORDERS_URL"):
        ContractBackend(compile_contract(load_contract(bare)))


# -- what a service answers is checked like any backend's value ----------------------------

SECRET = "database password is hunter2"


def test_an_http_result_is_checked_after_its_json_pointer(
    governed: Governed, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source = (ROOT / "contracts" / "orders.yaml").read_text(encoding="utf-8")
    wrapped = tmp_path / "orders.yaml"
    wrapped.write_text(
        source.replace('path: "/orders/{id}"}}', 'path: "/orders/{id}", result: /data}}'), encoding="utf-8"
    )
    contract = compile_contract(load_contract(wrapped))
    good = {**order(101), "total": "89.00", "refunded": "0.00", "placed_at": "2026-11-01T09:41:00Z"}
    good["items"] = [{**i, "unit_price": str(i["unit_price"])} for i in good["items"]]  # type: ignore[attr-defined]
    answers = {
        ("GET", "/orders/101"): (200, {"data": {**good, "id": "not-an-int"}}),
        ("GET", "/orders/102"): (200, {"data": {**good, "id": 102, "shelf": "B4"}, "meta": {"total": 1}}),
        ("POST", "/orders/102/confirm"): (500, {"detail": SECRET}),
    }
    with tiny_service(answers) as url:
        monkeypatch.setenv("CHARTER_SERVICE_ORDERS_URL", url)
        bad = run(governed, "try:\n    orders.get_order(id=101)\n" + REPORT, contract)
        extra = run(governed, "conclude(str(orders.get_order(id=102).id))", contract)
    assert bad.answer is not None
    assert bad.answer.startswith("RESULT_INVALID | get_order returned a value that is not the contract's Order: ")
    assert "Expected `int`, got `str` - at `$.id`" in bad.answer
    _, [outcome], _ = receipts(governed, bad.run_id)
    assert (outcome.status, outcome.code, outcome.result) == ("failed", "RESULT_INVALID", None)
    assert extra.answer == "102"
    _, [outcome], _ = receipts(governed, extra.run_id)
    assert (outcome.status, outcome.dropped) == ("ok", ("$.shelf",))  # `meta` was outside the pointer


def test_a_services_500_body_reaches_only_the_redactable_table(
    governed: Governed, monkeypatch: pytest.MonkeyPatch
) -> None:
    current = {**order(101), "status": "pending"}
    body = msgspec.to_builtins(current)
    answers = {("GET", "/orders/101"): (200, body), ("POST", "/orders/101/confirm"): (500, {"detail": SECRET})}
    with tiny_service(answers) as url:
        monkeypatch.setenv("CHARTER_SERVICE_ORDERS_URL", url)
        execution = run(governed, "try:\n    orders.confirm_order(id=101)\n" + REPORT)
    assert execution.answer is not None
    assert execution.answer.startswith("BACKEND_ERROR | confirm_order (POST ")
    assert "hunter2" not in execution.answer
    assert all(b"hunter2" not in row.body for row in governed.log.stored())
    [kept] = governed.log.backend_errors(execution.run_id)
    assert kept.message == SECRET


# -- the service's own semantics (what the binding relies on) --------------------------------


def test_the_service_honours_idempotency_keys(orders_service: str) -> None:
    import httpx

    from examples.orders import backend

    backend.seed()
    with httpx.Client(base_url=orders_service) as client:
        headers = {"Idempotency-Key": "k-1"}
        first = client.post("/orders/125/refunds", json={"amount": "1.00", "reason": "late"}, headers=headers)
        again = client.post("/orders/125/refunds", json={"amount": "1.00", "reason": "late"}, headers=headers)
        other = client.post("/orders/125/refunds", json={"amount": "2.00", "reason": "late"}, headers=headers)
        stale = client.post("/orders/102/cancel", json={"reason": "x"}, headers={"If-Match": '"0000"'})
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert first.json()["refunded"] == "21.00"  # once
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert stale.status_code == 412
    assert order(102)["status"] == "confirmed"


# -- contract checks --------------------------------------------------------------------------

HTTP_SHOP = {
    "binding:\n  python: tests.data.shop_backend\n": 'binding:\n  http: {service: shop, base_url: "http://127.0.0.1:9"}\n',
    "    returns: Order\n  cancel_order:": '    returns: Order\n    binding: {http: {method: GET, path: "/orders/{id}"}}\n'
    "  cancel_order:",
    "    scopes: [orders:write]\n": '    scopes: [orders:write]\n    binding: {http: {method: POST, path: "/orders/{id}/cancel"}}\n',
}


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (
            {'path: "/orders/{id}/cancel"': 'path: "/orders/{order}/cancel"'},
            ["44:42: path placeholder '{order}' is not a param of 'cancel_order'"],
        ),
        (
            {'{method: POST, path: "/orders/{id}/cancel"}': '{method: GET, path: "/orders/{id}/cancel"}'},
            ["44:30: write operation 'cancel_order' cannot be a GET: use POST, PUT, PATCH or DELETE"],
        ),
        (
            {'path: "/orders/{id}/cancel"}': 'path: "/orders/{id}/cancel", body: [reson]}'},
            ["44:72: 'reson' is not a param of 'cancel_order' (did you mean 'reason'?)"],
        ),
        (
            {'    binding: {http: {method: GET, path: "/orders/{id}"}}\n': ""},
            [
                "23:3: operation 'get_order' has no endpoint on service 'shop': add "
                "`binding: {http: {method: GET, path: /...}}` to the operation"
            ],
        ),
        (
            {'base_url: "http://127.0.0.1:9"': 'base_url: "127.0.0.1:9"'},
            [
                "7:35: base_url '127.0.0.1:9' must be an http:// or https:// URL without a query, "
                "e.g. http://127.0.0.1:8701"
            ],
        ),
        (
            {
                '{http: {method: GET, path: "/orders/{id}"}}': '{http: {method: GET, path: "/orders/{id}"}, python: "a.b:c"}'
            },
            ["30:14: operations.get_order.binding: a binding names exactly one of python, http"],
        ),
        (
            {'{method: GET, path: "/orders/{id}"}': '{method: GET, path: "/orders/{id}", result: order}'},
            ["30:65: result 'order' must be a JSON pointer such as /order, or ''"],
        ),
    ],
    ids=["unknown-placeholder", "write-as-get", "unknown-body-param", "no-endpoint", "bad-url", "two-kinds", "pointer"],
)
def test_malformed_http_bindings_get_exact_messages(
    write_contract: object, mutation: dict[str, str], expected: list[str]
) -> None:
    path = write_contract(replace={**HTTP_SHOP})  # type: ignore[operator]
    text = path.read_text(encoding="utf-8")
    for old, new in mutation.items():
        assert old in text
        text = text.replace(old, new, 1)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ContractError) as caught:
        load_contract(path)
    assert [f"{p.line}:{p.column}: {p.message}" for p in caught.value.problems] == expected


def test_the_orders_contract_binds_every_operation_over_http() -> None:
    contract = compiled("orders")
    assert {rule.binding.kind for rule in contract.gate.operations.values()} == {"http"}
    assert compiled("invoices").gate.operations["pay_invoice"].binding.kind == "python"


# -- any exception inside the HTTP backend is its failure, its text withheld ---------------


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit], ids=lambda k: k.__name__)
def test_an_exception_of_any_kind_while_sending_is_a_backend_failure_with_its_text_withheld(
    governed: Governed, proxy: FaultyProxy, monkeypatch: pytest.MonkeyPatch, kind: type[BaseException]
) -> None:
    from charter.backends import _http

    send = _http._send

    def interrupted(client: object, request: object, timeout: dict[str, float]) -> object:
        if getattr(request, "method", "") != "GET":
            raise kind(SECRET)
        return send(client, request, timeout)  # type: ignore[arg-type]

    monkeypatch.setattr(_http, "_send", interrupted)
    execution = run(governed, 'try:\n    orders.cancel_order(id=101, reason="moved")\n' + REPORT)
    assert execution.answer is not None, execution.outcome
    assert execution.answer.startswith("BACKEND_ERROR | cancel_order (POST ")
    assert f"failed while it was being sent ({kind.__name__}): it may have taken effect" in execution.answer
    _, outcomes, seal = receipts(governed, execution.run_id)
    assert [(o.status, o.code) for o in outcomes] == [("unknown", "BACKEND_ERROR")]
    assert seal.in_doubt == (1,)
    assert all(b"hunter2" not in row.body for row in governed.log.stored())
    assert [k.message for k in governed.log.backend_errors(execution.run_id)] == [SECRET]
