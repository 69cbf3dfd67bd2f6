"""The contract registry: immutable, versioned contract records in SQLite or PostgreSQL.

A published version never changes: UPDATE and DELETE are refused by triggers in the
database itself, not only by this API (on PostgreSQL also by privileges: the application's
role is granted SELECT and INSERT only, `charter db grant ROLE`). Compiled artifacts are
rebuilt from the stored canonical JSON (compilation is pure), so the registry stores one
source of truth.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import msgspec

from charter._paths import charter_home
from charter._profile import component
from charter.compiler import CompiledContract, compile_contract
from charter.contract._yaml import SourceMap
from charter.contract.bindings import BoundModule
from charter.contract.cel_guards import suggest
from charter.contract.checker import CheckedContract, check_contract_data
from charter.contract.model import Contract, SemVer
from charter.db import Connection, Database, PgSchema, PgStep, write_transaction
from charter.db._stores import is_integrity_error, open_schema, reachable
from charter.errors import ChangeRefused, ContractNotFound, UndecidedDraft, UsageError, VersionConflict
from charter.migrations import Schema, Step
from charter.registry.diff import Change, diff_contracts

__all__ = [
    "REGISTRY_PG_SCHEMA",
    "REGISTRY_SCHEMA",
    "PublishResult",
    "Registry",
    "VersionInfo",
    "charter_home",
    "parse_ref",
]

# The registry's schema, one step per version (charter.migrations); step 1 is release
# 0.1.0's, idempotent so it adopts a 0.1 registry as it is.
REGISTRY_SCHEMA = Schema(
    "registry",
    (
        Step(
            1,
            "contract_versions; triggers that keep published versions immutable (release 0.1.0)",
            (
                """CREATE TABLE IF NOT EXISTS contract_versions (
                    name TEXT NOT NULL,
                    version TEXT NOT NULL,
                    sha256 TEXT NOT NULL,
                    canonical TEXT NOT NULL,
                    source_text TEXT NOT NULL,
                    source_file TEXT NOT NULL,
                    published_at TEXT NOT NULL,
                    relaxation_approved INTEGER NOT NULL,
                    PRIMARY KEY (name, version)
                )""",
                """CREATE TRIGGER IF NOT EXISTS contract_versions_immutable_update
                    BEFORE UPDATE ON contract_versions
                    BEGIN SELECT RAISE(ABORT, 'published contract versions are immutable'); END""",
                """CREATE TRIGGER IF NOT EXISTS contract_versions_immutable_delete
                    BEFORE DELETE ON contract_versions
                    BEGIN SELECT RAISE(ABORT, 'published contract versions are immutable'); END""",
            ),
        ),
        Step(
            2,
            "contract_promotions (which major line an unpinned caller gets: append-only, the newest row "
            "per name wins, a name with no row defaults to its first published major) and binding_modules "
            "(each Python binding module of a published version: the file it was found in and its sha256 "
            "at publish; exec and serve load that file and refuse it once its content differs)",
            (
                """CREATE TABLE contract_promotions (
                    name TEXT NOT NULL,
                    major INTEGER NOT NULL,
                    promoted_at TEXT NOT NULL,
                    seq INTEGER PRIMARY KEY AUTOINCREMENT
                )""",
                """CREATE TRIGGER contract_promotions_append_only_update
                    BEFORE UPDATE ON contract_promotions
                    BEGIN SELECT RAISE(ABORT, 'promotions are a history: promote again instead'); END""",
                """CREATE TRIGGER contract_promotions_append_only_delete
                    BEFORE DELETE ON contract_promotions
                    BEGIN SELECT RAISE(ABORT, 'promotions are a history: promote again instead'); END""",
                """CREATE TABLE binding_modules (
                    name TEXT NOT NULL,
                    version TEXT NOT NULL,
                    module TEXT NOT NULL,
                    root TEXT NOT NULL,
                    path TEXT NOT NULL,
                    sha256 TEXT NOT NULL,
                    PRIMARY KEY (name, version, module)
                )""",
                """CREATE TRIGGER binding_modules_immutable_update
                    BEFORE UPDATE ON binding_modules
                    BEGIN SELECT RAISE(ABORT, 'published binding records are immutable'); END""",
                """CREATE TRIGGER binding_modules_immutable_delete
                    BEFORE DELETE ON binding_modules
                    BEGIN SELECT RAISE(ABORT, 'published binding records are immutable'); END""",
            ),
        ),
        Step(
            3,
            "contract_versions.published_by: who published each version (`charter contract publish --by`, by "
            "default the OS user); NULL for the versions published before, whose publisher was not recorded",
            ("ALTER TABLE contract_versions ADD COLUMN published_by TEXT",),
        ),
    ),
)

# The same tables in PostgreSQL: version 1 is the whole of SQLite's version 3 (there is no
# PostgreSQL registry of an earlier release to adopt). Immutability is enforced twice: by the
# triggers below (the words of SQLite's), which refuse even the tables' owner, and by
# privileges: the application's role gets SELECT and INSERT only (`append_only`).
_PG_REFUSE = """CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION '{message}'; END $$"""
_PG_TRIGGER = "CREATE TRIGGER {table}_{what} BEFORE UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()"
_PG_TRUNCATE = "CREATE TRIGGER {table}_{what}_truncate BEFORE TRUNCATE ON {table} EXECUTE FUNCTION {name}()"


def _pg_refusal(table: str, what: str, message: str) -> tuple[str, ...]:
    """A PL/pgSQL trigger refusing UPDATE, DELETE and TRUNCATE on `table` with `message`."""
    name = f"charter_refuse_{table}"
    return (
        _PG_REFUSE.format(name=name, message=message),
        _PG_TRIGGER.format(table=table, what=what, name=name),
        _PG_TRUNCATE.format(table=table, what=what, name=name),
    )


REGISTRY_PG_SCHEMA = PgSchema(
    "registry",
    (
        PgStep(
            1,
            "contract_versions (with published_by), contract_promotions, binding_modules; triggers that keep "
            "all three immutable (the registry of SQLite schema version 3)",
            (
                """CREATE TABLE contract_versions (
                    name TEXT NOT NULL,
                    version TEXT NOT NULL,
                    sha256 TEXT NOT NULL,
                    canonical TEXT NOT NULL,
                    source_text TEXT NOT NULL,
                    source_file TEXT NOT NULL,
                    published_at TEXT NOT NULL,
                    relaxation_approved INTEGER NOT NULL,
                    published_by TEXT,
                    PRIMARY KEY (name, version)
                )""",
                *_pg_refusal("contract_versions", "immutable", "published contract versions are immutable"),
                """CREATE TABLE contract_promotions (
                    name TEXT NOT NULL,
                    major INTEGER NOT NULL,
                    promoted_at TEXT NOT NULL,
                    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY
                )""",
                *_pg_refusal("contract_promotions", "append_only", "promotions are a history: promote again instead"),
                """CREATE TABLE binding_modules (
                    name TEXT NOT NULL,
                    version TEXT NOT NULL,
                    module TEXT NOT NULL,
                    root TEXT NOT NULL,
                    path TEXT NOT NULL,
                    sha256 TEXT NOT NULL,
                    PRIMARY KEY (name, version, module)
                )""",
                *_pg_refusal("binding_modules", "immutable", "published binding records are immutable"),
            ),
        ),
    ),
    append_only=("contract_versions", "contract_promotions", "binding_modules"),
    sequences=("contract_promotions_seq_seq",),
)

_SELECTOR = re.compile(r"(0|[1-9]\d*)(?:\.(0|[1-9]\d*)(?:\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?)?)?\Z")


def parse_ref(ref: str) -> tuple[str, str | None]:
    """'orders@1.2.0' -> ('orders', '1.2.0'); 'orders@1' and 'orders@1.2' select the newest
    version of that line; 'orders' -> ('orders', None), the newest of the default major.

    Raises UsageError for a version selector that is none of MAJOR, MAJOR.MINOR, MAJOR.MINOR.PATCH.
    """
    name, at, version = ref.strip().partition("@")
    if at and not _SELECTOR.match(version):
        raise UsageError(
            f"'{ref}' does not name a contract version: write NAME, NAME@MAJOR, NAME@MAJOR.MINOR "
            "or NAME@MAJOR.MINOR.PATCH (e.g. orders, orders@1, orders@1.4, orders@1.4.2)"
        )
    return name, version or None


def _selects(selector: str, version: str) -> bool:
    """Does `selector` (MAJOR, MAJOR.MINOR or a whole version) select `version`?"""
    match = _SELECTOR.match(selector)
    if match is None or match.group(3) is not None:
        return selector == version
    parts = selector.split(".")
    semver = SemVer(version)
    # Compared as text (the selector has no leading zeros): int() of a 5,000-digit part would raise.
    return [str(semver.major), str(semver.minor)][: len(parts)] == parts


@dataclass(frozen=True, slots=True)
class VersionInfo:
    name: str
    version: str
    sha256: str
    published_at: str  # ISO-8601 UTC, seconds
    source_file: str
    published_by: str | None = None  # None: published before the registry recorded it (schema step 3)
    relaxation_approved: bool = False  # published with --allow-relaxation (loosened rules acknowledged)


@dataclass(frozen=True, slots=True)
class PublishResult:
    info: VersionInfo
    created: bool  # False when identical content was already published under this version
    changes: tuple[Change, ...] = field(default=())  # against the previous latest version


class Registry:
    """Published contract versions, in one SQLite file or a PostgreSQL database. Thread-safe.

    `Registry(path)`: the SQLite file `path` (default $CHARTER_HOME/charter.db).
    `Registry(database=db)`: the registry of `db` (SQLite: `db.home / "charter.db"`; PostgreSQL:
    its tables there, through the process's pool). Raises SchemaMismatch for a registry of another
    schema version, StoreUnavailable when PostgreSQL cannot be reached.

    Reads are cached in memory: compiled contracts by (name, version) for the registry's life
    (a published version never changes), and the version lists and default majors until the
    registry changes. A change by any other connection, in this process or another (`charter
    contract publish`, `promote`), is seen at the next read: SQLite's `PRAGMA data_version` on a
    held connection tells it; on PostgreSQL, `revision()` (both tables are append-only, so their
    row counts grow with every change), each for the cost of one query."""

    def __init__(self, path: Path | str | None = None, *, database: Database | None = None) -> None:
        if database is None and path is None:
            # CHARTER_DATABASE_URL, else <CHARTER_HOME>/charter.db as before: every command that
            # opens the registry (contract publish/list/show, exec, run, serve) opens the same one.
            database = Database.from_env()
        if database is None or not database.is_postgres:
            if path is None:
                path = (database.home if database is not None else charter_home()) / "charter.db"
            self.path = Path(path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            database = Database("sqlite", f"sqlite:{self.path.parent}", self.path.parent)
        else:
            self.path = database.home / "charter.db"  # never opened: messages name database.shown
        self.database = database
        self._file = self.path.name
        with self._connect() as db:
            open_schema(db, database, self._file, REGISTRY_SCHEMA, REGISTRY_PG_SCHEMA)  # another version is refused
        self._lock = threading.RLock()  # the reader and the caches below
        self._reader: Connection | None = None  # SQLite: the held connection the caches are checked on
        self._data_version: object = None  # the marker (data_version, revision) the caches are of
        self._names: list[str] | None = None
        self._versions: dict[str, list[VersionInfo]] = {}
        self._majors: dict[str, int | None] = {}
        self._compiled: dict[tuple[str, str], CompiledContract] = {}  # immutable: never invalidated

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A connection to read on, after dropping the caches if the registry changed since they
        were filled. Call with `_lock` held."""
        if self.database.is_postgres:
            with self._connect() as db:
                self._fresh(_counts(db))
                yield db
            return
        if self._reader is None:
            import sqlite3

            self._reader = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
        self._fresh(self._reader.execute("PRAGMA data_version").fetchone()[0])
        yield self._reader

    def _fresh(self, version: object) -> None:
        if version != self._data_version:
            self._names, self._data_version = None, version
            self._versions.clear()
            self._majors.clear()

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        """A connection (SQLite: a new one; PostgreSQL: from the pool). StoreUnavailable when
        PostgreSQL cannot be reached."""
        with reachable("registry", self.database), self.database.connect(self._file) as db:
            yield db

    # reading

    def names(self) -> list[str]:
        with self._lock, self._reading() as db:
            if self._names is None:
                self._names = [r[0] for r in db.execute("SELECT DISTINCT name FROM contract_versions ORDER BY name")]
            return list(self._names)

    def versions(self, name: str) -> list[VersionInfo]:
        """Every published version of `name`, oldest first by semantic version."""
        with self._lock, self._reading() as db:
            found = self._versions.get(name)
            if found is None:
                rows = db.execute(
                    "SELECT name, version, sha256, published_at, source_file, published_by, relaxation_approved "
                    "FROM contract_versions WHERE name = ?",
                    (name,),
                ).fetchall()
                found = sorted(
                    (VersionInfo(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6])) for r in rows),
                    key=lambda v: SemVer(v.version),
                )
                if len(self._versions) < 10_000:  # names are few; a flood of unknown names is not kept
                    self._versions[name] = found
            return list(found)

    def list(self) -> list[VersionInfo]:
        return [v for name in self.names() for v in self.versions(name)]

    def revision(self) -> tuple[int, int]:
        """A cheap marker that changes whenever a version is published or a major promoted
        (both tables are append-only), for servers that tell their clients the list changed."""
        with self._connect() as db:
            return _counts(db)

    def default_major(self, name: str) -> int | None:
        """The major line unpinned callers get: the last promoted, else the first published."""
        with self._lock, self._reading() as db:
            if name in self._majors:
                return self._majors[name]
            row = db.execute(
                "SELECT major FROM contract_promotions WHERE name = ? ORDER BY seq DESC LIMIT 1", (name,)
            ).fetchone()
            if row is not None:
                major: int | None = int(row[0])
            else:
                versions = self.versions(name)
                major = min(SemVer(v.version).major for v in versions) if versions else None
            if major is not None:
                self._majors[name] = major
            return major

    def info(self, name: str, version: str | None = None) -> VersionInfo:
        """Resolve a version selector: None (the newest of the default major), MAJOR,
        MAJOR.MINOR (the newest of that line) or a whole version.

        Raises ContractNotFound naming the published versions when nothing matches."""
        versions = self.versions(name)
        if not versions:
            known = self.names()
            raise ContractNotFound(
                f"no contract named '{name}' is published{suggest(name, known)}; "
                f"published: {', '.join(known) or 'none'} (publish one with `charter contract publish FILE`)"
            )
        selector = version if version is not None else str(self.default_major(name))
        matching = [info for info in versions if _selects(selector, info.version)]
        if matching:
            return matching[-1]
        published = ", ".join(v.version for v in versions)
        near = [f"{name}@{v.version}" for v in versions if v.version.startswith(selector.split(".")[0] + ".")]
        hint = f"; did you mean {near[-1]}?" if near else f"; did you mean {name}@{versions[-1].version}?"
        raise ContractNotFound(f"contract '{name}' has no version {selector}{hint} (published: {published})")

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

    def modules(self, name: str, version: str) -> tuple[BoundModule, ...]:
        """The binding modules recorded when `name` `version` was published (exact version)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT module, root, path, sha256 FROM binding_modules WHERE name = ? AND version = ? ORDER BY module",
                (name, version),
            ).fetchall()
        return tuple(BoundModule(module=r[0], root=r[1], path=r[2], sha256=r[3]) for r in rows)

    def get(self, name: str, version: str | None = None) -> CompiledContract:
        """The compiled artifact of a published version, `version` a selector as for `info`,
        with its binding modules as recorded at publish (compiled once per registry: the same
        object again for the same version)."""
        with component("registry"):
            info = self.info(name, version)
            with self._lock:
                found = self._compiled.get((info.name, info.version))
            if found is not None:
                return found
            compiled = _compile_canonical(self._row(info.name, info.version)[0], f"{info.name}@{info.version}")
            compiled = msgspec.structs.replace(compiled, modules=self.modules(info.name, info.version))
            with self._lock:
                return self._compiled.setdefault((info.name, info.version), compiled)

    # writing

    def promote(self, name: str, major: int) -> VersionInfo:
        """Make `major` the line unpinned callers get; returns the version they now resolve to.

        Raises ContractNotFound when no version of that major is published."""
        info = self.info(name, str(major))
        with self._connect() as db:
            db.execute(
                "INSERT INTO contract_promotions (name, major, promoted_at) VALUES (?, ?, ?)",
                (name, major, dt.datetime.now(dt.UTC).isoformat(timespec="seconds")),
            )
        return info

    def publish(
        self,
        checked: CheckedContract,
        source_text: str,
        *,
        allow_relaxation: bool = False,
        published_by: str | None = None,
    ) -> PublishResult:
        """Record an immutable version. Identical content under the same version is a no-op
        (the first publication's `published_by` stays). `published_by`: who publishes it, as
        recorded and shown (None: not recorded); at most 200 characters, no control characters.

        A new version must be greater than the newest of its own major line, and is diffed
        against it (or, opening a new line, against the newest version below it), so 1.4.1
        can follow 2.0.0. Raises VersionConflict or ChangeRefused, and UndecidedDraft while
        the contract lists items under `to_decide:`; UsageError for a bad `published_by`."""
        _check_publisher(published_by)
        _refuse_undecided(checked)
        compiled = compile_contract(checked)
        name, version = compiled.name, compiled.version
        existing = {v.version: v for v in self.versions(name)}
        if version in existing:
            if existing[version].sha256 != compiled.sha256:
                raise VersionConflict(
                    f"{name} {version} is already published with other content "
                    f"(sha256 {existing[version].sha256[:12]}, this file {compiled.sha256[:12]}); "
                    "published versions never change: bump the version"
                )
            self._same_modules(name, version, compiled.modules)
            return PublishResult(existing[version], created=False)
        semver = SemVer(version)
        line = [v for v in existing if SemVer(v).major == semver.major]
        below = [v for v in existing if SemVer(v).major < semver.major]
        predecessor = max(line, key=SemVer) if line else max(below, key=SemVer) if below else None
        changes: tuple[Change, ...] = ()
        if line and semver <= SemVer(max(line, key=SemVer)):
            raise VersionConflict(
                f"{name} {version} is not newer than {predecessor}, the latest published version of major "
                f"{semver.major}; a new version must be greater than the latest of its own major line"
            )
        if predecessor is not None:
            changes = tuple(diff_contracts(self.model(name, predecessor), checked.model))
            breaking = [c for c in changes if c.kind == "breaking"]
            if breaking and semver.major <= SemVer(predecessor).major:
                raise ChangeRefused(
                    f"{name} {version} makes breaking changes to {predecessor} without a major version "
                    f"bump (publish it as {self._next_major(existing)}.0.0):\n" + "\n".join(f"  {c}" for c in breaking),
                    breaking,
                )
            relaxations = [c for c in changes if c.kind == "relaxation"]
            if relaxations and not allow_relaxation:
                raise ChangeRefused(
                    f"{name} {version} relaxes rules of {predecessor}; this is a governance change, "
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
            published_by=published_by,
            relaxation_approved=allow_relaxation,
        )
        try:
            with self._connect() as db, write_transaction(db):
                # Checked again inside the write: a version published since `existing` was read
                # (by another process) changes what this one may be. SQLite's BEGIN IMMEDIATE makes
                # this transaction the only writer; on PostgreSQL (READ COMMITTED) a transaction-level
                # advisory lock per contract name serializes its publishers the same way.
                if self.database.is_postgres:
                    db.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (f"charter registry publish {name}",))
                now = {r[0] for r in db.execute("SELECT version FROM contract_versions WHERE name = ?", (name,))}
                if now != set(existing):
                    raise _Raced
                db.execute(
                    "INSERT INTO contract_versions (name, version, sha256, canonical, source_text, source_file, "
                    "published_at, relaxation_approved, published_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        version,
                        compiled.sha256,
                        compiled.canonical,
                        source_text,
                        checked.file,
                        info.published_at,
                        int(allow_relaxation),
                        published_by,
                    ),
                )
                for m in compiled.modules:
                    db.execute(
                        "INSERT INTO binding_modules VALUES (?, ?, ?, ?, ?, ?)",
                        (name, version, m.module, m.root, m.path, m.sha256),
                    )
        except Exception as error:
            if not isinstance(error, _Raced) and not is_integrity_error(error):
                raise
            # Another publisher got there first; publish again against what it published, to let it explain.
            return self.publish(checked, source_text, allow_relaxation=allow_relaxation, published_by=published_by)
        return PublishResult(info, created=True, changes=changes)

    @staticmethod
    def _next_major(existing: Mapping[str, VersionInfo]) -> int:
        return max(SemVer(v).major for v in existing) + 1

    def _same_modules(self, name: str, version: str, modules: tuple[BoundModule, ...]) -> None:
        """Re-publishing a version is a no-op only when its binding modules are unchanged too."""
        recorded = {m.module: m for m in self.modules(name, version)}
        for module in modules:
            before = recorded.get(module.module)
            if before is not None and before.sha256 != module.sha256:
                patch = SemVer(version)
                raise VersionConflict(
                    f"{name} {version} is published with binding module '{module.module}' at sha256 "
                    f"{before.sha256[:12]} ({before.path}); the file is now {module.sha256[:12]} ({module.path}). "
                    "A published version never changes, its backend code included: publish the change as a new "
                    f"patch version ({patch.major}.{patch.minor}.{patch.patch + 1})"
                )


_MAX_PUBLISHER_CHARS = 200


class _Raced(Exception):
    """Another publisher published a version of the contract between the checks and the write."""


def _counts(db: Connection) -> tuple[int, int]:
    row = db.execute(
        "SELECT (SELECT COUNT(*) FROM contract_versions), (SELECT COUNT(*) FROM contract_promotions)"
    ).fetchone()
    return int(row[0]), int(row[1])


def _check_publisher(published_by: str | None) -> None:
    """A publisher's name is shown on pages and in listings: one short printable line."""
    if published_by is None:
        return
    if not published_by.strip() or len(published_by) > _MAX_PUBLISHER_CHARS or not published_by.isprintable():
        raise UsageError(
            f"the publisher's name {published_by[:60]!r} is not recorded: give a name of 1 to {_MAX_PUBLISHER_CHARS} "
            "printable characters (`charter contract publish --by NAME`)"
        )


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
    # file, and the registry may be read from anywhere; `Registry.get` adds their records.
    data = msgspec.json.decode(canonical)
    return compile_contract(check_contract_data(data, SourceMap(label), published=True))
