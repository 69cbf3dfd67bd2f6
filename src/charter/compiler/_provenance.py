"""Compile `from:` rules: one ProvenanceRule per param, and the gate's harvest plan."""

from __future__ import annotations

from collections.abc import Mapping

from charter.compiler.artifact import BoundaryRule, OperationRule, ProvenanceRule, SourceRule
from charter.contract._provenance import provenance_params, resolve_source
from charter.contract.checker import CheckedContract
from charter.contract.model import Operation

__all__ = ["harvest_plan", "provenance_rules"]


def provenance_rules(
    checked: CheckedContract, name: str, op: Operation, boundaries: tuple[BoundaryRule, ...]
) -> tuple[ProvenanceRule, ...]:
    rules = []
    for pname, param in provenance_params(op.params).items():
        sources: dict[str, SourceRule] = {}
        for item in param.from_ or []:
            resolved = resolve_source(item, checked.model, checked.records, checked.returns)  # checked already
            rule = SourceRule(
                kind=resolved.kind,
                label=resolved.label,
                match=resolved.match,
                operation=resolved.operation,
                path=resolved.path,
                attribute=resolved.attribute,
                input=resolved.input,
            )
            # A source listed twice (the checker warns) counts once; token is the wider match.
            if resolved.label not in sources or resolved.match == "token":
                sources[resolved.label] = rule
        ref = f"provenance:{name}.{pname}"
        rules.append(
            ProvenanceRule(
                param=pname,
                sources=tuple(sources.values()),
                boundaries=tuple(b.id for b in boundaries if ref in b.enforced_by),
            )
        )
    return tuple(rules)


def harvest_plan(operations: Mapping[str, OperationRule]) -> dict[str, tuple[SourceRule, ...]]:
    """Per read operation, the result sources any `from:` rule names (each label once, in
    contract order): the paths of its replies the gate records for provenance."""
    plan: dict[str, dict[str, SourceRule]] = {}
    for rule in operations.values():
        for provenance in rule.provenance:
            for source in provenance.sources:
                if source.kind == "result" and source.operation is not None:
                    plan.setdefault(source.operation, {}).setdefault(source.label, source)
    return {op: tuple(sources.values()) for op, sources in sorted(plan.items())}
