"""A program's source as highlighted, escaped lines for the review app's pages.

Highlighting is Pygments' (a dependency of rich, already installed) with CSS classes only,
never inline styles (the CSP forbids them): static/pygments.css holds the classes' colours,
made by `pygments_css()`. Every token's text is HTML-escaped by Pygments' HtmlFormatter.
"""

from __future__ import annotations

from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

__all__ = ["highlighted_lines", "pygments_css"]

_STYLE = "default"
_CSS_CLASS = "code"


def highlighted_lines(source: str) -> list[Markup]:
    """One safe HTML fragment per line of `source` (line 1 first): the line's tokens in
    `<span class="...">`, escaped. A trailing newline adds no line."""
    formatter = HtmlFormatter(nowrap=True, style=_STYLE)
    html = highlight(source, PythonLexer(stripnl=False, ensurenl=False), formatter)
    # HtmlFormatter closes its spans at every newline (a token over several lines, such as a
    # triple-quoted string, is split), so each line is a balanced fragment.
    lines = html.split("\n")
    if lines and lines[-1] == "" and source.endswith("\n"):
        lines.pop()
    return [Markup(line) for line in lines]  # Pygments escaped every token's text


def pygments_css() -> str:
    """The stylesheet of the highlighting classes, scoped to `.code` (static/pygments.css)."""
    return str(HtmlFormatter(style=_STYLE).get_style_defs(f".{_CSS_CLASS}"))  # type: ignore[no-untyped-call]
