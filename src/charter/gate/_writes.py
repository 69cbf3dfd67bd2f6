"""The writes of one run: their backend idempotency keys, `idempotent` dedupe, and in-doubt state.

- Every write call is a distinct action with its own key, H(logical run id, call sequence).
  The logical run id is the first run of a chain of runs that continue one another (a
  run resumed after an approval is a new run with the same logical id), so a call keeps
  its key across the chain, and a service that honours `Idempotency-Key` applies it once.
- An operation declared `idempotent: true` called again with the same arguments in the
  same run returns its first result, and nothing is sent again. Never across runs.
- A write whose outcome is `unknown` (it reached the backend, no answer came back) may
  have acted. Any later write of that operation to the same entity (a create: with the
  same arguments) in the run is refused IN_DOUBT; nothing is sent again under a new key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import msgspec

from charter.compiler.artifact import OperationRule

__all__ = ["FirstWrite", "WriteLedger", "write_key"]


def write_key(logical_run_id: str, sequence: int) -> str:
    """The backend idempotency key of call `sequence` of a logical run: 32 hex digits."""
    return hashlib.sha256(f"{logical_run_id}\x1f{sequence}".encode()).hexdigest()[:32]


def _target(rule: OperationRule, arguments: dict[str, Any], args_hash: str) -> str:
    """What a write acts on: its entity (by key), or for a create its arguments."""
    if rule.key:
        return "key:" + msgspec.json.encode(arguments.get(rule.key)).decode("utf-8")
    return "args:" + args_hash


@dataclass(frozen=True, slots=True)
class FirstWrite:
    """An `idempotent` write already made in the run with the same arguments."""

    call: int
    key: str
    reply: str


@dataclass(slots=True)
class WriteLedger:
    logical_run_id: str
    made: int = 0  # writes sent to a backend, against limits.max_writes
    _idempotent: dict[tuple[str, str], FirstWrite] = field(default_factory=dict)  # (operation, args hash)
    _in_doubt: dict[tuple[str, str], int] = field(default_factory=dict)  # (operation, target) -> first call

    def key(self, sequence: int) -> str:
        return write_key(self.logical_run_id, sequence)

    def in_doubt(self, rule: OperationRule, arguments: dict[str, Any], args_hash: str) -> int | None:
        """The call of this run whose write of `rule` to the same target is in doubt, if any."""
        return self._in_doubt.get((rule.name, _target(rule, arguments, args_hash)))

    def first(self, rule: OperationRule, args_hash: str) -> FirstWrite | None:
        """The earlier result to return instead of writing again (idempotent operations only)."""
        return self._idempotent.get((rule.name, args_hash)) if rule.idempotent else None

    def succeeded(self, rule: OperationRule, args_hash: str, call: int, key: str, reply: str) -> None:
        if rule.idempotent:
            self._idempotent.setdefault((rule.name, args_hash), FirstWrite(call, key, reply))

    def unknown(self, rule: OperationRule, arguments: dict[str, Any], args_hash: str, call: int) -> None:
        self._in_doubt.setdefault((rule.name, _target(rule, arguments, args_hash)), call)
