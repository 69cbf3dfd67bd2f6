"""The review app's frame: who is looking (`Viewer`), how pages are rendered and guarded, and
sign-in and sign-out. The pages themselves are in one module each (`_runs`, `_run`,
`_approvals`, `_contracts`, `_overview`); each has `add_routes(router, ui)`.

Every page is rendered on the server from the same `CharterService` the HTTP API answers
from. Every response under /ui carries (`_headers.UiHeaders`) a Content-Security-Policy that
allows nothing but this origin's own files (no inline script or style), `Cache-Control:
no-store`, and no Referer to other sites; every value is escaped by Jinja2's autoescaping.

Every form POST is checked twice against cross-site requests: the browser's `Sec-Fetch-Site`
and `Origin` headers, when it sends them, must say this origin (this alone guards the sign-in
form, which has no session yet: login CSRF), and a signed-in form's `csrf` field must be its
session's token.
Errors under /ui (unknown page, wrong method, bad form or query) are HTML pages, never the
API's problem+json; a form body over MAX_FORM_BYTES is refused (413) before it is read.
"""

from __future__ import annotations

import hmac
import inspect
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from charter.principal import Principal
from charter.server._admission import RunSlots
from charter.server._service import AUDIT_SCOPE, CharterService
from charter.server._tokens import TokenEntry, TokenStore, token_digest
from charter.ui._headers import UI_HEADERS, UiHeaders
from charter.ui._sessions import Session, SessionStore

__all__ = [
    "COOKIE",
    "MAX_FORM_BYTES",
    "UI_SCOPE",
    "SignedIn",
    "UiContext",
    "UiError",
    "Viewer",
    "mount_ui",
    "query_values",
]

UI_SCOPE = "ui"  # a token must hold it to sign in to the review app
COOKIE = "charter_session"
MAX_FORM_BYTES = 64 * 1024  # a review-app form holds a reason and a few ids; the API's 1 MiB is for programs
_MAX_FORM_FIELDS = 64
_HERE = Path(__file__).parent


class UiError(Exception):
    """A page that cannot be shown: rendered as error.html with `status`."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


class SignInRequired(Exception):
    """No live session: a page request is sent to the sign-in page."""


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in principal, with the scopes its token holds now."""

    principal: Principal
    session: Session
    token_name: str

    @property
    def csrf(self) -> str:
        return self.session.csrf

    @property
    def auditor(self) -> bool:
        """May see every principal's runs (audit:read); others see their own."""
        return self.principal.has(AUDIT_SCOPE)


@dataclass
class UiContext:
    """What every page needs: the service, the stores, the run slots and the templates."""

    service: CharterService
    sessions: SessionStore
    tokens: TokenStore
    slots: RunSlots
    secure: bool  # cookies are Secure (the server is not bound to loopback)
    templates: jinja2.Environment

    def render(
        self, request: Request, template: str, viewer: Viewer | None, *, status: int = 200, **values: Any
    ) -> HTMLResponse:
        """`template` (under templates/) rendered with `values`, the viewer and its CSRF token."""
        page = self.templates.get_template(template).render(
            viewer=viewer, csrf=viewer.csrf if viewer else "", path=request.url.path, **values
        )
        return HTMLResponse(page, status_code=status)

    def viewer(self, request: Request) -> Viewer:
        """The request's signed-in viewer. Raises SignInRequired without a live session, or
        when the session's token was revoked or no longer holds the `ui` scope (the session ends)."""
        session_id = request.cookies.get(COOKIE)
        session = self.sessions.get(session_id) if session_id else None
        if session is None:
            raise SignInRequired
        entry = self.tokens.by_digest(session.token_sha256)
        if entry is None or UI_SCOPE not in entry.scopes:
            self.sessions.end(session.id)
            raise SignInRequired
        return Viewer(_principal(entry), session, entry.name)

    def viewer_or_none(self, request: Request) -> Viewer | None:
        """The signed-in viewer, or None: an error page shows the navigation to a signed-in viewer."""
        try:
            return self.viewer(request)
        except SignInRequired:
            return None

    async def form(self, request: Request, viewer: Viewer | None) -> dict[str, str]:
        """A POSTed urlencoded form from this origin, its CSRF token checked against the viewer's
        session (`viewer` None: the sign-in form, checked by origin only). Raises UiError 403 for
        another origin or a missing or wrong CSRF token, 413 for a body over MAX_FORM_BYTES, 415
        for another content type, 400 for a malformed form (not UTF-8, too many fields)."""
        _check_origin(request)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            raise UiError(415, "Not a form", "send the page's form (application/x-www-form-urlencoded)")
        body = bytearray()
        async for chunk in request.stream():  # counted as it arrives: a chunked body has no length to check first
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise UiError(413, "Form too large", f"a form is at most {MAX_FORM_BYTES // 1024} KiB")
        try:
            raw = body.decode("utf-8")
            pairs = urllib.parse.parse_qsl(
                raw, keep_blank_values=True, strict_parsing=bool(raw), max_num_fields=_MAX_FORM_FIELDS
            )
        except ValueError as error:  # UnicodeDecodeError is a ValueError
            raise UiError(400, "Malformed form", f"the form could not be read ({_first_line(error)})") from None
        fields = dict(pairs)
        if len(fields) != len(pairs):
            raise UiError(400, "Malformed form", "a field is sent twice; send the page's form as it is")
        if viewer is not None and not _same(fields.get("csrf", ""), viewer.csrf):
            raise UiError(403, "Form expired", "the form's CSRF token does not match your session; reload the page")
        return fields


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


