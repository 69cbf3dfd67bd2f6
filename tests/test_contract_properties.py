"""What the checker accepts, runs: generated valid contracts through every stage.

Hypothesis writes contracts as YAML text (any param order, optional and required params
mixed, nested and self-containing records, lists, enums, every scalar type, entities with
lifecycles and self-transitions, stateless contracts, reads and writes, guards from a
small null-safe set, boundaries of every rule kind). Each one must check, compile, publish
and load back from the registry, render stubs that are valid Python with the declared
keyword-only signatures, pass the agent's static check with a program calling every
operation, and run that program through the real sandbox and the real ContractGate over
an in-memory backend whose results have the declared types. Every call must be allowed,
with its result reaching the program intact, or denied for a contract reason; never
GATE_ERROR, INVALID_ARGUMENTS or an error of the program.
"""

from __future__ import annotations

import ast
import datetime as dt
import decimal
import inspect
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from charter.agent._program import check_program
from charter.audit import AuditLog, Decision
from charter.backends import InMemoryBackend
from charter.compiler import CompiledContract, compile_contract
from charter.contract import load_contract
from charter.contract.types import TypeRef
from charter.gate import ContractGate
from charter.principal import Principal
from charter.registry import Registry
from charter.runner import Runner
from charter.sandbox import Completed, Paused, Sandbox
from tests.conftest import charter

# Names that are valid and easy to get wrong somewhere: builtins, the runtime's own
# names, Record's method and attribute names, a leading underscore, soft keywords.
FIELD_NAMES = [
    "id",
    "name",
    "type",
    "list",
    "str",
    "datetime",
    "date",
    "Decimal",
    "to_dict",
    "_fields",
    "_private",
    "self",
    "cls",
    "match",
    "case",
    "kwargs",
    "items",
    "keys",
    "amount",
    "page",
    "origin",
    "note",
    "print",
    "conclude",
    "principal",
    "ContractViolation",
    "x1",
]
TYPE_NAMES = ["Color", "Item", "Node", "Book", "Record", "Contract", "Principal", "Entry", "Tag", "Loan"]
VALUES = ["red", "green", "out", "in_stock", "none", "yes", "no", "on", "off", "true", "null", "a1"]
SCALARS = ["str", "int", "float", "bool", "money", "datetime", "date"]
# What a program may be refused for: the contract's rules, never a broken gate or a call
# the gate could not read.
CONTRACT_REASONS = {
    "FORBIDDEN_SCOPE",
    "APPROVAL_REQUIRED",
    "SEQUENCE_VIOLATION",
    "STATE_VIOLATION",
    "GUARD_VIOLATION",
    "LIMIT_EXCEEDED",
}
EXAMPLES = int(os.environ.get("CHARTER_PROPERTY_EXAMPLES", "40"))


@dataclass
class Generated:
    """A contract as data (dumped to YAML text by the test)."""

    data: dict[str, Any]


def _unique(draw: st.DrawFn, pool: list[str], low: int, high: int, exclude: frozenset[str] = frozenset()) -> list[str]:
    choices = [p for p in pool if p not in exclude]
    return draw(st.lists(st.sampled_from(choices), min_size=min(low, len(choices)), max_size=high, unique=True))


def _type_text(draw: st.DrawFn, named: list[str], later: list[str], depth: int = 0) -> str:
    """A type over scalars and `named`; `later` names (records not yet complete, itself
    included) only through an optional or a list, so no record contains itself directly."""
    options = ["scalar"] * 4 + (["named"] if named else []) + (["list"] if depth < 2 else [])
    options += ["later"] if later else []
    kind = draw(st.sampled_from(options))
    if kind == "scalar":
        text = draw(st.sampled_from(SCALARS))
    elif kind == "named":
        text = draw(st.sampled_from(named))
    elif kind == "later":
        inner = draw(st.sampled_from(later))
        return draw(st.sampled_from([f"{inner}?", f"list[{inner}]"]))
    else:
        text = f"list[{_type_text(draw, named, [], depth + 1)}]"
    return text + ("?" if draw(st.booleans()) else "")


