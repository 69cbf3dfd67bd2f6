"""Replay: run a logged program again, in the sandbox, against what the log recorded.

The program gets the recorded clock, seed and principal, and every proxy call is
answered from the run's receipts instead of a backend: the recorded result, denial or
failure. Nothing is decided and nothing reaches a backend. The report says whether the
program made the same calls with the same arguments and reached the same conclusion.

The program gets the run's recorded inputs. A secret input was recorded only as its keyed
digest, so the replay hands the program that digest in its place and the report names it
(`secret_inputs`): a call whose arguments carried the secret then diverges (its arguments'
hash differs), and the replay says so rather than guessing the value.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

import msgspec

from charter.audit import Decision, Opened, Outcome, RunRecord, Sealed
from charter.compiler.artifact import CompiledContract
from charter.gate import ArgumentChecker, CallRequest, Denied, Encoded, InvalidArguments, OperationFailed, RunHalted
from charter.gate._contract import halt_message, recorded_arguments
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
    secret_inputs: tuple[str, ...] = ()  # inputs replayed as their digests (the values were never recorded)

    @property
    def identical(self) -> bool:
        return not self.divergences and self.recorded_outcome == self.replayed_outcome


class _ReplayGate:
    """Answers each call from the record; any difference is a divergence, and refused."""

    blocking = False

    def __init__(self, record: RunRecord, contract: CompiledContract) -> None:
        self.decisions = {r.call: r for r in record.receipts if isinstance(r, Decision)}
        self.outcomes = {r.call: r for r in record.receipts if isinstance(r, Outcome)}
        self.halted_at = max(self.decisions) if record.sealed and record.sealed.status == "halted" else None
        self.denials = 0
        self._checker = ArgumentChecker.for_table(contract.gate)
        self.divergences: list[str] = []
        self.calls = 0

    def _diverge(self, message: str) -> Denied:
        self.divergences.append(message)
        return Denied("REPLAY_DIVERGED", f"replay diverged: {message}")

    def _digest(self, request: CallRequest) -> str:
        """The arguments' hash exactly as the gate recorded it for this call."""
        checked = None
        if request.malformed is None:
            # Arguments that fail the check are recorded as the program sent them.
            with contextlib.suppress(InvalidArguments, KeyError):
                checked = self._checker.check(request.operation, request.arguments)
        return recorded_arguments(request, checked)[1]

    def call(self, request: CallRequest) -> Any:
        self.calls += 1
        n = request.sequence
        decision = self.decisions.get(n)
        if decision is None:
            raise self._diverge(f"call {n} ({request.operation}) was not made in the recorded run")
        digest = self._digest(request)
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


def replay_run(record: RunRecord, contract: CompiledContract, sandbox: Sandbox) -> ReplayReport:
    """Re-run `record`'s program against its own receipts. `contract` must be the pinned version."""
    opened = record.opened
    if not isinstance(opened, Opened):
        runs = ", ".join(program_runs_of(record)) or "none"
        raise ValueError(f"run {opened.run_id} answers an intent; replay its program runs instead: {runs}")
    if contract.sha256 != opened.contract_sha256:
        raise ValueError(
            f"run {opened.run_id} ran under {opened.contract} {opened.version} sha256 {opened.contract_sha256[:12]}, "
            f"not {contract.sha256[:12]}"
        )
    gate = _ReplayGate(record, contract)
    context = RunContext(
        principal=Principal(opened.principal, frozenset(opened.scopes)),
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
    return ReplayReport(
        run_id=opened.run_id,
        recorded_calls=len(gate.decisions),
        replayed_calls=gate.calls,
        divergences=tuple(divergences),
        recorded_outcome=record.sealed.outcome if isinstance(record.sealed, Sealed) else None,
        replayed_outcome=outcome_json(outcome),
        secret_inputs=opened.secret_inputs,
    )


def program_runs_of(record: RunRecord) -> list[str]:
    """The program runs an intent run's attempts started, in order."""
    return record.program_runs()
