"""A gate that checks argument types and nothing else: the sandbox's stand-in until the
contract gate is in place. It never reads state, guards or scopes; do not put it in
front of a real system."""

from __future__ import annotations

from typing import Any

from charter.backends import Backend
from charter.compiler.artifact import CompiledContract
from charter.gate._arguments import ArgumentChecker, InvalidArguments
from charter.gate._protocol import CallRequest, Denied, OperationFailed

__all__ = ["PassThroughGate"]


class PassThroughGate:
    def __init__(self, contract: CompiledContract, backend: Backend) -> None:
        self._backend = backend
        self._checker = ArgumentChecker.for_table(contract.gate)
        self.blocking = backend.blocking

    def call(self, request: CallRequest) -> Any:
        if request.malformed is not None:
            raise Denied(request.malformed.code, request.malformed.message)
        try:
            arguments = self._checker.check(request.operation, request.arguments)
        except InvalidArguments as error:
            raise Denied("INVALID_ARGUMENTS", f"{request.operation}: {error}") from None
        try:
            return self._backend.invoke(request.operation, arguments)
        except (Denied, OperationFailed):
            raise
        except BaseException as error:  # backend code: SystemExit, KeyboardInterrupt... are its failures too
            # The exception's text may hold secrets; this gate records nothing, so it is dropped.
            raise OperationFailed(
                "BACKEND_ERROR", f"{request.operation} failed in the backend ({type(error).__name__})"
            ) from None
