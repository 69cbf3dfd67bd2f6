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

A resume stopped by the server, not by the call: a resume sealed failed with cause
BACKEND_UNAVAILABLE before the approved call took effect (the approved call was never decided
in it, or its Outcome is failed BACKEND_UNAVAILABLE: the backend was never reached) does not
spend the approval. It is `retryable` (the worker, charter.approvals.worker, retries it with its
backoff; `charter approvals resume` runs it again): the new resume lists it in `recovers` like
a crashed resume and is answered from its recorded ok outcomes, but each call whose Outcome
there is failed BACKEND_UNAVAILABLE goes live again, under the same approval-derived
idempotency key (charter.replay.RecordedAnswers.settle). An approved call whose Outcome is ok
(or unknown, or any other failure) is never sent again: such a resume is the approval's answer.

One resume of an approval at a time: the log's resume lock of that approval (`AuditLog.lock`:
on SQLite a process lock plus an fcntl record lock on `<audit.db>.resume-locks`,
charter.audit._locks; on PostgreSQL an advisory lock every worker and host shares)
(non-blocking: another holder is RESUME_IN_PROGRESS).
Whoever can delete that file while it is held defeats the lock, so after taking it the
resumer also reads the signed Opened receipts of the approval's resumes: one not sealed whose
owner (Opened host and pid) is alive on this host, its process started before the Opened was
written, is RESUME_IN_PROGRESS too. What remains: a resume running on another host cannot be
seen alive from here (the lock file, on a shared file system, is then the only guard); a
resume that a second one overtakes in the moment between the first taking the deleted lock
and writing its Opened is not seen either. The approved call still executes at most once
either way (a second resume finds it allowed with no outcome: IN_DOUBT); the approval's
reported resume may then be the in-doubt one. A resume of an
approval whose resume was sealed returns that run's answer and runs nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import msgspec

from charter.approvals import ApprovalError, ApprovalStore
from charter.approvals._retry import retryable
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
from charter.audit._approval_records import resume_runs
from charter.audit.receipts import link_of
from charter.audit.store import host_identity
from charter.compiler.artifact import CompiledContract
from charter.errors import AuditError, RunNotFound
from charter.gate import GrantedApproval
from charter.principal import Principal
from charter.registry import Registry
from charter.replay import RecordedAnswers, chain_records
from charter.runner import Execution, Runner, execution_of
from charter.sandbox import Outcome as SandboxOutcome
from charter.status import BACKEND_UNAVAILABLE

