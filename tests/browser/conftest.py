"""The review app in a real browser: Debian's headless Chromium driven by Selenium through
Debian's chromedriver (the Makefile installs both), against a real `charter serve` app
(`create_app` + `mount_ui`) on loopback, over a real audit log filled by real sandbox runs.

Every test's browser fails the test on any console error it reported: a Content-Security-Policy
violation (an inline script or style, a handler attribute that escaped escaping) is one.
Screenshots go to tests/artifacts/ (ignored by git).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from charter.agent import Charter, ScriptedModel
from charter.agent._model import ModelRequest
from charter.audit import AuditLog
from charter.contract import load_contract
from charter.principal import Principal
from charter.registry import Registry
from charter.sandbox import Sandbox
from charter.server import CharterService, IdempotencyStore, TokenStore, create_app, serving
from charter.ui import SessionStore, mount_ui
from tests.conftest import ROOT
from tests.payments_approval import HOLDER_SCOPES, PAY_NEW_IBAN

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = ROOT / "tests" / "artifacts"
WIDE = (1280, 900)
PHONE = (390, 844)

os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download a browser or driver

ORDER_SCOPES = ["orders:read", "orders:write", "orders:refund"]

# Line 3 makes the call the gate denies (order 123 is dispatched: it cannot be cancelled).
DENIED_CANCEL = (
    "order = orders.get_order(id=123)\n"
    "if order.status == 'dispatched':\n"
    '    orders.cancel_order(id=123, reason="The customer changed their mind")\n'
    'conclude("cancelled")\n'
)
ALLOWED_CANCEL = (
    'order = orders.cancel_order(id=101, reason="Ordered twice")\nconclude(f"Order {order.id} is {order.status}.")\n'
)
# What a hostile program, intent or model response may carry; none of it may run in the page.
XSS_CORPUS = (
    "<script>document.title='XSS-script'</script>",
    '"><img src=x onerror="document.title=\'XSS-img\'">',
    "javascript:document.title='XSS-url'",
    "<svg onload=\"document.title='XSS-svg'\"></svg>",
)


@dataclass
class Review:
    """A review-app server on loopback and what its tests need to fill its log."""

    url: str
    home: Path
    log: AuditLog
    service: CharterService
    tokens: TokenStore
    sessions: SessionStore
    secrets: dict[str, str] = field(default_factory=dict)  # token name -> bearer token

    def link(self, token_name: str) -> str:
        """A one-time sign-in URL for the token named `token_name` (what `charter ui link` prints)."""
        entry = self.tokens.named(token_name)
        assert entry is not None, token_name
        return f"{self.url}/ui/sign-in?code={self.sessions.create_link(entry.sha256, entry.principal)}"

    def principal(self, token_name: str) -> Principal:
        entry = self.tokens.named(token_name)
        assert entry is not None, token_name
        return Principal(entry.principal, frozenset(entry.scopes), dict(entry.attributes))

    def execute(
        self, contract: str, program: str, *, token: str = "ada", intent: str | None = None, **inputs: str
    ) -> str:
        """Run `program` governed, as the token's principal; its run id."""
        execution = self.service.runner.execute(
            program,
            contract=self.service.contract(contract),
            principal=self.principal(token),
            intent=intent,
            inputs=inputs or None,
        )
        return execution.run_id

    def operate(self, contract: str, intent: str, *, token: str = "ada") -> str:
        """An intent answered by the scripted model (see `review`): its intent run's id."""
        return self.service.operate(self.principal(token), contract, intent).run_id


def _scripted(request: ModelRequest) -> str:
    """The Runtime Agent's stand-in: the denied cancel for orders, the new-IBAN payment for payments."""
    if "payments" in request.contract_block:
        return f"```python\n{PAY_NEW_IBAN}```"
    return f"```python\n{DENIED_CANCEL}```"