def _cross_site() -> UiError:
    return UiError(
        403, "Cross-site form refused", "this form was sent from another site; open the review app and send it there"
    )


def _check_origin(request: Request) -> None:
    """Refuse (UiError 403) a POST from another origin: `Sec-Fetch-Site` other than
    same-origin (a page on another port of this host is `same-site`, and refused), or an
    `Origin` other than this server's. Browsers send Origin with every POST (Fetch standard);
    a client that sends neither header (curl, a test) is not a browser a cross-site page can
    drive. `Origin: null` (a sandboxed frame, a file: page, a page with no-referrer) is refused.

    The Origin's host and port are compared with the Host the request was sent to, not its
    scheme: behind a reverse proxy that ends TLS and keeps the Host header, the browser's
    `https://review.example` reaches this server as plain http for the same host."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site not in (None, "same-origin", "none"):
        raise _cross_site()
    origin = request.headers.get("origin")
    if origin is None:
        return
    sent = urllib.parse.urlsplit(origin).netloc  # "" for `null`
    host = request.headers.get("host", "")
    if not sent or not hmac.compare_digest(sent.lower().encode(), host.lower().encode()):
        raise _cross_site()


def _signed_in(request: Request) -> Viewer:
    ui: UiContext = request.app.state.ui
    return ui.viewer(request)


# A page's viewer parameter: `def page(request: Request, viewer: SignedIn)`. Without a live
# session a GET is redirected to the sign-in page and anything else answered 401.
SignedIn = Annotated[Viewer, Depends(_signed_in)]


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _principal(entry: TokenEntry) -> Principal:
    return Principal(entry.principal, frozenset(entry.scopes), dict(entry.attributes))


def templates() -> jinja2.Environment:
    """The Jinja2 environment of the review app: autoescaped, undefined names are errors."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def mount_ui(app: FastAPI, service: CharterService, sessions: SessionStore, *, secure: bool) -> UiContext:
    """Add the review app under /ui to `app` (made by `charter.server.create_app`, whose
    `state.tokens` and `state.slots` it uses). `secure`: mark cookies Secure (say False only
    when the server is bound to loopback, where browsers do not send Secure cookies over http)."""
    from charter.ui import _approvals, _contracts, _overview, _run, _runs

    ui = UiContext(service, sessions, app.state.tokens, app.state.slots, secure, templates())
    app.state.ui = ui
    router = APIRouter(prefix="/ui", include_in_schema=False)

    @router.get("", response_model=None)
    @router.get("/", response_model=None)
    def home() -> Response:
        return RedirectResponse("/ui/runs", status_code=303)

    @router.get("/sign-in", response_model=None)
    def sign_in_page(request: Request, code: str = "") -> Response:
        return ui.render(request, "sign_in.html", None, code=code, problem="")

    @router.post("/sign-in", response_model=None)
    async def sign_in(request: Request) -> Response:
        fields = await ui.form(request, None)
        entry: TokenEntry | None = None
        if fields.get("code"):
            redeemed = sessions.redeem_link(fields["code"])
            entry = None if redeemed is None else ui.tokens.by_digest(redeemed[0])
            problem = "This sign-in link is unknown, used or expired: ask for a new one (`charter ui link`)."
        else:
            entry = ui.tokens.by_digest(token_digest(fields.get("token", "")))
            problem = "This token is not known: tokens come from `charter token add`."
        if entry is not None and UI_SCOPE not in entry.scopes:
            problem = f"The token {entry.name!r} does not hold the `{UI_SCOPE}` scope."
            entry = None
        if entry is None:
            return ui.render(request, "sign_in.html", None, status=401, code="", problem=problem)
        session = sessions.start(entry.sha256, entry.principal, replacing=request.cookies.get(COOKIE))
        response = RedirectResponse("/ui/", status_code=303)
        response.set_cookie(COOKIE, session.id, httponly=True, samesite="strict", secure=secure, path="/ui")
        return response

    @router.post("/sign-out", response_model=None)
    async def sign_out(request: Request, viewer: SignedIn) -> Response:
        await ui.form(request, viewer)
        sessions.end(viewer.session.id)
        response = RedirectResponse("/ui/sign-in", status_code=303)
        response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict", secure=secure)
        return response

    for page in (_overview, _runs, _run, _approvals, _contracts):
        page.add_routes(router, ui)
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=_HERE / "static"), name="ui-static")

    @app.exception_handler(SignInRequired)
    async def _sign_in(request: Request, _: SignInRequired) -> Response:
        if request.headers.get("hx-request"):  # htmx would swap the sign-in page into a fragment
            return Response(status_code=401, headers={"HX-Redirect": "/ui/sign-in"})
        if request.method == "GET":
            return RedirectResponse("/ui/sign-in", status_code=303)
        return ui.render(request, "error.html", None, status=401, title="Signed out", message="Sign in again.")

    @app.exception_handler(UiError)
    async def _ui_error(request: Request, error: UiError) -> Response:
        return ui.render(
            request,
            "error.html",
            ui.viewer_or_none(request),
            status=error.status,
            title=error.title,
            message=error.message,
        )

    _html_errors_under_ui(app, ui)
    app.add_middleware(_FormLimit, ui=ui)
    app.add_middleware(UiHeaders)  # outermost: its headers are on every /ui response, refusals included
    return ui


