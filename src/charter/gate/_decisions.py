"""Recording a call's decision: the signed Decision receipt, committed before anything acts,
or, when check 15 pauses the run, the ApprovalRequested receipt in its place (`_approvals`).

Both release the call's quota locks (`QuotaHold`) once the receipt is durable or failed,
whatever happens: only an allowed Decision counts toward a quota.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, NoReturn

import msgspec

from charter.audit import LookupSeen, Observed, RunRecorder
from charter.compiler.artifact import OperationRule
from charter.errors import AuditError
from charter.gate._approvals import Seen, approval_request
from charter.gate._protocol import ApprovalPending, CallRequest, Denied
from charter.gate._quotas import QuotaHold
from charter.gate._receipts import Verdict, decision_receipt
from charter.gate._secrets import Recorded, masked_text
from charter.principal import Principal

if TYPE_CHECKING:
    from charter.gate._contract import ContractGate

__all__ = ["DecisionRecorder", "durable_decision"]


def durable_decision(rule: OperationRule | None, hold: QuotaHold, approval_id: str | None) -> bool:
    """Whether a call's Decision must be on disk before the call goes on, or may ride on the
    run's next durable receipt. Durable: a write (allowed or not: it may act, and a resume or
    an approval reads it), a call no rule classifies (unknown or malformed), a call with a quota
    (other runs count it from the log while its lock is held), a call decided under an approval
    (the approval's resume is known by it). Riding: a plain read. Nothing it returned can leave
    the sandbox before a later durable commit (a write's decision, the seal), which writes it
    first; a crash before that loses only a read whose result never left (README, "Durability")."""
    if rule is None or rule.kind != "read":
        return True
    return hold.holds or approval_id is not None


class DecisionRecorder:
    """Writes one run's Decision and ApprovalRequested receipts. `logical_run_id`: the first
    run of the chain this run continues (an approval request names it); `secret_inputs`: the
    run's secret input values, masked in what a decision records."""

    def __init__(
        self,
        gate: ContractGate,
        recorder: RunRecorder,
        principal: Principal,
        logical_run_id: str,
        secret_inputs: tuple[str, ...],
    ) -> None:
        self._gate = gate
        self._recorder = recorder
        self._principal = principal
        self._logical_run_id = logical_run_id
        self._secret_inputs = secret_inputs

    def decision(
        self,
        request: CallRequest,
        recorded: Recorded,
        verdict: Verdict,
        observed: Observed | None,
        idempotency_key: str | None,
        hold: QuotaHold | None = None,
        lookups: tuple[LookupSeen, ...] = (),
        provenance: dict[str, tuple[str, ...]] | None = None,
        *,
        approval_id: str | None = None,
        durable: bool = True,
    ) -> None:
        """Commit the call's Decision (`approval_id`: the approval it was decided under); `hold`'s
        quota locks are released once it is durable (the receipt is what counts the call), or once
        it failed, whatever happens. Without `durable` (a read nothing relies on, `durable_decision`)
        the Decision rides on the run's next durable receipt."""
        quotas = hold.seen if hold is not None else ()
        key = self._recorder.secret_key
        if self._secret_inputs and key is not None:  # what a denied call saw may hold a secret input
            inputs = self._secret_inputs
            quotas = tuple(msgspec.structs.replace(q, key=masked_text(q.key, inputs, key)) for q in quotas)
            lookups = tuple(
                msgspec.structs.replace(
                    seen,
                    arguments=masked_text(seen.arguments, inputs, key),
                    result=None if seen.result is None else masked_text(seen.result, inputs, key),
                    error=None if seen.error is None else masked_text(seen.error, inputs, key),
                )
                for seen in lookups
            )
        try:
            decision = decision_receipt(
                request,
                recorded,
                verdict,
                self._gate.contract,
                self._principal,
                observed,
                idempotency_key,
                quotas=quotas,
                at=hold.at if hold is not None else None,
                lookups=lookups,
                provenance=provenance,
                approval_id=approval_id,
            )
            if verdict.withheld is not None:
                verdict.withheld.keep(self._recorder, request.sequence, request.operation)
            with _written_or_denied(request, "its receipt"):
                self._recorder.decision(decision, durable=durable)
        finally:
            if hold is not None:
                hold.release()

    def pause(
        self, request: CallRequest, recorded: Recorded, verdict: Verdict, hold: QuotaHold, seen: Seen
    ) -> NoReturn:
        """Check 15 held: record the ApprovalRequested receipt durably in place of a Decision,
        release the quota reservation uncounted, and end the run paused (ApprovalPending)."""
        opened = self._recorder.opened
        try:
            receipt = approval_request(
                request,
                recorded,
                verdict,
                self._gate.contract,
                self._principal,
                program_sha256=getattr(opened, "program_sha256", ""),
                logical_run_id=self._logical_run_id,
                now=datetime.fromisoformat(hold.at) if hold.at is not None else self._gate.clock(),
                seen=seen,
            )
            with _written_or_denied(request, "its approval request"):
                self._recorder.approval_requested(receipt)
        finally:
            hold.release()  # a paused call is not counted: only an allowed Decision counts
        raise ApprovalPending(
            receipt.approval_id,
            call=request.sequence,
            operation=request.operation,
            reason=receipt.reason,
            line=request.line,
        )


@contextmanager
def _written_or_denied(request: CallRequest, what: str) -> Iterator[None]:
    """Around writing a call's receipt (`what`: how the message names it): an AuditError denies
    the call GATE_ERROR. No receipt, no action: the call is denied even though the checks
    passed. The audit log's own error (a path, an SQLite message) is shown: it names no
    backend data."""
    try:
        yield
    except AuditError as error:
        raise Denied("GATE_ERROR", f"{request.operation} refused: {what} could not be written ({error})") from None
