"""Backends: what performs an operation once the gate has allowed it.

- `ContractBackend` performs each operation the way the contract binds it, and is what
  runs use unless told otherwise:
  - `PythonBackend` calls the functions a `binding: {python: module:function}` names;
  - `HttpBackend` sends the request a `binding: {http: {method, path}}` describes, to the
    service the contract names (its address from CHARTER_SERVICE_<NAME>_URL).
- `InMemoryBackend` answers from functions you give it; for tests and examples.

A Python binding takes the operation's params as keyword arguments. If it also declares
a keyword parameter named `charter`, it receives the call's `CallContext`: who acts, the
idempotency key of a write, and the `Precondition` that ties the write to the state the
gate decided on. A binding that honours the precondition checks it inside the same
transaction as its write (`charter.precondition.check(current_record)`), so a change
between the gate's read and the write is refused instead of overwritten. An HTTP service
gets the same through headers: `Idempotency-Key`, and `If-Match` with the ETag of the read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from charter.backends._base import (
    Backend,
    BackendFailure,
    BackendNotFound,
    BackendUnavailable,
    CallContext,
    Precondition,
    PreconditionFailed,
    fingerprint,
)
from charter.backends._http import HttpBackend, service_url, service_url_variable
from charter.backends._python import InMemoryBackend, PythonBackend
from charter.compiler.artifact import CompiledContract

__all__ = [
    "Backend",
    "BackendFailure",
    "BackendNotFound",
    "BackendUnavailable",
    "CallContext",
    "ContractBackend",
    "HttpBackend",
    "InMemoryBackend",
    "Precondition",
    "PreconditionFailed",
    "PythonBackend",
    "fingerprint",
    "service_url",
    "service_url_variable",
]


class ContractBackend:
    """Each operation performed through its own binding: Python, HTTP, or a mix of both."""

    blocking: bool = True

    def __init__(self, contract: CompiledContract) -> None:
        kinds = {rule.binding.kind for rule in contract.gate.operations.values()}
        self.python = PythonBackend(contract) if "python" in kinds else None
        self.http = HttpBackend(contract) if "http" in kinds else None
        self._route: dict[str, Backend] = {}
        for name, rule in contract.gate.operations.items():
            backend = self.python if rule.binding.kind == "python" else self.http
            assert backend is not None
            self._route[name] = backend
        # May wait on I/O if any binding it routes to may (the gate then runs under a watchdog).
        self.blocking = any(b.blocking for b in (self.python, self.http) if b is not None)

    def invoke(self, operation: str, arguments: Mapping[str, Any], context: CallContext | None = None) -> Any:
        backend = self._route.get(operation)
        if backend is None:
            raise LookupError(f"the contract has no operation {operation!r}")
        return backend.invoke(operation, arguments, context)

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
