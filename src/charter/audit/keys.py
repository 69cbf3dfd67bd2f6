"""The Ed25519 key that signs receipts: made on first use, private half readable by its owner only.

    <CHARTER_HOME>/keys/receipts.key   private key, PKCS#8 PEM, mode 0600
    <CHARTER_HOME>/keys/receipts.pub   public key, raw 32 bytes as hex: what an auditor needs

The key id (first 16 hex digits of sha256 over the raw public key) is in every receipt.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from charter.errors import UsageError

__all__ = ["PublicKey", "SigningKey", "key_id_of", "load_or_create_signing_key", "read_public_key"]

_PRIVATE_NAME = "receipts.key"
_PUBLIC_NAME = "receipts.pub"


def key_id_of(raw_public: bytes) -> str:
    return hashlib.sha256(raw_public).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class PublicKey:
    raw: bytes
    key_id: str
    _key: Ed25519PublicKey

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


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_or_create_signing_key(folder: Path) -> SigningKey:
    private_path = folder / _PRIVATE_NAME
    if not private_path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # Created 0600 from the start (O_EXCL), so the key is never readable by others,
        # and two processes starting at once cannot both create one.
        try:
            fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_or_create_signing_key(folder)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        (folder / _PUBLIC_NAME).write_text(_raw_public(key).hex() + "\n", encoding="ascii")
    mode = private_path.stat().st_mode & 0o777
    if mode & 0o077:
        raise UsageError(
            f"{private_path} is readable by others (mode {mode:o}); run `chmod 600 {private_path}` "
            "or remove it to make a new key (receipts signed with it stay verifiable with its .pub)"
        )
    try:
        loaded = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
    except ValueError as error:
        raise UsageError(f"{private_path} is not a PEM private key: {error}") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise UsageError(f"{private_path} holds a {type(loaded).__name__}, not an Ed25519 key")
    public_file = folder / _PUBLIC_NAME
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
