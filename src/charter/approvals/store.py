"""Approval requests and their decisions: list, show, decide (four eyes, once), expire.

A paused run's ApprovalRequested receipt is the request; an ApprovalDecided record is its
decision; both are signed receipts in the audit log. `ApprovalStore` reads them through the
approvals index (charter.approvals._index, kept by the audit writer) and writes decisions
through `AuditLog.append_record`. Errors, each with its reason code in `.code`:

    ApprovalError (CharterError)      .code: the machine word beside the prose
    ├── ApprovalNotFound              APPROVAL_NOT_FOUND: no such request, or not visible to the caller
    ├── ApprovalForbidden             FORBIDDEN_SCOPE: the approver lacks the request's approver scope
    ├── SelfApproval                  SELF_APPROVAL: the approver is the requester (TR39 skeleton)
    ├── ApprovalExpired               APPROVAL_EXPIRED: approving after `expires` (denying is accepted)
    └── ApprovalConflict              ALREADY_DECIDED: another decision exists (`.existing` names it)

Exactly one decision per request, across threads and processes: `decide` takes a process
lock and an fcntl lock on `<audit.db>.approval-lock`, re-reads the request's row, and only
then writes; the writer also refuses a second record with the same id in its transaction.
"""

from __future__ import annotations

import builtins
import fcntl
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import msgspec

from charter.approvals._index import utc_text
from charter.audit.receipts import (
    ApprovalDecided,
    ApprovalRequested,
    LookupSeen,
    Observed,
    Opened,
    QuotaSeen,
    Receipt,
    decode_body,
)
from charter.errors import CharterError, UsageError
from charter.principal import SYSTEM_PRINCIPAL, Principal, same_principal

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
ViewStatus = Literal["pending", "approved", "denied", "expired"]


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
    denied it). `resume_status`: the latest resume run's status (charter.status), None before."""

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

# One lock per audit database in this process: fcntl's flock excludes other processes (and
# other open files of this one); the thread lock keeps this process's threads in line first.
_PROCESS_LOCKS: dict[Path, threading.Lock] = {}
_PROCESS_LOCKS_GUARD = threading.Lock()


def _process_lock(path: Path) -> threading.Lock:
    with _PROCESS_LOCKS_GUARD:
        return _PROCESS_LOCKS.setdefault(path, threading.Lock())


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)


