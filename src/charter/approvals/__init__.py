"""Human approvals (issue 16): a flagged call pauses its run, a principal holding the
contract's approver scope decides, and the run resumes by deterministic replay."""

from charter.approvals.webhook import (
    SIGNATURE_HEADER,
    ApprovalWebhook,
    load_or_create_webhook_key,
    sign,
    verify_signature,
)

__all__ = [
    "SIGNATURE_HEADER",
    "ApprovalWebhook",
    "load_or_create_webhook_key",
    "sign",
    "verify_signature",
]
