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
  backend exception text) has each secret value of the call replaced by `[secret]`, in
  every rendering a text may quote it in (`renderings`): as is, repr-escaped, JSON-escaped,
  unicode_escape'd, and each line of a multi-line value of at least `MIN_LINE_CHARS`
  characters (an error that quotes source text, such as a CEL parser's, splits it by line).
  No gate message quotes a secret to begin with (a secret is text, so a type error names no
  value, and it is never the key a message names); this also covers a backend's own words.
- a secret *input* of the run (`--secret-input`, `secret_inputs`) the program passes to a
  param that is not secret is masked too: an argument equal to it is recorded as its digest,
  one that contains it has each occurrence replaced by the digest, and the params so masked
  are named in the Decision's `masked_inputs`; so are the arguments, results and errors of
  the lookups the call performed (`masked_text`). A quota key that holds one is refused
  instead (GATE_ERROR): the audit log counts quotas by their key in plain text, and a digest
  there would count the same account apart from its calls that did not mark it secret. The
  backend still gets the real value: the program chose to send it.

Not covered, by design: an allowed call's result is recorded as the program received it,
so a backend that returns the secret puts it in the Outcome receipt. What a program does
with a value (prints it, concludes with it, writes it literally in its text) is in the run's
record too: a secret reaches a program through a request's `inputs`, never its text.

Digests with one key compare equal for equal values: the idempotent-write ledger and
`audit replay` (which masks with the log's key when it has it) work on the masked form.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from charter.audit import RunRecorder, SecretKey, args_digest
from charter.compiler.artifact import GateTable
from charter.errors import AuditError
from charter.gate._protocol import CallRequest
from charter.gate._receipts import Verdict
from charter.gate._withheld import Withheld

__all__ = [
    "MIN_LINE_CHARS",
    "REDACTED",
    "Recorded",
    "SecretParams",
    "holds_any",
    "masked_text",
    "recorded_arguments",
    "renderings",
    "scrub",
    "scrubbed_verdict",
    "scrubbed_withheld",
]

REDACTED = "[secret]"
# Each line of a multi-line secret is scrubbed on its own when it has at least this many
# characters; a shorter line ("a", "ok") would blank unrelated text wherever it occurs.
MIN_LINE_CHARS = 4
# A call's arguments as its Decision records them: canonical JSON (None: not recorded), sha256,
# the secret params whose values the JSON and the hash hold as digests, and the other params
# that held a secret input of the run (masked the same way).
Recorded = tuple[str | None, str, tuple[str, ...], tuple[str, ...]]
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

    def values(self, request: CallRequest, inputs: Sequence[str] = ()) -> list[str]:
        """Every rendering (`renderings`) of the call's secret values as the program sent them
        and of the run's secret `inputs`: what `scrub` removes from the call's texts."""
        found: list[str] = list(inputs)
        for name in self.of(request.operation) if request.malformed is None else ():
            value = request.arguments.get(name)
            items = value if isinstance(value, list) else [value]
            found.extend(v for v in items if isinstance(v, str) and v)
        return renderings(found)


def _escaped(value: str) -> set[str]:
    """The ways a text quotes `value`: as is, inside repr() (either quote), inside JSON (ASCII
    or not), and unicode_escape'd (what `bytes.decode('unicode_escape')` would undo)."""
    return {
        value,
        repr(value)[1:-1],
        ascii(value)[1:-1],
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        value.encode("unicode_escape").decode("ascii"),
    }


def holds_any(text: str, inputs: Sequence[str]) -> bool:
    """Whether `text` quotes one of `inputs` in any rendering (`_escaped`)."""
    return any(form in text for value in inputs if value for form in _escaped(value))


def masked_text(text: str, inputs: Sequence[str], key: SecretKey) -> str:
    """`text` (a recorded JSON or prose) with each rendering of each of `inputs` replaced by the
    input's digest, as in recorded arguments (longest first)."""
    for value in sorted({v for v in inputs if v}, key=len, reverse=True):
        for form in sorted(_escaped(value), key=len, reverse=True):
            text = text.replace(form, key.digest(value))
    return text


def renderings(values: Iterable[str]) -> list[str]:
    """Each of `values` in every rendering a message may quote it in, and each line of a
    multi-line value of at least MIN_LINE_CHARS characters (also escaped); longest first, so
    a longer form is replaced before a part of it."""
    found: set[str] = set()
    for value in values:
        if not value:
            continue
        found |= _escaped(value)
        lines = value.splitlines()
        if len(lines) > 1:
            for line in lines:
                if len(line.strip()) >= MIN_LINE_CHARS:
                    found |= _escaped(line) | _escaped(line.strip())
    return sorted((v for v in found if v), key=len, reverse=True)


def _masked_value(value: Any, key: SecretKey) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return [_masked_value(v, key) for v in value]
    return key.digest(value if isinstance(value, str) else _json.encode(value).decode("utf-8"))


def _masked_inputs(value: Any, inputs: Sequence[str], key: SecretKey) -> Any:
    """`value` with each secret input (longest first) masked: a text equal to one becomes its
    digest, a text containing one has each occurrence replaced by the digest."""
    if isinstance(value, str):
        for secret in inputs:
            if value == secret:
                return key.digest(secret)
            if secret in value:
                value = value.replace(secret, key.digest(secret))
        return value
    if isinstance(value, list):
        return [_masked_inputs(v, inputs, key) for v in value]
    if isinstance(value, dict):
        return {k: _masked_inputs(v, inputs, key) for k, v in value.items()}
    return value


def recorded_arguments(
    request: CallRequest,
    checked: Mapping[str, Any] | None,
    secret: tuple[str, ...],
    key: SecretKey | None,
    inputs: Sequence[str] = (),
) -> Recorded:
    """(canonical JSON or None, sha256, the secret params masked, the other params that held a
    secret input) of a call's arguments as its Decision records them: the checked values when
    they validated, else only the hash of what the program sent; secret values, and the run's
    secret `inputs` wherever they occur, masked with `key` (see the module's docstring)."""
    if key is None:
        secret, inputs = (), ()
    inputs = sorted({v for v in inputs if v}, key=len, reverse=True)
    if request.malformed is not None:
        raw = request.malformed.raw_sha256
        if (not secret and not inputs) or key is None:
            return None, raw, (), ()
        return None, hashlib.sha256(key.digest(raw).encode("utf-8")).hexdigest(), secret, ()
    source: Mapping[str, Any] = checked if checked is not None else request.arguments
    masked_names = tuple(n for n in secret if n in source)
    held: list[str] = []
    if masked_names or inputs:
        assert key is not None
        masked: dict[str, Any] = {}
        for name, value in source.items():
            if name in masked_names:
                masked[name] = _masked_value(value, key)
                continue
            masked[name] = _masked_inputs(value, inputs, key) if inputs else value
            if masked[name] != value:
                held.append(name)
        source = masked
    text, digest = args_digest(source)
    return (text if checked is not None else None), digest, masked_names, tuple(sorted(held))


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
    # Every other field kept: the approval rule's reason decides whether the call pauses.
    return dataclasses.replace(verdict, message=scrub(verdict.message, values), withheld=withheld)