class ApprovalStore:
    """The approval requests of one audit log, and their decisions."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit
        self._lock_path = audit.path.with_name(audit.path.name + ".approval-lock")

    # -- reading -------------------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.audit.path, isolation_level=None, timeout=30)) as connection:
            yield connection

    def _row(self, connection: sqlite3.Connection, approval_id: str) -> dict[str, Any] | None:
        found = connection.execute(f"{_SELECT} WHERE approval_id = ?", (approval_id,)).fetchone()
        return dict(zip(_COLUMNS, found, strict=True)) if found else None

    def list(
        self,
        *,
        contract: str | None = None,
        status: str | None = None,
        visible_to: Principal | None = None,
        limit: int = 100,
    ) -> list[ApprovalView]:
        """Up to `limit` (>= 1) requests, newest first, of `contract` (None: any) in `status`
        (pending, approved, denied, expired; None: any) that `visible_to` may see (None: all).

        Raises UsageError for an unknown status or a limit below 1."""
        if status is not None and status not in get_args(ViewStatus):
            raise UsageError(f"unknown approval status {status!r}: use one of {', '.join(get_args(ViewStatus))}")
        if limit < 1:
            raise UsageError(f"limit must be at least 1, got {limit}")
        clauses: list[str] = []
        params: list[Any] = []
        if contract is not None:
            clauses.append("contract = ?")
            params.append(contract)
        now = utc_text(datetime.now(UTC))
        if status == "pending":
            clauses.append("status = 'pending' AND expires > ?")
            params.append(now)
        elif status == "expired":
            clauses.append("status = 'pending' AND expires <= ?")
            params.append(now)
        elif status is not None:
            clauses.append("status = ?")
            params.append(status)
        if visible_to is not None and not visible_to.has(AUDIT_READ):
            scopes = sorted(visible_to.scopes)
            clauses.append(f"(principal = ? OR approver_scope IN ({', '.join('?' * len(scopes))}))")
            params.extend([visible_to.id, *scopes])
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._connection() as connection:
            rows = connection.execute(f"{_SELECT}{where} ORDER BY request_log_seq DESC LIMIT ?", (*params, limit))
            found = [dict(zip(_COLUMNS, row, strict=True)) for row in rows.fetchall()]
            return [self._view(connection, row) for row in found]

    def get(self, approval_id: str, *, visible_to: Principal | None = None) -> ApprovalView:
        """The request `approval_id`. Raises ApprovalNotFound if there is none or `visible_to`
        may not see it (the requester sees its own, a holder of its approver scope or of
        audit:read sees it; None sees all)."""
        with self._connection() as connection:
            row = self._row(connection, approval_id)
            if row is None or not _visible(row, visible_to):
                raise _not_found(approval_id)
            return self._view(connection, row)

    def resume_runs(self, approval_id: str) -> builtins.list[str]:
        """The runs that resumed request `approval_id`, in order (crashed ones included).
        Raises ApprovalNotFound."""
        with self._connection() as connection:
            row = self._row(connection, approval_id)
        if row is None:
            raise _not_found(approval_id)
        return list(json.loads(row["resume_runs"]))

    def pending_resumes(self) -> builtins.list[str]:
        """Decided requests no resume run has sealed yet, oldest decision first: what a resume
        worker has to do."""
        with self._connection() as connection:
            rows = connection.execute(
                "SELECT approval_id FROM approvals WHERE decision_log_seq IS NOT NULL AND resume_sealed = 0 "
                "ORDER BY decision_log_seq"
            ).fetchall()
        return [r[0] for r in rows]

    def _view(self, connection: sqlite3.Connection, row: dict[str, Any]) -> ApprovalView:
        request = _request(connection, row)
        opened_row = connection.execute(
            "SELECT log_seq FROM receipts WHERE run_id = ? AND seq = 0", (row["run_id"],)
        ).fetchone()
        opened = _receipt_at(connection, opened_row[0]) if opened_row else None
        program = opened.program if isinstance(opened, Opened) else ""
        decision_link = None
        if row["decision_log_seq"] is not None:
            link_row = connection.execute(
                "SELECT link FROM receipts WHERE log_seq = ?", (row["decision_log_seq"],)
            ).fetchone()
            decision_link = link_row[0] if link_row else None
        resume_status = None
        if row["resume_run"] is not None:
            status_row = connection.execute("SELECT status FROM runs WHERE run_id = ?", (row["resume_run"],)).fetchone()
            resume_status = status_row[0] if status_row else None
        pending_past = row["status"] == "pending" and row["expires"] <= utc_text(datetime.now(UTC))
        return ApprovalView(
            approval_id=row["approval_id"],
            status="expired" if pending_past else row["status"],
            run_id=row["run_id"],
            logical_run_id=row["logical_run_id"],
            contract=row["contract"],
            version=row["version"],
            contract_sha256=row["contract_sha256"],
            operation=row["operation"],
            call=row["call"],
            line=request.line,
            arguments=request.arguments,
            args_sha256=request.args_sha256,
            principal=row["principal"],
            reason=row["reason"],
            clause=request.clause,
            boundary=request.boundary,
            approver_scope=row["approver_scope"],
            requested_at=row["requested_at"],
            expires=row["expires"],
            program=program,
            observed=request.observed,
            lookups=request.lookups,
            provenance=request.provenance,
            quotas=request.quotas,
            decision=row["status"] if row["decision_log_seq"] is not None else None,
            decided_by=row["decided_by"],
            decided_at=row["decided_at"],
            decision_reason=row["decision_reason"],
            expired_unanswered=pending_past or bool(row["expired"]),
            decision_link=decision_link,
            resume_run=row["resume_run"],
            resume_status=resume_status,
        )

    # -- deciding ------------------------------------------------------------------------

    @contextmanager
    def _decision_lock(self) -> Iterator[None]:
        """Held while a decision is read and written: no other thread or process of this log can
        decide in between."""
        with _process_lock(self._lock_path.resolve()), self._lock_path.open("a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

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
                row = self._row(connection, approval_id)
                if row is None:
                    raise _not_found(approval_id)
                # Who asked, who may decide and until when: from the signed request, never from the
                # index alone (a derived table, which whoever can write the file could edit).
                request = self._signed_request(connection, row)
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
                existing = _decision(connection, row)
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
                link = _link(connection, row["request_log_seq"])
            decided = self._write(
                row, request, link, approver.id, tuple(sorted(approver.scopes)), decision, reason, moment, expired=False
            )
        return decided, True

    def _signed_request(self, connection: sqlite3.Connection, row: dict[str, Any]) -> ApprovalRequested:
        """The request receipt of `row`, its signature checked with the log's trusted keys.
        Raises ApprovalError (TAMPERED) if it is missing, altered or signed by an unknown key."""
        request = _request(connection, row)
        stored = self.audit.stored_at(row["request_log_seq"])
        key = self.audit.trusted_keys().get(request.key_id)
        intact = (
            stored is not None
            and key is not None
            and isinstance(stored.body, bytes)  # as text, it is no longer the signed bytes
            and isinstance(stored.signature, bytes)
            and key.verifies(stored.signature, stored.body)
        )
        if not intact:
            raise ApprovalError(
                f"the request receipt of approval {row['approval_id']} (receipt {row['request_log_seq']}) does not "
                "verify with the log's trusted keys: it was altered; nothing was decided. Run `charter audit verify`",
                code="TAMPERED",
            )
        return request

    def expire_due(self, *, now: datetime | None = None) -> builtins.list[ApprovalDecided]:
        """Deny every request still pending at or after its `expires` (`now`, default the clock):
        approver "charter", expired=True. Returns the decisions written, oldest request first."""
        moment = _now(now)
        with self._connection() as connection:
            due = [
                r[0]
                for r in connection.execute(
                    "SELECT approval_id FROM approvals WHERE status = 'pending' AND expires <= ? "
                    "ORDER BY request_log_seq",
                    (utc_text(moment),),
                ).fetchall()
            ]
        written: list[ApprovalDecided] = []
        for approval_id in due:
            with self._decision_lock():
                with self._connection() as connection:
                    row = self._row(connection, approval_id)
                    if row is None or row["decision_log_seq"] is not None:
                        continue  # decided meanwhile
                    request = _request(connection, row)
                    link = _link(connection, row["request_log_seq"])
                reason = f"the request expired at {row['expires']} before anyone answered it"
                written.append(
                    self._write(row, request, link, EXPIRY_APPROVER, (), "denied", reason, moment, expired=True)
                )
        return written

    def _write(
        self,
        row: dict[str, Any],
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


def _visible(row: dict[str, Any], viewer: Principal | None) -> bool:
    if viewer is None or viewer.has(AUDIT_READ):
        return True
    return bool(viewer.id == row["principal"] or viewer.has(row["approver_scope"]))


def _not_found(approval_id: str) -> ApprovalNotFound:
    return ApprovalNotFound(
        f"no approval request {approval_id!r} that you may see in this audit log; `charter approvals list` shows them"
    )


def _receipt_at(connection: sqlite3.Connection, log_seq: int) -> Receipt | None:
    """The receipt at `log_seq`; None if there is none or its body no longer decodes (altered)."""
    found = connection.execute("SELECT body FROM receipts WHERE log_seq = ?", (log_seq,)).fetchone()
    try:
        return decode_body(found[0]) if found else None
    except ValueError:
        return None


def _request(connection: sqlite3.Connection, row: dict[str, Any]) -> ApprovalRequested:
    receipt = _receipt_at(connection, row["request_log_seq"])
    if not isinstance(receipt, ApprovalRequested) or receipt.approval_id != row["approval_id"]:
        raise ApprovalError(
            f"the request receipt of approval {row['approval_id']} (receipt {row['request_log_seq']}) is missing or "
            "altered; run `charter audit verify`",
            code="TAMPERED",
        )
    return receipt


def _link(connection: sqlite3.Connection, log_seq: int) -> str:
    return str(connection.execute("SELECT link FROM receipts WHERE log_seq = ?", (log_seq,)).fetchone()[0])


def _decision(connection: sqlite3.Connection, row: dict[str, Any]) -> ApprovalDecided | None:
    if row["decision_log_seq"] is None:
        return None
    receipt = _receipt_at(connection, row["decision_log_seq"])
    if not isinstance(receipt, ApprovalDecided):
        raise ApprovalError(
            f"the decision record of approval {row['approval_id']} is missing or altered; run `charter audit verify`",
            code="TAMPERED",
        )
    return receipt