@st.composite
def contracts(draw: st.DrawFn) -> Generated:
    type_names = _unique(draw, TYPE_NAMES, 0, 6)
    n_enums = draw(st.integers(0, min(2, len(type_names))))
    enum_names, rest = type_names[:n_enums], type_names[n_enums:]
    n_records = draw(st.integers(0, min(2, len(rest))))
    record_names, entity_names = rest[:n_records], rest[n_records : n_records + 2]

    enums = {name: _unique(draw, VALUES, 1, 3) for name in enum_names}
    records: dict[str, dict[str, str]] = {}
    for index, name in enumerate(record_names):
        fields = _unique(draw, FIELD_NAMES, 1, 3)
        named = [*enum_names, *record_names[:index]]
        records[name] = {f: _type_text(draw, named, record_names[index:]) for f in fields}

    plain_types = [*enum_names, *record_names]
    entities: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    scopes_pool = ["lib:read", "lib:write", "lib:admin"]
    guard_count = 0

    def guards_for(params: dict[str, str], entity: str | None) -> list[dict[str, str]]:
        nonlocal guard_count
        found: list[dict[str, str]] = []
        for pname, text in params.items():
            condition = _safe_guard(f"params.{pname}", text, enums)
            if condition is not None and draw(st.booleans()):
                found.append({"id": f"g{guard_count}", "when": condition, "message": f"Guard on {pname}."})
                guard_count += 1
        if entity is not None and draw(st.booleans()):
            key = entities[entity]["key"]
            field_guards = [f"entity.{key} == entity.{key}"]
            field_guards += [
                c
                for f, t in entities[entity]["fields"].items()
                if (c := _safe_guard(f"entity.{f}", t, enums)) is not None
            ]
            found.append({"id": f"g{guard_count}", "when": draw(st.sampled_from(field_guards)), "message": "Entity."})
            guard_count += 1
        if draw(st.booleans()):
            found.append({"id": f"g{guard_count}", "when": 'principal.id != ""', "message": "Who acts."})
            guard_count += 1
        return found

    def params_for(key: tuple[str, str] | None) -> dict[str, str]:
        names = _unique(draw, FIELD_NAMES, 0, 4, exclude=frozenset({key[0]} if key else ()))
        params = {n: _type_text(draw, plain_types, []) for n in names}
        if key is not None:
            params[key[0]] = key[1]
        # Param order is the author's; optional ones before required ones included.
        return dict(draw(st.permutations(list(params.items()))))

    def common(op: dict[str, Any]) -> dict[str, Any]:
        op["scopes"] = _unique(draw, scopes_pool, 0, 2)
        if op["kind"] == "write" and not op["scopes"]:
            op["public"] = True  # a write must say who may call it: scopes, or public
        if op["kind"] == "write" and draw(st.integers(0, 5)) == 0:
            op["requires_approval"] = True
        if draw(st.booleans()):
            op["idempotent"] = draw(st.booleans())
        return op

    for name in entity_names:
        key_name = draw(st.sampled_from(["id", "code", "isbn"]))
        key_type = draw(st.sampled_from(["int", "str"]))
        others = _unique(draw, FIELD_NAMES, 0, 3, exclude=frozenset({key_name, "status"}))
        fields = {f: _type_text(draw, plain_types, []) for f in others}
        fields[key_name] = key_type
        fields = dict(draw(st.permutations(list(fields.items()))))
        entity: dict[str, Any] = {"doc": f"A {name}.", "key": key_name, "fields": fields}
        states = _unique(draw, VALUES, 1, 3)
        if draw(st.booleans()):
            transitions = {}
            for t_index in range(draw(st.integers(0, 2))):
                start = _unique(draw, states, 1, len(states))
                transitions[f"move_{t_index}"] = {"from": start, "to": draw(st.sampled_from(states))}
            entity["lifecycle"] = {
                "field": "status",
                "states": states,
                "initial": draw(st.sampled_from(states)),
                "transitions": transitions,
            }
        entities[name] = entity
        lower = name.lower()
        key_param = draw(st.sampled_from([key_name, "ref"]))
        reader = f"get_{lower}"
        operations[reader] = common(
            {
                "kind": "read",
                "doc": f"Fetch one {name}.",
                "entity": name,
                "key": key_param,
                "params": params_for((key_param, key_type)) if draw(st.booleans()) else {key_param: key_type},
                "returns": name,
            }
        )
        # the gate calls the reader with the key alone: its other params must be optional
        operations[reader]["params"] = {
            p: (t if p == key_param or t.endswith("?") else f"{t}?") for p, t in operations[reader]["params"].items()
        }
        for t_name in entity.get("lifecycle", {}).get("transitions", {}):
            params = params_for((key_param, key_type))
            op: dict[str, Any] = {
                "kind": "write",
                "doc": f"Apply {t_name}.",
                "entity": name,
                "key": key_param,
                "params": params,
                "transition": t_name,
                "guards": guards_for(params, name),
            }
            if draw(st.booleans()):
                op["returns"] = name
            if draw(st.booleans()):
                op["after"] = [reader]
            operations[f"{t_name}_{lower}"] = common(op)
        if draw(st.booleans()):
            params = params_for(None)
            operations[f"create_{lower}"] = common(
                {
                    "kind": "write",
                    "doc": f"Create a {name}.",
                    "entity": name,
                    "params": params,
                    "returns": name,
                    "guards": guards_for(params, None),
                }
            )
    # stateless operations: no entity at all
    for index in range(draw(st.integers(0 if operations else 1, 2))):
        kind = draw(st.sampled_from(["read", "write"]))
        params = params_for(None)
        op = {"kind": kind, "doc": f"Stateless {index}.", "params": params, "guards": guards_for(params, None)}
        if kind == "read" or draw(st.booleans()):
            op["returns"] = _type_text(draw, [*plain_types, *entity_names], [])
        operations[f"op_{index}"] = common(op)

    boundaries = []
    rules: list[dict[str, str]] = []
    for ename, entity in entities.items():
        rules += [{"transition": f"{ename}.{t}"} for t in entity.get("lifecycle", {}).get("transitions", {})]
    for oname, op in operations.items():
        rules += [{"guard": g["id"]} for g in op.get("guards", [])]
        rules += [{"sequence": oname}] if op.get("after") else []
        rules += [{"approval": oname}] if op.get("requires_approval") else []
        rules += [{"scope": oname}] if op.get("scopes") else []
    for index in range(draw(st.integers(0, 2))):
        if rules and draw(st.booleans()):
            enforced = draw(st.lists(st.sampled_from(rules), min_size=1, max_size=2, unique_by=json.dumps))
            boundaries.append({"id": f"b{index}", "text": f"Boundary {index}.", "enforced_by": enforced})
        else:
            boundaries.append({"id": f"b{index}", "text": f"Advice {index}.", "advisory": True})

    data: dict[str, Any] = {
        "contract": "library",
        "version": "1.0.0",
        "summary": "A generated contract.",
        "owners": ["tests@example.com"],
        "changelog": "Generated.",
        "binding": {"python": "generated_backend"},
    }
    if enums:
        data["enums"] = enums
    if records:
        data["records"] = records
    if entities or draw(st.booleans()):
        data["entities"] = entities  # sometimes written as `entities: {}`, sometimes absent
    data["operations"] = operations
    if boundaries:
        data["boundaries"] = boundaries
    data["limits"] = {"max_denials": 100}  # every operation may be denied without ending the run
    return Generated(data)


