"""A worker's cache of the program's descriptor table (orchestrator/descriptors.py).

The first use of a guest descriptor asks the coordinator for its entry and receives a
duplicate of the OS descriptor (SCM_RIGHTS); later uses take the cached one after one read
of the entry's generation counter (shared/fdtable.py): a number closed, renumbered or
replaced since is fetched again (or is EBADF), never used stale. Only the group's own thread
touches the cache.

Path calls that change no descriptor (stat, mkdir, rmdir, unlink, rename, links, times) are
served here, without a round trip: the first one fetches a descriptor of every mapped
directory, and each path is resolved against its directory descriptor's cached entry and
opened beneath the mapping's descriptor exactly as the coordinator does
(shared/pathcalls.py, shared/guestfs.py). Opening a path stays the coordinator's: a new
descriptor number is the program-wide table's to give.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

from wasmgroup.shared import wasi
from wasmgroup.shared.fdtable import MAX_DESCRIPTORS, GenerationPage
from wasmgroup.shared.guestfs import GuestFilesystem, Mapping
from wasmgroup.shared.pathcalls import PathCalls, resolve_guest_path
from wasmgroup.shared.records import record
from wasmgroup.shared.wasi import WasiError

# name, args -> (answer [errno, values...], an OS descriptor that came with it)
Request = Callable[..., tuple[list[Any], int | None]]


@record(frozen=False)
class Cached:
    os_fd: int
    generation: int
    filetype: int
    rights_base: int
    rights_inheriting: int
    guest_path: str | None  # a directory's (what relative paths resolve against)


class DescriptorCache:
    def __init__(self, page: GenerationPage, request: Request) -> None:
        self._page = page
        self.request = request
        self._cache: dict[int, Cached] = {}
        # OS descriptors a blocking wait is on: a purge at a safe point inside that wait must
        # not close them under it (their number could be reused at once in this process).
        self.pinned: set[int] = set()
        self._paths: PathCalls | None = None

    def get(self, fd: int) -> Cached:
        """The entry at guest descriptor `fd`; raises WasiError (EBADF when there is none)."""
        cached = self._cache.get(fd)
        if cached is not None and self._page.get(fd) == cached.generation:
            return cached
        if not 0 <= fd < MAX_DESCRIPTORS:
            raise WasiError(wasi.EBADF)
        self.forget(fd)
        answer, os_fd = self.request("fd_fetch", fd)
        if answer[0] != wasi.ESUCCESS or os_fd is None:
            if os_fd is not None:
                os.close(os_fd)
            raise WasiError(answer[0] or wasi.EIO)
        _errno, generation, filetype, base, inheriting, guest_path = answer
        cached = Cached(os_fd, generation, filetype, base, inheriting, guest_path)
        self._cache[fd] = cached
        return cached

    def call(self, name: str, *args: Any) -> list[Any]:
        """A descriptor request the coordinator serves; raises WasiError on failure."""
        answer, os_fd = self.request(name, *args)
        if os_fd is not None:
            os.close(os_fd)
        if answer[0] != wasi.ESUCCESS:
            raise WasiError(answer[0])
        return answer

    def path_call(self, name: str, dirfd: int, path: str, extra: list[Any]) -> list[Any]:
        """[errno, values...] of a path call that changes no descriptor (shared/pathcalls.py);
        raises WasiError on failure."""
        try:
            return self._path_calls().call(name, dirfd, path, extra)
        except OSError as err:
            raise WasiError(wasi.errno_of(err)) from None

    def _path_calls(self) -> PathCalls:
        if self._paths is None:
            mappings: list[Mapping] = []
            fds: dict[str, int] = {}
            try:
                while True:
                    answer, os_fd = self.request("fs_mapping", len(mappings))
                    if answer[0] != wasi.ESUCCESS or os_fd is None:
                        if os_fd is not None:
                            os.close(os_fd)
                        break
                    host, guest = answer[1:3] if len(answer) == 3 else (None, None)
                    if not isinstance(host, str) or not isinstance(guest, str):
                        os.close(os_fd)
                        raise WasiError(wasi.EIO)  # not the coordinator's answer
                    mappings.append(Mapping(host, guest))
                    if host in fds:
                        os.close(os_fd)  # one host directory mapped under two names
                    else:
                        fds[host] = os_fd
            except BaseException:
                for fd in fds.values():
                    os.close(fd)
                raise
            self._paths = PathCalls(GuestFilesystem(mappings, "/", [], fds), self._resolve)
        return self._paths

    def _resolve(self, dirfd: int, path: str) -> str:
        assert self._paths is not None
        return resolve_guest_path(self._paths.fs, self.get(dirfd).guest_path, path)

    def forget(self, fd: int) -> None:
        cached = self._cache.pop(fd, None)
        if cached is not None:
            with contextlib.suppress(OSError):
                os.close(cached.os_fd)

    def purge(self) -> None:
        """Close every cached descriptor whose entry changed (a pipe's end the guest closed
        must not stay open here, or its reader would never see end-of-file)."""
        for fd, cached in list(self._cache.items()):
            if self._page.get(fd) != cached.generation and cached.os_fd not in self.pinned:
                self.forget(fd)

    def close(self) -> None:
        for fd in list(self._cache):
            self.forget(fd)
        if self._paths is not None:
            self._paths.fs.close()
            self._paths = None
        self._page.close()
