"""The review app's templates and static files, checked as written: what the CSP forbids never
appears in a template, every form that changes something carries its CSRF token, and the
vendored htmx is the pinned file of the version noted."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import pytest

UI = Path(__file__).parents[1] / "src" / "charter" / "ui"
TEMPLATES = sorted((UI / "templates").rglob("*.html"))
STATIC = UI / "static"
CSRF_INPUT = '<input type="hidden" name="csrf" value="{{ csrf }}">'
NO_CSRF = {"sign_in.html"}  # no session yet: guarded by the Origin check (tests/test_ui_auth.py)

# What the page's Content-Security-Policy (default-src 'self') would block, or what would run
# code or bypass escaping, in a template's text. Jinja comments are removed first.
FORBIDDEN = {
    "inline script": re.compile(r"<script(?![^>]*\bsrc=)[^>]*>|<script[^>]*>\s*[^<\s]", re.IGNORECASE),
    "script from elsewhere": re.compile(r"<script[^>]*\bsrc=\"(?!/ui/static/)", re.IGNORECASE),
    "<style> block": re.compile(r"<style\b", re.IGNORECASE),
    "style= attribute": re.compile(r"\sstyle\s*=", re.IGNORECASE),
    "event handler attribute": re.compile(r"\son[a-z]+\s*=", re.IGNORECASE),
    "hx-on": re.compile(r"\b(?:data-)?hx-on", re.IGNORECASE),
    "javascript: URL": re.compile(r"javascript\s*:", re.IGNORECASE),
    "|safe": re.compile(r"\|\s*safe\b"),
    "autoescape off": re.compile(r"{%-?\s*autoescape\s+false", re.IGNORECASE),
    "js: or eval in hx-vals/hx-vars": re.compile(r"hx-vars|hx-vals\s*=\s*['\"]\s*(?:js|javascript)\s*:", re.IGNORECASE),
}
_JINJA_COMMENT = re.compile(r"{#.*?#}", re.DOTALL)
_FORM = re.compile(r"<form\b([^>]*)>(.*?)</form>", re.IGNORECASE | re.DOTALL)
_POST = re.compile(r"""\bmethod\s*=\s*["']?post\b""", re.IGNORECASE)


def problems(text: str) -> list[str]:
    """What `text` (a template) holds that no template may."""
    text = _JINJA_COMMENT.sub("", text)
    return [name for name, pattern in FORBIDDEN.items() if pattern.search(text)]


def forms_without_csrf(text: str) -> list[str]:
    """The opening tags of POST forms in `text` without the CSRF input."""
    text = _JINJA_COMMENT.sub("", text)
    return [f"<form{attrs}>" for attrs, body in _FORM.findall(text) if _POST.search(attrs) and CSRF_INPUT not in body]


def test_there_are_templates_to_check() -> None:
    names = {path.name for path in TEMPLATES}
    assert {"base.html", "sign_in.html", "error.html", "_macros.html"} <= names


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda path: path.name)
def test_no_template_holds_what_the_csp_forbids(template: Path) -> None:
    assert problems(template.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda path: path.name)
def test_every_post_form_carries_the_csrf_token(template: Path) -> None:
    if template.name in NO_CSRF:
        pytest.skip("the sign-in form has no session to hold a token")
    assert forms_without_csrf(template.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    ("snippet", "found"),
    [
        ("<script>alert(1)</script>", "inline script"),
        ('<script src="/ui/static/x.js">alert(1)</script>', "inline script"),
        ('<script src="https://cdn.example/htmx.js"></script>', "script from elsewhere"),
        ("<style>p{}</style>", "<style> block"),
        ('<p style="color:red">', "style= attribute"),
        ('<img src=x onerror="alert(1)">', "event handler attribute"),
        ('<button hx-on:click="alert(1)">', "hx-on"),
        ('<button hx-on::after-request="x">', "hx-on"),
        ('<a href="javascript:alert(1)">', "javascript: URL"),
        ("{{ value|safe }}", "|safe"),
        ("{{ value | safe }}", "|safe"),
        ("{% autoescape false %}{{ v }}{% endautoescape %}", "autoescape off"),
        ("<div hx-vals='js:{a: b()}'>", "js: or eval in hx-vals/hx-vars"),
    ],
)
def test_the_lint_finds_each_forbidden_thing(snippet: str, found: str) -> None:
    assert found in problems(f"<div>{snippet}</div>")


def test_the_lint_passes_what_is_allowed() -> None:
    allowed = (
        '<script src="/ui/static/htmx.min.js" integrity="sha384-x" defer></script>'
        '{# <style> in a comment is not sent #}<a href="/ui/runs" hx-get="/ui/runs" hx-target="#x">runs</a>'
        '<p class="onward">{{ value }}</p>'
    )
    assert problems(allowed) == []


def test_the_form_check_finds_a_post_form_without_the_token() -> None:
    bare = '<form method="post" action="/ui/x"><button>Go</button></form>'
    guarded = f'<form method="post" action="/ui/x">{CSRF_INPUT}<button>Go</button></form>'
    search = '<form method="get" action="/ui/runs"><input name="q"></form>'
    assert forms_without_csrf(bare) == ['<form method="post" action="/ui/x">']
    assert forms_without_csrf(guarded + search) == []


# -- htmx, vendored ------------------------------------------------------------------------------

BASE = (UI / "templates" / "base.html").read_text(encoding="utf-8")


def test_htmx_is_the_pinned_file_of_the_noted_version() -> None:
    script = re.search(r'<script src="/ui/static/htmx\.min\.js" integrity="sha384-([A-Za-z0-9+/=]+)" defer>', BASE)
    assert script, "base.html loads htmx with its sha384 integrity"
    shipped = (STATIC / "htmx.min.js").read_bytes()
    assert base64.b64encode(hashlib.sha384(shipped).digest()).decode() == script.group(1)
    noted = re.search(r"htmx (\d+\.\d+\.\d+): dist/htmx\.min\.js of the npm package htmx\.org@(\d+\.\d+\.\d+)", BASE)
    assert noted, "base.html notes which htmx release is vendored"
    assert noted.group(1) == noted.group(2)
    assert f'version:"{noted.group(1)}"'.encode() in shipped
    assert noted.group(1).startswith("2.")


def test_htmx_ships_with_its_licence() -> None:
    licence = (STATIC / "htmx.LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("Zero-Clause BSD")
    assert "Permission to use, copy, modify, and/or distribute this software" in licence


def test_htmx_is_configured_for_the_csp() -> None:
    meta = re.search(r"<meta name=\"htmx-config\" content='([^']*)'>", BASE)
    assert meta
    config = json.loads(meta.group(1))
    assert config == {
        "includeIndicatorStyles": False,  # it would inject a <style> the CSP refuses
        "allowEval": False,
        "allowScriptTags": False,
        "selfRequestsOnly": True,
        # A refusal (403, 503 with Retry-After) is a page the reader must see, as it is without JS:
        # htmx swaps 4xx and 5xx answers in too (its default drops them silently).
        "responseHandling": [
            {"code": "204", "swap": False},
            {"code": "[23]..", "swap": True},
            {"code": "[45]..", "swap": True, "error": True},
        ],
    }
    assert BASE.index('name="htmx-config"') < BASE.index('<script src="/ui/static/htmx.min.js"')  # read as htmx loads


def test_the_stylesheets_load_nothing_from_elsewhere() -> None:
    for sheet in STATIC.glob("*.css"):
        text = sheet.read_text(encoding="utf-8")
        assert not re.search(r"@import|url\(\s*['\"]?(?:https?:|//|data:)", text), sheet.name
