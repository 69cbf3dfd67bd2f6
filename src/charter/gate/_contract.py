"""The contract gate: one decision per proxy call, recorded before anything acts.

Checks, in this order; the first that fails decides, with its reason code:

 1. the call decoded and names an operation of the pinned version
                                      UNKNOWN_OPERATION, MALFORMED_CALL, ARGUMENTS_TOO_LARGE
 2. the arguments have the declared types                        INVALID_ARGUMENTS
 3. writes are open for this run (the agent closes them once a request's write
    was denied, so a repair cannot reach the same effect another way)  WRITES_CLOSED
 4. the principal holds every scope the operation needs          FORBIDDEN_SCOPE
 5. the principal attributes the operation's rules name are bound, each of its
    declared type (`_attributes`)                 ATTRIBUTE_MISSING, ATTRIBUTE_INVALID
 6. the operations it must follow succeeded earlier in the run: every one of
    `after`, and at least one of each any-of group (on the same entity key when both
    act on the same entity)                                      SEQUENCE_VIOLATION
 7. every `from:` param's value was seen in one of its sources in this run: the request,
    the principal's attributes, or a read's result at the named path, as the gate itself
    recorded it from the replies the program got (`_provenance`)  PROVENANCE_VIOLATION
 8. no earlier write of this operation to the same entity (a create: with the same
    arguments) in this run is in doubt (`_writes`)               IN_DOUBT
 9. an `idempotent` operation already made with the same arguments in this run
    returns its first result; nothing is sent again              (REPLAYED, allowed)
10. the run is within its write limit                            LIMIT_EXCEEDED
11. the entity is read through the contract's read operation, and has the
    entity's declared type (`_results`)                          NOT_FOUND, RESULT_INVALID, GATE_ERROR
12. the lifecycle allows the transition from its current state   STATE_VIOLATION
13. every CEL guard holds; a lookup (`_lookups`) is performed when the first rule
    naming it is evaluated, never for a call refused before, never twice in one call
                                                                 GUARD_VIOLATION, LOOKUP_FAILED
14. every quota over time has room for this call: the total counted in its window
    (from the audit store's index of allowed Decision receipts) plus this call's
    amount is at most `max`; read under a per-(contract, quota, key) lock held until
    the Decision receipt is durable, so racing runs cannot both pass (`_quotas`)
                                                                 QUOTA_EXCEEDED
15. the operation does not need a human approval (`requires_approval: true`, or its
    `when` holds; `_attributes.ConditionalApproval`): last, so an approval is never
    asked for a call the contract forbids anyway. When it does, the run PAUSES
    (`_approvals`): an ApprovalRequested receipt in place of the Decision, nothing
    executes, the quota reservation is released uncounted, ApprovalPending ends the run
    (sealed awaiting_approval); a run with secret inputs cannot pause and is refused
                                                                 APPROVAL_REQUIRED
    (a `when` that cannot be evaluated is GATE_ERROR)

A session resuming a paused run holds the decision (`GrantedApproval`). At its call only:
the call must be the one approved (operation and recorded arguments hash) or the run halts
DIVERGED before anything else; denied, it is refused APPROVAL_DENIED; approved, checks 1-14
run again against the state now, the approval satisfies check 15, the Decision names the
approval and the write's idempotency key derives from it (`write_key(approval_id, call)`).

Checks that need no backend come first, so a call refused anyway never reads state.
Any exception inside the gate is a DENY (GATE_ERROR), never an ALLOW. The decision is
committed as a signed receipt (`_receipts`) before the backend is called; the backend gets the
state observed in step 11 as a precondition, so a change in between is refused by the
write instead of overwritten, and each write its own idempotency key (`_writes`).
After `max_denials` denials the run is ended (RunHalted).

Nothing acts once the run is over. The host closes the session (`close`) when the run
ends, before it is sealed; a call still on a worker thread then (its wall time ran out
while it waited) is refused RUN_ENDED, and an allowed call whose action had not started
gets an Outcome `failed` / NOT_PERFORMED: the backend is never called after the run's
wall-time deadline or after `close`.

What the backend returns is checked in the gate too, before the Outcome receipt, so
the receipt holds exactly what the program got: the declared type, undeclared fields
dropped and named (`_results`, RESULT_INVALID), and the size (RESULT_TOO_LARGE).
Exception text from a backend or from the gate itself never reaches the program, the
caller or a receipt: they get a code and a generic message (`_withheld`).

Secret params (`secret: true`) are never recorded or said: the Decision holds keyed digests
of their values, its args hash is over that masked form, and every message of the call has
each secret value replaced, in every rendering (`_secrets`); a guard or approval condition
that fails to evaluate over a secret says only its error's type. The run's secret inputs are
masked the same way wherever a call's arguments or messages hold them. Checks see the real
values, and the backend gets them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, NoReturn

import msgspec

from charter.audit import Decision, LookupSeen, Observed, RunRecorder
from charter.audit import Outcome as CallOutcome
from charter.backends import (
    Backend,
    BackendFailure,
    BackendUnavailable,
    CallContext,
    Precondition,
    PreconditionFailed,
    fingerprint,
)
from charter.compiler.artifact import CompiledContract, OperationRule
from charter.contract.cel_guards import cel_date
from charter.contract.types import MONEY_SCALE, TypeRef
from charter.errors import AuditError
from charter.gate._absorb import absorb_call
from charter.gate._approvals import (
    GrantedApproval,
    Seen,
    approval_key,
    approval_request,
    denied_verdict,
    divergence,
    needs_pause,
)
from charter.gate._arguments import ArgumentChecker, InvalidArguments
from charter.gate._attributes import AttributeRefused, PrincipalAttributes
from charter.gate._lookups import CallLookups, LookupFailed, Lookups
from charter.gate._protocol import (
    ApprovalPending,
    CallRequest,
    Denied,
    Encoded,
    OperationFailed,
    RunHalted,
    encode_reply,
)
from charter.gate._provenance import Check, ProvenanceLedger
from charter.gate._quotas import QuotaChecks, QuotaHold, QuotaSession, utc_now
from charter.gate._receipts import OutcomeStatus, Verdict, decision_receipt, outcome_receipt
from charter.gate._results import ResultChecker, ResultInvalid
from charter.gate._rules import CallRules
from charter.gate._secrets import (
    Recorded,
    SecretParams,
    holds_any,
    masked_text,
    recorded_arguments,
    scrub,
    scrubbed_verdict,
    scrubbed_withheld,
)
from charter.gate._sequence import RunSequence, target_text
from charter.gate._withheld import Withheld, safe_text, withhold
from charter.gate._writes import FirstWrite, WriteLedger
from charter.principal import Principal

__all__ = ["ContractGate", "GateSession", "halt_message", "recorded_arguments"]


def halt_message(denial: str, denials: int) -> str:
    return f"{denial} The run made {denials} denied calls, its limit (limits.max_denials); the gate ended it."


_OK = Verdict("OK", "allowed")
_REPLAYED = Verdict(
    "REPLAYED",
    "this idempotent write already ran in this run with the same arguments; its first result is returned, "
    "nothing is sent again",
)


class _ResultRefused(Exception):
    """A backend's result the program must not get: its code and message (no backend text)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Refusal(Exception):
    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.message)
        self.verdict = verdict


