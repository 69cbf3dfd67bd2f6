"""The contract registry: immutable, versioned contract records in SQLite.

A published version never changes: UPDATE and DELETE are refused by triggers in the
database itself, not only by this API. Compiled artifacts are rebuilt from the stored
canonical JSON (compilation is pure), so the registry stores one source of truth.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import msgspec

from charter._paths import charter_home
from charter.compiler import CompiledContract, compile_contract
from charter.contract._yaml import SourceMap
from charter.contract.cel_guards import suggest
from charter.contract.checker import CheckedContract, check_contract_data
from charter.contract.model import Contract, SemVer
from charter.errors import ChangeRefused, ContractNotFound, UndecidedDraft, VersionConflict
from charter.registry.diff import Change, diff_contracts

__all__ = ["PublishResult", "Registry", "VersionInfo", "charter_home", "parse_ref"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS contract_versions (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    canonical TEXT NOT NULL,
    source_text TEXT NOT NULL,
    source_file TEXT NOT NULL,
    published_at TEXT NOT NULL,
    relaxation_approved INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TRIGGER IF NOT EXISTS contract_versions_immutable_update
    BEFORE UPDATE ON contract_versions
    BEGIN SELECT RAISE(ABORT, 'published contract versions are immutable'); END;
CREATE TRIGGER IF NOT EXISTS contract_versions_immutable_delete
    BEFORE DELETE ON contract_versions
    BEGIN SELECT RAISE(ABORT, 'published contract versions are immutable'); END;
"""


def parse_ref(ref: str) -> tuple[str, str | None]:
    """'orders@1.2.0' -> ('orders', '1.2.0'); 'orders' -> ('orders', None) meaning latest."""
    name, _, version = ref.partition("@")
    return name, version or None


@dataclass(frozen=True, slots=True)
class VersionInfo:
    name: str
    version: str
    sha256: str
    published_at: str
    source_file: str


@dataclass(frozen=True, slots=True)
class PublishResult:
    info: VersionInfo
    created: bool  # False when identical content was already published under this version
    changes: tuple[Change, ...] = field(default=())  # against the previous latest version


class Registry:
    """Published contract versions in one SQLite file."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else charter_home() / "charter.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    # reading

    def names(self) -> list[str]:
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT DISTINCT name FROM contract_versions ORDER BY name")]

    def versions(self, name: str) -> list[VersionInfo]:
        """Every published version of `name`, oldest first by semantic version."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT name, version, sha256, published_at, source_file FROM contract_versions WHERE name = ?",
                (name,),
            ).fetchall()
        return sorted((VersionInfo(*r) for r in rows), key=lambda v: SemVer(v.version))

    def list(self) -> list[VersionInfo]:
        return [v for name in self.names() for v in self.versions(name)]

    def info(self, name: str, version: str | None = None) -> VersionInfo:
        versions = self.versions(name)
        if not versions:
            known = self.names()
            raise ContractNotFound(
                f"no contract named '{name}' is published{suggest(name, known)}; "
                f"published: {', '.join(known) or 'none'} (publish one with `charter contract publish FILE`)"
            )
        if version is None:
            return versions[-1]
        for info in versions:
            if info.version == version:
                return info
        raise ContractNotFound(
            f"contract '{name}' has no version {version}; published: " + ", ".join(v.version for v in versions)
        )

    def _row(self, name: str, version: str) -> tuple[str, str]:
        with self._connect() as db:
            row = db.execute(
                "SELECT canonical, source_text FROM contract_versions WHERE name = ? AND version = ?",
                (name, version),
            ).fetchone()
        assert row is not None
        return row[0], row[1]

    def source(self, name: str, version: str | None = None) -> str:
        """The contract file's text exactly as it was published."""
        info = self.info(name, version)
        return self._row(info.name, info.version)[1]

    def model(self, name: str, version: str | None = None) -> Contract:
        info = self.info(name, version)
        return Contract.model_validate(msgspec.json.decode(self._row(info.name, info.version)[0]))

    def get(self, name: str, version: str | None = None) -> CompiledContract:
        """The compiled artifact of a published version (latest when `version` is None)."""
        info = self.info(name, version)
        return _compile_canonical(self._row(info.name, info.version)[0], f"{info.name}@{info.version}")

    # writing

    def publish(self, checked: CheckedContract, source_text: str, *, allow_relaxation: bool = False) -> PublishResult:
        """Record an immutable version. Identical content under the same version is a no-op.

        Raises UndecidedDraft while the contract lists items under `to_decide:`.
        """
        _refuse_undecided(checked)
        compiled = compile_contract(checked)
        name, version = compiled.name, compiled.version
        existing = {v.version: v for v in self.versions(name)}
        if version in existing:
            if existing[version].sha256 == compiled.sha256:
                return PublishResult(existing[version], created=False)
            raise VersionConflict(
                f"{name} {version} is already published with other content "
                f"(sha256 {existing[version].sha256[:12]}, this file {compiled.sha256[:12]}); "
                "published versions never change: bump the version"
            )
        changes: tuple[Change, ...] = ()
        if existing:
            latest = max(existing, key=SemVer)
            if SemVer(version) <= SemVer(latest):
                raise VersionConflict(
                    f"{name} {version} is not newer than the latest published version {latest}; "
                    "a new version must be greater"
                )
            changes = tuple(diff_contracts(self.model(name, latest), checked.model))
            breaking = [c for c in changes if c.kind == "breaking"]
            if breaking and SemVer(version).major <= SemVer(latest).major:
                raise ChangeRefused(
                    f"{name} {version} makes breaking changes to {latest} without a major version "
                    f"bump (publish it as {SemVer(latest).major + 1}.0.0):\n" + "\n".join(f"  {c}" for c in breaking),
                    breaking,
                )
            relaxations = [c for c in changes if c.kind == "relaxation"]
            if relaxations and not allow_relaxation:
                raise ChangeRefused(
                    f"{name} {version} relaxes rules of {latest}; this is a governance change, "
                    "publish it with --allow-relaxation once it is approved:\n"
                    + "\n".join(f"  {c}" for c in relaxations),
                    relaxations,
                )
        info = VersionInfo(
            name=name,
            version=version,
            sha256=compiled.sha256,
            published_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            source_file=checked.file,
        )
        with self._connect() as db:
            try:
                db.execute(
                    "INSERT INTO contract_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        version,
                        compiled.sha256,
                        compiled.canonical,
                        source_text,
                        checked.file,
                        info.published_at,
                        int(allow_relaxation),
                    ),
                )
            except sqlite3.IntegrityError:
                # Another publisher won the race for this version; let them explain.
                return self.publish(checked, source_text, allow_relaxation=allow_relaxation)
        return PublishResult(info, created=True, changes=changes)


def _refuse_undecided(checked: CheckedContract) -> None:
    items = checked.model.to_decide
    if not items:
        return
    raise UndecidedDraft(
        f"{checked.name} {checked.version} ({checked.file}) is a draft with {len(items)} item(s) still to decide, "
        "so it is not published:\n"
        + "\n".join(f"  - {item}" for item in items)
        + "\nDecide each one (edit the contract), then delete its line under `to_decide:`; "
        "once the list is empty, delete the key and publish again.",
        items,
    )


@lru_cache(maxsize=64)
def _compile_canonical(canonical: str, label: str) -> CompiledContract:
    # Bindings are not re-resolved: they were resolved at publish time, relative to the
    # file, and the registry may be read from anywhere.
    data = msgspec.json.decode(canonical)
    return compile_contract(check_contract_data(data, SourceMap(label), published=True))
