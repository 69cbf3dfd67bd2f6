"""Receipts: the signed, hash-chained records a run leaves behind.

A program run writes, in order:

    Opened     the program, its intent, principal, pinned contract, clock and seed
    Decision   one per proxy call, ALLOW or DENY, committed before any action
    Outcome    what an allowed action did (or that it failed)
    Sealed     how the run ended; no receipt of the run may follow it

An intent run (the Runtime Agent answering one request) writes:

    Asked      the intent, principal, pinned contract and model settings
    Attempted  one per model answer: model, prompt hashes, usage, the raw response, the
               program and its static check; written before that program runs, as a
               program run of its own (named in `program_run`, whose Opened names this run)
    Concluded  the conclusion the caller got; no receipt of the run may follow it

Human approvals (issue 16) add two kinds:

    ApprovalRequested  in a program run, in place of the Decision of a call whose approval
                       rule held after every other check passed: the call did not execute,
                       and the run is then sealed `awaiting_approval` (Sealed.approval_id)
    ApprovalDecided    a record of its own (run_id = the approval id, seq 0): an approver's
                       decision on one request, naming the request's run and link. A resumed
                       run is a new program run whose Opened names the paused run
                       (`resumes`), the approval and the decision's link

Every receipt body is canonical JSON (msgspec encodes struct fields in declaration
order) and is signed with Ed25519. Its *link* is sha256(body || signature). Each body
names the link of the run's previous receipt (`prev`) and of the log's previous receipt
(`log_prev`), so editing, deleting, inserting or reordering anything, signatures
included, breaks a link that a later signature covers.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import msgspec

from charter.status import Status

__all__ = [
    "ALLOW",
    "DENY",
    "ApprovalDecided",
    "ApprovalRequested",
    "Asked",
    "Attempted",
    "Closing",
    "Concluded",
    "Decision",
    "LookupSeen",
    "Observed",
    "Opened",
    "Opening",
    "Outcome",
    "QuotaSeen",
    "Receipt",
    "Sealed",
    "StoredReceipt",
    "args_digest",
    "canonical",
    "decode_body",
    "kind_of",
    "link_of",
    "text_sha256",
]

ALLOW = "ALLOW"
DENY = "DENY"


class _Body(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="kind"):
    run_id: str
    seq: int  # position within the run; the Opened receipt is 0
    log_seq: int = 0  # position within the whole log, from 1; set by the writer
    prev: str = ""  # link of the run's previous receipt ("" for Opened)
    log_prev: str = ""  # link of the log's previous receipt ("" for the first)
    at: str  # ISO-8601 UTC time the recorded event happened
    key_id: str = ""  # the signing key, set by the writer
    # Issue 19: the writer's stream in a log with concurrent writers (PostgreSQL: one per writer,
    # "<host>:<pid>:<8 hex>") and the receipt's position in it, from 1; `log_prev` then names the
    # stream's previous receipt. A log of one writer (SQLite) is the stream "" (stream_seq 0).
    stream: str = ""
    stream_seq: int = 0


class Opened(_Body, frozen=True, kw_only=True, tag="open"):
    intent: str | None  # None: the caller supplied the program
    program: str
    program_sha256: str
    principal: str
    scopes: tuple[str, ...]
    contract: str
    version: str
    contract_sha256: str
    clock: str  # what datetime.now() returns inside the run
    seed: int  # what seeds random inside the run
    limits: dict[str, Any]
    host: str
    pid: int
    parent: str | None = None  # the intent run whose attempt this program is
    attempt: int | None = None
    # The first run of a chain of runs continuing one another; None: this run's own id.
    # Write idempotency keys derive from it, so they do not change across the chain.
    logical_run_id: str | None = None
    # Issue 15: a program request's inputs (name -> value); a secret input's value is the
    # audit log's keyed digest of it (SecretKey.digest), never the value. secret_inputs names them.
    inputs: dict[str, str] | None = None
    secret_inputs: tuple[str, ...] = ()
    # The principal's attributes as the operator bound them (tokens.yaml, --attr); None: none.
    attributes: dict[str, Any] | None = None
    # Issue 16: a run resuming a run paused for approval: the paused run (`resumes`), the
    # approval and the link of its ApprovalDecided receipt, and the earlier resumes of the same
    # approval that ended without a seal (a crash), whose recorded outcomes this run reuses.
    resumes: str | None = None
    approval_id: str | None = None
    approval_link: str | None = None
    recovers: tuple[str, ...] = ()


class Observed(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The entity as the gate read it to decide, and the fingerprint the write is tied to."""

    entity: str
    key: Any
    state: str | None
    fingerprint: str


