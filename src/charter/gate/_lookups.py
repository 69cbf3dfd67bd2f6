"""Lookups: the reads a call's rules need (contract `lookups:`), performed by the gate itself.

A lookup runs with the gate's authority through the backend's read operation (no scope of
the principal is needed: the gate reads to decide, the program learns nothing but the
decision). It runs lazily, when the first rule naming it (`guard:<id>`, `approval`,
`quota:<id>`) is evaluated, so a call refused by an earlier check never reads, and at most
once per call. Its args are the contract's CEL over `params` and `principal`, checked as the
read's arguments; its result is checked against the read's `returns` like any result
(undeclared fields dropped) before a rule sees it.

Anything that keeps a lookup from giving a checked value denies the call LOOKUP_FAILED,
naming the lookup, its operation and why: fail closed, never a guard evaluated over a
missing value. A backend's exception text is withheld as elsewhere (`_withheld`). Each
lookup performed, failed ones included, is recorded on the call's Decision receipt
(`LookupSeen`): its arguments, the fingerprint of the raw result, and the checked value
when it is at most 4096 bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import cel

from charter._profile import component
from charter.audit import LookupSeen, args_digest
from charter.backends import Backend, BackendFailure, BackendUnavailable, CallContext, fingerprint
from charter.compiler.artifact import GateTable, LookupRule, OperationRule
from charter.contract.cel_guards import activation
from charter.contract.types import MONEY_SCALE, TypeRef
from charter.gate._arguments import ArgumentChecker, InvalidArguments
from charter.gate._receipts import Verdict
from charter.gate._results import ResultChecker, ResultInvalid
from charter.gate._withheld import Withheld, withhold

__all__ = ["MAX_RECORDED_RESULT", "CallLookups", "LookupFailed", "Lookups"]

MAX_RECORDED_RESULT = 4096  # bytes of a lookup's checked value kept on the receipt; above, the fingerprint only

CelValue = Callable[[Any, TypeRef], Any]  # a checked Python value as rules see it (money as cents)


class LookupFailed(Exception):
    """A lookup that gave no checked value: the call is denied with `verdict` (LOOKUP_FAILED)."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.message)
        self.verdict = verdict


class Lookups:
    """Built once per gate: every operation's lookups, their args compiled."""

    def __init__(
        self,
        table: GateTable,
        backend: Backend,
        arguments: ArgumentChecker,
        results: ResultChecker,
        cel_value: CelValue,
    ) -> None:
        self.backend = backend
        self.arguments = arguments
        self.results = results
        self.cel_value = cel_value
        self.params = {name: {p.name: p.type for p in rule.params} for name, rule in table.operations.items()}
        self.programs: dict[tuple[str, str], dict[str, Any]] = {
            (name, lookup.name): {arg: cel.compile(source) for arg, source in lookup.args.items()}
            for name, rule in table.operations.items()
            for lookup in rule.lookups
        }

    def start(self, context: Callable[[], CallContext]) -> CallLookups:
        """The lookups of one call; `context` gives the backend's call context (deadline included)."""
        return CallLookups(self, context)


