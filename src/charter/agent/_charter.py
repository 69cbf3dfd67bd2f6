"""The Runtime Agent: an intent in, one governed program, a conclusion out.

    charter = Charter()                                   # Claude; or Charter(model=ScriptedModel([...]))
    conclusion = charter.handle("Cancel order 123", contract="orders", principal=Principal("ada", {...}))
    conclusion.status, conclusion.text, conclusion.run_id

One request is one *intent run* in the audit log:

    Asked → Attempted → (its program run) → Attempted → ... → Concluded

Each attempt: ask the model (instructions and contract block first, cached; the intent
and the conversation after them), find the one program in its answer, check it
statically, record the attempt durably, run the program (sandbox, gate, receipts) as a
program run of its own. Then:

- done or refused by the program ends the request;
- a static finding, a program error, a resource limit: the exact error goes back to the
  model, at most `repair_rounds` times;
- a DENY for policy reasons (scope, lifecycle state, guard, sequence...) means the request
  is refused. The model gets one round to explain it, with writes closed: the gate denies
  every write of that round (WRITES_CLOSED), so no repair reaches the forbidden effect by
  another route. Whatever that round says, the conclusion is `refused`;
- once a write took effect, writes are closed too: a repair may read and conclude, never
  make a write a second time;
- a program run paused for a human's approval ends the request at once, `awaiting_approval`
  (no retry, no explanation round): the approval names what waits, and a resumed run of that
  program continues it once decided (charter.approvals).
"""

from __future__ import annotations

import getpass
import secrets
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from charter.agent._model import AgentSettings, Message, Model, ModelRequest, Usage
from charter.agent._program import check_program, extract_program
from charter.audit import Asked, Attempted, AuditLog, Concluded, Decision, Outcome, RunRecorder, now_iso
from charter.audit.receipts import ALLOW, DENY, text_sha256
from charter.audit.store import host_identity
from charter.backends import Backend, ContractBackend
from charter.compiler.artifact import CompiledContract
from charter.compiler.render import render_text
from charter.errors import ModelUnavailable, UsageError
from charter.inputs import check_inputs
from charter.principal import Principal
from charter.registry import Registry, parse_ref
from charter.runner import Answer, Execution, Runner
from charter.sandbox import Completed, Halted, Paused, ProgramError, Refused, Sandbox, Trapped, allowed_modules
from charter.status import APPROVAL_REQUIRED, Status, deciding_decision, status_of_outcome

__all__ = ["Charter", "Conclusion"]

# Denials that mean the program was wrong, not the request: repaired like any bug.
_PROGRAM_FAULTS = frozenset({"UNKNOWN_OPERATION", "MALFORMED_CALL", "ARGUMENTS_TOO_LARGE", "INVALID_ARGUMENTS"})


class Conclusion(Answer, frozen=True, kw_only=True):
    """What the caller of `Charter.handle` gets: the conclusion, never the program.

    `run_id` names the intent run (`charter audit show RUN`); `attempts` counts model
    answers (one when the first program was right); `usage` sums their tokens.
    """

    attempts: int
    usage: Usage


@dataclass
class _Request:
    """What one request has learned so far, across its attempts."""

    ended: list[str] = field(default_factory=list)  # how each attempt ended
    program_runs: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    writes_closed: str | None = None
    refusal: str | None = None  # the gate's word, once a policy denial made this request refused
    refusal_code: str | None = None  # that denial's code: the request's cause
    last_answer: str = ""  # the model's latest answer, verbatim, for the conversation
    last_problem: str = ""
    unavailable: tuple[str, ...] = ()  # calls the server could not perform (its fault, not the program's)
    inputs: dict[str, str] = field(default_factory=dict)  # the request's inputs, handed to every program run
    secret_inputs: tuple[str, ...] = ()
    approval_id: str | None = None  # a program run paused: the approval the request waits for

    def refused_or(self, status: Status, cause: str, reason: str) -> _Final:
        if self.refusal is not None:
            return "refused", self.refusal_code, None, None, self.refusal
        return status, cause, None, None, reason


@dataclass(frozen=True, slots=True)
class _Next:
    """Another attempt, told this."""

    feedback: str


