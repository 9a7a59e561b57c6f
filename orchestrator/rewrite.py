"""Instruction-level rewrite: memory size, growth and atomic waits become host calls.

Across worker processes, wasmtime's own `memory.size`/`memory.grow` (tracked per process) and
`memory.atomic.wait32/wait64/notify` (parked per process) cannot be shared, so every module is
rewritten once, before compiling, to call host functions instead (import module `wasmgroup`):

    memory.size 0            -> call memory_size   () -> i32
    memory.grow 0            -> call memory_grow   (i32 delta) -> i32
    memory.atomic.notify m   -> i32.const m.offset; call atomic_notify (i32, i32, i32) -> i32
    memory.atomic.wait32 m   -> i32.const m.offset; call atomic_wait32 (i32, i32, i64, i32) -> i32
    memory.atomic.wait64 m   -> i32.const m.offset; call atomic_wait64 (i32, i64, i64, i32) -> i32

Only the helpers a module needs are imported, appended after its other imports, so every
defined function's index moves up by that many: calls, `ref.func`, element segments, exports,
the start function, global initialisers and the name section are renumbered. A module that
uses none of these instructions is returned unchanged. Raises `WasmFormatError` on an
instruction it cannot decode (the GC proposal's 0xFB prefix) or a second memory.
"""

from __future__ import annotations

from collections.abc import Callable

from wasmgroup.shared.binary import Reader, encode_s32, encode_section, encode_u32
from wasmgroup.shared.errors import WasmFormatError
from wasmgroup.shared.hostabi import HELPER_MODULE, HELPERS
from wasmgroup.shared.wasm import (
    SEC_CODE,
    SEC_CUSTOM,
    SEC_ELEMENT,
    SEC_EXPORT,
    SEC_GLOBAL,
    SEC_IMPORT,
    SEC_START,
    SEC_TYPE,
    FuncType,
    WasmModule,
)

_VALTYPE_CODE = {"i32": 0x7F, "i64": 0x7E, "f32": 0x7D, "f64": 0x7C}
_ATOMIC_HELPER = {0x00: "atomic_notify", 0x01: "atomic_wait32", 0x02: "atomic_wait64"}

# Immediates of single-byte opcodes (everything not listed has none).
_U32 = {0x0C, 0x0D, 0x07, 0x08, 0x09, 0x18, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26,
        0x14, 0x15, 0xD5, 0xD6}
_BLOCK = {0x02, 0x03, 0x04, 0x06}
_SIMD_MEMARG = set(range(0, 12)) | {92, 93}
_SIMD_MEMARG_LANE = set(range(84, 92))
_SIMD_LANE = set(range(21, 35))


