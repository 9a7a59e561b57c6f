"""Host functions written in C (futexcalls.c), where Python's cost per call is most of the
call: futex_wake and futex_wake_all (3-6 µs of CPU each through ctypes and Python; the
syscall alone is ~0.2-0.5 µs). Optional: `scripts/setup-venv` builds `_futexcalls.so` beside
the source with the system's C compiler; without it, or with WASMGROUP_NATIVE_FUTEX=0, the
Python functions of wasix.py serve the calls."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

from wasmgroup.worker.wasmtime_compat import _FINALIZER, _RAW_CALLBACK, _func_new_unchecked

LIBRARY = Path(__file__).with_name("_futexcalls.so")
SOURCE = Path(__file__).with_name("futexcalls.c")
NATIVE_CALLS = {"futex_wake": "wg_futex_wake", "futex_wake_all": "wg_futex_wake_all"}
_NO_FINALIZER = _FINALIZER(0)


class _Memory(ctypes.Structure):  # struct wg_memory
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_uint64)]


def load(path: Path = LIBRARY) -> ctypes.CDLL | None:
    """The library, or None when it is not built, is older than its source, or is turned off."""
    if os.environ.get("WASMGROUP_NATIVE_FUTEX", "1") == "0":
        return None
    try:
        if path == LIBRARY and path.stat().st_mtime < SOURCE.stat().st_mtime:
            return None  # built from an older source: not to be trusted
        return ctypes.CDLL(str(path))
    except OSError:
        return None


_library: ctypes.CDLL | bool | None = False  # False: not looked for yet


def library() -> ctypes.CDLL | None:
    global _library
    if _library is False:
        _library = load()
    return _library if isinstance(_library, ctypes.CDLL) else None


class NativeCalls:
    """The C host functions of one store over one fixed memory; holds what they point at
    for as long as the store lives."""

    def __init__(self, lib: ctypes.CDLL, base: int, length: int) -> None:
        self._lib = lib
        self._memory = _Memory(base, length)
        self._callbacks: list[Any] = []

    def func(self, store: wasmtime.Store, ty: wasmtime.FuncType, name: str) -> wasmtime.Func:
        symbol = getattr(self._lib, NATIVE_CALLS[name])
        callback = _RAW_CALLBACK(ctypes.cast(symbol, ctypes.c_void_p).value or 0)
        self._callbacks.append(callback)
        raw = ffi.wasmtime_func_t()
        _func_new_unchecked(store._context(), ty.ptr(), callback,
                            ctypes.addressof(self._memory), _NO_FINALIZER, ctypes.byref(raw))
        return wasmtime.Func._from_raw(raw)
