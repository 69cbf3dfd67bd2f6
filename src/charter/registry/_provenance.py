"""How `from:` rules changed between two versions of an operation (for `diff`).

A new source, a removed `from:`, or exact -> token widens what a param accepts: relaxation.
The reverse narrows it: breaking (a program valid before can be denied now).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from charter.contract.model import Operation, Param, Source

__all__ = ["provenance_changes"]

Add = Callable[[Literal["breaking", "relaxation", "additive"], str, str], None]


def _sources(param: object) -> dict[str, str] | None:
    """source (written without `[]`) -> match mode, or None without `from:`."""
    if not isinstance(param, Param) or param.from_ is None:
        return None
    found: dict[str, str] = {}
    for item in param.from_:
        text, match = (item, "exact") if not isinstance(item, Source) else (item.source, item.match)
        key = text.replace("[]", "")
        if found.get(key) != "token":  # a source listed twice counts with its wider match
            found[key] = match
    return found


def provenance_changes(add: Add, where: str, old: Operation, new: Operation) -> None:
    for name in new.params:
        if name not in old.params:
            continue
        at = f"{where}.params.{name}.from"
        before, after = _sources(old.params[name]), _sources(new.params[name])
        if before == after:
            continue
        if before is None:
            add("breaking", at, f"param '{name}' now must come from {', '.join(after or {})}")
            continue
        if after is None:
            add("relaxation", at, f"param '{name}' no longer has a `from:` rule")
            continue
        for source, match in before.items():
            if source not in after:
                add("breaking", at, f"source '{source}' of '{name}' removed")
            elif match != after[source]:
                widened = after[source] == "token"
                add(
                    "relaxation" if widened else "breaking",
                    at,
                    f"source '{source}' of '{name}' now matches {after[source]} (was {match})",
                )
        for source in after:
            if source not in before:
                add("relaxation", at, f"source '{source}' of '{name}' added")
