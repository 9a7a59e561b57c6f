"""The WASI path calls other than path_open, on the guest's filesystem view: one implementation
for the coordinator (orchestrator/descriptors.py) and for the workers, which serve these calls
themselves (worker/host/paths.py) instead of asking the coordinator, since none of them
changes the descriptor table.

A path is first resolved in the guest namespace against the directory descriptor it names
(`resolve_guest_path`): it must stay inside that directory's mapping (ENOTCAPABLE otherwise).
It is then opened beneath the mapped directory's descriptor (`GuestFilesystem`, openat2 with
RESOLVE_BENEATH), and the call acts on that descriptor or on a name in the directory opened
that way; a symlink out of the mapping is ENOTCAPABLE as well. Failures raise WasiError or
OSError (the caller turns both into errnos).
"""

from __future__ import annotations

import errno
import os
import posixpath
from collections.abc import Callable
from typing import Any

from wasmgroup.shared import wasi
from wasmgroup.shared.guestfs import PATH_MAX, GuestFilesystem
from wasmgroup.shared.wasi import WasiError


def resolve_guest_path(fs: GuestFilesystem, directory: str | None, path: str) -> str:
    """The absolute guest path `path` names relative to a directory descriptor opened as
    guest path `directory` (None: not a directory); it must stay inside that directory's
    mapping."""
    if "\0" in path:
        raise WasiError(wasi.EINVAL)
    if len(path.encode()) > PATH_MAX:
        raise WasiError(wasi.ENAMETOOLONG)
    if directory is None:
        raise WasiError(wasi.ENOTDIR)
    # wasix-libc passes paths under the `/` preopen with their leading slash.
    resolved = posixpath.normpath(posixpath.join(directory, path.lstrip("/")))
    resolved = "/" + resolved.lstrip("/")
    base = fs.mapping_of(directory)
    if base is None or fs.mapping_of(resolved) is None or not (
            resolved == base.guest or resolved.startswith(base.guest.rstrip("/") + "/")):
        raise WasiError(wasi.ENOTCAPABLE)
    return resolved


