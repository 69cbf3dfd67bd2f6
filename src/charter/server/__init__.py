"""Charter for remote callers: the HTTP API (`charter serve`) and the MCP server (`charter mcp`).

Both are faces of one `CharterService`, so they offer and allow the same things; who a
caller is comes from a bearer token (`TokenStore`) or, over stdio, from the operator who
started the process.
"""

from charter.server._api import PROBLEM_TYPES, create_app
from charter.server._background import serving
from charter.server._idempotency import IdempotencyStore
from charter.server._service import AUDIT_SCOPE, CharterService, Forbidden, IntentsUnavailable
from charter.server._tokens import TokenEntry, TokenStore

__all__ = [
    "AUDIT_SCOPE",
    "PROBLEM_TYPES",
    "CharterService",
    "Forbidden",
    "IdempotencyStore",
    "IntentsUnavailable",
    "TokenEntry",
    "TokenStore",
    "create_app",
    "serving",
]
