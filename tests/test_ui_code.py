"""charter.ui._code: programs as highlighted, escaped lines."""

from pathlib import Path

from charter.ui._code import highlighted_lines, pygments_css

STATIC = Path(__file__).parents[1] / "src" / "charter" / "ui" / "static"


def test_every_line_is_escaped_and_numbered_as_in_the_source() -> None:
    source = 'note = """a\n<script>alert(1)</script>"""\nif note:  # "><img src=x onerror=alert(1)>\n    pass\n'
    lines = highlighted_lines(source)
    assert len(lines) == 4
    assert "<script>" not in "".join(lines)
    assert "<img" not in "".join(lines)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in lines[1]
    for line in lines:  # each line is a balanced fragment: a triple-quoted string is split per line
        assert line.count("<span") == line.count("</span>")


def test_the_stylesheet_is_the_one_pygments_makes() -> None:
    css = (STATIC / "pygments.css").read_text()
    assert pygments_css() in css, "regenerate static/pygments.css from charter.ui._code.pygments_css()"
    assert "style=" not in css
