"""Compile a checked contract into its artifact. Pure: same input, byte-identical output."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace
from typing import Any

import msgspec

from charter.compiler._lookups import lookup_rules
from charter.compiler._provenance import harvest_plan, provenance_rules
from charter.compiler.artifact import (
    ApprovalPolicy,
    BindingSpec,
    BoundaryRule,
    CompiledContract,
    GateTable,
    GuardRule,
    GuestOperation,
    GuestSurface,
    HttpEndpointSpec,
    LimitsSpec,
    OperationRule,
    ParamSpec,
    QuotaRule,
    TransitionRule,
)
from charter.compiler.canonical import canonical_json, content_hash
from charter.compiler.render import RenderView, render
from charter.contract._approvals import default_scope, parse_expiry
from charter.contract._attributes import after_groups, attributes_used
from charter.contract._quotas import parse_window, sums_money
from charter.contract._secrets import secret_params
from charter.contract.checker import CheckedContract, endpoint_placement, entity_reader, state_enum_name
from charter.contract.model import Approval, Contract, Operation

__all__ = ["artifact_files", "compile_contract"]


def compile_contract(checked: CheckedContract) -> CompiledContract:
    model = checked.model
    canonical = canonical_json(model)
    sha256 = content_hash(canonical)
    boundaries = tuple(
        BoundaryRule(
            id=b.id,
            text=b.text,
            advisory=b.advisory,
            enforced_by=tuple(f"{r.kind}:{r.target}" for r in b.enforced_by),
        )
        for b in model.boundaries
    )
    records = {k: dict(v) for k, v in checked.records.items()}
    enums = dict(checked.enums)
    operations = {name: _operation_rule(model, checked, name, op, boundaries) for name, op in model.operations.items()}
    gate = GateTable(
        contract=model.contract,
        version=model.version,
        sha256=sha256,
        operations=operations,
        records=records,
        enums=enums,
        boundaries=boundaries,
        limits=LimitsSpec(**model.limits.model_dump()),
        provenance_paths=harvest_plan(operations),
        principal_attributes=dict(checked.principal_attributes),
        approvals=_approval_policy(model),
    )
    surface = GuestSurface(
        contract=model.contract,
        version=model.version,
        sha256=sha256,
        operations=tuple(
            GuestOperation(name=o.name, kind=o.kind, params=o.params, returns=o.returns) for o in operations.values()
        ),
        records=records,
        enums=enums,
    )
    view = _render_view(model, gate)
    return CompiledContract(
        name=model.contract,
        version=model.version,
        sha256=sha256,
        summary=model.summary,
        canonical=canonical.decode(),
        stub_source=render("stubs.py.j2", view),
        prompt_context=render("contract.md.j2", view),
        surface=surface,
        gate=gate,
        modules=tuple(checked.modules.values()),
    )


def artifact_files(compiled: CompiledContract) -> dict[str, str]:
    """The artifacts as files (name -> text), with a manifest of their hashes last."""

    def pretty(value: object) -> str:
        return msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n"

    files = {
        "stubs.py": compiled.stub_source,
        "prompt.md": compiled.prompt_context,
        "gate.json": pretty(compiled.gate),
        "surface.json": pretty(compiled.surface),
    }
    manifest = {
        "contract": compiled.name,
        "version": compiled.version,
        "sha256": compiled.sha256,
        "files": {name: hashlib.sha256(text.encode()).hexdigest() for name, text in files.items()},
    }
    files["manifest.json"] = json.dumps(manifest, indent=2) + "\n"
    return files


def _enforcing(boundaries: tuple[BoundaryRule, ...], rule: str) -> tuple[str, ...]:
    return tuple(b.id for b in boundaries if rule in b.enforced_by)


def _operation_rule(
    model: Contract,
    checked: CheckedContract,
    name: str,
    op: Operation,
    boundaries: tuple[BoundaryRule, ...],
) -> OperationRule:
    params = checked.params[name]
    transition = None
    if op.transition and op.entity:
        lifecycle = model.entities[op.entity].lifecycle
        assert lifecycle is not None  # the checker guarantees it
        spec = lifecycle.transitions[op.transition]
        transition = TransitionRule(
            name=op.transition,
            field=lifecycle.field,
            from_states=tuple(spec.from_),
            to=spec.to,
            boundaries=_enforcing(boundaries, f"transition:{op.entity}.{op.transition}"),
        )
    after, after_any = after_groups(op.after)
    approval = op.requires_approval if isinstance(op.requires_approval, Approval) else None
    return OperationRule(
        name=name,
        kind=op.kind,
        doc=op.doc,
        entity=op.entity,
        key=op.key,
        params=tuple(ParamSpec(name=p, type=t, required=not t.optional) for p, t in params.items()),
        returns=checked.returns[name],
        scopes=tuple(op.scopes),
        guards=tuple(
            GuardRule(
                id=g.id,
                when=g.when,
                message=g.message,
                boundaries=_enforcing(boundaries, f"guard:{g.id}"),
            )
            for g in op.guards
        ),
        transition=transition,
        after=after,
        after_boundaries=_enforcing(boundaries, f"sequence:{name}") if op.after else (),
        idempotent=op.idempotent,
        requires_approval=bool(op.requires_approval),
        reader=entity_reader(model, op.entity) if op.entity and op.key else None,
        binding=_binding(model, name, op),
        secret=secret_params(op),
        quotas=tuple(
            QuotaRule(
                id=q.id,
                sum=q.sum,
                per=tuple(q.per),
                window=q.window,
                window_seconds=parse_window(q.window),
                max=q.max,
                message=q.message,
                boundaries=_enforcing(boundaries, f"quota:{q.id}"),
                money=sums_money(q.sum, params),
            )
            for q in op.quotas
        ),
        lookups=lookup_rules(checked, op),
        provenance=provenance_rules(checked, name, op, boundaries),
        after_any=after_any,
        approval_when=approval.when if approval else None,
        approval_reason=approval.reason if approval else None,
        attributes=attributes_used(op, list(checked.principal_attributes)),
    )


def _approval_policy(model: Contract) -> ApprovalPolicy | None:
    """The `approvals:` block compiled (None: not written, so the artifact is as before it existed)."""
    block = model.approvals
    if block is None:
        return None
    return ApprovalPolicy(
        scope=block.scope or default_scope(model.contract), expires_seconds=parse_expiry(block.expires)
    )


def _binding(model: Contract, name: str, op: Operation) -> BindingSpec:
    """The operation's backend, with every default the contract leaves implicit made explicit."""
    if op.binding is not None and op.binding.python is not None:
        return BindingSpec(kind="python", target=op.binding.python)
    if op.binding is None or op.binding.http is None:
        assert model.binding is not None  # the checker guarantees a default for unbound operations
        assert model.binding.python is not None
        return BindingSpec(kind="python", target=f"{model.binding.python}:{name}")
    endpoint = op.binding.http
    assert model.binding is not None  # the checker guarantees a service for every endpoint
    assert model.binding.http is not None
    service = model.binding.http
    path_params, query, body = endpoint_placement(endpoint, list(op.params))
    return BindingSpec(
        kind="http",
        target=f"{endpoint.method} {endpoint.path}",
        http=HttpEndpointSpec(
            service=service.service,
            base_url=service.base_url,
            method=endpoint.method,
            path=endpoint.path,
            path_params=tuple(path_params),
            query=tuple(query),
            body=tuple(body),
            result=endpoint.result,
            timeout_seconds=endpoint.timeout_seconds or service.timeout_seconds,
            read_retries=service.read_retries,
        ),
    )


