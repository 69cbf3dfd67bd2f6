"""The review app's frame in a real browser: htmx loads under the CSP as configured, another
site's page cannot sign the browser in (login CSRF), and the frame fits a phone."""

from __future__ import annotations

import html

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from charter.server import serving
from charter.ui import COOKIE
from tests.browser.conftest import PHONE, Review, fits, screenshot, sign_in, wait_for


def test_htmx_runs_under_the_csp_with_eval_and_injected_styles_off(review: Review, browser: WebDriver) -> None:
    sign_in(browser, review, "auditor")
    config = browser.execute_script(
        "return window.htmx && {version: htmx.version, styles: htmx.config.includeIndicatorStyles,"
        " evaluates: htmx.config.allowEval, scripts: htmx.config.allowScriptTags,"
        " self: htmx.config.selfRequestsOnly, inline: document.querySelectorAll('style').length}"
    )
    assert config == {
        "version": "2.0.11",
        "styles": False,
        "evaluates": False,
        "scripts": False,
        "self": True,
        "inline": 0,
    }
    # The fixture then fails the test on any console error: a CSP violation by htmx would be one.


def test_another_sites_form_cannot_sign_the_browser_in(review: Review, browser: WebDriver) -> None:
    # The attacker's page posts the attacker's own token to the review app (login CSRF): the
    # victim would then act, unknowingly, in the attacker's session.
    mallory = review.tokens.add("mallory", "mallory", ["ui"])
    page = (
        "<!doctype html><title>win a prize</title>"
        f'<form method="post" action="{html.escape(review.url)}/ui/sign-in">'
        f'<input type="hidden" name="token" value="{html.escape(mallory)}">'
        '<button id="go" type="submit">Claim</button></form>'
    )
    attacker = Starlette(routes=[Route("/", lambda request: HTMLResponse(page))])
    with serving(attacker, name="attacker") as elsewhere:
        browser.get(elsewhere)
        browser.find_element(By.ID, "go").click()
        assert wait_for(browser, "h1").text == "Cross-site form refused"
    assert browser.get_cookie(COOKIE) is None
    browser.get(f"{review.url}/ui/runs")
    wait_for(browser, "#token")  # not signed in: the sign-in page
    assert browser.current_url.endswith("/ui/sign-in")


def test_the_sign_in_and_error_pages_fit_a_phone(review: Review, browser: WebDriver) -> None:
    browser.set_window_size(*PHONE)
    browser.get(f"{review.url}/ui/sign-in")
    wait_for(browser, "#token")
    assert fits(browser)
    screenshot(browser, "sign-in-phone")
    sign_in(browser, review, "auditor")
    browser.set_window_size(*PHONE)
    browser.get(f"{review.url}/ui/no-such-page")
    assert wait_for(browser, "h1").text == "Page not found"
    assert fits(browser)