def _safe_guard(chain: str, text: str, enums: dict[str, list[str]]) -> str | None:
    """A guard over one value that holds or fails only by its value, null-safe when optional."""
    optional = text.endswith("?")
    base = text.rstrip("?")
    condition = {
        "int": f"{chain} >= 0 || {chain} < 0",
        "float": f"{chain} == {chain}",
        "money": f"{chain} > 0",
        "str": f"size({chain}) < 1000000",
        "bool": f"{chain} || !{chain}",
        "datetime": f'{chain} > timestamp("1970-01-01T00:00:00Z")',
        "date": f'{chain} >= timestamp("1900-01-01T00:00:00Z") && {chain} - duration("24h") < {chain}',
    }.get(base)
    if base in enums:
        condition = f"{chain} in [{', '.join(json.dumps(v) for v in enums[base])}]"
    elif base.startswith("list["):
        condition = f"size({chain}) >= 0"
    if condition is None:
        return None
    if not optional:
        return condition
    # Both null-safe forms: the one the checker's hint names, and its negation.
    return f"{chain} != null && ({condition})" if base == "money" else f"{chain} == null || ({condition})"


# --- values of a declared type, for arguments and backend results ------------------------------


def values(ref: TypeRef, compiled: CompiledContract, depth: int = 0) -> st.SearchStrategy[Any]:
    records, enums = compiled.gate.records, compiled.gate.enums
    if ref.optional:
        inner = TypeRef(ref.kind, name=ref.name, item=ref.item)
        return st.none() if depth > 2 else st.one_of(st.none(), values(inner, compiled, depth))
    if ref.kind == "list":
        assert ref.item is not None
        if depth > 2:
            return st.just([])
        return st.lists(values(ref.item, compiled, depth + 1), max_size=2)
    if ref.kind == "record":
        fields = records[ref.name or ""]
        return st.fixed_dictionaries({f: values(t, compiled, depth + 1) for f, t in fields.items()})
    if ref.kind == "enum":
        return st.sampled_from(enums[ref.name or ""])
    return {
        "str": st.text(max_size=8),
        "int": st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(allow_nan=False, allow_infinity=False),
        "bool": st.booleans(),
        "money": st.decimals(min_value=-(10**12), max_value=10**12, places=2),
        "datetime": st.datetimes(
            min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1), timezones=st.just(dt.UTC)
        ),
        "date": st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2200, 1, 1)),
    }[ref.kind]


