"""Compile each module once: an on-disk cache of wasmtime artefacts.

Entries are keyed by the module's SHA-256, the wasmtime version and the engine settings, so a
stale entry (another version or configuration) is never looked up. Each artefact is stored
with the SHA-256 of its own bytes; an entry whose bytes do not match (truncated, corrupt) or
that wasmtime refuses is deleted and rebuilt, never trusted. Writes are atomic (rename).

Location: `$WASMGROUP_CACHE`, else `$XDG_CACHE_HOME/wasmgroup`, else `~/.cache/wasmgroup`.
Artefacts are mmapped while in use: replace or unlink entries (as this module does), never
truncate or rewrite them in place. Size: after each new entry, the least recently used
entries are evicted until the cache holds at most `$WASMGROUP_CACHE_SIZE` bytes (default
1 GiB; K/M/G suffixes); an entry in use stays mapped by its users when it is unlinked.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import wasmtime

from wasmgroup.orchestrator.instrument import REWRITE_VERSION, export_imported_memory
from wasmgroup.orchestrator.rewrite import rewrite_memory_instructions
from wasmgroup.orchestrator.wat import wasm_bytes
from wasmgroup.shared.errors import LinkError
from wasmgroup.shared.wasm import WasmModule, parse_module

WASMTIME_VERSION = version("wasmtime")
WASMGROUP_VERSION = version("wasmgroup")


DEFAULT_CACHE_LIMIT = 1 << 30
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def default_cache_dir() -> Path:
    env = os.environ.get("WASMGROUP_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec: a relative XDG_CACHE_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "wasmgroup"


def cache_limit() -> int:
    """$WASMGROUP_CACHE_SIZE in bytes (`500M`, `2G`, `1048576`); a bad value is an error."""
    text = os.environ.get("WASMGROUP_CACHE_SIZE", "").strip()
    if not text:
        return DEFAULT_CACHE_LIMIT
    unit = text[-1].upper() if text[-1].isalpha() else ""
    number = text[:-1] if unit else text
    if unit not in _UNITS or not number.isdigit():
        raise LinkError(f"WASMGROUP_CACHE_SIZE={text!r}: expected bytes, or a number with "
                        "K, M or G")
    return int(number) * _UNITS[unit]


@dataclass
class CacheInfo:
    directory: Path
    entries: int
    size: int  # bytes
    limit: int


def _entries(directory: Path) -> list[tuple[float, int, Path]]:
    """(last use, bytes, artefact) per entry, oldest first."""
    found = []
    for artefact in directory.glob("*.cwasm"):
        try:
            st = artefact.stat()
        except FileNotFoundError:
            continue  # evicted by another process meanwhile
        found.append((st.st_mtime, st.st_size, artefact))
    return sorted(found)


def cache_info(directory: Path) -> CacheInfo:
    entries = _entries(directory) if directory.is_dir() else []
    return CacheInfo(directory, len(entries), sum(e[1] for e in entries), cache_limit())


def _remove(artefact: Path) -> None:
    for path in (artefact, artefact.with_suffix(".sha256")):
        path.unlink(missing_ok=True)


def clean_cache(directory: Path) -> tuple[int, int]:
    """Remove every entry: (entries, bytes) removed."""
    entries = _entries(directory) if directory.is_dir() else []
    for _, _, artefact in entries:
        _remove(artefact)
    return len(entries), sum(e[1] for e in entries)


def evict(directory: Path, limit: int, keep: set[Path]) -> int:
    """Remove the least recently used entries (never those in `keep`) until the cache holds
    at most `limit` bytes; returns how many were removed."""
    entries = _entries(directory)
    total = sum(e[1] for e in entries)
    removed = 0
    for _, size, artefact in entries:
        if total <= limit:
            break
        if artefact in keep:
            continue
        _remove(artefact)
        total -= size
        removed += 1
    return removed


@dataclass
class CachedModule:
    key: str
    parsed: WasmModule
    module: wasmtime.Module
    artefact: Path  # the serialized module in the cache directory
    # The same file through a descriptor this cache holds open: what worker processes are
    # given, so that eviction or `cache clean` by another program cannot pull it away.
    shared_path: str


class ModuleCache:
    def __init__(self, engine: wasmtime.Engine, settings: str,
                 directory: Path | None = None) -> None:
        self.engine = engine
        self.directory = directory or default_cache_dir()
        self.limit = cache_limit()
        self._salt = f"wasmtime-{WASMTIME_VERSION};{settings};rewrite-{REWRITE_VERSION}"
        self._by_path: dict[str, CachedModule] = {}
        self._by_key: dict[str, CachedModule] = {}
        self._held: list[int] = []  # descriptors behind each entry's shared_path
        self.compiled = 0  # how many modules this cache had to compile (tests read it)
        self.compile_seconds = 0.0  # time spent compiling them (--trace reads it)

    def load(self, host_path: str) -> CachedModule:
        """The parsed and compiled module at `host_path`, compiling only on a cache miss."""
        if host_path in self._by_path:
            return self._by_path[host_path]
        with open(host_path, "rb") as f:
            data = wasm_bytes(f.read(), host_path)
        parsed = parse_module(data, source=host_path)
        key = hashlib.sha256(self._salt.encode() + b"\0" + data).hexdigest()
        if key not in self._by_key:
            runnable = data
            if parsed.imports_of("memory"):  # a program memory shared by instance groups
                runnable = rewrite_memory_instructions(runnable, parsed)
            runnable = export_imported_memory(runnable, parsed)
            module, artefact = self._compiled(key, runnable, host_path)
            fd = os.open(artefact, os.O_RDONLY | os.O_CLOEXEC)
            self._held.append(fd)
            self._by_key[key] = CachedModule(key, parsed, module, artefact,
                                             f"/proc/{os.getpid()}/fd/{fd}")
        self._by_path[host_path] = self._by_key[key]
        return self._by_key[key]

    def close(self) -> None:
        """Drop the compiled modules (each keeps its artefact file open and mapped)."""
        self._by_path.clear()
        self._by_key.clear()
        for fd in self._held:
            os.close(fd)
        self._held.clear()

    def _compiled(self, key: str, data: bytes, host_path: str) -> tuple[wasmtime.Module, Path]:
        self.directory.mkdir(parents=True, exist_ok=True)
        artefact = self.directory / f"{key}.cwasm"
        checksum = self.directory / f"{key}.sha256"
        if artefact.exists() and checksum.exists():
            try:
                if hashlib.sha256(artefact.read_bytes()).hexdigest() == checksum.read_text():
                    os.utime(artefact)  # its last use, for eviction
                    return wasmtime.Module.deserialize_file(self.engine, str(artefact)), artefact
            except (OSError, wasmtime.WasmtimeError):
                pass  # unreadable or refused: rebuild below
            for stale in (artefact, checksum):
                stale.unlink(missing_ok=True)
        started = time.perf_counter()
        try:
            module = wasmtime.Module(self.engine, data)
        except wasmtime.WasmtimeError as err:
            raise LinkError(f"{host_path}: invalid module: {str(err).strip()}") from None
        self.compiled += 1
        self.compile_seconds += time.perf_counter() - started
        serialized = module.serialize()
        _atomic_write(artefact, serialized)
        _atomic_write(checksum, hashlib.sha256(serialized).hexdigest().encode())
        evict(self.directory, self.limit, {m.artefact for m in self._by_key.values()} | {artefact})
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
