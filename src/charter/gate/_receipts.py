"""The receipts a gate session writes for one call: its Decision, and its action's Outcome."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Literal

from charter.audit import Decision, LookupSeen, Observed, Outcome, now_iso
from charter.audit.receipts import QuotaSeen
from charter.compiler.artifact import CompiledContract
from charter.gate._protocol import CallRequest
from charter.gate._withheld import Withheld
from charter.principal import Principal

__all__ = ["OutcomeStatus", "Verdict", "decision_receipt", "outcome_receipt"]

OutcomeStatus = Literal["ok", "failed", "replayed", "unknown"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """A gate decision: OK or REPLAYED allow, any other code denies."""

    code: str
    message: str
    clause: str | None = None
    boundary: str | None = None
    withheld: Withheld | None = None  # exception text kept from the message (`_withheld`)
    approval: str | None = None  # APPROVAL_REQUIRED: the reason of the approval rule that held

    @property
    def allowed(self) -> bool:
        return self.code in ("OK", "REPLAYED")


def decision_receipt(
    request: CallRequest,
    recorded: tuple[str | None, str, tuple[str, ...], tuple[str, ...]],
    verdict: Verdict,
    contract: CompiledContract,
    principal: Principal,
    observed: Observed | None,
    idempotency_key: str | None,
    *,
    quotas: tuple[QuotaSeen, ...] = (),
    at: str | None = None,
    lookups: tuple[LookupSeen, ...] = (),
    provenance: dict[str, tuple[str, ...]] | None = None,
    approval_id: str | None = None,
) -> Decision:
    """`recorded`: the arguments' canonical JSON (None if they did not decode), sha256, and
    the secret params whose values both hold as digests, and the params that held a secret
    input of the run, masked the same way (`_secrets`).
    `at`: the decision's time when a check already fixed it (quotas count from it); else now.
    `provenance`: per `from:` param, the sources its value was seen in. `approval_id`: the
    human approval the call was decided under (a resumed run's approved or denied call)."""
    shown, digest, secret_params, masked_inputs = recorded
    withheld = verdict.withheld
    return Decision(
        run_id=request.run_id,
        seq=0,
        at=at or now_iso(),
        call=request.sequence,
        operation=request.operation,
        args_sha256=digest,
        arguments=shown,
        decision="ALLOW" if verdict.allowed else "DENY",
        code=verdict.code,
        message=verdict.message,
        clause=verdict.clause,
        boundary=verdict.boundary,
        contract=contract.name,
        version=contract.version,
        contract_sha256=contract.sha256,
        principal=principal.id,
        nonce=secrets.token_hex(16),
        idempotency_key=idempotency_key,
        observed=observed,
        error_type=withheld.error_type if withheld else None,
        error_sha256=withheld.sha256 if withheld else None,
        secret_params=secret_params,
        quotas=quotas,
        lookups=lookups,
        provenance=provenance,
        approval=verdict.approval,
        masked_inputs=masked_inputs,
        approval_id=approval_id,
    )


def outcome_receipt(
    request: CallRequest,
    status: OutcomeStatus,
    reply: str | None,
    code: str | None,
    message: str | None,
    dropped: tuple[str, ...],
    withheld: Withheld | None,
) -> Outcome:
    """`reply`: the JSON the program received, None when it received an error."""
    return Outcome(
        run_id=request.run_id,
        seq=0,
        at=now_iso(),
        call=request.sequence,
        operation=request.operation,
        status=status,
        code=code,
        message=message,
        result=reply,
        result_sha256=hashlib.sha256(reply.encode("utf-8")).hexdigest() if reply is not None else None,
        dropped=dropped,
        error_type=withheld.error_type if withheld else None,
        error_sha256=withheld.sha256 if withheld else None,
    )
