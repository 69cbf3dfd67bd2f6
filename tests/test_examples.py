"""The example backends, on real SQLite files, and the demo as a real process."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from examples._sqlite import Conflict, NotFound
from examples.invoices import backend as invoices
from examples.orders import backend as orders
from tests.conftest import charter


def test_orders_seeded_in_several_states() -> None:
    orders.seed()
    states = {o["id"]: o["status"] for o in orders.list_orders()}
    assert states[123] == "dispatched"
    assert {"pending", "confirmed", "picking", "packed", "dispatched", "delivered", "cancelled"} <= set(states.values())


def test_orders_backend_keeps_its_own_rules() -> None:
    orders.seed()
    with pytest.raises(Conflict, match="order 123 is dispatched; cannot move it to cancelled"):
        orders.cancel_order(id=123, reason="changed mind")
    assert orders.cancel_order(id=101, reason="changed mind")["status"] == "cancelled"
    with pytest.raises(NotFound):
        orders.get_order(id=999)
    check = orders.verify_refund(id=125)
    assert check["refundable"] == Decimal("299.96")
    with pytest.raises(Conflict, match="would exceed the total"):
        orders.refund_order(id=125, amount=Decimal("300.00"), reason="late")


def test_invoices_backend() -> None:
    invoices.seed()
    assert invoices.get_invoice(number="INV-1002")["state"] == "submitted"
    assert invoices.approve_invoice(number="INV-1002")["state"] == "approved"
    with pytest.raises(Conflict):
        invoices.void_invoice(number="INV-1002", reason="x")


def test_demo_runs(charter_home: Path) -> None:
    result = charter("demo")
    assert result.returncode == 0, result.stderr
    assert "transition 'cancel' names unknown state 'canceled' (did you mean 'cancelled'?)" in result.stdout
    assert "'cancel' is now also allowed from dispatched" in result.stdout
    assert "order 123: dispatched" in result.stdout
    assert (charter_home / "demo" / "charter.db").is_file()
    # The governed runs: one allowed cancel, two refusals in the contract's words, a verified refund.
    assert "answer:   Order 101 is now cancelled." in result.stdout
    assert "cancel_order DENIED STATE_VIOLATION" in result.stdout
    assert "Order 123 cannot be cancelled: it is dispatched" in result.stdout
    assert "refund_order DENIED SEQUENCE_VIOLATION" in result.stdout
    assert "expected step verify_refund, received step refund_order" in result.stdout
    assert "Refunded 20.00 on order 125; 40.00 of 319.96 refunded in all." in result.stdout
    # The Runtime Agent, answering from the recorded model responses (no key in tests).
    agent = result.stdout[result.stdout.index("== 8. The Runtime Agent") :]
    assert "ANTHROPIC_API_KEY is not set, so the model's answers are replayed from demo.json" in agent
    assert "conclusion: done: Order 101 is now cancelled." in agent
    assert (
        "conclusion: refused: Order 123 cannot be cancelled. It is currently dispatched. "
        "Cancellation is only permitted for orders in pending or confirmed state."
    ) in agent
    assert "cancel_order DENIED WRITES_CLOSED" in agent
    assert agent.count("conclusion: ") == 4
    # Over HTTP: no token, no run; the same Idempotency-Key twice runs once.
    http = result.stdout[result.stdout.index("== 9. The same over HTTP") :]
    assert "no token:        401 urn:charter:problem:unauthenticated" in http
    assert "first request:   200 done: Order 102 is cancelled." in http
    assert "(replayed, nothing ran)" in http
    # The payments example under prompt injection: every v2 construct, decided by the gate.
    payments = result.stdout[result.stdout.index("== 10. Payments under prompt injection") :]
    assert "contracts/payments.yaml: ok, 14 operations" in result.stdout
    assert "recipient: str from request|list_payees[].iban" in payments
    assert "answer:   Paid 84.20 to Green Energy Ltd: transfer TRF-1001 is executed." in payments
    assert "send_payment DENIED PROVENANCE_VIOLATION (provenance:send_payment.recipient)" in payments
    assert "its value was seen only in the result of read_document" in payments
    assert (
        "paused:   add_payee awaits a human's approval (approval:add_payee): IBAN not given by the holder" in payments
    )
    assert "send_payment DENIED QUOTA_EXCEEDED (quota:daily_outflow)" in payments
    assert "change_password DENIED PROVENANCE_VIOLATION (provenance:change_password.new_password)" in payments
    assert "Winter-Reset-2026!" not in payments  # the injected password is never echoed
    assert "plum-otter-harbour-42" not in payments  # nor the holder's own
    assert "answer:   Password changed at" in payments
    assert "redirect_standing_order DENIED GUARD_VIOLATION (guard:redirect_to_payee)" in payments
    assert payments.count("answer:   ") == 7
    assert "22 runs, 96 signed receipts: intact" in result.stdout