class _ProvenanceRefusal(_Refusal):
    def __init__(self, verdict: Verdict, check: Check) -> None:
        super().__init__(verdict)
        self.check = check


class ContractGate:
    """Built once per contract version and backend; `session` gives each run its own state."""

    def __init__(
        self, contract: CompiledContract, backend: Backend, *, clock: Callable[[], datetime] = utc_now
    ) -> None:
        """`clock`: the gate's UTC clock (quota windows and decision times); tests inject one."""
        self.contract = contract
        self.backend = backend
        self.clock = clock
        table = contract.gate
        self._quotas = QuotaChecks(table)
        self._table = table
        self._checker = ArgumentChecker.for_table(table)
        self._results = ResultChecker(table)
        self._secrets = SecretParams(table)
        self._lookups = Lookups(
            table, backend, self._checker, self._results, lambda v, t: _cel_value(v, t, table.records)
        )
        self._attributes = PrincipalAttributes(table, self._results, _cel_value)
        self._boundary_text = {b.id: b.text for b in table.boundaries}
        # "approval:op" / "scope:op" -> the boundaries that rule enforces (named in the denial)
        self._rule_boundaries: dict[str, tuple[str, ...]] = {}
        for b in table.boundaries:
            for ref in b.enforced_by:
                self._rule_boundaries[ref] = (*self._rule_boundaries.get(ref, ()), b.id)
        self._rules = CallRules(table, self.boundary_note, self._rule_boundaries)

    def session(
        self,
        recorder: RunRecorder,
        principal: Principal,
        *,
        max_result_bytes: int,
        writes_closed: str | None = None,
        logical_run_id: str | None = None,
        request: tuple[str, ...] = (),
        inputs: Mapping[str, str] | None = None,
        secret_inputs: tuple[str, ...] = (),
        approval: GrantedApproval | None = None,
    ) -> GateSession:
        """`max_result_bytes` bounds each reply the program gets (RESULT_TOO_LARGE beyond it).
        `writes_closed`, when given, says why this run may only read: every write is denied
        with WRITES_CLOSED (the Runtime Agent sets it once a request's write was denied).
        `logical_run_id` is the first run of the chain this run continues (None: this run),
        from which write idempotency keys derive. `request`: the intent's text and the program
        request's input values, the `request` source of provenance rules; `inputs`: those input
        values by name, the `inputs.<name>` sources. `secret_inputs`: the
        values of the request's inputs marked secret, masked wherever the run's receipts and
        messages would hold them (`_secrets`); kept in memory only. `approval`: a human's
        decision on the call this run (a resume of a paused run) stopped at (`_approvals`)."""
        if secret_inputs and recorder.secret_key is None:
            raise AuditError(f"run {recorder.run_id}: secret inputs need the audit log's secret key to be masked")
        self._secrets.require_key(recorder)
        ledger = ProvenanceLedger(self._table, request, getattr(principal, "attributes", None), inputs)
        return GateSession(
            self,
            recorder,
            principal,
            writes_closed,
            logical_run_id or recorder.run_id,
            max_result_bytes,
            ledger,
            secret_inputs,
            approval,
        )

    def boundary_note(self, boundaries: tuple[str, ...]) -> tuple[str, str | None]:
        """(" (hard boundary id: text)", first id) for a message, or ("", None)."""
        if not boundaries:
            return "", None
        first = boundaries[0]
        return f" (hard boundary {first}: {self._boundary_text.get(first, '')})", first