class QuotaSeen(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One quota as the gate checked it for a call (charter.gate._quotas)."""

    id: str
    key: str  # canonical JSON of the `per` values
    amount: int  # what this call adds: the sum's value (cents for money), or 1
    total: int  # counted in the window before this call
    max: int
    window: str  # as the contract writes it: 24h, 30d, run
    # Since issue 15 (M5): the sum is money, so amount, total and max are cents, shown as 2000.00.
    # Omitted when false, so a receipt written before it encodes (and verifies) as it was.
    money: bool = False


class LookupSeen(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A lookup the gate performed to decide a call (contract `lookups:`), as it saw it."""

    name: str
    operation: str  # the read operation invoked
    arguments: str  # canonical JSON of the arguments the read got ("null": they could not be evaluated)
    fingerprint: str  # charter.backends.fingerprint of the result as the backend returned it ("" if none)
    result: str | None  # canonical JSON of the checked value the rules saw; None above 4096 bytes or on error
    error: str | None  # why the lookup failed (LOOKUP_FAILED), None when it succeeded


class Decision(_Body, frozen=True, kw_only=True, tag="decision"):
    call: int  # the program's call number, from 1
    operation: str
    args_sha256: str
    arguments: str | None  # canonical JSON of the decoded arguments; None if they did not decode
    decision: Literal["ALLOW", "DENY"]
    code: str  # "OK" when allowed; otherwise the reason code
    message: str
    clause: str | None  # the contract clause decisive for a DENY ("transition:Order.cancel")
    boundary: str | None  # the hard boundary that clause enforces
    contract: str
    version: str
    contract_sha256: str
    principal: str
    nonce: str
    idempotency_key: str | None
    observed: Observed | None
    # A GATE_ERROR's exception, withheld: its type and the sha256 of its text (the text
    # itself is in the audit database's redactable backend_errors table, not in the log).
    error_type: str | None = None
    error_sha256: str | None = None
    # Params declared `secret: true` whose values `arguments` and `args_sha256` hold as
    # HMAC digests ("hmac-sha256:<key id>:<hex>", keys/secrets.key), never in plain text.
    secret_params: tuple[str, ...] = ()
    # Since release 0.3 (contract v2 quotas): each quota checked for this call; an ALLOW's
    # amounts are counted in the audit store's quota index (charter.audit.quotas).
    quotas: tuple[QuotaSeen, ...] = ()
    # Since contract language v2: the lookups performed for this call, in the order performed.
    lookups: tuple[LookupSeen, ...] = ()
    # Issue 15: per `from:` param of the operation, the sources (canonical labels) its value
    # was seen in during the run; also on a PROVENANCE_VIOLATION. None: the operation has none.
    provenance: dict[str, tuple[str, ...]] | None = None
    # APPROVAL_REQUIRED: the reason of the approval rule that held (`requires_approval`).
    approval: str | None = None
    # Params not declared secret whose value held a secret input of the run (`secret_inputs`):
    # `arguments` and `args_sha256` hold the input's HMAC digest in its place (gate._secrets).
    masked_inputs: tuple[str, ...] = ()
    # Issue 16: the program line that made the call, AS REPORTED BY THE GUEST (untrusted: a
    # program can misreport it; it locates the call for a reader, it proves nothing).
    line: int | None = None
    # On a resumed run's approved call: the approval it executes under.
    approval_id: str | None = None


class ApprovalRequested(_Body, frozen=True, kw_only=True, tag="approval_request"):
    """A call that needs a human's approval, in place of its Decision: nothing executed."""

    approval_id: str  # 32 hex digits
    call: int
    operation: str
    args_sha256: str
    arguments: str | None  # canonical JSON, secrets masked as in a Decision
    program_sha256: str
    contract: str
    version: str
    contract_sha256: str
    principal: str
    logical_run_id: str  # write idempotency keys derive from it along the chain
    reason: str  # the approval rule's reason
    clause: str  # "approval:<operation>"
    boundary: str | None
    approver_scope: str  # who may decide: a principal holding it, never the requester
    expires: str  # ISO-8601 UTC; after it the request can only be denied
    observed: Observed | None = None  # what the gate read to decide the call (as on a Decision)
    lookups: tuple[LookupSeen, ...] = ()
    provenance: dict[str, tuple[str, ...]] | None = None
    quotas: tuple[QuotaSeen, ...] = ()
    secret_params: tuple[str, ...] = ()
    masked_inputs: tuple[str, ...] = ()
    line: int | None = None  # reported by the guest, as on Decision


class ApprovalDecided(_Body, frozen=True, kw_only=True, tag="approval_decision"):
    """One decision on one approval request: a record of its own (run_id = approval_id, seq 0)."""

    approval_id: str
    request_run: str  # the paused run
    request_link: str  # the link of its ApprovalRequested receipt
    call: int
    operation: str
    args_sha256: str  # what was approved: the resumed call must hash to exactly this
    decision: Literal["approved", "denied"]
    approver: str  # the deciding principal ("charter" for an expiry the server denied)
    approver_scopes: tuple[str, ...]
    reason: str
    expired: bool = False  # denied because the request expired unanswered


class Outcome(_Body, frozen=True, kw_only=True, tag="outcome"):
    call: int
    operation: str
    # unknown: the request reached the backend and no answer came back (the call stays in doubt)
    status: Literal["ok", "failed", "replayed", "unknown"]
    code: str | None  # failed: RESULT_INVALID / RESULT_TOO_LARGE when the backend's value was withheld
    message: str | None
    result: str | None  # the reply exactly as the program received it (JSON)
    result_sha256: str | None
    dropped: tuple[str, ...] = ()  # JSON paths of undeclared fields the backend sent, left out of `result`
    error_type: str | None = None  # as on Decision: a backend exception withheld from the program
    error_sha256: str | None = None


class Sealed(_Body, frozen=True, kw_only=True, tag="seal"):
    status: str  # the sandbox outcome's tag: completed, refused, program_error, timeout...
    outcome: str  # the outcome as JSON, statistics left out
    calls: int
    wall_ms: float
    cpu_ms: float
    receipts: int  # receipts of the run before this one
    in_doubt: tuple[int, ...]  # allowed calls whose outcome was never learned
    # Since release 0.2: the run's status in the one vocabulary (charter.status) and its
    # cause. A seal written before has neither; `charter.status.status_of` maps it.
    run_status: Status | None = None
    cause: str | None = None
    approval_id: str | None = None  # awaiting_approval: the approval the run waits for


class Asked(_Body, frozen=True, kw_only=True, tag="ask"):
    intent: str
    principal: str
    scopes: tuple[str, ...]
    contract: str
    version: str
    contract_sha256: str
    model: str  # the model asked for; each attempt names the model that answered
    settings: dict[str, Any]  # max tokens, repair rounds, retries, timeouts
    host: str
    pid: int
    attributes: dict[str, Any] | None = None  # the principal's attributes as bound; None: none


class Attempted(_Body, frozen=True, kw_only=True, tag="attempt"):
    attempt: int  # from 1
    model: str
    prompt_sha256: str  # of the whole request as sent: model, max tokens, system blocks, messages
    contract_block_sha256: str  # of the cached contract block alone: the same for every request
    api_tries: int  # HTTP requests made for this answer, retries included
    writes_closed: str | None  # why this attempt's program may only read
    # An attempt without an answer (api_error set) leaves the rest at their defaults. Field
    # order is the canonical encoding's: every field is always encoded, defaults included.
    usage: dict[str, int] | None = None  # token counts as the API reported them
    stop_reason: str | None = None
    request_id: str | None = None
    response: str | None = None  # the API's response body, verbatim
    api_error: str | None = None  # why there is no response, after bounded retries
    program: str | None = None  # the program found in the response
    program_sha256: str | None = None
    check: tuple[str, ...] = ()  # the static check's findings; () when it passed
    program_run: str | None = None  # the run the program runs as, when it passed the check


class Concluded(_Body, frozen=True, kw_only=True, tag="conclude"):
    status: Status  # release 0.1 wrote only done, refused and failed
    answer: str | None
    data: str | None  # JSON
    reason: str | None
    attempts: tuple[str, ...]  # how each attempt ended: check_failed, api_error, or its run's status
    program_runs: tuple[str, ...]
    usage: dict[str, int]  # token counts over all attempts
    receipts: int  # receipts of the run before this one
    cause: str | None = None  # since release 0.2 (charter.status); None in older receipts
    approval_id: str | None = None  # awaiting_approval: the approval its program run waits for


Receipt = Opened | Decision | Outcome | Sealed | Asked | Attempted | Concluded | ApprovalRequested | ApprovalDecided
Opening = Opened | Asked
Closing = Sealed | Concluded

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Receipt] = msgspec.json.Decoder(Receipt)
_sorted_encoder = msgspec.json.Encoder(decimal_format="string", order="sorted")


