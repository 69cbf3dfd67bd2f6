"""The program in a model's answer, and Charter's static check of it before it runs.

The check catches, without running anything, what would otherwise cost a sandbox run
and a model round: a syntax error, an import the sandbox refuses, a call to an
operation the contract does not have, an argument the operation does not take, a
positional argument, a missing required one, and a program that never concludes. Each
finding names its line and how to fix it. The sandbox and the gate still check
everything again at run time; this check only saves rounds.
"""

from __future__ import annotations

import ast
import difflib
import re

from charter.compiler.artifact import CompiledContract
from charter.sandbox import allowed_modules

__all__ = ["check_program", "extract_program"]

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_program(answer: str) -> tuple[str | None, str | None]:
    """(program, None), or (None, why there is none). Exactly one fenced block is accepted."""
    blocks = _FENCE.findall(answer)
    if not blocks:
        return None, "it has no ```python block"
    if len(blocks) > 1:
        return None, f"it has {len(blocks)} code blocks where one is expected"
    program: str = blocks[0]
    if not program.strip():
        return None, "its ```python block is empty"
    return program, None


def check_program(program: str, contract: CompiledContract) -> tuple[str, ...]:
    """Findings, each 'line N: what is wrong; how to fix it'. () means the program may run."""
    try:
        tree = ast.parse(program, filename="<program>")
    except SyntaxError as error:
        where = f"line {error.lineno}, column {error.offset}" if error.lineno else "somewhere"
        return (f"{where}: SyntaxError: {error.msg}",)
    return tuple(_Checker(contract).findings_for(tree))


class _Checker(ast.NodeVisitor):
    def __init__(self, contract: CompiledContract) -> None:
        self._contract = contract
        self._operations = {op.name: op for op in contract.surface.operations}
        self._allowed = frozenset(allowed_modules())
        self._findings: list[tuple[int, str]] = []
        self._concludes = False

    def findings_for(self, tree: ast.Module) -> list[str]:
        self.visit(tree)
        if not self._concludes:
            self._findings.append((0, "the program never calls conclude(answer) or refuse(reason); end it with one"))
        return [f"line {line}: {message}" if line else message for line, message in sorted(self._findings)]

    def _find(self, node: ast.AST, message: str) -> None:
        self._findings.append((getattr(node, "lineno", 0), message))

    def _check_module(self, node: ast.AST, name: str) -> None:
        if name not in self._allowed and name.split(".", maxsplit=1)[0] not in self._allowed:
            self._find(
                node, f"import of {name!r} is not allowed in the sandbox; allowed: {', '.join(sorted(self._allowed))}"
            )

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._check_module(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or node.module is None:
            self._find(node, "relative imports are not allowed: the program is one file")
        else:
            self._check_module(node, node.module)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in ("conclude", "refuse"):
            self._concludes = True

    def visit_Attribute(self, node: ast.Attribute) -> None:
        named = isinstance(node.value, ast.Name) and node.value.id == self._contract.name
        if named and node.attr not in self._operations:
            self._find(node, self._unknown_operation(node.attr))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        function = node.func
        if (
            isinstance(function, ast.Attribute)
            and isinstance(function.value, ast.Name)
            and function.value.id == self._contract.name
            and function.attr in self._operations
        ):
            self._check_arguments(node, function.attr)
        self.generic_visit(node)

    def _unknown_operation(self, name: str) -> str:
        contract = self._contract
        message = f"contract {contract.name} {contract.version} has no operation {name!r}"
        close = difflib.get_close_matches(name, list(self._operations), n=1)
        if close:
            return f"{message}; did you mean {contract.name}.{close[0]}?"
        return f"{message}; its operations are {', '.join(self._operations)}"

    def _check_arguments(self, node: ast.Call, name: str) -> None:
        operation = self._operations[name]
        params = {p.name: p for p in operation.params}
        call = f"{self._contract.name}.{name}"
        signature = ", ".join(f"{p}=..." for p in params)
        if node.args:
            self._find(node, f"{call} takes keyword arguments only: {call}({signature})")
        if any(k.arg is None for k in node.keywords):
            return  # **mapping: the names are known only at run time, where the gate checks them
        given = {k.arg for k in node.keywords if k.arg is not None}
        for unknown in sorted(given - params.keys()):
            close = difflib.get_close_matches(unknown, list(params), n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; it takes {', '.join(params) or 'none'}"
            self._find(node, f"{call} has no parameter {unknown!r}{hint}")
        missing = [p for p, spec in params.items() if spec.required and p not in given]
        if missing and not node.args:
            self._find(node, f"{call} needs {', '.join(missing)}: {call}({signature})")
