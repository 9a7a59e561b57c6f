"""Compile each module once: an on-disk cache of wasmtime artefacts.

Entries are keyed by the module's SHA-256, the wasmtime version and the engine settings, so a
stale entry (another version or configuration) is never looked up. Each artefact is stored
with the SHA-256 of its own bytes; an entry whose bytes do not match (truncated, corrupt) or
that wasmtime refuses is deleted and rebuilt, never trusted. Writes are atomic (rename).

Location: `$WASMGROUP_CACHE`, else `~/.cache/wasmgroup`. Artefacts are mmapped while in use:
replace entries (as this module does), never truncate or rewrite them in place.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import wasmtime

from wasmgroup.orchestrator.instrument import REWRITE_VERSION
from wasmgroup.orchestrator.prepare import compile_module, runnable_bytes
from wasmgroup.shared.wasm import WasmModule, parse_module

WASMTIME_VERSION = version("wasmtime")


def default_cache_dir() -> Path:
    env = os.environ.get("WASMGROUP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "wasmgroup"


@dataclass
class CachedModule:
    key: str
    parsed: WasmModule
    module: wasmtime.Module
    artefact: Path  # the serialized module, for other processes to deserialize


class ModuleCache:
    def __init__(self, engine: wasmtime.Engine, settings: str,
                 directory: Path | None = None) -> None:
        self.engine = engine
        self.directory = directory or default_cache_dir()
        self._salt = f"wasmtime-{WASMTIME_VERSION};{settings};rewrite-{REWRITE_VERSION}"
        self._by_path: dict[str, CachedModule] = {}
        self._by_key: dict[str, CachedModule] = {}
        self.compiled = 0  # how many modules this cache had to compile (tests read it)
        self.compile_seconds = 0.0  # time spent compiling them (--trace reads it)

    def load(self, host_path: str) -> CachedModule:
        """The parsed and compiled module at `host_path`, compiling only on a cache miss."""
        if host_path in self._by_path:
            return self._by_path[host_path]
        with open(host_path, "rb") as f:
            data = f.read()
        parsed = parse_module(data, source=host_path)
        key = hashlib.sha256(self._salt.encode() + b"\0" + data).hexdigest()
        if key not in self._by_key:
            # Validated and rewritten only on a miss: a hit was validated when compiled.
            module, artefact = self._compiled(
                key, lambda: runnable_bytes(self.engine, data, parsed, host_path), host_path)
            self._by_key[key] = CachedModule(key, parsed, module, artefact)
        self._by_path[host_path] = self._by_key[key]
        return self._by_key[key]

    def close(self) -> None:
        """Drop the compiled modules (each keeps its artefact file open and mapped)."""
        self._by_path.clear()
        self._by_key.clear()

    def _compiled(self, key: str, prepare: Callable[[], bytes], host_path: str
                  ) -> tuple[wasmtime.Module, Path]:
        self.directory.mkdir(parents=True, exist_ok=True)
        artefact = self.directory / f"{key}.cwasm"
        checksum = self.directory / f"{key}.sha256"
        if artefact.exists() and checksum.exists():
            try:
                if hashlib.sha256(artefact.read_bytes()).hexdigest() == checksum.read_text():
                    return wasmtime.Module.deserialize_file(self.engine, str(artefact)), artefact
            except (OSError, wasmtime.WasmtimeError):
                pass  # unreadable or refused: rebuild below
            for stale in (artefact, checksum):
                stale.unlink(missing_ok=True)
        runnable = prepare()
        started = time.perf_counter()
        module = compile_module(self.engine, runnable, host_path)
        self.compiled += 1
        self.compile_seconds += time.perf_counter() - started
        serialized = module.serialize()
        _atomic_write(artefact, serialized)
        _atomic_write(checksum, hashlib.sha256(serialized).hexdigest().encode())
        return module, artefact


def _atomic_write(path: Path, data: bytes | bytearray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
