"""The lookups a gate decision saw, as text: `charter audit show` and `audit replay` print them."""

from __future__ import annotations

from charter.audit.receipts import Decision

__all__ = ["lookup_lines"]

_SHOWN = 120  # characters of a recorded lookup result shown on one line


def lookup_lines(decision: Decision) -> list[str]:
    """One line per lookup performed for the call, e.g.
    `lookup payees = list_payees({"account":"acc-1"}) sha256 1a2b3c4d5e6f…: [{"iban":...}]`."""
    lines = []
    for seen in decision.lookups:
        head = f"lookup {seen.name} = {seen.operation}({seen.arguments})"
        if seen.fingerprint:
            head += f" sha256 {seen.fingerprint[:12]}…"
        if seen.error is not None:
            lines.append(f"{head} FAILED: {seen.error}")
        elif seen.result is None:
            lines.append(f"{head} (result above 4096 bytes: fingerprint only)")
        else:
            shown = seen.result if len(seen.result) <= _SHOWN else seen.result[: _SHOWN - 1] + "…"
            lines.append(f"{head}: {shown}")
    return lines
