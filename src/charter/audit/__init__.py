"""The audit log: signed, hash-chained receipts for every run, and the tools to check them.

    log = AuditLog(path)                  # SQLite, append-only, Ed25519-signed receipts
    recorder = log.open_run(opened)       # the gate writes decisions and outcomes through it
    report = verify_log(log, log.trusted_keys())   # every link, the anchors' signatures, the head

See `receipts` for what a receipt holds and `verify` for what verification checks.
"""

from charter.audit._lookups_text import lookup_lines
from charter.audit.export import BUNDLE_FORMAT, CheckedRun, check_run, export_run, verify_bundle, verify_log
from charter.audit.index import RunFilter, RunSummary
from charter.audit.keys import (
    PublicKey,
    SecretKey,
    SigningKey,
    load_or_create_secret_key,
    load_or_create_signing_key,
    read_public_key,
)
from charter.audit.receipts import (
    ApprovalDecided,
    ApprovalRequested,
    Asked,
    Attempted,
    Concluded,
    Decision,
    LookupSeen,
    Observed,
    Opened,
    Outcome,
    QuotaSeen,
    Receipt,
    Sealed,
    StoredReceipt,
    args_digest,
    kind_of,
)
from charter.audit.store import AuditLog, BackendError, RunRecord, RunRecorder, now_iso
from charter.audit.verify import Finding, Verification, verify_receipts

__all__ = [
    "BUNDLE_FORMAT",
    "ApprovalDecided",
    "ApprovalRequested",
    "Asked",
    "Attempted",
    "AuditLog",
    "BackendError",
    "CheckedRun",
    "Concluded",
    "Decision",
    "Finding",
    "LookupSeen",
    "Observed",
    "Opened",
    "Outcome",
    "PublicKey",
    "QuotaSeen",
    "Receipt",
    "RunFilter",
    "RunRecord",
    "RunRecorder",
    "RunSummary",
    "Sealed",
    "SecretKey",
    "SigningKey",
    "StoredReceipt",
    "Verification",
    "args_digest",
    "check_run",
    "export_run",
    "kind_of",
    "load_or_create_secret_key",
    "load_or_create_signing_key",
    "lookup_lines",
    "now_iso",
    "read_public_key",
    "verify_bundle",
    "verify_log",
    "verify_receipts",
]
