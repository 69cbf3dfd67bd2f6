"""Resuming a run paused for a human's approval, by deterministic replay of its record.

    resumer = Resumer(runner, registry, principal_of=tokens.principal)
    execution = resumer.resume(approval_id)      # once the approval is decided

A resume is a new program run (its Opened names the paused run it `resumes`, the approval and
the link of the decision record, and the earlier resumes of this approval that crashed,
`recovers`) running the paused run's program again with its recorded clock, seed, inputs and
limits, in a fresh sandbox, on the paused run's pinned contract version (by sha256, even if a
newer one was published since), as the requesting principal as it is bound NOW (its recorded
scopes intersected with its current ones; None from `principal_of` means revoked).

Before anything runs the whole chain is verified: every receipt's signature and links in the
paused run, in each run it continued from, in each earlier resume of this approval, and in the
decision record, and the links between them (the decision names the paused run's request, the
paused run is sealed awaiting this approval). Any finding stops the resume TAMPERED, naming
what was found: whoever can write the database could otherwise change a "recorded result" and
steer the program. The stop is itself a run, opened and sealed at once (Halted), so the
refusal is on the record; PRINCIPAL_REVOKED stops the same way (refused).

Then every call the chain already made is answered from its receipts through the answering
class `audit replay` uses (charter.replay.ResumeGate): it must be the same call (operation and
arguments hash) or the run halts DIVERGED; an allowed call of a crashed resume with no
outcome halts IN_DOUBT (it may have acted: it is never sent again under a new key). The
approved (or denied) call and everything after go live through the gate, which checks the
approved call again against the state now and gives its write a key derived from the
approval (charter.gate._approvals).

One resume of an approval at a time: a process lock plus an fcntl lock on
`<audit.db>.resume-locks` (non-blocking: another holder is RESUME_IN_PROGRESS). A resume of an
approval whose resume was sealed returns that run's answer and runs nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path

import msgspec

from charter.approvals import ApprovalError, ApprovalStore
from charter.audit import (
    ApprovalDecided,
    ApprovalRequested,
    AuditLog,
    Decision,
    Opened,
    Outcome,
    PublicKey,
    RunRecord,
    Sealed,
    StoredReceipt,
    check_run,
)
from charter.audit.receipts import decode_body, link_of
from charter.compiler.artifact import CompiledContract
from charter.errors import AuditError, RunNotFound
from charter.gate import GrantedApproval
from charter.principal import Principal
from charter.registry import Registry
from charter.replay import RecordedAnswers, chain_records
from charter.runner import Execution, Runner, execution_of
from charter.sandbox import Outcome as SandboxOutcome

__all__ = ["ApprovalUndecided", "ResumeInProgress", "Resumer", "sealed_execution"]

TAMPERED = "TAMPERED"
PRINCIPAL_REVOKED = "PRINCIPAL_REVOKED"


class ResumeInProgress(ApprovalError):
    """Another thread or process is resuming this approval now."""

    code = "RESUME_IN_PROGRESS"


class ApprovalUndecided(ApprovalError):
    """The approval is still pending: there is nothing to resume yet."""

    code = "APPROVAL_REQUIRED"


class Resumer:
    """Resumes decided approvals (see the module). Thread-safe; any number of processes may
    share one audit log (the resume lock keeps one resume of an approval at a time)."""

    def __init__(
        self,
        runner: Runner,
        registry: Registry,
        *,
        principal_of: Callable[[str], Principal | None],
        store: ApprovalStore | None = None,
    ) -> None:
        self.runner = runner
        self.registry = registry
        self.principal_of = principal_of
        self.store = store or ApprovalStore(runner.audit)

    @property
    def audit(self) -> AuditLog:
        return self.runner.audit

    def resume(self, approval_id: str) -> Execution:
        """Resume the run approval `approval_id` paused (see the module). ApprovalNotFound for an
        unknown id, ApprovalUndecided while it is pending, ResumeInProgress if another holds it."""
        view = self.store.get(approval_id)
        if view.decision is None:
            raise ApprovalUndecided(f"approval {approval_id} is {view.status}: decide it before resuming its run")
        done = self._sealed_resume(approval_id, view.run_id)
        if done is not None:
            return done
        with _resume_lock(self.audit.path, approval_id):
            done = self._sealed_resume(approval_id, view.run_id)  # another process may have finished meanwhile
            if done is not None:
                return done
            return self._resume(approval_id, view.run_id)

    def _sealed_resume(self, approval_id: str, paused_id: str) -> Execution | None:
        for run_id in reversed(self.resume_runs(approval_id, paused_id)):
            try:
                record = self.audit.run(run_id)
            except ValueError:  # a receipt no longer decodes: the resume's verification names it
                continue
            if isinstance(record.sealed, Sealed):
                return sealed_execution(record, self.audit)
        return None

    def resume_runs(self, approval_id: str, paused_id: str) -> list[str]:
        """The runs that resumed approval `approval_id` (of run `paused_id`), in log order, found
        in the signed Opened receipts written after the paused run, not in the approvals index:
        whoever can edit that derived table must not hide a crashed resume (whose approved call
        would then be sent again). An Opened that no longer decodes is listed too, so that the
        verification of the chain names it."""
        last = 0
        for row in self.audit.stored(paused_id):
            last = row.log_seq
        needle = msgspec.json.encode({"approval_id": approval_id})[1:-1]  # "approval_id":"<id>"
        with closing(sqlite3.connect(self.audit.path)) as connection:
            rows = connection.execute(
                "SELECT run_id, body FROM receipts WHERE kind = 'open' AND log_seq > ? AND instr(body, ?) > 0 "
                "ORDER BY log_seq",
                (last, needle),
            ).fetchall()
        found = []
        for run_id, body in rows:
            try:
                opened = decode_body(body)
            except ValueError:
                found.append(str(run_id))
                continue
            if isinstance(opened, Opened) and opened.approval_id == approval_id:
                found.append(str(run_id))
        return found

    def _resume(self, approval_id: str, paused_id: str) -> Execution:
        audit = self.audit
        try:
            paused = audit.run(paused_id)
        except ValueError:  # a receipt no longer decodes: verification below names it
            first = next(iter(audit.stored(paused_id))).decoded()
            paused = RunRecord(opened=first, receipts=(first,), sealed=None)  # type: ignore[arg-type]
        if not isinstance(paused.opened, Opened):
            raise AuditError(f"approval {approval_id} names run {paused_id}, which is not a program run")
        recovers = tuple(self.resume_runs(approval_id, paused_id))  # none is sealed (else `_sealed_resume` answered)
        contract = self._contract(paused.opened)
        findings, decided = self._verify(approval_id, paused, recovers)
        if contract is not None and contract.sha256 != paused.opened.contract_sha256:
            findings.append(
                f"the registry's {paused.opened.contract} {paused.opened.version} has sha256 "
                f"{contract.sha256[:12]}, the paused run ran under {paused.opened.contract_sha256[:12]}"
            )
        link = decided[1] if decided is not None else ""
        recorded = Principal.of_record(
            paused.opened.principal, frozenset(paused.opened.scopes), paused.opened.attributes or {}
        )
        if findings or decided is None or contract is None:
            if contract is None:
                findings.append(f"contract {paused.opened.contract} {paused.opened.version} is not in the registry")
            reason = (
                f"the record of the paused run {paused_id} does not verify, so nothing of it is replayed or executed: "
                + "; ".join(findings)
            )
            return self._stop(paused.opened, recorded, approval_id, link, recovers, TAMPERED, reason)
        decision = decided[0]
        current = self.principal_of(paused.opened.principal)
        if current is None:
            reason = (
                f"principal {paused.opened.principal} holds no token any more (revoked); the run resumes as its "
                "requester, so it is not resumed"
            )
            return self._stop(paused.opened, recorded, approval_id, link, recovers, PRINCIPAL_REVOKED, reason)
        principal = Principal(
            current.id, frozenset(paused.opened.scopes) & frozenset(current.scopes), current.attributes
        )
        records = (*chain_records(audit, paused.opened), paused, *(audit.run(r) for r in recovers))  # verified
        answers = RecordedAnswers(records, contract, audit.secret_key)
        granted = GrantedApproval(
            approval_id=approval_id,
            call=decision.call,
            operation=decision.operation,
            args_sha256=decision.args_sha256,
            decision=decision.decision,
            approver=decision.approver,
            reason=decision.reason,
        )
        return self.runner.resume_run(
            paused.opened,
            contract=contract,
            principal=principal,
            approval_id=approval_id,
            approval_link=link,
            approval=granted,
            answers=answers,
            recovers=recovers,
        )

    def _contract(self, opened: Opened) -> CompiledContract | None:
        try:
            return self.registry.get(opened.contract, opened.version)
        except LookupError:
            return None

    def _stop(
        self,
        paused: Opened,
        principal: Principal,
        approval_id: str,
        link: str,
        recovers: tuple[str, ...],
        code: str,
        reason: str,
    ) -> Execution:
        return self.runner.resume_run(
            paused,
            contract=None,
            principal=principal,
            approval_id=approval_id,
            approval_link=link,
            recovers=recovers,
            stop=(code, reason),
        )

    # -- verifying the chain -----------------------------------------------------------

    def _verify(
        self, approval_id: str, paused: RunRecord, recovers: tuple[str, ...]
    ) -> tuple[list[str], tuple[ApprovalDecided, str] | None]:
        """Every finding on the chain (see the module), and the decision with its link."""
        audit = self.audit
        keys = audit.trusted_keys()
        findings: list[str] = []
        try:
            chain = chain_records(audit, paused.opened) if isinstance(paused.opened, Opened) else ()
        except (ValueError, AuditError, RunNotFound) as error:
            findings.append(f"the runs run {paused.run_id} continues cannot be read: {error}")
            chain = ()
        for run_id in (*[r.run_id for r in chain], paused.run_id, *recovers):
            try:
                checked = check_run(audit, run_id, keys)
            except (AuditError, RunNotFound) as error:
                findings.append(f"run {run_id}: {error}")
                continue
            findings += [f"run {run_id}: {_said(f)}" for f in checked.verification.findings]
        for record in (*chain, paused):
            opened = record.opened
            if isinstance(opened, Opened) and opened.approval_id is not None:
                findings += self._decision_findings(opened.approval_id, keys)[0]
        more, decided = self._decision_findings(approval_id, keys)
        findings += more
        if decided is None:
            return findings, None
        decision, _ = decided
        requests = [r for r in paused.receipts if isinstance(r, ApprovalRequested) and r.approval_id == approval_id]
        links = {row.seq: row.link for row in audit.stored(paused.run_id)}
        if decision.request_run != paused.run_id:
            findings.append(f"decision {approval_id} names run {decision.request_run}, not the paused run")
        if len(requests) != 1:
            findings.append(f"run {paused.run_id} holds {len(requests)} requests for approval {approval_id}, not one")
        else:
            request = requests[0]
            if links.get(request.seq) != decision.request_link:
                findings.append(
                    f"decision {approval_id} names request link {decision.request_link[:12]}…, the request receipt "
                    f"(seq {request.seq}) has {links.get(request.seq, '')[:12]}…"
                )
            if (request.call, request.operation, request.args_sha256) != (
                decision.call,
                decision.operation,
                decision.args_sha256,
            ):
                findings.append(
                    f"decision {approval_id} is for call {decision.call} {decision.operation} "
                    f"{decision.args_sha256[:12]}…, the request is for call {request.call} {request.operation} "
                    f"{request.args_sha256[:12]}…"
                )
        sealed = paused.sealed
        if not isinstance(sealed, Sealed) or sealed.approval_id != approval_id or sealed.status != "paused":
            findings.append(f"run {paused.run_id} is not sealed paused for approval {approval_id}")
        for run_id in recovers:
            opened = audit.run(run_id).opened
            if not isinstance(opened, Opened) or (opened.resumes, opened.approval_id) != (paused.run_id, approval_id):
                findings.append(f"run {run_id} is listed as a resume of approval {approval_id} but does not say so")
        return findings, decided

    def _record_problems(self, row: StoredReceipt, keys: Mapping[str, PublicKey]) -> list[str]:
        """A one-receipt record checked on its own: its signature, its link, its place in the
        log (the previous receipt's link) and its being the record's first and only receipt."""
        problems = []
        try:
            receipt = row.decoded()
        except (msgspec.ValidationError, msgspec.DecodeError):
            return [f"receipt {row.log_seq} does not decode"]
        key = keys.get(receipt.key_id)
        if key is None:
            problems.append(f"receipt {row.log_seq} is signed with key {receipt.key_id}, which is not trusted")
        elif not key.verifies(row.signature, row.body):
            problems.append(f"receipt {row.log_seq}: its signature does not verify: the body or signature was altered")
        if link_of(row.body, row.signature) != row.link:
            problems.append(f"receipt {row.log_seq}: its stored link is not sha256(body || signature)")
        if (receipt.seq, receipt.prev, receipt.log_seq, receipt.run_id) != (0, "", row.log_seq, row.run_id):
            problems.append(f"receipt {row.log_seq}: its seq, prev, log_seq or run id was altered")
        before = self.audit.stored_at(row.log_seq - 1) if row.log_seq > 1 else None
        if receipt.log_prev != (before.link if before is not None else ""):
            problems.append(f"receipt {row.log_seq}: its log_prev does not name the log's previous receipt")
        return problems

    def _decision_findings(
        self, approval_id: str, keys: Mapping[str, PublicKey]
    ) -> tuple[list[str], tuple[ApprovalDecided, str] | None]:
        """The findings on an approval's decision record, and the decision with its link."""
        rows = list(self.audit.stored(approval_id))
        if not rows:
            return [f"no decision record for approval {approval_id}"], None
        findings = [f"decision record {approval_id}: {problem}" for problem in self._record_problems(rows[0], keys)]
        if len(rows) != 1:
            findings.append(f"decision record {approval_id} holds {len(rows)} receipts, not one")
        try:
            decision = rows[0].decoded()
        except (msgspec.ValidationError, msgspec.DecodeError):
            return [*findings, f"decision record {approval_id} does not decode"], None
        if not isinstance(decision, ApprovalDecided) or decision.approval_id != approval_id:
            return [*findings, f"decision record {approval_id} is not a decision on it"], None
        return findings, (decision, rows[0].link)


def _said(finding: object) -> str:
    seq = getattr(finding, "log_seq", None)
    problem = getattr(finding, "problem", str(finding))
    return f"receipt {seq}: {problem}" if seq is not None else str(problem)


def sealed_execution(record: RunRecord, audit: AuditLog) -> Execution:
    """The answer of a sealed program run, from its receipts (a resume already sealed)."""
    sealed, opened = record.sealed, record.opened
    assert isinstance(sealed, Sealed)
    assert isinstance(opened, Opened)
    outcome = msgspec.json.decode(sealed.outcome, type=SandboxOutcome)
    calls = tuple(r for r in record.receipts if isinstance(r, Decision | Outcome))
    return execution_of(audit, opened, outcome, calls, sealed)


# -- the resume lock ------------------------------------------------------------------

_held: set[tuple[str, str]] = set()
_held_lock = threading.Lock()
_fds: dict[str, int] = {}  # one descriptor per lock file for the process (closing any drops its locks)


@contextmanager
def _resume_lock(database: Path, approval_id: str) -> Iterator[None]:
    """Exclusive per approval across threads and processes; never waits (ResumeInProgress)."""
    path = f"{database}.resume-locks"
    mine = (path, approval_id)
    with _held_lock:
        if mine in _held:
            raise ResumeInProgress(f"approval {approval_id} is being resumed by another thread of this process")
        fd = _fds.get(path)
        if fd is None:
            fd = _fds[path] = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        offset = int(hashlib.sha256(approval_id.encode()).hexdigest()[:15], 16)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        except OSError:
            raise ResumeInProgress(f"approval {approval_id} is being resumed by another process") from None
        _held.add(mine)
    try:
        yield
    finally:
        with _held_lock:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)
            _held.discard(mine)
