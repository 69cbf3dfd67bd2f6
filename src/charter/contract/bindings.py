"""Where a contract's Python bindings may live, and the record of each module found.

A binding names a module (`package.module:function`). It resolves the same way at check,
publish, exec and serve time, from one search path:

1. the contract file's folder, then each folder above it (the project the contract is in);
2. each folder on CHARTER_BACKEND_PATH (os.pathsep-separated), for backend code kept elsewhere.

Nothing else: the standard library and installed packages (site-packages) are never
bindings, because a contract that may name `subprocess:getoutput` hands the program a
shell. At publish the registry records, for each module, the file it was found in and the
file's sha256 (`BoundModule`); exec and serve load exactly that file and refuse it when its
content changed since.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
import sysconfig
from pathlib import Path

import msgspec

__all__ = ["BACKEND_PATH_VARIABLE", "BoundModule", "backend_path", "binding_search_dirs", "locate_module"]

BACKEND_PATH_VARIABLE = "CHARTER_BACKEND_PATH"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class BoundModule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One binding module as found when the contract was checked (and published).

    `root` is the folder the module's dotted name is relative to (what goes on sys.path),
    `path` its source file, `sha256` the hex digest of that file's bytes.
    """

    module: str
    root: str
    path: str
    sha256: str


def backend_path() -> list[Path]:
    """The folders named by CHARTER_BACKEND_PATH, in order (empty entries ignored)."""
    raw = os.environ.get(BACKEND_PATH_VARIABLE, "")
    return [Path(entry).resolve() for entry in raw.split(os.pathsep) if entry.strip()]


def binding_search_dirs(contract_file: Path) -> list[Path]:
    """Where a binding's module is looked for: the contract's folder, each folder above it,
    then CHARTER_BACKEND_PATH."""
    folder = contract_file.resolve().parent
    return [folder, *folder.parents, *backend_path()]


def _python_install_dirs() -> list[Path]:
    paths = sysconfig.get_paths()
    return [Path(paths[key]).resolve() for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths]


def _inside(path: Path, folders: list[Path]) -> bool:
    return any(path == folder or folder in path.parents for folder in folders)


_FIX = (
    "a contract binds only to its own backend code: write a function in a module under the contract's "
    f"folder (or on {BACKEND_PATH_VARIABLE}) and bind to that"
)


def _standard_library(module: str) -> str | None:
    """Why `module` can never be a binding because it is (or shadows) the standard library."""
    top = module.split(".", maxsplit=1)[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return f"'{top}' is part of Python's standard library (a module of yours by that name would shadow it); {_FIX}"
    return None


def _installed(module: str) -> str | None:
    """Why `module` was not found: it is an installed package (site-packages), or None."""
    top = module.split(".", maxsplit=1)[0]
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: finds, imports nothing
    except (ImportError, ValueError):
        spec = None
    origin = spec.origin if spec is not None else None
    if origin and _inside(Path(origin).resolve(), _python_install_dirs()):
        return f"'{top}' is an installed package ({Path(origin).parent}), not backend code of this project; {_FIX}"
    return None


def locate_module(module: str, search: list[Path]) -> BoundModule | str:
    """The module's record (file, root, sha256), found without importing it, or why not.

    Backend code is not run at check time: checking stays pure, and a contract check can
    never trigger a backend's side effects.
    """
    if not all(_IDENT.match(part) for part in module.split(".")):
        return "write it as 'package.module'"
    refused = _standard_library(module)
    if refused is not None:
        return refused
    relative = Path(*module.split("."))
    installed = _python_install_dirs()
    for folder in search:
        for candidate in (folder / relative.with_suffix(".py"), folder / relative / "__init__.py"):
            if candidate.is_file() and not _inside(candidate.resolve(), installed):
                data = candidate.read_bytes()
                return BoundModule(
                    module=module,
                    root=str(folder),
                    path=str(candidate.resolve()),
                    sha256=hashlib.sha256(data).hexdigest(),
                )
    return _installed(module) or (
        f"no such module in the contract's folder, a folder above it, or on {BACKEND_PATH_VARIABLE} "
        "(set it to the folder your backend package is in)"
    )
