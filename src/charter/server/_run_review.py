"""One run as the review app's run page shows it: who may see what of it, its receipts beside
what verification could vouch for, the boundaries its denials name, its approval chain, and
replaying and exporting it. `CharterService` delegates here (`run_review`, `run_access`,
`replay_run`, `run_bundle`) so the page and any other face decide access alike.

Who sees what (the same rule as GET /v1/runs/{run_id}):

    auditor   a principal holding audit:read: every run, whole (program, receipts, what the
              gate read, withheld backend errors); may replay and export it
    owner     the run's own principal without audit:read: the summary, each call's decision
              and the verification, not the program nor the receipts' contents
    approver  a principal holding the approver scope of the run's PENDING approval request
              (never its requester): the owner's view, plus the program with the waiting line
    None      anyone else: the run is answered exactly like a missing one (RunNotFound)

The run is verified every time it is shown (`charter.audit.check_run`): each receipt's own
signature and its links. A receipt that fails keeps its problems beside it (`Entry.problems`)
and is never presented as true; a receipt that does not decode is an entry without content.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from charter.approvals import ApprovalError, ApprovalView, chain_of
from charter.audit import (
    ApprovalRequested,
    Asked,
    Attempted,
    CheckedRun,
    Concluded,
    Decision,
    Opened,
    Outcome,
    Receipt,
    RunRecord,
    Sealed,
    check_run,
    export_run,
)
from charter.audit.store import BackendError
from charter.errors import CharterError, RunNotFound, UsageError
from charter.principal import Principal, same_principal
from charter.replay import ReplayReport, replay_run
from charter.status import status_of

if TYPE_CHECKING:
    from charter.server._service import CharterService

__all__ = [
    "Access",
    "AttemptView",
    "ChainStep",
    "Entry",
    "RunReview",
    "review_bundle",
    "review_replay",
    "review_run",
    "run_access",
]

AUDIT_SCOPE = "audit:read"
_RUN_ID = re.compile(r"[0-9a-f]{32}")

Access = Literal["auditor", "owner", "approver"]
Mark = Literal["denied", "waiting", "called"]
_MARK_ORDER = {"called": 0, "waiting": 1, "denied": 2}  # several calls on one line: the gravest shows


@dataclass(frozen=True, slots=True)
class Entry:
    """One receipt of the run, in log order. `receipt` None: it did not decode (altered past
    reading). `problems`: what its verification found (empty: its signature and links hold)."""

    log_seq: int
    seq: int
    kind: str
    receipt: Receipt | None
    problems: tuple[str, ...]
    boundary_text: str | None = None  # the sentence of the hard boundary a decision names
    backend_error: BackendError | None = None  # the withheld exception text (auditors only)
    line_in_program: bool = False  # the line the guest reported exists in the program
    claimed: str = ""  # a receipt that failed verification: its stored body as text, never believed

    @property
    def verified(self) -> bool:
        return not self.problems and self.receipt is not None


@dataclass(frozen=True, slots=True)
class AttemptView:
    """An intent run's attempt: the model's answer and the program run it started."""

    entry: Entry
    program_run: str | None
    program_status: str | None  # the program run's status (None: it did not run)
    program_verified: bool


@dataclass(frozen=True, slots=True)
class ChainStep:
    """One run of a run's approval chain, and the approval it paused for (if any)."""

    run_id: str
    status: str
    current: bool  # the run the page shows
    approval: ApprovalView | None


@dataclass(frozen=True, slots=True)
class RunReview:
    """A run for the run page; see the module docstring for `access`."""

    run_id: str
    kind: Literal["program", "intent"]
    access: Access
    principal: str
    contract: str
    version: str
    intent: str | None
    opened_at: str
    ended_at: str | None
    status: str
    cause: str | None
    answer: str | None
    reason: str | None
    opening: Entry
    program: str | None  # None: not shown to this viewer (or an intent run)
    marks: dict[int, Mark]
    entries: list[Entry]  # every receipt after the opening, in log order
    attempts: list[AttemptView]
    chain: list[ChainStep]
    verified: bool
    verified_receipts: int
    findings: list[tuple[int | None, str]]  # (the failing receipt's log_seq, or None; what was found)
    in_doubt: list[int] = field(default_factory=list)  # allowed calls with no known outcome
    resumes: str | None = None  # the paused run this run resumes
    approval_id: str | None = None  # the approval this run resumes under, or waits for

    @property
    def detailed(self) -> bool:
        """The receipts' contents are shown (auditors)."""
        return self.access == "auditor"


def _whole_id(run_id: str) -> None:
    if not _RUN_ID.fullmatch(run_id):
        raise RunNotFound(f"no run {run_id[:64]!r}: give the whole 32-character run id")


def _missing(run_id: str) -> RunNotFound:
    # Another principal's run is answered exactly like a missing one.
    return RunNotFound(f"no run {run_id!r} among the runs you may read (yours, or any with {AUDIT_SCOPE!r})")


