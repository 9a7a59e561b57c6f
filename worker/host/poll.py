"""`poll_oneoff` that takes part in the program: sleeps wake for link operations and stops.

wasix-libc's nanosleep/usleep/sleep are `poll_oneoff` with clock subscriptions only. Those are
served here, as waits that apply pending link operations as they come and notice a stopping
program at once (`InstanceGroup.sleep_until`), so a sleeping thread neither delays another
thread's dlopen nor the program's exit. Subscriptions on descriptors go to wasmtime's own
`poll_oneoff` unchanged.

Layouts (wasi_snapshot_preview1): a subscription is 48 bytes (userdata u64 @0, tag u8 @8,
clock id u32 @16, timeout u64 @24, precision u64 @32, flags u16 @40); an event is 32 bytes
(userdata u64 @0, error u16 @8, type u8 @10).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from wasmgroup.worker.memview import GuestFault

if TYPE_CHECKING:
    from wasmgroup.worker.group import InstanceGroup

SUBSCRIPTION_SIZE = 48
EVENT_SIZE = 32
TAG_CLOCK = 0
FLAG_ABSTIME = 1
CLOCK_REALTIME, CLOCK_MONOTONIC = 0, 1
ESUCCESS, EINVAL, EFAULT = 0, 28, 21


def _now_ns(clock_id: int) -> int:
    return time.time_ns() if clock_id == CLOCK_REALTIME else time.monotonic_ns()


def make_poll_oneoff(group: InstanceGroup, passthrough: Callable[..., int]
                     ) -> Callable[[int, int, int, int], int]:
    def poll_oneoff(subscriptions: int, events: int, count: int, ret_count: int) -> int:
        if count <= 0:
            return EINVAL
        try:
            raw = group.memory.read(subscriptions, count * SUBSCRIPTION_SIZE)
        except GuestFault:
            return EFAULT
        clocks = []
        for i in range(count):
            base = i * SUBSCRIPTION_SIZE
            userdata, tag = struct.unpack_from("<QB", raw, base)
            if tag != TAG_CLOCK:
                return passthrough(subscriptions, events, count, ret_count)
            clock_id, timeout, _, flags = struct.unpack_from("<I4xQQH", raw, base + 16)
            if clock_id not in (CLOCK_REALTIME, CLOCK_MONOTONIC):
                return passthrough(subscriptions, events, count, ret_count)
            # A deadline on the monotonic clock, whatever clock the guest named.
            relative = timeout - _now_ns(clock_id) if flags & FLAG_ABSTIME else timeout
            clocks.append((time.monotonic_ns() + max(relative, 0), userdata))
        group.sleep_until(min(deadline for deadline, _ in clocks))
        now = time.monotonic_ns()
        fired = [userdata for deadline, userdata in clocks if deadline <= now]
        try:
            out = b"".join(struct.pack("<QHBx", u, ESUCCESS, TAG_CLOCK).ljust(EVENT_SIZE, b"\0")
                           for u in fired)
            group.memory.write(events, out)
            group.memory.write_u32(ret_count, len(fired))
        except GuestFault:
            return EFAULT
        return ESUCCESS

    return poll_oneoff
