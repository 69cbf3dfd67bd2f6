"""The checker's part for bindings: where each operation is carried out (a Python function,
or an endpoint of the contract's HTTP service), and whether that resolves.

Called by `checker._Checker` with itself; every problem is reported through it, once.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import TYPE_CHECKING

from charter.contract._names import SNAKE
from charter.contract.bindings import locate_module
from charter.contract.cel_guards import suggest
from charter.contract.model import HttpEndpoint, Operation, param_type

if TYPE_CHECKING:
    from charter.contract._yaml import Path as DocPath
    from charter.contract.checker import _Checker

__all__ = [
    "check_binding",
    "check_default_binding",
    "check_service",
    "endpoint_placement",
    "path_placeholders",
    "placements",
]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_BASE_URL = re.compile(r"https?://[^\s?#]+\Z")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def path_placeholders(path: str) -> list[str]:
    """The {param} placeholders of an HTTP path template, in order: /orders/{id}/cancel -> ['id']."""
    return _PLACEHOLDER.findall(path)


def endpoint_placement(endpoint: HttpEndpoint, params: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(path, query, body) params of an HTTP endpoint, every param placed: those the endpoint
    does not place go where the method puts them (GET and DELETE: the query string), unless
    the author listed that place explicitly: then to the other one."""
    path_params = path_placeholders(endpoint.path)
    query, body = list(endpoint.query or ()), list(endpoint.body or ())
    rest = [p for p in params if p not in (*path_params, *query, *body)]
    query_first = endpoint.method in ("GET", "DELETE")
    if endpoint.query is None and (query_first or endpoint.body is not None):
        query += rest
    else:
        body += rest
    return path_params, query, body


def check_binding(checker: _Checker, name: str, op: Operation) -> None:
    default = checker.model.binding
    if op.binding is not None and op.binding.http is not None:
        _check_endpoint(checker, name, op, op.binding.http)
        return
    path: DocPath
    if op.binding is not None and op.binding.python is not None:
        ref, path = op.binding.python, ("operations", name, "binding", "python")
        if ":" not in ref:
            checker.fail(path, f"binding '{ref}' of '{name}' must be 'package.module:function'")
            return
    elif default is not None and default.python is not None:
        module = default.python
        if ":" in module:
            return  # reported once, by _check_default_binding
        ref, path = f"{module}:{name}", ("binding", "python")
    elif default is not None and default.http is not None:
        checker.fail(
            ("operations", name),
            f"operation '{name}' has no endpoint on service '{default.http.service}': add "
            "`binding: {http: {method: GET, path: /...}}` to the operation",
            key=True,
        )
        return
    else:
        checker.fail(
            ("operations", name),
            f"operation '{name}' has no binding: add `binding: {{python: module}}` to the contract or `binding: "
            f"{{python: module:function}}` to the operation",
            key=True,
        )
        return
    _resolve_python(checker, ref, path)


def check_default_binding(checker: _Checker) -> None:
    # Checked once here, not per operation: one mistake at one place is one message.
    default = checker.model.binding
    if default is None or default.python is None or ":" not in default.python:
        return
    module = default.python.partition(":")[0]
    shape = (
        "a contract's default binding names a module only ('package.module'); operations use module:<operation name>"
    )
    if checker.binding_search is not None and module:
        located = checker.modules[module] = locate_module(module, checker.binding_search)
        if isinstance(located, str):  # the deeper reason first: fixing the shape alone would not do
            checker.fail(("binding", "python"), f"binding module '{module}' cannot be bound: {located}; and {shape}")
            return
    checker.fail(
        ("binding", "python"),
        f"the contract's default binding '{default.python}' must name a module only: {shape}, e.g. "
        f"`binding: {{python: {module}}}`",
    )


def _resolve_python(checker: _Checker, ref: str, path: DocPath) -> None:
    if checker.binding_search is None:
        return
    module, _, function = ref.partition(":")
    located = checker.modules.get(module)
    if located is None:
        located = checker.modules[module] = locate_module(module, checker.binding_search)
        if isinstance(located, str):
            checker.fail(path, f"binding module '{module}' cannot be bound: {located}")
            return
    elif isinstance(located, str):
        return  # reported once, at the first operation bound to it
    error = _missing_function(module, Path(located.path), function)
    if error:
        checker.fail(path, f"binding '{ref}' does not resolve: {error}")


