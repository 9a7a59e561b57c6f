"""`--trace FILE`: one JSON line per link operation, with the time spent in each phase.

Fields: `op` (start, dlopen, dlsym, spawn), `thread` (instigator), `groups` (live groups),
`ok`, and per phase in milliseconds: `plan_ms` (locate, parse, resolve, place; includes
`compile_ms`, compiling modules not yet in the cache), `apply_ms` (the instigating group:
instantiation, relocations, constructors), `broadcast_ms` (until every other group applied),
`group_apply_ms` ({thread: ms} spent applying in each other group), `verify_ms`, `total_ms`.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any


class Tracer:
    def __init__(self, path: Path | None) -> None:
        self._file = open(path, "w", encoding="utf-8") if path else None  # noqa: SIM115
        self._lock = threading.Lock()
        self._origin = time.monotonic()

    @property
    def enabled(self) -> bool:
        return self._file is not None

    def record(self, **fields: Any) -> None:
        if self._file is None:
            return
        fields["at_ms"] = round((time.monotonic() - self._origin) * 1000, 3)
        line = json.dumps(fields, sort_keys=True)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
