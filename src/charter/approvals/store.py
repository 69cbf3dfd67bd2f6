"""SHIM (resume branch) of f16-store's ApprovalStore: only what resume needs, read from the
receipts by scanning (no index). Replaced by f16-store's module on merge."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import msgspec

from charter.audit import ApprovalDecided, ApprovalRequested, AuditLog, Opened, Sealed, now_iso
from charter.audit.receipts import decode_body
from charter.audit.store import RunRecorder
from charter.errors import CharterError
from charter.principal import Principal

__all__ = ["ApprovalError", "ApprovalNotFound", "ApprovalStore"]


class ApprovalError(CharterError):
    code = "APPROVAL_ERROR"


class ApprovalNotFound(ApprovalError):
    code = "APPROVAL_NOT_FOUND"


@dataclass(frozen=True)
class _View:
    approval_id: str
    run_id: str
    status: str
    decision: str | None


class ApprovalStore:
    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    def _rows(self, kind: str) -> list[tuple[str, bytes]]:
        with self.audit._connection() as connection:
            return connection.execute(
                "SELECT run_id, body FROM receipts WHERE kind = ? ORDER BY log_seq", (kind,)
            ).fetchall()

    def _request(self, approval_id: str) -> ApprovalRequested:
        for _, body in self._rows("approval_request"):
            receipt = decode_body(body)
            if isinstance(receipt, ApprovalRequested) and receipt.approval_id == approval_id:
                return receipt
        raise ApprovalNotFound(f"no approval {approval_id}")

    def _decision(self, approval_id: str) -> ApprovalDecided | None:
        for row in self.audit.stored(approval_id):
            receipt = row.decoded()
            if isinstance(receipt, ApprovalDecided):
                return receipt
        return None

    def get(self, approval_id: str, *, visible_to: Principal | None = None) -> _View:
        request = self._request(approval_id)
        decided = self._decision(approval_id)
        status = decided.decision if decided is not None else "pending"
        return _View(approval_id, request.run_id, status, decided.decision if decided else None)

    def decide(
        self,
        approval_id: str,
        approver: Principal,
        decision: Literal["approved", "denied"],
        reason: str,
        *,
        now: datetime | None = None,
    ) -> tuple[ApprovalDecided, bool]:
        request = self._request(approval_id)
        existing = self._decision(approval_id)
        if existing is not None:
            return existing, False
        link = next(r.link for r in self.audit.stored(request.run_id) if r.seq == request.seq)
        decided = ApprovalDecided(
            run_id=approval_id,
            seq=0,
            at=now_iso(),
            approval_id=approval_id,
            request_run=request.run_id,
            request_link=link,
            call=request.call,
            operation=request.operation,
            args_sha256=request.args_sha256,
            decision=decision,
            approver=approver.id,
            approver_scopes=tuple(sorted(approver.scopes)),
            reason=reason,
        )
        recorder = RunRecorder(self.audit._ensure_writer(), decided, self.audit.path)  # type: ignore[arg-type]
        return msgspec.structs.replace(decided, key_id=recorder.written[0].key_id), True

    def resume_runs(self, approval_id: str) -> list[str]:
        runs = []
        for run_id, body in self._rows("open"):
            receipt = decode_body(body)
            if isinstance(receipt, Opened) and receipt.approval_id == approval_id:
                runs.append(run_id)
        return runs

    def pending_resumes(self) -> list[str]:
        pending = []
        for run_id, _ in self._rows("approval_decision"):
            sealed = any(isinstance(self.audit.run(r).sealed, Sealed) for r in self.resume_runs(run_id))
            if not sealed:
                pending.append(run_id)
        return pending

    def expire_due(self, *, now: datetime | None = None) -> list[ApprovalDecided]:
        return []


_ = secrets
