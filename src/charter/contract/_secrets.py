"""Checks of `secret: true` params (a password, a token), for the contract checker.

A secret param is text: `str`, or `list[str]` (several tokens), optional or not; receipts
hold a keyed digest of each such value (charter.gate._secrets), which is defined for text.
It cannot be the operation's `key` (the key names the entity in messages, sequence
tracking and receipts) nor travel in an HTTP endpoint's path or query string (URLs land
in access logs and proxies' logs): a secret goes in a request body. Nor may a quota's `sum`
or `per` key or a lookup's `args` read it: a quota's key and amount and a lookup's arguments
are recorded in the Decision as they are (`quota q1 ["..."]`), so its value would be too.
Guards and approval conditions may: they give only a bool.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from charter.contract._lookups import params_named
from charter.contract._yaml import Path as DocPath
from charter.contract.model import Operation
from charter.contract.types import TypeRef

__all__ = ["SECRET_TYPES", "check_secret_params", "check_secret_uses", "secret_params"]

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


def check_secret_uses(name: str, op: Operation, fail: Callable[[DocPath, str], None]) -> None:
    """Report each quota `sum`/`per` and lookup arg of operation `name` that reads a secret
    param (`params.<secret>`, or `params` whole): what they compute is recorded in plain text."""
    secret = secret_params(op)
    if not secret:
        return
    # (where, the CEL source, what it is, what the Decision records of it, the fix)
    uses: list[tuple[DocPath, str, str, str, str]] = []
    for index, quota in enumerate(op.quotas):
        path: DocPath = ("operations", name, "quotas", index)
        if quota.sum is not None:
            uses.append(
                ((*path, "sum"), quota.sum, f"quota '{quota.id}': sum", "a quota's amounts", "sum a param that is not")
            )
        for kindex, key in enumerate(quota.per):
            uses.append(
                (
                    (*path, "per", kindex),
                    key,
                    f"quota '{quota.id}': per key",
                    "a quota's keys",
                    "key the quota by a param that is not",
                )
            )
    for lname, lookup in op.lookups.items():
        for arg, source in lookup.args.items():
            where: DocPath = ("operations", name, "lookups", lname, "args", arg)
            uses.append(
                (
                    where,
                    source,
                    f"lookup '{lname}' of '{name}', arg '{arg}':",
                    "a lookup's arguments",
                    "pass a param that is not",
                )
            )
    for where, source, what, recorded, fix in uses:
        read = [p for p in secret if p in params_named(source, op.params)]
        if read:
            fail(
                where,
                f"{what} `{source}` reads secret param '{name}.{read[0]}', but {recorded} are recorded in plain text "
                f"in each Decision, so its value would be in the audit log; {fix} secret",
            )
