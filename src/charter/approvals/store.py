"""Approval requests and their decisions: list, show, decide (four eyes, once), expire.

A paused run's ApprovalRequested receipt is the request; an ApprovalDecided record is its
decision; both are signed receipts in the audit log. `ApprovalStore` writes decisions through
`AuditLog.append_record`. Every fact it shows or acts on is read from those receipts, their
signatures checked with the log's trusted keys; the approvals index (charter.approvals._index,
derived and unsigned: whoever can write the file can edit it) only helps find them. A view
whose index row disagrees with its receipts, or whose receipts do not verify, has status
`tampered`, `verified` False and the disagreements in `findings`; it is never shown as true.
Errors, each with its reason code in `.code`:

    ApprovalError (CharterError)      .code: the machine word beside the prose
    ├── ApprovalNotFound              APPROVAL_NOT_FOUND: no such request, or not visible to the caller
    ├── ApprovalForbidden             FORBIDDEN_SCOPE: the approver lacks the request's approver scope
    ├── SelfApproval                  SELF_APPROVAL: the approver is the requester (TR39 skeleton)
    ├── ApprovalExpired               APPROVAL_EXPIRED: approving after `expires` (denying is accepted)
    └── ApprovalConflict              ALREADY_DECIDED: another decision exists (`.existing` names it)

Exactly one decision per request, across threads and processes: `decide` takes the log's
decision lock (`AuditLog.lock`: on SQLite a process lock and an fcntl record lock on
`<audit.db>.approval-lock`, charter.audit._locks; on PostgreSQL an advisory lock every worker
shares), re-reads the request's row, and only then writes; the writer also refuses a second
record with the same id in its transaction (the receipts' UNIQUE (run_id, seq)).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, get_args

import msgspec

from charter.approvals._index import receipt_time, utc_text
from charter.approvals._retry import retryable
from charter.audit._approval_records import resume_runs as signed_resume_runs
from charter.audit._portable import body_holds, naming
from charter.audit.keys import PublicKey
from charter.audit.receipts import (
    ApprovalDecided,
    ApprovalRequested,
    LookupSeen,
    Observed,
    Opened,
    QuotaSeen,
    Receipt,
    Sealed,
    StoredReceipt,
    decode_body,
)
from charter.db import Connection
from charter.errors import AuditError, CharterError, UsageError
from charter.principal import SYSTEM_PRINCIPAL, Principal, same_principal
from charter.status import status_of

if TYPE_CHECKING:
    from charter.audit.store import AuditLog

__all__ = [
    "ALREADY_DECIDED",
    "APPROVAL_EXPIRED",
    "APPROVAL_NOT_FOUND",
    "AUDIT_READ",
    "EXPIRY_APPROVER",
    "FORBIDDEN_SCOPE",
    "MAX_REASON_CHARS",
    "SELF_APPROVAL",
    "ApprovalConflict",
    "ApprovalError",
    "ApprovalExpired",
    "ApprovalForbidden",
    "ApprovalNotFound",
    "ApprovalStore",
    "ApprovalView",
    "SelfApproval",
]

APPROVAL_NOT_FOUND = "APPROVAL_NOT_FOUND"
FORBIDDEN_SCOPE = "FORBIDDEN_SCOPE"
SELF_APPROVAL = "SELF_APPROVAL"
APPROVAL_EXPIRED = "APPROVAL_EXPIRED"
ALREADY_DECIDED = "ALREADY_DECIDED"

AUDIT_READ = "audit:read"  # sees every request, as it sees every run
# The approver of an expiry's automatic denial (`expire_due`): the id no principal may hold.
EXPIRY_APPROVER = SYSTEM_PRINCIPAL
MAX_REASON_CHARS = 2000

Decided = Literal["approved", "denied"]
ViewStatus = Literal["pending", "approved", "denied", "expired", "tampered"]


class ApprovalError(CharterError):
    """An approval request could not be read or decided; `code` is the reason code."""

    code: str = "APPROVAL_ERROR"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ApprovalNotFound(ApprovalError):
    """No approval request has that id, or the caller may not see it (the same answer on purpose)."""

    code = APPROVAL_NOT_FOUND


class ApprovalForbidden(ApprovalError):
    """The approver does not hold the request's approver scope."""

    code = FORBIDDEN_SCOPE


class SelfApproval(ApprovalError):
    """The approver is the requesting principal, or an id that looks like it (TR39 skeleton)."""

    code = SELF_APPROVAL


