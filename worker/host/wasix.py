"""WASIX (`wasix_32v1`) and wasi-threads host functions, as wasix-libc calls them.

Each function takes and returns plain ints (the guest's i32/i64 arguments) and returns a WASI
errno. They reach the linker through the group's `LinkService`, and memory through
`GuestMemory`, so they hold no state of their own.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import wasmtime

from wasmgroup.shared import closure, hostabi
from wasmgroup.shared.cpus import usable_cpus
from wasmgroup.shared.errors import LinkError, UnsupportedCall
from wasmgroup.shared.futex import futex_wake
from wasmgroup.shared.wasi import WasiError
from wasmgroup.shared.wasm import FuncType
from wasmgroup.worker.memview import GuestFault
from wasmgroup.worker.wasmtime_compat import value_type_name

if TYPE_CHECKING:
    from wasmgroup.worker.group import InstanceGroup

ESUCCESS, EAGAIN, EFAULT, EINVAL, ENOENT, ENOEXEC = 0, 6, 21, 28, 44, 45
ENOTSUP, EOVERFLOW, ESRCH, EMEMVIOLATION = 58, 61, 71, 78

RTLD_DEFAULT = 0
MAIN_HANDLE = 1


class GuestExit(Exception):
    """The guest asked to end the program (proc_exit2)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"exit({code})")
        self.code = code


class ProgramStopping(Exception):
    """The program is ending (another thread's exit or trap, Ctrl-C): leave guest code."""


class ThreadExit(Exception):
    """The calling thread ends (thread_exit); the program goes on unless it was the last."""

    def __init__(self, code: int) -> None:
        super().__init__(f"thread_exit({code})")
        self.code = code


def _write_error(group: InstanceGroup, buf: int, size: int, message: str) -> None:
    """The message, NUL-terminated and truncated to the guest's buffer (as the seed does)."""
    if size <= 0:
        return
    data = message.encode("utf-8")[: size - 1] + b"\0"
    group.memory.write(buf, data)


def _faults_to_errno(fn: Callable[..., int]) -> Callable[..., int]:
    def wrapper(*args: int) -> int:
        try:
            return fn(*args)
        except GuestFault:
            return EMEMVIOLATION
    wrapper.__name__ = fn.__name__
    return wrapper


