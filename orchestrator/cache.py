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
import stat
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import wasmtime

from wasmgroup.orchestrator.instrument import REWRITE_VERSION, export_imported_memory
from wasmgroup.orchestrator.rewrite import rewrite_memory_instructions
from wasmgroup.shared.errors import LinkError, WasmFormatError
from wasmgroup.shared.wasm import WasmModule, parse_module

WASMTIME_VERSION = version("wasmtime")
DEFAULT_MAX_MODULE_SIZE = 256 << 20  # bytes; a module file larger than this is refused unread
WASM_MAGIC = b"\0asm"


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
                 directory: Path | None = None,
                 max_module_size: int = DEFAULT_MAX_MODULE_SIZE) -> None:
        self.engine = engine
        self.max_module_size = max_module_size
        self.directory = directory or default_cache_dir()
        self._salt = f"wasmtime-{WASMTIME_VERSION};{settings};rewrite-{REWRITE_VERSION}"
        self._by_path: dict[str, CachedModule] = {}
        self._by_key: dict[str, CachedModule] = {}
        self.compiled = 0  # how many modules this cache had to compile (tests read it)
        self.compile_seconds = 0.0  # time spent compiling them (--trace reads it)

    def load(self, fd: int, host_path: str, name: str) -> CachedModule:
        """The parsed and compiled module read from descriptor `fd` (never reopened by path),
        compiling only on a cache miss. `host_path` (what the file is called on the host) keys
        modules already loaded; `name` is how errors name it (the guest path for a library)."""
        if host_path in self._by_path:
            return self._by_path[host_path]
        data = read_module(fd, name, self.max_module_size)
        parsed = parse_module(data, source=name)
        key = hashlib.sha256(self._salt.encode() + b"\0" + data).hexdigest()
        if key not in self._by_key:
            runnable = data
            if parsed.imports_of("memory"):  # a program memory shared by instance groups
                runnable = rewrite_memory_instructions(runnable, parsed)
            runnable = export_imported_memory(runnable, parsed)
            module, artefact = self._compiled(key, runnable, name)
            self._by_key[key] = CachedModule(key, parsed, module, artefact)
        self._by_path[host_path] = self._by_key[key]
        return self._by_key[key]

    def generated(self, data: bytes, parsed: WasmModule) -> tuple[str, CachedModule]:
        """A module wasmgroup generated (a closure trampoline), compiled once and cached like
        a file; returns the name plans use for it (in place of a host path) and the entry."""
        key = hashlib.sha256(self._salt.encode() + b"\0" + data).hexdigest()
        name = f"<generated {key[:16]}>"
        if key not in self._by_key:
            module, artefact = self._compiled(key, data, name)
            self._by_key[key] = CachedModule(key, parsed, module, artefact)
        self._by_path[name] = self._by_key[key]
        return name, self._by_key[key]

    def loaded(self, host_path: str) -> CachedModule:
        """A module `load` already read (the plans name modules by their host path)."""
        return self._by_path[host_path]

    def close(self) -> None:
        """Drop the compiled modules (each keeps its artefact file open and mapped)."""
        self._by_path.clear()
        self._by_key.clear()

    def _compiled(self, key: str, data: bytes, name: str) -> tuple[wasmtime.Module, Path]:
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
        started = time.perf_counter()
        try:
            module = wasmtime.Module(self.engine, data)
        except wasmtime.WasmtimeError as err:
            raise LinkError(f"{name}: invalid module: {str(err).strip()}") from None
        self.compiled += 1
        self.compile_seconds += time.perf_counter() - started
        serialized = module.serialize()
        _atomic_write(artefact, serialized)
        _atomic_write(checksum, hashlib.sha256(serialized).hexdigest().encode())
        return module, artefact


def read_module(fd: int, name: str, limit: int) -> bytes:
    """The bytes of the module file open at `fd`: its magic and size are checked before the
    rest is read, so a huge or sparse file that is not a module costs nothing."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise LinkError(f"{name}: not a regular file")
    if os.pread(fd, len(WASM_MAGIC), 0) != WASM_MAGIC:
        raise WasmFormatError(0, "the wasm magic \\0asm", name)
    if info.st_size > limit:
        raise LinkError(f"{name}: {info.st_size} bytes, more than the module size limit of "
                        f"{limit} bytes (--max-module-size)")
    chunks, size = [], 0
    while chunk := os.pread(fd, min(1 << 20, limit + 1 - size), size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:  # grew since fstat
            raise LinkError(f"{name}: more than the module size limit of {limit} bytes "
                            "(--max-module-size)")
    return b"".join(chunks)


def _atomic_write(path: Path, data: bytes | bytearray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
