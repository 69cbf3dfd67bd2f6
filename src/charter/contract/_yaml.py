"""Load YAML while keeping where every value came from.

Errors must name file, line and column, so we compose the node graph ourselves and keep
the start mark of every key and value under its path in the document. Duplicate keys,
which PyYAML silently merges, are errors here. Booleans follow YAML 1.2 (only
true/false), so a state named `on` or `no` stays a string.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import yaml

from charter.errors import ContractError, Problem

Path = tuple[str | int, ...]


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: `yes`, `no`, `on`, `off` stay strings."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


@dataclass(frozen=True, slots=True)
class Position:
    line: int  # 1-based
    column: int  # 1-based


@dataclass(slots=True)
class SourceMap:
    """Where each path of a loaded document starts, for error messages."""

    file: str
    values: dict[Path, Position] = field(default_factory=dict)
    keys: dict[Path, Position] = field(default_factory=dict)
    styles: dict[Path, str | None] = field(default_factory=dict)  # each scalar's style: None plain, ' " | >

    def locate(self, path: Path, *, key: bool = False) -> Position:
        """The position of `path`, or of its nearest ancestor we know."""
        table = self.keys if key else self.values
        for cut in range(len(path), -1, -1):
            prefix = path[:cut]
            if prefix in table:
                return table[prefix]
            if prefix in self.values:
                return self.values[prefix]
        return Position(1, 1)

    def locate_within(self, path: Path, text: str, offset: int) -> Position:
        """The position of character `offset` of the scalar `text` at `path`: exact for a plain or
        quoted scalar on one line (quoted: without escapes), else where the scalar starts."""
        start = self.locate(path)
        style = self.styles.get(path, "|")
        if style not in (None, "'", '"') or "\n" in text[:offset]:
            return start
        return Position(start.line, start.column + offset + (style is not None))

    def problem(self, path: Path, message: str, *, key: bool = False) -> Problem:
        pos = self.locate(path, key=key)
        return Problem(self.file, pos.line, pos.column, message)


def _pos(node: yaml.Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


def load_yaml(text: str, file: str) -> tuple[Any, SourceMap]:
    """Parse one YAML document into plain Python values plus its source map."""
    source_map = SourceMap(file)
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = f"invalid YAML: {exc.problem or exc.context}"
        if "but found '?'" in message or "but got '?'" in message:
            message += " (inside {...} an optional type must be quoted, e.g. 'str?', or written one per line)"
        elif "but got '['" in message:
            message += " (inside {...} a list type must be quoted, e.g. 'list[str]', or written one per line)"
        raise ContractError([Problem(file, line, column, message)]) from None
    except yaml.YAMLError as exc:  # pragma: no cover - composer errors are all marked
        raise ContractError([Problem(file, 1, 1, f"invalid YAML: {exc}")]) from None
    if root is None:
        raise ContractError([Problem(file, 1, 1, "the file is empty: expected a contract mapping")])
    constructor = _Loader("")
    problems: list[Problem] = []

    def build(node: yaml.Node, path: Path) -> Any:
        source_map.values[path] = _pos(node)
        if isinstance(node, yaml.MappingNode):
            result: dict[Hashable, Any] = {}
            for key_node, value_node in node.value:
                key = constructor.construct_object(key_node, deep=True)
                if not isinstance(key, str | int):
                    problems.append(Problem(file, *_astuple(_pos(key_node)), "mapping keys must be names"))
                    continue
                if key in result:
                    first = source_map.keys[(*path, key)]
                    problems.append(
                        Problem(
                            file,
                            *_astuple(_pos(key_node)),
                            f"duplicate key '{key}' (first defined at line {first.line})",
                        )
                    )
                    continue
                source_map.keys[(*path, key)] = _pos(key_node)
                result[key] = build(value_node, (*path, key))
            return result
        if isinstance(node, yaml.SequenceNode):
            return [build(item, (*path, index)) for index, item in enumerate(node.value)]
        if isinstance(node, yaml.ScalarNode):
            source_map.styles[path] = node.style
        return constructor.construct_object(node, deep=True)

    data = build(root, ())
    if problems:
        raise ContractError(problems)
    return data, source_map


def _astuple(position: Position) -> tuple[int, int]:
    return position.line, position.column
