"""Console helpers shared by the commands. Messages are printed without rich markup:
contract errors contain brackets (list[LineItem]) that markup would swallow.

Much of what the commands print is untrusted: a requester's program and arguments, reasons,
answers, principal ids. A control character in it (an ANSI escape such as ESC [1A, which moves
the cursor up and lets a program overwrite the arguments line an approver reads) or a bidi
override (U+202E) would act on the reader's terminal. `terminal_text` shows every such
character as a visible escape instead, and every printing helper here passes text through it.
"""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from charter.errors import CharterError

__all__ = [
    "err",
    "fail",
    "note",
    "out",
    "print_json",
    "safe_text",
    "say",
    "shown",
    "source_lines",
    "terminal_text",
    "warn",
]

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

# Unicode categories a terminal acts on or hides rather than draws: controls (Cc: C0, DEL, C1),
# format characters (Cf: the bidi embeddings, overrides and isolates U+202A-202E and U+2066-2069,
# the marks U+200E, U+200F and U+061C, zero-width characters, the BOM), line and paragraph
# separators (Zl, Zp), surrogates (Cs) and unassigned or private code points (Cn, Co).
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn", "Co"})
# What may need escaping: all but printable ASCII (a fast path: most text is ASCII); the
# category of each match decides.
_UNUSUAL = re.compile(r"[^ -~]")
_UNUSUAL_IN_LINES = re.compile(r"[^ -~\n\t]")


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"<U+{code:04X}>"


def terminal_text(text: str, *, lines: bool = False) -> str:
    """`text` as a terminal may show it: every control, format (bidi), separator, surrogate or
    private-use character written as a visible escape (ESC as `\\x1b`, U+202E as `<U+202E>`),
    everything else unchanged. With `lines`, newline and tab are kept (for text laid out in lines,
    such as a program); without, they are escaped too (`\\x0a`), so a one-line value (a reason, a
    principal id) cannot start a line of its own that looks like the command's output."""
    pattern = _UNUSUAL_IN_LINES if lines else _UNUSUAL
    return pattern.sub(lambda m: _escape(m[0]) if unicodedata.category(m[0]) in _HIDDEN else m[0], text)


def shown(value: object) -> str:
    """One untrusted value (a reason, principal id, argument text, answer) for a one-line field."""
    return terminal_text(value if isinstance(value, str) else str(value))


def safe_text(text: str, style: str = "") -> Text:
    """A rich Text of `text` laid out in lines (newline and tab kept, all else escaped); Text
    never interprets markup, so `[bold]` in it is shown as written."""
    return Text(terminal_text(text, lines=True), style=style)


def source_lines(program: str) -> list[str]:
    """A program's lines as Python numbers them (a line ends at \\n, \\r\\n or \\r only), so the
    line a guest reports is the line shown: str.splitlines would also break at form feeds,
    U+2028 and the like, and shift every line after one."""
    lines = _LINE_END.split(program)
    return lines[:-1] if lines and lines[-1] == "" else lines


_LINE_END = re.compile(r"\r\n|\r|\n")


def say(text: str = "", style: str | None = None) -> None:
    out.print(terminal_text(text, lines=True), markup=False, style=style)


def note(text: str, style: str | None = None) -> None:
    """To stderr: for messages from commands whose stdout is a protocol (charter mcp) or data."""
    err.print(terminal_text(text, lines=True), markup=False, style=style)


def warn(text: str) -> None:
    """An error line to stderr, in red."""
    note(text, "red")


def print_json(data: Any) -> None:
    """`data` as indented JSON. JSON escapes C0 controls itself; the other characters a terminal
    acts on (C1 controls, bidi overrides) can only stand inside strings, and are written as
    \\uXXXX escapes there, so the document decodes to the same data."""
    text = json.dumps(data, indent=2, ensure_ascii=False)
    text = _UNUSUAL_IN_LINES.sub(
        lambda m: _json_escape(m[0]) if m[0] != "\t" and unicodedata.category(m[0]) in _HIDDEN else m[0], text
    )
    sys.stdout.write(text + "\n")


def _json_escape(char: str) -> str:
    return json.dumps(char)[1:-1] if ord(char) > 0xFFFF else f"\\u{ord(char):04x}"


def fail(error: CharterError | str, code: int = 1) -> NoReturn:
    warn(f"error: {error}")
    raise typer.Exit(code)