def _render_view(model: Contract, gate: GateTable) -> RenderView:
    entities: dict[str, Any] = {}
    state_enums: set[str] = set()
    for name, entity in model.entities.items():
        lifecycle = None
        if entity.lifecycle is not None:
            state_enums.add(state_enum_name(name, entity.lifecycle.field))
            lifecycle = SimpleNamespace(
                field=entity.lifecycle.field,
                initial=entity.lifecycle.initial,
                states=entity.lifecycle.states,
                transitions=[
                    SimpleNamespace(name=t, from_states=spec.from_, to=spec.to)
                    for t, spec in entity.lifecycle.transitions.items()
                ],
            )
        entities[name] = SimpleNamespace(doc=entity.doc, key=entity.key, lifecycle=lifecycle)
    by_id = {b.id: b for b in gate.boundaries}
    boundaries_by_operation = {
        op.name: tuple(
            by_id[i]
            for i in dict.fromkeys(
                [
                    *(op.transition.boundaries if op.transition else ()),
                    *(b for g in op.guards for b in g.boundaries),
                    *(b for q in op.quotas for b in q.boundaries),
                    *op.after_boundaries,
                    *_enforcing(gate.boundaries, f"approval:{op.name}"),
                    *_enforcing(gate.boundaries, f"scope:{op.name}"),
                    *(b for r in op.provenance for b in r.boundaries),
                ]
            )
        )
        for op in gate.operations.values()
    }
    return RenderView(
        name=gate.contract,
        version=gate.version,
        sha256=gate.sha256,
        summary=model.summary,
        enums=gate.enums,
        state_enums=frozenset(state_enums),
        records=gate.records,
        entities=entities,
        operations=tuple(gate.operations.values()),
        boundaries=gate.boundaries,
        boundaries_by_operation=boundaries_by_operation,
    )
