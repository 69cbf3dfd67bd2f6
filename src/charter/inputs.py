"""A program request's inputs: named text values a caller hands a run.

The program reads them as the read-only mapping `inputs` (`inputs["recipient"]`); the gate
counts their values as the `request` source of provenance rules (`from: [request]`). They
are recorded in the run's Opened receipt; an input the caller marks secret is recorded as the
audit log's keyed digest of its value (`SecretKey.digest`), never in plaintext.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

from charter.errors import UsageError

__all__ = ["MAX_INPUTS", "MAX_INPUT_CHARS", "check_inputs", "parse_pairs"]

MAX_INPUTS = 32
MAX_INPUT_CHARS = 16_384  # per value
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")


def check_inputs(inputs: object, secret: object = ()) -> tuple[dict[str, str], tuple[str, ...]]:
    """(inputs, sorted secret names) when well-formed, else UsageError saying what is wrong:
    at most MAX_INPUTS names, each an identifier of at most 64 characters, each value text of at
    most MAX_INPUT_CHARS characters without NUL; every secret name is one of the inputs."""
    if inputs is None:
        inputs = {}
    if not isinstance(inputs, Mapping):
        raise UsageError('inputs must be an object mapping names to text values, e.g. {"recipient": "..."}')
    if len(inputs) > MAX_INPUTS:
        raise UsageError(f"{len(inputs)} inputs were sent; at most {MAX_INPUTS} are accepted")
    checked: dict[str, str] = {}
    for name, value in inputs.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise UsageError(f"input name {name!r:.80} must be an identifier of at most 64 characters, e.g. recipient")
        if not isinstance(value, str):
            raise UsageError(f"input '{name}' must be text, got {type(value).__name__}")
        if len(value) > MAX_INPUT_CHARS or "\x00" in value:
            raise UsageError(f"input '{name}' must be text of at most {MAX_INPUT_CHARS} characters without NUL")
        checked[name] = value
    if isinstance(secret, str) or not isinstance(secret, Collection):
        raise UsageError("secret_inputs must be a list of input names")
    names: set[str] = set()
    for name in secret:
        if not isinstance(name, str) or name not in checked:
            raise UsageError(f"secret input {name!r:.80} is not one of the inputs sent")
        names.add(name)
    return checked, tuple(sorted(names))


def parse_pairs(pairs: Collection[str], option: str) -> dict[str, str]:
    """NAME=VALUE pairs of a repeated command-line option into a mapping; UsageError if one is
    not written so or a name repeats."""
    parsed: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"{option} takes NAME=VALUE, got {pair!r:.80}")
        if name in parsed:
            raise UsageError(f"{option} names input '{name}' twice")
        parsed[name] = value
    return parsed