def kind_of(receipt: Receipt) -> str:
    """The receipt's tag: open, decision, outcome, seal, ask, attempt, conclude, approval_request
    or approval_decision."""
    return str(receipt.__struct_config__.tag)


def canonical(receipt: Receipt) -> bytes:
    return _encoder.encode(receipt)


def decode_body(body: bytes) -> Receipt:
    """Strict: unknown fields, wrong types or a missing field raise msgspec.ValidationError."""
    return _decoder.decode(body)


def text_sha256(text: str) -> str:
    """The hash receipts give a text (a program): sha256 of its UTF-8, lone surrogates kept."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def link_of(body: bytes, signature: bytes) -> str:
    return hashlib.sha256(body + signature).hexdigest()


def args_digest(arguments: Any) -> tuple[str, str]:
    """Canonical JSON of decoded arguments (keys sorted, money as strings) and its sha256."""
    text = _sorted_encoder.encode(arguments)
    return text.decode("utf-8"), hashlib.sha256(text).hexdigest()


class StoredReceipt(msgspec.Struct, frozen=True):
    """One row of the log as stored: the signed body, its signature and its link."""

    log_seq: int
    run_id: str
    seq: int
    kind: str
    body: bytes
    signature: bytes
    link: str

    def decoded(self) -> Receipt:
        return decode_body(self.body)
