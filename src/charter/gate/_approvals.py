"""Check 15 when a call's approval rule holds: the run pauses for a human, or, in a resumed
run, the human's decision on that call applies.

Pausing (no GrantedApproval for this call): the gate writes an `ApprovalRequested` receipt in
place of the call's Decision, durably, holding everything the Decision would have held (what
the gate read, the masked arguments and their hash, the guest-reported line) plus who may
decide (the contract's approver scope) and until when (the gate's clock plus the contract's
expiry). Nothing of the call executes, its quota reservation is released uncounted, and
`ApprovalPending` ends the run; the host seals it paused. A run with secret inputs cannot
pause: Charter never stores them, so a resume could not run the same program again; the
call is refused APPROVAL_REQUIRED instead (fail closed, `CallRules.cannot_pause`).

Resuming (`GrantedApproval`, at call == approval.call only):
- the call must be the one approved: same operation, same recorded arguments hash (secrets
  masked, as on a Decision); otherwise the run halts DIVERGED and nothing executes;
- denied: the call is refused APPROVAL_DENIED, a denial the program can catch;
- approved: every other check runs again against the state now (an approval never bypasses
  the contract); the approval satisfies check 15 alone, and the write's idempotency key is
  derived from the approval (`write_key(approval_id, call)`), so a resume recovered after a
  crash sends the same key.
A later flagged call (another call number) pauses again: approvals chain.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from charter.audit import ApprovalRequested, LookupSeen, Observed
from charter.audit.receipts import QuotaSeen
from charter.compiler.artifact import CompiledContract
from charter.gate._protocol import CallRequest, RunHalted
from charter.gate._receipts import Verdict
from charter.gate._secrets import Recorded
from charter.gate._writes import write_key
from charter.principal import Principal

__all__ = [
    "GrantedApproval",
    "Seen",
    "approval_key",
    "approval_request",
    "denied_verdict",
    "divergence",
    "needs_pause",
]


@dataclass(frozen=True, slots=True)
class GrantedApproval:
    """A human's decision on one paused call, handed to the session of the run resuming it.

    `call`: the call sequence the approval was requested at; `args_sha256`: the recorded
    arguments hash that was approved (Decision.args_sha256 form, secrets masked)."""

    approval_id: str
    call: int
    operation: str
    args_sha256: str
    decision: Literal["approved", "denied"]
    approver: str
    reason: str


def needs_pause(verdict: Verdict) -> bool:
    """Whether `verdict` is check 15's: the approval rule held (its reason is set). A rule
    that could not be evaluated is GATE_ERROR, never a pause."""
    return verdict.code == "APPROVAL_REQUIRED" and verdict.approval is not None


def divergence(granted: GrantedApproval, request: CallRequest, args_sha256: str | None) -> RunHalted | None:
    """The halt when call `granted.call` is not the call that was approved, else None.
    `args_sha256`: the call's recorded arguments hash (None: its arguments did not check)."""
    if request.operation == granted.operation and args_sha256 == granted.args_sha256:
        return None
    said = "its arguments did not check" if args_sha256 is None else f"arguments hash {args_sha256}"
    return RunHalted(
        "DIVERGED",
        f"call {request.sequence} of the resumed run is {request.operation} ({said}), but approval "
        f"{granted.approval_id} was given for {granted.operation} with arguments hash {granted.args_sha256}; "
        "the program diverged from the paused run, so nothing of it executes.",
    )


def denied_verdict(granted: GrantedApproval, boundary: str | None = None) -> Verdict:
    """The denial of a call whose approval was denied: the program can catch it and conclude."""
    return Verdict(
        "APPROVAL_DENIED",
        f"{granted.operation} was denied by {granted.approver}: {granted.reason}",
        clause=f"approval:{granted.operation}",
        boundary=boundary,
    )


def approval_key(granted: GrantedApproval) -> str:
    """The approved write's backend idempotency key: derived from the approval, so every
    resume of it (one recovered after a crash included) sends the same key."""
    return write_key(granted.approval_id, granted.call)


@dataclass(frozen=True, slots=True)
class Seen:
    """What the gate read to decide the paused call, as a Decision would record it."""

    observed: Observed | None
    lookups: tuple[LookupSeen, ...]
    provenance: dict[str, tuple[str, ...]] | None
    quotas: tuple[QuotaSeen, ...]


def approval_request(
    request: CallRequest,
    recorded: Recorded,
    verdict: Verdict,
    contract: CompiledContract,
    principal: Principal,
    *,
    program_sha256: str,
    logical_run_id: str,
    now: datetime,
    seen: Seen,
) -> ApprovalRequested:
    """The receipt written in place of the paused call's Decision. `now`: the gate's clock;
    the request expires after the contract's `approvals.expires` from it."""
    assert verdict.approval is not None
    shown, digest, secret_params, masked_inputs = recorded
    policy = contract.gate.policy
    at = now.isoformat(timespec="microseconds")
    return ApprovalRequested(
        run_id=request.run_id,
        seq=0,
        at=at,
        approval_id=secrets.token_hex(16),
        call=request.sequence,
        operation=request.operation,
        args_sha256=digest,
        arguments=shown,
        program_sha256=program_sha256,
        contract=contract.name,
        version=contract.version,
        contract_sha256=contract.sha256,
        principal=principal.id,
        logical_run_id=logical_run_id,
        reason=verdict.approval,
        clause=f"approval:{request.operation}",
        boundary=verdict.boundary,
        approver_scope=policy.scope,
        expires=(now + timedelta(seconds=policy.expires_seconds)).isoformat(timespec="microseconds"),
        observed=seen.observed,
        lookups=seen.lookups,
        provenance=seen.provenance,
        quotas=seen.quotas,
        secret_params=secret_params,
        masked_inputs=masked_inputs,
        line=request.line,
    )
