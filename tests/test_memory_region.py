"""The shared linear memory (shared/memory.py): one memfd, mapped over wasmtime memories in
several processes, with the logical page count in a control page after the memory."""

from __future__ import annotations

import ctypes
import gc
import inspect
import mmap
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import wasmtime
from leaks import open_fds

from wasmgroup.shared.engine import make_engine_config
from wasmgroup.shared.memory import CONTROL_BYTES, PAGE, SharedRegion
from wasmgroup.worker import wasmtime_compat


@pytest.fixture(autouse=True)
def no_fd_leak() -> Iterator[None]:
    gc.collect()
    before = open_fds()
    yield
    gc.collect()  # wasmtime objects hold descriptors until they are freed
    assert open_fds() == before, "the test leaked file descriptors"


def test_create_sets_size_and_logical_pages() -> None:
    region = SharedRegion.create(8, 3)
    try:
        assert region.max_pages == 8
        assert region.memory_bytes == 8 * PAGE
        assert region.pages == 3
        assert os.fstat(region.fd).st_size == 8 * PAGE + CONTROL_BYTES
        # The control page's first u32, little-endian, is the logical size.
        assert os.pread(region.fd, 4, 8 * PAGE) == (3).to_bytes(4, "little")
        # The descriptor is not inherited by children unless asked for.
        assert not os.get_inheritable(region.fd)
    finally:
        region.close()


def test_set_pages_is_seen_by_another_view() -> None:
    region = SharedRegion.create(16, 1)
    # A view of the same file, as a worker has one: its own descriptor (a view closes its fd).
    view = SharedRegion(os.dup(region.fd), 16, owner=False)
    try:
        assert view.pages == 1
        region.set_pages(5)
        assert view.pages == 5
        region.set_pages(16)
        assert view.pages == 16
        with pytest.raises(ValueError, match="17 pages do not fit a memory of at most 16"):
            region.set_pages(17)
        assert view.pages == 16
        # Only the owner writes the control page.
        with pytest.raises(TypeError):
            view.set_pages(2)
        assert region.pages == 16
    finally:
        view.close()
        region.close()


def test_memory_bytes_and_control_page_do_not_overlap() -> None:
    region = SharedRegion.create(2, 2)
    try:
        os.pwrite(region.fd, b"\xff" * PAGE, PAGE)  # the whole last page of the memory
        assert region.pages == 2
        region.set_pages(1)
        assert os.pread(region.fd, PAGE, PAGE) == b"\xff" * PAGE
    finally:
        region.close()


def test_map_over_rejects_a_memory_larger_than_the_region() -> None:
    region = SharedRegion.create(4, 1)
    try:
        with pytest.raises(ValueError, match=rf"a memory of {4 * PAGE + 1} bytes does not fit "
                                             rf"a region of {4 * PAGE}"):
            region.map_over(0, 4 * PAGE + 1)
        with pytest.raises(ValueError, match=r"does not fit"):
            region.map_over(0, 5 * PAGE)
    finally:
        region.close()


def test_map_over_reports_a_failed_mapping() -> None:
    region = SharedRegion.create(1, 1)
    try:
        # MAP_FIXED at an address that is not page-aligned fails (EINVAL) without mapping.
        with pytest.raises(OSError, match=r"cannot map the shared memory"):
            region.map_over(1, PAGE)
    finally:
        region.close()


def test_map_over_plain_process_memory() -> None:
    """Without wasmtime: anonymous memory of this process becomes a window on the file."""
    region = SharedRegion.create(2, 1)
    window = mmap.mmap(-1, 2 * PAGE)
    try:
        window[:4] = b"anon"
        view = ctypes.c_char.from_buffer(window)
        address = ctypes.addressof(view)
        del view
        region.map_over(address, 2 * PAGE)
        assert window[:4] == b"\x00" * 4  # the anonymous bytes are gone: the file shows
        window[10:15] = b"hello"
        assert os.pread(region.fd, 5, 10) == b"hello"
        os.pwrite(region.fd, b"world", 2 * PAGE - 5)
        assert window[2 * PAGE - 5:] == b"world"
        assert region.pages == 1  # the control page is not part of the window
    finally:
        window.close()
        region.close()


# --- wasm in two processes over one region -----------------------------------------------

P = 16  # pages of every memory in these tests
ADDR_PARENT = 1024  # the parent stores here, the child loads
ADDR_CHILD = P * PAGE - 4  # the child stores here (the last word), the parent loads

