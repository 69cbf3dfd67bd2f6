"""The contract gate: one decision per proxy call, recorded before anything acts.

Checks, in this order; the first that fails decides, with its reason code:

 1. the call decoded and names an operation of the pinned version
                                      UNKNOWN_OPERATION, MALFORMED_CALL, ARGUMENTS_TOO_LARGE
 2. the arguments have the declared types                        INVALID_ARGUMENTS
 2b. writes are open for this run (the agent closes them once a request's write
     was denied, so a repair cannot reach the same effect another way)  WRITES_CLOSED
 3. the principal holds every scope the operation needs          FORBIDDEN_SCOPE
 4. the operation does not need a human approval                 APPROVAL_REQUIRED
 5. the run is within its write limit                            LIMIT_EXCEEDED
 6. the operations it must follow succeeded earlier in the run   SEQUENCE_VIOLATION
 7. the same write was not already made in this run              REPLAY
    (the same write with the same arguments is not run again: the first result is returned)
 8. the entity is read through the contract's read operation     NOT_FOUND, GATE_ERROR
 9. the lifecycle allows the transition from its current state   STATE_VIOLATION
10. every CEL guard holds                                        GUARD_VIOLATION

Checks that need no backend come first, so a call refused anyway never reads state.
Any exception inside the gate is a DENY (GATE_ERROR), never an ALLOW. The decision is
committed as a signed receipt before the backend is called; the backend gets the
state observed in step 8 as a precondition, so a change in between is refused by the
write instead of overwritten. After `max_denials` denials the run is ended (RunHalted).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import cel
import msgspec

from charter.audit import Decision, Observed, Outcome, RunRecorder, args_digest, now_iso
from charter.backends import Backend, BackendFailure, CallContext, Precondition, PreconditionFailed, fingerprint
from charter.compiler.artifact import CompiledContract, GuardRule, OperationRule
from charter.contract.cel_guards import activation
from charter.contract.types import MONEY_SCALE, TypeRef
from charter.errors import AuditError
from charter.gate._arguments import ArgumentChecker, InvalidArguments
from charter.gate._protocol import CallRequest, Denied, Encoded, OperationFailed, RunHalted, encode_reply
from charter.principal import Principal

__all__ = ["ContractGate", "GateSession", "halt_message", "recorded_arguments"]


def halt_message(denial: str, denials: int) -> str:
    return f"{denial} The run made {denials} denied calls, its limit (limits.max_denials); the gate ended it."


def recorded_arguments(request: CallRequest, checked: Mapping[str, Any] | None) -> tuple[str | None, str]:
    """(canonical JSON or None, sha256) of a call's arguments as its decision receipt records them:
    the checked values when they validated, else what the program sent."""
    if request.malformed is not None:
        return None, request.malformed.raw_sha256
    if checked is not None:
        return args_digest(checked)
    return None, args_digest(request.arguments)[1]


@dataclass(frozen=True, slots=True)
class _Verdict:
    code: str
    message: str
    clause: str | None = None
    boundary: str | None = None

    @property
    def allowed(self) -> bool:
        return self.code in ("OK", "REPLAYED")


_OK = _Verdict("OK", "allowed")
_REPLAYED = _Verdict(
    "REPLAYED", "the same write already ran in this run; its first result is returned, nothing runs again"
)


class _Refusal(Exception):
    def __init__(self, verdict: _Verdict) -> None:
        super().__init__(verdict.message)
        self.verdict = verdict


@dataclass(frozen=True, slots=True)
class _CompiledGuard:
    rule: GuardRule
    program: Any  # cel.Program
    uses_entity: bool


class ContractGate:
    """Built once per contract version and backend; `session` gives each run its own state."""

    def __init__(self, contract: CompiledContract, backend: Backend) -> None:
        self.contract = contract
        self.backend = backend
        table = contract.gate
        self._table = table
        self._checker = ArgumentChecker.for_table(table)
        self._guards: dict[str, tuple[_CompiledGuard, ...]] = {}
        for name, rule in table.operations.items():
            programs = [(g, cel.compile(g.when)) for g in rule.guards]
            self._guards[name] = tuple(_CompiledGuard(g, p, "entity" in p.variables()) for g, p in programs)
        self._boundary_text = {b.id: b.text for b in table.boundaries}
        # "approval:op" / "scope:op" -> the boundaries that rule enforces (named in the denial)
        self._rule_boundaries: dict[str, tuple[str, ...]] = {}
        for b in table.boundaries:
            for ref in b.enforced_by:
                self._rule_boundaries[ref] = (*self._rule_boundaries.get(ref, ()), b.id)

    def session(self, recorder: RunRecorder, principal: Principal, *, writes_closed: str | None = None) -> GateSession:
        """`writes_closed`, when given, says why this run may only read: every write is denied
        with WRITES_CLOSED (the Runtime Agent sets it once a request's write was denied)."""
        return GateSession(self, recorder, principal, writes_closed)

    def boundary_note(self, boundaries: tuple[str, ...]) -> tuple[str, str | None]:
        """(" (hard boundary id: text)", first id) for a message, or ("", None)."""
        if not boundaries:
            return "", None
        first = boundaries[0]
        return f" (hard boundary {first}: {self._boundary_text.get(first, '')})", first


@dataclass(slots=True)
class _RunState:
    writes: int = 0
    denials: int = 0
    succeeded: dict[str, set[str]] = field(default_factory=dict)  # operation -> entity keys (JSON) it succeeded on
    writes_made: dict[str, tuple[str, str]] = field(default_factory=dict)  # idempotency key -> (args hash, reply)


class GateSession:
    """The gate for one run: implements the sandbox's `Gate` protocol."""

    blocking = True  # every decision is committed to disk before it returns

    def __init__(
        self, gate: ContractGate, recorder: RunRecorder, principal: Principal, writes_closed: str | None = None
    ) -> None:
        self._gate = gate
        self._recorder = recorder
        self._principal = principal
        self._writes_closed = writes_closed
        self._state = _RunState()

    def call(self, request: CallRequest) -> Any:
        gate = self._gate
        rule = gate._table.operations.get(request.operation) if request.malformed is None else None
        arguments: dict[str, Any] | None = None
        recorded: tuple[str | None, str] | None = None  # the arguments' canonical JSON and hash
        observed: Observed | None = None
        precondition: Precondition | None = None
        idempotency_key: str | None = None
        replayed: str | None = None  # the first reply, when this write already ran
        try:
            if request.malformed is not None:
                raise _Refusal(_Verdict(request.malformed.code, request.malformed.message))
            if rule is None:
                contract = gate.contract
                message = f"contract {contract.name} {contract.version} has no operation {request.operation!r}"
                raise _Refusal(_Verdict("UNKNOWN_OPERATION", message))
            arguments = self._arguments(rule, request.arguments)
            recorded = recorded_arguments(request, arguments)
            self._static_checks(rule, arguments)
            idempotency_key = self._idempotency_key(request, rule, arguments, recorded[1])
            replayed = self._replay_check(rule, idempotency_key, arguments, recorded[1])
            if replayed is None:
                entity = None
                if self._needs_entity(rule):
                    entity, observed, precondition = self._read_entity(request, rule, arguments)
                self._state_checks(rule, arguments, entity)
            verdict = _OK if replayed is None else _REPLAYED
        except _Refusal as refusal:
            verdict = refusal.verdict
        except Exception as error:  # fail closed: a broken check is a denial
            message = f"{request.operation} refused: the gate failed ({type(error).__name__}: {error})"
            verdict = _Verdict("GATE_ERROR", message)

        self._record_decision(
            request, recorded or recorded_arguments(request, None), verdict, observed, idempotency_key
        )

        if not verdict.allowed:
            self._state.denials += 1
            if self._state.denials >= gate._table.limits.max_denials:
                message = halt_message(verdict.message, self._state.denials)
                raise RunHalted(verdict.code, message, boundary=verdict.boundary)
            raise Denied(verdict.code, verdict.message, boundary=verdict.boundary)
        assert rule is not None
        assert arguments is not None
        assert recorded is not None
        if replayed is not None:
            self._record_outcome(request, "replayed", reply=replayed)
            return Encoded(replayed)
        if rule.kind == "write":
            self._state.writes += 1
        return self._act(request, rule, arguments, recorded[1], precondition, idempotency_key)

    # -- checks ----------------------------------------------------------------------

    def _arguments(self, rule: OperationRule, raw: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return self._gate._checker.check(rule.name, raw)
        except InvalidArguments as error:
            raise _Refusal(
                _Verdict("INVALID_ARGUMENTS", f"{rule.name}: {error}", clause=f"params:{rule.name}")
            ) from None

    def _static_checks(self, rule: OperationRule, arguments: Mapping[str, Any]) -> None:
        if self._writes_closed is not None and rule.kind == "write":
            raise _Refusal(_Verdict("WRITES_CLOSED", f"{rule.name} refused: {self._writes_closed}"))
        missing = [s for s in rule.scopes if not self._principal.has(s)]
        if missing:
            held = ", ".join(sorted(self._principal.scopes)) or "no scopes"
            note, boundary = self._gate.boundary_note(self._gate._rule_boundaries.get(f"scope:{rule.name}", ()))
            raise _Refusal(
                _Verdict(
                    "FORBIDDEN_SCOPE",
                    f"{rule.name} needs scope {', '.join(missing)}; principal {self._principal.id} holds {held}.{note}",
                    clause=f"scopes:{rule.name}",
                    boundary=boundary,
                )
            )
        if rule.requires_approval:
            note, boundary = self._gate.boundary_note(self._gate._rule_boundaries.get(f"approval:{rule.name}", ()))
            raise _Refusal(
                _Verdict(
                    "APPROVAL_REQUIRED",
                    f"{rule.name} requires human approval before it runs, and Charter has no approval step yet; "
                    f"it is refused rather than run unapproved.{note}",
                    clause=f"requires_approval:{rule.name}",
                    boundary=boundary,
                )
            )
        limits = self._gate._table.limits
        if rule.kind == "write" and self._state.writes >= limits.max_writes:
            raise _Refusal(
                _Verdict(
                    "LIMIT_EXCEEDED",
                    f"{rule.name} refused: the run already made {self._state.writes} writes, "
                    f"the contract's limit (limits.max_writes = {limits.max_writes}).",
                    clause="limits:max_writes",
                )
            )
        for before in rule.after:
            if not self._followed(rule, before, arguments):
                note, boundary = self._gate.boundary_note(rule.after_boundaries)
                target = self._target(rule, arguments)
                raise _Refusal(
                    _Verdict(
                        "SEQUENCE_VIOLATION",
                        f"{rule.name}{target} must follow {before}{target} in the same run: expected step "
                        f"{before}, received step {rule.name}.{note}",
                        clause=f"sequence:{rule.name}",
                        boundary=boundary,
                    )
                )

    def _target(self, rule: OperationRule, arguments: Mapping[str, Any]) -> str:
        if rule.entity and rule.key and rule.key in arguments:
            return f" on {rule.entity} {arguments[rule.key]}"
        return ""

    def _followed(self, rule: OperationRule, before: str, arguments: Mapping[str, Any]) -> bool:
        earlier = self._gate._table.operations[before]
        done = self._state.succeeded.get(before, set())
        if rule.entity is not None and rule.entity == earlier.entity and rule.key and earlier.key:
            return _key_json(arguments.get(rule.key)) in done
        return bool(done)

    def _idempotency_key(
        self, request: CallRequest, rule: OperationRule, arguments: Mapping[str, Any], args_hash: str
    ) -> str | None:
        if rule.kind != "write":
            return None
        # One write per operation and entity per run; a create is identified by its arguments.
        target = _key_json(arguments[rule.key]) if rule.key else args_hash
        return hashlib.sha256(f"{request.run_id}\x1f{rule.name}\x1f{target}".encode()).hexdigest()[:32]

    def _replay_check(
        self, rule: OperationRule, idempotency_key: str | None, arguments: Mapping[str, Any], args_hash: str
    ) -> str | None:
        """The first reply if this exact write already ran in the run; REPLAY if it ran otherwise."""
        if idempotency_key is None or idempotency_key not in self._state.writes_made:
            return None
        first_args, first_reply = self._state.writes_made[idempotency_key]
        if args_hash == first_args:
            return first_reply
        message = (
            f"{rule.name}{self._target(rule, arguments)} refused: this run already made this write "
            "with other arguments; a run makes each write to an entity once"
        )
        raise _Refusal(_Verdict("REPLAY", message, clause="replay"))

    def _needs_entity(self, rule: OperationRule) -> bool:
        return rule.reader is not None and (
            rule.transition is not None or any(g.uses_entity for g in self._gate._guards[rule.name])
        )

    def _read_entity(
        self, request: CallRequest, rule: OperationRule, arguments: Mapping[str, Any]
    ) -> tuple[dict[str, Any], Observed, Precondition]:
        assert rule.reader is not None
        assert rule.key is not None
        assert rule.entity is not None
        reader = self._gate._table.operations[rule.reader]
        assert reader.key is not None
        key = arguments[rule.key]
        try:
            entity = self._gate.backend.invoke(reader.name, {reader.key: key}, self._context(request))
        except LookupError as error:
            raise _Refusal(
                _Verdict("NOT_FOUND", f"{rule.name} refused: {rule.entity} {key} was not found ({error}).")
            ) from None
        except Exception as error:
            raise _Refusal(
                _Verdict(
                    "GATE_ERROR",
                    f"{rule.name} refused: reading {rule.entity} {key} through {reader.name} failed "
                    f"({type(error).__name__}: {error}); the gate does not allow what it cannot check.",
                )
            ) from None
        if not isinstance(entity, Mapping):
            raise _Refusal(
                _Verdict("GATE_ERROR", f"{reader.name} returned {type(entity).__name__}, not a {rule.entity}")
            )
        entity = dict(entity)
        field_name = rule.transition.field if rule.transition else None
        state = entity.get(field_name) if field_name else None
        print_ = fingerprint(entity)
        observed = Observed(entity=rule.entity, key=key, state=state, fingerprint=print_)
        precondition = Precondition(entity=rule.entity, key=key, field=field_name, state=state, fingerprint=print_)
        return entity, observed, precondition

    def _state_checks(
        self, rule: OperationRule, arguments: Mapping[str, Any], entity: Mapping[str, Any] | None
    ) -> None:
        transition = rule.transition
        if transition is not None and entity is not None:
            state = entity.get(transition.field)
            if state not in transition.from_states:
                note, boundary = self._gate.boundary_note(transition.boundaries)
                raise _Refusal(
                    _Verdict(
                        "STATE_VIOLATION",
                        f"{rule.entity} {arguments[rule.key or '']} cannot be {transition.to}: it is {state}; "
                        f"{transition.name} is allowed only from {', '.join(transition.from_states)}.{note}",
                        clause=f"transition:{rule.entity}.{transition.name}",
                        boundary=boundary,
                    )
                )
        guards = self._gate._guards[rule.name]
        if not guards:
            return
        table = self._gate._table
        variables: dict[str, Any] = {
            "params": {p.name: _cel_value(arguments.get(p.name), p.type, table.records) for p in rule.params},
            "principal": {"id": self._principal.id, "scopes": sorted(self._principal.scopes)},
        }
        if entity is not None and rule.entity is not None:
            fields = table.records[rule.entity]
            variables["entity"] = {f: _cel_value(entity.get(f), t, table.records) for f, t in fields.items()}
        context = activation(variables)
        for guard in guards:
            if guard.uses_entity and "entity" not in variables:
                raise _Refusal(_Verdict("GATE_ERROR", f"guard {guard.rule.id} needs the entity, which was not read"))
            try:
                holds = guard.program.execute(context) is True
            except Exception as error:  # the checker tries nulls and types; name the guard if one still fails
                raise _Refusal(
                    _Verdict(
                        "GATE_ERROR",
                        f"{rule.name} refused: guard {guard.rule.id} could not be evaluated "
                        f"({type(error).__name__}: {str(error).split('. ')[0]}); the gate does not allow what it "
                        "cannot check.",
                        clause=f"guard:{guard.rule.id}",
                    )
                ) from None
            if not holds:
                note, boundary = self._gate.boundary_note(guard.rule.boundaries)
                raise _Refusal(
                    _Verdict(
                        "GUARD_VIOLATION",
                        f"{rule.name} refused: {guard.rule.message} (guard {guard.rule.id}){note}",
                        clause=f"guard:{guard.rule.id}",
                        boundary=boundary,
                    )
                )

    # -- acting and recording --------------------------------------------------------

    def _act(
        self,
        request: CallRequest,
        rule: OperationRule,
        arguments: dict[str, Any],
        args_hash: str,
        precondition: Precondition | None,
        idempotency_key: str | None,
    ) -> Encoded:
        context = self._context(request, idempotency_key=idempotency_key, precondition=precondition)
        try:
            reply = encode_reply(self._gate.backend.invoke(rule.name, arguments, context))
        except PreconditionFailed as error:
            message = f"{rule.name}: {error}"
            self._record_outcome(request, "failed", code="PRECONDITION_FAILED", message=message)
            raise OperationFailed("PRECONDITION_FAILED", message) from None
        except BackendFailure as failure:
            # In doubt: the request reached the backend, no answer came back. The receipt says
            # `unknown` and the call stays in doubt in the seal; nothing here sends it again.
            status: Literal["failed", "unknown"] = "unknown" if failure.in_doubt else "failed"
            self._record_outcome(request, status, code=failure.code, message=failure.message)
            raise OperationFailed(failure.code, failure.message) from None
        except OperationFailed as failed:
            self._record_outcome(request, "failed", code=failed.code, message=failed.message)
            raise
        except Exception as error:
            message = f"{rule.name} failed in the backend: {type(error).__name__}: {error}"
            self._record_outcome(request, "failed", code="BACKEND_ERROR", message=message)
            raise OperationFailed("BACKEND_ERROR", message) from None
        self._record_outcome(request, "ok", reply=reply)
        key = _key_json(arguments.get(rule.key)) if rule.key else ""
        self._state.succeeded.setdefault(rule.name, set()).add(key)
        if idempotency_key is not None:
            self._state.writes_made[idempotency_key] = (args_hash, reply)
        return Encoded(reply)

    def _context(
        self, request: CallRequest, *, idempotency_key: str | None = None, precondition: Precondition | None = None
    ) -> CallContext:
        return CallContext(
            run_id=request.run_id,
            call=request.sequence,
            principal=self._principal,
            idempotency_key=idempotency_key,
            precondition=precondition,
            deadline=request.deadline,
        )

    def _record_decision(
        self,
        request: CallRequest,
        recorded: tuple[str | None, str],
        verdict: _Verdict,
        observed: Observed | None,
        idempotency_key: str | None,
    ) -> None:
        contract = self._gate.contract
        shown, digest = recorded
        decision = Decision(
            run_id=request.run_id,
            seq=0,
            at=now_iso(),
            call=request.sequence,
            operation=request.operation,
            args_sha256=digest,
            arguments=shown,
            decision="ALLOW" if verdict.allowed else "DENY",
            code=verdict.code,
            message=verdict.message,
            clause=verdict.clause,
            boundary=verdict.boundary,
            contract=contract.name,
            version=contract.version,
            contract_sha256=contract.sha256,
            principal=self._principal.id,
            nonce=secrets.token_hex(16),
            idempotency_key=idempotency_key,
            observed=observed,
        )
        try:
            self._recorder.decision(decision)
        except AuditError as error:
            # No receipt, no action: the call is denied even though the checks passed.
            raise Denied(
                "GATE_ERROR", f"{request.operation} refused: its receipt could not be written ({error})"
            ) from None

    def _record_outcome(
        self,
        request: CallRequest,
        status: Literal["ok", "failed", "replayed", "unknown"],
        *,
        reply: str | None = None,
        code: str | None = None,
        message: str | None = None,
    ) -> None:
        outcome = Outcome(
            run_id=request.run_id,
            seq=0,
            at=now_iso(),
            call=request.sequence,
            operation=request.operation,
            status=status,
            code=code,
            message=message,
            result=reply,
            result_sha256=hashlib.sha256(reply.encode("utf-8")).hexdigest() if reply is not None else None,
        )
        self._recorder.outcome(outcome)


def _key_json(value: Any) -> str:
    return msgspec.json.encode(value).decode("utf-8")


def _cel_value(value: Any, ref: TypeRef, records: Mapping[str, Mapping[str, TypeRef]]) -> Any:
    """A Python value as guards see it: money in integer cents, records as maps."""
    if value is None:
        return None
    if ref.kind == "money":
        return int(Decimal(value).scaleb(MONEY_SCALE).to_integral_value())
    if ref.kind == "list" and ref.item is not None:
        return [_cel_value(v, ref.item, records) for v in value]
    if ref.kind == "record" and ref.name is not None:
        fields = records[ref.name]
        return {f: _cel_value(value.get(f), t, records) for f, t in fields.items()}
    return value
