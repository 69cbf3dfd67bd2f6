"""The Ed25519 key that signs receipts: made on first use, private half readable by its owner only.

    <CHARTER_HOME>/keys/receipts.key   private key, PKCS#8 PEM, mode 0600
    <CHARTER_HOME>/keys/receipts.pub   public key, raw 32 bytes as hex: what an auditor needs

A worker of a deployment may sign with a key of its own: CHARTER_SIGNING_KEY=NAME (or
`charter serve --key NAME`) picks keys/NAME.key and NAME.pub instead; `charter keys new NAME`
makes one and lists it in the keyring (charter.audit._keyring), which verification trusts.

The key id (first 16 hex digits of sha256 over the raw public key) is in every receipt.

    <CHARTER_HOME>/keys/secrets.key    32 random bytes, mode 0600: the HMAC key for secret values

A param declared `secret: true` (a password, a token) is never written to the log: receipts
hold HMAC-SHA256 under this key instead (RFC 2104). A plain hash would not do: a short
password is found from its sha256 by trying candidates, which the key prevents for anyone
who has the log but not the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from charter.errors import UsageError

__all__ = [
    "SIGNING_KEY_ENV",
    "PublicKey",
    "SecretKey",
    "SigningKey",
    "key_id_of",
    "load_or_create_secret_key",
    "load_or_create_signing_key",
    "read_public_key",
    "signing_key_name",
]

SIGNING_KEY_ENV = "CHARTER_SIGNING_KEY"
DEFAULT_KEY_NAME = "receipts"
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SECRET_NAME = "secrets.key"
_SECRET_BYTES = 32


def key_id_of(raw_public: bytes) -> str:
    return hashlib.sha256(raw_public).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class PublicKey:
    raw: bytes
    key_id: str
    _key: Ed25519PublicKey
    name: str = ""  # as the keyring (or the .pub file's name) calls it
    not_after: datetime | None = None  # revoked after this time (charter.audit._keyring)

    @classmethod
    def from_raw(cls, raw: bytes) -> PublicKey:
        if len(raw) != 32:
            raise UsageError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
        return cls(raw=raw, key_id=key_id_of(raw), _key=Ed25519PublicKey.from_public_bytes(raw))

    def verifies(self, signature: bytes, message: bytes) -> bool:
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True, slots=True)
class SigningKey:
    public: PublicKey
    _key: Ed25519PrivateKey

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


@dataclass(frozen=True, slots=True)
class SecretKey:
    """The HMAC key for secret values. `digest` is what a receipt holds in place of a secret."""

    _key: bytes = field(repr=False)

    @property
    def key_id(self) -> str:
        """First 16 hex digits of sha256 over sha256 of the key: names it without revealing it."""
        return hashlib.sha256(hashlib.sha256(self._key).digest()).hexdigest()[:16]

    def digest(self, value: str) -> str:
        """'hmac-sha256:<key id>:<64 hex>' of the UTF-8 bytes of `value`, exactly as given."""
        mac = hmac.new(self._key, value.encode("utf-8"), hashlib.sha256).hexdigest()
        return f"hmac-sha256:{self.key_id}:{mac}"


def _create_private_file(path: Path, content: bytes) -> bool:
    """Write `content` to a new file of mode 0600, durably; False if it exists already.

    Created 0600 from the start (O_EXCL), so it is never readable by others. It is written
    whole under a temporary name and then linked into place (link fails if the name exists),
    so two threads or processes starting at once cannot both create one, and neither ever
    reads the other's file half-written."""
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(draft, path)
        except FileExistsError:
            return False
        return True
    finally:
        draft.unlink(missing_ok=True)


def _refuse_if_shared(path: Path, remedy: str) -> None:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise UsageError(f"{path} is readable by others (mode {mode:o}); run `chmod 600 {path}` {remedy}")


def load_or_create_secret_key(folder: Path) -> SecretKey:
    """The deployment's HMAC key for secret values, made on first use.

    Raises UsageError if the file is readable by others or is not 32 bytes. Losing it makes
    recorded secret digests uncomparable, never readable."""
    path = folder / _SECRET_NAME
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        _create_private_file(path, secrets.token_bytes(_SECRET_BYTES))
    _refuse_if_shared(path, "(or remove it: secret digests recorded with it can then no longer be compared)")
    raw = path.read_bytes()
    if len(raw) != _SECRET_BYTES:
        raise UsageError(f"{path} holds {len(raw)} bytes, not a {_SECRET_BYTES}-byte HMAC key")
    return SecretKey(raw)


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def signing_key_name(name: str | None = None) -> str:
    """The signing key's name: `name`, else $CHARTER_SIGNING_KEY, else "receipts".

    Raises UsageError for a name that is not a plain file name (letters, digits, _ . -)."""
    chosen = name if name is not None else os.environ.get(SIGNING_KEY_ENV) or DEFAULT_KEY_NAME
    if not _KEY_NAME.fullmatch(chosen) or chosen.endswith((".key", ".pub")):
        origin = "the key name" if name is not None else SIGNING_KEY_ENV
        raise UsageError(
            f"{origin} {chosen!r} is not a key name: give 1-64 letters, digits, '_', '.' or '-' "
            "without .key/.pub (e.g. worker-1); the key is then keys/NAME.key"
        )
    return chosen


def load_or_create_signing_key(folder: Path, name: str | None = None) -> SigningKey:
    """The private key `folder/NAME.key` (NAME: signing_key_name(name)), made on first use
    with its `NAME.pub` beside it. Raises UsageError if it is readable by others or not an
    Ed25519 PEM key."""
    key_name = signing_key_name(name)
    private_path = folder / f"{key_name}.key"
    public_file = folder / f"{key_name}.pub"
    if not private_path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        if not _create_private_file(private_path, pem):
            return load_or_create_signing_key(folder, key_name)
        public_file.write_text(_raw_public(key).hex() + "\n", encoding="ascii")
    _refuse_if_shared(
        private_path, "or remove it to make a new key (receipts signed with it stay verifiable with its .pub)"
    )
    try:
        loaded = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
    except ValueError as error:
        raise UsageError(f"{private_path} is not a PEM private key: {error}") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise UsageError(f"{private_path} holds a {type(loaded).__name__}, not an Ed25519 key")
    if not public_file.exists():
        public_file.write_text(_raw_public(loaded).hex() + "\n", encoding="ascii")
    return SigningKey(public=PublicKey.from_raw(_raw_public(loaded)), _key=loaded)


def read_public_key(path: Path) -> PublicKey:
    """A public key file as written next to the private key: 64 hex digits."""
    try:
        text = path.read_text(encoding="ascii").strip()
        return PublicKey.from_raw(bytes.fromhex(text))
    except FileNotFoundError:
        raise UsageError(f"no public key file at {path}") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise UsageError(f"{path} is not an Ed25519 public key as 64 hex digits: {error}") from None
