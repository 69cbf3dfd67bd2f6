"""The keyring: the deployment's public keys that verification trusts, kept outside the log.

    <CHARTER_HOME>/keys/keyring.yaml     (or --keyring PATH / $CHARTER_KEYRING)

    version: 1
    keys:
      - key_id: 3f2a9c0d5b7e1a44          # first 16 hex of sha256 over the raw public key
        public_key: 9d1c...               # 64 hex digits: the raw Ed25519 public key
        name: worker-1
        added: '2026-11-30T04:00:00+00:00'
        not_after: null                   # or an ISO time: the key is revoked after it
        note: ''

A key that signed receipts stays listed after it is rotated out (it still verifies them); a
key that must no longer be believed gets a `not_after`: receipts it signed after that time
are reported. Without a keyring file the `*.pub` files in keys/ are the keyring, as before
keyrings existed, so older logs verify unchanged. The copies of public keys inside the log
are never trusted: whoever can write the log could replace them.

`charter keys` edits the file; every edit rewrites it whole (a temporary file renamed into
place) under an exclusive lock, so two edits at once do not lose one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from charter.audit.keys import (
    DEFAULT_KEY_NAME,
    SIGNING_KEY_ENV,
    PublicKey,
    SigningKey,
    key_id_of,
    load_or_create_signing_key,
    read_public_key,
    signing_key_name,
)
from charter.errors import AuditError, ContractError, UsageError

__all__ = [
    "KEYRING_ENV",
    "KEYRING_NAME",
    "KeyEntry",
    "Keyring",
    "key_problem",
    "keyring_path",
    "parse_time",
    "signing_key_for",
    "trusted_keys",
]

KEYRING_ENV = "CHARTER_KEYRING"
KEYRING_NAME = "keyring.yaml"
KEYRING_VERSION = 1
_FIELDS = "each key is key_id, public_key (64 hex), name, added (ISO time), not_after (ISO time or null), note"


class KeyEntry(BaseModel):
    """One trusted public key of the keyring."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_id: str
    public_key: str
    name: str
    added: AwareDatetime
    not_after: AwareDatetime | None = None
    note: str = ""

    @field_validator("public_key")
    @classmethod
    def _hex(cls, value: str) -> str:
        text = value.strip().lower()
        if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
            raise ValueError("must be the raw Ed25519 public key as 64 hex digits (as in keys/NAME.pub)")
        return text

    @field_validator("name")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty: name the key's holder (e.g. worker-1)")
        return value

    @model_validator(mode="after")
    def _id_matches(self) -> KeyEntry:
        expected = key_id_of(bytes.fromhex(self.public_key))
        if self.key_id != expected:
            raise ValueError(f"key_id {self.key_id!r} is not the id of public_key, which is {expected!r}")
        return self

    def public(self) -> PublicKey:
        key = PublicKey.from_raw(bytes.fromhex(self.public_key))
        return dataclasses.replace(key, name=self.name, not_after=self.not_after)


class _KeyringFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    keys: list[KeyEntry] = []

    @model_validator(mode="after")
    def _distinct(self) -> _KeyringFile:
        seen_ids: set[str] = set()
        seen_names: set[str] = set()
        for entry in self.keys:
            if entry.key_id in seen_ids:
                raise ValueError(f"key {entry.key_id} is listed twice: keep one entry")
            if entry.name in seen_names:
                raise ValueError(f"the name {entry.name!r} is given to two keys: names must be distinct")
            seen_ids.add(entry.key_id)
            seen_names.add(entry.name)
        return self


def keyring_path(keys_dir: Path, keyring: Path | str | None = None) -> Path:
    """The keyring file: `keyring`, else $CHARTER_KEYRING, else keys/keyring.yaml."""
    if keyring is not None:
        return Path(keyring)
    from_env = os.environ.get(KEYRING_ENV)
    return Path(from_env) if from_env else keys_dir / KEYRING_NAME