def _under_ui(path: str) -> bool:
    return path == "/ui" or path.startswith("/ui/")


_HTTP_TITLES = {404: "Page not found", 405: "Method not allowed"}
_HTTP_MESSAGES = {
    404: "There is no page at this address: start from the runs list.",
    405: "This address does not answer that method: use the page's links and forms.",
}


async def _answer(
    handler: Callable[[Request, Any], Response | Awaitable[Response]], request: Request, error: Exception
) -> Response:
    answer = handler(request, error)
    return await answer if inspect.isawaitable(answer) else answer


def _html_errors_under_ui(app: FastAPI, ui: UiContext) -> None:
    """Errors raised by routing and parameter parsing under /ui are HTML pages; elsewhere the
    handlers `create_app` installed (problem+json) answer as before."""
    Page = Callable[[Request, Exception], Awaitable[Response]]

    def html_under_ui(kind: type[Exception], page: Page) -> None:
        """Answer `kind` with `page` under /ui, and with the API's handler (if any) elsewhere."""
        api_handler = app.exception_handlers.get(kind)

        async def handler(request: Request, error: Exception) -> Response:
            if _under_ui(request.url.path):
                return await page(request, error)
            if api_handler is None:
                raise error  # no API handler to answer for: Starlette's own
            return await _answer(api_handler, request, error)

        app.add_exception_handler(kind, handler)

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, StarletteHTTPException)
        code = error.status_code
        title = _HTTP_TITLES.get(code, "Request refused")
        message = _HTTP_MESSAGES.get(code, str(error.detail))
        response = ui.render(
            request, "error.html", ui.viewer_or_none(request), status=code, title=title, message=message
        )
        if error.headers:  # 405 keeps its Allow header (RFC 9110 15.5.6)
            response.headers.update(error.headers)
        return response

    async def invalid(request: Request, error: Exception) -> Response:
        assert isinstance(error, RequestValidationError)
        found = error.errors()
        named = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {str(e['msg'])[:200]}" for e in found[:3]
        )
        return ui.render(
            request, "error.html", ui.viewer_or_none(request), status=400, title="Bad request", message=named
        )

    api_failed = app.exception_handlers.get(Exception)

    async def failed(request: Request, error: Exception) -> Response:
        # Starlette's outermost error middleware calls this, outside UiHeaders: the headers are
        # set here. The page names no detail (it may hold anything the server held); the
        # API's handler, when there is one, logs it.
        if api_failed is not None:
            await _answer(api_failed, request, error)  # logs it
        message = f"the server failed ({type(error).__name__}); its log has the detail"
        response = ui.render(request, "error.html", None, status=500, title="Server error", message=message)
        response.headers.update({k.decode(): v.decode() for k, v in UI_HEADERS})
        return response

    html_under_ui(StarletteHTTPException, http_error)
    html_under_ui(RequestValidationError, invalid)
    html_under_ui(Exception, failed)


class _FormLimit:
    """Refuse a /ui request whose declared body is over MAX_FORM_BYTES with an HTML 413 page,
    before any of it is read (and before the API's 1 MiB guard would answer in problem+json).
    A body without a declared length is counted by `UiContext.form` as it is read."""

    def __init__(self, app: ASGIApp, ui: UiContext) -> None:
        self.app = app
        self.ui = ui

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _under_ui(scope.get("path", "")):
            declared = dict(scope.get("headers", [])).get(b"content-length", b"0")
            if declared.isdigit() and int(declared) > MAX_FORM_BYTES:  # a malformed one: uvicorn refuses it
                request = Request(scope)
                message = f"a form is at most {MAX_FORM_BYTES // 1024} KiB"
                response = self.ui.render(
                    request, "error.html", None, status=413, title="Form too large", message=message
                )
                response.headers["connection"] = "close"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def query_values(request: Request, names: Mapping[str, int]) -> dict[str, str]:
    """The query parameters in `names` (name -> max length), each trimmed; a longer value
    raises UiError 400 naming the parameter."""
    found = {}
    for name, limit in names.items():
        value = request.query_params.get(name, "").strip()
        if len(value) > limit:
            raise UiError(400, "Filter too long", f"{name} is longer than {limit} characters")
        if value:
            found[name] = value
    return found
