"""Checks 2-15 of one run's calls, as `GateSession.call` runs them (the order is in
charter.gate._contract's docstring): the arguments, the static checks, provenance, the write
ledger's checks, the entity read, and the state checks (lifecycle, guards, quotas, approval).

A check that fails raises `Refusal` with its verdict; the session records it as the call's
Decision. Nothing here writes a receipt.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from charter._profile import component
from charter.audit import Observed
from charter.backends import BackendFailure, BackendUnavailable, CallContext, Precondition, fingerprint
from charter.compiler.artifact import OperationRule
from charter.contract.cel_guards import cel_date
from charter.contract.types import MONEY_SCALE, TypeRef
from charter.gate._arguments import InvalidArguments
from charter.gate._attributes import AttributeRefused
from charter.gate._lookups import CallLookups
from charter.gate._provenance import Check
from charter.gate._quotas import QuotaHold
from charter.gate._receipts import Verdict
from charter.gate._results import ResultInvalid
from charter.gate._run import RunState
from charter.gate._secrets import holds_any
from charter.gate._sequence import target_text
from charter.gate._withheld import withhold
from charter.gate._writes import FirstWrite
from charter.principal import Principal

if TYPE_CHECKING:
    from charter.gate._contract import ContractGate

__all__ = ["CallChecks", "ProvenanceRefusal", "Refusal", "cel_value"]


class Refusal(Exception):
    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.message)
        self.verdict = verdict


class ProvenanceRefusal(Refusal):
    def __init__(self, verdict: Verdict, check: Check) -> None:
        super().__init__(verdict)
        self.check = check


class CallChecks:
    """The checks of one run's calls, over the run's state (`state`: the session's)."""

    def __init__(
        self,
        gate: ContractGate,
        principal: Principal,
        writes_closed: str | None,
        state: RunState,
        secret_inputs: tuple[str, ...],
    ) -> None:
        self._gate = gate
        self._principal = principal
        self._writes_closed = writes_closed
        self._state = state
        self._secret_inputs = secret_inputs

    def sees_secrets(self, rule: OperationRule) -> bool:
        """Whether the call's rules see a secret value: then an evaluation error's text, which
        may quote it in any form, is not said (the rule's id and the error's type are)."""
        return bool(self._gate._secrets.of(rule.name) or self._secret_inputs)

    def arguments(self, rule: OperationRule, raw: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return self._gate._checker.check(rule.name, raw)
        except InvalidArguments as error:
            raise Refusal(Verdict("INVALID_ARGUMENTS", f"{rule.name}: {error}", clause=f"params:{rule.name}")) from None

    def static_checks(self, rule: OperationRule, arguments: Mapping[str, Any]) -> None:
        if self._writes_closed is not None and rule.kind == "write":
            raise Refusal(Verdict("WRITES_CLOSED", f"{rule.name} refused: {self._writes_closed}"))
        missing = [s for s in rule.scopes if not self._principal.has(s)]
        if missing:
            held = ", ".join(sorted(self._principal.scopes)) or "no scopes"
            note, boundary = self._gate.boundary_note(self._gate._rule_boundaries.get(f"scope:{rule.name}", ()))
            raise Refusal(
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
            raise Refusal(refused.verdict) from None
        sequence = self._state.sequence.violation(rule, arguments)
        if sequence is not None:
            raise Refusal(sequence)

    def provenance_check(self, rule: OperationRule, arguments: Mapping[str, Any]) -> Check | None:
        check = self._state.provenance.check(rule, arguments)
        if check is not None and check.violation is not None and check.rule is not None:
            ref = f"provenance:{rule.name}.{check.rule.param}"
            note, boundary = self._gate.boundary_note(check.rule.boundaries)
            raise ProvenanceRefusal(
                Verdict("PROVENANCE_VIOLATION", check.violation + note, clause=ref, boundary=boundary), check
            )
        return check

    def write_checks(self, rule: OperationRule, arguments: dict[str, Any], args_hash: str) -> FirstWrite | None:
        """IN_DOUBT, then the first result of an idempotent write made already, then LIMIT_EXCEEDED."""
        doubtful = self._state.writes.in_doubt(rule, arguments, args_hash)
        if doubtful is not None:
            what = f"{rule.name}{target_text(rule, arguments)}" if rule.key else f"{rule.name} with these arguments"
            raise Refusal(
                Verdict(
                    "IN_DOUBT",
                    f"{what} refused: call {doubtful} of this run made the same write and got no answer, so it "
                    "may have acted; nothing is sent again in this run. Read the entity to learn its state.",
                    clause=f"in_doubt:{rule.name}",
                )
            )
        first = self._state.writes.first(rule, args_hash)
        if first is not None:
            return first
        limits = self._gate._table.limits
        if self._state.writes.made >= limits.max_writes:
            raise Refusal(
                Verdict(
                    "LIMIT_EXCEEDED",
                    f"{rule.name} refused: the run already made {self._state.writes.made} writes, "
                    f"the contract's limit (limits.max_writes = {limits.max_writes}).",
                    clause="limits:max_writes",
                )
            )
        return None

    def needs_entity(self, rule: OperationRule) -> bool:
        return rule.reader is not None and (rule.transition is not None or self._gate._rules.uses_entity(rule.name))

    def read_entity(
        self, context: CallContext, rule: OperationRule, arguments: Mapping[str, Any]
    ) -> tuple[dict[str, Any], Observed, Precondition]:
        """Check 11: the entity through the contract's read operation (`context`: the call's)."""
        assert rule.reader is not None
        assert rule.key is not None
        assert rule.entity is not None
        reader = self._gate._table.operations[rule.reader]
        assert reader.key is not None
        key = arguments[rule.key]
        try:
            with component("backend"):
                raw = self._gate.backend.invoke(reader.name, {reader.key: key}, context)
        except BackendUnavailable as error:  # the server's fault: the surfaces answer it as such
            raise Refusal(
                Verdict(error.code, f"{rule.name} refused: {error.message}", withheld=withhold(error))
            ) from None
        except LookupError as error:
            # A backend's own not-found message is shown; any other lookup error's text is withheld.
            said = f" ({error.message})" if isinstance(error, BackendFailure) else ""
            raise Refusal(
                Verdict(
                    "NOT_FOUND",
                    f"{rule.name} refused: {rule.entity} {key} was not found{said}.",
                    withheld=withhold(error),
                )
            ) from None
        except BaseException as error:  # backend code: SystemExit, KeyboardInterrupt... are its failures too
            said = f" ({error.message})" if isinstance(error, BackendFailure) else ""
            raise Refusal(
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
            raise Refusal(
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

    def state_checks(
        self,
        rule: OperationRule,
        arguments: Mapping[str, Any],
        entity: Mapping[str, Any] | None,
        hold: QuotaHold,
        provenance: Check | None,
        lookups: CallLookups,
        *,
        approved: bool = False,
    ) -> None:
        """Checks 12-15. `lookups`: the call's (performed when a rule first names one).
        `approved`: a human approved this call (a resumed run): every check runs again except
        the approval rule, which the approval satisfies."""
        transition = rule.transition
        if transition is not None and entity is not None:
            state = entity.get(transition.field)
            if state not in transition.from_states:
                note, boundary = self._gate.boundary_note(transition.boundaries)
                raise Refusal(
                    Verdict(
                        "STATE_VIOLATION",
                        f"{rule.entity} {arguments[rule.key or '']} cannot be {transition.to}: it is {state}; "
                        f"{transition.name} is allowed only from {', '.join(transition.from_states)}.{note}",
                        clause=f"transition:{rule.entity}.{transition.name}",
                        boundary=boundary,
                    )
                )
        variables = self.variables(rule, arguments, entity, provenance)
        violation = self._gate._rules.guard_violation(rule, variables, lookups, self.sees_secrets(rule))
        if violation is not None:
            raise Refusal(violation)
        for quota in rule.quotas:  # a quota's sum or keys may read lookups too
            lookups.perform(rule, f"quota:{quota.id}", variables)
        exceeded = self._state.quotas.check(rule, variables, hold)
        self.refuse_secret_keys(rule, hold)
        if exceeded is not None:
            raise Refusal(exceeded)
        if approved:
            return
        lookups.perform(rule, "approval", variables)  # the condition may read lookups
        approval = self._gate._rules.approval_needed(rule, variables, self.sees_secrets(rule))
        if approval is not None:  # last of all checks: never asked for a call forbidden anyway
            raise Refusal(approval)

    def variables(
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
            "params": {p.name: cel_value(arguments.get(p.name), p.type, table.records) for p in rule.params},
            "principal": {
                "id": self._principal.id,
                "scopes": sorted(self._principal.scopes),
                "attributes": self._gate._attributes.values(self._principal),
            },
            "provenance": {} if provenance is None else {p: list(seen) for p, seen in provenance.labels.items()},
        }
        if entity is not None and rule.entity is not None:
            fields = table.records[rule.entity]
            variables["entity"] = {f: cel_value(entity.get(f), t, table.records) for f, t in fields.items()}
        return variables

    def refuse_secret_keys(self, rule: OperationRule, hold: QuotaHold) -> None:
        """A quota key holding a secret input of the run: refused, never recorded or counted.
        The audit log counts a quota by its key in plain text; masked, the same account would
        be counted apart from its calls that did not mark it secret."""
        for seen in hold.seen:
            if self._secret_inputs and holds_any(seen.key, self._secret_inputs):
                raise Refusal(
                    Verdict(
                        "GATE_ERROR",
                        f"{rule.name} refused: the key of quota {seen.id} holds a secret input of this request; a "
                        "quota's key is recorded in plain text, so the gate does not count a secret. Do not mark "
                        "that input secret, or key the quota by another param.",
                        clause=f"quota:{seen.id}",
                    )
                )


def cel_value(value: Any, ref: TypeRef, records: Mapping[str, Mapping[str, TypeRef]]) -> Any:
    """A Python value as guards see it: money in integer cents, a date as its midnight UTC, records as maps."""
    if value is None:
        return None
    if ref.kind == "money":
        return int(Decimal(value).scaleb(MONEY_SCALE).to_integral_value())
    if ref.kind == "date":
        return cel_date(value)
    if ref.kind == "list" and ref.item is not None:
        return [cel_value(v, ref.item, records) for v in value]
    if ref.kind == "record" and ref.name is not None:
        fields = records[ref.name]
        return {f: cel_value(value.get(f), t, records) for f, t in fields.items()}
    return value
