"""Human approvals (issue 16): a flagged call pauses its run, a principal holding the
contract's approver scope decides, and the run resumes by deterministic replay."""

from charter.approvals.store import ApprovalError, ApprovalNotFound, ApprovalStore  # noqa: I001 (first: resume imports it back)
from charter.approvals.resume import Resumer
from charter.approvals.webhook import (
    SIGNATURE_HEADER,
    ApprovalWebhook,
    load_or_create_webhook_key,
    sign,
    verify_signature,
)
from charter.approvals.worker import ResumeWorker

__all__ = [
    "SIGNATURE_HEADER",
    "ApprovalError",
    "ApprovalNotFound",
    "ApprovalStore",
    "ApprovalWebhook",
    "ResumeWorker",
    "Resumer",
    "load_or_create_webhook_key",
    "sign",
    "verify_signature",
]
