"""Finding a library the way Wasmer's `locate_module` does, inside the guest's filesystem view.

Guest paths are POSIX paths in the guest's namespace. `GuestFilesystem` (shared/guestfs.py)
maps them onto host directories given with `--dir HOST::GUEST`; nothing outside those
directories (and the host library directories given with `--lib-path`) can ever be opened:
every path is opened in one step beneath a descriptor of its mapped directory. The file is then
read from the descriptor the lookup opened, never opened again by path.

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

from wasmgroup.shared.errors import LinkError, ModuleNotFound
from wasmgroup.shared.guestfs import PATH_MAX, GuestFilesystem, Mapping, normalize_guest_dir
from wasmgroup.shared.records import field, record

DEFAULT_LIBRARY_DIRS = ("/lib", "/usr/lib", "/usr/local/lib")
# GuestFilesystem, the guest's view of the host's directories, lives in shared/guestfs.py: the
# workers open guest paths through it too.
__all__ = ["DEFAULT_LIBRARY_DIRS", "PATH_MAX", "GuestFilesystem", "Located", "Mapping",
           "host_path_of", "locate", "normalize_guest_dir"]

def host_path_of(fd: int) -> str:
    """What an open descriptor's file is called on the host now (for cache keys and
    messages to the user, never to the guest, and never to open it again)."""
    return os.readlink(f"/proc/self/fd/{fd}")


@record
class Located:
    """A library found and opened: read it from `fd` (the caller closes it, e.g. `with`)."""

    guest_path: str  # what the guest would call it ($ORIGIN of its NEEDED entries)
    host_path: str  # the opened file's host name now: a key and a hint, never reopened
    fd: int = field(default=-1, compare=False)

    def __enter__(self) -> Located:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)


def _with_wasm_fallback(path: str) -> list[str]:
    return [path, path[:-3] + ".wasm"] if path.endswith(".so") else [path]


def _expand_origin(entry: str, origin: str | None) -> str:
    for token in ("${ORIGIN}", "$ORIGIN"):
        if entry.startswith(token):
            return (origin or "/") + entry[len(token):]
    return entry


def _located(guest_path: str, fd: int) -> Located:
    try:
        return Located(guest_path, host_path_of(fd), fd)
    except OSError:
        os.close(fd)
        raise


def _shown(path: str) -> str:
    return path.replace("\0", "\\0")  # a NUL byte would cut the guest's dlerror() short


def locate(fs: GuestFilesystem, name: str, *, ld_library_path: list[str],
           runtime_path: list[str], origin: str | None,
           requested_by: str | None = None) -> Located:
    """Find and open library `name` for a module whose directory is `origin` (guest path).

    Raises `ModuleNotFound` listing every guest path tried (a directory entry with a NUL
    byte finds nothing), `LinkError` for a name with a NUL byte or over PATH_MAX.
    """
    if "\0" in name:
        raise LinkError(f"library {name!r}: a library name cannot contain a NUL byte")
    if len(name.encode()) > PATH_MAX:
        raise LinkError(f"library {name[:64]!r}...: a library name is at most {PATH_MAX} bytes")
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
            tried.append(_shown(guest_path))
            fd = fs.open_library(guest_path)
            if fd is not None:
                return _located(guest_path, fd)
    if "/" not in name:
        for index in range(len(fs.host_library_dirs)):
            for file_name in _with_wasm_fallback(name):
                # The guest never learns host paths: name the option, not the directory.
                tried.append(f"{file_name} in --lib-path directory {index + 1}")
                fd = fs.open_host_library(index, file_name)
                if fd is not None:
                    return _located(f"/{file_name}", fd)
    raise ModuleNotFound(name, tried, requested_by)
