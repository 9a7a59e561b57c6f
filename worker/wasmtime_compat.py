"""Workarounds for bugs of the wasmtime 50.0.1 Python bindings, in one place.

- `SharedMemory._as_extern` wraps its pointer in one `ctypes.pointer` too many, so a shared
  memory cannot be passed to `Instance(...)` or `Linker.define`.
- `SharedMemory.size` passes `byref(ptr)` where the C API wants the pointer itself.
- A Python exception raised by a host function travels back to the wasm caller through one
  module-global slot, so two threads whose host functions raise at once can swap (or lose)
  each other's exceptions. The slot is made per thread: the same trampoline, storing into a
  thread-local (host functions always run on the thread that called into wasm).

And one faster way in: `host_func` makes a host function through the C API's unchecked
callbacks (arguments and results as raw values in one array), skipping the `Val` objects the
bindings build for every argument of every call (measured: ~0.8 µs a call instead of ~12 µs
for an (i32) -> i32 function).
- Not a bug, a cost: the bindings' trampoline wraps every argument in a `Val` and a `Caller`,
  several times the cost of the call; integer-only host functions skip that here.
- Asking a `ValType` of kind v128 for its kind (`str`, `==`) aborts the whole process (a Rust
  panic in the C API): `value_type_name` tells the kinds apart by comparing with
  `wasmtime_wasm_valtype_equal`, which never asks.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from ctypes import c_void_p, cast
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi  # the bindings' own ctypes layer
from wasmtime import _func
from wasmtime._slab import Slab

_LOCAL = threading.local()


def _as_extern(self: wasmtime.SharedMemory) -> ffi.wasmtime_extern_t:
    union = ffi.wasmtime_extern_union(sharedmemory=self.ptr())
    return ffi.wasmtime_extern_t(ffi.WASMTIME_EXTERN_SHAREDMEMORY, union)


def _size(self: wasmtime.SharedMemory) -> int:
    return int(ffi.wasmtime_sharedmemory_size(self.ptr()))


_I32 = ffi.WASMTIME_I32.value
_I64 = ffi.WASMTIME_I64.value
# function index -> (its result types, their kinds if all are i32/i64). Indices are reused
# when functions are freed: an entry counts only for the very result-type list it was made
# from (held here, so no other list can take its identity).
_RESULT_KINDS: dict[int, tuple[Any, tuple[int, ...] | None]] = {}


def _result_kinds(idx: int, result_tys: Any) -> tuple[int, ...] | None:
    cached = _RESULT_KINDS.get(idx)
    if cached is not None and cached[0] is result_tys:
        return cached[1]
    names = [value_type_name(t) for t in result_tys]
    kinds = tuple(_I32 if n == "i32" else _I64 for n in names) \
        if all(n in ("i32", "i64") for n in names) else None
    _RESULT_KINDS[idx] = (result_tys, kinds)
    return kinds


@ffi.wasmtime_func_callback_t  # type: ignore[untyped-decorator]
def _trampoline(idx: Any, caller: Any, params: Any, nparams: int, results: Any,
                nresults: int) -> Any:
    """Host functions of integers only (every WASI/WASIX call) take a short path: their
    arguments and result move as plain ints, with no `Val` or `Caller` objects (which cost
    several times the call itself); anything else goes the bindings' way."""
    try:
        func, result_tys, access_caller = _func.FUNCTIONS.get(idx or 0)
        kinds = None if access_caller else _result_kinds(idx or 0, result_tys)
        if kinds is not None and nresults <= 1:
            args = []
            for i in range(nparams):
                raw = params[i]
                kind = raw.kind
                if kind == _I32:
                    args.append(raw.of.i32)
                elif kind == _I64:
                    args.append(raw.of.i64)
                else:
                    break
            else:
                value = func(*args)
                if nresults == 0:
                    if value is not None:
                        raise wasmtime.WasmtimeError("callback produced results when it "
                                                     "shouldn't")
                elif kinds[0] == _I32:
                    results[0].kind = _I32
                    results[0].of.i32 = value
                else:
                    results[0].kind = _I64
                    results[0].of.i64 = value
                return 0
    except BaseException as e:
        _LOCAL.exception = e
        trap = wasmtime.Trap("python exception")._consume()
        return cast(trap, c_void_p).value
    return _slow_trampoline(idx, caller, params, nparams, results, nresults)


def _slow_trampoline(idx: Any, caller: Any, params: Any, nparams: int, results: Any,
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


# A raw value's field for each wasm value type a host function may take or return.
_RAW_FIELDS = {"i32": "i32", "i64": "i64", "f32": "f32", "f64": "f64"}
# env index -> (callable, parameter fields, result fields)
_RAW_FUNCTIONS: Slab[tuple[Callable[..., Any], list[str], list[str]]] = Slab()


@ffi.wasmtime_func_unchecked_callback_t  # type: ignore[untyped-decorator]
def _raw_trampoline(env: Any, caller: Any, values: Any, count: int) -> Any:
    try:
        func, params, results = _RAW_FUNCTIONS.get(env or 0)
        outcome = func(*[getattr(values[i], field) for i, field in enumerate(params)])
        if len(results) == 1:
            setattr(values[0], results[0], outcome)
        elif results:
            for i, (field, value) in enumerate(zip(results, outcome, strict=True)):
                setattr(values[i], field, value)
        elif outcome is not None:
            raise wasmtime.WasmtimeError("callback produced results when it shouldn't")
        return 0
    except BaseException as e:
        _LOCAL.exception = e
        trap = wasmtime.Trap("python exception")._consume()
        return cast(trap, c_void_p).value


@ctypes.CFUNCTYPE(None, c_void_p)  # type: ignore[untyped-decorator]
def _raw_finalize(env: Any) -> None:
    _RAW_FUNCTIONS.deallocate(env or 0)


def host_func(store: wasmtime.Store, ty: wasmtime.FuncType, func: Callable[..., Any]
              ) -> wasmtime.Func:
    """A host function `func(*args)` of type `ty` (numbers only), as `wasmtime.Func` would
    make it, but called without building `Val`s. Falls back to `wasmtime.Func` for types with
    reference values."""
    names = [value_type_name(t) for t in ty.params], [value_type_name(t) for t in ty.results]
    if not all(n in _RAW_FIELDS for n in names[0] + names[1]):
        return wasmtime.Func(store, ty, func)
    index = _RAW_FUNCTIONS.allocate((func, [_RAW_FIELDS[n] for n in names[0]],
                                     [_RAW_FIELDS[n] for n in names[1]]))
    raw = ffi.wasmtime_func_t()
    ffi.wasmtime_func_new_unchecked(store._context(), ty.ptr(), _raw_trampoline, index,
                                    _raw_finalize, ctypes.byref(raw))
    return wasmtime.Func._from_raw(raw)


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
