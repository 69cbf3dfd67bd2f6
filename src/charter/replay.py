"""Replay: run a logged program again, in the sandbox, against what the log recorded.

The program gets the recorded clock, seed and principal, and every proxy call is
answered from the run's receipts instead of a backend: the recorded result, denial or
failure. Nothing is decided and nothing reaches a backend. The report says whether the
program made the same calls with the same arguments and reached the same conclusion.

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

import contextlib
import json
from datetime import datetime
from typing import Any

import msgspec

from charter.audit import AuditLog, Decision, Opened, Outcome, RunRecord, Sealed, SecretKey, lookup_lines
from charter.audit.quotas import recount
from charter.compiler.artifact import CompiledContract
from charter.gate import ArgumentChecker, CallRequest, Denied, Encoded, InvalidArguments, OperationFailed, RunHalted
from charter.gate._contract import halt_message
from charter.gate._secrets import SecretParams, recorded_arguments
from charter.principal import Principal
from charter.sandbox import RunContext, Sandbox, SandboxLimits, outcome_json

__all__ = ["ReplayReport", "program_runs_of", "replay_run"]


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
    """Answers each call from the record; any difference is a divergence, and refused."""

    blocking = False

    def __init__(self, record: RunRecord, contract: CompiledContract, secret_key: SecretKey | None) -> None:
        self.decisions = {r.call: r for r in record.receipts if isinstance(r, Decision)}
        self.outcomes = {r.call: r for r in record.receipts if isinstance(r, Outcome)}
        self.halted_at = max(self.decisions) if record.sealed and record.sealed.status == "halted" else None
        self.denials = 0
        self._checker = ArgumentChecker.for_table(contract.gate)
        self._secrets = SecretParams(contract.gate)
        self._key = secret_key
        self.divergences: list[str] = []
        self.notes: list[str] = []
        self.calls = 0

    def _diverge(self, message: str) -> Denied:
        self.divergences.append(message)
        return Denied("REPLAY_DIVERGED", f"replay diverged: {message}")

    def _checked(self, request: CallRequest) -> dict[str, Any] | None:
        if request.malformed is not None:
            return None
        # Arguments that fail the check are recorded as the program sent them.
        with contextlib.suppress(InvalidArguments, KeyError):
            return self._checker.check(request.operation, request.arguments)
        return None

    def _digest(self, request: CallRequest) -> str:
        """The arguments' hash exactly as the gate recorded it for this call."""
        secret = self._secrets.of(request.operation)
        return recorded_arguments(request, self._checked(request), secret, self._key)[1]

    def _key_missing(self, decision: Decision) -> str | None:
        """Why this decision's secret params cannot be compared (no key, another key), or None."""
        if not decision.secret_params:
            return None
        if self._key is None:
            return "the log's secret key (keys/secrets.key) is not available"
        recorded = json.loads(decision.arguments) if decision.arguments else {}
        for name in decision.secret_params:
            value = recorded.get(name)
            for digest in value if isinstance(value, list) else [value]:
                if isinstance(digest, str) and digest.split(":")[1:2] != [self._key.key_id]:
                    return (
                        f"they were recorded with secret key {digest.split(':')[1]}, not this log's {self._key.key_id}"
                    )
        return None

    def _same_without_secrets(self, request: CallRequest, decision: Decision) -> bool:
        """Whether the call matches the record in everything but its secret params."""
        checked = self._checked(request)
        if checked is None or decision.arguments is None:
            return checked is None and decision.arguments is None
        recorded = json.loads(decision.arguments)
        replayed = json.loads(recorded_arguments(request, checked, (), None)[0] or "{}")
        for name in decision.secret_params:
            recorded.pop(name, None)
            replayed.pop(name, None)
        return bool(recorded == replayed)

    def call(self, request: CallRequest) -> Any:
        self.calls += 1
        n = request.sequence
        decision = self.decisions.get(n)
        if decision is None:
            raise self._diverge(f"call {n} ({request.operation}) was not made in the recorded run")
        missing = self._key_missing(decision)
        if missing is not None and request.operation == decision.operation:
            if not self._same_without_secrets(request, decision):
                raise self._diverge(f"call {n} ({request.operation}) has other arguments than the recorded call")
            self.notes.append(
                f"call {n} ({request.operation}): secret params {', '.join(decision.secret_params)} were not "
                f"compared: {missing}"
            )
        digest = self._digest(request) if missing is None else decision.args_sha256
        if request.operation != decision.operation or digest != decision.args_sha256:
            raise self._diverge(
                f"call {n} is {request.operation} with arguments {digest[:12]}…, "
                f"the record has {decision.operation} with {decision.args_sha256[:12]}…"
            )
        if decision.decision == "DENY":
            self.denials += 1
            if n == self.halted_at:
                message = halt_message(decision.message, self.denials)
                raise RunHalted(decision.code, message, boundary=decision.boundary)
            raise Denied(decision.code, decision.message, boundary=decision.boundary)
        outcome = self.outcomes.get(n)
        if outcome is None:
            raise self._diverge(f"call {n} ({decision.operation}) has no recorded outcome: it is in doubt")
        if outcome.status in ("failed", "unknown"):  # either way, the program was told it failed
            raise OperationFailed(outcome.code or "BACKEND_ERROR", outcome.message or "")
        return Encoded(outcome.result or "null")


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
    log's key for secret values (None: secret params are not compared, and the report says so)."""
    opened = record.opened
    if not isinstance(opened, Opened):
        runs = ", ".join(program_runs_of(record)) or "none"
        raise ValueError(f"run {opened.run_id} answers an intent; replay its program runs instead: {runs}")
    if contract.sha256 != opened.contract_sha256:
        raise ValueError(
            f"run {opened.run_id} ran under {opened.contract} {opened.version} sha256 {opened.contract_sha256[:12]}, "
            f"not {contract.sha256[:12]}"
        )
    gate = _ReplayGate(record, contract, secret_key)
    context = RunContext(
        principal=Principal(opened.principal, frozenset(opened.scopes), opened.attributes or {}),
        run_id=opened.run_id,
        clock=datetime.fromisoformat(opened.clock),
        seed=opened.seed,
        inputs=dict(opened.inputs or {}),
    )
    limits = SandboxLimits(**opened.limits)
    outcome = sandbox.run(opened.program, contract=contract, gate=gate, context=context, limits=limits)
    divergences = list(gate.divergences)
    if gate.calls < len(gate.decisions):
        divergences.append(f"the replay made {gate.calls} calls, the recorded run {len(gate.decisions)}")
    checked = _quota_divergences(record, contract, log, divergences) if log is not None else 0
    return ReplayReport(
        run_id=opened.run_id,
        recorded_calls=len(gate.decisions),
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
        totals = recount(log.path, decision, windows)
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
