"""One governed run: open its audit record, run the program in the sandbox behind the
contract gate, seal the record, and hand back only the conclusion.

    runner = Runner(audit=AuditLog(path))
    execution = runner.execute(program, contract=compiled, principal=Principal("ada", {"orders:read"}))

The Runtime Agent (a later stage) hands its programs to the same `execute`.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from charter.audit import AuditLog, Decision, Opened, Sealed, now_iso
from charter.audit import Outcome as CallOutcome
from charter.audit.receipts import text_sha256
from charter.audit.store import RunRecorder, host_identity
from charter.backends import Backend, BackendUnavailable, ContractBackend
from charter.compiler.artifact import CompiledContract
from charter.errors import AuditError
from charter.gate import ContractGate
from charter.inputs import check_inputs
from charter.principal import Principal
from charter.replay._answers import RecordedAnswers, ResumeGate
from charter.sandbox import (
    Completed,
    Halted,
    Outcome,
    Paused,
    ProgramError,
    Refused,
    RunContext,
    Sandbox,
    SandboxLimits,
    outcome_json,
)
from charter.status import GateDecision, RunStatus, Status, deciding_decision, status_of_outcome

if TYPE_CHECKING:
    from charter.gate import GrantedApproval

__all__ = ["Answer", "Execution", "Runner", "Status", "conclusion_of", "execution_of", "unavailable_calls"]


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """What a caller gets back: the conclusion and the run id to look it up by."""

    run_id: str
    status: Status  # the one vocabulary of charter.status
    answer: str | None = None  # the conclusion when done
    data: Any = None
    reason: str | None = None  # why, when refused or failed
    cause: str | None = None  # the machine word for why: an outcome tag or a gate code (charter.status)
    # The gate decision that decided a refused or failed run, from its receipt; None when none
    # did (refuse(), a timeout...: `cause` names the outcome). charter.status.GateDecision.
    decision: GateDecision | None = None
    contract: str | None = None  # the contract and the version the run resolved to
    version: str | None = None
    # Calls the server could not perform (a binding module missing, failing to import or
    # changed since publish): a server fault, which the surfaces report as such.
    unavailable: tuple[str, ...] = ()
    # awaiting_approval: the approval the run waits for (charter.approvals), else None.
    approval_id: str | None = None

    @property
    def text(self) -> str:
        return self.answer if self.status == "done" and self.answer is not None else f"{self.status}: {self.reason}"


class Execution(Answer, frozen=True, kw_only=True):
    """One program run's answer, with the sandbox's full account for engineers."""

    outcome: Outcome
    calls: tuple[Decision | CallOutcome, ...] = ()  # the run's decision and outcome receipts, in order
    in_doubt: tuple[int, ...] = ()  # allowed calls whose outcome was never learned


def conclusion_of(outcome: Outcome, *, unavailable: bool = False) -> tuple[RunStatus, str | None, Any, str | None]:
    """(status and cause, answer, data, reason), by the rule of `charter.status.classify`:
    a ContractViolation the program did not catch, or the gate halting it, means refused;
    `unavailable` (a call was BACKEND_UNAVAILABLE) makes a failed run's cause that."""
    status = status_of_outcome(outcome, unavailable=unavailable)
    if isinstance(outcome, Completed):
        return status, outcome.answer, outcome.data, None
    if isinstance(outcome, Refused | Halted):
        return status, None, None, outcome.reason
    if isinstance(outcome, ProgramError) and outcome.violation is not None:
        return status, None, None, outcome.error_message
    return status, None, None, outcome.message


