"""Canonical bytes and content hash of a contract.

The canonical form is the validated model dumped to JSON with every default filled in, so
writing a default out or leaving it implicit hashes the same, and comments or layout do
not count. Map order is kept as the author wrote it: it is the order in which operations
and fields reach the prompt and the stubs, so it is part of what the model reads.
"""

from __future__ import annotations

import hashlib

import msgspec

from charter.contract._approvals import default_scope
from charter.contract.model import Contract

__all__ = ["canonical_json", "content_hash"]

_LATER_RULE_KINDS = ("approval", "scope", "quota", "provenance")
# Contract language v2 (release 0.3): each construct counts only when used, so every contract
# written before it keeps its hash.
_V2_OPERATION_KEYS = ("lookups", "quotas")


def canonical_json(model: Contract) -> bytes:
    data = model.model_dump(mode="json", by_alias=True)
    # A binding is one of python/http: its canonical form names only the chosen one, so the
    # hashes of contracts written before `http` existed did not change when it was added.
    for holder in (data, *data["operations"].values()):
        if holder.get("binding") is not None:
            holder["binding"] = {kind: v for kind, v in holder["binding"].items() if v is not None}
    # The rule kinds added later (approval, scope) appear only when used, so the hashes of
    # contracts written before them did not change.
    for boundary in data["boundaries"]:
        for rule in boundary["enforced_by"]:
            for kind in _LATER_RULE_KINDS:
                if rule.get(kind, "") is None:
                    del rule[kind]
    # Likewise `public` counts only when set, so the hashes of contracts written before it existed hold;
    # `to_decide` is the author's to-do list, never published (publish refuses it non-empty).
    for operation in data["operations"].values():
        if not operation.get("public"):
            operation.pop("public", None)
        for key in _V2_OPERATION_KEYS:
            if not operation.get(key):
                operation.pop(key, None)
        operation["params"] = {name: _param(written) for name, written in operation["params"].items()}
    if not data["principal"]["attributes"]:
        del data["principal"]
    # `approvals` (issue 16) counts only when written, its default scope filled in.
    if data["approvals"] is None:
        del data["approvals"]
    elif data["approvals"]["scope"] is None:
        data["approvals"]["scope"] = default_scope(model.contract)
    data.pop("to_decide", None)
    return msgspec.json.encode(data)


def _param(written: str | dict[str, object]) -> str | dict[str, object]:
    """A param as its type alone when that is all it says; else its mapping with only what is set."""
    if isinstance(written, str):
        return written
    kept = {k: v for k, v in written.items() if v not in (None, False, "")}
    return written["type"] if set(kept) == {"type"} else kept  # type: ignore[return-value]


def content_hash(canonical: bytes) -> str:
    return hashlib.sha256(canonical).hexdigest()
