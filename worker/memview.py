"""Bounds-checked access to a guest's linear memory from host functions.

The only place in the worker that touches raw memory pointers.
"""

from __future__ import annotations

import ctypes
import struct

import wasmtime

_U32 = ctypes.c_uint32  # unaligned access is fine on every host wasmtime runs on here
_U32_LE = struct.Struct("<I")  # (wasm memory is little-endian, as every host here)


class GuestFault(Exception):
    """A guest pointer outside linear memory (the host call returns EFAULT/MEMVIOLATION)."""


class GuestMemory:
    def __init__(self, memory: wasmtime.Memory | wasmtime.SharedMemory,
                 store: wasmtime.Store, fixed: bool = False) -> None:
        self._memory = memory
        self._store = store
        # A `fixed` memory never moves nor grows (wasmgroup creates the program's memory at
        # its maximum size): asking wasmtime for its extent on every access would cost more
        # than most host calls.
        self._fixed_extent = fixed
        self._fixed: tuple[int, int] | None = None
        # A fixed memory's bytes as a view: single-byte stores without a ctypes object.
        self._bytes: memoryview | None = None
        if fixed:
            base, length = self._base_and_len()
            self._bytes = memoryview((ctypes.c_char * length).from_address(base)).cast("B")

    def _base_and_len(self) -> tuple[int, int]:
        if self._fixed is not None:
            return self._fixed
        m = self._memory
        if isinstance(m, wasmtime.SharedMemory):
            ptr, length = m.data_ptr(), m.data_len()
        else:
            ptr, length = m.data_ptr(self._store), m.data_len(self._store)
        extent = ctypes.addressof(ptr.contents), length
        if self._fixed_extent:
            self._fixed = extent
        return extent

    def _check(self, addr: int, size: int) -> int:
        base, length = self._fixed or self._base_and_len()
        if addr < 0 or size < 0 or addr + size > length:
            raise GuestFault(f"guest range [{addr:#x}, +{size}) outside memory of {length} bytes")
        return base + addr

    @property
    def view(self) -> memoryview | None:
        """A fixed memory's bytes (None for one that may move or grow)."""
        return self._bytes

    def extent(self) -> tuple[int, int]:
        """The host address of byte 0 and the memory's length in bytes."""
        return self._base_and_len()

    @property
    def address(self) -> int:
        """The host address of byte 0 (for futex syscalls)."""
        return self._base_and_len()[0]

    def read(self, addr: int, size: int) -> bytes:
        return ctypes.string_at(self._check(addr, size), size)

    def write(self, addr: int, data: bytes) -> None:
        ctypes.memmove(self._check(addr, len(data)), data, len(data))

    # The fixed memory's view first (a slice or struct.pack_into: a third of a ctypes object's
    # cost, on every dlopen, dlsym and descriptor call), ctypes for a memory that may move.
    def read_u32(self, addr: int) -> int:
        view = self._bytes
        if view is not None and 0 <= addr <= len(view) - 4:
            return int(_U32_LE.unpack_from(view, addr)[0])
        value: int = _U32.from_address(self._check(addr, 4)).value
        return value

    def write_u32(self, addr: int, value: int) -> None:
        view = self._bytes
        if view is not None and 0 <= addr <= len(view) - 4:
            _U32_LE.pack_into(view, addr, value & 0xFFFFFFFF)
        else:
            _U32.from_address(self._check(addr, 4)).value = value & 0xFFFFFFFF

    def write_u8(self, addr: int, value: int) -> None:
        view = self._bytes
        if view is not None and 0 <= addr < len(view):
            view[addr] = value & 0xFF
        else:
            ctypes.memset(self._check(addr, 1), value & 0xFF, 1)

    def read_str(self, addr: int, size: int) -> str:
        view = self._bytes
        if view is not None and addr >= 0 and size >= 0 and addr + size <= len(view):
            return str(view[addr:addr + size], "utf-8", "replace")
        return ctypes.string_at(self._check(addr, size), size).decode("utf-8",
                                                                      errors="replace")

    def read_cstr(self, addr: int, limit: int = 4096) -> str:
        out = bytearray()
        while len(out) < limit:
            b = self.read(addr + len(out), 1)
            if b == b"\0":
                break
            out += b
        return out.decode("utf-8", errors="replace")

    def buffers(self, iovs: int, count: int) -> list[memoryview]:
        """The guest buffers an iovec array names (pointer u32, length u32 each), as writable
        views of the memory itself: readv/writev move data with no copy."""
        if count < 0 or count > 1024:  # IOV_MAX: readv/writev's EINVAL (a ValueError)
            raise ValueError(f"{count} iovecs")
        fields = struct.unpack(f"<{2 * count}I", self.read(iovs, 8 * count))
        views = []
        for i in range(0, 2 * count, 2):
            addr, size = fields[i], fields[i + 1]
            if size:
                views.append(memoryview((ctypes.c_char * size).from_address(
                    self._check(addr, size))).cast("B"))
        return views

    def fill(self, addr: int, size: int, byte: int = 0) -> None:
        ctypes.memset(self._check(addr, size), byte, size)
