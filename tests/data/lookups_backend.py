"""The backend of tests/data/lookups.yaml: payees, accounts and contacts in memory."""

from typing import Any

PAYEES: dict[str, list[dict[str, Any]]] = {
    "acc-1": [{"iban": "GB29NWBK60161331926819", "name": "Landlord"}, {"iban": "DE89370400440532013000", "name": "Gym"}],
}
ACCOUNTS: dict[str, dict[str, Any]] = {"acc-1": {"id": "acc-1", "owner": "ada", "limit": "500.00"}}
CONTACTS: list[dict[str, Any]] = [
    {"email": "bob@example.com", "name": "Bob", "note": None},
    {"email": "eve@example.com", "name": "Eve"},
]
SENT: list[dict[str, Any]] = []


def list_payees(*, account: str) -> list[dict[str, Any]]:
    return PAYEES.get(account, [])


def get_account(*, id: str) -> dict[str, Any] | None:
    return ACCOUNTS.get(id)


def list_contacts() -> list[dict[str, Any]]:
    return CONTACTS


def send_payment(*, account: str, recipient: str, amount: Any) -> str:
    SENT.append({"account": account, "recipient": recipient, "amount": str(amount)})
    return f"sent {amount} to {recipient}"


def send_mail(*, recipients: list[str], body: str) -> str:
    SENT.append({"recipients": recipients, "body": body})
    return f"mailed {len(recipients)}"
