"""The run page in a real browser: the denied call's line highlighted and linked, replay, a
receipt altered in the SQLite file flagged, the XSS corpus inert, a phone's width."""

from __future__ import annotations

import sqlite3

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser.conftest import (
    DENIED_CANCEL,
    PAY_NEW_IBAN,
    PHONE,
    WIDE,
    XSS_CORPUS,
    Review,
    fits,
    screenshot,
    sign_in,
    wait_for,
)


def test_the_denied_call_is_on_its_highlighted_line_and_a_replay_is_identical(
    review: Review, browser: WebDriver
) -> None:
    run_id = review.execute("orders", DENIED_CANCEL)
    sign_in(browser, review, "auditor")
    browser.get(f"{review.url}/ui/runs/{run_id}")
    line = wait_for(browser, "li#L3.denied")  # line 3 made the call the gate denied
    assert "cancel_order" in line.text
    assert "verified:" in browser.find_element(By.CSS_SELECTOR, ".banner.verified").text
    denied = browser.find_element(By.CSS_SELECTOR, "li.kind-decision .verdict.deny")
    assert denied.text == "STATE_VIOLATION"
    browser.find_element(By.CSS_SELECTOR, "li.kind-decision a[href='#L3']").click()
    assert browser.current_url.endswith("#L3")
    screenshot(browser, "run")

    browser.find_element(By.CSS_SELECTOR, "form[action$='/replay'] button[type=submit]").click()
    assert "replay identical" in wait_for(browser, ".replay-result .banner").text

    browser.set_window_size(*PHONE)
    browser.get(f"{review.url}/ui/runs/{run_id}")
    wait_for(browser, "li#L3.denied")
    assert fits(browser)  # stacked: the program and the calls each at the phone's width
    screenshot(browser, "run-phone")
    browser.set_window_size(*WIDE)


def test_a_receipt_altered_in_the_sqlite_file_is_flagged_on_the_page(review: Review, browser: WebDriver) -> None:
    run_id = review.execute("orders", DENIED_CANCEL)
    with sqlite3.connect(review.log.path) as db:
        db.execute("DROP TRIGGER receipts_no_update")  # as an attacker with write access would
        rows = db.execute("SELECT log_seq, body FROM receipts WHERE run_id = ? AND kind = 'decision'", (run_id,))
        log_seq, body = next((seq, body) for seq, body in rows if b'"decision":"DENY"' in body)
        forged = body.replace(b'"decision":"DENY"', b'"decision":"ALLOW"')
        db.execute("UPDATE receipts SET body = ? WHERE log_seq = ?", (forged, log_seq))
    sign_in(browser, review, "auditor")
    browser.get(f"{review.url}/ui/runs/{run_id}")
    assert "VERIFICATION FAILED" in wait_for(browser, ".banner.failed").text
    flagged = browser.find_element(By.CSS_SELECTOR, f"li#r{log_seq}.unverified")
    assert f"UNVERIFIED receipt {log_seq}" in flagged.text
    assert flagged.find_elements(By.CSS_SELECTOR, ".verdict.allow") == []
    screenshot(browser, "run-tampered")


def test_the_xss_corpus_in_a_program_and_its_intent_runs_no_script(review: Review, browser: WebDriver) -> None:
    program = "".join(f"# {text}\n" for text in XSS_CORPUS) + f"conclude({' '.join(XSS_CORPUS)!r})\n"
    run_id = review.execute("orders", program, intent=" ".join(XSS_CORPUS))
    sign_in(browser, review, "auditor")
    browser.get(f"{review.url}/ui/runs/{run_id}")
    wait_for(browser, "li#L1")
    assert "XSS" not in browser.title
    assert browser.find_elements(By.CSS_SELECTOR, "main img, main svg, main script") == []
    assert XSS_CORPUS[0] in browser.find_element(By.CSS_SELECTOR, "dl.summary").text  # shown as text


def test_an_approver_opens_the_run_of_a_request_addressed_to_them_and_sees_the_waiting_line(
    review: Review, browser: WebDriver
) -> None:
    from examples.payments import backend

    run_id = review.execute("payments", PAY_NEW_IBAN, token="holder", iban=backend.LANDLORD_NEW_IBAN)
    sign_in(browser, review, "approver")
    browser.get(f"{review.url}/ui/runs/{run_id}")
    waiting = wait_for(browser, "li#L2.waiting")  # the call that waits for the approver's decision
    assert "send_payment" in waiting.text
    request = browser.find_element(By.CSS_SELECTOR, "li.kind-approval_request")
    assert "APPROVAL REQUIRED" in request.text
    assert request.find_element(By.CSS_SELECTOR, "a[href^='/ui/approvals/']")
    assert browser.find_elements(By.CSS_SELECTOR, "form[action$='/replay']") == []  # auditors only
    screenshot(browser, "run-approver")
