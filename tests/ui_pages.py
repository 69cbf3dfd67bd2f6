"""The review app served as `charter serve` serves it, for HTTP-level page tests: the HTTP API
(`create_app`) with the pages mounted (`mount_ui`) on a real uvicorn server on loopback, and
httpx clients signed in with a `ui`-scoped token."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from charter.server import CharterService, IdempotencyStore, TokenStore, create_app, serving
from charter.ui import COOKIE, SessionStore, mount_ui

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@contextmanager
def review_app(home: Path, service: CharterService, tokens: TokenStore) -> Iterator[str]:
    """Serve the API and the review app on loopback; yields the base URL."""
    app = create_app(service, tokens, IdempotencyStore(home / "idempotency.db"))
    mount_ui(app, service, SessionStore(home / "ui-sessions.db"), secure=False)
    with serving(app, name="review-app") as url:
        yield url


@contextmanager
def signed_in(url: str, token: str) -> Iterator[httpx.Client]:
    """A client holding a session cookie, signed in with `token` (which holds the `ui` scope)."""
    with httpx.Client(base_url=url, timeout=60) as client:
        response = client.post("/ui/sign-in", data={"token": token})
        assert response.status_code == 303, response.text
        assert client.cookies.get(COOKIE), "no session cookie after sign-in"
        yield client


def csrf_of(page: str) -> str:
    """The CSRF token of the first form on `page`."""
    found = _CSRF.search(page)
    assert found is not None, "no form with a csrf input on the page"
    return found.group(1)
