"""One status vocabulary for every run, program runs and intent runs alike.

Every surface says how a run ended in these words: `Runner.execute` and `Charter.handle`,
`charter exec`/`charter run`, the HTTP API, MCP, `charter audit list/show/verify` and
exported bundles. Two levels:

    status   done | refused | failed | awaiting_approval | in_doubt | interrupted
    cause    a machine word for why: the sandbox outcome's tag (completed, refused,
             program_error, timeout, memory_limit, ...) or, when a gate denial decided
             the run, the denial's code (STATE_VIOLATION, GUARD_VIOLATION, ...)

    done               the program concluded
    refused            the program refused, or a gate denial ended it (one it did not
                       catch, or the one that reached limits.max_denials)
    failed             anything else ended it: a program error, a limit, a syntax error;
                       a run that did not complete after a call the server could not
                       perform (a binding module missing, failing to import or changed)
                       is failed with cause BACKEND_UNAVAILABLE
    awaiting_approval  a call needs a human's approval: the program run paused there (its
                       outcome `paused`, cause APPROVAL_REQUIRED) and a resumed run, a new
                       program run of the same logical run, continues it once decided
    in_doubt           what a caller is told of an interrupted run when it retries with
                       the run's Idempotency-Key: its calls' effects are not known, and it
                       is never re-executed (the cause is the same never_sealed /
                       never_concluded); never stored in a receipt
    interrupted        the run was never sealed: its process ended during the run (what
                       the log, `audit list` and `audit verify` say of it)

A program run's status follows from its sandbox outcome alone, by `classify`; Sealed
receipts store it since release 0.2 (`run_status`, `cause`), and older seals are mapped
by `status_of` when read, with the same rule, never rewritten. An intent run's status is
the Runtime Agent's judgement of the whole request (a policy denial makes the request
refused even if a program caught it); its Concluded receipt stores it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, get_args

import msgspec

if TYPE_CHECKING:
    from charter.audit.receipts import Closing, Opening, StoredReceipt
    from charter.sandbox.outcomes import Outcome

__all__ = [
    "STATUSES",
    "GateDecision",
    "RunStatus",
    "Status",
    "classify",
    "deciding_decision",
    "status_of",
    "status_of_closing",
    "status_of_outcome",
]

Status = Literal["done", "refused", "failed", "awaiting_approval", "in_doubt", "interrupted"]
STATUSES: tuple[str, ...] = get_args(Status)

BACKEND_UNAVAILABLE = "BACKEND_UNAVAILABLE"  # the cause of a run a misconfigured backend ended
APPROVAL_REQUIRED = "APPROVAL_REQUIRED"  # the cause of a run paused for a human approval
# Why a resume of a paused run stopped before the program could go on (charter.approvals):
# the record failed verification, the program diverged from it, or a call of a crashed
# resume is in doubt. The resumed run is sealed `halted` with the code, and is failed.
RESUME_FAILURES = frozenset({"TAMPERED", "DIVERGED", "IN_DOUBT"})
NEVER_SEALED = "never_sealed"  # the cause of an interrupted program run
NEVER_CONCLUDED = "never_concluded"  # the cause of an interrupted intent run


class RunStatus(msgspec.Struct, frozen=True):
    """How a run ended: one of STATUSES, and why in one machine word (None only where an
    old receipt does not say)."""

    status: Status
    cause: str | None


def classify(tag: str, denial_code: str | None = None) -> RunStatus:
    """The rule for a program run: its sandbox outcome's `tag` and, if a gate denial ended
    it (an uncaught ContractViolation, or the gate halting the run), that denial's code."""
    if tag == "completed":
        return RunStatus("done", tag)
    if tag == "refused":
        return RunStatus("refused", tag)
    if tag == "paused":
        return RunStatus("awaiting_approval", APPROVAL_REQUIRED)
    if denial_code in RESUME_FAILURES and tag == "halted":
        return RunStatus("failed", denial_code)  # the record, not the caller, stopped the resume
    if denial_code == BACKEND_UNAVAILABLE and tag in ("program_error", "halted"):
        return RunStatus("failed", denial_code)  # the server's fault, not a refusal of the caller
    if denial_code is not None and tag in ("program_error", "halted"):
        return RunStatus("refused", denial_code)
    return RunStatus("failed", tag)


