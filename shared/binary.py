"""Wasm bytes: a bounds-checked cursor (LEB128, names, nested sections) and the LEB128 writer.

Every read that would run past its bounds, or meets an overlong LEB128, raises
`WasmFormatError` with the offset and what was expected there.
"""

from __future__ import annotations

from wasmgroup.shared.errors import WasmFormatError


class Reader:
    """A cursor over `data[pos:end]` that raises `WasmFormatError` instead of overrunning."""

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else min(end, len(data))

    @property
    def at_end(self) -> bool:
        return self.pos >= self.end

    def fail(self, expected: str, offset: int | None = None) -> WasmFormatError:
        return WasmFormatError(self.pos if offset is None else offset, expected)

    def byte(self, what: str = "a byte") -> int:
        if self.pos >= self.end:
            raise self.fail(f"{what}, found end of input")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def bytes(self, n: int, what: str = "bytes") -> bytes:
        if n > self.end - self.pos:
            raise self.fail(f"{n} bytes of {what}, only {self.end - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u32(self, what: str = "u32") -> int:
        pos = self.pos
        if pos < self.end and self.data[pos] < 0x80:  # most numbers in a module: one byte
            self.pos = pos + 1
            return self.data[pos]
        return self._uleb(32, what)

    def u64(self, what: str = "u64") -> int:
        return self._uleb(64, what)

    def _uleb(self, bits: int, what: str) -> int:
        start = self.pos
        max_bytes = (bits + 6) // 7
        result = shift = 0
        for i in range(max_bytes):
            if self.pos >= self.end:
                raise self.fail(f"LEB128 {what}, found end of input")
            b = self.data[self.pos]
            self.pos += 1
            if i == max_bytes - 1 and b >> (bits - 7 * i) != 0:
                # The last byte may only carry the bits that remain, and no continuation.
                raise self.fail(f"LEB128 {what} of at most {bits} bits (overlong or too large)",
                                start)
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
        raise self.fail(f"LEB128 {what} of at most {max_bytes} bytes (overlong)", start)

    def sleb(self, bits: int, what: str = "signed LEB128") -> int:
        start = self.pos
        max_bytes = (bits + 6) // 7
        result = shift = 0
        for i in range(max_bytes):
            b = self.byte(what)
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if i == max_bytes - 1:
                    # Unused high bits of the last byte must all equal the sign bit.
                    unused = b >> (bits - 7 * i - 1)
                    if unused not in (0, 0x7F >> (bits - 7 * i - 1)):
                        raise self.fail(f"{what} within {bits} bits", start)
                if b & 0x40:
                    result -= 1 << shift
                return result
        raise self.fail(f"{what} of at most {max_bytes} bytes (overlong)", start)

    def count(self, what: str, min_size: int = 1) -> int:
        """A vector's element count, refused when its elements (each at least `min_size`
        bytes) could not fit in what is left: no loop or allocation ever trusts the count."""
        start = self.pos
        n = self.u32(what)
        if n * min_size > self.end - self.pos:
            raise self.fail(f"{what} that fits its {self.end - self.pos} remaining bytes, "
                            f"found {n}", start)
        return n

    def name(self, what: str = "name") -> str:
        length = self.u32(f"{what} length")
        start = self.pos
        raw = self.bytes(length, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} in UTF-8", start) from None

    def sub(self, size: int, what: str) -> Reader:
        """A reader over the next `size` bytes, which must lie inside this one."""
        if size > self.end - self.pos:
            raise self.fail(f"{what} of {size} bytes within its parent "
                            f"(only {self.end - self.pos} left)")
        sub = Reader(self.data, self.pos, self.pos + size)
        self.pos += size
        return sub

    def expect_end(self, what: str) -> None:
        if self.pos != self.end:
            raise self.fail(f"end of {what} ({self.end - self.pos} trailing bytes)")


def encode_u32(n: int) -> bytes:
    """Unsigned LEB128, the shortest form."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode_s32(n: int) -> bytes:
    """Signed LEB128, the shortest form."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if (n == 0 and not b & 0x40) or (n == -1 and b & 0x40):
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def encode_section(sec_id: int, payload: bytes) -> bytes:
    """A module section: its id, its size, its payload."""
    return bytes([sec_id]) + encode_u32(len(payload)) + payload
