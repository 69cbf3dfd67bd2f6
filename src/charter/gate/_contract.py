"""The contract gate: one decision per proxy call, recorded before anything acts.

Checks, in this order; the first that fails decides, with its reason code. Check 1 is in
`GateSession.call` here; checks 2-15 are methods of `_checks.CallChecks` (each named below,
beside the module it calls); the session then records the decision (`_decisions`) and acts
on it (`_acting`):

 1. the call decoded and names an operation of the pinned version
                                      UNKNOWN_OPERATION, MALFORMED_CALL, ARGUMENTS_TOO_LARGE
 2. the arguments have the declared types (`arguments`)          INVALID_ARGUMENTS
 3. writes are open for this run (the agent closes them once a request's write
    was denied, so a repair cannot reach the same effect another way; checks 3-6 are
    `static_checks`)                                             WRITES_CLOSED
 4. the principal holds every scope the operation needs          FORBIDDEN_SCOPE
 5. the principal attributes the operation's rules name are bound, each of its
    declared type (`_attributes`)                 ATTRIBUTE_MISSING, ATTRIBUTE_INVALID
 6. the operations it must follow succeeded earlier in the run: every one of
    `after`, and at least one of each any-of group (on the same entity key when both
    act on the same entity; `_sequence`)                         SEQUENCE_VIOLATION
 7. every `from:` param's value was seen in one of its sources in this run: the request,
    the principal's attributes, or a read's result at the named path, as the gate itself
    recorded it from the replies the program got (`_provenance`; `provenance_check`)
                                                                 PROVENANCE_VIOLATION
 8. no earlier write of this operation to the same entity (a create: with the same
    arguments) in this run is in doubt (`_writes`; checks 8-10 are `write_checks`)  IN_DOUBT
 9. an `idempotent` operation already made with the same arguments in this run
    returns its first result; nothing is sent again              (REPLAYED, allowed)
10. the run is within its write limit                            LIMIT_EXCEEDED
11. the entity is read through the contract's read operation, and has the
    entity's declared type (`_results`; `read_entity`)           NOT_FOUND, RESULT_INVALID, GATE_ERROR
12. the lifecycle allows the transition from its current state (checks 12-15 are
    `state_checks`)                                              STATE_VIOLATION
13. every CEL guard holds (`_rules`); a lookup (`_lookups`) is performed when the first rule
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
    (`_approvals`; `_decisions.DecisionRecorder.pause`): an ApprovalRequested receipt in
    place of the Decision, nothing executes, the quota reservation is released uncounted,
    ApprovalPending ends the run (sealed awaiting_approval); a run with secret inputs
    cannot pause and is refused
                                                                 APPROVAL_REQUIRED
    (a `when` that cannot be evaluated is GATE_ERROR)

A session resuming a paused run holds the decision (`GrantedApproval`). At its call only:
the call must be the one approved (operation and recorded arguments hash) or the run halts
DIVERGED before anything else; denied, it is refused APPROVAL_DENIED; approved, checks 1-14
run again against the state now, the approval satisfies check 15, the Decision names the
approval and the write's idempotency key derives from it (`write_key(approval_id, call)`).

Checks that need no backend come first, so a call refused anyway never reads state.
Any exception inside the gate is a DENY (GATE_ERROR), never an ALLOW. The decision is
committed as a signed receipt (`_receipts`, `_decisions`) before the backend is called
(`_acting`); the backend gets the state observed in step 11 as a precondition, so a change
in between is refused by the write instead of overwritten, and each write its own
idempotency key (`_writes`).
After `max_denials` denials the run is ended (RunHalted).

Nothing acts once the run is over. The host closes the session (`close`) when the run
ends, before it is sealed; a call still on a worker thread then (its wall time ran out
while it waited) is refused RUN_ENDED, and an allowed call whose action had not started
gets an Outcome `failed` / NOT_PERFORMED: the backend is never called after the run's
wall-time deadline or after `close`.

What the backend returns is checked in the gate too (`_acting`), before the Outcome
receipt, so the receipt holds exactly what the program got: the declared type, undeclared
fields dropped and named (`_results`, RESULT_INVALID), and the size (RESULT_TOO_LARGE).
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
from datetime import datetime
from typing import Any

from charter._profile import component
from charter.audit import Decision, Observed, RunRecorder
from charter.audit import Outcome as CallOutcome
from charter.backends import Backend, CallContext, Precondition
from charter.compiler.artifact import CompiledContract, OperationRule
from charter.errors import AuditError
from charter.gate._absorb import absorb_call
from charter.gate._acting import CallActions
from charter.gate._approvals import (
    GrantedApproval,
    Seen,
    approval_key,
    denied_verdict,
    divergence,
    needs_pause,
)
from charter.gate._arguments import ArgumentChecker, InvalidArguments
from charter.gate._attributes import PrincipalAttributes
from charter.gate._checks import CallChecks, ProvenanceRefusal, Refusal, cel_value
from charter.gate._decisions import DecisionRecorder, durable_decision
from charter.gate._lookups import LookupFailed, Lookups
from charter.gate._protocol import CallRequest, Denied, Encoded, OperationFailed, RunHalted
from charter.gate._provenance import Check, ProvenanceLedger
from charter.gate._quotas import QuotaChecks, QuotaHold, QuotaSession, utc_now
from charter.gate._receipts import Verdict
from charter.gate._results import ResultChecker
from charter.gate._rules import CallRules
from charter.gate._run import RunState
from charter.gate._secrets import Recorded, SecretParams, recorded_arguments, scrubbed_verdict
from charter.gate._sequence import RunSequence
from charter.gate._withheld import withhold
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
            table, backend, self._checker, self._results, lambda v, t: cel_value(v, t, table.records)
        )
        self._attributes = PrincipalAttributes(table, self._results, cel_value)
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


class GateSession:
    """The gate for one run: implements the sandbox's `Gate` protocol. The checks live in
    `_checks` (CallChecks), acting on the backend and its Outcome in `_acting` (CallActions),
    the Decision and ApprovalRequested receipts in `_decisions` (DecisionRecorder); the
    session owns the run's state they share, and decides each call in the order above."""

    # Whether `call` may wait on I/O past the run's deadline, so the host must run it under a
    # watchdog thread: the backend's word. The audit commit alone does not make it so (an fsync
    # ends), and a gate whose backend cannot block runs on the caller's thread, with no hop.
    blocking: bool

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
        self.blocking = bool(getattr(gate.backend, "blocking", True))
        self._granted = approval
        self._secret_inputs = secret_inputs
        self._recorder = recorder
        self._principal = principal
        self._state = RunState(
            RunSequence(gate._table, gate.boundary_note),
            provenance or ProvenanceLedger(gate._table),
            WriteLedger(logical_run_id),
            QuotaSession(gate._quotas, recorder.quotas, gate.clock, gate.boundary_note),
        )
        # Guards the run's end against a call still on a worker thread: `_ended` once the
        # host closed the session; `_unstarted` the allowed calls whose action has not begun.
        self._end_lock = threading.Lock()
        self._ended: str | None = None
        self._unstarted: dict[int, CallRequest] = {}
        # The session's helpers share its run state.
        self._checks = CallChecks(gate, principal, writes_closed, self._state, secret_inputs)
        self._actions = CallActions(gate, recorder, principal, max_result_bytes, self._state, secret_inputs)
        self._decisions = DecisionRecorder(gate, recorder, principal, logical_run_id, secret_inputs)

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
        self._actions.record_outcome(request, "failed", code="NOT_PERFORMED", message=message)
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
        """Decide `request`, record it, and act on it (the module's order of checks)."""
        with component("gate"):  # the gate's own work; the backend and the log charge theirs
            return self._call(request)

    def _call(self, request: CallRequest) -> Any:
        gate = self._gate
        rule = gate._table.operations.get(request.operation) if request.malformed is None else None
        arguments: dict[str, Any] | None = None
        recorded: Recorded | None = None  # the arguments' canonical JSON and hash, secrets masked
        observed: Observed | None = None
        precondition: Precondition | None = None
        idempotency_key: str | None = None
        first: FirstWrite | None = None  # an idempotent write already made with these arguments
        hold = QuotaHold()  # quota locks: released once the decision is recorded, on every path
        lookups = gate._lookups.start(lambda: self._lookup_context(request))
        provenance: Check | None = None
        granted = self._granted if self._granted is not None and self._granted.call == request.sequence else None
        if granted is not None:
            self._check_granted(granted, request, rule)
        try:
            self._refuse_if_ended(request)
            if request.malformed is not None:
                raise Refusal(Verdict(request.malformed.code, request.malformed.message))
            if rule is None:
                contract = gate.contract
                message = f"contract {contract.name} {contract.version} has no operation {request.operation!r}"
                raise Refusal(Verdict("UNKNOWN_OPERATION", message))
            arguments = self._checks.arguments(rule, request.arguments)
            recorded = self._recorded(request, arguments)
            if granted is not None and granted.decision == "denied":
                boundaries = gate._rule_boundaries.get(f"approval:{rule.name}", ())
                raise Refusal(denied_verdict(granted, gate.boundary_note(boundaries)[1]))
            self._checks.static_checks(rule, arguments)
            provenance = self._checks.provenance_check(rule, arguments)
            if rule.kind == "write":
                first = self._checks.write_checks(rule, arguments, recorded[1])
                idempotency_key = first.key if first is not None else self._state.writes.key(request.sequence)
                if granted is not None and first is None:
                    idempotency_key = approval_key(granted)
            if first is None:
                entity = None
                if self._checks.needs_entity(rule):
                    self._refuse_if_ended(request)  # the read reaches the backend too
                    context = self._actions.context(request)
                    entity, observed, precondition = self._checks.read_entity(context, rule, arguments)
                approved = granted is not None
                self._checks.state_checks(rule, arguments, entity, hold, provenance, lookups, approved=approved)
            verdict = _OK if first is None else _REPLAYED
        except (Refusal, LookupFailed) as refusal:
            verdict = refusal.verdict
            if isinstance(refusal, ProvenanceRefusal):
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

        verdict = scrubbed_verdict(verdict, self._actions.secret_values(request))
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
                self._decisions.pause(request, recorded, verdict, hold, seen)
            self._decisions.decision(
                request,
                recorded or self._recorded(request, None),
                verdict,
                observed,
                idempotency_key,
                hold,
                tuple(lookups.seen),
                provenance.labels if provenance is not None else None,
                approval_id=granted.approval_id if granted is not None else None,
                durable=durable_decision(rule, hold, granted.approval_id if granted is not None else None),
            )
            if verdict.allowed:
                self._unstarted[request.sequence] = request
                self._state.quotas.counted(request.sequence, hold)

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
            self._actions.record_outcome(request, "replayed", reply=first.reply)
            return Encoded(first.reply)
        if rule.kind == "write":
            self._state.writes.made += 1
        return self._actions.act(request, rule, arguments, recorded[1], precondition, idempotency_key)

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

    # -- the call's record and its end ---------------------------------------------------

    def _recorded(self, request: CallRequest, checked: Mapping[str, Any] | None) -> Recorded:
        secret = self._gate._secrets.of(request.operation)
        return recorded_arguments(request, checked, secret, self._recorder.secret_key, self._secret_inputs)

    def _lookup_context(self, request: CallRequest) -> CallContext:
        self._refuse_if_ended(request)  # a lookup reaches the backend too
        return self._actions.context(request)

    def _refuse_if_ended(self, request: CallRequest) -> None:
        ended = self._still_running(request)
        if ended is not None:
            raise Refusal(_run_ended(request, ended))


def _run_ended(request: CallRequest, why: str) -> Verdict:
    return Verdict("RUN_ENDED", f"{request.operation} refused: {why}; nothing acts after the run's end.")
