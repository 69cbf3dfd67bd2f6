"""Replay: run a logged program again, in the sandbox, against what the log recorded.

The program gets the recorded clock, seed and principal, and every proxy call is
answered from the run's receipts instead of a backend: the recorded result, denial or
failure; the call a paused run stopped at (its ApprovalRequested) pauses the replay there, so
its outcome is the sealed `paused` one. Nothing is decided and nothing reaches a backend. The
report says whether the program made the same calls with the same arguments and reached the
same conclusion.

Secret params are recorded as keyed digests (charter.gate._secrets): the replay masks its
own arguments with the log's secret key and compares the masked forms. Without that key
(the log was copied without `keys/secrets.key`, or another key is there) a secret cannot be
compared: the other arguments still are, and the report says, in `notes`, which were not,
rather than reporting a divergence.
The program gets the run's recorded inputs. A secret input was recorded only as its keyed
digest, so the replay hands the program that digest in its place and the report names it
(`secret_inputs`). A call that passed the secret on (whole or inside a longer text) recorded
the digest in its place (the Decision's `masked_inputs`), so it compares equal; a call whose
arguments were computed from the secret (its length, its upper case) diverges (its
arguments' hash differs), and the replay says so rather than guessing the value.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from charter.audit import AuditLog, Decision, Opened, RunRecord, Sealed, SecretKey, lookup_lines
from charter.audit.quotas import recount
from charter.compiler.artifact import CompiledContract
from charter.gate import CallRequest, Denied
from charter.principal import Principal
from charter.replay._answers import RecordedAnswers, ResumeGate
from charter.sandbox import RunContext, Sandbox, SandboxLimits, outcome_json

__all__ = ["RecordedAnswers", "ReplayReport", "ResumeGate", "chain_records", "program_runs_of", "replay_run"]


class ReplayReport(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    recorded_calls: int
    replayed_calls: int
    divergences: tuple[str, ...]
    recorded_outcome: str | None  # None when the run was never sealed
    replayed_outcome: str
    notes: tuple[str, ...] = ()  # what the replay could not compare, and why (not divergences)
    # Quota totals recounted from the log and found equal to the recorded ones (0 when the
    # run has none, or no log was given); differences are divergences.
    quotas_checked: int = 0
    # The lookups each recorded decision saw (its arguments, result fingerprint, checked value):
    # what the gate decided on. Replay answers every call from the record, so it reads no
    # backend and cannot re-perform them; a lookup's result is the backend's state at the time.
    lookups: tuple[str, ...] = ()
    secret_inputs: tuple[str, ...] = ()  # inputs replayed as their digests (the values were never recorded)

    @property
    def identical(self) -> bool:
        return not self.divergences and self.recorded_outcome == self.replayed_outcome


class _ReplayGate:
    """Answers each call from the record (`RecordedAnswers`); any difference is a divergence,
    and refused. A resumed run's calls before its own receipts are answered from its chain
    (the paused run, then the crashed resumes it recovers) by the same rules the resume
    followed (`RecordedAnswers.settle`), so a resume stopped DIVERGED or IN_DOUBT replays so."""

    blocking = False

    def __init__(
        self,
        record: RunRecord,
        contract: CompiledContract,
        secret_key: SecretKey | None,
        chain: tuple[RunRecord, ...] = (),
    ) -> None:
        self.answers = RecordedAnswers((*chain, record), contract, secret_key)
        self.decisions = self.answers.decisions
        own = [r.call for r in record.receipts if isinstance(r, Decision)]
        last = self.decisions.get(max(own)) if own else None
        halted = record.sealed is not None and getattr(record.sealed, "status", None) == "halted"
        self.halted_at = last.call if halted and last is not None and last.decision == "DENY" else None
        self.chained = {n for n, run in self.answers.origin.items() if run != record.run_id}
        # The call the run paused on (its own ApprovalRequested): replayed by pausing there.
        self.paused_at = next((n for n in self.answers.requests if self.answers.origin[n] == record.run_id), None)
        mine = [*own, *([self.paused_at] if self.paused_at is not None else [])]
        # A resumed run's record ends where the run ended (DIVERGED, IN_DOUBT, a pause...): its own last call.
        self.expected_calls = max(mine, default=0) if chain else len(mine)
        self.recorded_calls = self.expected_calls
        self.denials = 0
        self.divergences: list[str] = []
        self.notes = self.answers.notes
        self.calls = 0

    def _diverge(self, message: str) -> Denied:
        self.divergences.append(message)
        return Denied("REPLAY_DIVERGED", f"replay diverged: {message}")

    def call(self, request: CallRequest) -> Any:
        self.calls += 1
        n = request.sequence
        if n in self.chained:
            settled = self.answers.settle(request)
            if settled is None:  # the chain paused here and this run did not record the call
                raise self._diverge(f"call {n} ({request.operation}) was not made in the recorded run")
            decision = settled
        else:
            found = self.answers.recorded(n)
            asked = self.answers.requested(n)
            if found is None and asked is not None and n == self.paused_at:
                differs = self.answers.divergence(request, asked)
                if differs is not None:
                    raise self._diverge(differs)
                self.answers.pause(asked)  # the run paused here, as the gate did
            if found is None:
                raise self._diverge(f"call {n} ({request.operation}) was not made in the recorded run")
            decision = found
            differs = self.answers.divergence(request, decision)
            if differs is not None:
                raise self._diverge(differs)
            if decision.decision == "ALLOW" and self.answers.outcome(n) is None:
                raise self._diverge(f"call {n} ({decision.operation}) has no recorded outcome: it is in doubt")
        if decision.decision == "DENY":
            self.denials += 1
        return self.answers.reply(decision, denials=self.denials, halted=n == self.halted_at)


def replay_run(
    record: RunRecord,
    contract: CompiledContract,
    sandbox: Sandbox,
    *,
    log: AuditLog | None = None,
    secret_key: SecretKey | None = None,
) -> ReplayReport:
    """Re-run `record`'s program against its own receipts. `contract` must be the pinned version.
    With `log` (the run's audit log), each quota total a Decision recorded is recounted from the
    receipts written before it (charter.audit.quotas.recount) and compared. `secret_key` is the
    log's key for secret values (None: secret params are not compared, and the report says so).
    A resumed run (its Opened names the run it `resumes`) made only its calls from the approved
    one on; the calls before are answered from its chain, which needs `log` (ValueError without)."""
    opened = record.opened
    if not isinstance(opened, Opened):
        runs = ", ".join(program_runs_of(record)) or "none"
        raise ValueError(f"run {opened.run_id} answers an intent; replay its program runs instead: {runs}")
    if contract.sha256 != opened.contract_sha256:
        raise ValueError(
            f"run {opened.run_id} ran under {opened.contract} {opened.version} sha256 {opened.contract_sha256[:12]}, "
            f"not {contract.sha256[:12]}"
        )
    chain = chain_records(log, opened) if opened.resumes is not None else ()
    gate = _ReplayGate(record, contract, secret_key, chain)
    context = RunContext(
        principal=Principal.of_record(opened.principal, frozenset(opened.scopes), opened.attributes or {}),
        run_id=opened.run_id,
        clock=datetime.fromisoformat(opened.clock),
        seed=opened.seed,
        inputs=dict(opened.inputs or {}),
    )
    limits = SandboxLimits(**opened.limits)
    outcome = sandbox.run(opened.program, contract=contract, gate=gate, context=context, limits=limits)
    divergences = list(gate.divergences)
    if gate.calls < gate.expected_calls:
        divergences.append(f"the replay made {gate.calls} calls, the recorded run {gate.recorded_calls}")
    checked = _quota_divergences(record, contract, log, divergences) if log is not None else 0
    return ReplayReport(
        run_id=opened.run_id,
        recorded_calls=gate.recorded_calls,
        replayed_calls=gate.calls,
        divergences=tuple(divergences),
        recorded_outcome=record.sealed.outcome if isinstance(record.sealed, Sealed) else None,
        replayed_outcome=outcome_json(outcome),
        notes=tuple(gate.notes),
        quotas_checked=checked,
        lookups=tuple(
            f"call {d.call} {d.operation}: {line}" for d in gate.decisions.values() for line in lookup_lines(d)
        ),
        secret_inputs=opened.secret_inputs,
    )


def _quota_divergences(record: RunRecord, contract: CompiledContract, log: AuditLog, found: list[str]) -> int:
    """Recount each recorded quota total from the log; append the differences; return how many matched.
    A total depends on the whole log at the time of the call (other runs' calls), not on this run's
    program, so it is recounted from the receipts written before the Decision, not replayed."""
    windows = {q.id: q.window_seconds for rule in contract.gate.operations.values() for q in rule.quotas}
    matched = 0
    for decision in (r for r in record.receipts if isinstance(r, Decision) and r.quotas):
        totals = recount(log, decision, windows)
        for seen in decision.quotas:
            if seen.id not in totals:
                found.append(f"call {decision.call}: quota {seen.id} is not in the pinned contract; not recounted")
            elif totals[seen.id] != seen.total:
                found.append(
                    f"call {decision.call}: quota {seen.id} key {seen.key} recorded a total of {seen.total}, the log "
                    f"before it counts {totals[seen.id]} (a failed outcome written while the call was being decided "
                    "also makes this difference; the recorded total is what the gate saw)"
                )
            else:
                matched += 1
    return matched


def program_runs_of(record: RunRecord) -> list[str]:
    """The program runs an intent run's attempts started, in order."""
    return record.program_runs()


def chain_records(log: AuditLog | None, opened: Opened) -> tuple[RunRecord, ...]:
    """The records a resumed run's earlier calls were answered from, in order: the chain of the
    paused run it resumes (a resume of a resume, for chains of approvals), that paused run, then
    the crashed resumes it recovers. () for a run that resumes nothing; ValueError without the log."""
    if opened.resumes is None:
        return ()
    if log is None:
        raise ValueError(
            f"run {opened.run_id} resumes run {opened.resumes}; replaying it needs the audit log holding that run"
        )
    paused = log.run(opened.resumes)
    if not isinstance(paused.opened, Opened):
        raise ValueError(f"run {opened.run_id} resumes {opened.resumes}, which is not a program run")
    return (*chain_records(log, paused.opened), paused, *(log.run(run_id) for run_id in opened.recovers))
