"""Backends: what performs an operation once the gate has allowed it.

- `PythonBackend` calls the functions a contract's `binding:` names (`module:function`).
- `InMemoryBackend` answers from functions you give it; for tests and examples.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from charter.compiler.artifact import CompiledContract
from charter.errors import UsageError

__all__ = ["Backend", "InMemoryBackend", "PythonBackend"]


class Backend(Protocol):
    blocking: bool  # may `invoke` wait on I/O? (the host then runs it under a watchdog)

    def invoke(self, operation: str, arguments: Mapping[str, Any]) -> Any: ...


class InMemoryBackend:
    """Operations answered by plain functions in this process; never blocks on I/O."""

    blocking: bool = False

    def __init__(self, handlers: Mapping[str, Callable[..., Any]]) -> None:
        self._handlers = dict(handlers)

    def invoke(self, operation: str, arguments: Mapping[str, Any]) -> Any:
        handler = self._handlers.get(operation)
        if handler is None:
            raise LookupError(f"InMemoryBackend has no handler for {operation!r}")
        return handler(**arguments)


class PythonBackend:
    """Calls each operation's bound function, imported once when the backend is created."""

    blocking: bool = True  # bindings may do I/O (the examples use SQLite)

    def __init__(self, contract: CompiledContract) -> None:
        self._functions: dict[str, Callable[..., Any]] = {}
        for name, rule in contract.gate.operations.items():
            module_name, _, function_name = rule.binding.target.partition(":")
            try:
                module = importlib.import_module(module_name)
                self._functions[name] = getattr(module, function_name)
            except (ImportError, AttributeError) as error:
                raise UsageError(
                    f"contract {contract.name} {contract.version}, operation {name}: "
                    f"cannot load binding {rule.binding.target!r}: {error}"
                ) from error

    def invoke(self, operation: str, arguments: Mapping[str, Any]) -> Any:
        return self._functions[operation](**arguments)
