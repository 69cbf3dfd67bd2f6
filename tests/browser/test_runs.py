"""The Runs and Overview pages in a real browser: filter by a reason code from the overview,
expand an intent to its attempts, no script from the XSS corpus runs, and both pages fit a phone."""

from __future__ import annotations

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser.conftest import DENIED_CANCEL, PHONE, WIDE, XSS_CORPUS, Review, fits, screenshot, sign_in, wait_for


def test_filter_runs_by_a_reason_code_from_the_overview_and_expand_an_intent(
    review: Review, browser: WebDriver
) -> None:
    denied = review.execute("orders", DENIED_CANCEL)
    done = review.execute("orders", 'conclude("nothing to do")', intent=" ".join(XSS_CORPUS))
    intent = review.operate("orders", "Cancel order 123, the customer changed their mind.")
    sign_in(browser, review, "auditor")

    browser.get(f"{review.url}/ui/overview")
    wait_for(browser, "svg.chart rect.bar")
    screenshot(browser, "overview")
    browser.find_element(By.CSS_SELECTOR, "section.codes a[href='/ui/runs?code=STATE_VIOLATION']").click()
    wait_for(browser, "table.runs")
    assert browser.current_url.endswith("/ui/runs?code=STATE_VIOLATION")
    shown = [
        a.get_attribute("href").rsplit("/", 1)[1]
        for a in browser.find_elements(By.CSS_SELECTOR, "tr.run > td:nth-child(2) a")
    ]
    assert shown == [intent, denied]  # the intent's attempt was denied too: its first denial
    assert done not in shown

    browser.get(f"{review.url}/ui/runs")
    wait_for(browser, "table.runs")
    screenshot(browser, "runs")
    assert "XSS" not in browser.title  # no script of the corpus ran
    assert browser.find_elements(By.CSS_SELECTOR, "table.runs img, table.runs script, table.runs svg") == []
    details = browser.find_element(By.CSS_SELECTOR, "tr.run-intent details.attempts")
    attempt_link = details.find_element(By.CSS_SELECTOR, "ol a")
    assert not attempt_link.is_displayed()  # collapsed until asked
    details.find_element(By.TAG_NAME, "summary").click()
    assert attempt_link.is_displayed()

    for page in ("/ui/runs", "/ui/overview"):
        browser.set_window_size(*PHONE)
        browser.get(f"{review.url}{page}")
        wait_for(browser, "main h1")
        assert fits(browser), page  # the table scrolls in its own box, the page does not
    screenshot(browser, "overview-phone")
    browser.set_window_size(*WIDE)
