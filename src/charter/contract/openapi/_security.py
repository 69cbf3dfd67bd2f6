"""An OpenAPI document's security requirements as contract scopes (for `contract.openapi`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from charter.contract.checker import is_scope
from charter.contract.openapi._schema import Schemas, Unmappable, mapping

__all__ = ["Security"]


@dataclass
class Security:
    """Drafts each operation's `scopes` (or `public: true`), noting every choice for the author."""

    spec: dict[str, Any]
    contract: str
    schemas: Schemas
    notes: list[str]
    open_reads: list[str] = field(default_factory=list)  # reads the document leaves unauthenticated

    def apply(self, where: str, name: str, op: dict[str, Any], kind: str, operation: dict[str, Any]) -> None:
        """Scopes from the operation's security requirement (or the document's).

        A requirement names schemes; OAuth2 and OpenID Connect schemes list scopes, which become
        the operation's scopes. A scheme without scopes (an API key, HTTP basic or bearer)
        says only "authenticated", drafted as `<contract>:read` or `<contract>:write`. Of
        several alternatives, the first that lists scopes is drafted, since a contract requires
        all the scopes it lists. An operation the document leaves unauthenticated has no scopes;
        a write like that is drafted `public: true`, for the author to confirm.
        """
        requirements = op.get("security", self.spec.get("security"))
        alternatives = [r for r in requirements if isinstance(r, dict)] if isinstance(requirements, list) else []
        if not alternatives or any(not r for r in alternatives):
            operation["scopes"] = []
            why = "allows anonymous calls" if alternatives else "requires no authentication"
            if kind == "write":
                operation["public"] = True
                self.notes.append(
                    f"{where}: the document {why} for this write, so it is drafted `public: true` (anyone may call "
                    "it); if a caller needs a permission, replace that with `scopes: [...]`"
                )
            else:
                self.open_reads.append(name)
            return
        schemes = mapping(mapping(self.spec.get("components")).get("securitySchemes"))
        chosen = next((r for r in alternatives if any(r.values())), alternatives[0])
        scopes: list[str] = []
        for scheme_name, listed in chosen.items():
            try:
                scheme, _ = self.schemas.deref(schemes.get(scheme_name), "security scheme")
            except Unmappable:
                scheme = {}
            scheme_type = scheme.get("type", "unknown") if isinstance(scheme, dict) and scheme else None
            if scheme_type is None:
                self.notes.append(f"{where}: security scheme '{scheme_name}' is not declared in the document")
            if isinstance(listed, list) and listed:
                for scope in listed:
                    scopes.append(self.scope(where, str(scope)))
            else:
                fallback = f"{self.contract}:{kind}"
                scopes.append(fallback)
                self.notes.append(
                    f"{where}: the document requires '{scheme_name}' ({scheme_type or 'undeclared'}), which names no "
                    f"scopes; drafted as the scope {fallback}"
                )
        if len(alternatives) > 1:
            shown = " | ".join(
                " + ".join(f"{s}({', '.join(map(str, v or []))})" if v else s for s, v in r.items())
                for r in alternatives
            )
            self.notes.append(
                f"{where}: the document accepts any one of {shown}; drafted from the first that lists scopes, "
                "since a contract requires every scope it lists"
            )
        operation["scopes"] = list(dict.fromkeys(scopes))
        if kind == "write" and all(re.search(r"(^|[:._-])read([:._-]|$)", s) for s in scopes):
            self.notes.append(
                f"{where}: this write needs only the scopes {', '.join(operation['scopes'])} in the document, "
                "which read like read access: check that they are what a caller must hold to make it"
            )

    def scope(self, where: str, scope: str) -> str:
        """A document scope as a contract scope. One without a namespace ('read', not 'pets.read'
        or 'read:pets') is put under the contract's name ('trains:read'): Charter's tokens serve
        every contract, and a bare 'write' would grant it to all of them."""
        text = re.sub(r"[^a-z0-9_.*:-]+", "_", scope.lower())
        parts = [p.strip("_") or "x" for p in text.split(":") if p] or ["scope"]
        parts[0] = re.sub(r"[^a-z0-9_.-]", "_", parts[0])
        if len(parts) == 1 and "." not in parts[0]:  # 'orders.read' and 'read:orders' are namespaced already
            parts.insert(0, self.contract)
        elif not parts[0][:1].isalpha():
            parts[0] = f"s{parts[0]}"
        written = ":".join(parts)
        if not is_scope(written):
            written = f"{self.contract}:scope"
        if written != scope:
            self.notes.append(f"{where}: the document's scope '{scope}' is drafted as '{written}'")
        return written
