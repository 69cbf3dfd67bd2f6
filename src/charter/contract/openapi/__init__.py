"""Draft a contract from an OpenAPI 3.0/3.1 document (`charter contract import-openapi SPEC`).

What a document says, the draft says: operations with their params, returns and HTTP
bindings, schemas as records and entities, and who may call each operation (the document's
security requirements as scopes). What a document cannot say, and every part of it the
mapping could not carry or had to choose, is listed under the draft's `to_decide:` key, and
`charter contract publish` refuses the draft until the author has decided each item and
deleted it. The draft always checks: an operation that cannot be drafted is left out and
listed, never dropped silently, and the draft is checked before it is returned.
"""

from __future__ import annotations

import json
import keyword
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from charter.backends import service_url_variable
from charter.contract._yaml import SourceMap, load_yaml
from charter.contract.checker import check_contract_data
from charter.contract.openapi._drafter import Drafter
from charter.contract.openapi._schema import mapping, snake
from charter.errors import ContractError, UsageError

__all__ = ["Draft", "draft_from_openapi", "load_openapi"]


@dataclass
class Draft:
    """A drafted contract: its YAML text and what it lists under `to_decide:`."""

    text: str  # the contract YAML; its `to_decide:` list at the top
    todos: list[str]
    operations: int
    entities: int


