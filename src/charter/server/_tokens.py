"""API tokens: each maps to a principal and its scopes. Only their sha256 is stored.

The file (default $CHARTER_HOME/tokens.yaml) is written by `charter token add` and read
by `charter serve` / `charter mcp --http`, which re-read it when it changes, so a revoked
token stops working without a restart. A deployment on PostgreSQL keeps them in its table
`api_tokens` instead (`TokenStore(database=...)`, charter.server._token_table), read at every
lookup, so a token revoked anywhere is refused by every worker at once.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sys
import threading
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from charter.db import Database
from charter.errors import InvalidPrincipal, UsageError
from charter.principal import Principal, check_attributes, check_distinct, check_principal_id, check_scope
from charter.registry import charter_home
from charter.server._token_table import TokenTable

__all__ = ["TokenEntry", "TokenStore", "token_digest"]

_PREFIX = "chr_"
_REVOKING = "revoking"  # the validation context `revoke` reads the file under
# The token file's format. Release 0.1.0 wrote no `version`; its files are format 1.
TOKEN_FILE_VERSION = 1


class TokenEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Who holds the token, for people reading this file.")
    principal: str = Field(min_length=1, description="Whom runs made with the token act for.")
    scopes: list[str] = Field(default_factory=list)
    attributes: dict[str, str] = Field(
        default_factory=dict,
        description="The principal's attributes as the operator bound them (`--attr name=value`); the gate "
        "checks each against the type the contract declares.",
    )
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the token; the token itself is not kept.")

    # A token acts only for a valid principal with valid scopes (charter.principal): one
    # that is not is refused when the file is read, before any request is served with it.
    # Only `revoke` reads a principal an earlier release accepted (not NFKC, 'charter') under
    # the older rules, so such a token can be revoked with the command the refusal names.
    @field_validator("principal")
    @classmethod
    def _principal(cls, principal: str, info: ValidationInfo) -> str:
        return check_principal_id(principal, recorded=bool(info.context and info.context.get(_REVOKING)))

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, scopes: list[str]) -> list[str]:
        for scope in scopes:
            check_scope(scope)
        return scopes

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, attributes: dict[str, str]) -> dict[str, str]:
        check_attributes(attributes)
        return attributes


class _TokenFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(default=TOKEN_FILE_VERSION, ge=1, description="The file's format.")
    tokens: list[TokenEntry] = Field(default_factory=list)


def token_digest(token: str) -> str:
    """The sha256 (hex) a token is stored and looked up by."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenStore:
    """The token file, or a PostgreSQL deployment's `api_tokens` table. Thread-safe.

    `TokenStore(path)`: the YAML file `path` (default $CHARTER_HOME/tokens.yaml);
    `TokenStore(database=db)`: SQLite: the file `db.home / "tokens.yaml"`; PostgreSQL: the
    table (SchemaMismatch for another version; StoreUnavailable when it cannot be reached).
    With the file, `authenticate` is a dictionary lookup by hash; with the table, one query."""

    def __init__(self, path: Path | None = None, *, database: Database | None = None) -> None:
        self._table: TokenTable | None = None
        if database is None and path is None:
            database = Database.from_env()  # CHARTER_DATABASE_URL: the table api_tokens; else tokens.yaml
        if database is not None and database.is_postgres:
            self._table = TokenTable(database)
        elif path is None and database is not None:
            path = database.home / "tokens.yaml"
        self.path = path or charter_home() / "tokens.yaml"  # PostgreSQL: never read
        self.where = self._table.where if self._table is not None else str(self.path)
        self._lock = threading.Lock()
        self._loaded_at: tuple[int, int] | None = None  # (mtime_ns, size) of what is in memory
        self._by_hash: dict[str, TokenEntry] = {}

    def entries(self) -> list[TokenEntry]:
        if self._table is not None:
            return list(self._validated({"tokens": self._table.rows()}).tokens)
        return list(self._read().tokens)

    def add(self, name: str, principal: str, scopes: list[str], attributes: dict[str, str] | None = None) -> str:
        """Create a token for `principal` with `attributes` (name -> value as text); returns it.
        It is shown this once and never stored."""
        token = _PREFIX + secrets.token_urlsafe(32)
        if self._table is not None:
            with self._table.adding() as (connection, rows):
                self._table.insert(connection, self._new_entry(rows, name, principal, scopes, attributes, token))
            return token
        with self._lock:
            data = self._read()
            entry = self._new_entry([e.model_dump() for e in data.tokens], name, principal, scopes, attributes, token)
            self._write(_TokenFile(tokens=[*data.tokens, TokenEntry.model_validate(entry)]))
        return token

    def _new_entry(
        self,
        existing: list[dict[str, object]],
        name: str,
        principal: str,
        scopes: list[str],
        attributes: dict[str, str] | None,
        token: str,
    ) -> dict[str, object]:
        """The new token's entry, checked against the `existing` ones (UsageError, InvalidPrincipal)."""
        if any(e["name"] == name for e in existing):
            raise UsageError(f"{self.where}: a token named {name!r} exists; revoke it first or pick another name")
        Principal(principal, frozenset(scopes), attributes or {})  # raises InvalidPrincipal for a bad one
        where = f"the token file {self.path}" if self._table is None else self.where
        check_distinct(principal, (str(e["principal"]) for e in existing), where=where)
        return TokenEntry(
            name=name,
            principal=principal,
            scopes=sorted(set(scopes)),
            attributes=dict(sorted((attributes or {}).items())),
            sha256=token_digest(token),
        ).model_dump()

    def revoke(self, name: str) -> None:
        if self._table is not None:
            if not self._table.delete(name):
                names = ", ".join(str(row["name"]) for row in self._table.rows()) or "none"
                raise UsageError(f"{self.where}: no token is named {name!r} (tokens: {names})")
            return
        with self._lock:
            data = self._read(revoking=True)
            kept = [e for e in data.tokens if e.name != name]
            if len(kept) == len(data.tokens):
                names = ", ".join(e.name for e in data.tokens) or "none"
                raise UsageError(f"{self.path}: no token is named {name!r} (tokens: {names})")
            self._write(_TokenFile(tokens=kept))

    def authenticate(self, token: str | None) -> Principal | None:
        """The principal a presented token acts for, or None."""
        if not token:
            return None
        entry = self.by_digest(token_digest(token))
        return None if entry is None else Principal(entry.principal, frozenset(entry.scopes), entry.attributes)

    def by_digest(self, sha256: str) -> TokenEntry | None:
        """The entry of the token whose sha256 is `sha256`, or None (unknown, or revoked since):
        a review-app session is bound to its token this way (charter.ui)."""
        if self._table is not None:
            return next(iter(self._looked_up("WHERE sha256 = ?", (sha256,))), None)
        with self._lock:
            self._refresh()
            return self._by_hash.get(sha256)

    def named(self, name: str) -> TokenEntry | None:
        """The entry named `name` (`charter token add NAME ...`), or None."""
        if self._table is not None:
            return next(iter(self._looked_up("WHERE name = ?", (name,))), None)
        with self._lock:
            self._refresh()
            return next((e for e in self._by_hash.values() if e.name == name), None)

    def principal(self, principal_id: str) -> Principal | None:
        """The principal `principal_id` as its tokens bind it now: the union of the scopes of
        its tokens and the attributes of its most recent one (the file keeps tokens in the
        order they were added); None when it holds no token (revoked). A resumed run acts as
        its requester with these (charter.approvals.resume)."""
        if self._table is not None:
            entries = self._looked_up("WHERE principal = ?", (principal_id,))
        else:
            with self._lock:
                self._refresh()
                entries = [e for e in self._by_hash.values() if e.principal == principal_id]
        if not entries:
            return None
        scopes = frozenset(s for e in entries for s in e.scopes)
        return Principal(principal_id, scopes, dict(entries[-1].attributes))

    def _looked_up(self, where: str, parameters: tuple[str, ...]) -> list[TokenEntry]:
        """The table's tokens matching `where`; a row that is not a valid token is refused (fail
        closed: it authenticates no one), with a message on stderr naming it."""
        assert self._table is not None
        found = []
        for row in self._table.rows(where, parameters):
            try:
                found.append(TokenEntry.model_validate(row))
            except ValidationError as error:
                first = error.errors()[0]
                print(f"charter: {self.where}: token {row['name']!r}: {first['msg']}; it is refused", file=sys.stderr)
        return found

    def _refresh(self) -> None:
        try:
            stat = self.path.stat()
            seen: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            seen = None
        if seen != self._loaded_at:
            try:
                self._by_hash = {e.sha256: e for e in self._read().tokens}
            except UsageError as error:
                # Changed into a file that is not valid (a bad principal, say): fail closed, every
                # token is refused (401) until the file is fixed, and no request acts for anyone.
                print(f"charter: {error}; every token is refused until the file is fixed", file=sys.stderr)
                self._by_hash = {}
            self._loaded_at = seen

    def _read(self, *, revoking: bool = False) -> _TokenFile:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return _TokenFile()
        try:
            data = yaml.safe_load(text) or {}
            version = data.get("version", TOKEN_FILE_VERSION) if isinstance(data, dict) else TOKEN_FILE_VERSION
            if isinstance(version, int) and version > TOKEN_FILE_VERSION:
                raise UsageError(
                    f"{self.path}: the token file is format version {version}, newer than version "
                    f"{TOKEN_FILE_VERSION}, the newest this release of Charter reads: a later release wrote it; "
                    "use that release or a newer one (`pip install --upgrade charter`)"
                )
        except yaml.YAMLError as error:
            raise UsageError(f"{self.path}: not valid YAML: {error}") from None
        return self._validated(data, revoking=revoking)

    def _validated(self, data: object, *, revoking: bool = False) -> _TokenFile:
        """The tokens of `data` (the file's YAML, or the table's rows), checked: UsageError
        naming the token and the field otherwise."""
        try:
            loaded = _TokenFile.model_validate(data, context={_REVOKING: revoking})
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise UsageError(
                f"{self.where}: {where}: {first['msg']} (each token is name, principal, scopes, attributes, sha256; "
                f"`charter token add` writes them){self._revoke_hint(data, first['loc'])}"
            ) from None
        if revoking:
            return loaded
        # No two principals of one file look alike: a token for 'alice' in Cyrillic letters beside 'alice' is refused.
        for index, entry in enumerate(loaded.tokens):
            try:
                check_distinct(entry.principal, (e.principal for e in loaded.tokens[:index]), where="the file")
            except InvalidPrincipal as error:
                raise UsageError(
                    f"{self.where}: tokens.{index}.principal: {error}; revoke one: `charter token revoke {entry.name}`"
                ) from None
        return loaded

    @staticmethod
    def _revoke_hint(data: object, location: tuple[int | str, ...]) -> str:
        """'; revoke it: `charter token revoke NAME`' when `location` is a token's principal, else ''."""
        if len(location) != 3 or location[0] != "tokens" or location[2] != "principal" or not isinstance(data, dict):
            return ""
        try:
            name = data["tokens"][location[1]]["name"]
        except (KeyError, IndexError, TypeError):
            return ""
        return f"; revoke it: `charter token revoke {name}`" if isinstance(name, str) and name else ""

    def _write(self, data: _TokenFile) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "# Charter API tokens: each token's sha256, never the token. Managed by `charter token`.\n"
        # A token without attributes is written as release 0.2 wrote it, so that release still reads the file.
        dumped = data.model_dump()
        for entry in dumped["tokens"]:
            if not entry["attributes"]:
                del entry["attributes"]
        text += yaml.safe_dump(dumped, sort_keys=False)
        scratch = self.path.with_suffix(".tmp")
        descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(scratch, self.path)