def check_service(checker: _Checker) -> None:
    default = checker.model.binding
    if default is None or default.http is None:
        return
    service = default.http
    if not SNAKE.match(service.service):
        checker.fail(("binding", "http", "service"), f"service name '{service.service}' must be lower snake_case")
    if service.base_url is not None and not _BASE_URL.match(service.base_url):
        checker.fail(
            ("binding", "http", "base_url"),
            f"base_url '{service.base_url}' must be an http:// or https:// URL without a query, "
            "e.g. http://127.0.0.1:8701",
        )


def _check_endpoint(checker: _Checker, name: str, op: Operation, endpoint: HttpEndpoint) -> None:
    path: DocPath = ("operations", name, "binding", "http")
    default = checker.model.binding
    if default is None or default.http is None:
        checker.fail(
            path,
            f"operation '{name}' is bound to an HTTP endpoint, but the contract names no service: add "
            "`binding: {http: {service: NAME, base_url: URL}}` at the top of the contract",
        )
    if not endpoint.path.startswith("/") or "?" in endpoint.path or "#" in endpoint.path:
        checker.fail((*path, "path"), f"path '{endpoint.path}' must start with '/' and hold no query or fragment")
    if op.kind == "write" and endpoint.method == "GET":
        checker.fail((*path, "method"), f"write operation '{name}' cannot be a GET: use POST, PUT, PATCH or DELETE")
    placed: dict[str, str] = {}
    for placeholder in path_placeholders(endpoint.path):
        written = op.params.get(placeholder)
        param = None if written is None else param_type(written)
        if param is None:
            checker.fail(
                (*path, "path"),
                f"path placeholder '{{{placeholder}}}' is not a param of '{name}'{suggest(placeholder, op.params)}",
            )
        elif param.endswith("?"):
            checker.fail((*path, "path"), f"path placeholder '{{{placeholder}}}' needs a required param, not {param}")
        placed[placeholder] = "path"
    for where in ("query", "body"):
        listed = getattr(endpoint, where)
        if listed is None:
            continue
        if where == "body" and endpoint.method == "GET" and listed:
            checker.fail((*path, "body"), "a GET request carries no body: send these params in `query`")
        for index, param_name in enumerate(listed):
            if param_name not in op.params:
                checker.fail(
                    (*path, where, index),
                    f"'{param_name}' is not a param of '{name}'{suggest(param_name, op.params)}",
                )
            elif param_name in placed:
                checker.fail((*path, where, index), f"param '{param_name}' is already sent in the {placed[param_name]}")
            else:
                placed[param_name] = where
    if endpoint.method == "GET" and endpoint.query is not None:  # the rest would go in a GET's body
        unsent = [p for p in op.params if p not in placed]
        if unsent:
            checker.fail((*path, "query"), f"params {', '.join(unsent)} of '{name}' must be in the query of a GET")
    if endpoint.query is not None and endpoint.body is not None:
        unsent = [p for p in op.params if p not in placed]
        if unsent:
            checker.fail(path, f"params {', '.join(unsent)} of '{name}' are sent nowhere: list them in query or body")
    if endpoint.result and not endpoint.result.startswith("/"):
        checker.fail((*path, "result"), f"result '{endpoint.result}' must be a JSON pointer such as /order, or ''")


def placements(checker: _Checker, name: str, op: Operation) -> dict[str, str]:
    """Where an HTTP-bound operation sends each param: 'path', 'query' or 'body' ({} for Python)."""
    if op.binding is None or op.binding.http is None or checker.model.binding is None or not checker.model.binding.http:
        return {}
    path_params, query, body = endpoint_placement(op.binding.http, list(op.params))
    return {**dict.fromkeys(body, "body"), **dict.fromkeys(query, "query"), **dict.fromkeys(path_params, "path")}


def _missing_function(module: str, source_file: Path, function: str) -> str | None:
    """None when `source_file` defines `function` at top level, else why not."""
    if not _IDENT.match(function):
        return "write it as 'package.module:function'"
    try:
        tree = ast.parse(source_file.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        return f"module '{module}' ({source_file}) cannot be read: {exc}"
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    if function not in defined:
        return f"module '{module}' defines no function '{function}'{suggest(function, defined)}"
    return None
