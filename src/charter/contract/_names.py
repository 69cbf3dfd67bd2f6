"""Name rules shared by the checker's parts."""

from __future__ import annotations

import re

__all__ = ["SNAKE"]

# Contract names, operation names and rule ids (guards, quotas, lookups, attributes): lower snake_case.
SNAKE = re.compile(r"[a-z][a-z0-9_]*\Z")
