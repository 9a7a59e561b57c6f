"""Workarounds for bugs of the wasmtime 50.0.1 Python bindings, in one place.

- `SharedMemory._as_extern` wraps its pointer in one `ctypes.pointer` too many, so a shared
  memory cannot be passed to `Instance(...)` or `Linker.define`.
- `SharedMemory.size` passes `byref(ptr)` where the C API wants the pointer itself.
- A Python exception raised by a host function travels back to the wasm caller through one
  module-global slot, so two threads whose host functions raise at once can swap (or lose)
  each other's exceptions. The slot is made per thread: the same trampoline, storing into a
  thread-local (host functions always run on the thread that called into wasm).
- Asking a `ValType` of kind v128 for its kind (`str`, `==`) aborts the whole process (a Rust
  panic in the C API): `value_type_name` tells the kinds apart by comparing with
  `wasmtime_wasm_valtype_equal`, which never asks.
"""

from __future__ import annotations

import threading
from ctypes import c_void_p, cast
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi  # the bindings' own ctypes layer
from wasmtime import _func

_LOCAL = threading.local()


def _as_extern(self: wasmtime.SharedMemory) -> ffi.wasmtime_extern_t:
    union = ffi.wasmtime_extern_union(sharedmemory=self.ptr())
    return ffi.wasmtime_extern_t(ffi.WASMTIME_EXTERN_SHAREDMEMORY, union)


def _size(self: wasmtime.SharedMemory) -> int:
    return int(ffi.wasmtime_sharedmemory_size(self.ptr()))


@ffi.wasmtime_func_callback_t  # type: ignore[untyped-decorator]
def _trampoline(idx: Any, caller: Any, params: Any, nparams: int, results: Any,
                nresults: int) -> Any:
    caller = _func.Caller(caller)
    try:
        func, result_tys, access_caller = _func.FUNCTIONS.get(idx or 0)
        pyparams = [caller] if access_caller else []
        pyparams += [wasmtime.Val._from_raw(caller, params[i], owned=False).value
                     for i in range(nparams)]
        pyresults = func(*pyparams)
        if nresults == 0:
            if pyresults is not None:
                raise wasmtime.WasmtimeError("callback produced results when it shouldn't")
        elif nresults == 1:
            results[0] = wasmtime.Val._convert_to_raw(caller, result_tys[0], pyresults)
        else:
            if len(pyresults) != nresults:
                raise wasmtime.WasmtimeError("callback produced wrong number of results")
            for i, result in enumerate(pyresults):
                results[i] = wasmtime.Val._convert_to_raw(caller, result_tys[i], result)
        return 0
    except BaseException as e:
        _LOCAL.exception = e
        trap = wasmtime.Trap("python exception")._consume()
        return cast(trap, c_void_p).value
    finally:
        caller._invalidate()


def _maybe_raise_last_exn() -> None:
    exception = getattr(_LOCAL, "exception", None)
    if exception is not None:
        _LOCAL.exception = None
        raise exception


_KNOWN: list[tuple[str, Any]] = []  # (name, owned wasm_valtype_t pointer), made once


def value_type_name(value_type: wasmtime.ValType) -> str:
    """"i32", "i64", "f32", "f64", "v128", or "ref" (anything else); never aborts."""
    if not _KNOWN:
        _KNOWN.extend((name, getattr(wasmtime.ValType, name)())
                      for name in ("i32", "i64", "f32", "f64"))
        _KNOWN.append(("v128", ffi.wasmtime_wasm_valtype_v128()))
    for name, known in _KNOWN:
        pointer = known if name == "v128" else known.ptr()
        if ffi.wasmtime_wasm_valtype_equal(value_type.ptr(), pointer):
            return name
    return "ref"


def apply() -> None:
    wasmtime.SharedMemory._as_extern = _as_extern  # type: ignore[method-assign]
    wasmtime.SharedMemory.size = _size  # type: ignore[method-assign]
    _func.trampoline = _trampoline
    _func.maybe_raise_last_exn = _maybe_raise_last_exn