@pytest.fixture
def review(charter_home: Path, shared_sandbox: Sandbox) -> Iterator[Review]:
    """The review app over the orders and payments examples, with tokens:
    auditor (ui, audit:read), approver and approver2 (ui, payments:approve), holder (the payments
    account holder, ui), ada (orders scopes, ui) and api-only (orders scopes, no ui)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from examples.orders import backend as orders_backend
    from examples.payments import backend as payments_backend

    orders_backend.seed()
    payments_backend.seed()
    registry = Registry()
    for name in ("orders", "payments"):
        path = ROOT / "contracts" / f"{name}.yaml"
        registry.publish(load_contract(path), path.read_text(encoding="utf-8"))
    log = AuditLog(charter_home / "audit.db")
    agent = Charter(model=ScriptedModel(_scripted), audit=log, sandbox=shared_sandbox)
    service = CharterService.create(registry=registry, audit=log, agent=agent)
    tokens = TokenStore(charter_home / "tokens.yaml")
    holder_attributes = {"account_id": payments_backend.HOLDER_ACCOUNT, "daily_limit": "2500.00"}
    secrets = {
        "auditor": tokens.add("auditor", "auditor", ["ui", "audit:read"]),
        "approver": tokens.add("approver", "approver", ["ui", "payments:approve"]),
        "approver2": tokens.add("approver2", "approver2", ["ui", "payments:approve"]),
        "holder": tokens.add("holder", "holder", ["ui", *HOLDER_SCOPES], holder_attributes),
        "ada": tokens.add("ada", "ada", ["ui", *ORDER_SCOPES]),
        "api-only": tokens.add("api-only", "api-only", ORDER_SCOPES),
    }
    service.start_approvals(tokens.principal, poll_seconds=0.2)
    sessions = SessionStore(charter_home / "ui-sessions.db")
    app = create_app(service, tokens, IdempotencyStore(charter_home / "idempotency.db"))
    mount_ui(app, service, sessions, secure=False)
    try:
        with serving(app, name="charter-review") as url:
            yield Review(url, charter_home, log, service, tokens, sessions, secrets)
    finally:
        service.stop_approvals()
        sessions.close()


def console_problems(driver: WebDriver) -> list[str]:
    """The console errors the browser reported since the last call (CSP violations included).
    A page answered with an error status on purpose (a refused sign-in: 401) is not one; any
    subresource that failed to load (a stylesheet, a script, the icon) is."""
    found = []
    for entry in driver.get_log("browser"):
        message = entry["message"]
        page_status = "Failed to load resource" in message and "/ui/static/" not in message
        if (entry["level"] == "SEVERE" and not page_status) or "Content Security Policy" in message:
            found.append(message)
    return found


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """Headless Chromium at 1280 px. The test fails if the page logged any console error."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(
            f"{CHROMIUM} and {CHROMEDRIVER} are needed: `make test` installs Debian's chromium, chromium-driver"
        )
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--no-first-run",
        f"--window-size={WIDE[0]},{WIDE[1]}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    try:
        yield driver
        problems = console_problems(driver)
        assert problems == [], f"the page reported console errors: {problems}"
    finally:
        driver.quit()


def sign_in(driver: WebDriver, review: Review, token_name: str) -> None:
    """Sign in through a one-time link, as a person would: open it, press Sign in."""
    driver.get(review.link(token_name))
    driver.find_element(By.CSS_SELECTOR, "form[action='/ui/sign-in'] button[type=submit]").click()
    WebDriverWait(driver, 20).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "form.who")))


def wait_for(driver: WebDriver, css: str, timeout: float = 20) -> Any:
    return WebDriverWait(driver, timeout).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css)))


def screenshot(driver: WebDriver, name: str) -> Path:
    """The whole page as tests/artifacts/<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    height = driver.execute_script("return document.documentElement.scrollHeight")
    width = driver.get_window_size()["width"]
    driver.set_window_size(width, min(max(int(height), 600), 4000))
    driver.save_screenshot(str(path))
    return path


def fits(driver: WebDriver) -> bool:
    """Whether the page needs no horizontal scrolling at the window's width."""
    return bool(driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"))


_OVERFLOWING = """
const width = window.innerWidth, found = [];
for (const element of document.querySelectorAll('body *')) {
  if (element.closest('.scroll')) continue;  // a scrolling box may hold wider content
  const right = element.getBoundingClientRect().right;
  if (right > width + 1) found.push(`${element.tagName}.${element.className} ends at ${Math.round(right)} px: `
                                    + (element.textContent || '').trim().slice(0, 60));
}
return found.slice(0, 10);
"""


def overflowing(driver: WebDriver) -> list[str]:
    """The elements outside any `.scroll` box that reach past the window's right edge (what
    makes a page scroll sideways), for a failing test's message."""
    return list(driver.execute_script(_OVERFLOWING))