class Runner:
    """Runs programs against contracts: sandbox, gate and audit log together. Thread-safe."""

    def __init__(
        self,
        *,
        audit: AuditLog,
        sandbox: Sandbox | None = None,
        backend_for: Callable[[CompiledContract], Backend] = ContractBackend,
    ) -> None:
        self.audit = audit
        self.sandbox = sandbox or Sandbox()
        self._backend_for = backend_for
        self._gates: dict[str, ContractGate] = {}
        self._lock = threading.Lock()

    def gate_for(self, contract: CompiledContract) -> ContractGate:
        with self._lock:
            gate = self._gates.get(contract.sha256)
            if gate is None:
                gate = self._gates[contract.sha256] = ContractGate(contract, self._backend_for(contract))
            return gate

    def execute(
        self,
        program: str,
        *,
        contract: CompiledContract,
        principal: Principal,
        intent: str | None = None,
        limits: SandboxLimits | None = None,
        parent: str | None = None,
        attempt: int | None = None,
        run_id: str | None = None,
        writes_closed: str | None = None,
        logical_run_id: str | None = None,
        inputs: Mapping[str, str] | None = None,
        secret_inputs: Collection[str] = (),
    ) -> Execution:
        """Run `program` once. `parent`/`attempt` name the intent run it answers, `run_id`
        a run id chosen beforehand (the agent records it before the run), `writes_closed`
        why every write of this run is to be denied, `logical_run_id` the first run of the
        chain this run continues (write idempotency keys derive from it; None: this run).
        `inputs`: the request's named values (the program's `inputs` mapping, and provenance's
        `request` source); those named in `secret_inputs` are recorded as keyed digests.
        Raises UsageError for inputs of the wrong shape (charter.inputs.check_inputs)."""
        given, secret = check_inputs(inputs, secret_inputs)
        gate = self.gate_for(contract)
        limits = limits or SandboxLimits.from_contract(contract.gate.limits)
        context = RunContext(principal=principal, inputs=given)
        if run_id is not None:
            context = msgspec.structs.replace(context, run_id=run_id)
        recorded = {k: self.audit.secret_key.digest(v) if k in secret else v for k, v in given.items()}
        host, pid = host_identity()
        opened = Opened(
            run_id=context.run_id,
            seq=0,
            at=now_iso(),
            intent=intent,
            program=program,
            program_sha256=text_sha256(program),
            principal=principal.id,
            scopes=tuple(sorted(principal.scopes)),
            contract=contract.name,
            version=contract.version,
            contract_sha256=contract.sha256,
            clock=context.clock.isoformat(),
            seed=context.seed,
            limits=dataclasses.asdict(limits),
            host=host,
            pid=pid,
            parent=parent,
            attempt=attempt,
            logical_run_id=logical_run_id,
            attributes=dict(principal.attributes) or None,
            inputs=recorded or None,
            secret_inputs=secret,
        )
        recorder = self.audit.open_run(opened)
        with _opened(opened.run_id):
            session = gate.session(
                recorder,
                principal,
                max_result_bytes=limits.max_result_bytes,
                writes_closed=writes_closed,
                logical_run_id=logical_run_id,
                request=(*([intent] if intent else []), *given.values()),
                inputs=given,
                secret_inputs=tuple(given[name] for name in secret),
            )
            outcome = self.sandbox.run(program, contract=contract, gate=session, context=context, limits=limits)
            return self._sealed(recorder, outcome)

    def resume_run(
        self,
        paused: Opened,
        *,
        contract: CompiledContract | None,
        principal: Principal,
        approval_id: str,
        approval_link: str,
        approval: GrantedApproval | None = None,
        answers: RecordedAnswers | None = None,
        recovers: tuple[str, ...] = (),
        stop: tuple[str, str] | None = None,
    ) -> Execution:
        """Open a new program run resuming `paused` (a run sealed awaiting approval `approval_id`,
        decided by the record whose link is `approval_link`) and run the same program with its
        recorded clock, seed, inputs and limits in a fresh sandbox, as `principal`, behind the
        gate session that holds the decision (`approval`), wrapped by the record's `answers`
        (charter.replay.ResumeGate: calls the chain made are answered from their receipts).
        `recovers`: earlier resumes of this approval that were never sealed. `stop` (code,
        reason): the resume must not run (TAMPERED, PRINCIPAL_REVOKED...): the run is opened and
        sealed at once as Halted with them, and nothing executes. charter.approvals.resume
        decides all of these; this only runs what it decided."""
        context = RunContext(
            principal=principal,
            clock=datetime.fromisoformat(paused.clock),
            seed=paused.seed,
            inputs=dict(paused.inputs or {}),
        )
        limits = SandboxLimits(**paused.limits)
        host, pid = host_identity()
        opened = msgspec.structs.replace(
            paused,
            run_id=context.run_id,
            at=now_iso(),
            principal=principal.id,
            scopes=tuple(sorted(principal.scopes)),
            attributes=dict(principal.attributes) or None,
            host=host,
            pid=pid,
            parent=None,
            attempt=None,
            logical_run_id=paused.logical_run_id or paused.run_id,
            resumes=paused.run_id,
            approval_id=approval_id,
            approval_link=approval_link,
            recovers=recovers,
            log_seq=0,
            prev="",
            log_prev="",
            key_id="",
        )
        recorder = self.audit.open_run(opened)
        if stop is not None:
            return self._sealed(recorder, Halted(code=stop[0], reason=stop[1]))
        if contract is None or contract.sha256 != paused.contract_sha256:
            raise ValueError(
                f"run {paused.run_id} must be resumed on its pinned contract {paused.contract_sha256[:12]}"
            )
        given = dict(paused.inputs or {})
        session = self.gate_for(contract).session(
            recorder,
            principal,
            max_result_bytes=limits.max_result_bytes,
            logical_run_id=opened.logical_run_id,
            request=(*([paused.intent] if paused.intent else []), *given.values()),
            inputs=given,
            approval=approval,
        )
        gate = ResumeGate(session, answers) if answers is not None else session
        with _opened(opened.run_id):
            outcome = self.sandbox.run(paused.program, contract=contract, gate=gate, context=context, limits=limits)
            return self._sealed(recorder, outcome)

    def _sealed(self, recorder: RunRecorder, outcome: Outcome) -> Execution:
        """Seal the run with `outcome` and give its answer."""
        calls = tuple(r for r in recorder.written if isinstance(r, Decision | CallOutcome))
        assert isinstance(recorder.opened, Opened)  # a program run
        sealed = recorder.seal(sealed_receipt(recorder.run_id, outcome, unavailable=bool(unavailable_calls(calls))))
        return execution_of(self.audit, recorder.opened, outcome, calls, sealed)


