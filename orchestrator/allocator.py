"""Placement of side modules' data in linear memory (Wasmer's `MemoryAllocator`).

Not a heap: there is no free. The allocator grows linear memory itself and keeps the unused
tail of each growth as a free region; an allocation takes the region that would be left with
the least free space (best fit), else grows memory by whole pages. The guest's own heap grows
memory too; both coexist because both only ever append pages.
"""

from __future__ import annotations

from collections.abc import Callable

from wasmgroup.shared.errors import LinkError
from wasmgroup.shared.records import record

PAGE = 65536


@record(frozen=False)
class FreeRegion:
    base: int
    remaining: int


def _align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


class MemoryAllocator:
    """Best-fit placement over free tail regions.

    `grow(pages)` grows linear memory by `pages` and returns the old size in pages, or -1 when
    memory cannot grow; it is the only side effect. `snapshot`/`restore` let a failed dlopen
    put the free-region list back as it was.
    """

    def __init__(self, grow: Callable[[int], int]) -> None:
        self._grow = grow
        self.regions: list[FreeRegion] = []
        self.grown: list[tuple[int, int]] = []  # (base, bytes) of every growth, in order

    def allocate(self, size: int, alignment: int) -> int:
        best: tuple[int, FreeRegion, int] | None = None  # (left over, region, padding)
        for region in self.regions:
            pad = _align_up(region.base, alignment) - region.base
            if region.remaining >= pad + size:
                left = region.remaining - pad - size
                if best is None or left < best[0]:
                    best = (left, region, pad)
        if best is not None:
            _, region, pad = best
            address = region.base + pad
            region.base += pad + size
            region.remaining -= pad + size
            return address

        pages = max(1, -(-size // PAGE))
        old_pages = self._grow(pages)
        if old_pages < 0:
            raise LinkError(f"cannot grow linear memory by {pages} pages for {size} bytes "
                            "of module data")
        # Whole pages are 64 KiB-aligned, which covers every alignment a module can ask for.
        address = old_pages * PAGE
        total = pages * PAGE
        self.grown.append((address, total))
        if total > size:
            self.regions.append(FreeRegion(address + size, total - size))
        return address

    def snapshot(self) -> tuple[list[tuple[int, int]], int]:
        return [(r.base, r.remaining) for r in self.regions], len(self.grown)

    def restore(self, snapshot: tuple[list[tuple[int, int]], int]) -> None:
        """Back to `snapshot`, except that memory grown since stays usable: each growth
        becomes one free region (memory cannot shrink, and its pages are still unused)."""
        regions, grown_before = snapshot
        self.regions = [FreeRegion(base, remaining) for base, remaining in regions]
        self.regions += [FreeRegion(base, size) for base, size in self.grown[grown_before:]]