def literal(value: Any, ref: TypeRef, compiled: CompiledContract) -> str:
    """`value` as Python source a program writes."""
    if value is None:
        return "None"
    if ref.kind == "list":
        assert ref.item is not None
        return "[" + ", ".join(literal(v, ref.item, compiled) for v in value) + "]"
    if ref.kind == "record":
        fields = compiled.gate.records[ref.name or ""]
        return "{" + ", ".join(f"{f!r}: {literal(value[f], t, compiled)}" for f, t in fields.items()) + "}"
    if ref.kind == "money":
        return f"Decimal({str(value)!r})"
    if ref.kind == "datetime":
        return f"datetime.datetime.fromisoformat({value.isoformat()!r})"
    if ref.kind == "date":
        return f"datetime.date.fromisoformat({value.isoformat()!r})"
    return repr(value)


def normal(value: Any, ref: TypeRef | None, compiled: CompiledContract) -> Any:
    """A value as JSON carries it, in one form whichever side it came from."""
    if value is None or ref is None:
        return None
    if ref.kind == "list":
        assert ref.item is not None
        return [normal(v, ref.item, compiled) for v in value]
    if ref.kind == "record":
        fields = compiled.gate.records[ref.name or ""]
        return {f: normal(value.get(f), t, compiled) for f, t in fields.items()}
    if ref.kind == "money":
        return decimal.Decimal(str(value))
    if ref.kind == "datetime":
        return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)
    if ref.kind == "date":
        return value if isinstance(value, dt.date) else dt.date.fromisoformat(value)
    if ref.kind == "float":
        return float(value)
    return value


# --- one sandbox for every example; each run gets a fresh instance anyway -------------------


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(pool_size=0)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    # No shrinking: a failure prints the whole contract and program, and shrinking runs a
    # sandbox per step (minutes); the failing example is replayed first on the next run.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(generated=contracts(), data=st.data())
