"""Backends: what performs an operation once the gate has allowed it.

- `PythonBackend` calls the functions a contract's `binding:` names (`module:function`).
- `InMemoryBackend` answers from functions you give it; for tests and examples.

A binding function takes the operation's params as keyword arguments. If it also
declares a keyword parameter named `charter`, it receives the call's `CallContext`:
who acts, the idempotency key of a write, and the `Precondition` that ties the write to
the state the gate decided on. A binding that honours the precondition checks it inside
the same transaction as its write (`charter.precondition.check(current_record)`), so a
change between the gate's read and the write is refused instead of overwritten.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import msgspec

from charter.compiler.artifact import CompiledContract
from charter.errors import UsageError
from charter.principal import Principal

__all__ = [
    "Backend",
    "CallContext",
    "InMemoryBackend",
    "Precondition",
    "PreconditionFailed",
    "PythonBackend",
    "fingerprint",
]

_fingerprint_encoder = msgspec.json.Encoder(decimal_format="string", order="sorted")


def fingerprint(record: Any) -> str:
    """A hash of an entity as a read binding returns it: equal records, equal fingerprints."""
    return hashlib.sha256(_fingerprint_encoder.encode(record)).hexdigest()


class PreconditionFailed(Exception):
    """The entity changed after the gate read it; the binding wrote nothing."""


class Precondition(msgspec.Struct, frozen=True, kw_only=True):
    """The entity as the gate observed it when it allowed the write."""

    entity: str
    key: Any
    field: str | None  # the lifecycle field, when the write is a transition
    state: str | None
    fingerprint: str

    def check(self, current: Mapping[str, Any]) -> None:
        """Raise PreconditionFailed unless `current` is the entity the gate saw."""
        if fingerprint(current) == self.fingerprint:
            return
        now = current.get(self.field) if self.field else None
        change = f" (it was {self.state}, it is now {now})" if self.field and now != self.state else ""
        raise PreconditionFailed(
            f"{self.entity} {self.key} changed after the gate checked it{change}; nothing was written"
        )


class CallContext(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    call: int
    principal: Principal
    idempotency_key: str | None  # writes only: the same key means the same write
    precondition: Precondition | None
    deadline: float  # time.monotonic() by which the run ends; don't wait past it


class Backend(Protocol):
    blocking: bool  # may `invoke` wait on I/O? (the host then runs it under a watchdog)

    def invoke(self, operation: str, arguments: Mapping[str, Any], context: CallContext | None = None) -> Any: ...


def _takes_context(function: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return "charter" in parameters


class _Functions:
    """Calls one function per operation, handing the CallContext to those that ask for it."""

    def __init__(self, functions: Mapping[str, Callable[..., Any]]) -> None:
        self._functions = dict(functions)
        self._wants_context = {name: _takes_context(f) for name, f in self._functions.items()}

    def invoke(self, operation: str, arguments: Mapping[str, Any], context: CallContext | None = None) -> Any:
        function = self._functions.get(operation)
        if function is None:
            raise LookupError(f"{type(self).__name__} has no function for {operation!r}")
        if self._wants_context[operation]:
            return function(**arguments, charter=context)
        return function(**arguments)


class InMemoryBackend(_Functions):
    """Operations answered by plain functions in this process; never blocks on I/O."""

    blocking: bool = False


class PythonBackend(_Functions):
    """Calls each operation's bound function, imported once when the backend is created."""

    blocking: bool = True  # bindings may do I/O (the examples use SQLite)

    def __init__(self, contract: CompiledContract) -> None:
        functions: dict[str, Callable[..., Any]] = {}
        for name, rule in contract.gate.operations.items():
            module_name, _, function_name = rule.binding.target.partition(":")
            try:
                module = importlib.import_module(module_name)
                functions[name] = getattr(module, function_name)
            except (ImportError, AttributeError) as error:
                raise UsageError(
                    f"contract {contract.name} {contract.version}, operation {name}: "
                    f"cannot load binding {rule.binding.target!r}: {error}"
                ) from error
        super().__init__(functions)
