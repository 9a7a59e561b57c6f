"""`--trace FILE`: one JSON line per link operation, with the time spent in each phase.

The first line is a header: `op: "trace"`, `wasmgroup` and `wasmtime` versions, `program`,
`monotonic_s` (the host's CLOCK_MONOTONIC at `at_ms` 0, to line the trace up with the clocks
of other processes, as scripts/bench-scaling does).
Link operations: `op` (start, dlopen, dlsym, spawn), `thread` (instigator), `groups` (live
groups), `ok`, and per phase in milliseconds: `lock_wait_ms` (waiting for the topology lock
behind other link operations), `plan_ms` (locate, parse, resolve, place; includes
`compile_ms`, compiling modules not yet in the cache), `apply_ms` (the instigating group:
instantiation, relocations, constructors), `broadcast_ms` (until every other group applied),
`group_apply_ms` ({thread: ms} spent applying in each other group), `verify_ms`, `total_ms`
(from the request to its answer, lock wait included). Threads: `thread_start` and
`thread_exit` with the worker's `pid` (`how` it ended and `code` on exit). Every line has
`at_ms`, milliseconds since the program started, taken when the line is written (at the end
of an operation). `FILE` `-` is stderr.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from wasmgroup.orchestrator.cache import WASMGROUP_VERSION, WASMTIME_VERSION


class Tracer:
    def __init__(self, path: Path | None, program: str = "") -> None:
        self._own_file = path is not None and str(path) != "-"
        self._file: IO[str] | None = None
        if path is not None:
            self._file = open(path, "w", encoding="utf-8") if self._own_file else sys.stderr  # noqa: SIM115
        self._lock = threading.Lock()
        self._origin = time.monotonic()
        self.record(op="trace", wasmgroup=WASMGROUP_VERSION, wasmtime=WASMTIME_VERSION,
                    program=program, monotonic_s=self._origin)

    @property
    def enabled(self) -> bool:
        return self._file is not None

    def record(self, **fields: Any) -> None:
        if self._file is None:
            return
        import json  # (with --trace only: not on every run's path)

        fields["at_ms"] = round((time.monotonic() - self._origin) * 1000, 3)
        line = json.dumps(fields, sort_keys=True)
        with self._lock:
            if self._file is None:
                return
            try:
                self._file.write(line + "\n")
                self._file.flush()
            except (OSError, ValueError) as err:
                # A trace is diagnostics: a reader that went away (`--trace - | head`) or
                # a full disk stops it, never the program (or the thread that recorded).
                failed, self._file = self._file, None
                if self._own_file:
                    with contextlib.suppress(OSError):  # (it flushes what failed again)
                        failed.close()
                    _warn(f"wasmgroup: cannot write the trace ({err}): tracing stopped")

    def close(self) -> None:
        with self._lock:
            if self._file is not None and self._own_file:
                with contextlib.suppress(OSError):
                    self._file.close()
            self._file = None


def _warn(text: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # stderr is gone too
        print(text, file=sys.stderr, flush=True)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