def make_wasix_functions(group: InstanceGroup) -> dict[str, Callable[..., int | None]]:
    """The `wasix_32v1` functions for one group, by import name."""
    from wasmgroup.worker.host import signals  # it imports GuestExit from here

    @_faults_to_errno
    def dlopen(path: int, path_len: int, flags: int, err_buf: int, err_len: int,
               ld_path: int, ld_path_len: int, out_handle: int) -> int:
        group.service_pending()
        if path == 0:
            group.memory.write_u32(out_handle, MAIN_HANDLE)
            return ESUCCESS
        name = group.memory.read_str(path, path_len)
        lib_path = group.memory.read_str(ld_path, ld_path_len) if ld_path and ld_path_len else ""
        entries = [e for e in lib_path.split(":") if e] if ld_path else None
        try:
            # A name loaded before needs no round trip (the seed returns its handle at once).
            handle = group.loaded_handle(name) or group.service.dlopen(group, name, entries)
        except LinkError as err:
            _write_error(group, err_buf, err_len, f"failed to load module: {err}")
            return ENOEXEC
        group.memory.write_u32(out_handle, handle)
        return ESUCCESS

    @_faults_to_errno
    def dlsym(handle: int, symbol: int, symbol_len: int, err_buf: int, err_len: int,
              out: int) -> int:
        group.service_pending()
        name = group.memory.read_str(symbol, symbol_len)
        try:
            address = group.known_dlsym(handle, name)
            if address is None:
                address = group.service.dlsym(group, handle, name)
                group.remember_dlsym(handle, name, address)
        except LinkError as err:
            _write_error(group, err_buf, err_len, str(err))
            return EINVAL
        value = address.value
        if address.kind == "tls":
            value += group.tls_base(address.handle)
        group.memory.write_u32(out, value)
        return ESUCCESS

    def dl_invalid_handle(handle: int) -> int:
        group.service_pending()
        if group.is_linked_side_module(handle):
            return ESUCCESS
        return ESUCCESS if group.service.is_side_module(handle) else ENOEXEC

    # The futex calls are the hot path of every mutex and condition variable handoff: plain
    # bounds checks and single-byte stores, no copies (a wait or a wake is a few µs of Python).
    def futex_wait_(futex: int, expected: int, timeout: int, ret_woken: int) -> int:
        memory = group.memory
        _, length = memory.extent()
        if not (0 <= futex <= length - 4 and 0 <= ret_woken < length):
            return EMEMVIOLATION
        timeout_ns = None
        if timeout:  # an option_timestamp: tag u8, padding, u64 nanoseconds
            view = memory.view
            try:
                tag = view[timeout] if view is not None and 0 < timeout < length else (
                    memory.read(timeout, 1)[0])
                if tag == 1:
                    timeout_ns = int.from_bytes(memory.read(timeout + 8, 8), "little")
            except GuestFault:
                return EMEMVIOLATION
        outcome = group.futex_wait(futex, expected, timeout_ns)
        memory.write_u8(ret_woken, 0 if outcome == "timeout" else 1)
        return ESUCCESS

    def wake(futex: int, ret_woken: int, count: int) -> int:
        base, length = group.memory.extent()
        if not (0 <= futex <= length - 4 and 0 <= ret_woken < length):
            return EMEMVIOLATION
        group.memory.write_u8(ret_woken, 1 if futex_wake(base + futex, count) else 0)
        return ESUCCESS

    def futex_wake_(futex: int, ret_woken: int) -> int:
        return wake(futex, ret_woken, 1)

    def futex_wake_all(futex: int, ret_woken: int) -> int:
        return wake(futex, ret_woken, 0x7FFFFFFF)

    def thread_exit(code: int) -> None:
        group.thread_exit(code)

    def proc_exit2(code: int) -> None:
        raise GuestExit(code)

    def thread_signal(tid: int, signal: int) -> int:
        if not signals.is_own_thread(group, tid):
            return ESUCCESS  # not delivered to other threads (host/signals.py)
        return signals.raise_signal(group, signal)

    def proc_signal(pid: int, signal: int) -> int:
        if pid not in (0, group.program_id):
            return ESRCH  # a guest sees no other process
        return signals.raise_signal(group, signal)

    def callback_signal(name: int, name_len: int) -> None:
        try:
            group.signals.callback = group.memory.read_str(name, name_len)
        except GuestFault:
            group.signals.callback = None  # nothing to deliver through

    @_faults_to_errno
    def proc_signals_sizes_get(ret: int) -> int:
        group.memory.write_u32(ret, 0)
        return ESUCCESS

    def proc_signals_get(buf: int) -> int:
        return ESUCCESS

    def thread_sleep(duration_ns: int) -> int:
        group.sleep_until(time.monotonic_ns() + max(duration_ns, 0))
        return ESUCCESS

    def thread_spawn_v2(start: int, ret_tid: int) -> int:
        return group.spawn_thread_v2(start, ret_tid)

    @_faults_to_errno
    def thread_id(ret: int) -> int:
        group.memory.write_u32(ret, group.thread_id)
        return ESUCCESS

    @_faults_to_errno
    def getcwd(buf: int, len_ptr: int) -> int:
        cwd = group.service.cwd().encode() + b"\0"
        capacity = group.memory.read_u32(len_ptr)
        group.memory.write_u32(len_ptr, len(cwd) - 1)
        if capacity < len(cwd):
            return EOVERFLOW
        group.memory.write(buf, cwd)
        return ESUCCESS

    @_faults_to_errno
    def chdir(path: int, path_len: int) -> int:
        group.service_pending()
        target = group.memory.read_str(path, path_len)
        return ESUCCESS if group.service.change_directory(target) else ENOENT

    @_faults_to_errno
    def thread_parallelism(ret: int) -> int:
        group.memory.write_u32(ret, usable_cpus())
        return ESUCCESS

    @_faults_to_errno
    def proc_id(ret: int) -> int:
        group.memory.write_u32(ret, group.program_id)  # one id for all the program's threads
        return ESUCCESS

    @_faults_to_errno
    def fd_fdflags_get(fd: int, ret: int) -> int:
        try:
            group.descriptors.get(fd)
        except WasiError as err:
            return err.code
        group.memory.write(ret, b"\0\0")  # no close-on-exec: there is no exec
        return ESUCCESS

    def fd_fdflags_set(fd: int, flags: int) -> int:
        try:
            group.descriptors.get(fd)
        except WasiError as err:
            return err.code
        return ESUCCESS

    closures = make_closure_functions(group)
    return {
        **closures,
        "chdir": chdir, "thread_parallelism": thread_parallelism, "proc_id": proc_id,
        "fd_fdflags_get": fd_fdflags_get, "fd_fdflags_set": fd_fdflags_set,
        "dlopen": dlopen, "dlsym": dlsym, "dl_invalid_handle": dl_invalid_handle,
        "futex_wait": futex_wait_, "futex_wake": futex_wake_, "futex_wake_all": futex_wake_all,
        "thread_exit": thread_exit, "proc_exit2": proc_exit2, "thread_signal": thread_signal,
        "proc_signal": proc_signal,
        "callback_signal": callback_signal, "proc_signals_get": proc_signals_get,
        "proc_signals_sizes_get": proc_signals_sizes_get, "thread_spawn_v2": thread_spawn_v2,
        "thread_sleep": thread_sleep,
        "thread_id": thread_id, "getcwd": getcwd,
    }


