"""Operations performed by Python functions in this process."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from charter.backends._base import BackendUnavailable, CallContext, error_text, error_type
from charter.compiler.artifact import CompiledContract
from charter.contract.bindings import BACKEND_PATH_VARIABLE, BoundModule, backend_path

__all__ = ["InMemoryBackend", "PythonBackend"]

_log = logging.getLogger(__name__)


def _takes_context(function: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return "charter" in parameters


class _Bound:
    """One operation's function, handed the CallContext when it asks for it."""

    __slots__ = ("function", "wants_context")

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.wants_context = _takes_context(function)

    def __call__(self, arguments: Mapping[str, Any], context: CallContext | None) -> Any:
        if self.wants_context:
            return self.function(**arguments, charter=context)
        return self.function(**arguments)


class _Functions:
    """Calls one function per operation."""

    def __init__(self, functions: Mapping[str, Callable[..., Any]]) -> None:
        self._functions = {name: _Bound(f) for name, f in functions.items()}

    def invoke(self, operation: str, arguments: Mapping[str, Any], context: CallContext | None = None) -> Any:
        bound = self._functions.get(operation)
        if bound is None:
            raise LookupError(f"{type(self).__name__} has no function for {operation!r}")
        return bound(arguments, context)


class InMemoryBackend(_Functions):
    """Operations answered by plain functions in this process; never blocks on I/O."""

    blocking: bool = False


class PythonBackend:
    """Calls each Python-bound operation's function, loading its module on the first call.

    A module is loaded from the file recorded when the contract version was published, and
    only if the file's sha256 still matches the record; a module that is missing, fails to
    import or changed raises `BackendUnavailable` for the operations bound to it, and for
    no others. A contract compiled without records (not from the registry) imports its
    modules by name from CHARTER_BACKEND_PATH and sys.path.
    """

    blocking: bool = True  # bindings may do I/O (the examples use SQLite)

    def __init__(self, contract: CompiledContract) -> None:
        self._label = f"contract {contract.name} {contract.version}"
        self._targets = {
            name: rule.binding.target
            for name, rule in contract.gate.operations.items()
            if rule.binding.kind == "python"
        }
        self._records = {m.module: m for m in contract.modules}
        self._functions: dict[str, _Bound] = {}
        self._lock = threading.Lock()

    def invoke(self, operation: str, arguments: Mapping[str, Any], context: CallContext | None = None) -> Any:
        bound = self._functions.get(operation)
        if bound is None:
            bound = self._load(operation)
        return bound(arguments, context)

    def _load(self, operation: str) -> _Bound:
        target = self._targets.get(operation)
        if target is None:
            raise LookupError(f"{self._label} binds no Python function to {operation!r}")
        module_name, _, function_name = target.partition(":")
        with self._lock:
            try:
                record = self._records.get(module_name)
                module = _load_recorded(record) if record is not None else _import_by_name(module_name)
                bound = _Bound(getattr(module, function_name))
            except BackendUnavailable as error:
                raise BackendUnavailable(
                    f"{self._label}, operation {operation}: {error.message}",
                    detail=error.detail,
                    detail_type=error.detail_type,
                ) from None
            except BaseException as error:  # an import runs arbitrary code: any failure is the server's
                # Its text may hold anything the module held (a password in its config): the
                # program, the caller and the receipt get the module and the type; the text
                # goes to the server's log and the audit database's backend_errors table.
                text = error_text(error)
                _log.error("%s, operation %s: cannot load binding %r: %s", self._label, operation, target, text)
                raise BackendUnavailable(
                    f"{self._label}, operation {operation}: cannot load binding {target!r} (module "
                    f"{module_name!r} raised {type(error).__name__}; its text is withheld, the operator reads it "
                    "with `charter audit show` or in the server's log); fix the backend module on the server",
                    detail=text,
                    detail_type=error_type(error),
                ) from None
            self._functions[operation] = bound
            return bound


def _ensure_on_path(folder: str) -> None:
    if folder not in sys.path:
        sys.path.append(folder)


def _import_by_name(module: str) -> ModuleType:
    """A contract with no module records (compiled in code, or published before records were
    kept): its modules are imported by name from CHARTER_BACKEND_PATH, without a hash check."""
    for folder in backend_path():
        _ensure_on_path(str(folder))
    try:
        return importlib.import_module(module)
    except ImportError as error:
        text = error_text(error)
        _log.error("binding module %r cannot be imported: %s", module, text)
        raise BackendUnavailable(
            f"binding module '{module}' was not recorded at publish and cannot be imported "
            f"({type(error).__name__}; its text is withheld, the operator reads it with `charter audit show`): set "
            f"{BACKEND_PATH_VARIABLE} to the folder it is in, or publish the contract again as a new patch "
            "version so that its module's file and sha256 are recorded",
            detail=text,
            detail_type=error_type(error),
        ) from None


def _load_recorded(record: BoundModule) -> ModuleType:
    """Import `record.module` from exactly the bytes of its recorded file, if they are unchanged."""
    path = Path(record.path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BackendUnavailable(
            f"binding module '{record.module}' recorded at publish as {record.path} cannot be read "
            f"({type(error).__name__}: {error.strerror or error}); restore the file, or re-publish the contract "
            "from where the module now is (`charter contract publish FILE`, as a new patch version)"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != record.sha256:
        raise BackendUnavailable(
            f"binding module '{record.module}' ({record.path}) changed since it was published: "
            f"sha256 recorded at publish {record.sha256}, file now {digest}; a published version pins the bound "
            "module's own file (not the modules it imports): restore the file, or publish the change as a new "
            "patch version (`charter contract publish FILE`)"
        )
    with _LOADING:
        loaded = _LOADED.get((record.path, digest))
        if loaded is None:
            loaded = _LOADED[(record.path, digest)] = _exec_module(record, path, data)
        return loaded


# Modules this process ran, by (file, sha256 of the bytes that ran). A module already in
# sys.modules is not reused: nothing says its code is the content recorded at publish.
_LOADED: dict[tuple[str, str], ModuleType] = {}
_LOADING = threading.Lock()


def _exec_module(record: BoundModule, path: Path, data: bytes) -> ModuleType:
    _ensure_on_path(record.root)  # parent packages and the module's own imports
    parent, _, _ = record.module.rpartition(".")
    if parent:
        importlib.import_module(parent)
    spec = importlib.util.spec_from_file_location(record.module, path)
    if spec is None:
        raise BackendUnavailable(f"binding module '{record.module}' ({record.path}) is not a Python module")
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(record.module)
    sys.modules[record.module] = module  # as an import does: the module may import itself
    try:
        # The bytes that were hashed are the bytes that run: no window for a change in between.
        exec(compile(data, str(path), "exec"), module.__dict__)
    except BaseException:
        if previous is None:
            sys.modules.pop(record.module, None)
        else:
            sys.modules[record.module] = previous
        raise
    return module
