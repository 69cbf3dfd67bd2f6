"""The data of tests/data/lookups_backend.py, in a module of its own: the gate loads the
backend module afresh from its file, while the tests reach this one through sys.modules."""

from typing import Any

PAYEES: dict[str, list[dict[str, Any]]] = {
    "acc-1": [
        {"iban": "GB29NWBK60161331926819", "name": "Landlord"},
        {"iban": "DE89370400440532013000", "name": "Gym"},
    ],
}
ACCOUNTS: dict[str, dict[str, Any]] = {"acc-1": {"id": "acc-1", "owner": "ada", "limit": "500.00"}}
CONTACTS: list[dict[str, Any]] = [
    {"email": "bob@example.com", "name": "Bob", "note": None},
    {"email": "eve@example.com", "name": "Eve"},
]
SENT: list[dict[str, Any]] = []