_PACK = {"i32": "<I", "i64": "<Q", "f32": "<f", "f64": "<d"}


def _table_func(group: InstanceGroup, slot: int) -> wasmtime.Func | None:
    """The function in the program's table slot `slot`, or None (null or out of range)."""
    table = group.program_table()
    if table is None or not 0 <= slot < table.size(group.store):
        return None
    entry = table.get(group.store, slot)
    return entry if isinstance(entry, wasmtime.Func) else None


def _signature(group: InstanceGroup, func: wasmtime.Func) -> tuple[tuple[str, ...],
                                                                    tuple[str, ...]]:
    ty = func.type(group.store)
    return (tuple(value_type_name(p) for p in ty.params),
            tuple(value_type_name(r) for r in ty.results))


def _unpack(kind: str, raw: bytes) -> int | float:
    value = struct.unpack(_PACK[kind], raw)[0]
    if kind == "i32" and value >= 1 << 31:
        return int(value) - (1 << 32)
    if kind == "i64" and value >= 1 << 63:
        return int(value) - (1 << 64)
    return value  # type: ignore[no-any-return]


def _pack(kind: str, value: int | float) -> bytes:
    if kind in ("i32", "i64"):
        return struct.pack(_PACK[kind], int(value) & (0xFFFFFFFF if kind == "i32"
                                                      else 0xFFFFFFFFFFFFFFFF))
    return struct.pack(_PACK[kind], value)


