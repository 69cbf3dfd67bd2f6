"""Console helpers shared by the commands. Messages are printed without rich markup:
contract errors contain brackets (list[LineItem]) that markup would swallow."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console

from charter.errors import CharterError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def say(text: str = "", style: str | None = None) -> None:
    out.print(text, markup=False, style=style)


def note(text: str, style: str | None = None) -> None:
    """To stderr: for messages from commands whose stdout is a protocol (charter mcp) or data."""
    err.print(text, markup=False, style=style)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def fail(error: CharterError | str, code: int = 1) -> NoReturn:
    err.print(f"error: {error}", markup=False, style="red")
    raise typer.Exit(code)
