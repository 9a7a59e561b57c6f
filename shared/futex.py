"""Linux futex on guest memory: the cross-process wait/wake behind wasix futex calls.

Non-private futexes (no FUTEX_PRIVATE_FLAG) key on the physical page, so a waiter in one
process is woken by a wake in another when both map the same MAP_SHARED memory.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

_SYS_FUTEX = {"x86_64": 202, "aarch64": 98}.get(platform.machine())
FUTEX_WAIT = 0
FUTEX_WAKE = 1

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


def futex_wake(address: int, count: int) -> int:
    """Wake up to `count` waiters on host `address`; returns how many were woken."""
    if _SYS_FUTEX is None:
        raise OSError(errno.ENOSYS, f"futex is not supported on {platform.machine()}")
    rc = int(_libc.syscall(_SYS_FUTEX, ctypes.c_void_p(address), FUTEX_WAKE,
                           ctypes.c_int(count), None, None, 0))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc
