"""Where the non-Python parts of Charter live: the repository in a checkout, the package in a wheel."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["charter_home", "shipped_dir"]

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
