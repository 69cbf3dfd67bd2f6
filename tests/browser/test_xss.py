"""No value a program, a contract, an argument or a model's answer carries runs as script on
any page: the XSS corpus in a contract's summary, docs and boundary sentence, in a paused
payment's arguments and program, and in an intent, shown on every page that displays them.
The browser fixture also fails the test on any CSP violation the pages reported."""

from __future__ import annotations

import json

from selenium.webdriver.remote.webdriver import WebDriver

from charter.contract import load_contract
from examples.payments import backend as payments_backend
from tests.browser.conftest import PAY_NEW_IBAN, ROOT, XSS_CORPUS, Review, sign_in, wait_for

HOSTILE = " ".join(XSS_CORPUS)
_INJECTED = (
    "return [document.title, document.querySelectorAll('[onerror], [onload], main script, main img').length,"
    ' document.querySelectorAll(\'a[href^="javascript:"], form[action^="javascript:"]\').length]'
)


def test_the_xss_corpus_runs_nowhere(review: Review, browser: WebDriver) -> None:
    hostile = review.home / "orders-1.0.1.yaml"
    source = (ROOT / "contracts" / "orders.yaml").read_text(encoding="utf-8")
    for old in (
        "summary: Customer orders, from placement to delivery, cancellation and refund.",
        "text: Never cancel an order in picking, packed, or dispatched state.",
        "doc: Cancel an order at the customer's request.",
    ):
        assert old in source
        key = old.split(":")[0]
        source = source.replace(old, f"{key}: {json.dumps(HOSTILE)}")
    hostile.write_text(source.replace("version: 1.0.0", "version: 1.0.1"), encoding="utf-8")
    review.service.registry.publish(
        load_contract(hostile), source.replace("version: 1.0.0", "version: 1.0.1"), allow_relaxation=True
    )
    paying = "".join(f"# {text}\n" for text in XSS_CORPUS) + PAY_NEW_IBAN.replace('"Deposit"', repr(HOSTILE))
    paused = review.execute("payments", paying, token="holder", iban=payments_backend.LANDLORD_NEW_IBAN)
    [request] = review.service.list_approvals(review.principal("auditor"))
    intent = review.operate("orders", HOSTILE, token="ada")

    sign_in(browser, review, "auditor")
    pages = {  # page: whether it shows a hostile value (as text)
        "/ui/overview": False,
        "/ui/runs": True,
        f"/ui/runs/{paused}": True,
        f"/ui/runs/{intent}": True,
        "/ui/approvals": False,
        f"/ui/approvals/{request.approval_id}": True,
        "/ui/contracts": False,
        "/ui/contracts/orders/1.0.1": True,
        "/ui/contracts/orders/diff?from=1.0.0&to=1.0.1": True,
    }
    for page, shows in pages.items():
        browser.get(f"{review.url}{page}")
        wait_for(browser, "main h1")
        title, injected, scripted_links = browser.execute_script(_INJECTED)
        assert "XSS" not in title, page
        assert (injected, scripted_links) == (0, 0), page
        text = browser.execute_script("return document.querySelector('main').innerText")
        assert (XSS_CORPUS[0] in text) is shows, page  # shown where it belongs, as text