def test_every_contract_that_checks_compiles_and_runs(
    generated: Generated, data: st.DataObject, sandbox: Sandbox, scratch: Path
) -> None:
    folder = Path(tempfile.mkdtemp(dir=scratch))
    text = yaml.safe_dump(
        generated.data,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=data.draw(st.sampled_from([None, False])),
    )
    contract_file = folder / "library.yaml"
    contract_file.write_text(text, encoding="utf-8")
    operations = list(generated.data["operations"])
    (folder / "generated_backend.py").write_text(
        "".join(f"def {op}(**arguments):\n    raise RuntimeError('not used')\n\n\n" for op in operations)
    )

    checked = load_contract(contract_file)  # the real checker, bindings resolved beside the file
    compiled = compile_contract(checked)
    gate_table = compiled.gate

    registry = Registry(folder / "charter.db")
    registry.publish(checked, text)
    assert registry.get("library").sha256 == compiled.sha256

    stubs: dict[str, Any] = {}
    exec(compile(compiled.stub_source, "stubs.py", "exec"), stubs)  # our own output, valid Python
    for name, rule in gate_table.operations.items():
        signature = inspect.signature(getattr(stubs["library"], name))
        assert list(signature.parameters) == [p.name for p in rule.params]
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in signature.parameters.values())
        assert f"{name}(" in compiled.prompt_context

    # One program calling every operation once, with arguments of the declared types.
    lines = ["import datetime", "from decimal import Decimal", "results = []"]
    for name, rule in gate_table.operations.items():
        arguments = []
        for param in rule.params:
            if param.type.optional and data.draw(st.booleans()):
                continue  # omitted: an optional param may be left out wherever it is declared
            if rule.key == param.name:
                value = data.draw(st.sampled_from([1, 2] if param.type.kind == "int" else ["k1", "k2"]))
            else:
                value = data.draw(values(param.type, compiled))
            arguments.append(f"{param.name}={literal(value, param.type, compiled)}")
        lines += [
            "try:",
            f"    results.append([{name!r}, 'ok', library.{name}({', '.join(arguments)})])",
            "except ContractViolation as error:",
            f"    results.append([{name!r}, 'denied', error.code, error.reason])",
            "except OperationError as error:",
            f"    results.append([{name!r}, 'failed', error.code, error.message])",
        ]
    lines.append("conclude('done', data=results)")
    program = "\n".join(lines) + "\n"
    assert check_program(program, compiled) == ()
    ast.parse(program)

    results = {name: data.draw(_result(rule.returns, compiled)) for name, rule in gate_table.operations.items()}
    returned: dict[str, Any] = {}  # what each operation gave the program (its first call)

    def answer(name: str) -> Callable[..., Any]:
        rule = gate_table.operations[name]

        def perform(**arguments: Any) -> Any:
            value = results[name]
            if rule.entity and rule.key in arguments and rule.returns and rule.returns.name == rule.entity:
                key_field = generated.data["entities"][rule.entity]["key"]
                value = {**value, key_field: arguments[rule.key]}  # the entity asked for
            returned.setdefault(name, value)
            return value

        return perform

    backend = InMemoryBackend({name: answer(name) for name in operations})
    ContractGate(compiled, backend)  # builds for every contract
    log = AuditLog(folder / "audit.db")
    runner = Runner(audit=log, sandbox=sandbox, backend_for=lambda _: backend)
    every_scope = ["lib:read", "lib:write", "lib:admin"]
    scopes = frozenset(data.draw(st.one_of(st.just(every_scope), st.lists(st.sampled_from(every_scope), unique=True))))
    execution = runner.execute(program, contract=compiled, principal=Principal("ada", scopes))

    codes = [r.code for r in execution.calls if isinstance(r, Decision)]
    if isinstance(execution.outcome, Paused):  # a call that requires approval passed every other check
        paused = execution.outcome
        event("paused for approval")
        assert gate_table.operations[paused.operation].requires_approval, (text, program, paused)
        assert list(gate_table.operations).index(paused.operation) == paused.call - 1 == len(codes), (text, program)
        assert execution.status == "awaiting_approval"
        assert paused.operation not in returned  # nothing of the paused call executed
        return
    assert isinstance(execution.outcome, Completed), f"{execution.outcome}\n{text}\n{program}"
    for entry in execution.outcome.data:
        name, status = entry[0], entry[1]
        rule = gate_table.operations[name]
        event(f"call {status}" + ("" if status == "ok" else f" {entry[2]}"))
        if status == "ok":
            got = normal(entry[2], rule.returns, compiled)
            assert got == normal(returned[name], rule.returns, compiled), (text, program, name)
        else:
            assert status == "denied", (text, program, entry)
            assert entry[2] in CONTRACT_REASONS, (text, program, entry)
    assert all(code in {"OK", *CONTRACT_REASONS} for code in codes), (text, program, codes)
    assert len(codes) == len(operations)


def _result(ref: TypeRef | None, compiled: CompiledContract) -> st.SearchStrategy[Any]:
    return st.none() if ref is None else values(ref, compiled)


def test_a_generated_contract_checks_publishes_and_runs_from_the_cli(tmp_path: Path) -> None:
    """`charter contract check`, `publish` and `exec` on one contract shaped like the fault's:
    an optional param declared before a required one, a stateless operation, no entities."""
    (tmp_path / "stateless_backend.py").write_text(
        "def list_books(**arguments):\n    return [{'title': 'Dune', 'page': arguments.get('page')}]\n",
        encoding="utf-8",
    )
    contract = tmp_path / "stateless.yaml"
    contract.write_text(
        "contract: stateless\nversion: 1.0.0\nsummary: Books.\nowners: [a@example.com]\nchangelog: First.\n"
        "binding: {python: stateless_backend}\n"
        "records:\n  Hit: {title: str, page: 'int?'}\n"
        "operations:\n  list_books:\n    kind: read\n    doc: Search.\n"
        "    params: {page: 'int?', origin: str}\n    returns: list[Hit]\n",
        encoding="utf-8",
    )
    program = tmp_path / "program.py"
    program.write_text("hits = stateless.list_books(origin='web')\nconclude(hits[0].title)\n", encoding="utf-8")
    assert charter("contract", "check", str(contract), cwd=tmp_path).returncode == 0
    assert charter("contract", "publish", str(contract), cwd=tmp_path).returncode == 0
    run = charter("exec", str(program), "--contract", "stateless", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "Dune" in run.stdout