def _signed32(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def _block_type(r: Reader) -> None:
    first = r.data[r.pos] if r.pos < r.end else -1
    if first in (0x63, 0x64):  # (ref null? ht)
        r.pos += 1
        r.sleb(33, "heap type")
    elif first == 0x40 or 0x6F <= first <= 0x7F:
        r.pos += 1
    else:
        r.sleb(33, "block type index")


def _memarg(r: Reader) -> int:
    """Skip a memarg; return its offset. Only memory 0 is supported."""
    align = r.u32("alignment")
    if align & 0x40:
        offset_at = r.pos
        if r.u32("memory index") != 0:
            raise WasmFormatError(offset_at, "memory 0 (modules with several memories are not "
                                             "supported)")
    return r.u64("memory offset")


class _Rewriter:
    def __init__(self, module: WasmModule) -> None:
        self.module = module
        self.imported_funcs = len(module.imports_of("func"))
        self.helpers: list[str] = []  # in import order, decided by a first scan

    def new_index(self, old: int) -> int:
        return old if old < self.imported_funcs else old + len(self.helpers)

    def helper_index(self, name: str) -> int:
        return self.imported_funcs + self.helpers.index(name)

    # -------------------------------------------------------------- instructions
    def expression(self, r: Reader, out: bytearray | None, want: set[str] | None,
                   until_end_of_body: bool) -> None:
        """Copy (or, with `out` None, scan) instructions; `want` collects needed helpers."""
        depth = 0
        while r.pos < r.end:
            start = r.pos
            op = r.byte("an opcode")
            emit: bytes | None = None
            if op in (0x10, 0x12, 0xD2):  # call, return_call, ref.func
                emit = bytes([op]) + encode_u32(self.new_index(r.u32("function index")))
            elif op in (0x3F, 0x40):  # memory.size, memory.grow
                at = r.pos
                if r.u32("memory index") != 0:
                    raise WasmFormatError(at, "memory 0")
                name = "memory_size" if op == 0x3F else "memory_grow"
                if want is not None:
                    want.add(name)
                elif out is not None:
                    emit = b"\x10" + encode_u32(self.helper_index(name))
            elif op in _U32:
                r.u32("immediate")
            elif op == 0xD0:
                r.sleb(33, "heap type")
            elif op in _BLOCK:
                _block_type(r)
                depth += 1
            elif op == 0x1F:  # try_table
                _block_type(r)
                for _ in range(r.u32("catch count")):
                    kind = r.byte("catch kind")
                    if kind in (0, 1):
                        r.u32("tag")
                    r.u32("label")
                depth += 1
            elif op == 0x0B:  # end
                if depth == 0 and until_end_of_body:
                    if out is not None:
                        out += r.data[start:r.pos]
                    return
                depth -= 1
            elif op == 0x0E:  # br_table
                for _ in range(r.u32("label count") + 1):
                    r.u32("label")
            elif op in (0x11, 0x13):  # call_indirect, return_call_indirect
                r.u32("type index")
                r.u32("table index")
            elif op == 0x1C:  # select t*
                for _ in range(r.u32("type count")):
                    r.byte("value type")
            elif 0x28 <= op <= 0x3E:
                _memarg(r)
            elif op == 0x41:
                r.sleb(32, "i32.const")
            elif op == 0x42:
                r.sleb(64, "i64.const")
            elif op == 0x43:
                r.bytes(4, "f32.const")
            elif op == 0x44:
                r.bytes(8, "f64.const")
            elif op == 0xFC:
                self._misc(r)
            elif op == 0xFD:
                self._simd(r)
            elif op == 0xFE:
                emit = self._atomic(r, want, out is not None)
            elif op == 0xFB:
                raise WasmFormatError(start, "no GC-proposal instructions (0xFB prefix)")
            if out is not None:
                out += emit if emit is not None else r.data[start:r.pos]
        if until_end_of_body:
            raise WasmFormatError(r.pos, "the end of a function body")

    @staticmethod
    def _misc(r: Reader) -> None:
        sub = r.u32("0xFC opcode")
        if sub <= 7:
            return
        counts = {8: 2, 9: 1, 10: 2, 11: 1, 12: 2, 13: 1, 14: 2, 15: 1, 16: 1, 17: 1}
        for _ in range(counts.get(sub, 0)):
            r.u32("immediate")

    @staticmethod
    def _simd(r: Reader) -> None:
        sub = r.u32("0xFD opcode")
        if sub in _SIMD_MEMARG:
            _memarg(r)
        elif sub in _SIMD_MEMARG_LANE:
            _memarg(r)
            r.byte("lane")
        elif sub in (12, 13):
            r.bytes(16, "v128 immediate")
        elif sub in _SIMD_LANE:
            r.byte("lane")

    def _atomic(self, r: Reader, want: set[str] | None, emitting: bool) -> bytes | None:
        sub = r.u32("0xFE opcode")
        if sub == 0x03:  # atomic.fence
            r.byte("fence flags")
            return None
        offset = _memarg(r)
        name = _ATOMIC_HELPER.get(sub)
        if name is None:
            return None
        if want is not None:
            want.add(name)
            return None
        if not emitting:
            return None
        return (b"\x41" + encode_s32(_signed32(offset & 0xFFFFFFFF))
                + b"\x10" + encode_u32(self.helper_index(name)))

    # -------------------------------------------------------------- sections
    def code(self, payload: Reader, want: set[str] | None) -> bytes:
        out = bytearray()
        count = payload.u32("function count")
        out += encode_u32(count)
        for _ in range(count):
            size = payload.u32("body size")
            body = payload.sub(size, "function body")
            new_body = bytearray()
            locals_start = body.pos
            for _ in range(body.u32("local group count")):
                body.u32("local count")
                body.byte("local type")
            new_body += body.data[locals_start:body.pos]
            self.expression(body, None if want is not None else new_body, want, True)
            body.expect_end("function body")
            out += encode_u32(len(new_body)) + new_body
        return bytes(out)

    def const_expr(self, r: Reader, out: bytearray) -> None:
        self.expression(r, out, None, True)

    def elements(self, r: Reader) -> bytes:
        out = bytearray(encode_u32(count := r.u32("segment count")))
        for _ in range(count):
            start = r.pos
            flags = r.u32("element flags")
            out += r.data[start:r.pos]
            if flags in (0, 4):
                self.const_expr(r, out)  # offset
            elif flags in (2, 6):
                at = r.pos
                r.u32("table index")
                out += r.data[at:r.pos]
                self.const_expr(r, out)
            if flags in (1, 2, 3):
                out += bytes([r.byte("element kind")])
            elif flags in (5, 6, 7):
                at = r.pos
                if r.data[r.pos] in (0x63, 0x64):
                    r.pos += 1
                    r.sleb(33, "heap type")
                else:
                    r.byte("reference type")
                out += r.data[at:r.pos]
            n = r.u32("element count")
            out += encode_u32(n)
            for _ in range(n):
                if flags < 4:
                    out += encode_u32(self.new_index(r.u32("function index")))
                else:
                    self.const_expr(r, out)
        return bytes(out)

    def exports(self, r: Reader) -> bytes:
        out = bytearray(encode_u32(count := r.u32("export count")))
        for _ in range(count):
            start = r.pos
            r.name("export name")
            kind = r.byte("export kind")
            out += r.data[start:r.pos]
            index = r.u32("export index")
            out += encode_u32(self.new_index(index) if kind == 0 else index)
        return bytes(out)

    def globals(self, r: Reader) -> bytes:
        out = bytearray(encode_u32(count := r.u32("global count")))
        for _ in range(count):
            start = r.pos
            r.byte("value type")
            r.byte("mutability")
            out += r.data[start:r.pos]
            self.const_expr(r, out)
        return bytes(out)

    def names(self, r: Reader) -> bytes:
        """The name section with function indices renumbered (function and local names)."""
        out = bytearray(encode_u32(len(b"name")) + b"name")
        while r.pos < r.end:
            kind = r.byte("name subsection id")
            sub = r.sub(r.u32("name subsection size"), "name subsection")
            if kind not in (1, 2):
                out += bytes([kind]) + encode_u32(sub.end - sub.pos) + sub.data[sub.pos:sub.end]
                continue
            body = bytearray(encode_u32(count := sub.u32("count")))
            for _ in range(count):
                body += encode_u32(self.new_index(sub.u32("function index")))
                start = sub.pos
                if kind == 1:
                    sub.name("function name")
                else:
                    for _ in range(sub.u32("local count")):
                        sub.u32("local index")
                        sub.name("local name")
                body += sub.data[start:sub.pos]
            out += bytes([kind]) + encode_u32(len(body)) + body
        return bytes(out)


def _functype_bytes(t: FuncType) -> bytes:
    return (b"\x60" + encode_u32(len(t.params)) + bytes(_VALTYPE_CODE[p] for p in t.params)
            + encode_u32(len(t.results)) + bytes(_VALTYPE_CODE[p] for p in t.results))


def rewrite_memory_instructions(data: bytes, module: WasmModule) -> bytes:
    """`data` with memory size/grow and atomic wait/notify turned into host calls."""
    rewriter = _Rewriter(module)
    sections = _sections(data)
    want: set[str] = set()
    for sec_id, start, end in sections:
        if sec_id == SEC_CODE:
            rewriter.code(Reader(data, start, end), want)
    if not want:
        return data
    rewriter.helpers = [name for name in HELPERS if name in want]
    type_base = len(module.types)
    new_types = b"".join(_functype_bytes(HELPERS[n]) for n in rewriter.helpers)
    new_imports = b"".join(
        encode_u32(len(HELPER_MODULE)) + HELPER_MODULE.encode() + encode_u32(len(name))
        + name.encode() + b"\x00" + encode_u32(type_base + i)
        for i, name in enumerate(rewriter.helpers))

    handlers: dict[int, Callable[[Reader], bytes]] = {
        SEC_CODE: lambda r: rewriter.code(r, None),
        SEC_ELEMENT: rewriter.elements,
        SEC_EXPORT: rewriter.exports,
        SEC_GLOBAL: rewriter.globals,
        SEC_START: lambda r: encode_u32(rewriter.new_index(r.u32("start function"))),
    }
    out = bytearray(data[:8])
    has_types = any(s[0] == SEC_TYPE for s in sections)
    has_imports = any(s[0] == SEC_IMPORT for s in sections)
    for sec_id, start, end in sections:
        r = Reader(data, start, end)
        if not has_types and sec_id not in (SEC_CUSTOM,):
            out += encode_section(SEC_TYPE, encode_u32(len(rewriter.helpers)) + new_types)
            has_types = True
        if not has_imports and sec_id not in (SEC_CUSTOM, SEC_TYPE):
            out += encode_section(SEC_IMPORT, encode_u32(len(rewriter.helpers)) + new_imports)
            has_imports = True
        if sec_id == SEC_TYPE:
            count = r.u32("type count")
            out += encode_section(sec_id, encode_u32(count + len(rewriter.helpers))
                            + data[r.pos:end] + new_types)
        elif sec_id == SEC_IMPORT:
            count = r.u32("import count")
            out += encode_section(sec_id, encode_u32(count + len(rewriter.helpers))
                            + data[r.pos:end] + new_imports)
        elif sec_id in handlers:
            out += encode_section(sec_id, handlers[sec_id](r))
        elif sec_id == SEC_CUSTOM and r.name("custom section name") == "name":
            out += encode_section(SEC_CUSTOM, rewriter.names(r))
        else:
            out += encode_section(sec_id, data[start:end])
    return bytes(out)


def _sections(data: bytes) -> list[tuple[int, int, int]]:
    """(id, payload start, payload end) of every section, in order."""
    r = Reader(data, 8)
    found = []
    while not r.at_end:
        sec_id = r.byte("a section id")
        size = r.u32("section size")
        found.append((sec_id, r.pos, r.pos + size))
        r.pos += size
    return found
