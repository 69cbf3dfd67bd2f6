"""The two crossings of the component boundary, specialised to the runner world's string types.

wasmtime-py's generic path asks the C API for a function's type and rebuilds Python
type objects on every call, in both directions; measured here, that costs about 70 µs
per crossing, more than the guest's own work for a small program. The runner world's
signatures are fixed (strings in, and the host import's u32 line; a string or a result of
strings out), so both
crossings are written once against wasmtime-py's ctypes bindings of the C API.

This leans on wasmtime-py internals (`wasmtime._ffi`); the package is pinned to one
major version in pyproject.toml and tests/test_sandbox.py exercises every path here.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime.component import Func, LinkerInstance

__all__ = ["DeadlineHandler", "HostAbort", "add_string_result_func", "call_strings", "deadline_watcher"]

_STRING = ffi.WASMTIME_COMPONENT_STRING.value
_RESULT = ffi.WASMTIME_COMPONENT_RESULT.value
_U32 = ffi.WASMTIME_COMPONENT_U32.value


class HostAbort(Exception):
    """Raised by a host handler to end the run with a trap; the handler records why."""


def _string_of(value: Any) -> str:
    text = ctypes.string_at(value.of.string.data, value.of.string.size).decode("utf-8")
    ffi.wasm_byte_vec_delete(ctypes.byref(value.of.string))
    return text


def _set_string(value: Any, text: str) -> None:
    value.kind = _STRING
    value.of.string = ffi.bytes_to_capi(text.encode("utf-8"))


def call_strings(func: Func, store: wasmtime.Store, *arguments: str) -> str:
    """Call an export taking strings and returning a string. Raises WasmtimeError on a trap."""
    params = (ffi.wasmtime_component_val_t * len(arguments))()
    for slot, text in zip(params, arguments, strict=True):
        _set_string(slot, text)
    result = ffi.wasmtime_component_val_t()
    try:
        error = ffi.wasmtime_component_func_call(
            ctypes.byref(func._func), store._context(), params, len(arguments), ctypes.byref(result), 1
        )
    finally:
        for slot in params:
            ffi.wasmtime_component_val_delete(ctypes.byref(slot))
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
    if result.kind != _STRING:
        ffi.wasmtime_component_val_delete(ctypes.byref(result))
        raise wasmtime.WasmtimeError("the export did not return a string")
    return _string_of(result)


# (first, second, number) -> (ok, text); raise HostAbort to trap the guest.
StringHandler = Callable[[str, str, int], tuple[bool, str]]

# The C API holds only an index into this table, as wasmtime-py does for its own callbacks.
_handlers: list[StringHandler] = []


def _error_pointer(message: str) -> int:
    return ctypes.cast(wasmtime.WasmtimeError(message)._consume(), ctypes.c_void_p).value or 0


@ffi.wasmtime_component_func_callback_t  # type: ignore[untyped-decorator]
def _trampoline(index: Any, context: Any, func_type: Any, args: Any, nargs: int, results: Any, nresults: int) -> int:
    try:
        first, second = _string_of(args[0]), _string_of(args[1])
        # wasmtime type-checks the call against the WIT signature: the third is a u32.
        number = int(args[2].of.u32) if nargs > 2 and args[2].kind == _U32 else 0
        ok, text = _handlers[index or 0](first, second, number)
    except HostAbort as abort:
        return _error_pointer(str(abort) or "run ended by the host")
    except BaseException as error:
        return _error_pointer(f"host error: {type(error).__name__}: {error}")
    payload = ffi.wasmtime_component_val_t()
    _set_string(payload, text)
    results[0].kind = _RESULT
    results[0].of.result.is_ok = ok
    results[0].of.result.val = ffi.wasmtime_component_val_new(ctypes.byref(payload))
    return 0


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)  # type: ignore[untyped-decorator]
def _no_finalizer(index: Any) -> None:
    return None


def add_string_result_func(instance: LinkerInstance, name: str, handler: StringHandler) -> None:
    """Define `name: func(a: string, b: string, n: u32) -> result<string, string>` in a linker instance."""
    _handlers.append(handler)
    encoded = name.encode("utf-8")
    error = ffi.wasmtime_component_linker_instance_add_func(
        instance.ptr(),
        ctypes.create_string_buffer(encoded),
        len(encoded),
        _trampoline,
        len(_handlers) - 1,
        _no_finalizer,
    )
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)


# () -> how many more epoch ticks the guest may run for, or None to end the run with a trap
# (the handler records why on the run's own state, as a host import does).
DeadlineHandler = Callable[[], int | None]

_deadline_handlers: list[DeadlineHandler] = []
_DEADLINE_CONTINUE = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE: keep running, no async yield
_DEADLINE_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.POINTER(ffi.wasmtime_context_t),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(ffi.wasmtime_update_deadline_kind_t),
)


@_DEADLINE_CALLBACK  # type: ignore[untyped-decorator]
def _deadline_trampoline(context: Any, index: Any, delta: Any, kind: Any) -> int:
    # Runs on the thread running the guest, each time its epoch deadline is reached.
    # Nothing is raised through wasmtime: an error pointer it returns becomes the trap.
    try:
        ticks = _deadline_handlers[index or 0]()
    except BaseException as error:
        return _error_pointer(f"host error in the epoch deadline: {type(error).__name__}")
    if ticks is None:
        return _error_pointer("wasm trap: interrupt (the run's time limit was reached)")
    delta[0] = max(1, ticks)
    kind[0] = _DEADLINE_CONTINUE
    return 0


def deadline_watcher(handler: DeadlineHandler) -> Callable[[wasmtime.Store], None]:
    """Register `handler` once; the returned function makes a store ask it at each epoch
    deadline (`wasmtime_store_epoch_deadline_callback`) instead of trapping there."""
    _deadline_handlers.append(handler)
    index = len(_deadline_handlers) - 1

    def watch(store: wasmtime.Store) -> None:
        ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), _deadline_trampoline, index, _no_finalizer)

    return watch
