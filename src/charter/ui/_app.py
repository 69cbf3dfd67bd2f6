"""The review app's frame: who is looking (`Viewer`), how pages are rendered and guarded, and
sign-in and sign-out. The pages themselves are in one module each (`_runs`, `_run`,
`_approvals`, `_contracts`, `_overview`); each has `add_routes(router, ui)`.

Every page is rendered on the server from the same `CharterService` the HTTP API answers
from. Every response under /ui carries (`_headers.UiHeaders`) a Content-Security-Policy that
allows nothing but this origin's own files (no inline script or style), `Cache-Control:
no-store`, and no Referer; every value is escaped by Jinja2's autoescaping.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from charter.principal import Principal
from charter.server._admission import RunSlots
from charter.server._service import AUDIT_SCOPE, CharterService
from charter.server._tokens import TokenEntry, TokenStore, token_digest
from charter.ui._headers import UiHeaders
from charter.ui._sessions import Session, SessionStore

__all__ = ["COOKIE", "UI_SCOPE", "SignedIn", "UiContext", "UiError", "Viewer", "mount_ui", "query_values"]

UI_SCOPE = "ui"  # a token must hold it to sign in to the review app
COOKIE = "charter_session"
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

    async def form(self, request: Request, viewer: Viewer | None) -> dict[str, str]:
        """A POSTed urlencoded form, its CSRF token checked against the viewer's session.
        Raises UiError 400 for a malformed form, 403 for a missing or wrong CSRF token."""
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            raise UiError(415, "Not a form", "send the page's form (application/x-www-form-urlencoded)")
        raw = (await request.body()).decode("utf-8", errors="strict")
        try:
            pairs = urllib.parse.parse_qsl(raw, keep_blank_values=True, max_num_fields=_MAX_FORM_FIELDS)
        except ValueError as error:
            raise UiError(400, "Malformed form", str(error)) from None
        fields = dict(pairs)
        if viewer is not None and not _same(fields.get("csrf", ""), viewer.csrf):
            raise UiError(403, "Form expired", "the form's CSRF token does not match your session; reload the page")
        return fields


def _signed_in(request: Request) -> Viewer:
    ui: UiContext = request.app.state.ui
    return ui.viewer(request)


# A page's viewer parameter: `def page(request: Request, viewer: SignedIn)`. Without a live
# session a GET is redirected to the sign-in page and anything else answered 401.
SignedIn = Annotated[Viewer, Depends(_signed_in)]


def _same(a: str, b: str) -> bool:
    import hmac

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
        if request.method == "GET":
            return RedirectResponse("/ui/sign-in", status_code=303)
        return ui.render(request, "error.html", None, status=401, title="Signed out", message="Sign in again.")

    @app.exception_handler(UiError)
    async def _ui_error(request: Request, error: UiError) -> Response:
        return ui.render(request, "error.html", None, status=error.status, title=error.title, message=error.message)

    app.add_middleware(UiHeaders)
    return ui


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
