"""Where the non-Python parts of Charter live: the repository in a checkout, the package in a wheel."""

from __future__ import annotations

from pathlib import Path

__all__ = ["shipped_dir"]

_PACKAGE = Path(__file__).resolve().parent


def shipped_dir(name: str) -> Path:
    """`<repo>/<name>` in a source checkout, `charter/_<name>` inside an installed wheel."""
    packaged = _PACKAGE / f"_{name}"
    if packaged.is_dir():
        return packaged
    return _PACKAGE.parents[1] / name