def status_of_outcome(outcome: Outcome, *, unavailable: bool = False) -> RunStatus:
    """A sandbox outcome's status, as the runner returns it and the seal records it.
    `unavailable`: a call of the run was BACKEND_UNAVAILABLE; if the program then ended in an
    error, that is why (the program could not have done better)."""
    violation = getattr(outcome, "violation", None)
    denial = violation.code if violation is not None else getattr(outcome, "code", None)
    status = classify(str(outcome.__struct_config__.tag), denial)
    if unavailable and status == RunStatus("failed", "program_error"):
        return RunStatus("failed", BACKEND_UNAVAILABLE)
    return status


class _Ended(msgspec.Struct):
    """What the rule needs from a seal's outcome JSON (every release wrote these fields)."""

    violation: dict[str, Any] | None = None
    code: str | None = None


def status_of(opened: Opening, closing: Closing | None) -> RunStatus:
    """The status of a run as the log holds it: what its closing receipt stores, or, for a
    receipt written before statuses were stored (release 0.1), the same rule applied to
    what it holds. A run without a closing receipt is `interrupted`."""
    from charter.audit.receipts import Asked

    if closing is None:
        return RunStatus("interrupted", NEVER_CONCLUDED if isinstance(opened, Asked) else NEVER_SEALED)
    return status_of_closing(closing)


def status_of_closing(closing: Closing) -> RunStatus:
    """`status_of` for a run that has its closing receipt (the opening adds nothing then)."""
    from charter.audit.receipts import Concluded, Sealed

    if isinstance(closing, Concluded):
        # Release 0.1 stored done/refused/failed without a cause; its last attempt's ending
        # (check_failed, api_error or that program run's outcome tag) is the nearest it says.
        cause = closing.cause if closing.cause is not None else (closing.attempts[-1] if closing.attempts else None)
        return RunStatus(closing.status, cause)
    assert isinstance(closing, Sealed)
    if closing.run_status is not None:
        return RunStatus(closing.run_status, closing.cause)
    ended = msgspec.json.decode(closing.outcome, type=_Ended)
    denial = ended.violation.get("code") if ended.violation is not None else ended.code
    return classify(closing.status, denial if isinstance(denial, str) else None)


class GateDecision(msgspec.Struct, frozen=True, kw_only=True):
    """The gate decision that decided a refused or failed run, as its signed receipt holds it:
    what every surface puts beside the prose as `decision` (null when no gate decision
    decided the run: the program called refuse(), a timeout, a program error; `cause` then
    names the outcome).

    `run_id`, `seq`, `log_seq` and `link` name the Decision receipt (`charter audit show
    RUN_ID`); for an intent run it is a receipt of one of its program runs."""

    code: str  # the denial's reason code: STATE_VIOLATION, FORBIDDEN_SCOPE, GUARD_VIOLATION...
    operation: str
    boundary: str | None  # the hard boundary the clause enforces, if any
    clause: str | None  # the contract clause decisive for it ("transition:Order.cancel")
    message: str
    run_id: str
    seq: int  # the receipt's place in its run
    log_seq: int  # its place in the log
    link: str  # sha256(body || signature): the receipt exactly


def deciding_decision(
    status: str, cause: str | None, rows: Iterable[StoredReceipt], *, first: bool = False
) -> GateDecision | None:
    """The DENY among `rows` (receipts in log order) that decided a run whose `status` is
    refused or failed and whose `cause` is that denial's code; None when no denial decided it.

    A program run's deciding denial is its last with that code (the one that ended it); an
    intent run's (`first=True`, over its program runs' receipts) is the first, which is the
    one the Runtime Agent's refusal rests on."""
    if status not in ("refused", "failed") or cause is None:
        return None
    from charter.audit.receipts import Decision, decode_body

    found: GateDecision | None = None
    for row in rows:
        if row.kind != "decision":
            continue
        body = decode_body(row.body)
        if not isinstance(body, Decision) or body.decision != "DENY" or body.code != cause:
            continue
        found = GateDecision(
            code=body.code,
            operation=body.operation,
            boundary=body.boundary,
            clause=body.clause,
            message=body.message,
            run_id=row.run_id,
            seq=row.seq,
            log_seq=row.log_seq,
            link=row.link,
        )
        if first:
            break
    return found
