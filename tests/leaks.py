"""What tests check was left behind: descriptors, worker processes, /dev/shm entries."""

from __future__ import annotations

import gc
import os

import psutil

from wasmgroup.orchestrator import capture


def open_fds() -> int:
    gc.collect()  # wasmtime objects (and mapped .cwasm files) hold descriptors until freed
    capture.drainer()  # the output drainer's descriptors are the process's, from first use
    return len(os.listdir("/proc/self/fd"))


def assert_nothing_left(fds_before: int) -> None:
    """No worker process (nor zombie), no socket or memfd, no /dev/shm entry of ours."""
    assert psutil.Process().children(recursive=True) == []
    assert open_fds() <= fds_before
    assert not [n for n in os.listdir("/dev/shm") if "wasmgroup" in n]


def processes_marked(mark: str) -> list[int]:
    """Live processes whose environment holds WASMGROUP_TEST_MARK=mark: a CLI run's
    coordinator and workers inherit it, so tests running beside others can find their own."""
    left = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("WASMGROUP_TEST_MARK") == mark and proc.status() != "zombie":
                left.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return left
