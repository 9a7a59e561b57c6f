"""The functions the runtime provides to guests, by import module and name.

`check(module, name, type)` says what is wrong with an import the runtime cannot satisfy, so a
program fails at start (or a dlopen fails) with a message naming the import, never later.
"""

from __future__ import annotations

from wasmgroup.shared.wasm import FuncType

# wasi_snapshot_preview1, as wasmtime implements it.
WASI_PREVIEW1 = frozenset("""
args_get args_sizes_get environ_get environ_sizes_get clock_res_get clock_time_get fd_advise
fd_allocate fd_close fd_datasync fd_fdstat_get fd_fdstat_set_flags fd_fdstat_set_rights
fd_filestat_get fd_filestat_set_size fd_filestat_set_times fd_pread fd_prestat_get
fd_prestat_dir_name fd_pwrite fd_read fd_readdir fd_renumber fd_seek fd_sync fd_tell fd_write
path_create_directory path_filestat_get path_filestat_set_times path_link path_open
path_readlink path_remove_directory path_rename path_symlink path_unlink_file poll_oneoff
proc_exit proc_raise sched_yield random_get sock_accept sock_recv sock_send sock_shutdown
""".split())

I32 = "i32"


def _f(params: int, results: int = 1) -> FuncType:
    return FuncType((I32,) * params, (I32,) * results)


# wasix_32v1: the calls wasix-libc programs import for dl*, futexes, threads, exit, signals.
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


def check(module: str, name: str, func_type: FuncType) -> str | None:
    """None when the runtime provides `module.name` with this type, else what is wrong."""
    if module in ("wasi_snapshot_preview1", "wasi_unstable"):
        if name in WASI_PREVIEW1:
            return None
        return f"imports {module}.{name}, which the runtime does not provide"
    table = {"wasix_32v1": WASIX_32V1, "wasi": WASI_THREADS}.get(module)
    if table is None or name not in table:
        return f"imports {module}.{name}, which the runtime does not provide"
    if table[name] != func_type:
        return (f"imports {module}.{name} as {func_type}; the runtime provides "
                f"{table[name]}")
    return None
