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
import functools
import struct
import threading
from collections.abc import Callable, Container
from ctypes import c_void_p, cast
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi  # the bindings' own ctypes layer
from wasmtime import _func
from wasmtime._extern import wrap_extern
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


# Each wasm value type a host function may take or return: its bytes in a 16-byte raw value
# (as struct format) and the ctypes type that writes a result there (truncating like a field).
_RAW_PARAM = {"i32": "i12x", "i64": "q8x", "f32": "f12x", "f64": "d8x"}
_RAW_RESULT: dict[str, Any] = {"i32": ctypes.c_int32, "i64": ctypes.c_int64,
                               "f32": ctypes.c_float, "f64": ctypes.c_double}
_RAW_SIZE = 16  # sizeof(wasmtime_val_raw_t)
# An i32/i64 result as struct format, written masked to its width (as a ctypes field would).
_RAW_INT_RESULT = {"i32": ("<I", 0xFFFFFFFF), "i64": ("<Q", 0xFFFFFFFFFFFFFFFF)}
# The process's address space from its second page on, as one byte view (nothing is read
# until asked): the short way below reads a call's arguments with `unpack_from` and writes
# its result with `pack_into` at the values array's address, with no ctypes object or bytes
# copy per call (~0.7 µs of the ~3 µs a host call costs in Python).
_SPACE_START = 4096
_SPACE = memoryview((ctypes.c_char * ((1 << 48) - _SPACE_START)).from_address(_SPACE_START)
                    ).cast("B")
# env index -> the function's call on its raw values array
_RAW_FUNCTIONS: Slab[Callable[[int], None]] = Slab()
# The unchecked callback, declared with plain addresses: ctypes then hands the trampoline ints
# instead of building pointer objects for the caller and the values on every call.
_RAW_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_size_t, c_void_p, c_void_p, c_void_p, ctypes.c_size_t)
_FINALIZER = ctypes.CFUNCTYPE(None, c_void_p)
_func_new_unchecked = ffi.dll["wasmtime_func_new_unchecked"]  # a prototype of our own
_func_new_unchecked.restype = None
_func_new_unchecked.argtypes = [ctypes.POINTER(ffi.wasmtime_context_t),
                                ctypes.POINTER(ffi.wasm_functype_t), _RAW_CALLBACK, c_void_p,
                                _FINALIZER, ctypes.POINTER(ffi.wasmtime_func_t)]


@_RAW_CALLBACK  # type: ignore[untyped-decorator]
def _raw_trampoline(env: int | None, caller: int | None, values: int | None, count: int) -> int:
    try:
        _RAW_FUNCTIONS.handles[env or 0](values or 0)
        return 0
    except BaseException as e:
        _LOCAL.exception = e
        trap = wasmtime.Trap("python exception")._consume()
        return cast(trap, c_void_p).value or 0


@_FINALIZER  # type: ignore[untyped-decorator]
def _raw_finalize(env: Any) -> None:
    _RAW_FUNCTIONS.deallocate(env or 0)


@functools.lru_cache(maxsize=256)
def _params_struct(params: tuple[str, ...]) -> struct.Struct:
    return struct.Struct("<" + "".join(_RAW_PARAM[p] for p in params))


@functools.lru_cache(maxsize=4)
def _result_struct(result_format: str) -> struct.Struct:
    return struct.Struct(result_format)


def _raw_call(func: Callable[..., Any], params: list[str], results: list[str]
              ) -> Callable[[int], None]:
    """`func` called on a raw values array: the arguments read with one unpack, the results
    written over the first values."""
    params_struct = _params_struct(tuple(params))
    unpack = params_struct.unpack
    size = _RAW_SIZE * len(params)
    string_at = ctypes.string_at
    writers = [_RAW_RESULT[r].from_address for r in results]

    def args(values: int) -> tuple[Any, ...]:
        return unpack(string_at(values, size)) if size else ()

    if len(results) == 1 and size and results[0] in _RAW_INT_RESULT:
        # Most WASI/WASIX calls: integers in, one integer out, the short way.
        unpack_from = params_struct.unpack_from
        result_format, mask = _RAW_INT_RESULT[results[0]]
        pack_into = _result_struct(result_format).pack_into
        space, start, end = _SPACE, _SPACE_START, _SPACE_START + len(_SPACE) - size

        def call_one(values: int) -> None:
            if start <= values <= end:
                at = values - start
                pack_into(space, at, func(*unpack_from(space, at)) & mask)
            else:
                writers[0](values).value = func(*unpack(string_at(values, size)))
        return call_one

    def call(values: int) -> None:
        outcome = func(*args(values))
        if len(writers) == 1:
            writers[0](values).value = outcome
            return
        if not writers:
            if outcome is not None:
                raise wasmtime.WasmtimeError("callback produced results when it shouldn't")
            return
        for i, (write, value) in enumerate(zip(writers, outcome, strict=True)):
            write(values + _RAW_SIZE * i).value = value
    return call


