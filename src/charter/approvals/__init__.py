"""Human approvals (issue 16): the store of requests and decisions, resuming paused runs.

SHIM (resume branch): the store branch (f16-store) owns this package's __init__ and store; this
minimal stand-in lets the resume work and its tests run before it lands. Take f16-store's files
on merge and keep only the resume names below.
"""

from charter.approvals.store import ApprovalError, ApprovalNotFound, ApprovalStore

__all__ = ["ApprovalError", "ApprovalNotFound", "ApprovalStore"]
