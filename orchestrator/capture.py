"""Collecting a program's stdout/stderr (`run_program(capture_output=True)`).

The pipe's write end is descriptor 1 (or 2) of the program's descriptor table, shared by every
thread's worker. One drainer thread per process reads every capture pipe (so writers never
block), and `collect()` returns everything written: a Runtime running many programs starts
no thread per program for their output.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import threading
from collections.abc import Callable

COLLECT_TIMEOUT = 5.0  # seconds collect() waits for end-of-file from the program's writers


class _Drainer:
    """The thread that reads every capture pipe of this process."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._changes: list[tuple[int, Callable[[bytes], None] | threading.Event]] = []
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        threading.Thread(target=self._loop, name="wasmgroup-capture", daemon=True).start()

    def watch(self, fd: int, sink: Callable[[bytes], None] | threading.Event) -> None:
        """Read `fd` into `sink` (b"" at end-of-file, then no more); an Event instead stops
        watching it and is set once the drainer no longer reads it. Applied by the drainer
        thread, in the order asked."""
        with self._lock:
            self._changes.append((fd, sink))
        with contextlib.suppress(BlockingIOError):  # else a wake-up is pending already
            os.write(self._wake_write, b"x")

    def _apply_changes(self) -> None:
        with self._lock:
            changes, self._changes = self._changes, []
        for fd, sink in changes:
            if isinstance(sink, threading.Event):
                if fd in self._selector.get_map():
                    self._selector.unregister(fd)
                sink.set()
            else:
                self._selector.register(fd, selectors.EVENT_READ, sink)

    def _loop(self) -> None:
        while True:
            for key, _ in self._selector.select():
                if key.data is None:
                    os.read(self._wake_read, 4096)
                    continue
                try:
                    data = os.read(key.fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    self._selector.unregister(key.fd)
                key.data(data)
            self._apply_changes()


_drainer: _Drainer | None = None
_drainer_lock = threading.Lock()


def drainer() -> _Drainer:
    """The process's drainer, started on first use; it lives as long as the process (its
    thread, a selector and a wake-up pipe: three descriptors)."""
    global _drainer
    with _drainer_lock:
        if _drainer is None:
            _drainer = _Drainer()
        return _drainer


class PipeCapture:
    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        self._chunks: list[bytes] = []
        self._ended = threading.Event()
        self._drainer = drainer()
        self._drainer.watch(self._read_fd, self._take)

    @property
    def write_fd(self) -> int:
        """The pipe's write end, for worker processes (they receive it over their socket)."""
        return self._write_fd

    def _take(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
        else:
            self._ended.set()

    def collect(self) -> bytes:
        """Everything written so far, once writers are done."""
        if self._write_fd >= 0:
            # Ours was the last write end (the program's copies are closed by now): the
            # drainer sees end-of-file at once.
            os.close(self._write_fd)
            self._write_fd = -1
        if self._read_fd >= 0:
            if not self._ended.wait(COLLECT_TIMEOUT):
                # A writer kept its copy open: keep what came, stop watching.
                unwatched = threading.Event()
                self._drainer.watch(self._read_fd, unwatched)
                unwatched.wait()
            # Once only: in a Runtime another program may have this number next. The
            # drainer no longer reads it (end-of-file unregistered it, or we asked).
            os.close(self._read_fd)
            self._read_fd = -1
        return b"".join(self._chunks)
