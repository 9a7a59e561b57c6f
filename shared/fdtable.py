"""The descriptor table's generation counters: one memfd, mapped by every process.

The coordinator owns the program's descriptor table (orchestrator/descriptors.py); workers
cache the OS descriptor of each entry they use. Every change of the entry behind a guest
descriptor number (close, renumber, dup2 over it, new rights) bumps that number's u32 counter
here, under the table's lock, before the old OS descriptor is released. A worker compares the
counter with the one it fetched the entry at (one memory read) before each use of its cache, so
no thread ever uses a descriptor that was closed or replaced after it last looked.
"""

from __future__ import annotations

import mmap
import os
import struct

MAX_DESCRIPTORS = 65536  # guest descriptor numbers are below this (EMFILE beyond)
_U32 = struct.Struct("<I")


class GenerationPage:
    """`MAX_DESCRIPTORS` u32 counters in a memfd (sparse: untouched pages cost nothing)."""

    def __init__(self, fd: int, owner: bool) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, MAX_DESCRIPTORS * 4,
                              access=mmap.ACCESS_WRITE if owner else mmap.ACCESS_READ)

    @classmethod
    def create(cls) -> GenerationPage:
        fd = os.memfd_create("wasmgroup-descriptors", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, MAX_DESCRIPTORS * 4)
            return cls(fd, owner=True)
        except BaseException:
            os.close(fd)
            raise

    def get(self, number: int) -> int:
        value: int = _U32.unpack_from(self._map, number * 4)[0]
        return value

    def bump(self, number: int) -> int:
        value = (self.get(number) + 1) & 0xFFFFFFFF
        _U32.pack_into(self._map, number * 4, value)
        return value

    def close(self) -> None:
        """Unmap and close the memfd (which this object owns)."""
        if self._map.closed:
            return
        self._map.close()
        os.close(self.fd)