def execution_of(
    audit: AuditLog,
    opened: Opened,
    outcome: Outcome,
    calls: tuple[Decision | CallOutcome, ...],
    sealed: Sealed,
) -> Execution:
    """A sealed program run's answer: from the run just sealed, or from the log's receipts (a
    resume already sealed, charter.approvals). `calls`: its Decision and Outcome receipts."""
    unavailable = unavailable_calls(calls)
    status, answer, data, reason = conclusion_of(outcome, unavailable=bool(unavailable))
    denied = any(isinstance(c, Decision) and c.decision == "DENY" for c in calls)
    decision = deciding_decision(status.status, status.cause, audit.stored(opened.run_id)) if denied else None
    return Execution(
        run_id=opened.run_id,
        status=status.status,
        cause=status.cause,
        decision=decision,
        answer=answer,
        data=data,
        reason=reason,
        outcome=outcome,
        calls=calls,
        in_doubt=sealed.in_doubt,
        contract=opened.contract,
        version=opened.version,
        unavailable=unavailable,
        approval_id=outcome.approval_id if isinstance(outcome, Paused) else None,
    )


def unavailable_calls(calls: tuple[Decision | CallOutcome, ...]) -> tuple[str, ...]:
    """The messages of the calls a misconfigured backend could not perform (BACKEND_UNAVAILABLE)."""
    return tuple(c.message or "" for c in calls if c.code == BackendUnavailable.CODE)


def sealed_receipt(run_id: str, outcome: Outcome, *, unavailable: bool = False) -> Sealed:
    status = status_of_outcome(outcome, unavailable=unavailable)
    return Sealed(
        run_id=run_id,
        seq=0,
        at=now_iso(),
        status=str(outcome.__struct_config__.tag),
        outcome=outcome_json(outcome),
        calls=outcome.stats.calls,
        wall_ms=round(outcome.stats.wall_ms, 3),
        cpu_ms=round(outcome.stats.cpu_ms, 3),
        receipts=0,
        in_doubt=(),
        run_status=status.status,
        cause=status.cause,
        approval_id=outcome.approval_id if isinstance(outcome, Paused) else None,
    )


@contextmanager
def _opened(run_id: str) -> Iterator[None]:
    """An AuditError after the run's opening names the run: its program may have acted, so a
    server keeps the request's Idempotency-Key claimed instead of letting a retry run it again."""
    try:
        yield
    except AuditError as error:
        if error.opened_run is None:
            error.opened_run = run_id
        raise
