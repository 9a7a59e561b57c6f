"""The functions the runtime provides to guests, by import module and name.

Like Wasmer, every call of the ABI (`wasi_snapshot_preview1`, `wasix_32v1`, wasi-threads) can
be imported, with its exact signature (hostabi_table.py, generated from wasix-libc's headers):
programs import far more than they call. `status` says what a call does here: implemented,
returns ENOSYS, or stops the program (a call with no errno to return, or one whose failure the
guest cannot survive). `check(module, name, type)` says what is wrong with an import outside the
ABI, so a program fails at start (or a dlopen fails) with a message naming it, never later.
"""

from __future__ import annotations

from wasmgroup.shared import hostabi_table
from wasmgroup.shared.wasm import FuncType

I32 = "i32"


def _f(params: int, results: int = 1) -> FuncType:
    return FuncType((I32,) * params, (I32,) * results)


# wasix_32v1 calls wasmgroup implements: dl*, futexes, threads, exit, signals, cwd, fd flags,
# dup, pipe, path_open2, closures and dynamic calls.
WASIX_32V1: dict[str, FuncType] = {
    "dlopen": _f(8),
    "dlsym": _f(6),
    "dl_invalid_handle": _f(1),
    "futex_wait": _f(4),
    "futex_wake": _f(2),
    "futex_wake_all": _f(2),
    "thread_exit": _f(1, 0),
    "proc_exit2": _f(1, 0),
    "thread_signal": _f(2),
    "proc_signal": _f(2),
    "callback_signal": _f(2, 0),
    "proc_signals_get": _f(1),
    "proc_signals_sizes_get": _f(1),
    "thread_spawn_v2": _f(2),
    "thread_sleep": FuncType(("i64",), (I32,)),
    "thread_id": _f(1),
    "getcwd": _f(2),
    "chdir": _f(2),
    "thread_parallelism": _f(1),
    "proc_id": _f(1),
    "fd_fdflags_get": _f(2),
    "fd_fdflags_set": _f(2),
    "fd_dup2": _f(4),
    "fd_dup": _f(2),
    "fd_pipe": _f(2),
    "closure_allocate": _f(1),
    "closure_prepare": _f(7),
    "closure_free": _f(1),
    "call_dynamic": _f(6),
    "reflect_signature": _f(6),
    "path_open2": FuncType((I32, I32, I32, I32, I32, "i64", "i64", I32, I32, I32), (I32,)),
}

WASI_THREADS: dict[str, FuncType] = {"thread-spawn": _f(1)}

# Imports that only the load-time rewrite adds (orchestrator/rewrite.py), never a guest.
HELPER_MODULE = "wasmgroup"
HELPERS: dict[str, FuncType] = {
    "memory_size": FuncType((), (I32,)),
    "memory_grow": FuncType((I32,), (I32,)),
    "atomic_notify": FuncType((I32, I32, I32), (I32,)),
    "atomic_wait32": FuncType((I32, I32, "i64", I32), (I32,)),
    "atomic_wait64": FuncType((I32, "i64", "i64", I32), (I32,)),
}


IMPLEMENTED = "implemented"
ENOSYS = "enosys"  # returns WASI errno 52 (ENOSYS) when called
STOPS = "stops"  # ends the program with a message when called
UNKNOWN = "unknown"  # outside the ABI: the program cannot start

ERRNO_NOSYS = 52

_ABI: dict[str, dict[str, FuncType]] = {
    module: {name: FuncType(tuple(params.split()), tuple(results.split()))
             for name, (params, results) in table.items()}
    for module, table in (("wasi_snapshot_preview1", hostabi_table.WASI_SNAPSHOT_PREVIEW1),
                          ("wasix_32v1", hostabi_table.WASIX_32V1))}
_ABI["wasi_unstable"] = _ABI["wasi_snapshot_preview1"]
_ABI["wasi"] = WASI_THREADS

_NO_ASYNCIFY = ("wasix-libc's setjmp/longjmp need asyncify, which wasmgroup cannot run; build "
                "setjmp code with wasm exception handling instead (clang 20 or later: "
                "-mexception-handling -mllvm -wasm-enable-sjlj -mllvm -wasm-use-legacy-eh=false)")
# Why a call that is not implemented stops the program instead of returning ENOSYS: setjmp
# would only trap on `unreachable` after an error return.
STOP_REASONS: dict[str, str] = {"stack_checkpoint": _NO_ASYNCIFY, "stack_restore": _NO_ASYNCIFY}


def abi_signature(module: str, name: str) -> FuncType | None:
    """The signature the ABI gives `module.name`, or None when it is not a call of the ABI."""
    return _ABI.get(module, {}).get(name)


def abi_names(module: str) -> tuple[str, ...]:
    """Every call the ABI has in `module`."""
    return tuple(_ABI.get(module, {}))


def status(module: str, name: str, func_type: FuncType | None) -> str:
    """What the call does here: IMPLEMENTED, ENOSYS, STOPS, or UNKNOWN (outside the ABI, or
    imported with another signature)."""
    expected = abi_signature(module, name)
    if expected is None or expected != func_type:
        return UNKNOWN
    if module in ("wasi_snapshot_preview1", "wasi_unstable", "wasi") or name in WASIX_32V1:
        return IMPLEMENTED  # worker/host/wasi.py (sockets: ENOSYS when called)
    if name in STOP_REASONS or not expected.results:
        return STOPS
    return ENOSYS


def stop_reason(module: str, name: str) -> str:
    """The one-line message a STOPS call ends the program with."""
    why = STOP_REASONS.get(name, "the call has no error return and wasmgroup does not "
                                 "implement it")
    return f"{module}.{name} is not supported: {why}"


def check(module: str, name: str, func_type: FuncType) -> str | None:
    """None when the runtime provides `module.name` with this type, else what is wrong."""
    expected = abi_signature(module, name)
    if expected is None:
        return f"imports {module}.{name}, which the runtime does not provide"
    if expected != func_type:
        return (f"imports {module}.{name} as {func_type}; the runtime provides "
                f"{expected}")
    return None
