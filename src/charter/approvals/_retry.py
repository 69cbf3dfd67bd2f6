"""When a sealed resume leaves its approval to be resumed again (charter.approvals.resume).

A resume that failed BACKEND_UNAVAILABLE before the approved call took effect did not spend the
approval: the backend was never reached with it. The worker retries such an approval, `charter
approvals resume` runs it again, and the store counts it among the resumes still to do. Its own
module because the store, the resumer and the surfaces all ask, and the resumer needs the store.
"""

from __future__ import annotations

from charter.audit import Decision, Opened, Outcome, RunRecord, Sealed
from charter.status import BACKEND_UNAVAILABLE, RunStatus, status_of_closing

__all__ = ["retryable", "retryable_resume"]


def retryable(record: RunRecord, approval_id: str) -> bool:
    """Whether `record`, a resume of `approval_id`, was sealed failed BACKEND_UNAVAILABLE before the
    approved call took effect: that call was never decided in it, was denied BACKEND_UNAVAILABLE,
    or was allowed and its Outcome is failed BACKEND_UNAVAILABLE (the backend was never reached).
    Any other end is final."""
    sealed = record.sealed
    if not isinstance(sealed, Sealed) or status_of_closing(sealed) != RunStatus("failed", BACKEND_UNAVAILABLE):
        return False
    approved = [r for r in record.receipts if isinstance(r, Decision) and r.approval_id == approval_id]
    if not approved:
        return True
    if (approved[0].decision, approved[0].code) == ("DENY", BACKEND_UNAVAILABLE):
        return True  # refused before the backend: a binding that would not load, a service down
    outcomes = [r for r in record.receipts if isinstance(r, Outcome) and r.call == approved[0].call]
    return (
        approved[0].decision == "ALLOW"
        and len(outcomes) == 1
        and (outcomes[0].status, outcomes[0].code) == ("failed", BACKEND_UNAVAILABLE)
    )


def retryable_resume(record: RunRecord) -> bool:
    """`retryable` for any run: whether `record` is a resume (its Opened names an approval) that
    leaves its approval to be resumed again."""
    opened = record.opened
    return isinstance(opened, Opened) and opened.approval_id is not None and retryable(record, opened.approval_id)