def host_func(store: wasmtime.Store, ty: wasmtime.FuncType, func: Callable[..., Any],
              names: tuple[tuple[str, ...], tuple[str, ...]] | None = None) -> wasmtime.Func:
    """A host function `func(*args)` of type `ty` (numbers only), as `wasmtime.Func` would
    make it, but called without building `Val`s. Falls back to `wasmtime.Func` for types with
    reference values. `names`, the value types of `ty` (params, results) when the caller
    knows them already, spares asking wasmtime for them one by one."""
    if names is None:
        names = (tuple(value_type_name(t) for t in ty.params),
                 tuple(value_type_name(t) for t in ty.results))
    params, results = list(names[0]), list(names[1])
    if not all(n in _RAW_PARAM for n in params + results):
        return wasmtime.Func(store, ty, func)
    index = _RAW_FUNCTIONS.allocate(_raw_call(func, params, results))
    raw = ffi.wasmtime_func_t()
    _func_new_unchecked(store._context(), ty.ptr(), _raw_trampoline, index, _raw_finalize,
                        ctypes.byref(raw))
    return wasmtime.Func._from_raw(raw)


def table_set(store: wasmtime.Store, table: wasmtime.Table, index: int,
              func: wasmtime.Func | None) -> None:
    """`table.set(store, index, func)` for a funcref table (None: a null entry), without the
    bindings' conversion, which makes a TableType and compares ValTypes on every call (~20 µs
    a slot, paid per slot by every group)."""
    value = ffi.wasmtime_val_t(kind=ffi.WASMTIME_FUNCREF.value)
    if isinstance(func, wasmtime.Func):
        value.of.funcref = func._func
    elif func is not None:
        raise TypeError(f"don't know how to convert {func!r} to funcref")
    error = ffi.wasmtime_table_set(store._context(), ctypes.byref(table._table), index,
                                   ctypes.byref(value))
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)


def table_grow(store: wasmtime.Store, table: wasmtime.Table, delta: int) -> int:
    """`table.grow(store, delta, None)` for a funcref table, the same way: the old size."""
    value = ffi.wasmtime_val_t(kind=ffi.WASMTIME_FUNCREF.value)
    previous = ctypes.c_uint64(0)
    error = ffi.wasmtime_table_grow(store._context(), ctypes.byref(table._table),
                                    ctypes.c_uint64(delta), ctypes.byref(value),
                                    ctypes.byref(previous))
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
    return int(previous.value)


def new_instance(store: wasmtime.Store, module: wasmtime.Module, imports: list[Any]
                 ) -> wasmtime.Instance:
    """`wasmtime.Instance(store, module, imports)` without the bindings' per-import type
    dispatch (each import imports the wasmtime package again to test its class)."""
    externs = (ffi.wasmtime_extern_t * len(imports))()
    for i, value in enumerate(imports):
        externs[i] = value._as_extern()
    instance = ffi.wasmtime_instance_t()
    with _func.enter_wasm(store) as trap:
        error = ffi.wasmtime_instance_new(store._context(), module.ptr(), externs,
                                          len(imports), ctypes.byref(instance), trap)
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)
    return wasmtime.Instance._from_raw(instance)


def module_imports(module: wasmtime.Module, start: int = 0,
                   untyped: Container[tuple[str, str]] = ()
                   ) -> list[tuple[str, str, Any, bool]]:
    """(module, name, type, whether a global is an i64) per import of `module` from index
    `start`, in order; the type is a `wasmtime.GlobalType` or `FuncType` for globals and
    functions, else None (what instantiating needs), and None for the (module, name) pairs
    in `untyped` (reading a type is most of the cost). Read through the C API: the
    bindings' `Module.imports` wraps every import, its names and its type in objects (~20 µs
    an import)."""
    owner = _ImportTypeList()
    ffi.wasmtime_module_imports(module.ptr(), ctypes.byref(owner.vec))
    found = []
    for i in range(start, owner.vec.size):
        item = owner.vec.data[i]
        names = [ffi.wasm_importtype_module(item).contents, ffi.wasm_importtype_name(item)]
        module_name = ctypes.string_at(names[0].data, names[0].size).decode()
        name_vec = names[1].contents
        name = ctypes.string_at(name_vec.data, name_vec.size).decode()
        ty: Any = None
        is_i64 = False
        if (module_name, name) in untyped:
            found.append((module_name, name, ty, is_i64))
            continue
        extern = ffi.wasm_importtype_type(item)
        global_type = ffi.wasm_externtype_as_globaltype(extern)
        if global_type:
            ty = wasmtime.GlobalType._from_ptr(global_type, owner)
            is_i64 = value_type_name(ty.content) == "i64"
        else:
            func_type = ffi.wasm_externtype_as_functype(extern)
            if func_type:
                ty = wasmtime.FuncType._from_ptr(func_type, owner)
        found.append((module_name, name, ty, is_i64))
    return found


