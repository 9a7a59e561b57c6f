"""Safe points inside running guest code, through wasmtime's epoch interruption.

Every store gets a deadline of one epoch tick. Ticking the engine's epoch (from any thread)
makes each store running wasm call `on_tick` on its own thread at the next loop back-edge or
function entry; a store not running wasm calls it when it next enters wasm. `on_tick` applies
pending link operations or asks the guest to stop; it returns True to continue. This is the
one place that touches the raw epoch-callback API of the C bindings.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.POINTER(ffi.wasmtime_context_t),
                             ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64),
                             ctypes.POINTER(ffi.wasmtime_update_deadline_kind_t))
_FINALIZER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_CONTINUE = 0
FAR_FUTURE = 1 << 62

STOP_MESSAGE = "wasmgroup: stopped by the coordinator"


def install(store: wasmtime.Store, on_tick: Callable[[], bool]) -> Any:
    """Call `on_tick` at the first safe point after each epoch tick. Returns the ctypes
    objects that must stay alive as long as the store."""

    def callback(_ctx: Any, _data: Any, delta: Any, kind: Any) -> int:
        try:
            # Wasm called from inside the callback must not hit the expired deadline.
            store.set_epoch_deadline(FAR_FUTURE)
            keep_going = on_tick()
        except BaseException:  # never let an exception cross into the C callback
            keep_going = False
        delta[0] = 1
        kind[0] = _CONTINUE
        if keep_going:
            return 0
        message = STOP_MESSAGE.encode()
        error = ffi.wasmtime_error_new(ctypes.create_string_buffer(message))
        return ctypes.cast(error, ctypes.c_void_p).value or 0

    c_callback = _CALLBACK(callback)
    c_finalizer = _FINALIZER(lambda _data: None)
    ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), c_callback, None, c_finalizer)
    store.set_epoch_deadline(1)
    return (c_callback, c_finalizer)
