"""Operations performed by Python functions in this process."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from charter.backends._base import CallContext
from charter.compiler.artifact import CompiledContract
from charter.errors import UsageError

__all__ = ["InMemoryBackend", "PythonBackend"]


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
    """Calls each Python-bound operation's function, imported once when the backend is created."""

    blocking: bool = True  # bindings may do I/O (the examples use SQLite)

    def __init__(self, contract: CompiledContract) -> None:
        functions: dict[str, Callable[..., Any]] = {}
        for name, rule in contract.gate.operations.items():
            if rule.binding.kind != "python":
                continue
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
