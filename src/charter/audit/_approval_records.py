"""Reading an approval's receipts from the log: its request, its decision record, the runs resuming it.

This reads the signed receipts themselves, never the approvals index (charter.approvals),
which is derived and unsigned: `audit show`, `audit export` and verification of one run
must stand on what the log vouches for. A chain is the run that paused first, then, per
approval along it, the decision and the runs resuming it (a crashed resume, then the one
that ran on); a resumed run that pauses again continues the chain with the next approval.
charter.approvals.chain walks the same chains for the API's views, faster and through the
index (see there why both exist); the resumer reads its resumes here (`resume_runs`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from charter.audit._portable import body_holds, naming
from charter.audit.receipts import (
    ApprovalDecided,
    ApprovalRequested,
    Opened,
    Receipt,
    Sealed,
    StoredReceipt,
    decode_body,
)
from charter.audit.store import AuditLog, RunRecord
from charter.errors import RunNotFound

__all__ = [
    "ApprovalStep",
    "Chain",
    "approval_ids",
    "chain_of",
    "decision_of",
    "request_run_of",
    "resolve_approval",
    "resolve_record",
    "resume_runs",
    "resumed_by",
    "sealed_approval",
]

_ROW = "SELECT log_seq, run_id, seq, kind, body, signature, link FROM receipts"
_MAX_CHAIN = 1000  # approvals along one chain; a longer one is cut (a forged loop cannot hang a reader)


def _rows(log: AuditLog, where: str, params: tuple[str | bytes, ...]) -> Iterator[tuple[StoredReceipt, Receipt]]:
    """Matching rows and their bodies; a row whose body does not decode is left out (verify names it).
    `where` may hold `{body_holds}` (charter.audit._portable), spelt for the log's engine."""
    with log.reader() as connection:
        where = where.format(body_holds=body_holds(connection))
        rows = [
            StoredReceipt(*row)
            for row in connection.execute(f"{_ROW} WHERE {where} ORDER BY log_seq", params).fetchall()
        ]
    for row in rows:
        try:
            yield row, row.decoded()
        except ValueError:
            continue


def decision_of(log: AuditLog, approval_id: str) -> tuple[StoredReceipt, ApprovalDecided] | None:
    """The decision record of an approval (run_id = the approval id), or None before it is decided."""
    for row, body in _rows(log, "kind = 'approval_decision' AND run_id = ?", (approval_id,)):
        if isinstance(body, ApprovalDecided):
            return row, body
    return None


def _request_of(log: AuditLog, approval_id: str) -> tuple[StoredReceipt, ApprovalRequested] | None:
    for row, body in _rows(log, "kind = 'approval_request' AND {body_holds}", (naming(approval_id),)):
        if isinstance(body, ApprovalRequested) and body.approval_id == approval_id:
            return row, body
    return None


def resume_runs(log: AuditLog, approval_id: str, *, after: int = 0, undecodable: bool = False) -> list[str]:
    """The runs resuming an approval, in log order, from the signed Opened receipts (log_seq >
    `after`) that name it: the one reader of them, for the audit surfaces (here) and for the
    resumer (charter.approvals.resume), which must find every crashed resume even when the
    approvals index was edited to hide one. `undecodable`: also list the runs whose Opened
    naming the approval no longer decodes (the resumer verifies them, which names the damage);
    by default they are left out, as readers that open each run need."""
    with log.reader() as connection:
        rows = connection.execute(
            f"SELECT run_id, body FROM receipts WHERE kind = 'open' AND log_seq > ? AND {body_holds(connection)} "
            "ORDER BY log_seq",
            (after, naming(approval_id)),
        ).fetchall()
    found = []
    for run_id, body in rows:
        try:
            opened = decode_body(body)
        except ValueError:
            if undecodable:
                found.append(str(run_id))
            continue
        if isinstance(opened, Opened) and opened.approval_id == approval_id:
            found.append(str(run_id))  # where the receipt is stored, whatever its body claims
    return found


def resolve_approval(log: AuditLog, prefix: str) -> str | None:
    """The approval id a unique prefix names (a decided or a pending approval), or None.

    Raises RunNotFound when the prefix names more than one approval."""
    if not prefix or not all(c in "0123456789abcdef" for c in prefix):
        return None
    # `prefix` is hex digits (checked above): no LIKE wildcard, and no case for the engines' LIKE to differ on.
    found = {r.run_id for r, _ in _rows(log, "kind = 'approval_decision' AND run_id LIKE ?", (prefix + "%",))}
    for _, body in _rows(log, "kind = 'approval_request' AND {body_holds}", (naming(prefix, whole=False),)):
        if isinstance(body, ApprovalRequested):
            found.add(body.approval_id)
    if len(found) > 1:
        raise RunNotFound(f"approval id prefix {prefix!r} is ambiguous in {log.path}; give more of the id")
    return found.pop() if found else None