@dataclass(slots=True)
class _RunState:
    denials: int = 0


class GateSession:
    """The gate for one run: implements the sandbox's `Gate` protocol."""

    blocking = True  # every decision is committed to disk before it returns

    def __init__(
        self,
        gate: ContractGate,
        recorder: RunRecorder,
        principal: Principal,
        writes_closed: str | None,
        logical_run_id: str,
        max_result_bytes: int,
        provenance: ProvenanceLedger | None = None,
        secret_inputs: tuple[str, ...] = (),
        approval: GrantedApproval | None = None,
    ) -> None:
        self._gate = gate
        self._granted = approval
        self._secret_inputs = secret_inputs
        self._provenance = provenance or ProvenanceLedger(gate._table)
        self._recorder = recorder
        self._principal = principal
        self._writes_closed = writes_closed
        self._max_result_bytes = max_result_bytes
        self._state = _RunState()
        self._sequence = RunSequence(gate._table, gate.boundary_note)
        self._writes = WriteLedger(logical_run_id)
        # Guards the run's end against a call still on a worker thread: `_ended` once the
        # host closed the session; `_unstarted` the allowed calls whose action has not begun.
        self._end_lock = threading.Lock()
        self._ended: str | None = None
        self._unstarted: dict[int, CallRequest] = {}
        self._quotas = QuotaSession(gate._quotas, recorder.quotas, gate.clock, gate.boundary_note)
        # The lookups of the call being decided (calls are decided one at a time in a run).
        self._call_lookups: CallLookups = gate._lookups.start(_no_call)

    def close(self, reason: str) -> None:
        """The run is over (`reason` says how): from now on nothing acts. An allowed call whose
        action had not started is recorded as not performed, before the run is sealed."""
        with self._end_lock:
            self._ended = reason
            unstarted, self._unstarted = self._unstarted, {}
            for request in unstarted.values():
                self._not_performed(request, reason)

    def _not_performed(self, request: CallRequest, reason: str) -> OperationFailed:
        message = f"{request.operation} was allowed but not performed: {reason} before its action started."
        self._record_outcome(request, "failed", code="NOT_PERFORMED", message=message)
        return OperationFailed("NOT_PERFORMED", message)

    def _still_running(self, request: CallRequest) -> str | None:
        """Why this call may no longer act (the run ended, or its wall time did), or None."""
        if self._ended is not None:
            return self._ended
        if time.monotonic() >= request.deadline:
            return "the run's wall time had ended"
        return None

    def _begin(self, request: CallRequest) -> None:
        """Just before the backend is called: the last moment the run's end can stop it."""
        with self._end_lock:
            if self._unstarted.pop(request.sequence, None) is None:  # `close` recorded it
                message = f"{request.operation} was allowed but not performed: {self._ended} before its action started."
                raise OperationFailed("NOT_PERFORMED", message)
            ended = self._still_running(request)
            if ended is not None:
                raise self._not_performed(request, ended)

    def call(self, request: CallRequest) -> Any:
        gate = self._gate
        rule = gate._table.operations.get(request.operation) if request.malformed is None else None
        arguments: dict[str, Any] | None = None
        recorded: Recorded | None = None  # the arguments' canonical JSON and hash, secrets masked
        observed: Observed | None = None
        precondition: Precondition | None = None
        idempotency_key: str | None = None
        first: FirstWrite | None = None  # an idempotent write already made with these arguments
        hold = QuotaHold()  # quota locks: released once the decision is recorded, on every path
        self._call_lookups = lookups = gate._lookups.start(lambda: self._lookup_context(request))
        provenance: Check | None = None
        granted = self._granted if self._granted is not None and self._granted.call == request.sequence else None
        if granted is not None:
            self._check_granted(granted, request, rule)
        try:
            self._refuse_if_ended(request)
            if request.malformed is not None:
                raise _Refusal(Verdict(request.malformed.code, request.malformed.message))
            if rule is None:
                contract = gate.contract
                message = f"contract {contract.name} {contract.version} has no operation {request.operation!r}"
                raise _Refusal(Verdict("UNKNOWN_OPERATION", message))
            arguments = self._arguments(rule, request.arguments)
            recorded = self._recorded(request, arguments)
            if granted is not None and granted.decision == "denied":
                boundaries = gate._rule_boundaries.get(f"approval:{rule.name}", ())
                raise _Refusal(denied_verdict(granted, gate.boundary_note(boundaries)[1]))
            self._static_checks(rule, arguments)
            provenance = self._provenance_check(rule, arguments)
            if rule.kind == "write":
                first = self._write_checks(rule, arguments, recorded[1])
                idempotency_key = first.key if first is not None else self._writes.key(request.sequence)
                if granted is not None and first is None:
                    idempotency_key = approval_key(granted)
            if first is None:
                entity = None
                if self._needs_entity(rule):
                    self._refuse_if_ended(request)  # the read reaches the backend too
                    entity, observed, precondition = self._read_entity(request, rule, arguments)
                self._state_checks(rule, arguments, entity, hold, provenance, approved=granted is not None)
            verdict = _OK if first is None else _REPLAYED
        except (_Refusal, LookupFailed) as refusal:
            verdict = refusal.verdict
            if isinstance(refusal, _ProvenanceRefusal):
                provenance = refusal.check
        except Exception as error:  # fail closed: a broken check is a denial
            verdict = Verdict(
                "GATE_ERROR",
                f"{request.operation} refused: the gate failed while checking it; it is denied rather than "
                "allowed unchecked (the error is kept for the operator: `charter audit show`).",
                withheld=withhold(error),
            )
        except BaseException:
            hold.release()
            raise

        verdict = scrubbed_verdict(verdict, self._secret_values(request))
        pausing = needs_pause(verdict)
        if pausing and self._secret_inputs and rule is not None and verdict.approval is not None:
            verdict, pausing = gate._rules.cannot_pause(rule, verdict.approval), False
        with self._end_lock:
            # Decided and registered under the lock: `close` either comes first (and the call
            # is refused) or finds it registered (and records it as not performed).
            if verdict.allowed or pausing:
                ended = self._still_running(request)
                if ended is not None:
                    verdict, pausing = _run_ended(request, ended), False
            if pausing:
                assert recorded is not None
                labels = provenance.labels if provenance is not None else None
                seen = Seen(observed, tuple(lookups.seen), labels, hold.seen)
                self._pause(request, recorded, verdict, hold, seen)
            self._record_decision(
                request,
                recorded or self._recorded(request, None),
                verdict,
                observed,
                idempotency_key,
                hold,
                tuple(lookups.seen),
                provenance.labels if provenance is not None else None,
                approval_id=granted.approval_id if granted is not None else None,
            )
            if verdict.allowed:
                self._unstarted[request.sequence] = request
                self._quotas.counted(request.sequence, hold)

        if not verdict.allowed:
            self._state.denials += 1
            if self._state.denials >= gate._table.limits.max_denials:
                message = halt_message(verdict.message, self._state.denials)
                raise RunHalted(verdict.code, message, boundary=verdict.boundary)
            raise Denied(verdict.code, verdict.message, boundary=verdict.boundary)
        assert rule is not None
        assert arguments is not None
        assert recorded is not None
        self._begin(request)
        if first is not None:
            self._record_outcome(request, "replayed", reply=first.reply)
            return Encoded(first.reply)
        if rule.kind == "write":
            self._writes.made += 1
        return self._act(request, rule, arguments, recorded[1], precondition, idempotency_key)

    def absorb(self, request: CallRequest, decision: Decision, outcome: CallOutcome | None) -> None:
        """A call answered from an earlier run's receipts (a resume, charter.replay._answers):
        the session's state becomes what it would be had it decided the call itself (the
        operations that succeeded, the writes made and their idempotent results or doubt, the
        replies provenance counts, `window: run` quotas, the denials). No receipt is written and
        the backend is not touched."""
        absorb_call(self, request, decision, outcome)

    def _check_granted(self, granted: GrantedApproval, request: CallRequest, rule: OperationRule | None) -> None:
        """The call a resumed run stopped at must be the one approved: the run halts DIVERGED
        before anything of it is checked, read or recorded otherwise."""
        digest: str | None = None
        if rule is not None:
            try:
                digest = self._recorded(request, self._gate._checker.check(rule.name, request.arguments))[1]
            except InvalidArguments:
                digest = None
        halted = divergence(granted, request, digest)
        if halted is not None:
            raise halted

    def _pause(
        self, request: CallRequest, recorded: Recorded, verdict: Verdict, hold: QuotaHold, seen: Seen
    ) -> NoReturn:
        """Check 15 held: record the ApprovalRequested receipt durably in place of a Decision,
        release the quota reservation uncounted, and end the run paused (ApprovalPending)."""
        opened = self._recorder.opened
        try:
            receipt = approval_request(
                request,
                recorded,
                verdict,
                self._gate.contract,
                self._principal,
                program_sha256=getattr(opened, "program_sha256", ""),
                logical_run_id=self._writes.logical_run_id,
                now=datetime.fromisoformat(hold.at) if hold.at is not None else self._gate.clock(),
                seen=seen,
            )
            try:
                self._recorder.approval_requested(receipt)
            except AuditError as error:
                raise Denied(
                    "GATE_ERROR", f"{request.operation} refused: its approval request could not be written ({error})"
                ) from None
        finally:
            hold.release()  # a paused call is not counted: only an allowed Decision counts
        raise ApprovalPending(
            receipt.approval_id,
            call=request.sequence,
            operation=request.operation,
            reason=receipt.reason,
            line=request.line,
        )

    # -- checks ----------------------------------------------------------------------

    def _recorded(self, request: CallRequest, checked: Mapping[str, Any] | None) -> Recorded:
        secret = self._gate._secrets.of(request.operation)
        return recorded_arguments(request, checked, secret, self._recorder.secret_key, self._secret_inputs)

    def _secret_values(self, request: CallRequest) -> list[str]:
        """What `scrub` removes from this call's texts: its secret params' values and the run's
        secret inputs, in every rendering."""
        return self._gate._secrets.values(request, self._secret_inputs)

    def _sees_secrets(self, rule: OperationRule) -> bool:
        """Whether the call's rules see a secret value: then an evaluation error's text, which
        may quote it in any form, is not said (the rule's id and the error's type are)."""
        return bool(self._gate._secrets.of(rule.name) or self._secret_inputs)

    def _lookup_context(self, request: CallRequest) -> CallContext:
        self._refuse_if_ended(request)  # a lookup reaches the backend too
        return self._context(request)

    def _refuse_if_ended(self, request: CallRequest) -> None:
        ended = self._still_running(request)
        if ended is not None:
            raise _Refusal(_run_ended(request, ended))

    def _arguments(self, rule: OperationRule, raw: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return self._gate._checker.check(rule.name, raw)
        except InvalidArguments as error:
            raise _Refusal(
                Verdict("INVALID_ARGUMENTS", f"{rule.name}: {error}", clause=f"params:{rule.name}")
            ) from None

    def _static_checks(self, rule: OperationRule, arguments: Mapping[str, Any]) -> None:
        if self._writes_closed is not None and rule.kind == "write":
            raise _Refusal(Verdict("WRITES_CLOSED", f"{rule.name} refused: {self._writes_closed}"))
        missing = [s for s in rule.scopes if not self._principal.has(s)]
        if missing:
            held = ", ".join(sorted(self._principal.scopes)) or "no scopes"
            note, boundary = self._gate.boundary_note(self._gate._rule_boundaries.get(f"scope:{rule.name}", ()))
            raise _Refusal(
                Verdict(
                    "FORBIDDEN_SCOPE",
                    f"{rule.name} needs scope {', '.join(missing)}; principal {self._principal.id} holds {held}.{note}",
                    clause=f"scopes:{rule.name}",
                    boundary=boundary,
                )
            )
        try:
            self._gate._attributes.check(rule, self._principal)
        except AttributeRefused as refused:
            raise _Refusal(refused.verdict) from None
        sequence = self._sequence.violation(rule, arguments)
        if sequence is not None:
            raise _Refusal(sequence)

    def _provenance_check(self, rule: OperationRule, arguments: Mapping[str, Any]) -> Check | None:
        check = self._provenance.check(rule, arguments)
        if check is not None and check.violation is not None and check.rule is not None:
            ref = f"provenance:{rule.name}.{check.rule.param}"
            note, boundary = self._gate.boundary_note(check.rule.boundaries)
            raise _ProvenanceRefusal(
                Verdict("PROVENANCE_VIOLATION", check.violation + note, clause=ref, boundary=boundary), check
            )
        return check

    def _write_checks(self, rule: OperationRule, arguments: dict[str, Any], args_hash: str) -> FirstWrite | None:
        """IN_DOUBT, then the first result of an idempotent write made already, then LIMIT_EXCEEDED."""
        doubtful = self._writes.in_doubt(rule, arguments, args_hash)
        if doubtful is not None:
            what = f"{rule.name}{target_text(rule, arguments)}" if rule.key else f"{rule.name} with these arguments"
            raise _Refusal(
                Verdict(
                    "IN_DOUBT",
                    f"{what} refused: call {doubtful} of this run made the same write and got no answer, so it "
                    "may have acted; nothing is sent again in this run. Read the entity to learn its state.",
                    clause=f"in_doubt:{rule.name}",
                )
            )
        first = self._writes.first(rule, args_hash)
        if first is not None:
            return first
        limits = self._gate._table.limits
        if self._writes.made >= limits.max_writes:
            raise _Refusal(
                Verdict(
                    "LIMIT_EXCEEDED",
                    f"{rule.name} refused: the run already made {self._writes.made} writes, "
                    f"the contract's limit (limits.max_writes = {limits.max_writes}).",
                    clause="limits:max_writes",
                )
            )
        return None

    def _needs_entity(self, rule: OperationRule) -> bool:
        return rule.reader is not None and (rule.transition is not None or self._gate._rules.uses_entity(rule.name))

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
            raw = self._gate.backend.invoke(reader.name, {reader.key: key}, self._context(request))
        except BackendUnavailable as error:  # the server's fault: the surfaces answer it as such
            raise _Refusal(
                Verdict(error.code, f"{rule.name} refused: {error.message}", withheld=withhold(error))
            ) from None
        except LookupError as error:
            # A backend's own not-found message is shown; any other lookup error's text is withheld.
            said = f" ({error.message})" if isinstance(error, BackendFailure) else ""
            raise _Refusal(
                Verdict(
                    "NOT_FOUND",
                    f"{rule.name} refused: {rule.entity} {key} was not found{said}.",
                    withheld=withhold(error),
                )
            ) from None
        except BaseException as error:  # backend code: SystemExit, KeyboardInterrupt... are its failures too
            said = f" ({error.message})" if isinstance(error, BackendFailure) else ""
            raise _Refusal(
                Verdict(
                    "GATE_ERROR",
                    f"{rule.name} refused: reading {rule.entity} {key} through {reader.name} failed{said}; "
                    "the gate does not allow what it cannot check.",
                    withheld=withhold(error),
                )
            ) from None
        try:
            entity = self._gate._results.check(TypeRef(kind="record", name=rule.entity), raw).plain()
        except ResultInvalid as invalid:
            raise _Refusal(
                Verdict(
                    "RESULT_INVALID",
                    f"{rule.name} refused: {reader.name} returned {rule.entity} {key} not as the contract declares "
                    f"it ({invalid}); the gate does not decide on a value it cannot check.",
                    clause=f"returns:{reader.name}",
                )
            ) from None
        field_name = rule.transition.field if rule.transition else None
        state = entity.get(field_name) if field_name else None
        # The fingerprint is of the record as the binding returned it: a binding checks the
        # precondition against its own record (`Precondition.check`), not the gate's copy.
        print_ = fingerprint(raw)
        observed = Observed(entity=rule.entity, key=key, state=state, fingerprint=print_)
        precondition = Precondition(entity=rule.entity, key=key, field=field_name, state=state, fingerprint=print_)
        return entity, observed, precondition

    def _state_checks(
        self,
        rule: OperationRule,
        arguments: Mapping[str, Any],
        entity: Mapping[str, Any] | None,
        hold: QuotaHold,
        provenance: Check | None,
        *,
        approved: bool = False,
    ) -> None:
        """Checks 12-15. `approved`: a human approved this call (a resumed run): every check
        runs again except the approval rule, which the approval satisfies."""
        transition = rule.transition
        if transition is not None and entity is not None:
            state = entity.get(transition.field)
            if state not in transition.from_states:
                note, boundary = self._gate.boundary_note(transition.boundaries)
                raise _Refusal(
                    Verdict(
                        "STATE_VIOLATION",
                        f"{rule.entity} {arguments[rule.key or '']} cannot be {transition.to}: it is {state}; "
                        f"{transition.name} is allowed only from {', '.join(transition.from_states)}.{note}",
                        clause=f"transition:{rule.entity}.{transition.name}",
                        boundary=boundary,
                    )
                )
        variables = self._variables(rule, arguments, entity, provenance)
        violation = self._gate._rules.guard_violation(rule, variables, self._call_lookups, self._sees_secrets(rule))
        if violation is not None:
            raise _Refusal(violation)
        for quota in rule.quotas:  # a quota's sum or keys may read lookups too
            self._call_lookups.perform(rule, f"quota:{quota.id}", variables)
        exceeded = self._quotas.check(rule, variables, hold)
        self._refuse_secret_keys(rule, hold)
        if exceeded is not None:
            raise _Refusal(exceeded)
        if approved:
            return
        self._call_lookups.perform(rule, "approval", variables)  # the condition may read lookups
        approval = self._gate._rules.approval_needed(rule, variables, self._sees_secrets(rule))
        if approval is not None:  # last of all checks: never asked for a call forbidden anyway
            raise _Refusal(approval)

    def _variables(
        self,
        rule: OperationRule,
        arguments: Mapping[str, Any],
        entity: Mapping[str, Any] | None,
        provenance: Check | None,
    ) -> dict[str, Any]:
        """What the call's CEL rules (guards, approval conditions) see, by top-level name.
        `provenance`: the call's provenance as check 7 found it (None: no `from:` params); the
        ledger does not change while a call is decided, so it is not matched a second time."""
        table = self._gate._table
        variables: dict[str, Any] = {
            "params": {p.name: _cel_value(arguments.get(p.name), p.type, table.records) for p in rule.params},
            "principal": {
                "id": self._principal.id,
                "scopes": sorted(self._principal.scopes),
                "attributes": self._gate._attributes.values(self._principal),
            },
            "provenance": {} if provenance is None else {p: list(seen) for p, seen in provenance.labels.items()},
        }
        if entity is not None and rule.entity is not None:
            fields = table.records[rule.entity]
            variables["entity"] = {f: _cel_value(entity.get(f), t, table.records) for f, t in fields.items()}
        return variables

    def _refuse_secret_keys(self, rule: OperationRule, hold: QuotaHold) -> None:
        """A quota key holding a secret input of the run: refused, never recorded or counted.
        The audit log counts a quota by its key in plain text; masked, the same account would
        be counted apart from its calls that did not mark it secret."""
        for seen in hold.seen:
            if self._secret_inputs and holds_any(seen.key, self._secret_inputs):
                raise _Refusal(
                    Verdict(
                        "GATE_ERROR",
                        f"{rule.name} refused: the key of quota {seen.id} holds a secret input of this request; a "
                        "quota's key is recorded in plain text, so the gate does not count a secret. Do not mark "
                        "that input secret, or key the quota by another param.",
                        clause=f"quota:{seen.id}",
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
            value = self._gate.backend.invoke(rule.name, arguments, context)
        except PreconditionFailed as error:
            message = f"{rule.name}: {safe_text(error)}"
            self._failed_outcome(request, "failed", "PRECONDITION_FAILED", message)
        except BackendFailure as failure:
            # In doubt: the request reached the backend, no answer came back. The receipt says
            # `unknown` and the call stays in doubt in the seal; nothing here sends it again,
            # and a later write of it to the same target in this run is IN_DOUBT.
            status: OutcomeStatus = "unknown" if failure.in_doubt else "failed"
            if failure.in_doubt and rule.kind == "write":
                self._writes.unknown(rule, arguments, args_hash, request.sequence)
            self._failed_outcome(request, status, failure.code, failure.message, withhold(failure))
        except OperationFailed as failed:
            self._failed_outcome(request, "failed", failed.code, failed.message)
        except BaseException as error:  # backend code: SystemExit, KeyboardInterrupt... are its failures too
            message = (
                f"{rule.name} failed in the backend; its error text is withheld from the program "
                "(the operator can read it with `charter audit show`)."
            )
            self._failed_outcome(request, "failed", "BACKEND_ERROR", message, withhold(error))
        # The backend acted: whatever fails from here on is reported as that, never as a denial.
        performed = " The write itself was made; read the entity to learn its state." if rule.kind == "write" else ""
        try:
            reply, dropped = self._checked_reply(rule, value, performed)
        except _ResultRefused as refused:
            self._failed_outcome(request, "failed", refused.code, refused.message)
        except BaseException as error:
            message = (
                f"{rule.name} ran, but its result could not be checked; it was withheld from the program "
                f"(the operator can read why with `charter audit show`).{performed}"
            )
            self._failed_outcome(request, "failed", "RESULT_INVALID", message, withhold(error))
        try:
            self._record_outcome(request, "ok", reply=reply, dropped=dropped)
        except BaseException as error:
            message = (
                f"{rule.name} ran, but its result could not be recorded, so it is withheld from the program.{performed}"
            )
            self._failed_outcome(request, "failed", "RESULT_INVALID", message, withhold(error))
        self._sequence.succeeded(rule, arguments)
        if idempotency_key is not None:
            self._writes.succeeded(rule, args_hash, request.sequence, idempotency_key, reply)
        # Recorded host-side from the checked reply, before the program gets it.
        self._provenance.record(rule.name, reply)
        return Encoded(reply)

    def _failed_outcome(
        self,
        request: CallRequest,
        status: OutcomeStatus,
        code: str,
        message: str,
        withheld: Withheld | None = None,
    ) -> NoReturn:
        """Record an allowed call's failed outcome and raise it to the program as OperationFailed.
        A receipt that cannot be written is said in the message: the call was allowed and the
        backend was reached, so it is never turned into a denial. A backend's words lose the
        call's secret values first."""
        secrets = self._secret_values(request)
        message, withheld = scrub(message, secrets), scrubbed_withheld(withheld, secrets)
        try:
            self._record_outcome(request, status, code=code, message=message, withheld=withheld)
        except BaseException:
            message += " Its outcome receipt could not be written."
        raise OperationFailed(code, message)

    def _checked_reply(self, rule: OperationRule, value: Any, performed: str) -> tuple[str, tuple[str, ...]]:
        """The reply the program gets, as JSON, and the undeclared fields dropped from it; else
        _ResultRefused: nothing unchecked or oversized reaches the program."""
        try:
            checked = self._gate._results.check(rule.returns, value)
        except ResultInvalid as invalid:
            message = (
                f"{rule.name} returned a value that is not the contract's {rule.returns}: {invalid}. "
                f"It was withheld from the program.{performed}"
            )
            raise _ResultRefused("RESULT_INVALID", message) from None
        reply = encode_reply(checked.value)
        size = len(reply.encode("utf-8"))
        if size > self._max_result_bytes:
            message = (
                f"{rule.name} returned {size} bytes, above the limit of {self._max_result_bytes}; "
                f"it was withheld from the program.{performed}"
            )
            raise _ResultRefused("RESULT_TOO_LARGE", message)
        return reply, checked.dropped

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
        recorded: Recorded,
        verdict: Verdict,
        observed: Observed | None,
        idempotency_key: str | None,
        hold: QuotaHold | None = None,
        lookups: tuple[LookupSeen, ...] = (),
        provenance: dict[str, tuple[str, ...]] | None = None,
        *,
        approval_id: str | None = None,
    ) -> None:
        """Commit the call's Decision (`approval_id`: the approval it was decided under); `hold`'s
        quota locks are released once it is durable (the receipt is what counts the call), or once
        it failed, whatever happens."""
        quotas = hold.seen if hold is not None else ()
        key = self._recorder.secret_key
        if self._secret_inputs and key is not None:  # what a denied call saw may hold a secret input
            inputs = self._secret_inputs
            quotas = tuple(msgspec.structs.replace(q, key=masked_text(q.key, inputs, key)) for q in quotas)
            lookups = tuple(
                msgspec.structs.replace(
                    seen,
                    arguments=masked_text(seen.arguments, inputs, key),
                    result=None if seen.result is None else masked_text(seen.result, inputs, key),
                    error=None if seen.error is None else masked_text(seen.error, inputs, key),
                )
                for seen in lookups
            )
        try:
            decision = decision_receipt(
                request,
                recorded,
                verdict,
                self._gate.contract,
                self._principal,
                observed,
                idempotency_key,
                quotas=quotas,
                at=hold.at if hold is not None else None,
                lookups=lookups,
                provenance=provenance,
                approval_id=approval_id,
            )
            if verdict.withheld is not None:
                verdict.withheld.keep(self._recorder, request.sequence, request.operation)
            try:
                self._recorder.decision(decision)
            except AuditError as error:
                # No receipt, no action: the call is denied even though the checks passed. The
                # audit log's own error (a path, an SQLite message) is shown: it names no backend data.
                raise Denied(
                    "GATE_ERROR", f"{request.operation} refused: its receipt could not be written ({error})"
                ) from None
        finally:
            if hold is not None:
                hold.release()

    def _record_outcome(
        self,
        request: CallRequest,
        status: OutcomeStatus,
        *,
        reply: str | None = None,
        code: str | None = None,
        message: str | None = None,
        dropped: tuple[str, ...] = (),
        withheld: Withheld | None = None,
    ) -> None:
        if withheld is not None:
            withheld.keep(self._recorder, request.sequence, request.operation)
        rule = self._gate._table.operations.get(request.operation)
        # A write's outcome is on disk before the program learns it (a crash after that point
        # can no longer lose what the write did); a read's rides with the next durable receipt,
        # which precedes anything leaving the sandbox.
        write = rule is not None and rule.kind == "write"
        self._quotas.outcome(request.sequence, status, code)
        receipt = outcome_receipt(request, status, reply, code, message, dropped, withheld)
        try:
            self._recorder.outcome(receipt, durable=write)
        except AuditError as error:
            raise OperationFailed(
                "GATE_ERROR",
                f"{request.operation} reached the backend but its outcome could not be recorded ({error}); "
                "its result is withheld and the call stays in doubt: read the entity to learn its state.",
            ) from None


def _no_call() -> CallContext:
    raise RuntimeError("a lookup outside a call")  # a session performs lookups only inside `call`


def _run_ended(request: CallRequest, why: str) -> Verdict:
    return Verdict("RUN_ENDED", f"{request.operation} refused: {why}; nothing acts after the run's end.")


def _cel_value(value: Any, ref: TypeRef, records: Mapping[str, Mapping[str, TypeRef]]) -> Any:
    """A Python value as guards see it: money in integer cents, a date as its midnight UTC, records as maps."""
    if value is None:
        return None
    if ref.kind == "money":
        return int(Decimal(value).scaleb(MONEY_SCALE).to_integral_value())
    if ref.kind == "date":
        return cel_date(value)
    if ref.kind == "list" and ref.item is not None:
        return [_cel_value(v, ref.item, records) for v in value]
    if ref.kind == "record" and ref.name is not None:
        fields = records[ref.name]
        return {f: _cel_value(value.get(f), t, records) for f, t in fields.items()}
    return value
