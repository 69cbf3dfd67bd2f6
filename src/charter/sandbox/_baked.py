"""Baked components: the guest with one contract surface prepared at build time.

componentize-py snapshots the guest module's memory after its top level ran. A build whose
copy of `sandbox/` holds `baked_surface.json` prepares that surface at import time (proxies,
confinement, warm-up run), so an instance of the result needs only instantiation.

Builds run one at a time in a subprocess (componentize-py, then wasmtime's native code with
the sandbox's own engine configuration), queued by one daemon thread per process. Their
files live beside the generic component's, under a key of the guest sources and the
surface: two contract versions with the same surface share a build. Until a surface's
component is loaded, and whenever it cannot be, the generic component serves.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import wasmtime
from wasmtime.component import Component

from charter.sandbox import _component
from charter.sandbox._component import BuildFailed, ComponentFiles

__all__ = ["BakeReport", "BakedComponents", "LoadedComponent", "baked_files", "surface_key"]

_LOG = logging.getLogger("charter.sandbox")
_SURFACE_FILE = "surface.json"
_BUILD_TIMEOUT_SECONDS = 600.0


def surface_key(surface_json: str) -> str:
    """The cache key of a baked component: the guest sources' key and the surface's sha256."""
    surface = hashlib.sha256(surface_json.encode("utf-8")).hexdigest()
    return hashlib.sha256(f"{_component._source_key()}\nsurface {surface}\n".encode()).hexdigest()


def baked_files(key: str) -> ComponentFiles:
    return ComponentFiles(key=key, directory=_component.cache_root() / "sandbox" / "baked" / key[:24])


@dataclass(frozen=True, slots=True)
class BakeReport:
    """What one baked component cost: build seconds (0 when it was on disk), native bytes, load ms."""

    key: str
    build_seconds: float
    native_bytes: int
    load_ms: float


def _build(directory: Path) -> None:
    """Build the component of `directory/surface.json` into `directory` (the subprocess's work)."""
    files = ComponentFiles(key=directory.name, directory=directory)
    engine, tag = _component.new_engine()
    with _component._locked(directory):  # two processes building one key: the second finds it done
        native = files.native(tag)
        if native.is_file():
            return
        if not files.wasm.is_file():
            with tempfile.TemporaryDirectory(prefix="charter-bake-") as scratch:
                guest = Path(scratch) / "sandbox"
                shutil.copytree(_component.guest_dir(), guest, ignore=shutil.ignore_patterns("__pycache__"))
                shutil.copyfile(directory / _SURFACE_FILE, guest / "baked_surface.json")
                partial = directory / "runner.wasm.partial"
                _component._run_componentize(partial, guest)
                os.replace(partial, files.wasm)
        try:
            component = Component.from_file(engine, str(files.wasm))
        except wasmtime.WasmtimeError as error:
            # Not a component this engine can compile (a damaged file): the next build starts afresh.
            files.wasm.unlink(missing_ok=True)
            raise BuildFailed(f"the baked component {files.wasm} does not compile: {error}") from None
        _component._atomic_write(native, bytes(component.serialize()))


_FileIdentity = tuple[int, int, int]  # inode, size, modification time (ns)


@dataclass(frozen=True, slots=True)
class LoadedComponent:
    """A loaded baked component and its native code file (mapped) as it was when loaded."""

    component: Component
    native: Path
    identity: _FileIdentity  # inode, size, modification time (ns) at load

    def changed_in_place(self) -> bool:
        """Whether the file was rewritten in place since: the component's pages, and those of
        every instance made from it, may have changed. Replaced (renamed over) or deleted is safe."""
        return _changed_in_place(self.native, self.identity)


class BakedComponents:
    """Loaded baked components, least recently used evicted past `capacity`, and their builder.

    `request` queues a surface and returns a future that resolves once its component is
    loaded (or raises BuildFailed); `current` returns the loaded component with its file, `get`
    the component alone, or None. Thread-safe.
    """

    def __init__(
        self,
        engine: wasmtime.Engine,
        config_tag: str,
        capacity: int,
        on_ready: Callable[[str], None],
        report: Callable[[str], None] | None,
    ) -> None:
        self._engine = engine
        self._tag = config_tag
        self.capacity = max(1, capacity)
        self._on_ready = on_ready
        self._report = report
        self._lock = threading.Condition()
        self._loaded: OrderedDict[str, LoadedComponent] = OrderedDict()
        self._pending: dict[str, concurrent.futures.Future[BakeReport]] = {}
        self._failed: dict[str, concurrent.futures.Future[BakeReport]] = {}
        self._queue: deque[tuple[str, str]] = deque()
        self._worker: threading.Thread | None = None
        self.reports: dict[str, BakeReport] = {}

    def get(self, key: str) -> Component | None:
        """`key`'s loaded component, or None (see `current`)."""
        loaded = self.current(key)
        return None if loaded is None else loaded.component

    def current(self, key: str) -> LoadedComponent | None:
        """`key`'s loaded component and its file, or None. One whose native file was rewritten
        in place since it was loaded is dropped (reported) and loaded again by the next
        `request`: no new instance maps pages of a file that changed under it. (Instances made
        before: the sandbox checks `LoadedComponent.changed_in_place` when it takes one.)"""
        with self._lock:
            loaded = self._loaded.get(key)
            if loaded is None:
                return None
            if loaded.changed_in_place():
                del self._loaded[key]
                message = (
                    f"the sandbox's baked component {loaded.native} was rewritten in place while loaded; it is "
                    "loaded again. Native code files are mapped: replace them (rename), never edit them"
                )
                if self._report is not None:
                    self._report(message)
                else:
                    _LOG.warning(message)
                return None
            self._loaded.move_to_end(key)
            return loaded

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def request(self, key: str, surface_json: str) -> concurrent.futures.Future[BakeReport]:
        """Queue `key`'s build or load unless it is loaded, queued, or failed in this process."""
        with self._lock:
            failed = self._failed.get(key)
            if failed is not None:
                return failed  # reported once; the generic component keeps serving
            pending = self._pending.get(key)
            if pending is not None:
                return pending
            future: concurrent.futures.Future[BakeReport] = concurrent.futures.Future()
            if key in self._loaded:
                future.set_result(self.reports[key])
                return future
            self._pending[key] = future
            self._queue.append((key, surface_json))
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="charter-bake", daemon=True)
                self._worker.start()
            self._lock.notify()
            return future

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue:
                    self._lock.wait()
                key, surface_json = self._queue.popleft()
            future = self._pending[key]
            try:
                report = self._load(key, surface_json)
            except Exception as error:
                message = f"the sandbox could not bake a contract surface ({key[:12]}); the generic one serves: {error}"
                if self._report is not None:
                    self._report(message)
                else:
                    _LOG.warning(message)
                with self._lock:
                    self._failed[key] = self._pending.pop(key)
                failure = error if isinstance(error, BuildFailed) else BuildFailed(message)
                future.set_exception(failure)
                continue
            self._on_ready(key)
            future.set_result(report)

    def _load(self, key: str, surface_json: str) -> BakeReport:
        files = baked_files(key)
        native = files.native(self._tag)
        build_seconds = 0.0
        component: Component | None = None
        if native.is_file():
            with contextlib.suppress(wasmtime.WasmtimeError):
                component, load_ms = self._deserialize(native)
            if component is None:
                native.unlink(missing_ok=True)  # damaged or from another wasmtime: compile it again
        if component is None:
            started = time.monotonic()
            self._build(files, surface_json)
            build_seconds = time.monotonic() - started
            component, load_ms = self._deserialize(native)
        identity = _identity(native)
        report = BakeReport(key=key, build_seconds=build_seconds, native_bytes=identity[1], load_ms=load_ms)
        with self._lock:  # loaded, reported and no longer pending at once, for `request`
            self.reports[key] = report
            self._loaded[key] = LoadedComponent(component, native, identity)
            self._loaded.move_to_end(key)
            while len(self._loaded) > self.capacity:
                self._loaded.popitem(last=False)  # instances already made keep their component alive
            del self._pending[key]
        return report

    def _deserialize(self, native: Path) -> tuple[Component, float]:
        started = time.monotonic()
        # From the file, so wasmtime maps the initial memory copy-on-write.
        component = Component.deserialize_file(self._engine, str(native))
        return component, (time.monotonic() - started) * 1000

    def _build(self, files: ComponentFiles, surface_json: str) -> None:
        _run_builder(files, surface_json)


