"""Approvals and contracts in a real browser: the requester is refused (four eyes), a second
principal approves through the page's form, and the contract pages read at 1280 px and on a phone."""

from __future__ import annotations

import time

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from charter.contract import load_contract
from examples.payments import backend as payments_backend
from tests.browser.conftest import PAY_NEW_IBAN, PHONE, ROOT, WIDE, Review, fits, screenshot, sign_in, wait_for


def test_the_requester_is_refused_and_a_second_principal_approves(review: Review, browser: WebDriver) -> None:
    review.execute("payments", PAY_NEW_IBAN, token="holder", iban=payments_backend.LANDLORD_NEW_IBAN)
    [request] = review.service.list_approvals(review.principal("auditor"))
    sign_in(browser, review, "holder")
    browser.get(f"{review.url}/ui/approvals")
    browser.find_element(By.CSS_SELECTOR, f"a[href='/ui/approvals/{request.approval_id}']").click()
    assert wait_for(browser, "li.waiting").get_attribute("id") == f"L{request.line}"
    browser.find_element(By.ID, "approve-reason").send_keys("my own payment")
    browser.find_element(By.CSS_SELECTOR, "form.decide.approve button[type=submit]").click()
    refusal = wait_for(browser, ".refusal")
    assert "SELF_APPROVAL" in refusal.text
    assert "Nothing was recorded" in refusal.text
    assert review.service.approval(review.principal("auditor"), request.approval_id).status == "pending"

    browser.find_element(By.CSS_SELECTOR, "form.who button[type=submit]").click()  # sign out
    wait_for(browser, "#token")
    sign_in(browser, review, "approver")
    browser.get(f"{review.url}/ui/approvals/{request.approval_id}")
    wait_for(browser, "li.waiting")
    screenshot(browser, "approval")
    browser.find_element(By.ID, "approve-reason").send_keys("Checked the new IBAN with the landlord")
    browser.find_element(By.CSS_SELECTOR, "form.decide.approve button[type=submit]").click()
    assert "recorded" in wait_for(browser, ".done").text
    assert "approved by approver" in browser.find_element(By.CSS_SELECTOR, ".decided").text
    assert browser.find_elements(By.CSS_SELECTOR, "form.decide") == []
    browser.set_window_size(*PHONE)
    browser.refresh()
    wait_for(browser, ".decided")
    assert fits(browser), "the approval page scrolls sideways on a phone"
    # The worker resumes the run: its requester's runs list and run page say where the chain went.
    deadline = time.monotonic() + 60
    while review.service.current_answer(request.run_id)[0].status == "awaiting_approval":  # type: ignore[index]
        assert time.monotonic() < deadline, "the approved run was not resumed"
        time.sleep(0.1)
    browser.find_element(By.CSS_SELECTOR, "form.who button[type=submit]").click()  # sign out
    wait_for(browser, "#token")
    sign_in(browser, review, "holder")
    browser.get(f"{review.url}/ui/runs")
    assert "resumed:" in wait_for(browser, "span.resumed").text
    browser.get(f"{review.url}/ui/runs/{request.run_id}")
    assert "done" in wait_for(browser, "dd.chain-now").text


def test_contract_pages_show_a_version_and_the_diff_of_two(review: Review, browser: WebDriver) -> None:
    relaxed = review.home / "orders-1.1.yaml"
    relaxed.write_text(
        (ROOT / "contracts" / "orders.yaml")
        .read_text(encoding="utf-8")
        .replace("version: 1.0.0", "version: 1.1.0")
        .replace("cancel: {from: [pending, confirmed]", "cancel: {from: [pending, confirmed, dispatched]"),
        encoding="utf-8",
    )
    review.service.registry.publish(
        load_contract(relaxed), relaxed.read_text(encoding="utf-8"), allow_relaxation=True, published_by="bob"
    )
    sign_in(browser, review, "auditor")
    browser.get(f"{review.url}/ui/contracts")
    screenshot(browser, "contracts")
    browser.find_element(By.CSS_SELECTOR, "a[href='/ui/contracts/orders/1.0.0']").click()
    assert "transition:Order.cancel" in wait_for(browser, "ul.boundaries").text
    assert browser.find_elements(By.CSS_SELECTOR, "pre.program li")  # the stubs, numbered
    screenshot(browser, "contract")
    browser.get(f"{review.url}/ui/contracts/orders/diff")
    Select(browser.find_element(By.ID, "from")).select_by_value("1.1.0")
    Select(browser.find_element(By.ID, "to")).select_by_value("1.0.0")
    browser.find_element(By.CSS_SELECTOR, "form.compare button[type=submit]").click()
    wait_for(browser, "tr.breaking")
    assert browser.current_url.endswith("/ui/contracts/orders/diff?from=1.1.0&to=1.0.0")
    for page in ("/ui/contracts", "/ui/contracts/orders/1.1.0", "/ui/contracts/orders/diff"):
        browser.set_window_size(*PHONE)
        browser.get(f"{review.url}{page}")
        wait_for(browser, "main h1")
        assert fits(browser), f"{page} scrolls sideways on a phone"
        browser.set_window_size(*WIDE)