def approval_ids(record: RunRecord) -> list[str]:
    """The approvals a run takes part in: the one it resumes under, then the one it paused for."""
    ids = []
    if isinstance(record.opened, Opened) and record.opened.approval_id is not None:
        ids.append(record.opened.approval_id)
    if isinstance(record.sealed, Sealed) and record.sealed.approval_id is not None:
        ids.append(record.sealed.approval_id)
    return ids


@dataclass(frozen=True, slots=True)
class ApprovalStep:
    """One approval along a chain: where it was asked, the decision (None: pending), the resumes."""

    approval_id: str
    request_run: RunRecord
    request: ApprovalRequested | None  # None: the paused run holds no request for it (see verify)
    decision: ApprovalDecided | None
    decision_row: StoredReceipt | None
    resumes: tuple[RunRecord, ...]  # in log order; only the last one may have run on


@dataclass(frozen=True, slots=True)
class Chain:
    first: RunRecord  # the run that paused first
    steps: tuple[ApprovalStep, ...]

    @property
    def runs(self) -> list[RunRecord]:
        return [self.first, *(run for step in self.steps for run in step.resumes)]

    @property
    def last(self) -> RunRecord:
        """The run the chain stands at now: the latest resume, else the paused run."""
        return self.runs[-1]


def chain_of(log: AuditLog, run_id: str) -> Chain | None:
    """The chain a program run belongs to, from its first run; None if it never paused or resumed."""
    record = log.run(run_id)
    seen = {record.run_id}
    while isinstance(record.opened, Opened) and record.opened.resumes is not None:
        try:
            earlier = log.run(record.opened.resumes)
        except RunNotFound:
            break  # verification names the missing run; the chain starts where the log does
        if earlier.run_id in seen:
            break
        seen.add(earlier.run_id)
        record = earlier
    if not approval_ids(record):
        return None
    first, steps = record, list[ApprovalStep]()
    seen = {first.run_id}  # forwards now: each run once, whatever a forged record claims
    while isinstance(record.sealed, Sealed) and record.sealed.approval_id is not None and len(steps) < _MAX_CHAIN:
        approval_id = record.sealed.approval_id
        requested = [r for r in record.receipts if isinstance(r, ApprovalRequested) and r.approval_id == approval_id]
        decided = decision_of(log, approval_id)
        resumes = tuple(log.run(r) for r in resume_runs(log, approval_id) if r not in seen)
        seen.update(r.run_id for r in resumes)
        steps.append(
            ApprovalStep(
                approval_id=approval_id,
                request_run=record,
                request=requested[0] if requested else None,
                decision=decided[1] if decided else None,
                decision_row=decided[0] if decided else None,
                resumes=resumes,
            )
        )
        if not resumes:
            break
        record = resumes[-1]
    return Chain(first=first, steps=tuple(steps))


def sealed_approval(log: AuditLog, run_id: str) -> str | None:
    """The approval a run's seal says it waits for (None: not paused, or not sealed)."""
    for _, body in _rows(log, "kind = 'seal' AND run_id = ?", (run_id,)):
        if isinstance(body, Sealed):
            return body.approval_id
    return None


def resumed_by(log: AuditLog, approval_id: str) -> RunRecord | None:
    """The run that resumed an approval, from the Opened receipts that name it (the last one: an
    earlier one is a resume that crashed), or None while nothing has resumed it."""
    resumes = resume_runs(log, approval_id)
    return log.run(resumes[-1]) if resumes else None


def request_run_of(log: AuditLog, approval_id: str) -> str | None:
    """The run that paused for an approval, from its ApprovalRequested receipt."""
    found = _request_of(log, approval_id)
    return found[1].run_id if found else None


def resolve_record(log: AuditLog, prefix: str) -> str:
    """What `audit verify ID` and `audit export ID` read: a run, else an approval's decision record
    (else, for an approval not decided yet, the run that paused for it).

    Raises RunNotFound for an id that names neither."""
    try:
        return log.resolve(prefix)
    except RunNotFound:
        approval_id = resolve_approval(log, prefix)
        if approval_id is None:
            raise
    if decision_of(log, approval_id) is not None:
        return approval_id
    paused = request_run_of(log, approval_id)
    if paused is None:  # resolve_approval found it by one of the two
        raise RunNotFound(f"approval {approval_id} has no record in {log.path}")
    return paused
