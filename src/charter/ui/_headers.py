"""Headers on every response under /ui (pages, static files, redirects and errors alike).

- Content-Security-Policy: this origin's own files only; no inline script, no inline style,
  no eval, no framing, forms post only here (CSP Level 3, W3C).
- Cache-Control: no-store: a page shows signed records and decisions; no cache keeps one.
- Referrer-Policy: same-origin: a sign-in link's code never leaves for another site in a
  Referer header. Not no-referrer: under it browsers send `Origin: null` with a form's POST
  (Fetch standard), and the review app's forms are checked by their Origin.
- X-Content-Type-Options: nosniff; X-Frame-Options: DENY (for browsers without CSP 2).

A pure ASGI middleware: it touches only /ui responses and costs the API nothing but a prefix test.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_SECURITY_POLICY", "UI_HEADERS", "UiHeaders"]

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"
)
UI_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"same-origin"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
]
_NAMES = {name for name, _ in UI_HEADERS}


class UiHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == "/ui" or path.startswith("/ui/")):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _NAMES]
                message["headers"] = kept + UI_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)
