"""Finding a library the way Wasmer's `locate_module` does, inside the guest's filesystem view.

Guest paths are POSIX paths in the guest's namespace. `GuestFilesystem` maps them onto host
directories given with `--dir HOST::GUEST`; nothing outside those directories (and the host
library directories given with `--lib-path`) can ever be opened: `..` is resolved in the guest
namespace before mapping, and a host path whose symlinks lead out of its mapped directory is
treated as missing.

Search order for a request (first hit wins; `X.so` falls back to `X.wasm` at every candidate):
1. an absolute path: exactly that path;
2. a path containing `/`: against the guest's working directory;
3. a bare name (the working directory is never searched): each LD_LIBRARY_PATH entry, then the
   requesting module's RUNPATH (`$ORIGIN`/`${ORIGIN}` = the requesting module's directory),
   then `/lib`, `/usr/lib`, `/usr/local/lib`, then the host `--lib-path` directories.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field

from wasmgroup.shared.errors import LinkError, ModuleNotFound

DEFAULT_LIBRARY_DIRS = ("/lib", "/usr/lib", "/usr/local/lib")


@dataclass(frozen=True)
class Mapping:
    host: str  # absolute, symlinks resolved
    guest: str  # absolute, normalised


def normalize_guest_dir(guest: str) -> str:
    """A guest directory name as an absolute path; `.` (as in wasi-libc preopens) is `/`."""
    if guest in ("", "."):
        return "/"
    return posixpath.normpath(posixpath.join("/", guest))


@dataclass
class GuestFilesystem:
    """The host directories a guest can see, and where it sees them."""

    mappings: list[Mapping] = field(default_factory=list)
    cwd: str = "/"
    host_library_dirs: list[str] = field(default_factory=list)

    @classmethod
    def from_specs(cls, dirs: Sequence[str], lib_paths: Sequence[str] = (),
                   cwd: str = "/") -> GuestFilesystem:
        """Build from `HOST::GUEST` (or plain `HOST`, seen under the same name) specs."""
        mappings = []
        for spec in dirs:
            host, sep, guest = spec.partition("::")
            if not sep:
                guest = host
            real = os.path.realpath(host)
            if not os.path.isdir(real):
                raise LinkError(f"--dir {spec}: {host!r} is not a directory")
            mappings.append(Mapping(real, normalize_guest_dir(guest)))
        host_libs = []
        for lib in lib_paths:
            real = os.path.realpath(lib)
            if not os.path.isdir(real):
                raise LinkError(f"--lib-path {lib}: not a directory")
            host_libs.append(real)
        return cls(mappings, normalize_guest_dir(cwd), host_libs)

    def absolute(self, guest_path: str) -> str:
        """A guest path made absolute against the cwd, with `.`/`..` resolved lexically."""
        path = posixpath.normpath(posixpath.join(self.cwd, guest_path))
        # POSIX keeps a leading "//"; in the guest namespace it is just "/".
        return "/" + path.lstrip("/")

    def to_host(self, guest_path: str) -> str | None:
        """The host path behind an absolute guest path, or None when no mapping covers it or
        its real location lies outside the mapping (a symlink pointing out)."""
        best: Mapping | None = None
        for m in self.mappings:
            inside = guest_path == m.guest or guest_path.startswith(m.guest.rstrip("/") + "/")
            if inside and (best is None or len(m.guest) > len(best.guest)):
                best = m
        if best is None:
            return None
        rest = posixpath.relpath(guest_path, best.guest)
        return _contained(best.host, rest)

    def is_directory(self, guest_path: str) -> bool:
        """Whether an absolute guest path is a directory the guest can see."""
        for m in self.mappings:
            if guest_path == m.guest or m.guest.startswith(guest_path.rstrip("/") + "/"):
                return True  # a mapping point, or a directory above one
            if guest_path.startswith(m.guest.rstrip("/") + "/"):
                rest = posixpath.relpath(guest_path, m.guest)
                real = os.path.realpath(os.path.join(m.host, rest))
                if os.path.commonpath([m.host, real]) == m.host and os.path.isdir(real):
                    return True
        return False

    def guest_path_of_host(self, host_path: str) -> str | None:
        """Where a host file appears in the guest, if any mapping shows it."""
        real = os.path.realpath(host_path)
        for m in sorted(self.mappings, key=lambda m: len(m.host), reverse=True):
            if real == m.host or real.startswith(m.host.rstrip("/") + "/"):
                rel = os.path.relpath(real, m.host)
                return posixpath.normpath(posixpath.join(m.guest, rel.replace(os.sep, "/")))
        return None


def _contained(root: str, rel: str) -> str | None:
    """`root/rel` if it exists as a regular file whose real path stays under `root`."""
    candidate = os.path.join(root, rel) if rel != "." else root
    real = os.path.realpath(candidate)
    if os.path.commonpath([root, real]) != root or not os.path.isfile(real):
        return None
    return real


@dataclass(frozen=True)
class Located:
    guest_path: str  # what the guest would call it ($ORIGIN of its NEEDED entries)
    host_path: str


def _with_wasm_fallback(path: str) -> list[str]:
    return [path, path[:-3] + ".wasm"] if path.endswith(".so") else [path]


def _expand_origin(entry: str, origin: str | None) -> str:
    for token in ("${ORIGIN}", "$ORIGIN"):
        if entry.startswith(token):
            return (origin or "/") + entry[len(token):]
    return entry


def locate(fs: GuestFilesystem, name: str, *, ld_library_path: list[str],
           runtime_path: list[str], origin: str | None,
           requested_by: str | None = None) -> Located:
    """Find library `name` for a module whose directory is `origin` (guest path).

    Raises `ModuleNotFound` listing every guest path tried.
    """
    if not name:
        raise ModuleNotFound(name, [], requested_by)
    tried: list[str] = []
    if "/" in name:
        candidates = [fs.absolute(name)]
    else:
        dirs = [*ld_library_path, *(_expand_origin(e, origin) for e in runtime_path),
                *DEFAULT_LIBRARY_DIRS]
        candidates = [fs.absolute(posixpath.join(d, name)) for d in dirs if d]
    for candidate in candidates:
        for guest_path in _with_wasm_fallback(candidate):
            tried.append(guest_path)
            host = fs.to_host(guest_path)
            if host is not None:
                return Located(guest_path, host)
    if "/" not in name:
        for index, host_dir in enumerate(fs.host_library_dirs, start=1):
            for file_name in _with_wasm_fallback(name):
                # The guest never learns host paths: name the option, not the directory.
                tried.append(f"{file_name} in --lib-path directory {index}")
                host = _contained(host_dir, file_name)
                if host is not None:
                    return Located(f"/{file_name}", host)
    raise ModuleNotFound(name, tried, requested_by)
