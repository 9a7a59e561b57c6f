"""Collecting a program's stdout/stderr (`run_program(capture_output=True)`).

The pipe's write end is descriptor 1 (or 2) of the program's descriptor table, shared by every
thread's worker. A reader thread drains it so writers never block, and `collect()` returns
everything written.
"""

from __future__ import annotations

import os
import select
import threading


class PipeCapture:
    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        self._chunks: list[bytes] = []
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._drain, name="wasmgroup-capture",
                                        daemon=True)
        self._reader.start()

    @property
    def write_fd(self) -> int:
        """The pipe's write end, for worker processes (they receive it over their socket)."""
        return self._write_fd

    def _drain(self) -> None:
        while True:
            ready, _, _ = select.select([self._read_fd], [], [], 0.05)
            if ready:
                data = os.read(self._read_fd, 65536)
                if not data:
                    return
                self._chunks.append(data)
            elif self._closed.is_set():
                return

    def collect(self) -> bytes:
        """Everything written so far, once writers are done (stops the reader)."""
        self._closed.set()
        if self._write_fd >= 0:
            # Ours was the last write end (the program's copies are closed by now): the
            # reader sees end-of-file at once instead of at its next timeout.
            os.close(self._write_fd)
            self._write_fd = -1
        self._reader.join(timeout=5)
        if self._read_fd >= 0 and not self._reader.is_alive():
            # Once only: in a Runtime another program may have this number next.
            os.close(self._read_fd)
            self._read_fd = -1
        return b"".join(self._chunks)
