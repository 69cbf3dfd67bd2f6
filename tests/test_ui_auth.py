"""The review app's sign-in, sessions and request guards, over HTTP against a real loopback server.

Each test attempts the forbidden thing (a used link, an expired or revoked session, a forged
CSRF token, a cross-site sign-in, an oversize form) and checks the exact outcome, and that
nothing changed. Time is the session store's injected clock, never a sleep.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi import FastAPI

from charter.audit import AuditLog
from charter.registry import Registry
from charter.server import CharterService, IdempotencyStore, TokenStore, create_app, serving
from charter.ui import ABSOLUTE_SECONDS, COOKIE, IDLE_SECONDS, LINK_SECONDS, SessionStore, mount_ui
from charter.ui._app import MAX_FORM_BYTES, SignedIn
from charter.ui._headers import CONTENT_SECURITY_POLICY

PAGE = "/ui/runs"  # any page behind sign-in


@dataclass
class Clock:
    now: float = field(default_factory=time.time)  # moved on by hand, never by sleeping

    def __call__(self) -> float:
        return self.now


@dataclass
class Served:
    url: str
    home: Path
    tokens: TokenStore
    sessions: SessionStore
    clock: Clock

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, follow_redirects=False, **kwargs)  # type: ignore[arg-type]


@contextmanager
def served(home: Path, *, secure: bool = False, probes: bool = False) -> Iterator[Served]:
    clock = Clock()
    service = CharterService.create(
        registry=Registry(home / "charter.db"), audit=AuditLog(home / "audit.db"), agent=None
    )
    tokens = TokenStore(home / "tokens.yaml")
    app = create_app(service, tokens, IdempotencyStore(home / "idempotency.db"))
    sessions = SessionStore(home / "ui-sessions.db", clock=clock)
    mount_ui(app, service, sessions, secure=secure)
    if probes:  # routes as a page module could write them, to reach the frame's error handling
        add_probes(app)
    try:
        with serving(app, name="ui-test") as url:
            yield Served(url, home, tokens, sessions, clock)
    finally:
        sessions.close()


@pytest.fixture
def server(charter_home: Path) -> Iterator[Served]:
    with served(charter_home) as running:
        yield running


def add_probes(app: FastAPI) -> None:
    @app.get("/ui/probe/number")
    def number(viewer: SignedIn, n: int) -> dict[str, int]:
        return {"n": n}

    @app.get("/ui/probe/fail")
    def fail(viewer: SignedIn) -> None:
        raise RuntimeError("password=hunter2 in a backend's error")


def sign_in(client: httpx.Client, token: str) -> httpx.Response:
    return client.post("/ui/sign-in", data={"token": token})


def signed_in(server: Served, scopes: tuple[str, ...] = ("ui",), name: str = "ana") -> tuple[httpx.Client, str]:
    """A client signed in as a new token `name` (principal `name`); and the token."""
    token = server.tokens.add(name, name, list(scopes))
    client = server.client()
    answer = sign_in(client, token)
    assert answer.status_code == 303, answer.text
    return client, token


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, "the page has no csrf input"
    return found.group(1)


def is_sign_in_redirect(response: httpx.Response) -> bool:
    return response.status_code == 303 and response.headers["location"] == "/ui/sign-in"


# -- sign-in with a token ------------------------------------------------------------------------


def test_a_ui_token_signs_in_with_a_strict_httponly_cookie_scoped_to_ui(server: Served) -> None:
    client, _ = signed_in(server)
    cookie = client.cookies.jar
    (only,) = list(cookie)
    assert only.name == COOKIE
    assert only.path == "/ui"
    assert not only.secure  # loopback: browsers send no Secure cookie over http
    page = client.get(PAGE)
    assert page.status_code == 200
    assert ">ana</span>" in page.text
    with server.client() as anonymous:
        assert is_sign_in_redirect(anonymous.get(PAGE))


def test_the_cookie_flags_as_sent(server: Served) -> None:
    token = server.tokens.add("ana", "ana", ["ui"])
    with server.client() as client:
        header = sign_in(client, token).headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower(): part.strip() for part in header.split(";")}
    assert "httponly" in attributes
    assert attributes["samesite"].lower() == "samesite=strict"
    assert attributes["path"] == "Path=/ui"
    assert "secure" not in attributes


def test_the_cookie_is_secure_when_the_server_is_not_on_loopback(tmp_path: Path) -> None:
    with served(tmp_path / "secure", secure=True) as server:
        token = server.tokens.add("ana", "ana", ["ui"])
        with server.client() as client:
            header = sign_in(client, token).headers["set-cookie"]
    assert "secure" in [part.strip().lower() for part in header.split(";")]


def test_a_token_without_the_ui_scope_or_an_unknown_one_does_not_sign_in(server: Served) -> None:
    api_only = server.tokens.add("bot", "bot", ["orders:read"])
    with server.client() as client:
        refused = sign_in(client, api_only)
        assert refused.status_code == 401
        assert "does not hold the `ui` scope" in refused.text
        assert "set-cookie" not in refused.headers
        unknown = sign_in(client, "chr_not-a-token")
        assert unknown.status_code == 401
        assert "This token is not known" in unknown.text
        assert is_sign_in_redirect(client.get(PAGE))
    with server.sessions._lock:
        assert server.sessions._db.execute("SELECT count(*) FROM sessions").fetchone() == (0,)


# -- one-time links ------------------------------------------------------------------------------


def link_for(server: Served, name: str, scopes: tuple[str, ...] = ("ui",)) -> str:
    token = server.tokens.add(name, name, list(scopes))
    del token
    entry = server.tokens.named(name)
    assert entry is not None
    return server.sessions.create_link(entry.sha256, entry.principal)


def test_a_link_signs_in_once(server: Served) -> None:
    code = link_for(server, "ana")
    with server.client() as first:
        # Opening the link only shows a form: a link preview or a prefetch does not use it up.
        for _ in range(2):
            shown = first.get("/ui/sign-in", params={"code": code})
            assert shown.status_code == 200
            assert f'name="code" value="{code}"' in shown.text
        used = first.post("/ui/sign-in", data={"code": code})
        assert used.status_code == 303
        assert first.get(PAGE).status_code == 200
    with server.client() as second:
        again = second.post("/ui/sign-in", data={"code": code})
        assert again.status_code == 401
        assert "unknown, used or expired" in again.text
        assert "set-cookie" not in again.headers
        assert is_sign_in_redirect(second.get(PAGE))


def test_a_link_expires(server: Served) -> None:
    code = link_for(server, "ana")
    server.clock.now += LINK_SECONDS + 1
    with server.client() as client:
        late = client.post("/ui/sign-in", data={"code": code})
        assert late.status_code == 401
        assert "unknown, used or expired" in late.text


def test_a_link_for_a_token_since_revoked_does_not_sign_in(server: Served) -> None:
    code = link_for(server, "ana")
    server.tokens.revoke("ana")
    with server.client() as client:
        assert client.post("/ui/sign-in", data={"code": code}).status_code == 401


def test_a_link_code_is_escaped_on_the_page(server: Served) -> None:
    hostile = '"><script>alert(1)</script>'
    with server.client() as client:
        page = client.get("/ui/sign-in", params={"code": hostile})
    assert page.status_code == 200
    assert "<script>alert(1)" not in page.text
    assert "&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


# -- expiry, rotation, revocation ------------------------------------------------------------------


def test_a_session_ends_after_30_idle_minutes(server: Served) -> None:
    client, _ = signed_in(server)
    with closing(client):
        for _ in range(3):  # each request restarts the idle clock: 87 minutes in all
            server.clock.now += IDLE_SECONDS - 60
            assert client.get(PAGE).status_code == 200
        server.clock.now += IDLE_SECONDS + 1
        assert is_sign_in_redirect(client.get(PAGE))
        server.clock.now += 1  # and it stays ended: the row is gone
        assert is_sign_in_redirect(client.get(PAGE))


def test_a_session_ends_12_hours_after_sign_in_however_busy(server: Served) -> None:
    client, _ = signed_in(server)
    with closing(client):
        started = server.clock.now
        while server.clock.now + IDLE_SECONDS / 2 <= started + ABSOLUTE_SECONDS:
            server.clock.now += IDLE_SECONDS / 2
            assert client.get(PAGE).status_code == 200
        server.clock.now = started + ABSOLUTE_SECONDS + 1
        assert is_sign_in_redirect(client.get(PAGE))


def test_sign_in_rotates_the_session_id(server: Served) -> None:
    token = server.tokens.add("ana", "ana", ["ui"])
    with server.client() as client:
        # A fixed id planted before sign-in (session fixation) is not the session after it.
        client.cookies.set(COOKIE, "planted-by-someone-else", domain="127.0.0.1", path="/ui")
        assert sign_in(client, token).status_code == 303
        first = client.cookies.get(COOKIE, path="/ui")
        assert first not in (None, "planted-by-someone-else")
        # Signing in again, over a live session, starts another: the old id is dead.
        assert sign_in(client, token).status_code == 303
        second = client.cookies.get(COOKIE, path="/ui")
        assert second not in (None, first)
        assert client.get(PAGE).status_code == 200
    with server.client(cookies={COOKIE: first}) as old:
        assert is_sign_in_redirect(old.get(PAGE))
    with server.client(cookies={COOKIE: "planted-by-someone-else"}) as planted:
        assert is_sign_in_redirect(planted.get(PAGE))


def test_revoking_the_token_signs_its_sessions_out(server: Served) -> None:
    client, _ = signed_in(server)
    with closing(client):
        assert client.get(PAGE).status_code == 200
        server.tokens.revoke("ana")
        assert is_sign_in_redirect(client.get(PAGE))


def test_removing_the_ui_scope_from_the_token_signs_it_out(server: Served) -> None:
    client, _ = signed_in(server, scopes=("ui", "audit:read"))
    with closing(client):
        assert client.get(PAGE).status_code == 200
        path = server.tokens.path
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        (entry,) = data["tokens"]
        entry["scopes"] = ["audit:read"]  # the same token (same sha256), without `ui`
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        assert is_sign_in_redirect(client.get(PAGE))
        entry["scopes"] = ["audit:read", "ui"]  # giving it back does not revive the ended session
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        assert is_sign_in_redirect(client.get(PAGE))


def test_an_htmx_request_without_a_session_is_sent_to_sign_in_not_swapped(server: Served) -> None:
    with server.client() as client:
        answer = client.get(PAGE, headers={"HX-Request": "true"})
    assert answer.status_code == 401
    assert answer.headers["hx-redirect"] == "/ui/sign-in"


# -- CSRF ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sent", [None, "", "forged-token"])
def test_a_form_without_the_sessions_csrf_token_is_refused_and_changes_nothing(
    server: Served, sent: str | None
) -> None:
    client, _ = signed_in(server)
    with closing(client):
        real = csrf_of(client.get(PAGE))
        assert sent != real
        refused = client.post("/ui/sign-out", data={"reason": "x"} if sent is None else {"csrf": sent})
        assert refused.status_code == 403
        assert "CSRF token does not match" in refused.text
        assert client.get(PAGE).status_code == 200  # still signed in
        assert client.post("/ui/sign-out", data={"csrf": real}).status_code == 303
        assert is_sign_in_redirect(client.get(PAGE))


def test_another_sessions_csrf_token_does_not_pass(server: Served) -> None:
    mine, _ = signed_in(server, name="ana")
    theirs, _ = signed_in(server, name="bob")
    with closing(mine), closing(theirs):
        stolen = csrf_of(theirs.get(PAGE))
        assert mine.post("/ui/sign-out", data={"csrf": stolen}).status_code == 403
        assert mine.get(PAGE).status_code == 200


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1"])
def test_a_cross_site_sign_in_is_refused(server: Served, origin: str) -> None:
    # Login CSRF: a page elsewhere posts the attacker's own token to sign the victim in as them.
    token = server.tokens.add("mallory", "mallory", ["ui"])
    with server.client() as client:
        refused = client.post("/ui/sign-in", data={"token": token}, headers={"Origin": origin})
        assert refused.status_code == 403
        assert "sent from another site" in refused.text
        assert "set-cookie" not in refused.headers
        same_site = client.post("/ui/sign-in", data={"token": token}, headers={"Origin": server.url})
        assert same_site.status_code == 303


@pytest.mark.parametrize(("fetch_site", "status"), [("cross-site", 403), ("same-site", 403), ("same-origin", 303)])
def test_the_browsers_fetch_site_decides_too(server: Served, fetch_site: str, status: int) -> None:
    # Another port of this host is same-site, not same-origin: its page may not sign anyone in.
    token = server.tokens.add("ana", "ana", ["ui"])
    with server.client() as client:
        answer = client.post("/ui/sign-in", data={"token": token}, headers={"Sec-Fetch-Site": fetch_site})
    assert answer.status_code == status


def test_the_origin_of_a_tls_proxy_for_this_host_is_this_site(server: Served) -> None:
    # A reverse proxy ends TLS and keeps the Host header: the browser's origin is https.
    token = server.tokens.add("ana", "ana", ["ui"])
    proxied = server.url.replace("http://", "https://")
    with server.client() as client:
        assert client.post("/ui/sign-in", data={"token": token}, headers={"Origin": proxied}).status_code == 303


def test_a_cross_site_form_is_refused_even_with_the_right_csrf_token(server: Served) -> None:
    client, _ = signed_in(server)
    with closing(client):
        real = csrf_of(client.get(PAGE))
        refused = client.post("/ui/sign-out", data={"csrf": real}, headers={"Origin": "http://evil.example"})
        assert refused.status_code == 403
        assert client.get(PAGE).status_code == 200


# -- headers and error pages ---------------------------------------------------------------------


def assert_guarded(response: httpx.Response) -> None:
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "same-origin"


def test_every_kind_of_ui_response_carries_the_security_headers(server: Served) -> None:
    client, _ = signed_in(server)
    with closing(client), server.client() as anonymous:
        answers = {
            "page": client.get(PAGE),
            "sign-in page": anonymous.get("/ui/sign-in"),
            "redirect": anonymous.get(PAGE),
            "static": anonymous.get("/ui/static/charter.css"),
            "htmx": anonymous.get("/ui/static/htmx.min.js"),
            "missing static": anonymous.get("/ui/static/nothing.css"),
            "unknown page": client.get("/ui/no-such-page"),
            "wrong method": client.get("/ui/sign-out"),
            "refused sign-in": anonymous.post("/ui/sign-in", data={"token": "chr_x"}),
            "forged form": client.post("/ui/sign-out", data={"csrf": "x"}),
            "oversize form": client.post("/ui/sign-out", content=b"a=" + b"x" * MAX_FORM_BYTES),
        }
    expected = {
        "page": 200,
        "sign-in page": 200,
        "redirect": 303,
        "static": 200,
        "htmx": 200,
        "missing static": 404,
        "unknown page": 404,
        "wrong method": 405,
        "refused sign-in": 401,
        "forged form": 403,
        "oversize form": 413,
    }
    assert {name: answer.status_code for name, answer in answers.items()} == expected
    for answer in answers.values():
        assert_guarded(answer)


def test_the_api_keeps_its_own_errors(server: Served) -> None:
    with server.client() as client:
        missing = client.get("/v1/no-such-thing")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert "content-security-policy" not in missing.headers


def test_an_unknown_page_or_method_under_ui_is_an_html_page(server: Served) -> None:
    client, _ = signed_in(server)
    with closing(client):
        missing = client.get("/ui/no-such-page")
        wrong = client.put("/ui/sign-out")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")
    assert "<h1>Page not found</h1>" in missing.text
    assert '<form class="who"' in missing.text  # signed in: the page keeps its navigation
    assert wrong.status_code == 405
    assert wrong.headers["content-type"].startswith("text/html")
    assert "<h1>Method not allowed</h1>" in wrong.text
    assert wrong.headers["allow"] == "POST"
    with server.client() as anonymous:
        outside = anonymous.get("/ui/no-such-page")
    assert outside.status_code == 404
    assert '<form class="who"' not in outside.text


def test_an_oversize_form_is_refused_before_it_is_read(server: Served) -> None:
    client, _ = signed_in(server)
    with closing(client):
        csrf = csrf_of(client.get(PAGE))
        declared = client.post("/ui/sign-out", data={"csrf": csrf, "pad": "x" * MAX_FORM_BYTES})
        assert declared.status_code == 413
        assert "<h1>Form too large</h1>" in declared.text

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
            yield f"csrf={csrf}&pad=".encode()
            for _ in range(MAX_FORM_BYTES // 8192 + 2):
                yield b"x" * 8192

        streamed = client.post(
            "/ui/sign-out", content=chunks(), headers={"content-type": "application/x-www-form-urlencoded"}
        )
        assert streamed.request.headers["transfer-encoding"] == "chunked"
        assert streamed.status_code == 413
        assert "<h1>Form too large</h1>" in streamed.text
        assert client.get(PAGE).status_code == 200  # nothing changed: still signed in


@pytest.mark.parametrize(
    ("body", "content_type", "status", "says"),
    [
        (b"csrf=\xff\xfe", "application/x-www-form-urlencoded", 400, "Malformed form"),
        (b"&".join(b"f%d=1" % i for i in range(100)), "application/x-www-form-urlencoded", 400, "Malformed form"),
        (b"token=a&token=b", "application/x-www-form-urlencoded", 400, "a field is sent twice"),
        (b"token", "application/x-www-form-urlencoded", 400, "Malformed form"),
        (b'{"token": "x"}', "application/json", 415, "Not a form"),
    ],
)
def test_a_malformed_form_is_a_4xx_page(server: Served, body: bytes, content_type: str, status: int, says: str) -> None:
    with server.client() as client:
        answer = client.post("/ui/sign-in", content=body, headers={"content-type": content_type})
    assert answer.status_code == status
    assert answer.headers["content-type"].startswith("text/html")
    assert says in answer.text
    assert "set-cookie" not in answer.headers


# -- the link the CLI and the demo print ---------------------------------------------------------


def test_the_demos_link_signs_in_the_reviewer_on_the_demos_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from charter.cli.demo import _review_app
    from tests.conftest import compiled

    demo = tmp_path / "demo"
    demo.mkdir()
    _review_app(demo, compiled("payments"))
    printed = capsys.readouterr().out
    assert f"CHARTER_HOME={demo} charter serve 127.0.0.1:8700" in printed
    assert "review app:   http://127.0.0.1:8700/ui/" in printed
    found = re.search(r"sign in once: http://127\.0\.0\.1:8700(/ui/sign-in\?code=\S+)", printed)
    assert found, printed
    assert printed.rstrip().endswith("(valid 60 minutes)")
    with served(demo) as server, server.client() as client:
        assert server.sessions.path == demo / "ui-sessions.db"  # the file `charter serve` opens for this home
        form = client.get(found.group(1))
        code = re.search(r'name="code" value="([^"]+)"', form.text)
        assert code
        assert client.post("/ui/sign-in", data={"code": code.group(1)}).status_code == 303
        page = client.get(PAGE)
        assert page.status_code == 200
        assert ">reviewer</span>" in page.text
        entry = server.tokens.named("demo-reviewer")
        assert entry is not None
        assert set(entry.scopes) == {"ui", "audit:read", compiled("payments").gate.policy.scope}
        again = client.post("/ui/sign-in", data={"code": code.group(1)})
        assert again.status_code == 401  # once only
        with server.sessions._lock:
            (valid,) = server.sessions._db.execute("SELECT expires - created FROM sign_in_links").fetchone()
        assert valid == pytest.approx(3600)


def test_a_bad_query_value_or_a_failure_under_ui_is_an_html_page(charter_home: Path) -> None:
    with served(charter_home, probes=True) as server:
        client, _ = signed_in(server)
        with closing(client):
            bad = client.get("/ui/probe/number", params={"n": "many"})
            failed = client.get("/ui/probe/fail")
    assert bad.status_code == 400
    assert bad.headers["content-type"].startswith("text/html")
    assert "n: Input should be a valid integer" in bad.text
    assert_guarded(bad)
    assert failed.status_code == 500
    assert failed.headers["content-type"].startswith("text/html")
    assert "the server failed (RuntimeError); its log has the detail" in failed.text
    assert "hunter2" not in failed.text
    assert_guarded(failed)
