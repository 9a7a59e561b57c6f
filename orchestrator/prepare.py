"""What a module goes through before it is compiled: validation, then the load-time rewrites.

The rewrites (`instrument.py`, `rewrite.py`) assume a valid module: run over an invalid one they
can produce a module wasmtime accepts, which then traps far from the cause. So the original
bytes go through wasmtime's validator first, and a refusal quotes the validator with the
offsets of the file on disk. Only on a compile-cache miss: an entry exists only for bytes that
passed (the key is the hash of the original bytes), so a hit needs no second look.
"""

from __future__ import annotations

import wasmtime

from wasmgroup.orchestrator.instrument import export_imported_memory
from wasmgroup.orchestrator.rewrite import rewrite_memory_instructions
from wasmgroup.shared.errors import ModuleRefused, WasmFormatError, one_line
from wasmgroup.shared.wasm import WasmModule


def check_module(engine: wasmtime.Engine, data: bytes, source: str) -> None:
    """Raise `ModuleRefused` (one line, naming `source`) unless `data` is a valid module for
    `engine`'s features."""
    try:
        wasmtime.Module.validate(engine, data)
    except wasmtime.WasmtimeError as err:
        raise ModuleRefused(f"invalid module: {one_line(str(err))}", source) from None


def runnable_bytes(engine: wasmtime.Engine, data: bytes, parsed: WasmModule, source: str
                   ) -> bytes:
    """The bytes to compile: `data` validated, then rewritten (see the module docstring)."""
    check_module(engine, data, source)
    try:
        if parsed.imports_of("memory"):  # a program memory shared by instance groups
            data = rewrite_memory_instructions(data, parsed)
        return export_imported_memory(data, parsed)
    except WasmFormatError as err:
        # A valid module using what the rewrite does not handle (offsets: the original file).
        raise ModuleRefused(f"not supported by wasmgroup's load-time rewrite: expected "
                            f"{err.expected} at offset {err.offset:#x}", source) from None


def compile_module(engine: wasmtime.Engine, data: bytes, source: str) -> wasmtime.Module:
    """Compile rewritten bytes; a refusal is one line. The original passed `check_module`, so
    this failing means the rewrite or the compiler could not handle the module."""
    try:
        return wasmtime.Module(engine, data)
    except wasmtime.WasmtimeError as err:
        raise ModuleRefused(f"cannot compile after wasmgroup's load-time rewrite: "
                            f"{one_line(str(err))}", source) from None
