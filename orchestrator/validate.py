"""Validate a module as its author gave it, before any load-time rewrite touches it.

The rewrites (`instrument.py`, `rewrite.py`) assume a valid module: run over an invalid one they
can produce a module wasmtime accepts, which then traps far from the cause. So the original
bytes go through wasmtime's validator first, and a refusal quotes the validator with the
offsets of the file on disk. Only on a compile-cache miss: an entry exists only for bytes that
passed (the key is the hash of the original bytes), so a hit needs no second look.
"""

from __future__ import annotations

import wasmtime

from wasmgroup.shared.errors import InvalidModule, one_line


def check_module(engine: wasmtime.Engine, data: bytes, source: str) -> None:
    """Raise `InvalidModule` (one line, naming `source`) unless `data` is a valid module for
    `engine`'s features."""
    try:
        wasmtime.Module.validate(engine, data)
    except wasmtime.WasmtimeError as err:
        raise InvalidModule(one_line(str(err)), source) from None


def compile_module(engine: wasmtime.Engine, data: bytes, source: str) -> wasmtime.Module:
    """Compile rewritten bytes; a refusal is one line. The original passed `check_module`, so
    this failing means the rewrite or the compiler could not handle the module."""
    try:
        return wasmtime.Module(engine, data)
    except wasmtime.WasmtimeError as err:
        raise InvalidModule(f"cannot compile after wasmgroup's load-time rewrite: "
                            f"{one_line(str(err))}", source) from None
