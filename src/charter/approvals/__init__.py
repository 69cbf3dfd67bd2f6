"""Human approvals: a call whose approval rule holds pauses its run; a second principal decides;
the run resumes by deterministic replay.

    store = ApprovalStore(audit_log)
    store.list(status="pending", visible_to=principal)      # ApprovalView, newest first
    decided, new = store.decide(approval_id, approver, "approved", "checked the IBAN")
    chain_of(audit_log, run_id)                              # paused run, then its resumes

See `store` for decisions (four eyes, once, expiry) and `chain` for runs continuing one another.

Import order: the audit log's writer keeps the approvals index (`charter.approvals._index`), so
`charter.audit` imports this package while it is itself being imported, and the modules here
import the audit log. Hence `charter.audit` is imported first below (whichever is imported
first, the other then finds what it needs), and the public names are imported on first use
(PEP 562), not with the package. Add a new public name to `_EXPORTS` (its module) and to the
TYPE_CHECKING block, not as a plain import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import charter.audit  # noqa: F401  (first: see the import order above)

if TYPE_CHECKING:
    from charter.approvals.chain import chain_of, latest_of
    from charter.approvals.resume import ResumeInProgress, Resumer
    from charter.approvals.store import (
        ApprovalConflict,
        ApprovalError,
        ApprovalExpired,
        ApprovalForbidden,
        ApprovalNotFound,
        ApprovalStore,
        ApprovalView,
        SelfApproval,
    )
    from charter.approvals.webhook import (
        SIGNATURE_HEADER,
        ApprovalWebhook,
        approval_event,
        load_or_create_webhook_key,
        plain_http_warning,
        sign,
        verify_signature,
    )
    from charter.approvals.worker import ResumeWorker

_EXPORTS = {
    "ApprovalConflict": "charter.approvals.store",
    "ApprovalError": "charter.approvals.store",
    "ApprovalExpired": "charter.approvals.store",
    "ApprovalForbidden": "charter.approvals.store",
    "ApprovalNotFound": "charter.approvals.store",
    "ApprovalStore": "charter.approvals.store",
    "ApprovalView": "charter.approvals.store",
    "SelfApproval": "charter.approvals.store",
    "chain_of": "charter.approvals.chain",
    "latest_of": "charter.approvals.chain",
    "Resumer": "charter.approvals.resume",
    "ResumeInProgress": "charter.approvals.resume",
    "ResumeWorker": "charter.approvals.worker",
    "SIGNATURE_HEADER": "charter.approvals.webhook",
    "ApprovalWebhook": "charter.approvals.webhook",
    "approval_event": "charter.approvals.webhook",
    "load_or_create_webhook_key": "charter.approvals.webhook",
    "plain_http_warning": "charter.approvals.webhook",
    "sign": "charter.approvals.webhook",
    "verify_signature": "charter.approvals.webhook",
}

__all__ = [
    "SIGNATURE_HEADER",
    "ApprovalConflict",
    "ApprovalError",
    "ApprovalExpired",
    "ApprovalForbidden",
    "ApprovalNotFound",
    "ApprovalStore",
    "ApprovalView",
    "ApprovalWebhook",
    "ResumeInProgress",
    "ResumeWorker",
    "Resumer",
    "SelfApproval",
    "approval_event",
    "chain_of",
    "latest_of",
    "load_or_create_webhook_key",
    "plain_http_warning",
    "sign",
    "verify_signature",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