WAT = ('(module (import "env" "memory" (memory 1{shared}))'
       ' (func (export "st") (param i32 i32) (i32.store (local.get 0) (local.get 1)))'
       ' (func (export "ld") (param i32) (result i32) (i32.load (local.get 0))))')


def wasm_over(region: SharedRegion, kind: str, pages: int) -> tuple[
        wasmtime.Store, wasmtime.Func, wasmtime.Func, tuple[object, ...]]:
    """(store, st, ld, objects to keep alive): wasm code whose memory is mapped onto `region`;
    `kind` is "shared" (a wasmtime.SharedMemory) or "plain" (a wasmtime.Memory). The child
    process runs this same function (its source is sent along)."""
    wasmtime_compat.apply()
    engine = wasmtime.Engine(make_engine_config())
    store = wasmtime.Store(engine)
    store.set_epoch_deadline(1 << 40)
    limits = wasmtime.Limits(pages, pages)
    memory: wasmtime.SharedMemory | wasmtime.Memory
    if kind == "shared":
        memory = wasmtime.SharedMemory(engine, wasmtime.MemoryType(limits, shared=True))
        base, length = memory.data_ptr(), memory.data_len()
        wat = WAT.format(shared=f" {pages} shared")
    else:
        memory = wasmtime.Memory(store, wasmtime.MemoryType(limits))
        base, length = memory.data_ptr(store), memory.data_len(store)
        wat = WAT.format(shared="")
    assert length == pages * PAGE, length
    region.map_over(ctypes.addressof(base.contents), length)
    instance = wasmtime.Instance(store, wasmtime.Module(engine, wat), [memory])
    exports = instance.exports(store)
    st, ld = exports["st"], exports["ld"]
    assert isinstance(st, wasmtime.Func) and isinstance(ld, wasmtime.Func)
    return store, st, ld, (engine, memory, instance)


CHILD = f"""
from __future__ import annotations
import ctypes
import sys
import wasmtime
from wasmgroup.shared.memory import PAGE, SharedRegion
from wasmgroup.worker import wasmtime_compat
from wasmgroup.shared.engine import make_engine_config

WAT = {WAT!r}
{inspect.getsource(wasm_over)}
fd, kind = int(sys.argv[1]), sys.argv[2]
region = SharedRegion(fd, {P}, owner=False)
store, st, ld, keep = wasm_over(region, kind, {P})
print(region.pages, ld(store, {ADDR_PARENT}))
st(store, {ADDR_CHILD}, 0x5EED_0002)
"""


@pytest.mark.parametrize(("parent_kind", "child_kind"),
                         [("shared", "shared"), ("plain", "plain"), ("shared", "plain")])
def test_wasm_in_two_processes_shares_the_region(parent_kind: str, child_kind: str) -> None:
    region = SharedRegion.create(P, 3)
    try:
        store, st, ld, keep = wasm_over(region, parent_kind, P)
        st(store, ADDR_PARENT, 0x5EED_0001)
        assert int.from_bytes(os.pread(region.fd, 4, ADDR_PARENT), "little") == 0x5EED_0001
        assert ld(store, ADDR_CHILD) == 0
        region.set_pages(7)
        os.set_inheritable(region.fd, True)
        try:
            child = subprocess.run([sys.executable, "-c", CHILD, str(region.fd), child_kind],
                                   pass_fds=[region.fd], capture_output=True, text=True,
                                   timeout=60)
        finally:
            os.set_inheritable(region.fd, False)
        assert child.returncode == 0, child.stderr
        # The child saw the logical size and the parent's store ...
        assert child.stdout.split() == ["7", str(0x5EED_0001)]
        # ... and the parent's wasm sees the child's store, in the last word of the memory.
        assert ld(store, ADDR_CHILD) == 0x5EED_0002
        del store, st, ld, keep
    finally:
        region.close()


def test_memories_are_separate_without_map_over() -> None:
    # Two wasmtime memories do not share bytes by themselves: the tests above see each
    # other's stores only through the region.
    wasmtime_compat.apply()
    engine = wasmtime.Engine(make_engine_config())
    one = wasmtime.SharedMemory(engine, wasmtime.MemoryType(wasmtime.Limits(1, 1), shared=True))
    two = wasmtime.SharedMemory(engine, wasmtime.MemoryType(wasmtime.Limits(1, 1), shared=True))
    one.data_ptr()[0] = 42
    assert two.data_ptr()[0] == 0
    del one, two, engine
