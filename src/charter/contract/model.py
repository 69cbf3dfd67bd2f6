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
    "Operation",
    "RuleRef",
    "SemVer",
    "Transition",
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
    Field(description="A type: str, int, float, bool, money, datetime, a declared name, list[T], or T? for optional."),
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


class Operation(_Strict):
    kind: Literal["read", "write"]
    doc: NonEmptyText
    entity: str | None = Field(default=None, description="The entity the operation acts on.")
    key: str | None = Field(
        default=None,
        description="The param that carries the entity's key; without it a write creates an entity.",
    )
    params: dict[str, TypeText] = Field(default_factory=dict)
    returns: TypeText | None = None
    transition: str | None = Field(default=None, description="The lifecycle transition a write performs.")
    guards: list[Guard] = Field(default_factory=list)
    scopes: list[str] = Field(default_factory=list, description="Scopes the principal must hold, all of them.")
    public: bool = Field(
        default=False,
        description="A write anyone may call: the author's explicit choice; a write without scopes must say it.",
    )
    after: list[str] = Field(
        default_factory=list,
        description="Operations that must have succeeded earlier in the same run "
        "(on the same entity key when both act on the same entity).",
    )
    idempotent: bool = False
    requires_approval: bool = False
    binding: Binding | None = None


_RULE_KINDS = ("transition", "guard", "sequence", "approval", "scope")


class RuleRef(_Strict):
    """One machine rule that enforces a boundary. Exactly one of the five is set."""

    transition: str | None = Field(default=None, description="'Entity.transition'")
    guard: str | None = Field(default=None, description="A guard id.")
    sequence: str | None = Field(default=None, description="An operation whose `after` rule enforces it.")
    approval: str | None = Field(default=None, description="An operation with `requires_approval: true`.")
    scope: str | None = Field(default=None, description="An operation whose `scopes` enforce it.")

    @model_validator(mode="after")
    def _exactly_one(self) -> RuleRef:
        named = [k for k in _RULE_KINDS if getattr(self, k) is not None]
        if len(named) != 1:
            raise ValueError(f"a rule names exactly one of {', '.join(_RULE_KINDS)}")
        return self

    @property
    def kind(self) -> str:
        """'transition', 'guard', 'sequence', 'approval' or 'scope'."""
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
    operations: dict[str, Operation] = Field(min_length=1)
    boundaries: list[Boundary] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
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
