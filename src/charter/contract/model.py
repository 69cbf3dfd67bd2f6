"""The contract format, as pydantic models.

This is the shape of a contract file; `charter contract schema` prints it as JSON Schema.
Cross-references (unknown states, guards naming unknown fields, boundaries no rule
enforces...) are checked afterwards by `checker`, which knows where each value came from.
"""

from __future__ import annotations

import re
from functools import total_ordering
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "AnyOf",
    "Approval",
    "Approvals",
    "Binding",
    "Boundary",
    "Contract",
    "ContractBinding",
    "Entity",
    "Guard",
    "HttpEndpoint",
    "HttpService",
    "Lifecycle",
    "Limits",
    "Lookup",
    "Operation",
    "Param",
    "PrincipalSpec",
    "Quota",
    "RuleRef",
    "SemVer",
    "Source",
    "Transition",
    "param_type",
]

_SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?\Z")


@total_ordering
class SemVer:
    """MAJOR.MINOR.PATCH[-PRERELEASE], ordered by the semver 2.0 rules."""

    __slots__ = ("major", "minor", "patch", "prerelease")

    def __init__(self, text: str) -> None:
        match = _SEMVER.match(text)
        if not match:
            raise ValueError(f"version '{text}' is not semantic versioning: write MAJOR.MINOR.PATCH, e.g. 1.0.0")
        self.major, self.minor, self.patch = (int(g) for g in match.group(1, 2, 3))
        self.prerelease: tuple[str, ...] = tuple(match.group(4).split(".")) if match.group(4) else ()

    def _key(self) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
        # A release sorts after its prereleases; numeric identifiers sort before alphanumeric.
        pre = tuple((0, int(p)) if p.isdigit() else (1, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SemVer) and self._key() == other._key()

    def __lt__(self, other: SemVer) -> bool:
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        core = f"{self.major}.{self.minor}.{self.patch}"
        return f"{core}-{'.'.join(self.prerelease)}" if self.prerelease else core

    def __repr__(self) -> str:
        return f"SemVer('{self}')"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)


TypeText = Annotated[
    str,
    Field(
        description="A type: str, int, float, bool, money, datetime, date, a declared name, list[T], or T? for "
        "optional."
    ),
]
NonEmptyText = Annotated[str, Field(min_length=1)]


HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]


class HttpService(_Strict):
    """The HTTP service a contract's operations call (the contract-level `binding: {http: ...}`).

    Where it runs is deployment, not contract: CHARTER_SERVICE_<SERVICE>_URL overrides
    `base_url`, so one contract version serves every environment.
    """

    service: str = Field(description="The service's name, a snake_case identifier; names the URL variable.")
    base_url: str | None = Field(default=None, description="The default base URL, e.g. http://127.0.0.1:8701.")
    timeout_seconds: float = Field(default=10.0, gt=0, le=300, description="Per request, unless an endpoint says.")
    read_retries: int = Field(
        default=2, ge=0, le=10, description="Retries of a read after a transport error or a 5xx; writes never retry."
    )


class HttpEndpoint(_Strict):
    """One operation's HTTP request and how its response maps to the operation's result."""

    method: HttpMethod
    path: str = Field(description="Path template; {param} is filled from a required param, e.g. /orders/{id}.")
    query: list[str] | None = Field(
        default=None, description="Params sent in the query string (default: the rest, for GET and DELETE)."
    )
    body: list[str] | None = Field(
        default=None, description="Params sent as the JSON body's fields (default: the rest, for POST, PUT, PATCH)."
    )
    result: str = Field(
        default="", description="JSON pointer to the result inside the response body; '' is the whole body."
    )
    timeout_seconds: float | None = Field(default=None, gt=0, le=300)


class _OneBackend(_Strict):
    @model_validator(mode="after")
    def _exactly_one(self) -> _OneBackend:
        if (getattr(self, "python", None) is None) == (getattr(self, "http", None) is None):
            raise ValueError("a binding names exactly one of python, http")
        return self


class ContractBinding(_OneBackend):
    """The contract's default backend: a Python module, or an HTTP service."""

    python: str | None = Field(default=None, description="A module ('pkg.module'); operations use module:<op name>.")
    http: HttpService | None = None


class Binding(_OneBackend):
    """Where one operation is carried out: a Python function, or an endpoint of the contract's service."""

    python: str | None = Field(default=None, description="'pkg.module:function'.")
    http: HttpEndpoint | None = None


class Transition(_Strict):
    from_: list[str] = Field(alias="from", min_length=1, description="States it may start from.")
    to: str
    doc: str = ""


class Lifecycle(_Strict):
    field: str = Field(description="The entity field that holds the state (declared here, not in fields).")
    states: list[str] = Field(min_length=1)
    initial: str
    transitions: dict[str, Transition] = Field(default_factory=dict)


class Entity(_Strict):
    doc: str = ""
    key: str = Field(description="The field that identifies one entity.")
    fields: dict[str, TypeText] = Field(min_length=1)
    lifecycle: Lifecycle | None = None


