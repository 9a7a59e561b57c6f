"""The side-module data allocator against the reference's test vectors (Wasmer's unit test)."""

from __future__ import annotations

import pytest
from fakes import FakeMemory

from wasmgroup.orchestrator.allocator import PAGE, MemoryAllocator
from wasmgroup.shared.errors import LinkError


def test_reference_vectors() -> None:
    memory = FakeMemory(2)
    alloc = MemoryAllocator(memory.grow)
    assert alloc.allocate(24, 4) == 2 * PAGE
    assert memory.pages == 3
    assert alloc.allocate(16, 4) == 2 * PAGE + 24
    assert alloc.allocate(64, 32) == 2 * PAGE + 64
    assert memory.pages == 3
    assert alloc.allocate(2 * PAGE + 256, 1024) == 3 * PAGE
    assert memory.pages == 6
    # Page 5 has less free space left, so it wins the best fit.
    assert alloc.allocate(63 * 1024, 64) == 5 * PAGE + 256
    # Does not fit on page 5 any more.
    assert alloc.allocate(4096, 512) == 2 * PAGE + 512


def test_exact_page_leaves_no_region() -> None:
    memory = FakeMemory(1)
    alloc = MemoryAllocator(memory.grow)
    assert alloc.allocate(PAGE, 16) == PAGE
    assert alloc.regions == []


def test_snapshot_restore() -> None:
    memory = FakeMemory(1)
    alloc = MemoryAllocator(memory.grow)
    alloc.allocate(100, 4)
    saved = alloc.snapshot()
    assert alloc.allocate(100, 4) == PAGE + 100
    alloc.restore(saved)
    assert alloc.allocate(100, 4) == PAGE + 100


def test_restore_keeps_grown_pages_as_free_space() -> None:
    memory = FakeMemory(1)
    alloc = MemoryAllocator(memory.grow)
    saved = alloc.snapshot()
    assert alloc.allocate(3 * PAGE, 16) == PAGE  # grows 3 pages
    alloc.restore(saved)
    # The failed load's pages are reused, not grown again.
    assert alloc.allocate(100, 16) == PAGE
    assert memory.pages == 4


def test_memory_cannot_grow() -> None:
    alloc = MemoryAllocator(FakeMemory(1, maximum=2).grow)
    with pytest.raises(LinkError, match="cannot grow linear memory by 2 pages"):
        alloc.allocate(PAGE + 1, 4)
