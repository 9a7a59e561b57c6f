"""The long-lived part of the coordinator: one engine, one compile cache, one worker pool.

A `Program` (orchestrator/program.py) is the per-program part: linker state, memory region,
descriptor table, groups. A standalone program (`wasmgroup run`) makes parts of its own and
closes them with itself; the programs of a `Runtime` borrow the Runtime's, so that a program
starts on warm workers (no Python start, no engine, modules already deserialized) and every
worker it used goes back to the pool, reset, when it ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from wasmgroup.orchestrator.cache import DEFAULT_MAX_MODULE_SIZE, ModuleCache
from wasmgroup.orchestrator.workers import WorkerPool
from wasmgroup.shared.engine import ENGINE_SETTINGS

if TYPE_CHECKING:
    import wasmtime


class RuntimeParts:
    """Engine, cache and pool, shared by the programs of one Runtime (thread-safe)."""

    def __init__(self, pool_size: int, cache_dir: Path | None = None,
                 max_module_size: int = DEFAULT_MAX_MODULE_SIZE,
                 keep: int | None = None, urgent: int = 0) -> None:
        # Workers start first: their Python start-up overlaps a program's compiling. The
        # engine is made (and wasmtime imported) by the first compile: when every module is
        # in the compile cache, this process never needs one.
        self.pool = WorkerPool(pool_size, keep, urgent)
        self.cache = ModuleCache(None, ENGINE_SETTINGS, cache_dir, max_module_size)

    @property
    def engine(self) -> wasmtime.Engine:
        return self.cache.engine

    def close(self) -> None:
        """Stop every worker and drop the compiled modules (after the last program)."""
        self.pool.close()
        self.cache.close()


__all__ = ["RuntimeParts"]
