"""wasmgroup's own `wasi_snapshot_preview1` (and the WASIX descriptor calls), one program-wide.

Descriptors are the program's (orchestrator/descriptors.py), reached through the group's
`DescriptorCache`: reads, writes, seeks, stat, sync, flags, sizes and times work on the cached
OS descriptor with no round trip; opening, closing, renumbering, duplicating, pipes and every
path call are requests the coordinator serves. A read of a pipe, terminal or socket waits on
the descriptor and on the worker's wake-up together (`poll.wait_for`), so that a blocked thread
still applies link operations and leaves when the program stops. Every failure is a WASI errno.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from wasmgroup.shared import wasi
from wasmgroup.shared.wasi import WasiError
from wasmgroup.worker.host.poll import wait_for
from wasmgroup.worker.host.wasix import GuestExit
from wasmgroup.worker.memview import GuestFault, GuestMemory

if TYPE_CHECKING:
    from wasmgroup.worker.group import InstanceGroup

# Reads of these never block: no need to wait on them first.
_NEVER_BLOCK = (wasi.FT_REGULAR, wasi.FT_DIRECTORY, wasi.FT_BLOCK)
_ADVICE = {0: os.POSIX_FADV_NORMAL, 1: os.POSIX_FADV_SEQUENTIAL, 2: os.POSIX_FADV_RANDOM,
           3: os.POSIX_FADV_WILLNEED, 4: os.POSIX_FADV_DONTNEED, 5: os.POSIX_FADV_NOREUSE}
_SETTABLE_FLAGS = os.O_APPEND | os.O_NONBLOCK  # what Linux lets F_SETFL change
_U64 = struct.Struct("<Q")


def errnos(fn: Callable[..., int | None]) -> Callable[..., int | None]:
    """A host function whose failures return their WASI errno."""
    def wrapper(*args: int) -> int | None:
        try:
            return fn(*args)
        except WasiError as err:
            return err.code
        except GuestFault:
            return wasi.EFAULT
        except OSError as err:
            return wasi.errno_of(err)
        except (OverflowError, ValueError):  # a value the host call cannot take
            return wasi.EINVAL
    wrapper.__name__ = fn.__name__
    return wrapper


def _strings_sizes(items: list[bytes]) -> tuple[int, int]:
    return len(items), sum(len(s) + 1 for s in items)


def make_wasi_functions(group: InstanceGroup) -> dict[str, Callable[..., int | None]]:
    """The `wasi_snapshot_preview1` functions for one group (clocks and poll_oneoff are
    clocks.py's and poll.py's), and the WASIX descriptor calls, by import name."""
    fds = group.descriptors
    args = [a.encode() for a in group.args]
    env = [f"{k}={v}".encode() for k, v in group.env]

    def memory() -> GuestMemory:
        return group.memory

    def write_strings(items: list[bytes], pointers: int, buf: int) -> int:
        offset = buf
        for i, item in enumerate(items):
            memory().write_u32(pointers + 4 * i, offset)
            memory().write(offset, item + b"\0")
            offset += len(item) + 1
        return wasi.ESUCCESS

    def write_sizes(items: list[bytes], count_ptr: int, size_ptr: int) -> int:
        count, size = _strings_sizes(items)
        memory().write_u32(count_ptr, count)
        memory().write_u32(size_ptr, size)
        return wasi.ESUCCESS

    @errnos
    def args_get(argv: int, buf: int) -> int:
        return write_strings(args, argv, buf)

    @errnos
    def args_sizes_get(count: int, size: int) -> int:
        return write_sizes(args, count, size)

    @errnos
    def environ_get(environ: int, buf: int) -> int:
        return write_strings(env, environ, buf)

    @errnos
    def environ_sizes_get(count: int, size: int) -> int:
        return write_sizes(env, count, size)

    # ------------------------------------------------------------------ the fast path
    @errnos
    def fd_read(fd: int, iovs: int, count: int, ret: int) -> int:
        entry = fds.get(fd)
        buffers = memory().buffers(iovs, count)
        if entry.filetype not in _NEVER_BLOCK:
            wait_for(group, entry.os_fd, write=False)
        memory().write_u32(ret, os.readv(entry.os_fd, buffers) if buffers else 0)
        return wasi.ESUCCESS

    @errnos
    def fd_write(fd: int, iovs: int, count: int, ret: int) -> int:
        entry = fds.get(fd)
        buffers = memory().buffers(iovs, count)
        if entry.filetype in _NEVER_BLOCK or not buffers:
            written = os.writev(entry.os_fd, buffers) if buffers else 0
        else:
            written = _write_taking_part(group, entry.os_fd, buffers)
        memory().write_u32(ret, written)
        return wasi.ESUCCESS

    @errnos
    def fd_pread(fd: int, iovs: int, count: int, offset: int, ret: int) -> int:
        entry = fds.get(fd)
        buffers = memory().buffers(iovs, count)
        memory().write_u32(ret, os.preadv(entry.os_fd, buffers, offset) if buffers else 0)
        return wasi.ESUCCESS

    @errnos
    def fd_pwrite(fd: int, iovs: int, count: int, offset: int, ret: int) -> int:
        entry = fds.get(fd)
        buffers = memory().buffers(iovs, count)
        memory().write_u32(ret, os.pwritev(entry.os_fd, buffers, offset) if buffers else 0)
        return wasi.ESUCCESS

    @errnos
    def fd_seek(fd: int, offset: int, whence: int, ret: int) -> int:
        entry = fds.get(fd)
        if whence not in wasi.WHENCE:
            return wasi.EINVAL
        if entry.filetype == wasi.FT_DIRECTORY:
            return wasi.EISDIR  # directory offsets are readdir cookies
        memory().write(ret, _U64.pack(os.lseek(entry.os_fd, offset, wasi.WHENCE[whence])))
        return wasi.ESUCCESS

    @errnos
    def fd_tell(fd: int, ret: int) -> int:
        entry = fds.get(fd)
        memory().write(ret, _U64.pack(os.lseek(entry.os_fd, 0, os.SEEK_CUR)))
        return wasi.ESUCCESS

    @errnos
    def fd_filestat_get(fd: int, ret: int) -> int:
        entry = fds.get(fd)
        fields = wasi.filestat_fields(os.fstat(entry.os_fd))
        memory().write(ret, struct.pack(wasi.FILESTAT_FORMAT, *fields))
        return wasi.ESUCCESS

    @errnos
    def fd_sync(fd: int) -> int:
        os.fsync(fds.get(fd).os_fd)
        return wasi.ESUCCESS

    @errnos
    def fd_datasync(fd: int) -> int:
        os.fdatasync(fds.get(fd).os_fd)
        return wasi.ESUCCESS

    @errnos
    def fd_advise(fd: int, offset: int, length: int, advice: int) -> int:
        if advice not in _ADVICE:
            return wasi.EINVAL
        os.posix_fadvise(fds.get(fd).os_fd, offset, length, _ADVICE[advice])
        return wasi.ESUCCESS

    @errnos
    def fd_allocate(fd: int, offset: int, length: int) -> int:
        os.posix_fallocate(fds.get(fd).os_fd, offset, length)
        return wasi.ESUCCESS

    @errnos
    def fd_filestat_set_size(fd: int, size: int) -> int:
        os.ftruncate(fds.get(fd).os_fd, size)
        return wasi.ESUCCESS

    @errnos
    def fd_filestat_set_times(fd: int, atim: int, mtim: int, fst: int) -> int:
        entry = fds.get(fd)
        times = wasi.utime_ns(atim, mtim, fst, lambda: os.fstat(entry.os_fd))
        if times is None:
            return wasi.EINVAL
        os.utime(entry.os_fd, ns=times)
        return wasi.ESUCCESS

    @errnos
    def fd_fdstat_get(fd: int, ret: int) -> int:
        entry = fds.get(fd)
        flags = wasi.fdflags_from_host(fcntl.fcntl(entry.os_fd, fcntl.F_GETFL))
        memory().write(ret, struct.pack(wasi.FDSTAT_FORMAT, entry.filetype, flags,
                                        entry.rights_base, entry.rights_inheriting))
        return wasi.ESUCCESS

    @errnos
    def fd_fdstat_set_flags(fd: int, fdflags: int) -> int:
        # Flags of the open file description: every thread's descriptor shares them.
        entry = fds.get(fd)
        current = fcntl.fcntl(entry.os_fd, fcntl.F_GETFL)
        wanted = wasi.fdflags_to_host(fdflags) & _SETTABLE_FLAGS
        fcntl.fcntl(entry.os_fd, fcntl.F_SETFL, (current & ~_SETTABLE_FLAGS) | wanted)
        return wasi.ESUCCESS

    @errnos
    def fd_readdir(fd: int, buf: int, size: int, cookie: int, ret: int) -> int:
        entry = fds.get(fd)
        if entry.filetype != wasi.FT_DIRECTORY:
            return wasi.ENOTDIR
        out = bytearray()
        for index, (name, inode, kind) in enumerate(_directory_entries(entry.os_fd)):
            if index < cookie:
                continue
            encoded = name.encode("utf-8", "surrogateescape")
            out += struct.pack(wasi.DIRENT_FORMAT, index + 1, inode, len(encoded), kind)
            out += encoded
            if len(out) >= size:
                break
        data = bytes(out[:size])
        memory().write(buf, data)
        memory().write_u32(ret, len(data))
        return wasi.ESUCCESS

    # ------------------------------------------------------------------ the table's calls
    @errnos
    def fd_close(fd: int) -> int:
        fds.call("fd_close", fd)
        fds.forget(fd)
        return wasi.ESUCCESS

    @errnos
    def fd_renumber(fd: int, to: int) -> int:
        fds.call("fd_renumber", fd, to)
        fds.forget(fd)
        fds.forget(to)
        return wasi.ESUCCESS

    @errnos
    def fd_fdstat_set_rights(fd: int, base: int, inheriting: int) -> int:
        fds.call("fd_fdstat_set_rights", fd, base & wasi.RIGHTS_ALL,
                 inheriting & wasi.RIGHTS_ALL)
        return wasi.ESUCCESS

    @errnos
    def fd_prestat_get(fd: int, ret: int) -> int:
        name = fds.call("fd_prestat", fd)[1].encode()
        memory().write(ret, struct.pack("<B3xI", 0, len(name)))
        return wasi.ESUCCESS

    @errnos
    def fd_prestat_dir_name(fd: int, path: int, size: int) -> int:
        name = fds.call("fd_prestat", fd)[1].encode()
        if size < len(name):
            return wasi.ENAMETOOLONG
        memory().write(path, name)
        return wasi.ESUCCESS

    @errnos
    def fd_dup(fd: int, ret: int) -> int:
        memory().write_u32(ret, fds.call("fd_dup", fd, 0)[1])
        return wasi.ESUCCESS

    @errnos
    def fd_dup2(fd: int, minimum: int, cloexec: int, ret: int) -> int:
        memory().write_u32(ret, fds.call("fd_dup", fd, minimum)[1])  # no exec: no cloexec
        return wasi.ESUCCESS

    @errnos
    def fd_pipe(ret_read: int, ret_write: int) -> int:
        _errno, read_end, write_end = fds.call("fd_pipe")
        memory().write_u32(ret_read, read_end)
        memory().write_u32(ret_write, write_end)
        return wasi.ESUCCESS

    # ------------------------------------------------------------------ paths
    def path(ptr: int, length: int) -> str:
        try:
            return memory().read(ptr, length).decode()
        except UnicodeDecodeError:
            raise WasiError(wasi.EILSEQ) from None  # as Wasmer: WASI paths are UTF-8

    @errnos
    def path_open(dirfd: int, lookup: int, path_ptr: int, path_len: int, oflags: int,
                  base: int, inheriting: int, fdflags: int, ret: int) -> int:
        group.service_pending()
        opened = fds.call("path_open", dirfd, lookup, path(path_ptr, path_len), oflags,
                          base & wasi.RIGHTS_ALL, inheriting & wasi.RIGHTS_ALL, fdflags)[1]
        memory().write_u32(ret, opened)
        return wasi.ESUCCESS

    @errnos
    def path_open2(dirfd: int, lookup: int, path_ptr: int, path_len: int, oflags: int,
                   base: int, inheriting: int, fdflags: int, fdflagsext: int, ret: int
                   ) -> int | None:
        # fdflagsext carries only close-on-exec, and there is no exec.
        return path_open(dirfd, lookup, path_ptr, path_len, oflags, base, inheriting,
                         fdflags, ret)

    def path_call(name: str, dirfd: int, path_ptr: int, path_len: int, *extra: Any
                  ) -> list[Any]:
        group.service_pending()
        return fds.path_call(name, dirfd, path(path_ptr, path_len), list(extra))

    @errnos
    def path_filestat_get(dirfd: int, lookup: int, ptr: int, length: int, ret: int) -> int:
        fields = path_call("path_filestat_get", dirfd, ptr, length, lookup)[1:]
        memory().write(ret, struct.pack(wasi.FILESTAT_FORMAT, *fields))
        return wasi.ESUCCESS

    @errnos
    def path_filestat_set_times(dirfd: int, lookup: int, ptr: int, length: int, atim: int,
                                mtim: int, fst: int) -> int:
        path_call("path_filestat_set_times", dirfd, ptr, length, lookup, atim, mtim, fst)
        return wasi.ESUCCESS

    @errnos
    def path_create_directory(dirfd: int, ptr: int, length: int) -> int:
        path_call("path_create_directory", dirfd, ptr, length)
        return wasi.ESUCCESS

    @errnos
    def path_remove_directory(dirfd: int, ptr: int, length: int) -> int:
        path_call("path_remove_directory", dirfd, ptr, length)
        return wasi.ESUCCESS

    @errnos
    def path_unlink_file(dirfd: int, ptr: int, length: int) -> int:
        path_call("path_unlink_file", dirfd, ptr, length)
        return wasi.ESUCCESS

    @errnos
    def path_readlink(dirfd: int, ptr: int, length: int, buf: int, size: int, ret: int
                      ) -> int:
        target: bytes = path_call("path_readlink", dirfd, ptr, length)[1][:size]
        memory().write(buf, target)
        memory().write_u32(ret, len(target))
        return wasi.ESUCCESS

    @errnos
    def path_symlink(old_ptr: int, old_len: int, dirfd: int, ptr: int, length: int) -> int:
        path_call("path_symlink", dirfd, ptr, length, path(old_ptr, old_len))
        return wasi.ESUCCESS

    @errnos
    def path_rename(dirfd: int, ptr: int, length: int, new_dirfd: int, new_ptr: int,
                    new_len: int) -> int:
        path_call("path_rename", dirfd, ptr, length, new_dirfd, path(new_ptr, new_len))
        return wasi.ESUCCESS

    @errnos
    def path_link(dirfd: int, lookup: int, ptr: int, length: int, new_dirfd: int,
                  new_ptr: int, new_len: int) -> int:
        path_call("path_link", dirfd, ptr, length, lookup, new_dirfd, path(new_ptr, new_len))
        return wasi.ESUCCESS

    # ------------------------------------------------------------------ the rest
    def proc_exit(code: int) -> None:
        raise GuestExit(code)

    @errnos
    def random_get(buf: int, length: int) -> int:
        memory().write(buf, os.urandom(length))
        return wasi.ESUCCESS

    def sched_yield() -> int:
        group.service_pending()
        os.sched_yield()
        return wasi.ESUCCESS

    return {f.__name__: f for f in (
        args_get, args_sizes_get, environ_get, environ_sizes_get, fd_read, fd_write, fd_pread,
        fd_pwrite, fd_seek, fd_tell, fd_filestat_get, fd_sync, fd_datasync, fd_advise,
        fd_allocate, fd_filestat_set_size, fd_filestat_set_times, fd_fdstat_get,
        fd_fdstat_set_flags, fd_readdir, fd_close, fd_renumber, fd_fdstat_set_rights,
        fd_prestat_get, fd_prestat_dir_name, fd_dup, fd_dup2, fd_pipe, path_open, path_open2,
        path_filestat_get, path_filestat_set_times, path_create_directory,
        path_remove_directory, path_unlink_file, path_readlink, path_symlink, path_rename,
        path_link, proc_exit, random_get, sched_yield)}


def _write_taking_part(group: InstanceGroup, fd: int, buffers: list[memoryview]) -> int:
    """A blocking write to a pipe, terminal or socket, in pieces that fit once it polls
    writable (PIPE_BUF), so that a thread whose reader is slow (or is the thread running a
    dlopen) takes part in link operations between pieces instead of blocking in the kernel."""
    data = memoryview(b"".join(buffers)) if len(buffers) > 1 else buffers[0]
    written = 0
    while written < len(data):
        wait_for(group, fd, write=True)
        try:
            written += os.write(fd, data[written:written + select.PIPE_BUF])
        except BlockingIOError:
            if not written:
                raise
            break  # a non-blocking descriptor that filled up: a short write
    return written


def _directory_entries(fd: int) -> list[tuple[str, int, int]]:
    """(name, inode, WASI file type) of every entry, `.` and `..` first, in the directory's
    own order (so cookies, positions in this list, stay valid between calls)."""
    own = os.fstat(fd).st_ino
    entries = [(".", own, wasi.FT_DIRECTORY), ("..", own, wasi.FT_DIRECTORY)]
    with os.scandir(fd) as scan:
        for item in scan:
            try:
                kind = wasi.filetype_of(item.stat(follow_symlinks=False).st_mode)
            except OSError:
                kind = wasi.FT_UNKNOWN
            entries.append((item.name, item.inode(), kind))
    return entries


# WASIX calls served here (the rest of wasix.py's table stays there).
WASIX_DESCRIPTOR_CALLS = ("fd_dup", "fd_dup2", "fd_pipe", "path_open2")