class ApprovalExpired(ApprovalError):
    """The request expired unanswered: it can only be denied."""

    code = APPROVAL_EXPIRED


class ApprovalConflict(ApprovalError):
    """The request was already decided otherwise (or by someone else): `existing` is that decision."""

    code = ALREADY_DECIDED

    def __init__(self, message: str, *, existing: ApprovalDecided) -> None:
        super().__init__(message)
        self.existing = existing


class ApprovalView(msgspec.Struct, frozen=True, kw_only=True):
    """One approval request as a reader sees it: what was asked, where the program stands, what
    the gate read, and what became of it. Times are ISO-8601 UTC.

    `status`: pending, approved, denied, or expired (pending past `expires`: it can only be
    denied). `expired_unanswered`: it expired before anyone answered (also once `expire_due`
    denied it). `resume_status`: the latest resume run's status (charter.status), None before.
    `status` tampered: the receipts do not verify, or the approvals index disagrees with them
    (`verified` False; `findings` says what, one sentence each); the other fields are then the
    receipts' (the index's where the request receipt itself no longer decodes) and not to be trusted."""

    approval_id: str
    status: ViewStatus
    run_id: str  # the paused program run
    logical_run_id: str
    contract: str
    version: str
    contract_sha256: str
    operation: str
    call: int
    line: int | None  # reported by the guest (untrusted)
    arguments: str | None  # canonical JSON, secrets masked
    args_sha256: str
    principal: str  # the requester
    reason: str
    clause: str
    boundary: str | None
    approver_scope: str
    requested_at: str
    expires: str
    program: str  # the paused run's program text
    observed: Observed | None
    lookups: tuple[LookupSeen, ...]
    provenance: dict[str, tuple[str, ...]] | None
    quotas: tuple[QuotaSeen, ...]
    decision: str | None
    decided_by: str | None
    decided_at: str | None
    decision_reason: str | None
    expired_unanswered: bool
    decision_link: str | None
    resume_run: str | None
    resume_status: str | None
    verified: bool = True
    findings: tuple[str, ...] = ()


_COLUMNS = (
    "approval_id",
    "run_id",
    "logical_run_id",
    "contract",
    "version",
    "contract_sha256",
    "operation",
    "call",
    "principal",
    "reason",
    "approver_scope",
    "requested_at",
    "expires",
    "status",
    "decided_by",
    "decided_at",
    "decision_reason",
    "expired",
    "decision_log_seq",
    "resume_run",
    "resume_sealed",
    "resume_runs",
    "request_log_seq",
)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM approvals"


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)