def run_access(service: CharterService, principal: Principal, record: RunRecord) -> Access | None:
    """What `principal` may see of run `record` (module docstring), None: nothing."""
    if principal.has(AUDIT_SCOPE):
        return "auditor"
    if record.opened.principal == principal.id:  # exactly, as GET /v1/runs/{run_id} decides
        return "owner"
    closing = record.sealed
    if isinstance(closing, Sealed) and closing.approval_id is not None:
        try:
            view = service.approvals.get(closing.approval_id)
        except ApprovalError:
            return None
        addressed = principal.has(view.approver_scope) and not same_principal(view.principal, principal.id)
        if view.status == "pending" and view.verified and view.run_id == record.run_id and addressed:
            return "approver"
    return None


def _checked(service: CharterService, principal: Principal, run_id: str) -> tuple[CheckedRun, Access]:
    _whole_id(run_id)
    try:
        checked = check_run(service.audit, run_id)
    except RunNotFound:
        raise _missing(run_id) from None
    access = run_access(service, principal, checked.record)
    if access is None:
        raise _missing(run_id)
    return checked, access


def review_run(service: CharterService, principal: Principal, run_id: str) -> RunReview:
    """Run `run_id` verified now, as `principal` may see it. Raises RunNotFound (also for a run
    it may not see, and for anything but a whole 32-hex id), AuditError if not even the run's
    opening decodes."""
    checked, access = _checked(service, principal, run_id)
    record = checked.record
    opened = record.opened
    boundaries = _boundaries(service, opened.contract, opened.version)
    withheld = {e.call: e for e in service.audit.backend_errors(run_id)} if access == "auditor" else {}
    program = opened.program if isinstance(opened, Opened) else None
    lines = len(program.splitlines()) if program is not None else 0
    entries = _entries(service, checked, boundaries, withheld, lines)
    opening, rest = entries[0], entries[1:]
    marks = _marks(rest) if program is not None else {}
    if access == "owner":
        program = None
    ended = status_of(opened, record.sealed)
    last = rest[-1] if rest else None  # the run's conclusion is told only from a seal that verifies
    closing_true = (
        record.sealed is not None and last is not None and last.kind in ("seal", "conclude") and last.verified
    )
    answer, reason = _conclusion(record) if closing_true else (None, None)
    findings = [(f.log_seq, str(f)) for f in checked.verification.findings]
    for part in checked.programs:
        findings += [(None, f"program run {part.record.run_id}: {f}") for f in part.verification.findings]
    waiting = record.sealed.approval_id if isinstance(record.sealed, Sealed | Concluded) else None
    return RunReview(
        run_id=record.run_id,
        kind="intent" if isinstance(opened, Asked) else "program",
        access=access,
        principal=opened.principal,
        contract=opened.contract,
        version=opened.version,
        intent=opened.intent,
        opened_at=opened.at,
        ended_at=record.sealed.at if record.sealed is not None else None,
        status=ended.status,
        cause=ended.cause,
        answer=answer,
        reason=reason,
        opening=opening,
        program=program,
        marks=marks,
        entries=rest,
        attempts=_attempts(checked, rest),
        chain=_chain(service, principal, record.run_id),
        verified=checked.ok,
        verified_receipts=checked.verification.receipts + sum(p.verification.receipts for p in checked.programs),
        findings=findings,
        in_doubt=[d.call for d in record.in_doubt()] if checked.ok else [],
        resumes=opened.resumes if isinstance(opened, Opened) else None,
        approval_id=(opened.approval_id if isinstance(opened, Opened) else None) or waiting,
    )


def _boundaries(service: CharterService, contract: str, version: str) -> dict[str, str]:
    """Boundary id -> its sentence, from the compiled contract of that version ({} when the
    registry no longer holds it)."""
    try:
        compiled = service.registry.get(contract, version)
    except CharterError:
        return {}
    return {b.id: b.text for b in compiled.gate.boundaries}


def _entries(
    service: CharterService,
    checked: CheckedRun,
    boundaries: dict[str, str],
    withheld: dict[int, BackendError],
    lines: int,
) -> list[Entry]:
    """Every stored receipt of the run paired with its decoded body (by its place in the log,
    never by what the body claims) and its verification problems."""
    entries: list[Entry] = []
    for row in service.audit.stored(checked.record.run_id):
        problems = tuple(checked.unverified.get(row.log_seq, ()))
        try:
            receipt: Receipt | None = row.decoded()
        except ValueError:
            claimed = row.body.decode("utf-8", errors="replace")
            entries.append(
                Entry(row.log_seq, row.seq, row.kind, None, problems or ("it does not decode",), claimed=claimed)
            )
            continue
        boundary = getattr(receipt, "boundary", None)
        call = getattr(receipt, "call", None)
        line = getattr(receipt, "line", None)
        entries.append(
            Entry(
                row.log_seq,
                row.seq,
                row.kind,
                receipt,
                problems,
                boundary_text=boundaries.get(boundary) if isinstance(boundary, str) else None,
                backend_error=withheld.get(call) if isinstance(receipt, Outcome | Decision) and call else None,
                line_in_program=isinstance(line, int) and 1 <= line <= lines,
                claimed=row.body.decode("utf-8", errors="replace") if problems else "",
            )
        )
    return entries