class CallLookups:
    """One call's lookups: performed on demand, once each, recorded in the order performed."""

    def __init__(self, plan: Lookups, context: Callable[[], CallContext]) -> None:
        self._plan = plan
        self._context = context
        self.seen: list[LookupSeen] = []
        self._done: set[str] = set()

    def perform(self, rule: OperationRule, reader: str, variables: dict[str, Any]) -> bool:
        """Perform each lookup of `rule` that `reader` ("guard:<id>", "approval", "quota:<id>")
        reads and this call has not performed yet, into `variables["lookups"]`. True when any
        was performed (a CEL context built before must be built again); LookupFailed if one fails."""
        performed = False
        for lookup in rule.lookups:
            if reader in lookup.rules and lookup.name not in self._done:
                self._done.add(lookup.name)
                value = self._one(rule, lookup, variables)
                variables.setdefault("lookups", {})[lookup.name] = value
                performed = True
        return performed

    def _one(self, rule: OperationRule, lookup: LookupRule, variables: Mapping[str, Any]) -> Any:
        plan = self._plan
        context = self._context()  # refuses (RUN_ENDED) once the run's wall time is over
        arguments = self._arguments(rule, lookup, variables)
        shown = args_digest(arguments)[0]
        try:
            with component("backend"):
                raw = plan.backend.invoke(lookup.operation, arguments, context)
        except BackendUnavailable as error:
            # The server's fault, as for the entity read: the surfaces answer it as such (503),
            # so a caller retries later instead of reading a refusal of its request.
            why = f"the backend cannot perform it ({error.message})"
            raise self._failed(rule, lookup, shown, why, error, code=error.code) from None
        except LookupError as error:
            said = f" ({error.message})" if isinstance(error, BackendFailure) else ""
            raise self._failed(rule, lookup, shown, f"nothing was found{said}", error) from None
        except BaseException as error:  # backend code: SystemExit, KeyboardInterrupt... are its failures too
            said = f" ({error.message})" if isinstance(error, BackendFailure) else ""
            raise self._failed(rule, lookup, shown, f"the read failed{said}", error) from None
        print_ = fingerprint(raw)
        try:
            checked = plan.results.check(lookup.returns, raw).plain()
        except ResultInvalid as invalid:
            why = f"its result is not the contract's {lookup.returns} ({invalid})"
            raise self._failed(rule, lookup, shown, why, None, print_) from None
        result = args_digest(checked)[0]
        kept = result if len(result.encode("utf-8")) <= MAX_RECORDED_RESULT else None
        self.seen.append(LookupSeen(lookup.name, lookup.operation, shown, print_, kept, None))
        return plan.cel_value(checked, lookup.returns)

    def _arguments(self, rule: OperationRule, lookup: LookupRule, variables: Mapping[str, Any]) -> dict[str, Any]:
        plan = self._plan
        inputs = activation({k: variables[k] for k in ("params", "principal") if k in variables})
        params = plan.params[lookup.operation]
        raw: dict[str, Any] = {}
        try:
            for arg, program in plan.programs[(rule.name, lookup.name)].items():
                raw[arg] = _wire(program.execute(inputs), params[arg])
        except Exception as error:  # the checker typed every arg; a value can still fail (a null, an overflow)
            why = f"its arg '{arg}' could not be evaluated ({type(error).__name__}: {str(error).split('. ')[0]})"
            raise self._failed(rule, lookup, None, why, None) from None
        try:
            return plan.arguments.check(lookup.operation, raw)
        except InvalidArguments as error:
            raise self._failed(rule, lookup, None, f"its args are not valid for {lookup.operation} ({error})") from None

    def _failed(
        self,
        rule: OperationRule,
        lookup: LookupRule,
        shown: str | None,
        why: str,
        error: BaseException | None = None,
        print_: str = "",
        *,
        code: str = "LOOKUP_FAILED",
    ) -> LookupFailed:
        self.seen.append(LookupSeen(lookup.name, lookup.operation, shown or "null", print_, None, why))
        withheld: Withheld | None = withhold(error) if error is not None else None
        return LookupFailed(
            Verdict(
                code,
                f"{rule.name} refused: lookup {lookup.name} ({lookup.operation}) failed: {why}; the gate does not "
                "decide on a value it could not read.",
                clause=f"lookup:{rule.name}.{lookup.name}",
                withheld=withheld,
            )
        )


def _wire(value: Any, ref: TypeRef) -> Any:
    """A CEL value as the read's argument would arrive from a program: money from cents to a
    decimal string, lists element-wise; the argument check then converts it as for any call."""
    if value is None:
        return None
    if ref.kind == "money" and isinstance(value, int) and not isinstance(value, bool):
        return str(Decimal(value).scaleb(-MONEY_SCALE))
    if ref.kind == "list" and ref.item is not None and isinstance(value, list):
        return [_wire(v, ref.item) for v in value]
    if ref.kind == "datetime" and hasattr(value, "isoformat"):
        return value.isoformat()
    return value
