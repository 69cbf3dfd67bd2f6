"""Checks of `secret: true` params (a password, a token), for the contract checker.

A secret param is text: `str`, or `list[str]` (several tokens), optional or not; receipts
hold a keyed digest of each such value (charter.gate._secrets), which is defined for text.
It cannot be the operation's `key` (the key names the entity in messages, sequence
tracking and receipts) nor travel in an HTTP endpoint's path or query string (URLs land
in access logs and proxies' logs): a secret goes in a request body.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from charter.contract._yaml import Path as DocPath
from charter.contract.model import Operation
from charter.contract.types import TypeRef

__all__ = ["SECRET_TYPES", "check_secret_params", "secret_params"]

SECRET_TYPES = "str or list[str]"


def secret_params(op: Operation) -> tuple[str, ...]:
    """The operation's params declared `secret: true`, in declaration order."""
    return tuple(name for name, written in op.params.items() if not isinstance(written, str) and written.secret)


def _is_text(ref: TypeRef) -> bool:
    return ref.kind == "str" or (ref.kind == "list" and ref.item is not None and ref.item.kind == "str")


def check_secret_params(
    name: str,
    op: Operation,
    params: Mapping[str, TypeRef],
    placed: Mapping[str, str],
    fail: Callable[[DocPath, str], None],
) -> None:
    """Report each misuse of `secret: true` in operation `name` through `fail(path, message)`.

    `params` are the resolved param types; `placed` says where an HTTP endpoint sends each
    param ('path', 'query' or 'body'), empty for a Python binding."""
    for pname in secret_params(op):
        path: DocPath = ("operations", name, "params", pname, "secret")
        ref = params.get(pname)
        if ref is not None and not _is_text(ref):
            fail(
                path,
                f"param '{name}.{pname}' is secret, so it must be {SECRET_TYPES} (a password, a token), not {ref}",
            )
        if op.key == pname:
            fail(
                path,
                f"param '{name}.{pname}' is the operation's key, which messages and receipts name; a key cannot "
                "be secret",
            )
        where = placed.get(pname)
        if where in ("path", "query"):
            fail(
                path,
                f"param '{name}.{pname}' is secret but the endpoint sends it in the URL's {where}, which access "
                "logs record; send it in the body (list it under `body:` of a POST, PUT or PATCH)",
            )