class Guard(_Strict):
    id: str
    when: NonEmptyText = Field(description="A CEL expression over params, entity and principal that must be true.")
    message: NonEmptyText = Field(description="What the program is told when the guard fails.")


MatchMode = Literal["exact", "token"]


class Source(_Strict):
    """Where a param's value may come from, with how it must match there (`from:` of a param).

    `source` is `request` (the intent's text, or a program request's declared `inputs`),
    `principal` (the principal's attributes), or a read operation and a field path into its
    result, `list_payees.iban` / `get_standing_orders[].recipient`: values the operation
    returned to the program in this run, recorded host-side by the gate.
    """

    source: NonEmptyText
    match: MatchMode = Field(
        default="exact",
        description="exact: the value equals a value there; token: it occurs inside the text there, "
        "bounded by non-alphanumeric characters or the text's edge.",
    )


class Param(_Strict):
    """A param written as a mapping, for what a bare type cannot say: provenance and secrecy."""

    type: TypeText
    from_: list[NonEmptyText | Source] | None = Field(
        default=None,
        alias="from",
        description="The sources the value must have been seen in (any one of them); a bare string is a "
        "source with match: exact.",
    )
    secret: bool = Field(
        default=False,
        description="A password or token: receipts hold a keyed HMAC of it, prompts and messages never echo it.",
    )
    doc: str = ""


def param_type(param: str | Param) -> str:
    """The type text of a param however it is written: `str?` or `{type: str?, ...}`."""
    return param if isinstance(param, str) else param.type


class Lookup(_Strict):
    """A read the gate performs before deciding, through one of the contract's read operations;
    guards see its result as `lookups.<name>`."""

    operation: str = Field(description="A read operation of this contract.")
    args: dict[str, NonEmptyText] = Field(
        default_factory=dict, description="The read's params, each a CEL expression over params and principal."
    )


class Approval(_Strict):
    """`requires_approval: {when: ..., reason: ...}`: approval only when the condition holds."""

    when: NonEmptyText = Field(description="CEL over the guards' variables, lookups and provenance included.")
    reason: NonEmptyText = Field(description="Why a human must approve: shown to the program and the approver.")


class Approvals(_Strict):
    """`approvals: {scope: payments:approve, expires: 24h}`: who decides a paused call, and how
    long a request waits (contract-wide; the checker reports a bad scope or duration)."""

    scope: NonEmptyText | None = Field(
        default=None,
        description="The scope an approver must hold (never the requester's own approval). Default: "
        "<contract>:approve.",
    )
    expires: NonEmptyText = Field(
        default="24h",
        description="How long a request waits for a decision, then can only be denied: 30m, 24h, 7d; at most 30d.",
    )


class Quota(_Strict):
    """A total over time, counted from the audit log: calls (`count: true`) or a sum of an argument."""

    id: str
    sum: NonEmptyText | None = Field(default=None, description="CEL: the amount each allowed call adds.")
    count: bool = Field(default=False, description="Count calls instead of summing an amount.")
    per: list[NonEmptyText] = Field(
        default_factory=list, description="CEL keys naming what the quota protects, e.g. params.account."
    )
    window: NonEmptyText = Field(description="Sliding window: 90m, 24h, 30d, or `run` (this run only).")
    max: int = Field(ge=0, description="The most allowed in the window: calls, or the sum (cents for money).")
    message: NonEmptyText = Field(description="What the program is told when the quota would be exceeded.")

    @model_validator(mode="after")
    def _sum_or_count(self) -> Quota:
        if (self.sum is None) == (not self.count):
            raise ValueError("a quota names exactly one of `sum: <CEL>` or `count: true`")
        return self


class AnyOf(_Strict):
    """`after: {any: [a, b]}`: at least one of these must have succeeded earlier."""

    any: list[str] = Field(min_length=1)


class Operation(_Strict):
    kind: Literal["read", "write"]
    doc: NonEmptyText
    entity: str | None = Field(default=None, description="The entity the operation acts on.")
    key: str | None = Field(
        default=None,
        description="The param that carries the entity's key; without it a write creates an entity.",
    )
    params: dict[str, TypeText | Param] = Field(default_factory=dict)
    returns: TypeText | None = None
    transition: str | None = Field(default=None, description="The lifecycle transition a write performs.")
    lookups: dict[str, Lookup] = Field(default_factory=dict)
    guards: list[Guard] = Field(default_factory=list)
    quotas: list[Quota] = Field(default_factory=list)
    scopes: list[str] = Field(default_factory=list, description="Scopes the principal must hold, all of them.")
    public: bool = Field(
        default=False,
        description="A write anyone may call: the author's explicit choice; a write without scopes must say it.",
    )
    after: list[str | AnyOf] | AnyOf = Field(
        default_factory=list,
        description="Operations that must have succeeded earlier in the same run "
        "(on the same entity key when both act on the same entity): all of a list, "
        "or at least one of an `{any: [...]}` group.",
    )
    idempotent: bool = False
    requires_approval: bool | Approval = False
    binding: Binding | None = None


