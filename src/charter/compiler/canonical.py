"""Canonical bytes and content hash of a contract.

The canonical form is the validated model dumped to JSON with every default filled in, so
writing a default out or leaving it implicit hashes the same, and comments or layout do
not count. Map order is kept as the author wrote it: it is the order in which operations
and fields reach the prompt and the stubs, so it is part of what the model reads.
"""

from __future__ import annotations

import hashlib

import msgspec

from charter.contract.model import Contract

__all__ = ["canonical_json", "content_hash"]


def canonical_json(model: Contract) -> bytes:
    return msgspec.json.encode(model.model_dump(mode="json", by_alias=True))


def content_hash(canonical: bytes) -> str:
    return hashlib.sha256(canonical).hexdigest()