def _identity(path: Path) -> _FileIdentity:
    status = path.stat()
    return status.st_ino, status.st_size, status.st_mtime_ns


def _changed_in_place(path: Path, identity: _FileIdentity) -> bool:
    # Replaced (another inode) or deleted is safe: the mapped file lives on unchanged.
    try:
        now = _identity(path)
    except OSError:
        return False
    return now[0] == identity[0] and now != identity


def _run_builder(files: ComponentFiles, surface_json: str) -> None:
    """Build `files` for `surface_json` in a builder subprocess; raises BuildFailed.

    The builder runs in a session of its own and ends itself and what it started when this
    process dies, even by kill -9 (`_die_with_parent`): a restarted server never finds a
    bake of the dead one still running beside its own."""
    files.directory.mkdir(parents=True, exist_ok=True)
    surface = files.directory / _SURFACE_FILE
    if not surface.is_file() or surface.read_text(encoding="utf-8") != surface_json:
        _component._atomic_write(surface, surface_json.encode("utf-8"))
    command = [sys.executable, "-m", "charter.sandbox._baked", str(files.directory), str(os.getpid())]
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
            timeout=_BUILD_TIMEOUT_SECONDS,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        raise BuildFailed(f"building {files.directory} took over {_BUILD_TIMEOUT_SECONDS:.0f} s") from None
    if result.returncode != 0:
        raise BuildFailed(result.stderr.strip()[-4000:] or f"the builder exited with {result.returncode}")


_PARENT_POLL_SECONDS = 0.1


def _die_with_parent(parent: int) -> None:
    """End this builder's process group (itself and componentize-py under it) once `parent`
    is gone. A thread polls rather than PR_SET_PDEATHSIG: a signal handler would wait for the
    main thread to leave the native compile (seconds), and a SIGKILL would leave
    componentize-py running. Polling works on every POSIX system."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_SECONDS)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="charter-bake-parent", daemon=True).start()


def _main(argv: list[str]) -> int:
    if len(argv) > 1 and os.getpgrp() == os.getpid():  # started by _run_builder: in a session of its own
        _die_with_parent(int(argv[1]))
    try:
        _build(Path(argv[0]))
    except BuildFailed as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