class PathCalls:
    """`call` serves a path call by name. `resolve(dirfd, path)` gives the guest path a
    (directory descriptor, path) pair names (`resolve_guest_path` on the descriptor's entry)."""

    def __init__(self, fs: GuestFilesystem, resolve: Callable[[int, str], str]) -> None:
        self.fs = fs
        self.resolve = resolve

    def call(self, name: str, dirfd: int, path: str, extra: list[Any]) -> list[Any]:
        """[errno, values...] of path call `name` (one of `PATH_CALLS`)."""
        handler = PATH_CALLS.get(name)
        if handler is None:
            raise WasiError(wasi.ENOSYS)
        try:
            return handler(self, self.resolve(dirfd, path), *extra)
        except TypeError:
            raise WasiError(wasi.EINVAL) from None

    def open(self, guest: str, flags: int) -> int:
        """`fs.open`; a path that leads out of its mapping (through a symlink) is
        ENOTCAPABLE, like one that does so by name."""
        try:
            return self.fs.open(guest, flags)
        except OSError as err:
            if err.errno == errno.EXDEV:
                raise WasiError(wasi.ENOTCAPABLE) from None
            raise

    def _parent(self, guest: str) -> tuple[int, str]:
        try:
            return self.fs.open_parent(guest)
        except OSError as err:
            if err.errno == errno.EXDEV:
                raise WasiError(wasi.ENOTCAPABLE) from None
            raise

    def _second_path(self, dirfd: Any, path: Any) -> str:
        if not isinstance(dirfd, int) or not isinstance(path, str):
            raise WasiError(wasi.EINVAL)
        return self.resolve(dirfd, path)

    def _on_parent(self, guest: str, action: Callable[[int, str], Any]) -> Any:
        parent, name = self._parent(guest)
        try:
            return action(parent, name)
        finally:
            os.close(parent)

    def _on_target(self, guest: str, action: Callable[[str], Any]) -> Any:
        """`action` on the file a guest path leads to, symlinks followed beneath its mapping
        (through this process's own descriptor of it)."""
        fd = self.open(guest, os.O_PATH)
        try:
            return action(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)

    def _stat(self, guest: str, lookup: int) -> os.stat_result:
        if lookup & wasi.LOOKUP_SYMLINK_FOLLOW or self.fs.is_mapping_point(guest):
            st: os.stat_result = self._on_target(guest, os.stat)
            return st
        st = self._on_parent(guest, lambda d, n: os.stat(n, dir_fd=d, follow_symlinks=False))
        return st

    def _filestat_get(self, guest: str, lookup: int) -> list[Any]:
        return [wasi.ESUCCESS, *wasi.filestat_fields(self._stat(guest, lookup))]

    def _filestat_set_times(self, guest: str, lookup: int, atim: int, mtim: int,
                            fst: int) -> list[Any]:
        times = wasi.utime_ns(atim, mtim, fst, lambda: self._stat(guest, lookup))
        if times is None:
            raise WasiError(wasi.EINVAL)
        if lookup & wasi.LOOKUP_SYMLINK_FOLLOW:
            self._on_target(guest, lambda p: os.utime(p, ns=times))
        else:
            self._on_parent(guest, lambda d, n: os.utime(n, ns=times, dir_fd=d,
                                                         follow_symlinks=False))
        return [wasi.ESUCCESS]

    def _create_directory(self, guest: str) -> list[Any]:
        if self.fs.is_mapping_point(guest):
            raise WasiError(wasi.EEXIST)
        self._on_parent(guest, lambda d, n: os.mkdir(n, 0o777, dir_fd=d))
        return [wasi.ESUCCESS]

    def _remove_directory(self, guest: str) -> list[Any]:
        self._on_parent(guest, lambda d, n: os.rmdir(n, dir_fd=d))
        return [wasi.ESUCCESS]

    def _unlink_file(self, guest: str) -> list[Any]:
        self._on_parent(guest, lambda d, n: os.unlink(n, dir_fd=d))
        return [wasi.ESUCCESS]

    def _readlink(self, guest: str) -> list[Any]:
        target = self._on_parent(guest, lambda d, n: os.readlink(n, dir_fd=d))
        return [wasi.ESUCCESS, os.fsencode(target)]

    def _symlink(self, guest: str, target: Any) -> list[Any]:
        if not isinstance(target, str) or "\0" in target:
            raise WasiError(wasi.EINVAL)
        self._on_parent(guest, lambda d, n: os.symlink(target, n, dir_fd=d))
        return [wasi.ESUCCESS]

    def _rename(self, guest: str, new_dirfd: Any, new_path: Any) -> list[Any]:
        new = self._second_path(new_dirfd, new_path)
        parent, name = self._parent(guest)
        try:
            self._on_parent(new, lambda d, n: os.rename(name, n, src_dir_fd=parent,
                                                        dst_dir_fd=d))
        finally:
            os.close(parent)
        return [wasi.ESUCCESS]

    def _link(self, guest: str, lookup: int, new_dirfd: Any, new_path: Any) -> list[Any]:
        new = self._second_path(new_dirfd, new_path)
        if lookup & wasi.LOOKUP_SYMLINK_FOLLOW:
            self._on_target(guest, lambda source: self._on_parent(
                new, lambda d, n: os.link(source, n, dst_dir_fd=d, follow_symlinks=True)))
        else:
            parent, name = self._parent(guest)
            try:
                self._on_parent(new, lambda d, n: os.link(
                    name, n, src_dir_fd=parent, dst_dir_fd=d, follow_symlinks=False))
            finally:
                os.close(parent)
        return [wasi.ESUCCESS]


PATH_CALLS: dict[str, Callable[..., list[Any]]] = {
    "path_filestat_get": PathCalls._filestat_get,
    "path_filestat_set_times": PathCalls._filestat_set_times,
    "path_create_directory": PathCalls._create_directory,
    "path_remove_directory": PathCalls._remove_directory,
    "path_unlink_file": PathCalls._unlink_file,
    "path_readlink": PathCalls._readlink,
    "path_symlink": PathCalls._symlink,
    "path_rename": PathCalls._rename,
    "path_link": PathCalls._link,
}
