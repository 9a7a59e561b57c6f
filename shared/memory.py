"""The program's linear memory as one memfd, mapped MAP_SHARED into every process.

Layout of the memfd: the linear memory's bytes (`memory_bytes`, the memory's maximum), then one
control page whose first u32 is the memory's *logical* size in pages: what the guest sees as
`memory.size`. Only the coordinator writes the control page; workers read it.

Why a logical size: wasmtime keeps each memory's current length per process, so growth by one
process would not be visible to another. Every process therefore creates its wasmtime memory at
its maximum size from the start (the memfd is sparse: untouched pages cost nothing) and the
guest's `memory.size`/`memory.grow` go through the host (the load-time rewrite) to this shared
counter. An access past the logical size but inside the maximum does not trap.

`map_over` puts the memfd over the bytes of a memory wasmtime created (MAP_FIXED on its own
reservation, same protection): stores by wasm in any process land in the one file.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct

PAGE = 65536
CONTROL_BYTES = 4096
MAX_PAGES_32 = 65536  # a 32-bit memory without a declared maximum: 4 GiB

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_MAP_FIXED = 0x10
_MAP_FAILED = ctypes.c_void_p(-1).value


class SharedRegion:
    """A memfd holding a linear memory of `max_pages` pages plus the control page."""

    def __init__(self, fd: int, max_pages: int, owner: bool) -> None:
        self.fd = fd
        self.max_pages = max_pages
        self.memory_bytes = max_pages * PAGE
        self._control = mmap.mmap(fd, CONTROL_BYTES, offset=self.memory_bytes,
                                  access=mmap.ACCESS_WRITE if owner else mmap.ACCESS_READ)

    @classmethod
    def create(cls, max_pages: int, pages: int) -> SharedRegion:
        """A new region (the coordinator's), with `pages` pages in logical use."""
        fd = os.memfd_create("wasmgroup-memory", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, max_pages * PAGE + CONTROL_BYTES)
            region = cls(fd, max_pages, owner=True)
        except BaseException:
            os.close(fd)
            raise
        region.set_pages(pages)
        return region

    @property
    def pages(self) -> int:
        """The logical size in pages (what `memory.size` returns)."""
        value: int = struct.unpack_from("<I", self._control, 0)[0]
        return value

    def set_pages(self, pages: int) -> None:
        if not 0 <= pages <= self.max_pages:
            raise ValueError(f"{pages} pages do not fit a memory of at most {self.max_pages}")
        struct.pack_into("<I", self._control, 0, pages)

    def close(self) -> None:
        """Unmap the control page and close `fd` (which this object owns, view or not)."""
        if self._control.closed:
            return
        self._control.close()
        os.close(self.fd)

    def map_over(self, address: int, length: int) -> None:
        """Replace `length` bytes of this process's memory at `address` (a wasmtime memory's
        base) with the region's memory, shared."""
        if length > self.memory_bytes:
            raise ValueError(f"a memory of {length} bytes does not fit a region of "
                             f"{self.memory_bytes}")
        result = _libc.mmap(ctypes.c_void_p(address), length,
                            mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED | _MAP_FIXED,
                            self.fd, 0)
        if result in (None, _MAP_FAILED) or result != address:
            err = ctypes.get_errno() or errno.ENOMEM
            raise OSError(err, f"cannot map the shared memory: {os.strerror(err)}")
