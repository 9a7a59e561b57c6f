"""Mutations of real wasm modules, for the fuzz test and scripts/fuzz-modules.

Each takes valid module bytes and returns damaged ones, the way a bad build, a truncated copy
or a hostile guest would: bit flips, truncations, section sizes and vector counts changed in
place (LEB128 re-encoded), and `dylink.0` MEM_INFO fields set to any u32.
"""

from __future__ import annotations

from dataclasses import dataclass

from wasmgroup.shared.binary import Reader, encode_u32

MEM_INFO_FIELDS = ("mem_size", "mem_align", "table_size", "table_align")


@dataclass(frozen=True)
class RawSection:
    id: int
    start: int  # of the id byte
    size_at: int  # of the size LEB128
    body: int  # of the payload
    end: int


def sections(data: bytes) -> list[RawSection]:
    """The top-level sections (`WasmFormatError` when they do not fit the bytes)."""
    r = Reader(data, 8)
    out = []
    while not r.at_end:
        start = r.pos
        sec_id = r.byte()
        size_at = r.pos
        body = r.sub(r.u32(), "section")  # a section past the end: WasmFormatError
        out.append(RawSection(sec_id, start, size_at, body.pos, body.end))
    return out


def bit_flip(data: bytes, position: int, bit: int) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    out[position % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


def truncate(data: bytes, length: int) -> bytes:
    return data[:length % len(data)] if data else data


def section_size(data: bytes, which: int, size: int) -> bytes:
    """Section `which` (modulo their number) claiming `size` bytes; its payload unchanged."""
    found = sections(data)
    if not found:
        return data
    sec = found[which % len(found)]
    return data[:sec.size_at] + encode_u32(size) + data[sec.body:]


def vector_count(data: bytes, which: int, count: int, section_id: int | None = None) -> bytes:
    """The leading vector count of non-custom section `which` (of those with `section_id`, if
    given) set to `count` (the section size follows the new LEB128's length, so only the count
    is wrong)."""
    candidates = [s for s in sections(data) if s.id not in (0, 8)  # start has no vector
                  and section_id in (None, s.id)]
    if not candidates:
        return data
    sec = candidates[which % len(candidates)]
    r = Reader(data, sec.body, sec.end)
    r.u32()
    payload = encode_u32(count) + data[r.pos:sec.end]
    return data[:sec.start + 1] + encode_u32(len(payload)) + payload + data[sec.end:]


def dylink_byte(data: bytes, position: int, value: int) -> bytes:
    """One byte inside the `dylink.0` section set to `value` (a NUL or `/` in a NEEDED name,
    a flag, a length): the section's structure is what it is about."""
    for sec in sections(data):
        r = Reader(data, sec.body, sec.end)
        if sec.id == 0 and r.name() == "dylink.0" and r.pos < sec.end:
            out = bytearray(data)
            out[r.pos + position % (sec.end - r.pos)] = value & 0xFF
            return bytes(out)
    return data


def mem_info(data: bytes, field: str, value: int) -> bytes:
    """`dylink.0` MEM_INFO with `field` set to `value` (a u32); other fields kept."""
    for sec in sections(data):
        if sec.id != 0:
            continue
        r = Reader(data, sec.body, sec.end)
        if r.name() != "dylink.0":
            continue
        name_end = r.pos
        while not r.at_end:
            sub_start = r.pos
            sub_type = r.byte()
            size = r.u32()
            sub_end = r.pos + size
            if sub_type == 1:
                values = [r.u32() for _ in MEM_INFO_FIELDS]
                values[MEM_INFO_FIELDS.index(field)] = value
                body = b"".join(encode_u32(v) for v in values)
                sub = bytes([1]) + encode_u32(len(body)) + body
                payload = data[sec.body:name_end] + data[name_end:sub_start] + sub \
                    + data[sub_end:sec.end]
                return (data[:sec.start + 1] + encode_u32(len(payload)) + payload
                        + data[sec.end:])
            r.pos = sub_end
    return data
