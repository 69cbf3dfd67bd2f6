"""Where the non-Python parts of Charter live: the repository in a checkout, the package in a wheel."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

__all__ = ["allowed_modules", "charter_home", "shipped_dir"]

_PACKAGE = Path(__file__).resolve().parent


def shipped_dir(name: str) -> Path:
    """`<repo>/<name>` in a source checkout, `charter/_<name>` inside an installed wheel."""
    packaged = _PACKAGE / f"_{name}"
    if packaged.is_dir():
        return packaged
    return _PACKAGE.parents[1] / name


def charter_home() -> Path:
    """Where Charter keeps its state: $CHARTER_HOME, else .charter in the working directory."""
    return Path(os.environ.get("CHARTER_HOME") or Path.cwd() / ".charter")


@cache
def allowed_modules() -> tuple[str, ...]:
    """The modules a program may import (the guest's policy file, the one place they are listed)."""
    policy = json.loads((shipped_dir("sandbox") / "policy.json").read_text(encoding="utf-8"))
    return tuple(str(name) for name in policy["allowed_modules"])