class ApprovalStore:
    """The approval requests of one audit log, and their decisions."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    # -- reading -------------------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        with self.audit.connect() as connection:  # either engine (charter.db)
            yield connection

    def _row(self, connection: Connection, approval_id: str) -> dict[str, Any] | None:
        found = connection.execute(f"{_SELECT} WHERE approval_id = ?", (approval_id,)).fetchone()
        return dict(zip(_COLUMNS, found, strict=True)) if found else None

    def _keys(self) -> dict[str, PublicKey]:
        # No trusted key: nothing verifies, so every view says so (never shown as if true).
        try:
            return self.audit.trusted_keys()
        except AuditError:
            return {}

    def list(
        self,
        *,
        contract: str | None = None,
        status: str | None = None,
        visible_to: Principal | None = None,
        limit: int = 100,
    ) -> list[ApprovalView]:
        """Up to `limit` (>= 1) requests, newest first, of `contract` (None: any) in `status`
        (pending, approved, denied, expired, tampered; None: any; a tampered one is listed under
        every status) that `visible_to` may see
        (None: all). The requests are found from the signed ApprovalRequested receipts and
        filtered on their verified facts, never on the index's columns.

        Raises UsageError for an unknown status or a limit below 1."""
        if status is not None and status not in get_args(ViewStatus):
            raise UsageError(f"unknown approval status {status!r}: use one of {', '.join(get_args(ViewStatus))}")
        if limit < 1:
            raise UsageError(f"limit must be at least 1, got {limit}")
        keys = self._keys()
        views: list[ApprovalView] = []
        with self._connection() as connection:
            seqs = [
                r[0]
                for r in connection.execute(
                    "SELECT log_seq FROM receipts WHERE kind = 'approval_request' ORDER BY log_seq DESC"
                ).fetchall()
            ]
            for log_seq in seqs:
                view = self._view_at(connection, log_seq, keys)
                if view is None or (contract is not None and view.contract != contract):
                    continue
                # A tampered request is listed whatever the filter asks for: an edit of the index
                # must not take a request out of an approver's queue unseen.
                if (status not in (None, view.status) and view.status != "tampered") or not _visible(view, visible_to):
                    continue
                views.append(view)
                if len(views) >= limit:
                    break
        return views

    def get(self, approval_id: str, *, visible_to: Principal | None = None) -> ApprovalView:
        """The request `approval_id`, from its verified receipts (status tampered when they do
        not verify or the index disagrees). Raises ApprovalNotFound if there is none or
        `visible_to` may not see it (the requester sees its own, a holder of its approver scope
        or of audit:read sees it; None sees all)."""
        keys = self._keys()
        with self._connection() as connection:
            log_seq = _request_seq(connection, approval_id, self._row(connection, approval_id))
            view = self._view_at(connection, log_seq, keys, approval_id=approval_id) if log_seq else None
        if view is None or not _visible(view, visible_to):
            raise _not_found(approval_id)
        return view

    def resume_runs(self, approval_id: str) -> builtins.list[str]:
        """The runs that resumed request `approval_id`, in order (crashed ones included), from
        their signed Opened receipts. Raises ApprovalNotFound."""
        with self._connection() as connection:
            if _request_seq(connection, approval_id, self._row(connection, approval_id)) is None:
                raise _not_found(approval_id)
        return signed_resume_runs(self.audit, approval_id)

    def decided(self, approval_id: str) -> bool:
        """A decision record of `approval_id` is in the log, whether or not it verifies (the
        resumer verifies it, and stops TAMPERED). What the index says is not asked."""
        with self._connection() as connection:
            return _decision_record(connection, approval_id) is not None

    def pending_resumes(self) -> builtins.list[str]:
        """Decided requests no resume run has sealed yet, oldest decision first: what a resume
        worker has to do. Found from the receipts (decision records; Opened receipts naming an
        approval whose run has a Sealed receipt), not from the index."""
        with self._connection() as connection:
            decided = [
                str(r[0])
                for r in connection.execute(
                    "SELECT run_id FROM receipts WHERE kind = 'approval_decision' ORDER BY log_seq"
                ).fetchall()
            ]
            opened = _sealed_resumes(connection)
        last_sealed: dict[str, str] = {}  # approval -> its last sealed resume run, in log order
        for body in opened:
            try:
                receipt = decode_body(body)
            except ValueError:  # an altered Opened: the resumer verifies the chain and names it
                continue
            if isinstance(receipt, Opened) and receipt.approval_id is not None:
                last_sealed[receipt.approval_id] = receipt.run_id
        # A resume the backend's absence stopped before the approved call acted is still to do.
        done = {a for a, run in last_sealed.items() if not retryable(self.audit.run(run), a)}
        return [a for a in dict.fromkeys(decided) if a not in done]

    def _view_at(
        self,
        connection: Connection,
        log_seq: int,
        keys: dict[str, PublicKey],
        *,
        approval_id: str | None = None,
    ) -> ApprovalView | None:
        """The view of the request receipt at `log_seq`, built from the verified receipts and
        checked against the index; None when the receipt neither decodes nor has an index row."""
        stored = _stored(connection, log_seq)
        findings: list[str] = []
        try:
            request = stored.decoded() if stored is not None else None
        except ValueError:
            request = None
        if not isinstance(request, ApprovalRequested) or (approval_id and request.approval_id != approval_id):
            request = None
        found = connection.execute(f"{_SELECT} WHERE request_log_seq = ?", (log_seq,)).fetchone()
        by_seq = dict(zip(_COLUMNS, found, strict=True)) if found else None
        if request is None:
            if by_seq is None:
                return None
            return _tampered_view(
                by_seq, f"the request receipt {log_seq} is missing or altered: it no longer decodes as this request"
            )
        row = self._row(connection, request.approval_id)
        if not _signed(stored, keys, request.key_id):
            findings.append(f"the request receipt {log_seq} does not verify with the log's trusted keys")
        decided = _decision_record(connection, request.approval_id)
        decision: ApprovalDecided | None = None
        if decided is not None:
            decision_stored, decision = decided
            if decision is None or decision.approval_id != request.approval_id:
                findings.append(f"the decision record {decision_stored.log_seq} is altered: it no longer decodes")
                decision = None
            elif not _signed(decision_stored, keys, decision.key_id):
                findings.append(f"the decision record {decision_stored.log_seq} does not verify with the trusted keys")
        findings.extend(_index_disagreements(row, log_seq, request, decided[0] if decided else None, decision))
        resumes = signed_resume_runs(self.audit, request.approval_id)
        resume_run = resumes[-1] if resumes else None
        resume_status = _run_status(connection, resume_run) if resume_run is not None else None
        opened_row = connection.execute(
            "SELECT log_seq FROM receipts WHERE run_id = ? AND seq = 0", (request.run_id,)
        ).fetchone()
        opened = _receipt_at(connection, opened_row[0]) if opened_row else None
        expires = receipt_time(request.expires)
        pending_past = decision is None and expires <= utc_text(datetime.now(UTC))
        status: ViewStatus
        if findings:
            status = "tampered"
        elif decision is not None:
            status = decision.decision
        else:
            status = "expired" if pending_past else "pending"
        return ApprovalView(
            approval_id=request.approval_id,
            status=status,
            run_id=request.run_id,
            logical_run_id=request.logical_run_id,
            contract=request.contract,
            version=request.version,
            contract_sha256=request.contract_sha256,
            operation=request.operation,
            call=request.call,
            line=request.line,
            arguments=request.arguments,
            args_sha256=request.args_sha256,
            principal=request.principal,
            reason=request.reason,
            clause=request.clause,
            boundary=request.boundary,
            approver_scope=request.approver_scope,
            requested_at=receipt_time(request.at),
            expires=expires,
            program=opened.program if isinstance(opened, Opened) else "",
            observed=request.observed,
            lookups=request.lookups,
            provenance=request.provenance,
            quotas=request.quotas,
            decision=decision.decision if decision else None,
            decided_by=decision.approver if decision else None,
            decided_at=receipt_time(decision.at) if decision else None,
            decision_reason=decision.reason if decision else None,
            expired_unanswered=pending_past or bool(decision and decision.expired),
            decision_link=decided[0].link if decided and decision else None,
            resume_run=resume_run,
            resume_status=resume_status,
            verified=not findings,
            findings=tuple(findings),
        )

    # -- deciding ------------------------------------------------------------------------

    @contextmanager
    def _decision_lock(self) -> Iterator[None]:
        """Held while a decision is read and written: no other thread or process of this log can
        decide in between. One lock per audit log (its key "decide" of `.approval-lock`: see
        AuditLog.lock), so two stores of one log in a process share it; not best effort: where
        other processes cannot be excluded, deciding fails (OSError) rather than risk two decisions."""
        lock = self.audit.lock(".approval-lock", "decide")
        lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def decide(
        self,
        approval_id: str,
        approver: Principal,
        decision: Decided,
        reason: str,
        *,
        now: datetime | None = None,
    ) -> tuple[ApprovalDecided, bool]:
        """Record `approver`'s decision on request `approval_id`, once: (the decision, True) when
        this call wrote it; (the existing one, False) when the same approver had already given
        the same decision (a retry).

        Raises UsageError (a decision other than approved/denied, an empty reason or one over
        MAX_REASON_CHARS), ApprovalNotFound, SelfApproval (the requester, compared by TR39
        skeleton), ApprovalForbidden (the approver lacks the approver scope), ApprovalConflict
        (another decision exists), ApprovalExpired (approving at or after `expires`; denying is
        accepted), ApprovalError with code TAMPERED (the signed request does not verify with the
        log's trusted keys), AuditError (no trusted key, or the record could not be written).
        `now` (default: the clock) is the decision's time."""
        if decision not in get_args(Decided):
            raise UsageError(f"a decision is 'approved' or 'denied', not {decision!r}")
        if not reason.strip():
            raise UsageError("a decision needs a reason: say why it is approved or denied")
        if len(reason) > MAX_REASON_CHARS:
            raise UsageError(f"the reason is {len(reason)} characters; at most {MAX_REASON_CHARS} are kept")
        moment = _now(now)
        with self._decision_lock():
            with self._connection() as connection:
                log_seq = _request_seq(connection, approval_id, self._row(connection, approval_id))
                if log_seq is None:
                    raise _not_found(approval_id)
                # Who asked, who may decide and until when: from the signed request, never from the
                # index (a derived table, which whoever can write the file could edit).
                request = self._signed_request(connection, log_seq, approval_id)
                if same_principal(approver.id, request.principal):
                    raise SelfApproval(
                        f"{approver.id!a} may not decide approval {approval_id}: it was requested by "
                        f"{request.principal!a}, and an approval needs a second principal (four eyes; ids are "
                        "compared by their Unicode TR39 confusable skeleton, so look-alikes count as the same)"
                    )
                if not approver.has(request.approver_scope):
                    raise ApprovalForbidden(
                        f"{approver.id!a} may not decide approval {approval_id} ({request.operation} under contract "
                        f"{request.contract} {request.version}): it needs the scope {request.approver_scope}, "
                        "which the contract's `approvals: scope` names"
                    )
                existing = _existing_decision(connection, approval_id)
                if existing is not None:
                    if existing.approver == approver.id and existing.decision == decision:
                        return existing, False
                    raise ApprovalConflict(
                        f"approval {approval_id} was already {existing.decision} by {existing.approver!a} at "
                        f"{existing.at} ({existing.reason}); a request is decided once",
                        existing=existing,
                    )
                expires = utc_text(request.expires)
                if decision == "approved" and utc_text(moment) >= expires:
                    raise ApprovalExpired(
                        f"approval {approval_id} expired at {expires} unanswered: it can only be denied; "
                        "the program must ask again to run the call"
                    )
                link = _link(connection, log_seq)
            decided = self._write(
                request, link, approver.id, tuple(sorted(approver.scopes)), decision, reason, moment, expired=False
            )
        return decided, True

    def _signed_request(self, connection: Connection, log_seq: int, approval_id: str) -> ApprovalRequested:
        """The request receipt at `log_seq` for `approval_id`, its signature checked with the
        log's trusted keys. Raises ApprovalError (TAMPERED) if it is missing, altered or signed
        by an unknown key; AuditError if the log has no trusted key."""
        stored = _stored(connection, log_seq)
        try:
            request = stored.decoded() if stored is not None else None
        except ValueError:
            request = None
        keys = self.audit.trusted_keys()
        if (
            not isinstance(request, ApprovalRequested)
            or request.approval_id != approval_id
            or not _signed(stored, keys, request.key_id)
        ):
            raise ApprovalError(
                f"the request receipt of approval {approval_id} (receipt {log_seq}) does not verify with the log's "
                "trusted keys: it was altered; nothing was decided. Run `charter audit verify`",
                code="TAMPERED",
            )
        return request

    def expire_due(self, *, now: datetime | None = None) -> builtins.list[ApprovalDecided]:
        """Deny every request still undecided at or after its signed `expires` (`now`, default
        the clock): approver "charter", expired=True. Returns the decisions written, oldest
        request first. Candidates come from the receipts (requests without a decision record),
        never from the index; a request whose receipt does not verify is left to `audit verify`."""
        moment = _now(now)
        keys = self._keys()
        with self._connection() as connection:
            decided = {
                str(r[0])
                for r in connection.execute("SELECT run_id FROM receipts WHERE kind = 'approval_decision'").fetchall()
            }
            requests = connection.execute(
                "SELECT log_seq, run_id, seq, kind, body, signature, link FROM receipts "
                "WHERE kind = 'approval_request' ORDER BY log_seq"
            ).fetchall()
        due: list[tuple[int, str]] = []
        for row in requests:
            stored = StoredReceipt(*row)
            try:
                request = stored.decoded()
            except ValueError:
                continue
            if (
                isinstance(request, ApprovalRequested)
                and request.approval_id not in decided
                and receipt_time(request.expires) <= utc_text(moment)
                and _signed(stored, keys, request.key_id)
            ):
                due.append((stored.log_seq, request.approval_id))
        written: list[ApprovalDecided] = []
        for log_seq, approval_id in due:
            with self._decision_lock():
                with self._connection() as connection:
                    if _existing_decision(connection, approval_id) is not None:
                        continue  # decided meanwhile
                    request = self._signed_request(connection, log_seq, approval_id)
                    link = _link(connection, log_seq)
                reason = f"the request expired at {receipt_time(request.expires)} before anyone answered it"
                written.append(self._write(request, link, EXPIRY_APPROVER, (), "denied", reason, moment, expired=True))
        return written

    def _write(
        self,
        request: ApprovalRequested,
        request_link: str,
        approver: str,
        scopes: tuple[str, ...],
        decision: Decided,
        reason: str,
        moment: datetime,
        *,
        expired: bool,
    ) -> ApprovalDecided:
        draft = ApprovalDecided(
            run_id=request.approval_id,
            seq=0,
            at=utc_text(moment),
            approval_id=request.approval_id,
            request_run=request.run_id,
            request_link=request_link,
            call=request.call,
            operation=request.operation,
            args_sha256=request.args_sha256,
            decision=decision,
            approver=approver,
            approver_scopes=scopes,
            reason=reason,
            expired=expired,
        )
        stored = self.audit.append_record(draft).decoded()
        assert isinstance(stored, ApprovalDecided)
        return stored


def _visible(view: ApprovalView, viewer: Principal | None) -> bool:
    if viewer is None or viewer.has(AUDIT_READ):
        return True
    return bool(viewer.id == view.principal or viewer.has(view.approver_scope))


def _not_found(approval_id: str) -> ApprovalNotFound:
    return ApprovalNotFound(
        f"no approval request {approval_id!r} that you may see in this audit log; `charter approvals list` shows them"
    )


def _sealed_resumes(connection: Connection) -> builtins.list[bytes]:
    """The bodies of the Opened receipts naming an approval whose run has a Sealed receipt, in
    log order (each is decoded and its approval_id read before anything relies on it)."""
    rows = connection.execute(
        f"SELECT o.body FROM receipts o WHERE o.kind = 'open' AND {body_holds(connection, 'o.body')} AND "
        "EXISTS (SELECT 1 FROM receipts s WHERE s.kind = 'seal' AND s.run_id = o.run_id) ORDER BY o.log_seq",
        (naming("", whole=False),),
    ).fetchall()
    return [bytes(body) for (body,) in rows]


def _receipt_at(connection: Connection, log_seq: int) -> Receipt | None:
    """The receipt at `log_seq`; None if there is none or its body no longer decodes (altered)."""
    found = connection.execute("SELECT body FROM receipts WHERE log_seq = ?", (log_seq,)).fetchone()
    try:
        return decode_body(found[0]) if found else None
    except ValueError:
        return None


def _run_status(connection: Connection, run_id: str) -> str | None:
    """A run's status from its own Opened and Sealed receipts (not the derived runs index);
    None when its opening is missing or altered."""
    opened: Opened | None = None
    sealed: Sealed | None = None
    for (body,) in connection.execute(
        "SELECT body FROM receipts WHERE run_id = ? AND kind IN ('open', 'seal') ORDER BY log_seq", (run_id,)
    ).fetchall():
        try:
            receipt = decode_body(body)
        except ValueError:
            continue
        if isinstance(receipt, Opened):
            opened = receipt
        elif isinstance(receipt, Sealed):
            sealed = receipt
    return status_of(opened, sealed).status if opened is not None else None


def _stored(connection: Connection, log_seq: int) -> StoredReceipt | None:
    found = connection.execute(
        "SELECT log_seq, run_id, seq, kind, body, signature, link FROM receipts WHERE log_seq = ?", (log_seq,)
    ).fetchone()
    return StoredReceipt(*found) if found else None


def _signed(stored: StoredReceipt | None, keys: dict[str, PublicKey], key_id: str) -> bool:
    """`stored` carries a valid signature of its body by the trusted key `key_id`."""
    key = keys.get(key_id)
    return (
        stored is not None
        and key is not None
        and isinstance(stored.body, bytes)  # as text, it is no longer the signed bytes
        and isinstance(stored.signature, bytes)
        and key.verifies(stored.signature, stored.body)
    )


def _request_seq(connection: Connection, approval_id: str, row: dict[str, Any] | None) -> int | None:
    """Where the request receipt of `approval_id` is: the index's pointer when the receipt there
    is that request, else found in the receipts themselves (an index row edited or deleted)."""
    if row is not None:
        receipt = _receipt_at(connection, row["request_log_seq"])
        if isinstance(receipt, ApprovalRequested) and receipt.approval_id == approval_id:
            return int(row["request_log_seq"])
    for log_seq, body in connection.execute(
        f"SELECT log_seq, body FROM receipts WHERE kind = 'approval_request' AND {body_holds(connection)} "
        "ORDER BY log_seq",
        (naming(approval_id),),  # compact JSON bodies: the field reads exactly so
    ).fetchall():
        try:
            receipt = decode_body(body)
        except ValueError:
            continue
        if isinstance(receipt, ApprovalRequested) and receipt.approval_id == approval_id:
            return int(log_seq)
    return int(row["request_log_seq"]) if row is not None else None  # altered: its view says so


def _decision_record(connection: Connection, approval_id: str) -> tuple[StoredReceipt, ApprovalDecided | None] | None:
    """The first decision record of `approval_id` in the log (run_id = the approval id) and its
    body (None: it no longer decodes); None before the request is decided."""
    found = connection.execute(
        "SELECT log_seq, run_id, seq, kind, body, signature, link FROM receipts "
        "WHERE kind = 'approval_decision' AND run_id = ? ORDER BY log_seq LIMIT 1",
        (approval_id,),
    ).fetchone()
    if found is None:
        return None
    stored = StoredReceipt(*found)
    try:
        body = stored.decoded()
    except ValueError:
        return stored, None
    return stored, body if isinstance(body, ApprovalDecided) else None


def _existing_decision(connection: Connection, approval_id: str) -> ApprovalDecided | None:
    """The decision already recorded for `approval_id`, from the log (never the index). Raises
    ApprovalError (TAMPERED) when a decision record is there but no longer decodes."""
    found = _decision_record(connection, approval_id)
    if found is None:
        return None
    if found[1] is None or found[1].approval_id != approval_id:
        raise ApprovalError(
            f"the decision record of approval {approval_id} (receipt {found[0].log_seq}) is altered; "
            "run `charter audit verify`",
            code="TAMPERED",
        )
    return found[1]


def _index_disagreements(
    row: dict[str, Any] | None,
    log_seq: int,
    request: ApprovalRequested,
    decision_row: StoredReceipt | None,
    decision: ApprovalDecided | None,
) -> list[str]:
    """Where the index row of a request says other than its receipts (one sentence each)."""
    if row is None:
        return [f"the approvals index has no row for this request (receipt {log_seq}); it was deleted"]
    expected: dict[str, Any] = {
        "run_id": request.run_id,
        "logical_run_id": request.logical_run_id,
        "contract": request.contract,
        "version": request.version,
        "contract_sha256": request.contract_sha256,
        "operation": request.operation,
        "call": request.call,
        "principal": request.principal,
        "reason": request.reason,
        "approver_scope": request.approver_scope,
        "requested_at": receipt_time(request.at),
        "expires": receipt_time(request.expires),
        "request_log_seq": log_seq,
        "status": decision.decision if decision else "pending",
        "decided_by": decision.approver if decision else None,
        "decided_at": receipt_time(decision.at) if decision else None,
        "decision_reason": decision.reason if decision else None,
        "expired": int(decision.expired) if decision else 0,
        "decision_log_seq": decision_row.log_seq if decision_row is not None and decision else None,
    }
    if decision_row is not None and decision is None:  # an altered decision: already a finding
        for name in ("status", "decided_by", "decided_at", "decision_reason", "expired", "decision_log_seq"):
            expected.pop(name)
    return [
        f"the approvals index says {name} {row[name]!r} but the signed receipts say {value!r}"
        for name, value in expected.items()
        if row[name] != value
    ]


def _tampered_view(row: dict[str, Any], finding: str) -> ApprovalView:
    """A request whose receipt no longer decodes: only the index is left, shown as untrusted."""
    return ApprovalView(
        approval_id=row["approval_id"],
        status="tampered",
        run_id=row["run_id"],
        logical_run_id=row["logical_run_id"],
        contract=row["contract"],
        version=row["version"],
        contract_sha256=row["contract_sha256"],
        operation=row["operation"],
        call=row["call"],
        line=None,
        arguments=None,
        args_sha256="",
        principal=row["principal"],
        reason=row["reason"],
        clause="",
        boundary=None,
        approver_scope=row["approver_scope"],
        requested_at=row["requested_at"],
        expires=row["expires"],
        program="",
        observed=None,
        lookups=(),
        provenance=None,
        quotas=(),
        decision=None,
        decided_by=None,
        decided_at=None,
        decision_reason=None,
        expired_unanswered=False,
        decision_link=None,
        resume_run=None,
        resume_status=None,
        verified=False,
        findings=(finding,),
    )


def _link(connection: Connection, log_seq: int) -> str:
    return str(connection.execute("SELECT link FROM receipts WHERE log_seq = ?", (log_seq,)).fetchone()[0])
