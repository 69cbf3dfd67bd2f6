"""The review app's contract views, read from the registry: every published version with who
published it, one version as its callers and its gate see it, the classified changes between
two versions, and the approval rule a paused call was held by.

`CharterService` delegates to these functions (contract_versions, contract_review,
contract_changes, approval_rule), so the pages read through the service like the HTTP API.
Every value here is plain data; the pages escape it.
"""

from __future__ import annotations

from dataclasses import dataclass

from charter.compiler.artifact import ApprovalPolicy, BoundaryRule, CompiledContract, OperationRule
from charter.contract.model import SemVer
from charter.errors import ContractNotFound, UsageError
from charter.registry import Change, Registry, VersionInfo, parse_ref

__all__ = [
    "ApprovalRule",
    "ChangeReview",
    "ContractReview",
    "ContractVersions",
    "approval_rule",
    "contract_changes",
    "contract_review",
    "contract_versions",
]


@dataclass(frozen=True, slots=True)
class ContractVersions:
    """One contract's published versions, oldest first; `default`: what an unpinned caller gets."""

    name: str
    default: str
    versions: tuple[VersionInfo, ...]


@dataclass(frozen=True, slots=True)
class ContractReview:
    """One published version: its registry record, the compiled artifact (prompt block, stubs,
    gate table), the source file as published, and the approval policy in force."""

    info: VersionInfo
    compiled: CompiledContract
    source: str
    default: bool  # the version unpinned callers get
    versions: tuple[str, ...]  # every published version of the contract, oldest first
    policy: ApprovalPolicy

    @property
    def operations(self) -> list[OperationRule]:
        return list(self.compiled.gate.operations.values())

    @property
    def boundaries(self) -> tuple[BoundaryRule, ...]:
        return self.compiled.gate.boundaries

    @property
    def previous(self) -> str | None:
        """The version published just before this one (by semantic version), None for the first."""
        index = self.versions.index(self.info.version)
        return self.versions[index - 1] if index > 0 else None


@dataclass(frozen=True, slots=True)
class ChangeReview:
    """The changes from version `old` to version `new` of contract `name`, each classified
    breaking, relaxation or additive (charter.registry.diff), and both versions' records."""

    name: str
    old: VersionInfo
    new: VersionInfo
    changes: tuple[Change, ...]
    versions: tuple[str, ...]

    def count(self, kind: str) -> int:
        return sum(change.kind == kind for change in self.changes)


@dataclass(frozen=True, slots=True)
class ApprovalRule:
    """The rule that held a paused call, from the compiled contract version it ran under:
    `when` (the CEL condition, None when the operation always requires approval), and the
    hard boundary's sentence. `found` False: that version is not in this registry, so only
    what the request receipt itself says can be shown."""

    found: bool
    when: str | None = None
    boundary_text: str | None = None


def contract_versions(registry: Registry) -> list[ContractVersions]:
    """Every contract in the registry, by name, with all its published versions."""
    return [
        ContractVersions(name=name, default=registry.info(name).version, versions=tuple(registry.versions(name)))
        for name in registry.names()
    ]


def _exact(registry: Registry, name: str, version: str, field: str) -> VersionInfo:
    """The published version `version` (whole MAJOR.MINOR.PATCH) of `name`. Raises
    ContractNotFound naming what is published, UsageError (naming `field`) for a malformed one."""
    try:
        SemVer(version)
    except ValueError:
        raise UsageError(f"{field}: {version[:64]!r} is not a version: give one like 1.2.0") from None
    versions = registry.versions(name)
    for info in versions:
        if info.version == version:
            return info
    if not versions:
        registry.info(name)  # raises ContractNotFound naming the published contracts
    published = ", ".join(v.version for v in versions)
    raise ContractNotFound(f"{field}: contract {name!r} has no version {version!r} (published: {published})")


def contract_review(registry: Registry, name: str, version: str) -> ContractReview:
    """The version `version` (a whole version) of contract `name`. Raises ContractNotFound
    (unknown name or version) and UsageError (a malformed version)."""
    parse_ref(f"{name}@{version}")  # UsageError for a selector that is no version at all
    info = _exact(registry, name, version, "version")
    compiled = registry.get(info.name, info.version)
    versions = tuple(v.version for v in registry.versions(name))
    return ContractReview(
        info=info,
        compiled=compiled,
        source=registry.source(info.name, info.version),
        default=registry.info(name).version == info.version,
        versions=versions,
        policy=compiled.gate.policy,
    )


def contract_changes(registry: Registry, name: str, old: str, new: str) -> ChangeReview:
    """The classified changes from `old` to `new` (whole versions of `name`; either order).
    Raises ContractNotFound and UsageError naming the field (`from`, `to`) at fault."""
    from charter.registry import diff_contracts

    before = _exact(registry, name, old, "from")
    after = _exact(registry, name, new, "to")
    changes = diff_contracts(registry.model(name, before.version), registry.model(name, after.version))
    versions = tuple(v.version for v in registry.versions(name))
    return ChangeReview(name=name, old=before, new=after, changes=tuple(changes), versions=versions)


def approval_rule(
    registry: Registry, contract: str, version: str, operation: str, boundary: str | None
) -> ApprovalRule:
    """The approval rule of `operation` in `contract` `version` as compiled, and the sentence of
    hard boundary `boundary`; ApprovalRule(found=False) when that version is not published here."""
    try:
        compiled = registry.get(contract, _exact(registry, contract, version, "version").version)
    except (ContractNotFound, UsageError):
        return ApprovalRule(found=False)
    rule = compiled.gate.operations.get(operation)
    sentence = next((b.text for b in compiled.gate.boundaries if b.id == boundary), None)
    return ApprovalRule(found=True, when=rule.approval_when if rule is not None else None, boundary_text=sentence)
