"""Chains of runs continuing one another across approvals.

A program run paused for approval X is sealed `awaiting_approval` with `Sealed.approval_id =
X`; each run resuming it is a new program run whose Opened names X (`approval_id`) and the
paused run (`resumes`). A resumed run may pause again at a later call (approval Y), and so on:

    paused run (X) -> resume of X [-> crashed resumes of X ...] -> resume of X, paused (Y) -> resume of Y

An intent run whose program run paused concludes `awaiting_approval` with Concluded.approval_id;
its chain is the intent run, then the chain of that program run.

Why this walker and charter.audit._approval_records.chain_of both exist: this one serves the
API's run views (GET /v1/runs/{id} asks on every poll), so it finds each approval's resumes
through the approvals index (one row lookup), not a scan of every Opened receipt, and it
confirms each listed run against its signed Opened receipt (a run the index names that does
not say it resumes the approval is left out). What it cannot do is find a resume hidden from
the index (a derived, unsigned table): the audit surfaces (`audit show/export/verify`, which
also need each approval's decision) and the resumer (which must never miss a crashed resume)
read the receipts themselves, through charter.audit._approval_records. It also starts from an
intent run, which the audit walker does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from charter.approvals.store import ApprovalNotFound, ApprovalStore
from charter.audit.receipts import Asked, Concluded, Opened, Sealed
from charter.errors import RunNotFound

if TYPE_CHECKING:
    from charter.audit.store import AuditLog, RunRecord

__all__ = ["chain_of", "latest_of"]


def chain_of(audit: AuditLog, run_id: str) -> list[RunRecord]:
    """The chain `run_id` (a run id or a unique prefix of one) belongs to, in order.

    A program run: the chain's first run (walking back through `Opened.resumes`), then every
    run that resumed it (crashed ones included, in the order they were opened), then those
    that resumed the last of them if it paused again, and so on. An intent run: itself, then
    the chain of its program run that paused (Concluded.approval_id), if any.
    Raises RunNotFound for an unknown id (an approval record is not a run)."""
    store = ApprovalStore(audit)
    record = audit.run(run_id)
    chain: list[RunRecord] = []
    seen = {record.run_id}
    if isinstance(record.opened, Asked):
        chain.append(record)
        paused = _paused_program_run(audit, record)
        if paused is None:
            return chain
        record = paused
        seen.add(record.run_id)
    else:
        while isinstance(record.opened, Opened) and record.opened.resumes and record.opened.resumes not in seen:
            try:
                record = audit.run(record.opened.resumes)
            except RunNotFound:  # the paused run is gone: `audit verify` reports the broken link
                break
            seen.add(record.run_id)
        seen = {record.run_id}  # from the first run on, every run is found again going forward
    while True:
        chain.append(record)
        approval_id = record.sealed.approval_id if isinstance(record.sealed, Sealed) else None
        if approval_id is None:
            return chain
        try:
            following = [r for r in store.resume_runs(approval_id) if r not in seen]
        except ApprovalNotFound:
            return chain
        if not following:
            return chain
        seen.update(following)
        confirmed = [run for run in map(audit.run, following) if _resumes(run, approval_id)]
        if not confirmed:
            return chain
        *crashed, last = confirmed
        chain.extend(crashed)
        record = last


def latest_of(audit: AuditLog, run_id: str) -> RunRecord:
    """The last run of `run_id`'s chain: where the work it started stands now (`run_id` itself
    when nothing continued it). Raises RunNotFound."""
    return chain_of(audit, run_id)[-1]


def _paused_program_run(audit: AuditLog, intent: RunRecord) -> RunRecord | None:
    """The program run an intent run concluded waiting for (Concluded.approval_id), if any."""
    concluded = intent.sealed
    if not isinstance(concluded, Concluded) or concluded.approval_id is None:
        return None
    for program_run in reversed(intent.program_runs()):
        try:
            record = audit.run(program_run)
        except RunNotFound:
            continue
        if isinstance(record.sealed, Sealed) and record.sealed.approval_id == concluded.approval_id:
            return record
    return None


def _resumes(record: RunRecord, approval_id: str) -> bool:
    """The run's signed Opened says it resumes `approval_id` (what the index claims of it)."""
    return isinstance(record.opened, Opened) and record.opened.approval_id == approval_id
