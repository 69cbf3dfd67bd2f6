"""The backend of tests/data/lookups.yaml: payees, accounts and contacts in memory."""

from typing import Any

from tests.data import lookups_state as state


def list_payees(*, account: str) -> list[dict[str, Any]]:
    return state.PAYEES.get(account, [])


def get_account(*, id: str) -> dict[str, Any] | None:
    return state.ACCOUNTS.get(id)


def list_contacts() -> list[dict[str, Any]]:
    return state.CONTACTS


def send_payment(*, account: str, recipient: str, amount: Any) -> str:
    state.SENT.append({"account": account, "recipient": recipient, "amount": str(amount)})
    return f"sent {amount} to {recipient}"


def send_mail(*, recipients: list[str], body: str) -> str:
    state.SENT.append({"recipients": recipients, "body": body})
    return f"mailed {len(recipients)}"
