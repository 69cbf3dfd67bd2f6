"""Building the guest component and caching it, with its precompiled native code.

The component is built from `sandbox/` with componentize-py and cached outside the
repository, under a key that hashes the guest sources and the tool's version: a change
to either builds anew, nothing else does. Its native code (wasmtime's serialization) is
cached beside it, keyed by the wasmtime version, so a new process loads it in
milliseconds instead of compiling for seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import wasmtime
from wasmtime.component import Component

from charter._paths import allowed_modules, shipped_dir
from charter.errors import CharterError

__all__ = [
    "BuildFailed",
    "ComponentFiles",
    "allowed_modules",
    "cache_root",
    "ensure_built",
    "guest_dir",
    "load",
    "new_engine",
]

_WORLD = "runner"
_APP = "charter_guest"
# Bump when the way the component is built changes without a source change.
_BUILD_FORMAT = "1"
_WASM_STACK_BYTES = 2 * 2**20  # wasmtime refuses more than its async stack size, 2 MiB


class BuildFailed(CharterError):
    """componentize-py could not build the guest; the message carries its output."""


def guest_dir() -> Path:
    return shipped_dir("sandbox")


def cache_root() -> Path:
    configured = os.environ.get("CHARTER_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "charter"


def _guest_files() -> Iterator[Path]:
    root = guest_dir()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in {".py", ".wit", ".json"} and "__pycache__" not in path.parts:
            yield path


def _source_key() -> str:
    digest = hashlib.sha256()
    digest.update(f"format {_BUILD_FORMAT}; componentize-py {version('componentize-py')}\n".encode())
    root = guest_dir()
    for path in _guest_files():
        digest.update(f"{path.relative_to(root).as_posix()}\n".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class ComponentFiles:
    key: str
    directory: Path

    @property
    def wasm(self) -> Path:
        return self.directory / "runner.wasm"

    def native(self, config_tag: str) -> Path:
        return self.directory / f"runner-wasmtime-{version('wasmtime')}-{config_tag}.cwasm"


def _files() -> ComponentFiles:
    key = _source_key()
    return ComponentFiles(key=key, directory=cache_root() / "sandbox" / key[:24])


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    # Two processes starting at once must not both build, nor read a half-written file.
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


_READ_ONLY = 0o444


def _atomic_write(path: Path, data: bytes) -> None:
    """Write `path` whole under a temporary name, make it read-only, then rename it into place.

    Native code files are mapped into the process (`Component.deserialize_file`): a file
    rewritten in place under a running server changes or truncates its mapped pages (SIGBUS).
    Replaced by a rename, the old file lives on as long as it is mapped; read-only, an
    accidental in-place edit is refused (for every user but root)."""
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as handle:
        handle.write(data)
        temporary = Path(handle.name)
    temporary.chmod(_READ_ONLY)
    os.replace(temporary, path)


def _run_componentize(output: Path, root: Path | None = None) -> None:
    root = root or guest_dir()
    command = [
        sys.executable,
        "-c",
        "import sys, componentize_py; sys.argv[0] = 'componentize-py'; sys.exit(componentize_py.script())",
        "-d", str(root / "wit"),
        "-w", _WORLD,
        "componentize",
        "--stub-wasi",  # no WASI imports: the component's only import is the host's `call`
        _APP,
        "-p", str(root),
        "-o", str(output),
    ]  # fmt: skip
    # The build runs the guest's top level and snapshots its memory: give it nothing of
    # this process's environment to snapshot.
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(output.parent)}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if result.returncode != 0 or not output.is_file():
        raise BuildFailed(
            f"componentize-py could not build the sandbox guest from {root}:\n{result.stderr[-4000:] or result.stdout}"
        )


def new_engine() -> tuple[wasmtime.Engine, str]:
    """An engine configured as every sandbox engine is, and the tag its native code is cached under.

    The builder of baked components compiles their native code with this same engine, in
    its own process, so the server only deserializes it.
    """
    config = wasmtime.Config()
    config.epoch_interruption = True
    # CPython recurses in C for parsing, repr and JSON. A deeper native stack lets the
    # parser's own limit fire first (a MemoryError the program sees); C recursion deep
    # enough still exhausts it and ends the run as a trap.
    config.max_wasm_stack = _WASM_STACK_BYTES
    return wasmtime.Engine(config), f"epoch-stack{_WASM_STACK_BYTES}"


def ensure_built(progress: Callable[[str], None] | None = None) -> ComponentFiles:
    """The component's files, building them first if this guest version was never built."""
    files = _files()
    if files.wasm.is_file():
        return files
    with _locked(files.directory):
        if files.wasm.is_file():
            return files
        if progress is not None:
            progress(f"Building the sandbox component (first use; about 15 s) into {files.directory} ...")
        started = time.monotonic()
        partial = files.directory / "runner.wasm.partial"
        _run_componentize(partial)
        os.replace(partial, files.wasm)
        if progress is not None:
            progress(f"Built the sandbox component in {time.monotonic() - started:.1f} s.")
    return files


def load(engine: wasmtime.Engine, config_tag: str, progress: Callable[[str], None] | None = None) -> Component:
    """The component compiled for `engine`: deserialized from the native cache, compiled once if absent."""
    files = ensure_built(progress)
    native = files.native(config_tag)
    if native.is_file():
        try:
            return Component.deserialize_file(engine, str(native))
        except wasmtime.WasmtimeError:
            pass  # written by an incompatible build of wasmtime: compile again below
    with _locked(files.directory):
        if progress is not None:
            progress("Compiling the sandbox component to native code (once per wasmtime version) ...")
        component = Component.from_file(engine, str(files.wasm))
        _atomic_write(native, bytes(component.serialize()))
    # Load from the file so wasmtime can map the initial memory copy-on-write.
    return Component.deserialize_file(engine, str(native))
