"""Which way a guard moved when only one numeric bound changed: `params.amount <= 2000` to
`<= 5000` allows more (wider), to `<= 1000` allows less (narrower).

The CEL library Charter uses exposes no syntax tree, so this reads the expression's tokens.
It answers only when it can be sure; anything else (two changed numbers, a bound under `!`,
inside a function call or a ternary, arithmetic next to the number, `==`) is None, and the
caller keeps classifying the change as both breaking and relaxation.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Literal

__all__ = ["Direction", "bound_direction"]

Direction = Literal["wider", "narrower"]

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>[rRbB]{0,2}(?:\"\"\"(?:.|\n)*?\"\"\"|'''(?:.|\n)*?'''|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'))
    | (?P<number>0[xX][0-9a-fA-F]+[uU]?|(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?[uU]?)
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<op>&&|\|\||<=|>=|==|!=|[-+*/%<>!?:.,()\[\]{}])
    )""",
    re.VERBOSE,
)
_COMPARISONS = {"<", "<=", ">", ">="}
_JOINS = {"&&", "||"}
# Where a signed literal may start: after an operator or an opening bracket, or first.
_UNARY_AFTER = {"&&", "||", "<=", ">=", "==", "!=", "<", ">", "(", "[", ",", "?", ":", "+", "-", "*", "/", "%", "!"}


def _tokens(source: str) -> list[tuple[str, str]] | None:
    """(kind, text) pairs; a negative number is one token. None if something does not lex."""
    tokens: list[tuple[str, str]] = []
    position = 0
    source = source.rstrip()
    while position < len(source):
        match = _TOKEN.match(source, position)
        if match is None or match.end() == position:
            return None
        position = match.end()
        kind = match.lastgroup
        assert kind is not None
        text = match.group(kind)
        if (
            kind == "number"
            and tokens
            and tokens[-1] == ("op", "-")
            and (len(tokens) == 1 or tokens[-2][1] in _UNARY_AFTER)
        ):
            tokens.pop()
            text = "-" + text
        tokens.append((kind, text))
    return tokens


def _value(text: str) -> Decimal | None:
    text = text.rstrip("uU")
    try:
        if text.lstrip("-").lower().startswith("0x"):
            return Decimal(int(text, 16))
        return Decimal(text)
    except (InvalidOperation, ValueError):
        return None


def _is_path(tokens: list[tuple[str, str]]) -> bool:
    """name(.name)*: a param, entity field or principal field, read as is."""
    if not tokens or len(tokens) % 2 == 0:
        return False
    return all((kind == "name") if i % 2 == 0 else (text == ".") for i, (kind, text) in enumerate(tokens))


def _monotone(tokens: list[tuple[str, str]], index: int) -> bool:
    """Is the comparison at `index` joined to the whole guard only by && and || (and plain
    parentheses), so that allowing more there allows more overall?"""
    if any(text in {"!", "?", ":"} for _, text in tokens):
        return False
    depth = 0
    for i in range(index - 1, -1, -1):  # every '(' enclosing the comparison must be a plain group
        text = tokens[i][1]
        if text in {")", "]", "}"}:
            depth += 1
        elif text in {"(", "[", "{"}:
            if depth:
                depth -= 1
                continue
            before = tokens[i - 1][1] if i else "&&"
            if text != "(" or before not in _JOINS | {"("}:
                return False
    return True


def _operand(tokens: list[tuple[str, str]], start: int, step: int) -> list[tuple[str, str]]:
    """The tokens from `start` walking by `step` up to a join, a bracket or the end."""
    found = []
    i = start
    while 0 <= i < len(tokens) and tokens[i][1] not in _JOINS | {"(", ")"}:
        found.append(tokens[i])
        i += step
    return found if step > 0 else found[::-1]


def bound_direction(before: str, after: str) -> tuple[Direction, str] | None:
    """('wider' | 'narrower', the operand) when `after` differs from `before` only in one
    numeric bound compared with the same plain operand by <, <=, > or >=; else None."""
    old, new = _tokens(before), _tokens(after)
    if old is None or new is None or len(old) != len(new):
        return None
    changed = [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
    if len(changed) != 1 or old[changed[0]][0] != "number" or new[changed[0]][0] != "number":
        return None
    i = changed[0]
    was, now = _value(old[i][1]), _value(new[i][1])
    if was is None or now is None or was == now:
        return None
    left = old[i - 1][1] if i else None
    right = old[i + 1][1] if i + 1 < len(old) else None
    if left in _COMPARISONS and (right is None or right in _JOINS | {")"}):
        operator, operand = left, _operand(old, i - 2, -1)  # operand OP number
        at = i - 1
    elif right in _COMPARISONS and (left is None or left in _JOINS | {"("}):
        mirror = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}
        operator, operand = mirror[right], _operand(old, i + 2, 1)  # number OP operand == operand OP' number
        at = i + 1
    else:
        return None
    if not _is_path(operand) or not _monotone(old, at):
        return None
    grows = now > was
    upper = operator in {"<", "<="}  # operand <= bound: a higher bound allows more
    direction: Direction = "wider" if grows == upper else "narrower"
    return direction, "".join(text for _, text in operand)
