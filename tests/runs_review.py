"""A server with the API and the review app over a log of real runs, for the runs API and
the Runs and Overview page tests (tests/test_runs_api.py, test_ui_runs.py, test_ui_overview.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from charter.agent._model import ModelRequest
from charter.audit import AuditLog
from charter.principal import Principal
from charter.sandbox import Sandbox
from charter.server import IdempotencyStore, create_app, serving
from charter.server._service import CharterService
from charter.ui import SessionStore, mount_ui
from tests.charter_service import charter_service

XSS_INTENT = '<script>alert(1)</script>"><img src=x onerror=alert(1)> javascript:alert(1)'
WRITE = frozenset({"orders:read", "orders:write"})


def scripted(request: ModelRequest) -> str:
    """The Runtime Agent's model: cancels the order the intent names."""
    asked = request.messages[0].text
    number = int(asked.split("Cancel order ")[1].split()[0].strip(".\"'"))
    return f'```python\no = orders.cancel_order(id={number}, reason="asked")\nconclude(o.status)\n```'


@dataclass
class Review:
    url: str
    log: AuditLog
    service: CharterService
    tokens: dict[str, str]  # name -> bearer token
    runs: dict[str, str] = field(default_factory=dict)  # label -> run id

    def api(self, who: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.tokens[who]}"}, timeout=60)

    @contextmanager
    def browser(self, who: str) -> Iterator[httpx.Client]:
        """A client signed in to the review app with `who`'s token, as a person would (the sign-in form)."""
        with httpx.Client(base_url=self.url, timeout=60, headers={"Origin": self.url}) as client:
            signed = client.post("/ui/sign-in", data={"token": self.tokens[who]})
            assert signed.status_code == 303, signed.text
            assert client.cookies.get("charter_session", path="/ui"), signed.headers
            yield client

    def run(self, label: str, program: str, who: str = "ada", scopes: frozenset[str] = WRITE, **more: str) -> str:
        execution = self.service.runner.execute(
            program, contract=self.service.contract("orders"), principal=Principal(who, scopes), **more
        )
        self.runs[label] = execution.run_id
        return execution.run_id


@pytest.fixture
def review(charter_home: Path, shared_sandbox: Sandbox) -> Iterator[Review]:
    """Runs of ada (done, refused by a hard boundary, an intent, one whose intent text is an XSS
    payload), of bob (refused for a missing scope); tokens ada, bob, auditor (audit:read), all with `ui`."""
    from examples.orders import backend

    backend.seed()
    log, service, store = charter_service(charter_home, shared_sandbox, "orders", scripted)
    tokens = {
        "ada": store.add("ada", "ada", ["orders:read", "orders:write", "ui"]),
        "bob": store.add("bob", "bob", ["orders:read", "ui"]),
        "auditor": store.add("auditor", "auditor", ["audit:read", "ui"]),
    }
    app = create_app(service, store, IdempotencyStore(charter_home / "idempotency.db"))
    mount_ui(app, service, SessionStore(charter_home / "ui-sessions.db"), secure=False)
    with serving(app, name="charter-review") as url:
        review = Review(url, log, service, tokens)
        review.run("done", 'conclude("fine")')
        review.run("boundary", 'orders.cancel_order(id=123, reason="asked")\nconclude("cancelled")')
        review.run(
            "bob_scope", 'orders.cancel_order(id=101, reason="asked")\nconclude("x")', "bob", frozenset({"orders:read"})
        )
        conclusion = service.operate(Principal("ada", WRITE), "orders", "Cancel order 102.")
        review.runs["intent"] = conclusion.run_id
        review.run("xss", 'conclude("x")', intent=XSS_INTENT)
        yield review
