"""Host side of the instruction rewrite (orchestrator/rewrite.py): import module `wasmgroup`.

memory.size/grow go through the group (so that, across processes, one shared size can be
kept); memory.atomic.wait/notify become futex waits and wakes on the shared memory, which
wake across threads and processes alike. Return values follow the instructions: grow gives
the old size in pages or -1; wait gives 0 (woken), 1 (value differed) or 2 (timed out);
notify gives the number of waiters woken.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from wasmgroup.shared.errors import LinkError
from wasmgroup.shared.futex import futex_wake

if TYPE_CHECKING:
    from wasmgroup.worker.group import InstanceGroup

U32 = 0xFFFFFFFF
WAIT_RESULT = {"woken": 0, "mismatch": 1, "timeout": 2}


def make_memory_functions(group: InstanceGroup) -> dict[str, Callable[..., int]]:
    def effective(addr: int, offset: int, size: int) -> int:
        address = (addr & U32) + (offset & U32)
        if address % size:
            raise LinkError(f"unaligned atomic access at {address:#x}")
        group.memory.read(address, size)  # bounds: a guest fault ends the program
        return address

    def memory_size() -> int:
        return group.memory_pages()

    def memory_grow(delta: int) -> int:
        return group.grow_memory(delta & U32)

    def atomic_wait32(addr: int, expected: int, timeout: int, offset: int) -> int:
        address = effective(addr, offset, 4)
        if group.memory.read_u32(address) != expected & U32:
            return WAIT_RESULT["mismatch"]
        outcome = group.futex_wait(address, expected & U32, None if timeout < 0 else timeout)
        return WAIT_RESULT[outcome]

    def atomic_wait64(addr: int, expected: int, timeout: int, offset: int) -> int:
        address = effective(addr, offset, 8)
        value = int.from_bytes(group.memory.read(address, 8), "little")
        if value != expected & 0xFFFFFFFFFFFFFFFF:
            return WAIT_RESULT["mismatch"]
        # Linux futexes are 32-bit: sleep on the low word; wakers notify the same address.
        outcome = group.futex_wait(address, value & U32, None if timeout < 0 else timeout)
        return WAIT_RESULT[outcome]

    def atomic_notify(addr: int, count: int, offset: int) -> int:
        address = effective(addr, offset, 4)
        return futex_wake(group.memory.address + address, min(count & U32, 0x7FFFFFFF))

    return {"memory_size": memory_size, "memory_grow": memory_grow,
            "atomic_wait32": atomic_wait32, "atomic_wait64": atomic_wait64,
            "atomic_notify": atomic_notify}
