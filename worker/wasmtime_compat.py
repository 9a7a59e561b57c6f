"""Workarounds for two bugs of the wasmtime 50.0.1 Python bindings, in one place.

- `SharedMemory._as_extern` wraps its pointer in one `ctypes.pointer` too many, so a shared
  memory cannot be passed to `Instance(...)` or `Linker.define`.
- `SharedMemory.size` passes `byref(ptr)` where the C API wants the pointer itself.
"""

from __future__ import annotations

import wasmtime
from wasmtime import _ffi as ffi  # the bindings' own ctypes layer


def _as_extern(self: wasmtime.SharedMemory) -> ffi.wasmtime_extern_t:
    union = ffi.wasmtime_extern_union(sharedmemory=self.ptr())
    return ffi.wasmtime_extern_t(ffi.WASMTIME_EXTERN_SHAREDMEMORY, union)


def _size(self: wasmtime.SharedMemory) -> int:
    return int(ffi.wasmtime_sharedmemory_size(self.ptr()))


def apply() -> None:
    wasmtime.SharedMemory._as_extern = _as_extern  # type: ignore[method-assign]
    wasmtime.SharedMemory.size = _size  # type: ignore[method-assign]