@dataclass(slots=True)
class Keyring:
    """A keyring file as loaded (`entries` in file order); `exists` False: no file yet."""

    path: Path
    entries: list[KeyEntry]
    exists: bool = True

    @classmethod
    def load(cls, path: Path) -> Keyring:
        """Read and check the file strictly. Raises UsageError naming the file, line, field and
        the fix; a missing file is an empty keyring with `exists` False."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path, [], exists=False)
        except UnicodeDecodeError as error:
            raise UsageError(f"{path}: not UTF-8 text ({error}); a keyring is YAML written by `charter keys`") from None
        from charter.contract._yaml import load_yaml

        if not text.strip():
            raise UsageError(f"{path}: the keyring is empty; it needs `version: 1` and `keys:` ({_FIELDS})")
        try:
            data, source = load_yaml(text, str(path))
        except ContractError as error:
            raise UsageError(f"{error} (a keyring is YAML written by `charter keys`)") from None
        if isinstance(data, dict) and isinstance(data.get("version"), int) and data["version"] > KEYRING_VERSION:
            raise UsageError(
                f"{path}: the keyring is format version {data['version']}, newer than version {KEYRING_VERSION}, "
                "the newest this release of Charter reads: use the release that wrote it or a newer one"
            )
        try:
            loaded = _KeyringFile.model_validate(data)
        except ValidationError as error:
            first = error.errors()[0]
            location: tuple[str | int, ...] = tuple(first["loc"])
            position = source.locate(location, key=first["type"] == "extra_forbidden")
            where = ".".join(str(p) for p in location) or "the file"
            message = first["msg"].removeprefix("Value error, ")
            raise UsageError(
                f"{path}:{position.line}: {where}: {message} ({_FIELDS}; `charter keys` writes them)"
            ) from None
        return cls(path, list(loaded.keys))

    def public_keys(self) -> dict[str, PublicKey]:
        return {entry.key_id: entry.public() for entry in self.entries}

    def find(self, wanted: str) -> KeyEntry:
        """The entry whose key_id, unique key_id prefix or name is `wanted`. UsageError otherwise."""
        exact = [e for e in self.entries if wanted in (e.key_id, e.name)]
        found = exact or [e for e in self.entries if wanted and e.key_id.startswith(wanted)]
        if len(found) == 1:
            return found[0]
        if not found:
            raise UsageError(f"no key {wanted!r} in the keyring {self.path}; `charter keys list` shows its keys")
        raise UsageError(f"{wanted!r} matches {len(found)} keys in {self.path}; give more of the key id")

    def with_entry(self, entry: KeyEntry) -> Keyring:
        """This keyring with `entry` added, or replacing the entry of its key_id. UsageError if
        another key has its name."""
        if any(e.name == entry.name and e.key_id != entry.key_id for e in self.entries):
            raise UsageError(f"the keyring {self.path} already has a key named {entry.name!r}; choose another name")
        if any(e.key_id == entry.key_id for e in self.entries):
            entries = [entry if e.key_id == entry.key_id else e for e in self.entries]
        else:
            entries = [*self.entries, entry]
        return Keyring(self.path, entries, exists=self.exists)

    def save(self) -> None:
        """Write the keyring whole: a temporary file fsync'd, then renamed over the old one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        dumped: dict[str, Any] = {
            "version": KEYRING_VERSION,
            "keys": [
                {
                    "key_id": e.key_id,
                    "public_key": e.public_key,
                    "name": e.name,
                    "added": _iso(e.added),
                    "not_after": _iso(e.not_after) if e.not_after is not None else None,
                    "note": e.note,
                }
                for e in self.entries
            ],
        }
        text = (
            "# Charter keyring: the public keys receipts and checkpoints are verified with. "
            "Managed by `charter keys`.\n" + yaml.safe_dump(dumped, sort_keys=False)
        )
        scratch = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}")
        descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(scratch, self.path)
        finally:
            scratch.unlink(missing_ok=True)


