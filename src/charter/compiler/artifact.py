"""The compiled contract: everything later stages need, immutable, encoded with msgspec.

One contract version compiles once (at startup or publish time, never per request) into a
`CompiledContract`. Its consumers each take one part:

- `stub_source`     the typed proxy interface the Runtime Agent reads;
- `prompt_context`  the operational model rendered for the prompt;
- `surface`         what the guest runtime builds its proxies from (crosses into the sandbox);
- `gate`            the rules the gate enforces on every call.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from charter.contract._approvals import DEFAULT_EXPIRES, default_scope, parse_expiry
from charter.contract.bindings import BoundModule
from charter.contract.types import TypeRef

__all__ = [
    "DEFAULT_APPROVAL_SECONDS",
    "ApprovalPolicy",
    "BindingSpec",
    "BoundaryRule",
    "CompiledContract",
    "GateTable",
    "GuardRule",
    "GuestOperation",
    "GuestSurface",
    "HttpEndpointSpec",
    "LimitsSpec",
    "LookupRule",
    "OperationRule",
    "ParamSpec",
    "ProvenanceRule",
    "QuotaRule",
    "SourceRule",
    "TransitionRule",
    "default_policy",
]


class _Frozen(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class ParamSpec(_Frozen, frozen=True):
    name: str
    type: TypeRef
    required: bool


class GuardRule(_Frozen, frozen=True):
    id: str
    when: str  # CEL source; the gate compiles it once when it loads the table
    message: str
    boundaries: tuple[str, ...]  # ids of the hard boundaries this guard enforces


class QuotaRule(_Frozen, frozen=True):
    """A total over time, counted from the audit log (charter.gate._quotas)."""

    id: str
    sum: str | None  # CEL: the amount each allowed call adds; None: each call adds 1
    per: tuple[str, ...]  # CEL keys: the total is kept per value of these
    window: str  # as written: 90m, 24h, 30d, run
    window_seconds: int | None  # None: this run only
    max: int  # calls, or the sum (integer cents for money)
    message: str
    boundaries: tuple[str, ...]  # ids of the hard boundaries this quota enforces
    money: bool = False  # the sum is money: amounts are integer cents, shown as 2000.00


class TransitionRule(_Frozen, frozen=True):
    name: str
    field: str
    from_states: tuple[str, ...]
    to: str
    boundaries: tuple[str, ...]


class HttpEndpointSpec(_Frozen, frozen=True):
    """One operation's HTTP request, with every param placed (path, query or body)."""

    service: str  # CHARTER_SERVICE_<SERVICE>_URL overrides base_url
    base_url: str | None
    method: str
    path: str  # template: {param} placeholders
    path_params: tuple[str, ...]
    query: tuple[str, ...]
    body: tuple[str, ...]
    result: str  # JSON pointer into the response body; '' for the whole body
    timeout_seconds: float
    read_retries: int


class BindingSpec(_Frozen, frozen=True):
    kind: Literal["python", "http"]
    target: str  # python: 'package.module:function'; http: 'METHOD /path/{param}'
    http: HttpEndpointSpec | None = None


class LookupRule(_Frozen, frozen=True):
    """A read the gate performs for an operation's rules (`lookups.<name>`), lazily: only when
    the first rule naming it is evaluated, at most once per call (charter.gate._lookups)."""

    name: str
    operation: str  # a read operation of this contract, invoked with the gate's authority
    args: dict[str, str]  # the read's param -> CEL over params and principal
    returns: TypeRef  # the read's declared result: what guards see, and what the result is checked against
    rules: tuple[str, ...]  # the rules that read it: "guard:known_payee", "approval", "quota:daily_outflow"


class SourceRule(_Frozen, frozen=True):
    """One `from:` source as the gate checks it (charter.contract._provenance.ResolvedSource)."""

    kind: Literal["request", "input", "principal", "result"]
    label: str  # canonical: request, inputs.<name>, principal, principal.<attr>, list_payees[].iban
    match: Literal["exact", "token"] = "exact"
    operation: str | None = None  # result: the read whose results count
    path: tuple[str, ...] = ()  # result: the field names walked below it (lists stepped through)
    attribute: str | None = None  # principal.<attr>
    input: str | None = None  # inputs.<name>: the request's input of that name


class ProvenanceRule(_Frozen, frozen=True):
    """A param's `from:` rule: its value must have been seen in one of `sources` in this run."""

    param: str
    sources: tuple[SourceRule, ...]
    boundaries: tuple[str, ...] = ()  # hard boundaries enforced by provenance:<op>.<param>


