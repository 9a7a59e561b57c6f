"""WASIX calls that are WASI calls with extra arguments, forwarded inside wasm.

wasmtime's WASI functions find memory through the calling *instance's* `memory` export, so
they cannot be called from Python. This shim module imports the program's memory and the
WASI functions, exports the memory, and implements the WASIX variants by dropping the extra
arguments, so the call reaches WASI from an instance that exports the right memory.
"""

from __future__ import annotations

import wasmtime


def shim_wat(minimum: int, maximum: int | None, shared: bool) -> str:
    limits = f"{minimum}{'' if maximum is None else f' {maximum}'}{' shared' if shared else ''}"
    return f"""
(module
  (import "env" "memory" (memory {limits}))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (export "memory" (memory 0))
  ;; path_open2(fd, dirflags, path, path_len, oflags, rights, rights_inh, fdflags,
  ;;            fdflagsext, ret_fd): fdflagsext only carries close-on-exec, and rights
  ;; are cut to the 29 bits WASI preview1 defines (WASIX adds socket rights above them).
  ;; Leading slashes are stripped (wasix-libc resolves "/x" against a preopen named "/").
  ;; For O_DIRECTORY, write rights and fdflags are dropped: wasix-libc's opendir asks for
  ;; them, and wasmtime refuses to open a directory for writing (PERM).
  (func (export "path_open2")
    (param i32 i32 i32 i32 i32 i64 i64 i32 i32 i32) (result i32)
    (local $dir i32)
    (local.set $dir (i32.and (local.get 4) (i32.const 2)))
    ;; wasix-libc passes "/x" relative to a preopen named "/": make it "x".
    (block $done (loop $strip
      (br_if $done (i32.le_u (local.get 3) (i32.const 1)))
      (br_if $done (i32.ne (i32.load8_u (local.get 2)) (i32.const 47)))
      (local.set 2 (i32.add (local.get 2) (i32.const 1)))
      (local.set 3 (i32.sub (local.get 3) (i32.const 1)))
      (br $strip)))
    (call $path_open (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)
      (i64.and (local.get 5)
        (select (i64.const 0x1fbffeb6) (i64.const 0x1fffffff) (local.get $dir)))
      (i64.and (local.get 6) (i64.const 0x1fffffff))
      (select (i32.const 0) (local.get 7) (local.get $dir))
      (local.get 9))))
"""


def instantiate_shim(store: wasmtime.Store, engine: wasmtime.Engine,
                     memory: wasmtime.Memory | wasmtime.SharedMemory,
                     wasi_linker: wasmtime.Linker) -> wasmtime.Instance:
    if isinstance(memory, wasmtime.SharedMemory):
        limits = memory.type().limits
        shared = True
    else:
        limits = memory.type(store).limits
        shared = False
    module = wasmtime.Module(engine, shim_wat(0, limits.max, shared))
    path_open = wasi_linker.get(store, "wasi_snapshot_preview1", "path_open")
    return wasmtime.Instance(store, module, [memory, path_open])
