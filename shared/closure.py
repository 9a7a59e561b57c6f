"""Closures and dynamic calls (WASIX `closure_prepare`, `call_dynamic`, `reflect_signature`):
the value-type codes of the ABI, the packed value layout, and the trampoline module.

Values travel packed, in order, with no alignment: i32/f32 take 4 bytes, i64/f64 8, v128 16
(wasix-libc's `wasi/api_wasix.h`). A closure of type `(params) -> (results)` is a tiny module
generated here as wasm bytes: its one function stores its arguments packed on the shadow
stack, calls the backing function `(i32 values, i32 results, i32 env) -> ()` through the
table, and loads its results from the same frame. Nothing specific to one closure is baked in:
the backing slot and the env pointer are imported globals, so one compiled module serves every
closure of a signature (and memory type), in every group.
"""

from __future__ import annotations

from wasmgroup.shared.binary import encode_s32, encode_section, encode_u32
from wasmgroup.shared.wasm import FuncType

# __wasi_wasm_value_type_t
VALUE_TYPES = ("i32", "i64", "f32", "f64", "v128")
VALUE_SIZES = {"i32": 4, "i64": 8, "f32": 4, "f64": 8, "v128": 16}
MAX_VALUES = 1000  # wasm's own limit on a function's parameters (and, here, results)

CLOSURE_IMPORT_MODULE = "closure"  # the imported globals: backing slot and env pointer
CLOSURE_EXPORT = "closure"

_CODE = {"i32": 0x7F, "i64": 0x7E, "f32": 0x7D, "f64": 0x7C, "v128": 0x7B}
_STORE = {"i32": b"\x36", "i64": b"\x37", "f32": b"\x38", "f64": b"\x39", "v128": b"\xfd\x0b"}
_LOAD = {"i32": b"\x28", "i64": b"\x29", "f32": b"\x2a", "f64": b"\x2b", "v128": b"\xfd\x00"}


def decode_types(raw: bytes) -> tuple[str, ...]:
    """Value-type bytes of the ABI -> names; ValueError naming the first bad byte."""
    try:
        return tuple(VALUE_TYPES[b] for b in raw)
    except IndexError:
        bad = next(b for b in raw if b >= len(VALUE_TYPES))
        raise ValueError(f"unknown value type {bad}") from None


def encode_types(types: tuple[str, ...]) -> bytes:
    return bytes(VALUE_TYPES.index(t) for t in types)


def packed_size(types: tuple[str, ...]) -> int:
    return sum(VALUE_SIZES[t] for t in types)


def _align16(n: int) -> int:
    return (n + 15) & ~15


def _vec(items: list[bytes]) -> bytes:
    return encode_u32(len(items)) + b"".join(items)


def _name(s: str) -> bytes:
    raw = s.encode()
    return encode_u32(len(raw)) + raw


def _functype(params: tuple[str, ...], results: tuple[str, ...]) -> bytes:
    return (b"\x60" + _vec([bytes([_CODE[p]]) for p in params])
            + _vec([bytes([_CODE[r]]) for r in results]))


def trampoline_module(signature: FuncType, memory_max_pages: int, shared: bool) -> bytes:
    """The closure module of `signature`, importing a memory of at most `memory_max_pages`
    pages (shared or not, as the program's), the group's table and `__stack_pointer`."""
    params, results = signature.params, signature.results
    values_area = _align16(packed_size(params))
    frame_size = values_area + _align16(packed_size(results))
    memory_flags = 0x03 if shared else 0x01
    imports = [
        _name("env") + _name("memory") + b"\x02" + bytes([memory_flags]) + encode_u32(0)
        + encode_u32(memory_max_pages),
        _name("env") + _name("__indirect_function_table") + b"\x01\x70\x00" + encode_u32(0),
        _name("env") + _name("__stack_pointer") + b"\x03\x7f\x01",          # global 0
        _name(CLOSURE_IMPORT_MODULE) + _name("backing") + b"\x03\x7f\x00",  # global 1
        _name(CLOSURE_IMPORT_MODULE) + _name("env") + b"\x03\x7f\x00",      # global 2
    ]
    old_sp, frame = len(params), len(params) + 1  # locals after the parameters
    body = bytearray()
    body += b"\x23\x00" + b"\x22" + encode_u32(old_sp)
    body += b"\x41" + encode_s32(frame_size) + b"\x6b"
    body += b"\x22" + encode_u32(frame) + b"\x24\x00"
    offset = 0
    for index, t in enumerate(params):
        body += b"\x20" + encode_u32(frame) + b"\x20" + encode_u32(index)
        body += _STORE[t] + b"\x00" + encode_u32(offset)  # memarg: align 1, offset
        offset += VALUE_SIZES[t]
    body += b"\x20" + encode_u32(frame)
    body += b"\x20" + encode_u32(frame) + b"\x41" + encode_s32(values_area) + b"\x6a"
    body += b"\x23\x02" + b"\x23\x01"
    body += b"\x11\x01\x00"  # call_indirect (type 1) (table 0)
    offset = values_area
    for t in results:
        body += b"\x20" + encode_u32(frame) + _LOAD[t] + b"\x00" + encode_u32(offset)
        offset += VALUE_SIZES[t]
    body += b"\x20" + encode_u32(old_sp) + b"\x24\x00" + b"\x0b"
    code = b"\x01\x02\x7f" + bytes(body)  # one local declaration: 2 x i32
    return (b"\x00asm\x01\x00\x00\x00"
            + encode_section(1, _vec([_functype(params, results),
                                _functype(("i32", "i32", "i32"), ())]))
            + encode_section(2, _vec(imports))
            + encode_section(3, _vec([encode_u32(0)]))
            + encode_section(7, _vec([_name(CLOSURE_EXPORT) + b"\x00" + encode_u32(0)]))
            + encode_section(10, _vec([encode_u32(len(code)) + code])))
