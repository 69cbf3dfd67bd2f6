"""The main pages over a log with every kind of run, at 1280 px and on a 390 px phone: each
loads with no console error, needs no sideways scrolling, and is saved as a screenshot in
tests/artifacts/ (review-<page>[-phone].png; docs/review-runs.png and docs/review-run.png in the
README are copies of two of them)."""

from __future__ import annotations

from selenium.webdriver.remote.webdriver import WebDriver

from examples.payments import backend as payments_backend
from tests.browser.conftest import (
    ALLOWED_CANCEL,
    DENIED_CANCEL,
    PAY_NEW_IBAN,
    PHONE,
    WIDE,
    Review,
    fits,
    overflowing,
    screenshot,
    sign_in,
    wait_for,
)


def test_the_main_pages_fit_1280_px_and_a_phone(review: Review, browser: WebDriver) -> None:
    review.execute("orders", ALLOWED_CANCEL, intent="Cancel order 101, ordered twice")
    denied = review.execute("orders", DENIED_CANCEL, intent="Cancel order 123")
    review.operate("orders", "Cancel order 123, the customer changed their mind")
    review.execute("payments", PAY_NEW_IBAN, token="holder", iban=payments_backend.LANDLORD_NEW_IBAN)
    [request] = review.service.list_approvals(review.principal("auditor"))
    pages = {
        "overview": "/ui/overview",
        "runs": "/ui/runs",
        "run": f"/ui/runs/{denied}",
        "approvals": "/ui/approvals",
        "approval": f"/ui/approvals/{request.approval_id}",
        "contracts": "/ui/contracts",
        "contract": "/ui/contracts/payments/1.0.0",
    }
    sign_in(browser, review, "auditor")
    for size, suffix in ((WIDE, ""), (PHONE, "-phone")):
        for name, page in pages.items():
            browser.set_window_size(*size)
            browser.get(f"{review.url}{page}")
            wait_for(browser, "main h1")
            assert fits(browser), f"{page} scrolls sideways at {size[0]} px: {overflowing(browser)}"
            assert screenshot(browser, f"review-{name}{suffix}").stat().st_size > 0
