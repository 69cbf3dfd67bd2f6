"""Strict decoding of what crosses the one host import, before anything else sees it.

The guest is untrusted: a program can call the raw import with any operation name and
any text. A call is decoded only if it is exactly right: an operation name of the
pinned contract byte for byte, arguments within the size limit (checked before
parsing), one JSON object with no duplicate keys, no NaN or Infinity, no integer beyond
64 bits, no lone surrogate, no nesting deeper than a contract type can need.
"""

from __future__ import annotations

import difflib
import json
import unicodedata
from collections.abc import Collection
from typing import Any, NoReturn

import msgspec

from charter.compiler.artifact import CompiledContract
from charter.contract.types import MAX_ARGUMENT_DEPTH as _MAX_DEPTH

__all__ = ["CallRejected", "check_operation", "decode_arguments", "encode_error"]

_MAX_OPERATION_CHARS = 128
_MAX_INT = 2**63 - 1
_MAX_INT_DIGITS = 20


class CallRejected(Exception):
    """The call was malformed; it is refused before the gate sees it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _reject(message: str) -> NoReturn:
    raise CallRejected("MALFORMED_CALL", message)


def _visible(name: str) -> str:
    """The name with invisible and look-alike characters spelled out."""
    shown = []
    for ch in name:
        if ch.isascii() and ch.isprintable():
            shown.append(ch)
        else:
            shown.append(f"\\u{ord(ch):04x}({unicodedata.name(ch, 'unnamed')})")
    return "".join(shown)


def check_operation(operation: str, known: Collection[str], contract: CompiledContract) -> None:
    if len(operation) > _MAX_OPERATION_CHARS:
        _reject(f"operation name of {len(operation)} characters; names are at most {_MAX_OPERATION_CHARS}")
    if operation in known:
        return
    close = difflib.get_close_matches(operation.strip().strip("\x00"), list(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise CallRejected(
        "UNKNOWN_OPERATION",
        f"contract {contract.name} {contract.version} has no operation {_visible(operation)!r}{hint}",
    )


def _no_constants(token: str) -> NoReturn:
    _reject(f"{token} is not a JSON number; send finite numbers only")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                _reject(f"duplicate key {key!r} in the arguments")
            seen.add(key)
    return result


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        _reject(f"integer of {len(text)} digits; integers must fit in 64 bits")
    value = int(text)
    if not -_MAX_INT - 1 <= value <= _MAX_INT:
        _reject(f"integer {text} does not fit in 64 bits")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        _reject(f"number {text[:40]} is out of range")
    return value


def _check_strings_and_depth(value: Any) -> None:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > _MAX_DEPTH:
            _reject(f"arguments nested deeper than {_MAX_DEPTH} levels")
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                _reject("a string in the arguments contains a lone surrogate (not valid Unicode)")
        elif isinstance(item, dict):
            stack.extend((k, depth + 1) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def decode_arguments(text: str, max_bytes: int) -> dict[str, Any]:
    # Count characters first: UTF-8 is at least one byte each, so this refuses the
    # oversize case without encoding anything; the exact byte count follows.
    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise CallRejected(
            "ARGUMENTS_TOO_LARGE", f"arguments of {len(text)} characters exceed the limit of {max_bytes} bytes"
        )
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
            parse_int=_bounded_int,
            parse_float=_finite_float,
        )
    except json.JSONDecodeError as error:
        _reject(f"arguments are not JSON: {error.msg} at character {error.pos}")
    except RecursionError:
        _reject(f"arguments nested deeper than {_MAX_DEPTH} levels")
    if not isinstance(value, dict):
        _reject(f"arguments must be a JSON object, not {type(value).__name__}")
    _check_strings_and_depth(value)
    return value


_encoder = msgspec.json.Encoder()


def encode_error(kind: str, code: str, message: str, boundary: str | None = None) -> str:
    """The err payload the guest raises as ContractViolation or OperationError."""
    return _encoder.encode({"error": kind, "code": code, "message": message, "boundary": boundary}).decode("utf-8")
