"""Load-time rewrites of module binaries, applied once before compiling.

`export_imported_memory`: wasmtime's own WASI functions found memory through the *calling*
instance's `memory` export, but dynamically linked modules import their memory and do not
export it. The rewrite adds a `memory` export of memory 0 (appended to the export section, or
as a new one). wasmgroup's WASI (worker/host/wasi.py) no longer needs it; it stays because
modules compiled with it are cached under this rewrite version. No index moves.

`REWRITE_VERSION` is part of the compile-cache key: bump it when a rewrite changes.
"""

from __future__ import annotations

from wasmgroup.shared.binary import Reader, encode_u32
from wasmgroup.shared.errors import LinkError
from wasmgroup.shared.wasm import SEC_CUSTOM, SEC_DATACOUNT, SEC_EXPORT, SEC_TAG, WasmModule

REWRITE_VERSION = "3"  # 2: memory size/grow and atomic wait/notify as host calls

# Position of each section id in the required order (datacount and tag sit between others).
_ORDER = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, SEC_TAG: 5.5, 6: 6, SEC_EXPORT: 7, 8: 8, 9: 9,
          SEC_DATACOUNT: 9.5, 10: 10, 11: 11}


def _section(sec_id: int, payload: bytes) -> bytes:
    return bytes([sec_id]) + encode_u32(len(payload)) + payload


def export_imported_memory(data: bytes, module: WasmModule) -> bytes:
    """`data` with an export `memory` of its imported memory, when it lacks one."""
    if not module.imports_of("memory") or module.export_named("memory") is not None:
        existing = module.export_named("memory")
        if existing is not None and existing.kind != "memory":
            raise LinkError("the module exports a non-memory named 'memory'")
        return data
    entry = encode_u32(len(b"memory")) + b"memory" + bytes([2]) + encode_u32(0)
    r = Reader(data, 8)
    out = bytearray(data[:8])
    done = False
    while not r.at_end:
        start = r.pos
        sec_id = r.byte()
        size = r.u32()
        body_start = r.pos
        r.pos += size
        if sec_id == SEC_EXPORT:
            body = Reader(data, body_start, body_start + size)
            count = body.u32()
            out += _section(SEC_EXPORT, encode_u32(count + 1) + data[body.pos:body_start + size]
                            + entry)
            done = True
            continue
        if not done and sec_id != SEC_CUSTOM and _ORDER[sec_id] > _ORDER[SEC_EXPORT]:
            out += _section(SEC_EXPORT, encode_u32(1) + entry)
            done = True
        out += data[start:r.pos]
    if not done:
        out += _section(SEC_EXPORT, encode_u32(1) + entry)
    return bytes(out)