__all__ = ["ApprovalUndecided", "ResumeInProgress", "Resumer", "retryable", "sealed_execution"]

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
        if not self.store.decided(approval_id):  # a record that fails verification stops the resume TAMPERED
            raise ApprovalUndecided(f"approval {approval_id} is {view.status}: decide it before resuming its run")
        done = self._sealed_resume(approval_id, view.run_id)
        if done is not None:
            return done
        with _resume_lock(self.audit, approval_id):
            done = self._sealed_resume(approval_id, view.run_id)  # another process may have finished meanwhile
            if done is not None:
                return done
            self._no_live_resume(approval_id, view.run_id)
            return self._resume(approval_id, view.run_id)

    def _no_live_resume(self, approval_id: str, paused_id: str) -> None:
        """ResumeInProgress if an unsealed resume of the approval, found in the signed Opened
        receipts, has an owner still alive on this host (its Opened host and pid, the pid's
        process started before that Opened was written). The lock file is the first defence; this
        one holds when the file was deleted or replaced while another resume held it (see the module)."""
        host, pid = host_identity()
        for run_id in self.resume_runs(approval_id, paused_id):
            try:
                record = self.audit.run(run_id)
            except ValueError:  # a receipt no longer decodes: the resume's verification names it
                continue
            opened = record.opened
            if record.sealed is not None or not isinstance(opened, Opened) or opened.host != host:
                continue
            if opened.pid != pid and _alive_since(opened.pid, opened.at):
                raise ResumeInProgress(
                    f"approval {approval_id} is being resumed by run {run_id} (process {opened.pid} on {host}, "
                    "still running, though the resume lock was free: was the lock file deleted?)"
                )

    def _sealed_resume(self, approval_id: str, paused_id: str) -> Execution | None:
        """The answer of the last sealed resume of the approval, or None: none is sealed, or the
        last sealed one is retryable (the backend stopped it before the approved call acted)."""
        for run_id in reversed(self.resume_runs(approval_id, paused_id)):
            try:
                record = self.audit.run(run_id)
            except ValueError:  # a receipt no longer decodes: the resume's verification names it
                continue
            if isinstance(record.sealed, Sealed):
                return None if retryable(record, approval_id) else sealed_execution(record, self.audit)
        return None

    def retryable(self, execution: Execution) -> bool:
        """Whether the resume `execution` (a run this resumer sealed) leaves its approval to be
        resumed again: failed BACKEND_UNAVAILABLE before the approved call took effect (see the module)."""
        if execution.cause != BACKEND_UNAVAILABLE:
            return False
        record = self.audit.run(execution.run_id)
        opened = record.opened
        return isinstance(opened, Opened) and opened.approval_id is not None and retryable(record, opened.approval_id)

    def resume_runs(self, approval_id: str, paused_id: str) -> list[str]:
        """The runs that resumed approval `approval_id` (of run `paused_id`), in log order, found
        in the signed Opened receipts written after the paused run, not in the approvals index:
        whoever can edit that derived table must not hide a crashed resume (whose approved call
        would then be sent again). An Opened that no longer decodes is listed too, so that the
        verification of the chain names it. The reader is the audit surfaces' own
        (charter.audit._approval_records.resume_runs), bounded to receipts after the paused run."""
        last = 0
        for row in self.audit.stored(paused_id):
            last = row.log_seq
        return resume_runs(self.audit, approval_id, after=last, undecodable=True)

    def _resume(self, approval_id: str, paused_id: str) -> Execution:
        audit = self.audit
        try:
            paused = audit.run(paused_id)
        except ValueError:  # a receipt no longer decodes: verification below names it
            first = next(iter(audit.stored(paused_id))).decoded()
            paused = RunRecord(opened=first, receipts=(first,), sealed=None)  # type: ignore[arg-type]
        if not isinstance(paused.opened, Opened):
            raise AuditError(f"approval {approval_id} names run {paused_id}, which is not a program run")
        # None is sealed, or only retryable ones are (else `_sealed_resume` answered): all are recovered.
        recovers = tuple(self.resume_runs(approval_id, paused_id))
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
                f"principal {paused.opened.principal} holds no token now (revoked, or never issued one); the "
                "run resumes as its requester, so it is not resumed"
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
        if receipt.stream:
            # A PostgreSQL writer stream (charter.audit._writer): log_prev names the previous
            # receipt of the same stream; log_seq has gaps between streams.
            seq = receipt.stream_seq
            before = self.audit.stored_in_stream(receipt.stream, seq - 1) if seq > 1 else None
            if receipt.log_prev != (before.link if before is not None else ""):
                problems.append(
                    f"receipt {row.log_seq}: its log_prev does not name the previous receipt of stream {receipt.stream}"
                )
            return problems
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


def _alive_since(pid: int, opened_at: str) -> bool:
    """Whether process `pid` of this host is running (not a zombie) and, where /proc says when it
    started, started no later than `opened_at` (ISO-8601): a pid reused by a later process is
    not the owner of that Opened."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    except OSError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text(encoding="ascii").splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError):
        return True  # no /proc: alive is all that is known
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    if fields[0] in ("Z", "X"):
        return False  # a zombie: it ended
    started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return started <= datetime.fromisoformat(opened_at).timestamp() + 1.0  # /proc's clock is coarse


@contextmanager
def _resume_lock(log: AuditLog, approval_id: str) -> Iterator[None]:
    """Exclusive per approval across threads and processes (the log's `.resume-locks` key of it);
    never waits (ResumeInProgress). Not best effort: where other processes cannot be excluded,
    resuming fails (OSError) rather than risk running the approved call twice."""
    lock = log.lock(".resume-locks", approval_id)
    if not lock.acquire(blocking=False):
        raise ResumeInProgress(f"approval {approval_id} is being resumed by another thread or process")
    try:
        yield
    finally:
        lock.release()
