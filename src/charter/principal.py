"""Who a run acts for: the identity and scopes the gate checks, and programs can read."""

from __future__ import annotations

import msgspec

__all__ = ["Principal"]


class Principal(msgspec.Struct, frozen=True):
    id: str
    scopes: frozenset[str] = frozenset()

    def has(self, scope: str) -> bool:
        return scope in self.scopes
