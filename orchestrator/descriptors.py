"""The program's descriptor table: one for every thread, kept by the coordinator.

Guest descriptor number -> `Entry`: the OS descriptor that keeps the open file description
alive, its WASI file type and rights, and for directories the guest path they were opened by
(relative paths of path calls resolve against it). Stdio (0, 1, 2: the captured pipes or this
process's own stdio) and the `--dir` mappings (3.., in order, with their guest names for
`fd_prestat_*`) are entries like any other.

Workers fetch an entry's OS descriptor (`fetch`: a duplicate, sent over their socket) and cache
it, so they share the open file description: offsets, append mode and flags are the program's,
as between threads of one process. Every change of the entry at a number bumps its counter in
the `GenerationPage` under the table's lock, before the old OS descriptor is closed, so that
no worker uses a stale cache (shared/fdtable.py).

Each request returns `[errno, values...]`; failures are WASI errnos, never exceptions. Every
path is resolved in the guest namespace against the directory descriptor it names, must stay
inside that directory's mapping, and is opened beneath it (`GuestFilesystem`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import resource
import threading
from collections.abc import Callable
from typing import Any

from wasmgroup.shared import wasi
from wasmgroup.shared.fdtable import MAX_DESCRIPTORS, GenerationPage
from wasmgroup.shared.guestfs import GuestFilesystem
from wasmgroup.shared.pathcalls import PathCalls, resolve_guest_path
from wasmgroup.shared.records import record
from wasmgroup.shared.wasi import WasiError


@record(frozen=False)
class Entry:
    os_fd: int
    filetype: int
    rights_base: int = wasi.RIGHTS_ALL
    rights_inheriting: int = wasi.RIGHTS_ALL
    guest_path: str | None = None  # a directory's (what relative paths resolve against)
    preopen: str | None = None  # the name fd_prestat_dir_name gives


def guest_capacity() -> int:
    """How many descriptors the guest's table may hold: the coordinator's own OS descriptor
    limit less a reserve for its own needs (a socket per worker, pipes, the duplicates it
    hands to workers), so that a guest opening files without end gets EMFILE while its
    writes to stdout, new threads and the coordinator itself still work."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return MAX_DESCRIPTORS
    return max(16, min(MAX_DESCRIPTORS, soft - max(256, soft // 4)))


def _filetype(fd: int) -> int:
    return wasi.filetype_of(os.fstat(fd).st_mode)


class DescriptorTable:
    def __init__(self, fs: GuestFilesystem, stdio: list[int | None],
                 on_close: Callable[[], None] = lambda: None) -> None:
        """`stdio`: host descriptors for 0, 1, 2 (duplicated here; None leaves one closed).
        `on_close` is called after an entry's OS descriptor was released, so that workers
        drop their copies (a pipe reaches end-of-file only when every copy is closed)."""
        self.fs = fs
        self.generations = GenerationPage.create()
        self._entries: dict[int, Entry] = {}
        self.capacity = guest_capacity()
        # Every number below it is taken: the lowest free number is searched from here, not
        # from 0 (a program holding thousands of files opens the next in O(1), not O(n)).
        self._lowest_free = 0
        self._lock = threading.Lock()
        self._on_close = on_close
        self.paths = PathCalls(fs, self._resolve)
        try:
            for number, host_fd in enumerate(stdio):
                if host_fd is not None:
                    fd = os.dup(host_fd)
                    self._entries[number] = Entry(fd, _filetype(fd), wasi.rights_of(fd))
            for offset, mapping in enumerate(fs.mappings):
                try:
                    fd = fs.open(mapping.guest, os.O_RDONLY | os.O_DIRECTORY)
                except PermissionError:  # a directory one may enter but not list
                    fd = fs.open(mapping.guest, os.O_PATH | os.O_DIRECTORY)
                self._entries[3 + offset] = Entry(fd, wasi.FT_DIRECTORY,
                                                  guest_path=mapping.guest,
                                                  preopen=mapping.guest)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release every OS descriptor and the generation page (idempotent)."""
        with self._lock:
            entries, self._entries = self._entries, {}
        for entry in entries.values():
            with contextlib.suppress(OSError):
                os.close(entry.os_fd)
        self.generations.close()

    # ------------------------------------------------------------------ the table
    def _entry(self, fd: int) -> Entry:
        entry = self._entries.get(fd)
        if entry is None:
            raise WasiError(wasi.EBADF)
        return entry

    def _free_number(self, minimum: int = 0) -> int:
        if len(self._entries) >= self.capacity:
            raise WasiError(wasi.EMFILE)
        number = max(minimum, self._lowest_free)
        while number in self._entries:
            number += 1
        if number >= MAX_DESCRIPTORS:
            raise WasiError(wasi.EMFILE)
        if minimum <= self._lowest_free:
            self._lowest_free = number
        return number

    def _insert(self, entry: Entry, minimum: int = 0) -> int:
        number = self._free_number(minimum)
        self.generations.bump(number)
        self._entries[number] = entry
        return number

    def _remove(self, fd: int) -> Entry | None:
        entry = self._entries.pop(fd, None)
        if entry is not None:
            self.generations.bump(fd)
            self._lowest_free = min(self._lowest_free, fd)
        return entry

    def _release(self, *entries: Entry | None) -> None:
        """Close OS descriptors taken out of the table (after the lock: never under it)."""
        closed = False
        for entry in entries:
            if entry is not None and not any(e.os_fd == entry.os_fd
                                             for e in self._entries.values()):
                with contextlib.suppress(OSError):
                    os.close(entry.os_fd)
                closed = True
        if closed:
            self._on_close()

    def fetch(self, fd: int) -> tuple[list[Any], int]:
        """[errno, generation, filetype, rights_base, rights_inheriting, guest path of a
        directory or None] and a duplicate of the OS descriptor (the caller sends then
        closes it)."""
        with self._lock:
            entry = self._entry(fd)
            return ([wasi.ESUCCESS, self.generations.get(fd), entry.filetype,
                     entry.rights_base, entry.rights_inheriting, entry.guest_path],
                    os.dup(entry.os_fd))

    def fd_close(self, fd: int) -> list[int]:
        with self._lock:
            entry = self._entry(fd)
            self._remove(fd)
        self._release(entry)
        return [wasi.ESUCCESS]

    def fd_renumber(self, source: int, target: int) -> list[int]:
        if not 0 <= target < MAX_DESCRIPTORS:
            raise WasiError(wasi.EBADF)
        with self._lock:
            entry = self._entry(source)
            if source == target:
                return [wasi.ESUCCESS]
            replaced = self._remove(target)
            self._remove(source)
            self.generations.bump(target)
            self._entries[target] = entry
        self._release(replaced)
        return [wasi.ESUCCESS]

    def fd_dup(self, fd: int, minimum: int) -> list[int]:
        """A new number (the lowest free one from `minimum`) for the same file description."""
        with self._lock:
            entry = self._entry(fd)
            copy = Entry(os.dup(entry.os_fd), entry.filetype, entry.rights_base,
                         entry.rights_inheriting, entry.guest_path)
            try:
                return [wasi.ESUCCESS, self._insert(copy, minimum)]
            except WasiError:
                os.close(copy.os_fd)
                raise

    def fd_pipe(self) -> list[int]:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        with self._lock:
            try:
                first = self._insert(Entry(read_end, wasi.FT_UNKNOWN))
            except WasiError:
                os.close(read_end)
                os.close(write_end)
                raise
            try:
                second = self._insert(Entry(write_end, wasi.FT_UNKNOWN))
            except WasiError:
                self._remove(first)
                os.close(read_end)
                os.close(write_end)
                raise
        return [wasi.ESUCCESS, first, second]

    def fd_fdstat_set_rights(self, fd: int, base: int, inheriting: int) -> list[int]:
        with self._lock:
            entry = self._entry(fd)
            if base & ~entry.rights_base or inheriting & ~entry.rights_inheriting:
                raise WasiError(wasi.ENOTCAPABLE)  # rights can only be dropped
            entry.rights_base, entry.rights_inheriting = base, inheriting
            self.generations.bump(fd)  # caches hold the rights too
        return [wasi.ESUCCESS]

    def fd_prestat(self, fd: int) -> list[Any]:
        """[errno, the preopen's guest name] (EBADF for any other descriptor: wasi-libc's
        scan of preopens stops there)."""
        with self._lock:
            entry = self._entry(fd)
            if entry.preopen is None:
                raise WasiError(wasi.EBADF)
            return [wasi.ESUCCESS, entry.preopen]

    # ------------------------------------------------------------------ paths
    def _resolve(self, dirfd: int, path: str) -> str:
        """The absolute guest path `path` names relative to directory descriptor `dirfd`;
        it must stay inside that directory's mapping."""
        with self._lock:
            entry = self._entry(dirfd)
        return resolve_guest_path(self.fs, entry.guest_path, path)

    def path_open(self, dirfd: int, lookup: int, path: str, oflags: int, rights_base: int,
                  rights_inheriting: int, fdflags: int) -> list[int]:
        guest = self._resolve(dirfd, path)
        reads = bool(rights_base & wasi.RIGHT_FD_READ)
        writes = bool(rights_base & wasi.RIGHT_FD_WRITE)
        if oflags & wasi.OFLAG_DIRECTORY:
            flags = os.O_RDONLY | os.O_DIRECTORY
        else:
            flags = os.O_RDWR if reads and writes else os.O_WRONLY if writes else os.O_RDONLY
        for bit, host in ((wasi.OFLAG_CREAT, os.O_CREAT), (wasi.OFLAG_EXCL, os.O_EXCL),
                          (wasi.OFLAG_TRUNC, os.O_TRUNC)):
            if oflags & bit:
                flags |= host
        if not lookup & wasi.LOOKUP_SYMLINK_FOLLOW:
            flags |= os.O_NOFOLLOW
        host_flags = wasi.fdflags_to_host(fdflags)
        flags |= host_flags & ~os.O_NONBLOCK
        try:
            fd = self.paths.open(guest, flags)
        except OSError as err:
            if err.errno == errno.EISDIR and not writes and flags & os.O_ACCMODE:
                fd = self.paths.open(guest, (flags & ~os.O_ACCMODE) | os.O_RDONLY)
            else:
                raise
        try:
            # Opened non-blocking (a FIFO must not block the coordinator): as asked from now.
            fcntl.fcntl(fd, fcntl.F_SETFL, (fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
                        | (host_flags & os.O_NONBLOCK))
            filetype = _filetype(fd)
            entry = Entry(fd, filetype, wasi.rights_of(fd, rights_base), rights_inheriting,
                          guest if filetype == wasi.FT_DIRECTORY else None)
            with self._lock:
                return [wasi.ESUCCESS, self._insert(entry)]
        except BaseException:
            os.close(fd)
            raise

    def fs_mapping(self, index: int) -> tuple[list[Any], int]:
        """[errno, host directory, guest name] of mapping `index` and a descriptor of the
        directory (O_PATH), for a worker to open guest paths beneath it itself."""
        if not 0 <= index < len(self.fs.mappings):
            raise WasiError(wasi.ENOENT)
        mapping = self.fs.mappings[index]
        return ([wasi.ESUCCESS, mapping.host, mapping.guest],
                self.fs.open(mapping.guest, os.O_PATH | os.O_DIRECTORY))


def serve(table: DescriptorTable, name: str, args: list[Any]) -> tuple[list[Any], int | None]:
    """A descriptor request from a worker: its answer and an OS descriptor to send with it
    (the caller closes it after sending). Errors become the answer's errno."""
    try:
        if name == "fd_fetch":
            return table.fetch(*args)
        if name == "fs_mapping":
            return table.fs_mapping(*args)
        method = getattr(table, name)
        return method(*args), None
    except WasiError as err:
        return [err.code], None
    except OSError as err:
        return [wasi.errno_of(err)], None


# The requests and their arguments' types, as program.py checks them.
REQUESTS: dict[str, tuple[type, ...]] = {
    "fd_fetch": (int,), "fd_close": (int,), "fd_renumber": (int, int), "fd_dup": (int, int),
    "fd_pipe": (), "fd_fdstat_set_rights": (int, int, int), "fd_prestat": (int,),
    "path_open": (int, int, str, int, int, int, int),
    "fs_mapping": (int,),
}
