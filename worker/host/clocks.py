"""WASI clocks served by the host, one for the whole program.

wasmtime's WASI starts each context's monotonic clock at zero when the context is made, and
every thread has its own context (in its own process): readings of two threads could not be
compared, and an absolute deadline taken in one thread meant nothing in another. POSIX wants
one monotonic clock per process, so the monotonic clock here is the host's CLOCK_MONOTONIC
(system-wide: the same in every worker process, and what `poll.py` sleeps against). The
process and thread CPU-time clocks are this worker's (its process hosts exactly that thread).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from wasmgroup.worker.memview import GuestFault

if TYPE_CHECKING:
    from wasmgroup.worker.group import InstanceGroup

ESUCCESS, EFAULT, EINVAL = 0, 21, 28
_CLOCKS: dict[int, tuple[Callable[[], int], int]] = {  # id -> (read ns, resolution ns)
    0: (time.time_ns, 1000),  # realtime
    1: (time.monotonic_ns, 1),  # monotonic
    2: (time.process_time_ns, 1000),  # process CPU time
    3: (time.thread_time_ns, 1000),  # thread CPU time
}
CLOCK_FUNCTIONS = ("clock_time_get", "clock_res_get")


def make_clock_functions(group: InstanceGroup) -> dict[str, Callable[..., int]]:
    def write_u64(address: int, value: int) -> int:
        try:
            group.memory.write(address, value.to_bytes(8, "little"))
        except GuestFault:
            return EFAULT
        return ESUCCESS

    def clock_time_get(clock_id: int, precision: int, ret: int) -> int:
        clock = _CLOCKS.get(clock_id)
        return EINVAL if clock is None else write_u64(ret, clock[0]())

    def clock_res_get(clock_id: int, ret: int) -> int:
        clock = _CLOCKS.get(clock_id)
        return EINVAL if clock is None else write_u64(ret, clock[1])

    return {"clock_time_get": clock_time_get, "clock_res_get": clock_res_get}
