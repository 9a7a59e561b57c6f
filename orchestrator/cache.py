"""Compile each module once: an on-disk cache of wasmtime artefacts.

Entries are keyed by the module's SHA-256, the wasmtime version, the engine settings and the
host CPU's features, so a stale entry (another version, configuration or kind of machine) is
never looked up. Each artefact is stored
with the SHA-256 of its own bytes; an entry whose bytes do not match (truncated, corrupt) is
deleted and rebuilt, never trusted. Writes are atomic (rename). A hit costs no wasmtime call:
the coordinator hands the artefact to its workers, which deserialize it.

Location: `$WASMGROUP_CACHE`, else `$XDG_CACHE_HOME/wasmgroup`, else `~/.cache/wasmgroup`.
Artefacts are mmapped while in use: replace or unlink entries (as this module does), never
truncate or rewrite them in place. Size: after each new entry, the least recently used
entries are evicted until the cache holds at most `$WASMGROUP_CACHE_SIZE` bytes (default
1 GiB; K/M/G suffixes); an entry in use stays mapped by its users when it is unlinked.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from wasmgroup.orchestrator.instrument import REWRITE_VERSION
from wasmgroup.orchestrator.locate import host_path_of
from wasmgroup.orchestrator.wat import TEXT_STARTS, wasm_bytes
from wasmgroup.shared.engine import make_engine
from wasmgroup.shared.errors import LinkError, WasmFormatError
from wasmgroup.shared.records import record
from wasmgroup.shared.versions import distribution_version
from wasmgroup.shared.wasm import WasmModule, parse_module

if TYPE_CHECKING:
    import wasmtime

WASMTIME_VERSION = distribution_version("wasmtime")
WASMGROUP_VERSION = distribution_version("wasmgroup")
DEFAULT_MAX_MODULE_SIZE = 256 << 20  # bytes; a module file larger than this is refused unread
WASM_MAGIC = b"\0asm"


def host_cpu() -> str:
    """What compiled code depends on besides wasmtime's version and settings: the machine and
    its CPU's features (wasmtime compiles for the features it finds, and refuses an artefact
    made for others: in a cache directory that machines share, each kind gets entries of its
    own instead)."""
    features = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith(("flags", "Features")):  # x86, arm
                features = line.split(":", 1)[1].strip()
                break
    return f"{os.uname().machine}-{hashlib.sha256(features.encode()).hexdigest()[:16]}"


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


@record(frozen=False)
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


@record(frozen=False)
class CachedModule:
    key: str
    parsed: WasmModule
    artefact: Path  # the serialized module in the cache directory
    # The same file through a descriptor this cache holds open: what worker processes are
    # given, so that eviction or `cache clean` by another program cannot pull it away.
    shared_path: str


class ModuleCache:
    """Compiled modules by content. Only a miss needs wasmtime: it validates and compiles with
    `engine` (made on first use when None); a hit is the artefact's path, checked against its
    checksum, which the workers deserialize (the coordinator never runs a module)."""

    def __init__(self, engine: wasmtime.Engine | None, settings: str,
                 directory: Path | None = None,
                 max_module_size: int = DEFAULT_MAX_MODULE_SIZE) -> None:
        # Shared with this cache's views (a list, so that an engine made by one is theirs).
        self._engine: list[wasmtime.Engine] = [] if engine is None else [engine]
        self.max_module_size = max_module_size
        self.directory = directory or default_cache_dir()
        self.limit = cache_limit()
        self._salt = (f"wasmtime-{WASMTIME_VERSION};{settings};{host_cpu()};"
                      f"rewrite-{REWRITE_VERSION}")
        self._by_path: dict[str, CachedModule] = {}
        self._by_key: dict[str, CachedModule] = {}
        self._held: list[int] = []  # descriptors behind each entry's shared_path
        self._lock = threading.Lock()  # programs of one Runtime load modules at once
        self._view = False
        self.compiled = 0  # how many modules this cache had to compile (tests read it)
        self.compile_seconds = 0.0  # time spent compiling them (--trace reads it)

    @property
    def engine(self) -> wasmtime.Engine:
        """The engine misses are compiled with (wasmtime is imported now, if not before)."""
        with self._lock:
            return self._engine_locked()

    def _engine_locked(self) -> wasmtime.Engine:
        if not self._engine:
            self._engine.append(make_engine())
        return self._engine[0]

    def load(self, fd: int, host_path: str, name: str) -> CachedModule:
        """The parsed and compiled module read from descriptor `fd` (never reopened by path),
        compiling only on a cache miss. `host_path` (what the file is called on the host) keys
        modules already loaded; `name` is how errors name it (the guest path for a library)."""
        if host_path in self._by_path:
            return self._by_path[host_path]
        data = wasm_bytes(read_module(fd, name, self.max_module_size), name)
        key = hashlib.sha256(self._salt.encode() + b"\0" + data).hexdigest()
        entry = self._by_key.get(key)
        if entry is None:
            parsed = parse_module(data, source=name)
            # Validated and rewritten only on a miss: a hit was validated when compiled.
            entry = self._entry(key, parsed, lambda: self._runnable(data, parsed, name), name)
        self._by_path[host_path] = entry
        return entry

    def _entry(self, key: str, parsed: WasmModule, prepare: Callable[[], bytes], name: str
               ) -> CachedModule:
        """The entry of `key`, compiled (or found compiled on disk) once however many programs
        ask."""
        with self._lock:
            if key not in self._by_key:
                artefact = self._compiled(key, prepare, name)
                held = os.open(artefact, os.O_RDONLY | os.O_CLOEXEC)
                self._held.append(held)
                self._by_key[key] = CachedModule(key, parsed, artefact,
                                                 f"/proc/{os.getpid()}/fd/{held}")
            return self._by_key[key]

    def view(self) -> ModuleCache:
        """This cache for one program of a Runtime: compiled entries (and the descriptors
        behind them) are shared and outlive it; its names for them (host paths, which may
        name another file in the next program) and its counters are its own."""
        view = copy.copy(self)
        view._by_path = {}
        view._view = True
        view.compiled = 0
        view.compile_seconds = 0.0
        return view

    def load_file(self, path: str) -> tuple[CachedModule, str]:
        """A module the user named by its host path (a main module): the module, and the
        host path that keys it. Raises OSError when it cannot be opened."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            host_path = host_path_of(fd)
            return self.load(fd, host_path, path), host_path
        finally:
            os.close(fd)

    def generated(self, data: bytes, parsed: WasmModule) -> tuple[str, CachedModule]:
        """A module wasmgroup generated (a closure trampoline), compiled once and cached like
        a file; returns the name plans use for it (in place of a host path) and the entry."""
        key = hashlib.sha256(self._salt.encode() + b"\0" + data).hexdigest()
        name = f"<generated {key[:16]}>"
        self._by_path[name] = self._entry(key, parsed, lambda: data, name)
        return name, self._by_path[name]

    def loaded(self, host_path: str) -> CachedModule:
        """A module `load` already read (the plans name modules by their host path)."""
        return self._by_path[host_path]

    def close(self) -> None:
        """Drop the compiled modules (each keeps its artefact file open and mapped); a view
        drops only its names."""
        self._by_path.clear()
        if self._view:
            return
        self._by_key.clear()
        for fd in self._held:
            os.close(fd)
        self._held.clear()

    def _runnable(self, data: bytes, parsed: WasmModule, name: str) -> bytes:
        from wasmgroup.orchestrator.prepare import runnable_bytes

        return runnable_bytes(self._engine_locked(), data, parsed, name)  # (under the lock)

    def _compiled(self, key: str, prepare: Callable[[], bytes], name: str) -> Path:
        """The artefact of `key`: the cached one if its checksum holds (the key names the
        wasmtime version and settings that made it), else compiled now. Called under the
        lock."""
        self.directory.mkdir(parents=True, exist_ok=True)
        artefact = self.directory / f"{key}.cwasm"
        checksum = self.directory / f"{key}.sha256"
        if artefact.exists() and checksum.exists():
            try:
                if hashlib.sha256(artefact.read_bytes()).hexdigest() == checksum.read_text():
                    os.utime(artefact)  # its last use, for eviction
                    return artefact
            except OSError:
                pass  # unreadable: rebuild below
            for stale in (artefact, checksum):
                stale.unlink(missing_ok=True)
        from wasmgroup.orchestrator.prepare import compile_module  # a miss: wasmtime now

        runnable = prepare()
        started = time.perf_counter()
        module = compile_module(self._engine_locked(), runnable, name)
        self.compiled += 1
        self.compile_seconds += time.perf_counter() - started
        serialized = module.serialize()
        _atomic_write(artefact, serialized)
        _atomic_write(checksum, hashlib.sha256(serialized).hexdigest().encode())
        evict(self.directory, self.limit, {m.artefact for m in self._by_key.values()} | {artefact})
        return artefact


def read_module(fd: int, name: str, limit: int) -> bytes:
    """The bytes of the module file open at `fd`: its magic and size are checked before the
    rest is read, so a huge or sparse file that is not a module costs nothing."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise LinkError(f"{name}: not a regular file")
    start = os.pread(fd, 64, 0)
    if not start.startswith(WASM_MAGIC) and not (
            name.endswith(".wat") or start.lstrip().startswith(TEXT_STARTS)):
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
    import tempfile  # (a miss only: with shutil and the compressors, milliseconds to import)

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
