"""Hand-assembled wasm bytes for parser tests: exactly the malformation a test wants."""

from __future__ import annotations

HEADER = b"\x00asm\x01\x00\x00\x00"


def uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def name(s: str) -> bytes:
    raw = s.encode()
    return uleb(len(raw)) + raw


def section(sec_id: int, payload: bytes) -> bytes:
    return bytes([sec_id]) + uleb(len(payload)) + payload


def custom(section_name: str, payload: bytes) -> bytes:
    return section(0, name(section_name) + payload)


def subsection(sub_type: int, payload: bytes) -> bytes:
    return bytes([sub_type]) + uleb(len(payload)) + payload


def dylink(*subsections: bytes) -> bytes:
    return custom("dylink.0", b"".join(subsections))


def mem_info(mem_size: int, mem_align: int, table_size: int, table_align: int) -> bytes:
    return subsection(1, uleb(mem_size) + uleb(mem_align) + uleb(table_size) + uleb(table_align))


def strings(sub_type: int, *items: str) -> bytes:
    return subsection(sub_type, uleb(len(items)) + b"".join(name(s) for s in items))


def module(*sections: bytes) -> bytes:
    return HEADER + b"".join(sections)
