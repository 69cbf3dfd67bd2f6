"""Signing in to the review app in a real browser: a one-time link, a token, signing out."""

from __future__ import annotations

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from charter.ui import COOKIE
from tests.browser.conftest import Review, screenshot, sign_in, wait_for


def test_a_one_time_link_signs_in_once_and_the_cookie_is_not_readable_by_script(
    review: Review, browser: WebDriver
) -> None:
    link = review.link("auditor")
    browser.get(link)
    screenshot(browser, "sign-in")
    browser.find_element(By.CSS_SELECTOR, "form[action='/ui/sign-in'] button[type=submit]").click()
    who = wait_for(browser, "form.who")
    assert "auditor" in who.text
    cookie = browser.get_cookie(COOKIE)
    assert cookie is not None
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/ui")
    assert COOKIE not in browser.execute_script("return document.cookie")  # HttpOnly: no script reads it

    browser.delete_all_cookies()  # a second visit of the same link signs no one in
    browser.get(link)
    browser.find_element(By.CSS_SELECTOR, "form[action='/ui/sign-in'] button[type=submit]").click()
    assert "unknown, used or expired" in wait_for(browser, ".problem").text
    assert browser.find_elements(By.CSS_SELECTOR, "form.who") == []


def test_a_token_with_the_ui_scope_signs_in_and_sign_out_ends_the_session(review: Review, browser: WebDriver) -> None:
    browser.get(f"{review.url}/ui/sign-in")
    browser.find_element(By.ID, "token").send_keys(review.secrets["ada"])
    browser.find_element(By.CSS_SELECTOR, "form[action='/ui/sign-in'] button[type=submit]").click()
    assert "ada" in wait_for(browser, "form.who").text
    session = browser.get_cookie(COOKIE)
    assert session is not None

    browser.find_element(By.CSS_SELECTOR, "form.who button[type=submit]").click()
    wait_for(browser, "#token")
    assert browser.current_url.endswith("/ui/sign-in")
    assert review.sessions.get(session["value"]) is None  # ended on the server, not only forgotten


def test_a_token_without_the_ui_scope_is_refused(review: Review, browser: WebDriver) -> None:
    browser.get(f"{review.url}/ui/sign-in")
    browser.find_element(By.ID, "token").send_keys(review.secrets["api-only"])
    browser.find_element(By.CSS_SELECTOR, "form[action='/ui/sign-in'] button[type=submit]").click()
    assert "does not hold the `ui` scope" in wait_for(browser, ".problem").text
    assert browser.get_cookie(COOKIE) is None


def test_signed_in_pages_redirect_to_sign_in_without_a_session(review: Review, browser: WebDriver) -> None:
    browser.get(f"{review.url}/ui/runs")
    wait_for(browser, "#token")
    assert browser.current_url.endswith("/ui/sign-in")
    sign_in(browser, review, "auditor")
