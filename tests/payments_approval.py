"""The payments example's approval case, shared by the API, MCP and browser tests: a holder
sends money to an IBAN that is not a saved payee, so send_payment's approval rule holds."""

from __future__ import annotations

from examples.payments import backend

HOLDER_SCOPES = ["payments:read", "payments:write", "documents:read", "profile:read"]
HOLDER_ATTRIBUTES = {"account_id": backend.HOLDER_ACCOUNT, "daily_limit": "2500.00"}
NEW_IBAN = backend.LANDLORD_NEW_IBAN  # not a saved payee: the approval rule holds

PAY_NEW_IBAN = (
    "from decimal import Decimal\n"
    "transfer = payments.send_payment(\n"
    '    account="ACC-1001", recipient=inputs["iban"], amount=Decimal("25.00"), reference="Deposit"\n'
    ")\n"
    'conclude(f"sent {transfer.amount}")\n'
)
PAY = {"contract": "payments", "program": PAY_NEW_IBAN, "inputs": {"iban": NEW_IBAN}}