_RULE_KINDS = ("transition", "guard", "sequence", "approval", "scope", "quota", "provenance")


class RuleRef(_Strict):
    """One machine rule that enforces a boundary. Exactly one of the seven is set."""

    transition: str | None = Field(default=None, description="'Entity.transition'")
    guard: str | None = Field(default=None, description="A guard id.")
    sequence: str | None = Field(default=None, description="An operation whose `after` rule enforces it.")
    approval: str | None = Field(default=None, description="An operation with `requires_approval: true`.")
    scope: str | None = Field(default=None, description="An operation whose `scopes` enforce it.")
    quota: str | None = Field(default=None, description="A quota id.")
    provenance: str | None = Field(default=None, description="'operation.param': a param's `from:` rule.")

    @model_validator(mode="after")
    def _exactly_one(self) -> RuleRef:
        named = [k for k in _RULE_KINDS if getattr(self, k) is not None]
        if len(named) != 1:
            raise ValueError(f"a rule names exactly one of {', '.join(_RULE_KINDS)}")
        return self

    @property
    def kind(self) -> str:
        """'transition', 'guard', 'sequence', 'approval', 'scope', 'quota' or 'provenance'."""
        return next(k for k in _RULE_KINDS if getattr(self, k) is not None)

    @property
    def target(self) -> str:
        """What the rule names: 'Order.cancel', a guard id or an operation."""
        return str(getattr(self, self.kind))


class Boundary(_Strict):
    id: str
    text: NonEmptyText = Field(description="The sentence a human reads.")
    enforced_by: list[RuleRef] = Field(default_factory=list)
    advisory: bool = Field(default=False, description="True if no machine rule enforces it.")


class Limits(_Strict):
    """Per-run limits. The contract pins them, so a run's audit record fixes the limits it ran under.

    A caller may tighten them for one run, never loosen them.
    """

    max_calls: int = Field(default=50, ge=1, le=100_000, description="Proxy calls per run.")
    max_writes: int = Field(default=10, ge=0, le=100_000, description="Write operations per run.")
    max_denials: int = Field(
        default=10, ge=1, le=10_000, description="Denied calls per run before the gate ends the run."
    )
    memory_mib: int = Field(default=128, ge=32, le=1024, description="Sandbox linear memory, MiB.")
    cpu_seconds: float = Field(default=5.0, gt=0, le=300, description="Time the program may compute.")
    wall_seconds: float = Field(default=30.0, gt=0, le=3600, description="Whole run, host calls included.")
    max_call_bytes: int = Field(default=65_536, ge=256, le=16_777_216, description="Size of one call's arguments.")
    max_output_bytes: int = Field(default=65_536, ge=0, le=16_777_216, description="Printed output kept per run.")
    max_program_bytes: int = Field(default=262_144, ge=1024, le=16_777_216, description="Size of the program text.")


class PrincipalSpec(_Strict):
    """What the contract knows of a principal beyond id and scopes: typed attributes the operator
    binds to a token (`charter token add --attr`) or a local run (`charter exec --attr`)."""

    attributes: dict[str, TypeText] = Field(default_factory=dict)


class Contract(_Strict):
    """One version of a domain contract."""

    contract: str = Field(description="The contract's name, a snake_case identifier.")
    version: str = Field(description="Semantic version, MAJOR.MINOR.PATCH.")
    summary: NonEmptyText
    owners: list[NonEmptyText] = Field(min_length=1)
    changelog: NonEmptyText = Field(description="What changed in this version.")
    enums: dict[str, list[str]] = Field(default_factory=dict)
    records: dict[str, dict[str, TypeText]] = Field(default_factory=dict)
    entities: dict[str, Entity] = Field(
        default_factory=dict, description="May be empty: a stateless contract has operations only."
    )
    principal: PrincipalSpec = Field(default_factory=PrincipalSpec)
    operations: dict[str, Operation] = Field(min_length=1)
    boundaries: list[Boundary] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    approvals: Approvals | None = Field(
        default=None,
        description="Human approvals of calls that `requires_approval`: the approver scope and the expiry.",
    )
    binding: ContractBinding | None = Field(
        default=None,
        description="The default backend: a Python module (operations use module:op_name) or an HTTP service.",
    )
    to_decide: list[NonEmptyText] = Field(
        default_factory=list,
        description="What the author must still decide (written by import-openapi); publish refuses a contract "
        "while any item is left. Not part of the content hash.",
    )

    @field_validator("version", mode="before")
    @classmethod
    def _version_is_text(cls, value: Any) -> Any:
        # YAML reads `version: 1.0` as a float; report it as a version, not a type error.
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value

    @field_validator("version")
    @classmethod
    def _semver(cls, value: str) -> str:
        SemVer(value)
        return value

    @property
    def semver(self) -> SemVer:
        return SemVer(self.version)
