"""Checks of the contract's `approvals:` block (issue 16: human approvals).

    approvals: {scope: payments:approve, expires: 24h}

A call whose approval rule holds (`requires_approval`) pauses its run until a principal
holding `scope` decides (never the requesting principal). `scope` defaults to
`<contract>:approve`; `expires` is `<n>m`, `<n>h` or `<n>d` (default 24h, at most 30d):
after it the request can only be denied.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from charter.contract._quotas import duration_seconds
from charter.principal import is_scope

if TYPE_CHECKING:
    from charter.contract.checker import _Checker

__all__ = ["DEFAULT_EXPIRES", "MAX_EXPIRY_DAYS", "check_approvals", "default_scope", "parse_expiry"]

DEFAULT_EXPIRES = "24h"
MAX_EXPIRY_DAYS = 30
_FORMS = "<n>m, <n>h or <n>d (e.g. 30m, 24h, 7d)"


def default_scope(contract: str) -> str:
    """The approver scope of a contract whose `approvals:` names none."""
    return f"{contract}:approve"


def parse_expiry(text: str) -> int:
    """How long a request waits, in seconds. ValueError naming the accepted forms and the limit."""
    seconds = duration_seconds(text)
    if seconds is None:
        raise ValueError(f"approvals.expires '{text}' is not one of {_FORMS}")
    if seconds > MAX_EXPIRY_DAYS * 86400:
        raise ValueError(
            f"approvals.expires '{text}' is longer than {MAX_EXPIRY_DAYS} days, the longest a request may wait"
        )
    return seconds


def check_approvals(checker: _Checker) -> None:
    """A bad scope or duration is an error at its place; an operation that requires approval
    in a contract without the block is a warning (the default scope and expiry apply)."""
    model = checker.model
    block = model.approvals
    if block is None:
        flagged = [name for name, op in model.operations.items() if op.requires_approval]
        if flagged:
            checker.warn(
                ("operations", flagged[0], "requires_approval"),
                f"'{flagged[0]}' requires approval but the contract has no `approvals:` block, so its calls pause "
                f"for a principal holding the default scope {default_scope(model.contract)} and expire after "
                f"{DEFAULT_EXPIRES}; declare them: `approvals: {{scope: {default_scope(model.contract)}, "
                f"expires: {DEFAULT_EXPIRES}}}`",
            )
        return
    if block.scope is not None and not is_scope(block.scope):
        checker.fail(
            ("approvals", "scope"),
            f"approvals.scope '{block.scope}' must look like 'payments:approve' (lowercase, colon-separated)",
        )
    elif block.scope is not None and "*" in block.scope:
        checker.fail(
            ("approvals", "scope"),
            f"approvals.scope '{block.scope}' is a pattern; name the one scope an approver holds, "
            "e.g. 'payments:approve'",
        )
    try:
        parse_expiry(block.expires)
    except ValueError as error:
        checker.fail(("approvals", "expires"), str(error))