def module_import_count(module: wasmtime.Module) -> int:
    """How many imports `module` has (one C call; no Python object per import)."""
    owner = _ImportTypeList()
    ffi.wasmtime_module_imports(module.ptr(), ctypes.byref(owner.vec))
    return int(owner.vec.size)


_IMPORT_TYPES: dict[str, tuple[wasmtime.GlobalType | wasmtime.FuncType, bool]] = {}


def import_type(text: str) -> tuple[wasmtime.GlobalType | wasmtime.FuncType, bool]:
    """The type a plan's binding names (shared/plan.py `type_text`), and whether it is an
    i64 global; made once per process (what is made of it copies it)."""
    made = _IMPORT_TYPES.get(text)
    if made is None:
        if text.startswith("("):
            params, _, results = text.partition(" -> ")
            made = (wasmtime.FuncType([_value_type(t) for t in params[1:-1].split()],
                                      [_value_type(t) for t in results[1:-1].split()]), False)
        else:
            mutable, _, value = text.rpartition(" ")
            if value not in ("i32", "i64") or mutable not in ("", "mut"):
                raise ValueError(f"not an integer global type: {text!r}")
            made = (wasmtime.GlobalType(_value_type(value), bool(mutable)), value == "i64")
        _IMPORT_TYPES[text] = made
    return made


def _value_type(name: str) -> wasmtime.ValType:
    if name not in ("i32", "i64", "f32", "f64"):
        raise ValueError(f"not a number type: {name!r}")
    made: wasmtime.ValType = getattr(wasmtime.ValType, name)()
    return made


class _ImportTypeList:
    """Owns an import type vector (the types read from it refer to it)."""

    def __init__(self) -> None:
        self.vec = ffi.wasm_importtype_vec_t(0, None)

    def __del__(self) -> None:
        ffi.wasm_importtype_vec_delete(ctypes.byref(self.vec))


def call_nullary(store: wasmtime.Store, func: wasmtime.Func) -> None:
    """`func(store)` for a function of type () -> (), without the type objects the bindings
    make for every call; a function of another type raises WasmtimeError (wasmtime checks)."""
    with _func.enter_wasm(store) as trap:
        error = ffi.wasmtime_func_call(store._context(), ctypes.byref(func._func), None, 0,
                                       None, 0, trap)
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)


_EXTERN_CLASSES: dict[int, Any] = {}


def instance_export(store: wasmtime.Store, instance: wasmtime.Instance, name: str) -> Any:
    """One export of `instance` by name, or None, without wrapping every other export (as
    `instance.exports(store)` does the first time)."""
    item = ffi.wasmtime_extern_t()
    encoded = name.encode()
    if not ffi.wasmtime_instance_export_get(store._context(), ctypes.byref(instance._instance),
                                            encoded, len(encoded), ctypes.byref(item)):
        return None
    if not _EXTERN_CLASSES:
        _EXTERN_CLASSES.update({
            ffi.WASMTIME_EXTERN_FUNC.value: lambda i: wasmtime.Func._from_raw(i.of.func),
            ffi.WASMTIME_EXTERN_GLOBAL.value: lambda i: wasmtime.Global._from_raw(i.of.global_),
            ffi.WASMTIME_EXTERN_TABLE.value: lambda i: wasmtime.Table._from_raw(i.of.table)})
    wrap = _EXTERN_CLASSES.get(int(item.kind))
    return wrap(item) if wrap is not None else wrap_extern(item)


def const_global(store: wasmtime.Store, ty: wasmtime.GlobalType, is_i64: bool, value: int
                 ) -> wasmtime.Global:
    """`wasmtime.Global(store, ty, Val.i32/i64(value))` for an integer global, without the
    bindings' conversion through `Val` (which asks the type for its content each time)."""
    raw: Any = ffi.wasmtime_val_t()  # ctypes fields take ints
    if is_i64:
        raw.kind = _I64
        raw.of.i64 = value
    else:
        raw.kind = _I32
        raw.of.i32 = value
    made = ffi.wasmtime_global_t()
    error = ffi.wasmtime_global_new(store._context(), ty.ptr(), ctypes.byref(raw),
                                    ctypes.byref(made))
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
    return wasmtime.Global._from_raw(made)


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