class OperationRule(_Frozen, frozen=True, omit_defaults=True):
    # omit_defaults: a v2 rule an operation does not use (quotas: ()) is left out of the
    # encoded gate table, so a contract that uses none compiles to the same artifact as before.
    name: str
    kind: Literal["read", "write"]
    doc: str
    entity: str | None
    key: str | None
    params: tuple[ParamSpec, ...]
    returns: TypeRef | None
    scopes: tuple[str, ...]
    guards: tuple[GuardRule, ...]
    transition: TransitionRule | None
    after: tuple[str, ...]  # must have succeeded earlier in the run
    after_boundaries: tuple[str, ...]  # boundaries enforced by the `after` rule
    idempotent: bool
    requires_approval: bool
    reader: str | None  # the read operation that observes the entity for state checks
    binding: BindingSpec
    # Params declared `secret: true`: receipts hold HMAC digests of their values (gate._secrets)
    secret: tuple[str, ...] = ()
    quotas: tuple[QuotaRule, ...] = ()
    lookups: tuple[LookupRule, ...] = ()
    provenance: tuple[ProvenanceRule, ...] = ()
    # Each group: at least one of its operations must have succeeded earlier (`after: {any: [...]}`).
    after_any: tuple[tuple[str, ...], ...] = ()
    # `requires_approval: {when, reason}`: approval only when the CEL condition holds
    # (requires_approval is True for either form; None here: the bool form, always).
    approval_when: str | None = None
    approval_reason: str | None = None
    # The principal attributes this operation's rules name: the gate checks them first.
    attributes: tuple[str, ...] = ()


class BoundaryRule(_Frozen, frozen=True):
    id: str
    text: str
    advisory: bool
    enforced_by: tuple[str, ...]  # "transition:Order.cancel", "guard:refund_within_total", ...


class LimitsSpec(_Frozen, frozen=True):
    max_calls: int
    max_writes: int
    max_denials: int
    memory_mib: int
    cpu_seconds: float
    wall_seconds: float
    max_call_bytes: int
    max_output_bytes: int
    max_program_bytes: int


class ApprovalPolicy(_Frozen, frozen=True):
    """The contract's `approvals:` block: who may decide a paused call and for how long.

    `scope`: the scope an approver must hold (never the requesting principal, whatever it
    holds); `expires_seconds`: how long a request waits for a decision before it can only be
    denied. A contract without the block uses `default_policy` (`<contract>:approve`, 24 h).
    """

    scope: str
    expires_seconds: int


DEFAULT_APPROVAL_SECONDS = parse_expiry(DEFAULT_EXPIRES)


def default_policy(contract: str) -> ApprovalPolicy:
    """The policy of a contract without an `approvals:` block."""
    return ApprovalPolicy(scope=default_scope(contract), expires_seconds=DEFAULT_APPROVAL_SECONDS)


class GateTable(_Frozen, frozen=True, omit_defaults=True):  # v2 fields appear only when used
    contract: str
    version: str
    sha256: str
    operations: dict[str, OperationRule]
    records: dict[str, dict[str, TypeRef]]
    enums: dict[str, tuple[str, ...]]
    boundaries: tuple[BoundaryRule, ...]
    limits: LimitsSpec
    # The provenance ledger's harvest plan: per operation, the result sources (labels and
    # field paths) whose values the gate records from each reply the program gets.
    provenance_paths: dict[str, tuple[SourceRule, ...]] = {}
    principal_attributes: dict[str, TypeRef] = {}  # `principal.attributes`: name -> declared type
    # The `approvals:` block as written (None: not written, so an artifact compiled before it
    # existed is unchanged); `policy` gives the one in force, the default filled in.
    approvals: ApprovalPolicy | None = None

    @property
    def policy(self) -> ApprovalPolicy:
        """Who decides a paused call of this contract and how long a request waits."""
        return self.approvals if self.approvals is not None else default_policy(self.contract)


class GuestOperation(_Frozen, frozen=True):
    name: str
    kind: Literal["read", "write"]
    params: tuple[ParamSpec, ...]
    returns: TypeRef | None


class GuestSurface(_Frozen, frozen=True):
    """What crosses into the sandbox: names and types only, no rules and no bindings."""

    contract: str
    version: str
    sha256: str
    operations: tuple[GuestOperation, ...]
    records: dict[str, dict[str, TypeRef]]
    enums: dict[str, tuple[str, ...]]


class CompiledContract(_Frozen, frozen=True):
    name: str
    version: str
    sha256: str  # over `canonical`: identifies this version's content
    summary: str
    canonical: str  # the contract's canonical JSON, from which this artifact is rebuilt
    stub_source: str
    prompt_context: str
    surface: GuestSurface
    gate: GateTable
    # Where each Python binding module was found and its sha256: recorded at publish, not part
    # of `sha256` (the contract's content), empty for a contract compiled without its files.
    modules: tuple[BoundModule, ...] = ()