@contextlib.contextmanager
def editing(path: Path) -> Iterator[None]:
    """Hold the keyring's edit lock (a `.lock` file beside it) across read, change and save."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def entry_for(key: PublicKey, name: str, note: str = "", *, added: datetime | None = None) -> KeyEntry:
    return KeyEntry(key_id=key.key_id, public_key=key.raw.hex(), name=name, added=added or datetime.now(UTC), note=note)


def seeded(keyring: Keyring, keys_dir: Path) -> tuple[Keyring, list[KeyEntry]]:
    """The local keyring (keys/keyring.yaml) about to be written for the first time, with every
    keys/*.pub listed (named after its file), so the receipts they signed keep verifying once
    the keyring is the trust. An operator's keyring elsewhere lists only what they add."""
    if keyring.exists or keyring.path != keys_dir / KEYRING_NAME:
        return keyring, []
    added = []
    for path in sorted(keys_dir.glob("*.pub")):
        key = read_public_key(path)
        if key.key_id in {e.key_id for e in keyring.entries}:
            continue
        entry = entry_for(key, path.stem, f"from {path.name}, listed when the keyring was made")
        keyring = keyring.with_entry(entry)
        added.append(entry)
    return keyring, added


def trusted_keys(keys_dir: Path, keyring: Path | str | None = None) -> dict[str, PublicKey]:
    """The keys verification trusts: the keyring's (with their name and not_after), or with no
    keyring file the `*.pub` files in `keys_dir`. Raises UsageError for a malformed keyring,
    AuditError when there is no key at all."""
    path = keyring_path(keys_dir, keyring)
    loaded = Keyring.load(path)
    if loaded.exists:
        if not loaded.entries:
            raise AuditError(f"the keyring {path} lists no key to verify with; `charter keys add` adds one")
        return loaded.public_keys()
    if keyring is not None or os.environ.get(KEYRING_ENV):
        raise UsageError(f"no keyring file at {path}; `charter keys new NAME` or `charter keys add` makes it")
    keys = {}
    for pub in sorted(keys_dir.glob("*.pub")):
        key = read_public_key(pub)
        keys[key.key_id] = dataclasses.replace(key, name=pub.stem)
    if not keys:
        raise AuditError(f"no public key in {keys_dir} to verify with; pass the signer's key with --public-key")
    return keys


def parse_time(text: str) -> datetime | None:
    """An ISO-8601 time as a UTC-aware datetime (no offset: UTC); None if it is not one."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def key_problem(keys: Mapping[str, PublicKey], key_id: str, at: str) -> str | None:
    """Why something signed by `key_id` at time `at` (ISO) is not to be trusted, or None.

    The verify hook for receipts and checkpoints: an unknown key, or a key used after its
    not_after (revoked). A key rotated out but still listed (no not_after) is trusted."""
    key = keys.get(key_id)
    if key is None:
        return f"signed by unknown key {key_id}, which is not among the trusted keys (`charter keys list`)"
    if key.not_after is None:
        return None
    when = parse_time(at)
    named = f"key {key_id} ({key.name})" if key.name else f"key {key_id}"
    if when is None:
        return f"its time {at!r} is not an ISO-8601 time, so it cannot be told whether {named} was revoked then"
    if when > key.not_after:
        return f"signed by {named} after it was revoked (not after {_iso(key.not_after)})"
    return None


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat()


def signing_key_for(
    keys_dir: Path, keyring: Path | str | None = None, name: str | None = None, *, create: bool = False
) -> SigningKey:
    """The key this process signs with (keys/NAME.key, charter.audit.keys), checked against the
    keyring when there is a keyring file: a key made just now is listed in it if it is the
    local default file (keys/keyring.yaml); otherwise an unlisted or revoked key is refused
    (UsageError naming `charter keys`), so no receipt is signed that verification would reject.

    Only the default key (`receipts`) is made on first use, or a named one with `create`
    (`charter serve --workers` making worker-i): a name that merely names no key file (a typo in
    CHARTER_SIGNING_KEY) is refused, never made and trusted on the spot."""
    key_name = signing_key_name(name)
    made = not (keys_dir / f"{key_name}.key").exists()
    if made and not create and key_name != DEFAULT_KEY_NAME:
        raise UsageError(
            f"there is no signing key {keys_dir / key_name}.key ({SIGNING_KEY_ENV}={key_name}): make it with "
            f"`charter keys new {key_name}` (which lists it in the keyring), or pick an existing key "
            "(`charter keys list`)"
        )
    key = load_or_create_signing_key(keys_dir, key_name)
    path = keyring_path(keys_dir, keyring)
    if not path.exists():
        return key
    with editing(path):
        ring = Keyring.load(path)
        listed = next((e for e in ring.entries if e.key_id == key.key_id), None)
        if listed is None and made and path == keys_dir / KEYRING_NAME:
            ring.with_entry(entry_for(key.public, key_name, "made on first use")).save()
            return key
    if listed is None:
        raise UsageError(
            f"the signing key keys/{key_name}.key (id {key.key_id}) is not in the keyring {path}, so its receipts "
            f"would not verify: add it with `charter keys add {keys_dir / key_name}.pub --name {key_name}`, "
            f"or make a listed one with `charter keys new NAME` and pick it with {SIGNING_KEY_ENV}=NAME"
        )
    if listed.not_after is not None and listed.not_after <= datetime.now(UTC):
        raise UsageError(
            f"the signing key keys/{key_name}.key ({listed.name}, id {key.key_id}) was revoked "
            f"(not after {_iso(listed.not_after)}) in the keyring {path}: sign with another key "
            f"(`charter keys new NAME`, then {SIGNING_KEY_ENV}=NAME)"
        )
    return key