def make_closure_functions(group: InstanceGroup) -> dict[str, Callable[..., int | None]]:
    """`closure_allocate/prepare/free`, `call_dynamic` and `reflect_signature` (shared/closure.py
    has the value layout). Slots are the group's table; closure slots are handed out and
    filled by the coordinator in every group at once."""

    # Closures live in the table every group keeps identical: a main that defines its own
    # table (or memory) is not dynamically linked, and gets ENOTSUP (as the seed's Notsup).
    @_faults_to_errno
    def closure_allocate(ret: int) -> int:
        group.service_pending()
        if group.region is None or group.program_table(shared_only=True) is None:
            return ENOTSUP
        group.memory.read(ret, 4)  # bounds check before a slot is taken for nothing
        try:
            slot = group.service.closure_allocate(group)
        except LinkError:
            return EFAULT
        group.memory.write_u32(ret, slot)
        return ESUCCESS

    @_faults_to_errno
    def closure_prepare(backing: int, slot: int, arg_types: int, n_args: int,
                        result_types: int, n_results: int, env: int) -> int:
        group.service_pending()
        if group.region is None:
            return ENOTSUP
        if max(n_args, n_results) > closure.MAX_VALUES:
            return EINVAL
        try:
            params = closure.decode_types(group.memory.read(arg_types, n_args))
            results = closure.decode_types(group.memory.read(result_types, n_results))
        except ValueError:
            return EINVAL
        if group.region is None or group.stack_pointer is None \
                or group.program_table(shared_only=True) is None:
            return ENOTSUP  # closures need a dynamically linked program (as in the seed)
        try:
            group.service.closure_prepare(group, slot, backing, env, FuncType(params, results))
        except LinkError:
            return EINVAL
        return ESUCCESS

    def closure_free(slot: int) -> int:
        group.service.closure_free(group, slot)
        return ESUCCESS  # an unknown or free slot is no error (as in the seed)

    @_faults_to_errno
    def call_dynamic(slot: int, values: int, values_len: int, results: int, results_len: int,
                     strict: int) -> int:
        group.service_pending()
        if group.region is None:
            return ENOTSUP  # the main module's own memory is not reachable from the host
        func = _table_func(group, slot)
        if func is None:
            return EINVAL
        params, result_types = _signature(group, func)
        if any(t not in _PACK for t in (*params, *result_types)):
            return EINVAL  # v128 and references cannot cross the host here
        need_in = closure.packed_size(params)
        need_out = closure.packed_size(result_types)
        if strict & 0xFF and (values_len != need_in or results_len < need_out):
            return EINVAL
        # Not strict: missing argument bytes are zeros, extra ones ignored.
        raw = group.memory.read(values, min(values_len, need_in)).ljust(need_in, b"\0")
        args, offset = [], 0
        for kind in params:
            size = closure.VALUE_SIZES[kind]
            args.append(_unpack(kind, raw[offset:offset + size]))
            offset += size
        fits = min(results_len, need_out)  # what does not fit is dropped (not strict)
        if fits:
            group.memory.read(results, fits)  # a bad buffer faults before the call
        outcome = func(group.store, *args)
        values_out = [] if outcome is None else (
            list(outcome) if isinstance(outcome, (list, tuple)) else [outcome])
        packed = b"".join(_pack(k, v) for k, v in zip(result_types, values_out, strict=True))
        if fits:
            group.memory.write(results, packed[:fits])
        return ESUCCESS

    @_faults_to_errno
    def reflect_signature(slot: int, arg_types: int, arg_cap: int, result_types: int,
                          result_cap: int, ret: int) -> int:
        group.service_pending()
        if group.region is None:
            return ENOTSUP
        func = _table_func(group, slot)
        if func is None:
            group.memory.write(ret, bytes(6))
            return EINVAL
        params, results = _signature(group, func)
        if any(t not in closure.VALUE_SIZES for t in (*params, *results)):
            group.memory.write(ret, bytes(6))
            return EINVAL
        # A closure slot may hold another signature once prepared again.
        cacheable = slot not in group.closures
        group.memory.write(ret, struct.pack("<BxHH", cacheable, len(params), len(results)))
        if len(params) > (arg_cap & 0xFFFF) or len(results) > (result_cap & 0xFFFF):
            return EOVERFLOW
        if params:
            group.memory.write(arg_types, closure.encode_types(params))
        if results:
            group.memory.write(result_types, closure.encode_types(results))
        return ESUCCESS

    return {"closure_allocate": closure_allocate, "closure_prepare": closure_prepare,
            "closure_free": closure_free, "call_dynamic": call_dynamic,
            "reflect_signature": reflect_signature}


def make_unimplemented(module: str, name: str) -> Callable[..., int | None]:
    """A call of the ABI that wasmgroup does not implement: ENOSYS, or, where the call has no
    errno to return (or the guest could not survive one), the program stops naming it."""
    if hostabi.status(module, name, hostabi.abi_signature(module, name)) == hostabi.STOPS:
        message = hostabi.stop_reason(module, name)

        def stop(*args: int) -> None:
            raise UnsupportedCall(message)
        return stop

    def nosys(*args: int) -> int:
        return hostabi.ERRNO_NOSYS
    return nosys


def make_wasi_threads_functions(group: InstanceGroup) -> dict[str, Callable[..., int | None]]:
    def thread_spawn(start_arg: int) -> int:
        return group.spawn_thread(start_arg)

    return {"thread-spawn": thread_spawn}


__all__ = ["GuestExit", "ProgramStopping", "ThreadExit", "make_unimplemented",
           "make_wasi_threads_functions", "make_wasix_functions"]
