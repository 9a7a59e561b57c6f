"""What tests check was left behind: descriptors, worker processes, /dev/shm entries."""

from __future__ import annotations

import gc
import os

import psutil


def open_fds() -> int:
    gc.collect()  # wasmtime objects (and mapped .cwasm files) hold descriptors until freed
    return len(os.listdir("/proc/self/fd"))


def assert_nothing_left(fds_before: int) -> None:
    """No worker process (nor zombie), no socket or memfd, no /dev/shm entry of ours."""
    assert psutil.Process().children(recursive=True) == []
    assert open_fds() <= fds_before
    assert not [n for n in os.listdir("/dev/shm") if "wasmgroup" in n]
