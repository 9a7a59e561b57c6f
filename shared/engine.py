"""The one wasmtime engine configuration every process uses (serialized modules depend on it).

`ENGINE_SETTINGS` names it in the compile cache's keys without importing wasmtime: a
coordinator that finds every module in its cache never imports wasmtime at all (its workers
deserialize and run), so wasmtime is imported here only when a configuration is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import wasmtime

ENGINE_SETTINGS = ("threads,shared_memory,bulk_memory,reference_types,multi_value,exceptions,"
                   "epochs")


def make_engine_config() -> wasmtime.Config:
    """A fresh configuration with the settings `ENGINE_SETTINGS` names."""
    import wasmtime

    config = wasmtime.Config()
    config.wasm_threads = True
    config.shared_memory = True
    config.wasm_bulk_memory = True
    config.wasm_reference_types = True
    config.wasm_multi_value = True
    config.wasm_exceptions = True
    config.epoch_interruption = True  # safe points inside guest code (worker/epoch.py)
    return config


def make_engine() -> wasmtime.Engine:
    import wasmtime

    return wasmtime.Engine(make_engine_config())


__all__ = ["ENGINE_SETTINGS", "make_engine", "make_engine_config"]