def load_openapi(path: Path) -> dict[str, Any]:
    """Read an OpenAPI 3.x document (JSON by its suffix, else YAML). Raises UsageError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read {path}: {error}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        raise UsageError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}") from None
    if not isinstance(data, dict) or not str(data.get("openapi", "")).startswith("3."):
        raise UsageError(f"{path}: not an OpenAPI 3 document (it needs `openapi: 3.x` at the top)")
    if not isinstance(data.get("paths"), dict) or not data["paths"]:
        raise UsageError(f"{path}: the document has no paths, so there is nothing to draft")
    return data


def draft_from_openapi(spec: dict[str, Any], *, name: str | None = None, source: str = "the document") -> Draft:
    """Draft a contract from a loaded OpenAPI 3.0/3.1 document (see `load_openapi`).

    Raises UsageError when no operation of the document can be drafted.
    """
    info = mapping(spec.get("info"))
    contract_name = snake(name or str(info.get("title") or "service"))
    if keyword.iskeyword(contract_name):
        contract_name += "_api"
    drafter = Drafter(spec, contract_name)
    drafter.find_entities()
    drafter.declare_entities()
    drafter.draft_entities()
    if not drafter.entity_blocks:
        drafter.todos.append("entities: no schema has a str or int key (`id`), so none became an entity; name one")
    drafter.draft_operations()
    if not drafter.operations:
        left_out = [t for t in drafter.todos if ": left out: " in t]
        raise UsageError(f"{source}: no operation could be drafted:\n" + "\n".join(f"  {t}" for t in left_out))
    service = _service(spec, contract_name, drafter.todos)
    drafter.todos.append("boundaries: the hard boundaries (never ...) and the rules that enforce them")
    contract: dict[str, Any] = {
        "to_decide": drafter.todos,
        "contract": contract_name,
        "version": "0.1.0",
        "summary": str(info.get("description") or info.get("title") or contract_name).strip().split("\n")[0],
        "owners": ["TODO@example.com"],
        "changelog": f"Drafted from {source} ({info.get('title', '')} {info.get('version', '')}).".replace(" )", ")"),
        "binding": {"http": service},
    }
    schemas = drafter.schemas
    used = _names_used(drafter.entity_blocks, schemas.records, drafter.operations)
    enums = {n: v for n, v in schemas.enums.items() if n in used}
    records = {n: f for n, f in schemas.records.items() if n in used}
    if enums:
        contract["enums"] = enums
    if records:
        contract["records"] = records
    contract["entities"] = drafter.entity_blocks
    contract["operations"] = drafter.operations
    contract["boundaries"] = []
    text = _checked_text(contract, source, drafter.todos)
    return Draft(text, drafter.todos, len(drafter.operations), len(drafter.entity_blocks))


def _service(spec: dict[str, Any], contract_name: str, todos: list[str]) -> dict[str, Any]:
    service: dict[str, Any] = {"service": contract_name}
    servers = spec.get("servers") if isinstance(spec.get("servers"), list) else []
    server = servers[0] if servers and isinstance(servers[0], dict) else {}
    url = str(server.get("url") or "")
    for variable, spec_var in (server.get("variables") or {}).items():
        if isinstance(spec_var, dict) and "default" in spec_var:
            url = url.replace("{" + str(variable) + "}", str(spec_var["default"]))
    variable = service_url_variable(contract_name)
    if re.match(r"https?://[^\s?#{}]+\Z", url):
        service["base_url"] = url
    elif url:
        todos.append(
            f"binding.http.base_url: the document's server '{url}' is not an absolute http(s) URL; set {variable} "
            "or write base_url as the service's full address (with its path prefix: paths are appended to it)"
        )
    else:
        todos.append(f"binding.http.base_url: the document names no server; set {variable} or write base_url")
    return service


def _header(source: str) -> str:
    return (
        f"# Drafted by `charter contract import-openapi` from {source}.\n"
        "# TO DECIDE before publishing: each item under `to_decide:` is something the document could not say\n"
        "# or the importer had to choose. Decide it, edit the contract, then delete the item. `charter contract\n"
        "# publish` refuses this contract while any item is left; delete the key once the list is empty.\n"
    )


def _dump(contract: dict[str, Any], source: str) -> str:
    return _header(source) + yaml.safe_dump(contract, sort_keys=False, allow_unicode=True, width=4096)


def _checked_text(contract: dict[str, Any], source: str, todos: list[str]) -> str:
    """The draft's text, checked. An operation whose draft does not check is left out and listed
    (a safety net: each is drafted to check); any other problem is a bug, reported as such."""
    for _ in range(len(contract["operations"]) + 1):
        text = _dump(contract, source)
        data, source_map = load_yaml(text, "draft")
        try:
            check_contract_data(data, source_map)
            return text
        except ContractError as error:
            starts = sorted((source_map.locate(("operations", op), key=True).line, op) for op in contract["operations"])
            failed: dict[str, str] = {}
            for problem in error.problems:
                owner = next((op for line, op in reversed(starts) if line <= problem.line), None)
                if owner is None or problem.line < starts[0][0] or problem.line > _end_of_operations(source_map):
                    raise UsageError(
                        f"{source}: the draft does not check, which is a bug of the importer; please report it "
                        f"with the document:\n{error}"
                    ) from None
                failed.setdefault(owner, problem.message)
            for op, message in failed.items():
                del contract["operations"][op]
                todos.append(f"operations.{op}: left out: its draft did not check: {message}")
            if not contract["operations"]:
                raise UsageError(f"{source}: no operation could be drafted:\n{error}") from None
    raise UsageError(f"{source}: the draft does not check, which is a bug of the importer")


def _end_of_operations(source_map: SourceMap) -> int:
    return source_map.locate(("boundaries",), key=True).line - 1


def _names_used(entities: dict[str, Any], records: dict[str, dict[str, str]], operations: dict[str, Any]) -> set[str]:
    """Type names reachable from the entities and operations (records may name records)."""
    texts = [t for e in entities.values() for t in e["fields"].values()]
    texts += [t for o in operations.values() for t in [*o["params"].values(), o.get("returns") or ""]]
    used: set[str] = set()
    pending = [n for t in texts for n in re.findall(r"[A-Z][A-Za-z0-9]*", t)]
    while pending:
        name = pending.pop()
        if name not in used:
            used.add(name)
            pending += [n for t in records.get(name, {}).values() for n in re.findall(r"[A-Z][A-Za-z0-9]*", t)]
    return used
