"""Secret params (`secret: true`: a password, a token) in what the gate records and says.

A signed, immutable log must never hold a plaintext secret, and neither may anything a
program, a caller or a model reads back. So, for each call of an operation with secret
params:

- the Decision's `arguments` (canonical JSON) hold `SecretKey.digest(value)`,
  "hmac-sha256:<key id>:<hex>", in place of each secret value (each element of a
  list[str]), and `args_sha256` is the sha256 of that masked form: a plain sha256 of a
  short password is found by trying candidates, a keyed digest is not without the key
  (`keys/secrets.key`, which the log does not hold). `secret_params` names the params so
  masked. Arguments that fail their check are masked the same way before they are hashed
  (a secret sent with a wrong type is digested as its JSON text); a call the host could
  not decode at all is recorded by a keyed digest of its raw sha256.
- every message the gate records or raises for the call (a denial, a failure, a withheld
  backend exception text) has each secret value of the call replaced by `[secret]`. No
  gate message quotes a secret to begin with (a secret is text, so a type error names no
  value, and it is never the key a message names); this also covers a backend's own words.

Not covered, by design: an allowed call's result is recorded as the program received it,
so a backend that returns the secret puts it in the Outcome receipt. What a program does
with a value (prints it, concludes with it, writes it literally in its text) is in the run's
record too: a secret reaches a program through a request's `inputs`, never its text.

Digests with one key compare equal for equal values: the idempotent-write ledger and
`audit replay` (which masks with the log's key when it has it) work on the masked form.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from charter.audit import RunRecorder, SecretKey, args_digest
from charter.compiler.artifact import GateTable
from charter.errors import AuditError
from charter.gate._protocol import CallRequest
from charter.gate._receipts import Verdict
from charter.gate._withheld import Withheld

__all__ = [
    "REDACTED",
    "Recorded",
    "SecretParams",
    "recorded_arguments",
    "scrub",
    "scrubbed_verdict",
    "scrubbed_withheld",
]

REDACTED = "[secret]"
# A call's arguments as its Decision records them: canonical JSON (None: not recorded), sha256,
# and the secret params whose values the JSON and the hash hold as digests.
Recorded = tuple[str | None, str, tuple[str, ...]]
_json = msgspec.json.Encoder(decimal_format="string", order="sorted")


class SecretParams:
    """The secret params of each operation of one gate table."""

    def __init__(self, table: GateTable) -> None:
        self._of = {name: rule.secret for name, rule in table.operations.items() if rule.secret}

    def of(self, operation: str) -> tuple[str, ...]:
        return self._of.get(operation, ())

    def require_key(self, recorder: RunRecorder) -> None:
        """Refuse a run that could not mask: no HMAC key for a contract with secret params."""
        if self._of and recorder.secret_key is None:
            raise AuditError(
                f"run {recorder.run_id}: the contract declares secret params but the audit log has no secret key "
                "to record them with; open the run through AuditLog"
            )

    def values(self, request: CallRequest) -> list[str]:
        """The call's secret values as the program sent them (text only; longest first)."""
        found: list[str] = []
        for name in self.of(request.operation):
            value = request.arguments.get(name)
            items = value if isinstance(value, list) else [value]
            found.extend(v for v in items if isinstance(v, str) and v)
        return sorted(set(found), key=len, reverse=True)


def _masked_value(value: Any, key: SecretKey) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return [_masked_value(v, key) for v in value]
    return key.digest(value if isinstance(value, str) else _json.encode(value).decode("utf-8"))


def recorded_arguments(
    request: CallRequest, checked: Mapping[str, Any] | None, secret: tuple[str, ...], key: SecretKey | None
) -> Recorded:
    """(canonical JSON or None, sha256, the params masked) of a call's arguments as its
    Decision records them: the checked values when they validated, else only the hash of
    what the program sent; secret values masked with `key` (see the module's docstring)."""
    if key is None or not secret:
        secret = ()
    if request.malformed is not None:
        raw = request.malformed.raw_sha256
        if not secret or key is None:
            return None, raw, ()
        return None, hashlib.sha256(key.digest(raw).encode("utf-8")).hexdigest(), secret
    source = checked if checked is not None else request.arguments
    masked_names = tuple(n for n in secret if n in source)
    if masked_names:
        assert key is not None
        source = {k: _masked_value(v, key) if k in masked_names else v for k, v in source.items()}
    text, digest = args_digest(source)
    return (text if checked is not None else None), digest, masked_names


def scrub(text: str, values: Iterable[str]) -> str:
    """`text` with each of `values` (longest first) replaced by [secret]."""
    for value in values:
        text = text.replace(value, REDACTED)
    return text


def scrubbed_withheld(withheld: Withheld | None, values: list[str]) -> Withheld | None:
    """A withheld exception text (kept in the audit database) without the call's secret values."""
    if withheld is None or not any(v in withheld.text for v in values):
        return withheld
    text = scrub(withheld.text, values)
    return Withheld(withheld.error_type, hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(), text)


def scrubbed_verdict(verdict: Verdict, values: list[str]) -> Verdict:
    """The verdict with no secret value in its message or its withheld exception text."""
    if not values:
        return verdict
    withheld = scrubbed_withheld(verdict.withheld, values)
    return Verdict(verdict.code, scrub(verdict.message, values), verdict.clause, verdict.boundary, withheld)