_Final = tuple[Status, str | None, str | None, Any, str | None]  # status, cause, answer, data, reason


class Charter:
    """The Runtime Agent with its runner. Thread-safe: each `handle` call is independent.

    `model` defaults to Claude (AnthropicModel, needs ANTHROPIC_API_KEY); `registry` and
    `audit` default to the ones under CHARTER_HOME; `settings` to AgentSettings.from_env().
    """

    def __init__(
        self,
        *,
        model: Model | None = None,
        settings: AgentSettings | None = None,
        registry: Registry | None = None,
        audit: AuditLog | None = None,
        sandbox: Sandbox | None = None,
        runner: Runner | None = None,
        backend_for: Callable[[CompiledContract], Backend] = ContractBackend,
    ) -> None:
        self.settings = settings or AgentSettings.from_env()
        self._model = model
        self._registry = registry
        self.runner = runner or Runner(audit=audit or AuditLog(), sandbox=sandbox, backend_for=backend_for)
        self._instructions = render_text("agent_system.md.j2", allowed_modules=allowed_modules())

    @property
    def model(self) -> Model:
        if self._model is None:
            from charter.agent._anthropic import AnthropicModel

            self._model = AnthropicModel(self.settings)
        return self._model

    def contract(self, contract: str | CompiledContract) -> CompiledContract:
        if isinstance(contract, CompiledContract):
            return contract
        if self._registry is None:
            self._registry = Registry()
        return self._registry.get(*parse_ref(contract))

    def handle(
        self,
        intent: str,
        *,
        contract: str | CompiledContract,
        principal: Principal | None = None,
        run_id: str | None = None,
        inputs: Mapping[str, str] | None = None,
        secret_inputs: Collection[str] = (),
    ) -> Conclusion:
        """Answer `intent` under `contract` (NAME, NAME@VERSION or a compiled contract) for
        `principal` (default: the local user, with no scopes). `run_id`: the intent run's id,
        chosen beforehand (a server records it with the request's Idempotency-Key first).
        `inputs`: named values the programs read as inputs['name'] (the prompt names them,
        never shows them); each program run's Opened receipt records them, those in
        `secret_inputs` as keyed digests (UsageError for a bad shape)."""
        settings = self.settings
        compiled = self.contract(contract)
        principal = principal or Principal(getpass.getuser())
        intent = self._checked_intent(intent)
        given, secret = check_inputs(inputs, secret_inputs)
        model = self.model
        host, pid = host_identity()
        recorder = self.runner.audit.open_run(
            Asked(
                run_id=run_id or secrets.token_hex(16),
                seq=0,
                at=now_iso(),
                intent=intent,
                principal=principal.id,
                scopes=tuple(sorted(principal.scopes)),
                contract=compiled.name,
                version=compiled.version,
                contract_sha256=compiled.sha256,
                model=model.name,
                settings=msgspec.structs.asdict(settings),
                host=host,
                pid=pid,
                attributes=dict(principal.attributes) or None,
            )
        )
        prompt = render_text("agent_intent.md.j2", intent=intent, principal=principal, inputs=sorted(given))
        conversation = [Message("user", prompt)]
        request = _Request(inputs=given, secret_inputs=secret)
        final: _Final | None = None
        attempts = 0
        while final is None and attempts <= settings.repair_rounds:
            attempts += 1
            asked = ModelRequest(
                model=settings.model,
                max_tokens=settings.max_tokens,
                instructions=self._instructions,
                contract_block=compiled.prompt_context,
                messages=tuple(conversation),
            )
            step = self._attempt(attempts, asked, model, compiled, principal, intent, recorder, request)
            if isinstance(step, _Next):
                conversation += [Message("assistant", request.last_answer), Message("user", step.feedback)]
            else:
                final = step
        if final is None:
            final = request.refused_or(
                "failed",
                request.ended[-1] if request.ended else "no_attempt",
                f"no program ended the request within {attempts} attempts (1 + {settings.repair_rounds} repair "
                f"rounds); the last problem: {request.last_problem}",
            )
        status, cause, answer, data, reason = final
        # The denial the refusal rests on, from its receipt in the program runs (None: none decided it).
        decision = deciding_decision(
            status,
            cause,
            (row for run in request.program_runs for row in self.runner.audit.stored(run)),
            first=True,
        )
        recorder.conclude(
            Concluded(
                run_id=recorder.run_id,
                seq=0,
                at=now_iso(),
                status=status,
                answer=answer,
                data=None if data is None else msgspec.json.encode(data).decode("utf-8"),
                reason=reason,
                attempts=tuple(request.ended),
                program_runs=tuple(request.program_runs),
                usage=request.usage.as_dict(),
                receipts=0,
                cause=cause,
                approval_id=request.approval_id,
            )
        )
        return Conclusion(
            run_id=recorder.run_id,
            status=status,
            cause=cause,
            decision=decision,
            answer=answer,
            data=data,
            reason=reason,
            attempts=attempts,
            usage=request.usage,
            contract=compiled.name,
            version=compiled.version,
            unavailable=request.unavailable,
            approval_id=request.approval_id,
        )

    def _checked_intent(self, intent: str) -> str:
        if not isinstance(intent, str) or not intent.strip():
            raise UsageError("the intent is empty: say what should be done, e.g. 'Cancel order 123'")
        if len(intent) > self.settings.max_intent_chars:
            raise UsageError(
                f"the intent is {len(intent)} characters, more than the {self.settings.max_intent_chars} allowed "
                "(AgentSettings.max_intent_chars); say it in fewer words"
            )
        return intent

    def _attempt(
        self,
        attempt: int,
        asked: ModelRequest,
        model: Model,
        compiled: CompiledContract,
        principal: Principal,
        intent: str,
        recorder: RunRecorder,
        request: _Request,
    ) -> _Next | _Final:
        def record(**fields: Any) -> None:
            recorder.attempt(
                Attempted(
                    run_id=recorder.run_id,
                    seq=0,
                    at=now_iso(),
                    attempt=attempt,
                    prompt_sha256=asked.prompt_sha256,
                    contract_block_sha256=asked.contract_block_sha256,
                    writes_closed=request.writes_closed,
                    **fields,
                )
            )

        try:
            reply = model.complete(asked)
        except ModelUnavailable as error:
            record(model=model.name, api_error=str(error), api_tries=error.tries)
            request.ended.append("api_error")
            return request.refused_or("failed", "api_error", f"the model gave no answer: {error}")
        request.usage += reply.usage
        request.last_answer = reply.text
        program, missing = extract_program(reply.text)
        findings = check_program(program, compiled) if program is not None else ()
        run_id = secrets.token_hex(16) if program is not None and not findings else None
        record(
            model=reply.model,
            usage=reply.usage.as_dict(),
            stop_reason=reply.stop_reason,
            request_id=reply.request_id,
            response=reply.raw,
            api_tries=reply.tries,
            program=program,
            program_sha256=None if program is None else text_sha256(program),
            check=findings,
            program_run=run_id,
        )
        if program is None:
            request.ended.append("no_program")
            request.last_problem = f"the answer held no program: {missing}"
            return _Next(render_text("agent_repair.md.j2", kind="no_program", detail=missing))
        if findings:
            request.ended.append("check_failed")
            request.last_problem = "; ".join(findings)
            return _Next(render_text("agent_repair.md.j2", kind="check", findings=findings))
        assert run_id is not None
        execution = self.runner.execute(
            program,
            contract=compiled,
            principal=principal,
            intent=intent,
            parent=recorder.run_id,
            attempt=attempt,
            run_id=run_id,
            writes_closed=request.writes_closed,
            inputs=request.inputs,
            secret_inputs=request.secret_inputs,
        )
        request.program_runs.append(run_id)
        request.ended.append(str(execution.outcome.__struct_config__.tag))
        return self._judge(execution, compiled, request)

    def _judge(self, execution: Execution, compiled: CompiledContract, request: _Request) -> _Next | _Final:
        outcome = execution.outcome
        if execution.unavailable:  # a misconfigured server: no repair of the program can help
            request.unavailable = execution.unavailable
            reason = "the backend is unavailable: " + "; ".join(execution.unavailable)
            return "failed", "BACKEND_UNAVAILABLE", None, None, reason
        if isinstance(outcome, Paused):  # a human decides now: no retry, no explanation round
            if request.refusal is not None:  # an explanation round never waits for a human
                return request.refused_or("refused", APPROVAL_REQUIRED, "")
            request.approval_id = outcome.approval_id
            data = {
                "approval_id": outcome.approval_id,
                "run_id": execution.run_id,
                "operation": outcome.operation,
                "call": outcome.call,
                "reason": outcome.reason,
            }
            return "awaiting_approval", APPROVAL_REQUIRED, None, data, outcome.message
        operations = compiled.gate.operations
        decisions = {c.call: c for c in execution.calls if isinstance(c, Decision)}
        # WRITES_CLOSED before any refusal means the program tried to repeat a write that
        # already took effect: a fault of the program, repaired like the others.
        faults = _PROGRAM_FAULTS if request.refusal is not None else _PROGRAM_FAULTS | {"WRITES_CLOSED"}
        policy_denial = next(
            (d for d in decisions.values() if d.decision == DENY and d.code not in faults and d.code != "GATE_ERROR"),
            None,
        )
        explaining = request.refusal is not None
        if policy_denial is not None and request.refusal is None:
            request.refusal = policy_denial.message
            request.refusal_code = policy_denial.code
        effects = _effects(execution, decisions, operations)
        if effects:
            request.writes_closed = (
                f"writes already took effect in this request ({'; '.join(effects)}); a repair may only read"
            )

        ran = status_of_outcome(outcome)
        if isinstance(outcome, Completed):
            if request.refusal is not None:  # the program caught the denial and explained it
                return "refused", request.refusal_code, None, None, outcome.answer
            return "done", ran.cause, outcome.answer, outcome.data, None
        if isinstance(outcome, Refused | Halted):
            return "refused", request.refusal_code or ran.cause, None, None, outcome.reason
        if isinstance(outcome, Trapped):
            return request.refused_or("failed", ran.cause or "trap", outcome.message)
        violation = outcome.violation if isinstance(outcome, ProgramError) else None
        if violation is not None and violation.code == "GATE_ERROR":
            message = outcome.error_message if isinstance(outcome, ProgramError) else ""
            return request.refused_or("failed", violation.code, message)
        if policy_denial is not None:
            if explaining:  # the explanation round failed too: the gate's own words stand
                return request.refused_or("refused", policy_denial.code, "")
            request.writes_closed = (
                f"{policy_denial.operation} was denied ({policy_denial.code}) earlier in this request, "
                "so this request may only read and explain"
            )
            return _Next(render_text("agent_repair.md.j2", kind="denied", denial=policy_denial))
        detail = outcome.format_traceback() if isinstance(outcome, ProgramError) else outcome.message
        if violation is not None:
            denied = next((d for d in decisions.values() if d.decision == DENY), None)
            if denied is not None and denied.clause:
                detail += f"\n(contract clause {denied.clause})"
        request.last_problem = outcome.message
        return _Next(render_text("agent_repair.md.j2", kind="error", detail=detail, effects=effects))


def _effects(execution: Execution, decisions: dict[int, Decision], operations: dict[str, Any]) -> list[str]:
    """Writes of this run that took effect, or may have (in doubt)."""
    effects = []
    for receipt in execution.calls:
        if not isinstance(receipt, Outcome) or operations[receipt.operation].kind != "write":
            continue
        if receipt.status == "ok":
            effects.append(f"{receipt.operation}({decisions[receipt.call].arguments}) succeeded")
        elif receipt.code in ("RESULT_INVALID", "RESULT_TOO_LARGE"):  # the write ran; its answer was withheld
            effects.append(f"{receipt.operation}({decisions[receipt.call].arguments}) took effect ({receipt.code})")
    for call in execution.in_doubt:
        decision = decisions[call]
        if decision.decision == ALLOW and operations[decision.operation].kind == "write":
            effects.append(f"{decision.operation}({decision.arguments}) may have taken effect (outcome unknown)")
    return effects
