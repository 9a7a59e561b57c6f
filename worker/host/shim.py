"""WASI path calls adapted to wasix-libc, forwarded inside wasm.

wasix-libc resolves "/x" against a preopen named "/" and passes the path on with its leading
slash, which Wasmer accepts and wasmtime's WASI rejects as an escape (PERM). WASIX also adds
`path_open2`, which is `path_open` with an extra flags word. wasmtime's WASI functions find
memory through the calling *instance's* `memory` export, so they cannot be called from
Python: this shim module imports the program's memory and the WASI path functions, exports
the memory, and implements each function by stripping leading slashes from its path
arguments and calling the original.
"""

from __future__ import annotations

import functools

import wasmtime

I32, I64 = "i32", "i64"

# name -> (parameter types, (pointer, length) parameter indices of paths to adapt)
PATH_FUNCTIONS: dict[str, tuple[tuple[str, ...], tuple[tuple[int, int], ...]]] = {
    "path_open": ((I32, I32, I32, I32, I32, I64, I64, I32, I32), ((2, 3),)),
    "path_filestat_get": ((I32, I32, I32, I32, I32), ((2, 3),)),
    "path_filestat_set_times": ((I32, I32, I32, I32, I64, I64, I32), ((2, 3),)),
    "path_create_directory": ((I32, I32, I32), ((1, 2),)),
    "path_remove_directory": ((I32, I32, I32), ((1, 2),)),
    "path_unlink_file": ((I32, I32, I32), ((1, 2),)),
    "path_readlink": ((I32, I32, I32, I32, I32, I32), ((1, 2),)),
    "path_rename": ((I32, I32, I32, I32, I32, I32), ((1, 2), (4, 5))),
    "path_link": ((I32, I32, I32, I32, I32, I32, I32), ((2, 3), (5, 6))),
    # The link's target text (params 0, 1) is stored as written, not resolved.
    "path_symlink": ((I32, I32, I32, I32, I32), ((3, 4),)),
}
# Called from Python (worker/host/poll.py) for what it does not serve itself: WASI needs the
# calling instance to export the memory, so the call goes through the shim unchanged.
PASSTHROUGH_FUNCTIONS: dict[str, tuple[str, ...]] = {"poll_oneoff": (I32, I32, I32, I32)}

# Rights bits WASI preview1 defines (WASIX adds socket rights above them); for O_DIRECTORY,
# the write-ish rights that wasix-libc's opendir asks for and wasmtime refuses (PERM).
RIGHTS_P1 = 0x1FFFFFFF
RIGHTS_DIR = 0x1FBFFEB6


def _strip(ptr: int, length: int) -> str:
    """Advance (ptr, len) past leading '/' while more than one byte is left."""
    return f"""
    (block $done{ptr} (loop $strip{ptr}
      (br_if $done{ptr} (i32.le_u (local.get {length}) (i32.const 1)))
      (br_if $done{ptr} (i32.ne (i32.load8_u (local.get {ptr})) (i32.const 47)))
      (local.set {ptr} (i32.add (local.get {ptr}) (i32.const 1)))
      (local.set {length} (i32.sub (local.get {length}) (i32.const 1)))
      (br $strip{ptr})))"""


def _function(name: str, params: tuple[str, ...], paths: tuple[tuple[int, int], ...]) -> str:
    body = "".join(_strip(p, n) for p, n in paths)
    args = " ".join(f"(local.get {i})" for i in range(len(params)))
    return f"""
  (func (export "{name}") (param {' '.join(params)}) (result i32){body}
    (call ${name} {args}))"""


def shim_wat(maximum: int | None, shared: bool) -> str:
    limits = f"0{'' if maximum is None else f' {maximum}'}{' shared' if shared else ''}"
    wrapped = {**PATH_FUNCTIONS, **{n: (p, ()) for n, p in PASSTHROUGH_FUNCTIONS.items()}}
    imports = "".join(
        f'\n  (import "wasi_snapshot_preview1" "{name}" '
        f'(func ${name} (param {" ".join(params)}) (result i32)))'
        for name, (params, _) in wrapped.items())
    functions = "".join(_function(n, p, paths) for n, (p, paths) in wrapped.items())
    return f"""
(module
  (import "env" "memory" (memory {limits})){imports}
  (export "memory" (memory 0)){functions}
  ;; path_open2(fd, dirflags, path, path_len, oflags, rights, rights_inh, fdflags,
  ;;            fdflagsext, ret_fd): fdflagsext only carries close-on-exec (no exec here).
  (func (export "path_open2")
    (param i32 i32 i32 i32 i32 i64 i64 i32 i32 i32) (result i32)
    (local $dir i32)
    (local.set $dir (i32.and (local.get 4) (i32.const 2))){_strip(2, 3)}
    (call $path_open (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)
      (i64.and (local.get 5)
        (select (i64.const {RIGHTS_DIR}) (i64.const {RIGHTS_P1}) (local.get $dir)))
      (i64.and (local.get 6) (i64.const {RIGHTS_P1}))
      (select (i32.const 0) (local.get 7) (local.get $dir))
      (local.get 9))))
"""


@functools.lru_cache(maxsize=8)
def _shim_module(engine: wasmtime.Engine, maximum: int | None, shared: bool) -> wasmtime.Module:
    """Compiled once per engine and memory type: every thread's group needs one."""
    return wasmtime.Module(engine, shim_wat(maximum, shared))


def instantiate_shim(store: wasmtime.Store, engine: wasmtime.Engine,
                     memory: wasmtime.Memory | wasmtime.SharedMemory,
                     wasi_linker: wasmtime.Linker) -> wasmtime.Instance:
    if isinstance(memory, wasmtime.SharedMemory):
        limits, shared = memory.type().limits, True
    else:
        limits, shared = memory.type(store).limits, False
    module = _shim_module(engine, limits.max, shared)
    originals = [wasi_linker.get(store, "wasi_snapshot_preview1", name)
                 for name in (*PATH_FUNCTIONS, *PASSTHROUGH_FUNCTIONS)]
    return wasmtime.Instance(store, module, [memory, *originals])
