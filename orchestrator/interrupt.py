"""Ctrl-C while a program runs: the program ends with status 130, whatever the coordinator is
doing at that moment.

Left alone, Python turns SIGINT into a KeyboardInterrupt wherever the main thread happens to
be: half-way through starting a worker process, holding a lock, or cleaning up, which leaves
processes or a half-built group behind and ends in a traceback. While `watch_interrupts` is
active, SIGINT only wakes a watcher thread (through the signal wake-up descriptor: the handler
itself must not take a lock, the main thread may hold any), and that thread ends the program
through `Program.finish`, like any other outcome. The coordinator's own waits notice it within
a slice; a compile already under way (one call into wasmtime) is not cut short.

Signal handlers belong to the main thread: called from another thread, or when SIGINT is
ignored, `watch_interrupts` changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType


class InterruptWatch:
    """Counts SIGINTs while active and calls `on_interrupt` (from the watcher thread) for
    the first one, or at once when set after it arrived."""

    def __init__(self) -> None:
        self.interrupted = False
        self._lock = threading.Lock()
        self._on_interrupt: Callable[[], None] | None = None

    def set_target(self, on_interrupt: Callable[[], None]) -> None:
        with self._lock:
            self._on_interrupt = on_interrupt
            due = self.interrupted
        if due:
            on_interrupt()

    def _fire(self) -> None:
        with self._lock:
            self.interrupted = True
            target = self._on_interrupt
        if target is not None:
            target()

    def _watch(self, read_fd: int) -> None:
        while True:
            try:
                data = os.read(read_fd, 64)
            except InterruptedError:
                continue
            if not data:
                return  # write end closed: the watch is over
            if signal.SIGINT in data:
                self._fire()


def _note(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: nothing (the wake-up descriptor carries the signal)."""


@contextlib.contextmanager
def watch_interrupts() -> Iterator[InterruptWatch]:
    watch = InterruptWatch()
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, None):
        yield watch
        return
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(write_fd, False)  # the C-level handler must never block on it
    watcher = threading.Thread(target=watch._watch, args=(read_fd,),
                               name="wasmgroup-interrupts", daemon=True)
    watcher.start()
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous_handler = signal.signal(signal.SIGINT, _note)
    try:
        yield watch
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(write_fd)
        watcher.join()
        os.close(read_fd)


__all__ = ["InterruptWatch", "watch_interrupts"]