def _marks(entries: Sequence[Entry]) -> dict[int, Mark]:
    """The program lines the run's verified calls were reported from, each marked by the gravest
    decision made there."""
    marks: dict[int, Mark] = {}
    for entry in entries:
        receipt = entry.receipt
        if not entry.verified or not entry.line_in_program:
            continue  # an unverified receipt's line is not believed
        if isinstance(receipt, ApprovalRequested) and receipt.line is not None:
            line, mark = receipt.line, "waiting"
        elif isinstance(receipt, Decision) and receipt.line is not None:
            line, mark = receipt.line, "denied" if receipt.decision == "DENY" else "called"
        else:
            continue
        if line not in marks or _MARK_ORDER[mark] > _MARK_ORDER[marks[line]]:
            marks[line] = mark  # type: ignore[assignment]
    return marks


def _conclusion(record: RunRecord) -> tuple[str | None, str | None]:
    from charter.server._service import summary

    view = summary(record)
    return view["answer"], view["reason"]


def _attempts(checked: CheckedRun, entries: Sequence[Entry]) -> list[AttemptView]:
    programs = {p.record.run_id: p for p in checked.programs}
    found = []
    for entry in entries:
        if not isinstance(entry.receipt, Attempted):
            continue
        run = programs.get(entry.receipt.program_run or "")
        found.append(
            AttemptView(
                entry=entry,
                program_run=entry.receipt.program_run,
                program_status=run.record.status if run is not None else None,
                program_verified=run.ok if run is not None else False,
            )
        )
    return found


def _chain(service: CharterService, principal: Principal, run_id: str) -> list[ChainStep]:
    """The approval chain the run belongs to, each paused run with its approval as `principal`
    may see it; [] for a run that never paused nor resumed one."""
    try:
        records = chain_of(service.audit, run_id)
    except (CharterError, ValueError):  # a receipt of the chain does not decode: verification says so
        return []
    steps = []
    for record in records:
        closing = record.sealed
        approval = None
        if isinstance(closing, Sealed | Concluded) and closing.approval_id is not None:
            try:
                approval = service.approvals.get(closing.approval_id, visible_to=principal)
            except ApprovalError:
                approval = None
        steps.append(ChainStep(record.run_id, record.status, record.run_id == run_id, approval))
    return steps if len(steps) > 1 or any(s.approval is not None for s in steps) else []


def review_replay(service: CharterService, principal: Principal, run_id: str) -> list[ReplayReport]:
    """Replay run `run_id` against its receipts (an intent run: each program run its attempts
    started), as `charter audit replay` does. Raises Forbidden without audit:read, RunNotFound,
    UsageError when a receipt fails verification (a replay compares against recorded results,
    so it does not replay a record it cannot vouch for) or the run cannot be replayed."""
    from charter.server._service import Forbidden as ServiceForbidden

    if not principal.has(AUDIT_SCOPE):
        raise ServiceForbidden(f"replaying a run needs the {AUDIT_SCOPE!r} scope")
    checked, _ = _checked(service, principal, run_id)
    for part in (checked, *checked.programs):
        if part.unverified:
            seqs = ", ".join(f"#{seq}" for seq in sorted(part.unverified))
            raise UsageError(
                f"run {part.record.run_id} has receipts that fail their check (log {seqs}); a replay compares "
                "against recorded results, so it does not replay a record it cannot vouch for"
            )
    record = checked.record
    records = [p.record for p in checked.programs] if isinstance(record.opened, Asked) else [record]
    secret_key = service.audit.existing_secret_key()
    reports = []
    for program_run in records:
        opened = program_run.opened
        contract = service.registry.get(opened.contract, opened.version)
        try:
            reports.append(
                replay_run(program_run, contract, service.runner.sandbox, log=service.audit, secret_key=secret_key)
            )
        except ValueError as error:
            raise UsageError(str(error)) from None
    return reports


def review_bundle(service: CharterService, principal: Principal, run_id: str) -> str:
    """Run `run_id`'s bundle as `charter audit export` writes it (JSON Lines, newline-ended).
    Raises Forbidden without audit:read, RunNotFound."""
    from charter.server._service import Forbidden as ServiceForbidden

    if not principal.has(AUDIT_SCOPE):
        raise ServiceForbidden(f"exporting a run needs the {AUDIT_SCOPE!r} scope")
    _whole_id(run_id)
    try:
        service.audit.resolve(run_id)
    except RunNotFound:
        raise _missing(run_id) from None
    return "\n".join(export_run(service.audit, run_id)) + "\n"
