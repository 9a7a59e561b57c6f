"""Blocking waits that take part in the program: `poll_oneoff` and reads that would block.

A thread waiting here (a sleep, a read of a pipe or of stdin, a poll on descriptors) waits on
its object and on the worker's wake-up descriptor together (`InstanceGroup.nudge` signals it),
so that a link operation another thread broadcasts is applied at once and the thread then
goes back to waiting, and a stopping program is left at once. Nothing is read ahead of the
guest: the wait only learns that the descriptor is ready.

Layouts (wasi_snapshot_preview1): a subscription is 48 bytes (userdata u64 @0, tag u8 @8;
clock: id u32 @16, timeout u64 @24, precision u64 @32, flags u16 @40; fd_read/fd_write: fd
u32 @16); an event is 32 bytes (userdata u64 @0, error u16 @8, type u8 @10, nbytes u64 @16,
flags u16 @24).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import struct
import termios
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from wasmgroup.shared import wasi
from wasmgroup.shared.wasi import WasiError
from wasmgroup.worker.memview import GuestFault

if TYPE_CHECKING:
    from wasmgroup.worker.group import InstanceGroup

SUBSCRIPTION_SIZE = 48
EVENT_SIZE = 32
TAG_CLOCK, TAG_FD_READ, TAG_FD_WRITE = 0, 1, 2
FLAG_ABSTIME = 1
EVENT_HANGUP = 1
CLOCK_REALTIME, CLOCK_MONOTONIC = 0, 1
WAIT_SLICE_MS = 50  # a wait re-checks pending work this often even if never woken
_READ_EVENTS = select.POLLIN | select.POLLPRI
_WRITE_EVENTS = select.POLLOUT
_DONE_EVENTS = select.POLLHUP | select.POLLERR | select.POLLNVAL

_wake_fd: int | None = None


def wake_fd() -> int:
    """This process's wake-up eventfd (one for every group it hosts, never closed: a nudge
    from another thread can never write into a descriptor number reused meanwhile)."""
    global _wake_fd
    if _wake_fd is None:
        _wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    return _wake_fd


def nudge() -> None:
    os.eventfd_write(wake_fd(), 1)


def _wait(group: InstanceGroup, watched: dict[int, int], deadline_ns: int | None
          ) -> dict[int, int]:
    """Wait until a watched descriptor (os fd -> poll events) is ready or the deadline
    passes, applying link operations meanwhile; the ready ones with their events."""
    poller = select.poll()
    for fd, events in watched.items():
        poller.register(fd, events)
    wake = wake_fd()
    poller.register(wake, select.POLLIN)
    group.descriptors.pinned = set(watched)
    try:
        return _wait_loop(group, poller, wake, bool(watched), deadline_ns)
    finally:
        group.descriptors.pinned = set()


def _wait_loop(group: InstanceGroup, poller: select.poll, wake: int, watching: bool,
               deadline_ns: int | None) -> dict[int, int]:
    while True:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(wake)
        group.service_pending()
        if group.service.stopping():
            group.raise_stopped()
        slice_ms = WAIT_SLICE_MS
        if deadline_ns is not None:
            left = deadline_ns - time.monotonic_ns()
            if left <= 0 and not watching:
                return {}
            slice_ms = max(0, min(slice_ms, -(-left // 1_000_000)))
        ready = {fd: ev for fd, ev in poller.poll(slice_ms) if fd != wake}
        if ready:
            return ready
        if deadline_ns is not None and time.monotonic_ns() >= deadline_ns:
            return {}


def wait_for(group: InstanceGroup, fd: int, write: bool) -> None:
    """Before a read (write) of `fd` that could block: wait until it would not, taking part
    in the program meanwhile. A non-blocking descriptor is not waited on."""
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK:
        return
    _wait(group, {fd: _WRITE_EVENTS if write else _READ_EVENTS}, None)


def _now_ns(clock_id: int) -> int:
    return time.time_ns() if clock_id == CLOCK_REALTIME else time.monotonic_ns()


def _readable_bytes(fd: int) -> int:
    try:
        buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
        return int(struct.unpack("<i", buf)[0])
    except OSError:
        try:
            st = os.fstat(fd)
            return max(0, st.st_size - os.lseek(fd, 0, os.SEEK_CUR))
        except OSError:
            return 0


def make_poll_oneoff(group: InstanceGroup) -> Callable[[int, int, int, int], int]:
    def poll_oneoff(subscriptions: int, events: int, count: int, ret_count: int) -> int:
        if count <= 0:
            return wasi.EINVAL
        try:
            raw = group.memory.read(subscriptions, count * SUBSCRIPTION_SIZE)
        except GuestFault:
            return wasi.EFAULT
        clocks: list[tuple[int, int]] = []  # (deadline, userdata)
        watched: dict[int, int] = {}  # os fd -> events
        subscribed: list[tuple[int, int, int]] = []  # (userdata, tag, os fd)
        out: list[bytes] = []
        for i in range(count):
            base = i * SUBSCRIPTION_SIZE
            userdata, tag = struct.unpack_from("<QB", raw, base)
            if tag == TAG_CLOCK:
                clock_id, timeout, _, flags = struct.unpack_from("<I4xQQH", raw, base + 16)
                if clock_id not in (CLOCK_REALTIME, CLOCK_MONOTONIC):
                    out.append(_event(userdata, wasi.EINVAL, tag))
                    continue
                # A deadline on the monotonic clock, whatever clock the guest named.
                relative = timeout - _now_ns(clock_id) if flags & FLAG_ABSTIME else timeout
                clocks.append((time.monotonic_ns() + max(relative, 0), userdata))
            elif tag in (TAG_FD_READ, TAG_FD_WRITE):
                (fd,) = struct.unpack_from("<I", raw, base + 16)
                try:
                    os_fd = group.descriptors.get(fd).os_fd
                except WasiError as err:
                    out.append(_event(userdata, err.code, tag))
                    continue
                wanted = _READ_EVENTS if tag == TAG_FD_READ else _WRITE_EVENTS
                watched[os_fd] = watched.get(os_fd, 0) | wanted
                subscribed.append((userdata, tag, os_fd))
            else:
                out.append(_event(userdata, wasi.EINVAL, tag))
        if not out:
            deadline = min((d for d, _ in clocks), default=None)
            ready = _wait(group, watched, deadline)
            now = time.monotonic_ns()
            for userdata, tag, os_fd in subscribed:
                revents = ready.get(os_fd, 0)
                wanted = _READ_EVENTS if tag == TAG_FD_READ else _WRITE_EVENTS
                if revents & (wanted | _DONE_EVENTS):
                    hangup = EVENT_HANGUP if revents & select.POLLHUP else 0
                    nbytes = _readable_bytes(os_fd) if tag == TAG_FD_READ else 0
                    out.append(_event(userdata, wasi.ESUCCESS, tag, nbytes, hangup))
            if not out:
                out = [_event(u, wasi.ESUCCESS, TAG_CLOCK) for d, u in clocks if d <= now]
        try:
            group.memory.write(events, b"".join(out))
            group.memory.write_u32(ret_count, len(out))
        except GuestFault:
            return wasi.EFAULT
        return wasi.ESUCCESS

    return poll_oneoff


def _event(userdata: int, error: int, tag: int, nbytes: int = 0, flags: int = 0) -> bytes:
    return struct.pack("<QHBx4xQH6x", userdata, error, tag, nbytes, flags)
