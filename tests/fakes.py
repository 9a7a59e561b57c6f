"""Stand-ins for the one side effect the pure linker has: growing linear memory."""

from __future__ import annotations


class FakeMemory:
    """Pages that only grow, up to `maximum`, like wasm memory.grow."""

    def __init__(self, pages: int = 1, maximum: int = 1 << 16) -> None:
        self.pages = pages
        self.maximum = maximum

    def grow(self, pages: int) -> int:
        if self.pages + pages > self.maximum:
            return -1
        old = self.pages
        self.pages += pages
        return old
