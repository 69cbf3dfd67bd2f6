"""Acting on the backend for an allowed call, and recording what came of it.

`CallActions.act` calls the backend once, checks what it returned before the program gets
it (the declared type, undeclared fields dropped and named, RESULT_INVALID; the size,
RESULT_TOO_LARGE), records the Outcome receipt and takes the reply into the run's state
(the sequence, the write ledger, provenance). Once the backend was called, whatever fails
is an Outcome `failed` or `unknown` raised to the program as OperationFailed, never a denial.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

from charter._profile import component
from charter.audit import RunRecorder
from charter.backends import BackendFailure, CallContext, Precondition, PreconditionFailed
from charter.compiler.artifact import OperationRule
from charter.errors import AuditError
from charter.gate._protocol import CallRequest, Encoded, OperationFailed, encode_reply
from charter.gate._receipts import OutcomeStatus, outcome_receipt
from charter.gate._results import ResultInvalid
from charter.gate._run import RunState
from charter.gate._secrets import scrub, scrubbed_withheld
from charter.gate._withheld import Withheld, safe_text, withhold
from charter.principal import Principal

if TYPE_CHECKING:
    from charter.gate._contract import ContractGate

__all__ = ["CallActions"]


class _ResultRefused(Exception):
    """A backend's result the program must not get: its code and message (no backend text)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class CallActions:
    """The backend calls and Outcome receipts of one run, over the run's state (`state`: the
    session's). `max_result_bytes` bounds each reply the program gets."""

    def __init__(
        self,
        gate: ContractGate,
        recorder: RunRecorder,
        principal: Principal,
        max_result_bytes: int,
        state: RunState,
        secret_inputs: tuple[str, ...],
    ) -> None:
        self._gate = gate
        self._recorder = recorder
        self._principal = principal
        self._max_result_bytes = max_result_bytes
        self._state = state
        self._secret_inputs = secret_inputs

    def secret_values(self, request: CallRequest) -> list[str]:
        """What `scrub` removes from this call's texts: its secret params' values and the run's
        secret inputs, in every rendering."""
        return self._gate._secrets.values(request, self._secret_inputs)

    def act(
        self,
        request: CallRequest,
        rule: OperationRule,
        arguments: dict[str, Any],
        args_hash: str,
        precondition: Precondition | None,
        idempotency_key: str | None,
    ) -> Encoded:
        context = self.context(request, idempotency_key=idempotency_key, precondition=precondition)
        try:
            with component("backend"):
                value = self._gate.backend.invoke(rule.name, arguments, context)
        except PreconditionFailed as error:
            message = f"{rule.name}: {safe_text(error)}"
            self._failed_outcome(request, "failed", "PRECONDITION_FAILED", message)
        except BackendFailure as failure:
            # In doubt: the request reached the backend, no answer came back. The receipt says
            # `unknown` and the call stays in doubt in the seal; nothing here sends it again,
            # and a later write of it to the same target in this run is IN_DOUBT.
            status: OutcomeStatus = "unknown" if failure.in_doubt else "failed"
            if failure.in_doubt and rule.kind == "write":
                self._state.writes.unknown(rule, arguments, args_hash, request.sequence)
            self._failed_outcome(request, status, failure.code, failure.message, withhold(failure))
        except OperationFailed as failed:
            self._failed_outcome(request, "failed", failed.code, failed.message)
        except BaseException as error:  # backend code: SystemExit, KeyboardInterrupt... are its failures too
            message = (
                f"{rule.name} failed in the backend; its error text is withheld from the program "
                "(the operator can read it with `charter audit show`)."
            )
            self._failed_outcome(request, "failed", "BACKEND_ERROR", message, withhold(error))
        # The backend acted: whatever fails from here on is reported as that, never as a denial.
        performed = " The write itself was made; read the entity to learn its state." if rule.kind == "write" else ""
        try:
            reply, dropped = self._checked_reply(rule, value, performed)
        except _ResultRefused as refused:
            self._failed_outcome(request, "failed", refused.code, refused.message)
        except BaseException as error:
            message = (
                f"{rule.name} ran, but its result could not be checked; it was withheld from the program "
                f"(the operator can read why with `charter audit show`).{performed}"
            )
            self._failed_outcome(request, "failed", "RESULT_INVALID", message, withhold(error))
        try:
            self.record_outcome(request, "ok", reply=reply, dropped=dropped)
        except BaseException as error:
            message = (
                f"{rule.name} ran, but its result could not be recorded, so it is withheld from the program.{performed}"
            )
            # A write that was made must not be recorded as failed (the audit log's database may be
            # back by the next receipt): its outcome is `unknown`, so the call stays in doubt in the
            # seal and in verify, and a later write of it to the same target in this run is IN_DOUBT.
            recorded: OutcomeStatus = "unknown" if rule.kind == "write" else "failed"
            if rule.kind == "write":
                self._state.writes.unknown(rule, arguments, args_hash, request.sequence)
            self._failed_outcome(request, recorded, "RESULT_INVALID", message, withhold(error))
        self._state.sequence.succeeded(rule, arguments)
        if idempotency_key is not None:
            self._state.writes.succeeded(rule, args_hash, request.sequence, idempotency_key, reply)
        # Recorded host-side from the checked reply, before the program gets it.
        self._state.provenance.record(rule.name, reply)
        return Encoded(reply)

    def _failed_outcome(
        self,
        request: CallRequest,
        status: OutcomeStatus,
        code: str,
        message: str,
        withheld: Withheld | None = None,
    ) -> NoReturn:
        """Record an allowed call's failed outcome and raise it to the program as OperationFailed.
        A receipt that cannot be written is said in the message: the call was allowed and the
        backend was reached, so it is never turned into a denial. A backend's words lose the
        call's secret values first."""
        secrets = self.secret_values(request)
        message, withheld = scrub(message, secrets), scrubbed_withheld(withheld, secrets)
        try:
            self.record_outcome(request, status, code=code, message=message, withheld=withheld)
        except BaseException:
            message += " Its outcome receipt could not be written."
        raise OperationFailed(code, message)

    def _checked_reply(self, rule: OperationRule, value: Any, performed: str) -> tuple[str, tuple[str, ...]]:
        """The reply the program gets, as JSON, and the undeclared fields dropped from it; else
        _ResultRefused: nothing unchecked or oversized reaches the program."""
        try:
            checked = self._gate._results.check(rule.returns, value)
        except ResultInvalid as invalid:
            message = (
                f"{rule.name} returned a value that is not the contract's {rule.returns}: {invalid}. "
                f"It was withheld from the program.{performed}"
            )
            raise _ResultRefused("RESULT_INVALID", message) from None
        reply = encode_reply(checked.value)
        size = len(reply.encode("utf-8"))
        if size > self._max_result_bytes:
            message = (
                f"{rule.name} returned {size} bytes, above the limit of {self._max_result_bytes}; "
                f"it was withheld from the program.{performed}"
            )
            raise _ResultRefused("RESULT_TOO_LARGE", message)
        return reply, checked.dropped

    def context(
        self, request: CallRequest, *, idempotency_key: str | None = None, precondition: Precondition | None = None
    ) -> CallContext:
        return CallContext(
            run_id=request.run_id,
            call=request.sequence,
            principal=self._principal,
            idempotency_key=idempotency_key,
            precondition=precondition,
            deadline=request.deadline,
        )

    def record_outcome(
        self,
        request: CallRequest,
        status: OutcomeStatus,
        *,
        reply: str | None = None,
        code: str | None = None,
        message: str | None = None,
        dropped: tuple[str, ...] = (),
        withheld: Withheld | None = None,
    ) -> None:
        if withheld is not None:
            withheld.keep(self._recorder, request.sequence, request.operation)
        rule = self._gate._table.operations.get(request.operation)
        # A write's outcome is on disk before the program learns it (a crash after that point
        # can no longer lose what the write did); a read's rides with the next durable receipt,
        # which precedes anything leaving the sandbox.
        write = rule is not None and rule.kind == "write"
        self._state.quotas.outcome(request.sequence, status, code)
        receipt = outcome_receipt(request, status, reply, code, message, dropped, withheld)
        try:
            self._recorder.outcome(receipt, durable=write)
        except AuditError as error:
            raise OperationFailed(
                "GATE_ERROR",
                f"{request.operation} reached the backend but its outcome could not be recorded ({error}); "
                "its result is withheld and the call stays in doubt: read the entity to learn its state.",
            ) from None
