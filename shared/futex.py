"""Linux futex on guest memory: the cross-process wait/wake behind wasix futex calls.

Non-private futexes (no FUTEX_PRIVATE_FLAG) key on the physical page, so a waiter in one
process is woken by a wake in another when both map the same MAP_SHARED memory.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import time

_SYS_FUTEX = {"x86_64": 202, "aarch64": 98}.get(platform.machine())
_SYS_FUTEX_WAITV = {"x86_64": 449, "aarch64": 449}.get(platform.machine())  # Linux 5.16+
FUTEX_WAIT = 0
FUTEX_WAKE = 1
FUTEX_PRIVATE_FLAG = 128
FUTEX2_SIZE_U32 = 0x02
CLOCK_MONOTONIC = 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def futex_wait(address: int, expected: int, timeout_ns: int | None) -> str:
    """Sleep while the u32 at host `address` equals `expected`.

    Returns "woken", "mismatch" (the value differed) or "timeout"; an interrupted wait
    returns "woken" (callers re-check their condition, as futex users must anyway).
    """
    if _SYS_FUTEX is None:
        raise OSError(errno.ENOSYS, f"futex is not supported on {platform.machine()}")
    ts = None
    if timeout_ns is not None:
        ts = ctypes.byref(_Timespec(timeout_ns // 1_000_000_000, timeout_ns % 1_000_000_000))
    # ctypes releases the GIL for the syscall, so other Python threads keep running.
    rc = _libc.syscall(_SYS_FUTEX, ctypes.c_void_p(address), FUTEX_WAIT,
                       ctypes.c_uint32(expected), ts, None, 0)
    if rc == 0:
        return "woken"
    err = ctypes.get_errno()
    if err == errno.EAGAIN:
        return "mismatch"
    if err == errno.ETIMEDOUT:
        return "timeout"
    if err == errno.EINTR:
        return "woken"
    raise OSError(err, os.strerror(err))


class _Waiter(ctypes.Structure):  # struct futex_waitv
    _fields_ = [("val", ctypes.c_uint64), ("uaddr", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("reserved", ctypes.c_uint32)]


_TWO_WAITERS = ctypes.c_uint(2)
_NO_FLAGS = ctypes.c_uint(0)
_MONOTONIC = ctypes.c_int(CLOCK_MONOTONIC)
_waitv_works = _SYS_FUTEX_WAITV is not None


def futex_waitv_works() -> bool:
    """Whether `WakeWord.wait` waits on both words (not known to fail so far)."""
    return _waitv_works


class WakeWord:
    """A futex of this process's own, to wake one thread out of `wait` without waking
    everyone else waiting on the guest's futex (in every process). One thread at a time
    waits with a given word (a group's own thread): the futex_waitv arguments are built once
    and filled in per wait, so that a wait costs a few field stores and one syscall."""

    def __init__(self) -> None:
        self._word = ctypes.c_uint32(0)
        self.address = ctypes.addressof(self._word)
        self._waiters = (_Waiter * 2)(
            _Waiter(0, 0, FUTEX2_SIZE_U32, 0),
            _Waiter(0, self.address, FUTEX2_SIZE_U32 | FUTEX_PRIVATE_FLAG, 0))
        self._guest, self._own = self._waiters[0], self._waiters[1]  # views into the array
        self._filled = [0, 0]  # the guest address and wake word value stored there
        self._deadline = _Timespec()
        self._deadline_ref = ctypes.byref(self._deadline)

    @property
    def value(self) -> int:
        return int(self._word.value)

    def wake(self) -> None:
        """Change the word and wake its waiter (a change before it sleeps stops the sleep)."""
        self._word.value = (self._word.value + 1) & 0xFFFFFFFF
        if _SYS_FUTEX is not None:
            _libc.syscall(_SYS_FUTEX, ctypes.c_void_p(self.address),
                          FUTEX_WAKE | FUTEX_PRIVATE_FLAG, ctypes.c_int(1), None, None, 0)

    def wait(self, address: int, expected: int, seen: int, timeout_ns: int) -> str:
        """`futex_wait` on the shared u32 at host `address` for at most `timeout_ns`, which
        also ends when this word changes from `seen` or is woken: it then returns "wake".
        Falls back to `futex_wait` (where `wake()` cannot reach it) on kernels without
        futex_waitv."""
        global _waitv_works
        if not _waitv_works:
            return futex_wait(address, expected, timeout_ns)
        guest = self._guest
        guest.val = expected & 0xFFFFFFFF
        if address != self._filled[0]:  # ctypes field stores cost ~0.15 µs each
            guest.uaddr = address
            self._filled[0] = address
        if seen != self._filled[1]:
            self._own.val = seen
            self._filled[1] = seen
        deadline = self._deadline
        deadline.tv_sec, deadline.tv_nsec = divmod(
            time.clock_gettime_ns(time.CLOCK_MONOTONIC) + timeout_ns, 1_000_000_000)
        rc = _libc.syscall(_SYS_FUTEX_WAITV, self._waiters, _TWO_WAITERS, _NO_FLAGS,
                           self._deadline_ref, _MONOTONIC)
        if rc >= 0:
            return "wake" if rc == 1 else "woken"
        err = ctypes.get_errno()
        if err == errno.EAGAIN:  # a value differed: the wake word's, or the guest's
            return "wake" if self._word.value != seen else "mismatch"
        if err == errno.ETIMEDOUT:
            return "timeout"
        if err == errno.EINTR:
            return "woken"
        if err == errno.ENOSYS:
            _waitv_works = False
            return futex_wait(address, expected, timeout_ns)
        raise OSError(err, os.strerror(err))


def futex_wake(address: int, count: int) -> int:
    """Wake up to `count` waiters on host `address`; returns how many were woken."""
    if _SYS_FUTEX is None:
        raise OSError(errno.ENOSYS, f"futex is not supported on {platform.machine()}")
    rc = int(_libc.syscall(_SYS_FUTEX, ctypes.c_void_p(address), FUTEX_WAKE, count, None,
                           None, 0))  # a Python int goes as a C int
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


# Spinning before sleeping. Waking a thread that sleeps in the kernel costs its waker a
# syscall and the sleeper its CPU's wake-up latency; when both threads have a CPU of their
# own, watching the word for a few microseconds catches most handoffs without either (a
# two-thread ping-pong: 1.7x the round trips, scripts/bench-scaling). With more runnable
# threads than CPUs a spinner takes the CPU that the thread it waits for needs, and a word
# that changes without a wake (a contended mutex's) sends the guest round its loop through
# host calls again (the parallel compressor took 1.6x as long): then it does not spin.
SPIN_NS = int(os.environ.get("WASMGROUP_FUTEX_SPIN_NS", "20000"))  # 0: never spin
_U32_AT = struct.Struct("<I").unpack_from


class Spinner:
    """Watches a futex word before its waiter sleeps, while the machine has a CPU to spare:
    the kernel's count of runnable threads (`loadavg`'s fourth field, the spinner included),
    at most `every_ns` old, is at most the number of CPUs, and there are two or more (the
    thread it waits for needs a CPU of its own to change the word meanwhile)."""

    def __init__(self, budget_ns: int = SPIN_NS, loadavg: str = "/proc/loadavg",
                 cpus: int | None = None, every_ns: int = 2_000_000) -> None:
        self.budget_ns = budget_ns
        self._loadavg = loadavg
        self._cpus = len(os.sched_getaffinity(0)) if cpus is None else cpus
        self._every_ns = every_ns
        self._checked_ns = -every_ns
        self._spare = False

    def spare_cpu(self, now_ns: int) -> bool:
        if now_ns - self._checked_ns < self._every_ns:
            return self._spare
        self._checked_ns = now_ns
        try:  # opened each time (every few ms at most): no descriptor kept in a worker
            fd = os.open(self._loadavg, os.O_RDONLY | os.O_CLOEXEC)
            try:
                running = int(os.read(fd, 128).split()[3].split(b"/")[0])
            finally:
                os.close(fd)
        except (OSError, ValueError, IndexError):
            running = self._cpus + 1  # unknown: as if busy
        self._spare = self._cpus > 1 and running <= self._cpus  # one CPU: none to spare
        return self._spare

    def until_changed(self, view: memoryview, offset: int, expected: int, wake: WakeWord,
                      seen: int) -> bool:
        """Watch the u32 at `offset` of `view` for at most the budget: True when it no
        longer holds `expected`; False when the time ran out, the wake word moved from
        `seen` (work for this thread), or no spin was worth it. The caller then sleeps as
        without it."""
        if self.budget_ns <= 0:
            return False
        clock = time.perf_counter_ns
        now = clock()
        if not self.spare_cpu(now):
            return False
        end = now + self.budget_ns
        word = wake._word
        while _U32_AT(view, offset)[0] == expected & 0xFFFFFFFF:
            if word.value != seen or clock() > end:
                return False
        return True
