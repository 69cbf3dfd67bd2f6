"""The request body, guarded before anything else reads it: plain ASGI middleware.

Every request's body is counted as it streams in, whatever its framing (Content-Length or
`Transfer-Encoding: chunked`) and whatever its route, before authentication and before any
parsing. A declared Content-Length above the limit is refused without reading a byte; a body
that passes the limit while streaming is refused at that moment (413, `Connection: close`), so
the server never holds more than the limit of one body. A JSON route's body must then be
exactly what the route can use: `Content-Type: application/json`, UTF-8 without a byte order
mark, one JSON document with no duplicate keys, no NaN/Infinity, no number beyond 64 bits or
outside the float range, no lone surrogate or NUL in any string, nesting within a small depth.
Only such a body reaches FastAPI, which parses it again (cheap: at most the limit) and
validates it against the route's model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any, NoReturn

__all__ = ["MAX_BODY_BYTES", "MAX_JSON_DEPTH", "BodyGuard", "BodyRefused", "check_json"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# (kind, detail, path) -> an ASGI response: the API's problem+json
Refuse = Callable[[str, str, str], ASGIApp]

# A request body, on every route of `charter serve` and `charter mcp --http`: a program is at most
# 256 KiB, so 1 MiB leaves room for its inputs while bounding what each request holds.
MAX_BODY_BYTES = 1_048_576
MAX_JSON_DEPTH = 32  # the API's bodies are flat objects; a deeper body is never a valid request
_MAX_INT = 2**63 - 1
_MAX_INT_DIGITS = 20
_SHOWN = 40  # characters of a refused token quoted back


class BodyRefused(Exception):
    """The body is not one a JSON route accepts; `kind` is the problem type."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind, self.detail = kind, detail


def _refuse_json(detail: str) -> NoReturn:
    raise BodyRefused("invalid-json", detail)


def _quoted(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                _refuse_json(f"duplicate key {_quoted(key)}: send each key once")
            seen.add(key)
    return result


def _no_constant(token: str) -> NoReturn:
    _refuse_json(f"{token} is not a JSON number; send finite numbers only")


def _bounded_int(text: str) -> int:
    # Counted before int(): a 5,000-digit integer must not reach Python's conversion limit.
    if len(text.lstrip("-")) > _MAX_INT_DIGITS or not -_MAX_INT - 1 <= int(text) <= _MAX_INT:
        _refuse_json(f"the integer {_quoted(text)} ({len(text)} characters) does not fit in 64 bits")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        _refuse_json(f"the number {_quoted(text)} is beyond the range of a double")
    return value


def _check_strings_and_depth(value: Any) -> None:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                _refuse_json("a string holds NUL (\\u0000); no field of this API accepts it")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as error:
                _refuse_json(f"a string holds a lone surrogate (\\u{ord(item[error.start]):04x}), which is not Unicode")
        elif isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                _refuse_json(f"the body is nested deeper than {MAX_JSON_DEPTH} levels")
            children = [*item, *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def check_json(content_type: str | None, body: bytes) -> None:
    """Refuse a JSON route's body unless it is exactly acceptable.

    Raises BodyRefused: kind `unsupported-media-type` (415) naming the Content-Type header, or
    `invalid-json` (400) naming what is wrong and, for a syntax error, its line and column.
    """
    media, _, parameters = (content_type or "").partition(";")
    charset = next(
        (
            v.strip().strip('"').lower()
            for k, _, v in (p.partition("=") for p in parameters.split(";"))
            if k.strip().lower() == "charset"
        ),
        "utf-8",
    )
    if media.strip().lower() != "application/json" or charset not in ("utf-8", "utf8"):
        sent = f"it was sent as {content_type!r}" if content_type else "it was sent without one"
        raise BodyRefused(
            "unsupported-media-type",
            f"send the body as JSON with the header Content-Type: application/json ({sent})",
        )
    if not body:
        _refuse_json("the body is empty: send a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        before = body[: error.start]
        line, column = before.count(b"\n") + 1, len(before) - (before.rfind(b"\n") + 1) + 1
        _refuse_json(f"the body is not UTF-8: byte 0x{body[error.start]:02x} at line {line}, column {column}")
    if text.startswith("\ufeff"):
        _refuse_json("the body starts with a byte order mark (U+FEFF); send UTF-8 JSON without one")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
            parse_int=_bounded_int,
            parse_float=_finite_float,
        )
    except json.JSONDecodeError as error:
        _refuse_json(f"invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}")
    except RecursionError:  # the C scanner's own guard, long before the interpreter's stack
        _refuse_json(f"the body is nested deeper than {MAX_JSON_DEPTH} levels")
    _check_strings_and_depth(value)


class BodyGuard:
    """ASGI middleware: the body limit for every route, then strict JSON for `json_routes`.

    `json_routes` holds (METHOD, path regex) pairs whose body is JSON (a route's Starlette
    `path_regex`, so `/v1/approvals/{approval_id}/approve` is one); `refuse` builds the
    problem response for a kind (`payload-too-large`, `unsupported-media-type`, `invalid-json`).
    """

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, json_routes: Collection[tuple[str, re.Pattern[str]]], refuse: Refuse
    ):
        self.app, self.max_bytes, self.json_routes, self.refuse = app, max_bytes, tuple(json_routes), refuse

    def _is_json(self, method: str, path: str) -> bool:
        return any(method == m and pattern.match(path) for m, pattern in self.json_routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        too_large = f"send at most {self.max_bytes} bytes"
        declared = headers.get("content-length")
        if declared is not None and (
            not (declared.isascii() and declared.isdigit()) or len(declared) > 12 or int(declared) > self.max_bytes
        ):
            await self._close_with("payload-too-large", f"{too_large} (Content-Length: {declared[:20]})", scope, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client is gone; nothing to answer
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:  # stop reading: the rest is never asked for
                await self._close_with(
                    "payload-too-large", f"{too_large}; this body passed that while streaming", scope, send
                )
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if self._is_json(scope["method"], path):
            try:
                check_json(headers.get("content-type"), body)
            except BodyRefused as refused:
                await self.refuse(refused.kind, refused.detail, path)(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)

    async def _close_with(self, kind: str, detail: str, scope: Scope, send: Send) -> None:
        """Answer and close the connection, so the unread rest of the body is never read."""

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        async def nothing() -> Message:
            return {"type": "http.disconnect"}

        await self.refuse(kind, detail, scope.get("path", ""))(scope, nothing, closing)
