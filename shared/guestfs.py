"""The guest's filesystem view: host directories mapped under guest names, and the one way
wasmgroup opens a guest path, beneath a descriptor of its mapped directory.

Shared by the coordinator (the library locator, orchestrator/locate.py, and the program's
descriptor table) and the workers (the path calls they serve themselves, worker/host/paths.py),
so that both sides resolve every guest path the same way. Guest paths are POSIX paths in the
guest's namespace; `..` is resolved in that namespace before mapping, and every path is opened
in one step relative to a descriptor of its mapped directory (`openat2` with
`RESOLVE_BENEATH`, else a walk that opens one component at a time without following
symlinks), so a symlink leading out of the mapping, or a directory swapped for one while a
lookup runs, is treated as missing. Symlinks that stay inside their mapping are followed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import posixpath
import stat
import threading
from collections.abc import Sequence

from wasmgroup.shared.errors import LinkError
from wasmgroup.shared.records import field, record

SYS_OPENAT2 = 437  # the same number on every Linux architecture
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08
MAX_SYMLINKS = 40  # as Linux's path walk
PATH_MAX = 4096  # as Linux: a longer name could never be opened (and would bloat dlerror)
OPENAT2_RETRIES = 8  # EAGAIN: a rename raced the walk; the kernel asks to try again
# A lookup never blocks (a FIFO), never becomes a controlling terminal, never leaks into workers.
OPEN_FLAGS = os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# Cleared when the kernel (or a seccomp filter) refuses openat2; tests clear it to run the walk.
use_openat2 = True


def _openat2(dir_fd: int, path: str, flags: int, mode: int = 0) -> int:
    how = _OpenHow(flags, mode if flags & os.O_CREAT else 0,
                   RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dir_fd),
                       ctypes.c_char_p(os.fsencode(path)), ctypes.byref(how),
                       ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return int(fd)


def open_beneath(root_fd: int, root_host: str, rel: str, flags: int, mode: int = 0o666) -> int:
    """Open `rel` (relative, no `..` needed) beneath the directory `root_fd` (whose host path
    is `root_host`); never resolves to anything outside it. Raises OSError (EXDEV for an
    escape, EINVAL for a NUL byte). `mode` is for a file O_CREAT makes (umask applies)."""
    global use_openat2
    if "\0" in rel:
        raise OSError(errno.EINVAL, "a path cannot contain a NUL byte")
    rel = rel.lstrip("/") or "."
    # openat2 refuses O_PATH with any other flag but these (O_PATH opens block on nothing).
    flags |= os.O_CLOEXEC if flags & os.O_PATH else OPEN_FLAGS
    if use_openat2:
        for _ in range(OPENAT2_RETRIES):
            try:
                return _openat2(root_fd, rel, flags, mode)
            except OSError as err:
                if err.errno in (errno.ENOSYS, errno.EPERM, errno.E2BIG):
                    use_openat2 = False  # not this kernel's, or filtered: walk from now on
                    break
                if err.errno == errno.EXDEV:
                    break  # an absolute symlink, maybe into the mapping: the walk decides
                if err.errno != errno.EAGAIN:
                    raise
    return _walk_beneath(root_fd, root_host, rel, flags, mode)


def _walk_beneath(root_fd: int, root_host: str, rel: str, flags: int, mode: int) -> int:
    """`open_beneath` without openat2: one component at a time, each opened relative to the
    last with O_NOFOLLOW, symlinks read and resolved here (an absolute target counts only when
    it names a place under `root_host`), `..` never above the root."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    dirs = [os.dup(root_fd)]  # the directories walked through, root first: `..` pops one
    links = 0
    try:
        while parts:
            part = parts.pop(0)
            if part == "..":
                if len(dirs) == 1:
                    raise OSError(errno.EXDEV, "the path leads out of its directory")
                os.close(dirs.pop())
                continue
            last = not parts
            want = flags | os.O_NOFOLLOW if last else (
                os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            target = None
            try:
                fd = os.open(part, want, mode, dir_fd=dirs[-1])
            except OSError as err:
                if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                target = _link_target(dirs[-1], part, err)
            else:
                if want & os.O_PATH and stat.S_ISLNK(os.fstat(fd).st_mode):
                    os.close(fd)  # O_PATH opens the symlink itself
                    target = _link_target(dirs[-1], part, None)
                elif last:
                    return fd
                else:
                    dirs.append(fd)
                    continue
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
            if target.startswith("/"):
                inside = os.path.relpath(target, root_host)
                if inside == ".." or inside.startswith("../") or target.startswith("//"):
                    raise OSError(errno.EXDEV, "a symlink leads out of its directory")
                for fd in dirs[1:]:
                    os.close(fd)
                del dirs[1:]
                target = inside
            parts[:0] = [p for p in target.split("/") if p not in ("", ".")]
        return os.open(".", flags, dir_fd=dirs[-1])
    finally:
        for fd in dirs:
            os.close(fd)


def _link_target(dir_fd: int, name: str, original: OSError | None) -> str:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError as err:
        if err.errno == errno.EINVAL and original is not None:
            raise original from None  # not a symlink: the open's own error stands
        raise


@record
class Mapping:
    host: str  # absolute, symlinks resolved
    guest: str  # absolute, normalised


def normalize_guest_dir(guest: str) -> str:
    """A guest directory name as an absolute path; `.` (as in wasi-libc preopens) is `/`."""
    if guest in ("", "."):
        return "/"
    return posixpath.normpath(posixpath.join("/", guest))


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _open_directory(host: str) -> int:
    return os.open(host, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


@record(frozen=False)
class GuestFilesystem:
    """The host directories a guest can see, and where it sees them: the one way wasmgroup
    opens a guest path. Holds a descriptor of every mapped directory (`close` releases them).
    """

    mappings: list[Mapping] = field(default_factory=list)
    cwd: str = "/"
    host_library_dirs: list[str] = field(default_factory=list)
    _fds: dict[str, int] = field(default_factory=dict, repr=False)  # host directory -> fd
    # Held while a descriptor of `_fds` is in use: `close` must not free a number that a
    # lookup still resolves against (it could be reused for another directory at once).
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

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
        fs = cls(mappings, normalize_guest_dir(cwd), host_libs)
        try:
            for host in {*(m.host for m in mappings), *host_libs}:
                fs._fds[host] = _open_directory(host)
        except OSError as err:
            fs.close()
            raise LinkError(f"cannot open {err.filename}: {err.strerror}") from None
        return fs

    def close(self) -> None:
        """Release the directory descriptors (idempotent)."""
        with self._lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __enter__(self) -> GuestFilesystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def absolute(self, guest_path: str) -> str:
        """A guest path made absolute against the cwd, with `.`/`..` resolved lexically."""
        path = posixpath.normpath(posixpath.join(self.cwd, guest_path))
        # POSIX keeps a leading "//"; in the guest namespace it is just "/".
        return "/" + path.lstrip("/")

    def mapping_of(self, guest_path: str) -> Mapping | None:
        """The mapping that shows `guest_path` (the longest guest prefix wins)."""
        best: Mapping | None = None
        for m in self.mappings:
            if _inside(guest_path, m.guest) and (best is None or len(m.guest) > len(best.guest)):
                best = m
        return best

    def _open_in(self, host_dir: str, rel: str, flags: int, mode: int = 0o666) -> int:
        with self._lock:
            if host_dir not in self._fds:
                raise OSError(errno.EBADF, "the guest filesystem is closed")
            return open_beneath(self._fds[host_dir], host_dir, rel, flags, mode)

    def open(self, guest_path: str, flags: int = os.O_RDONLY, mode: int = 0o666) -> int:
        """Open a guest path (made absolute against the cwd) in one step beneath its mapped
        directory. The caller owns the descriptor. Raises OSError: ENOENT when no mapping
        shows the path, EXDEV when it leads out of its mapping."""
        path = self.absolute(guest_path)
        mapping = self.mapping_of(path)
        if mapping is None:
            raise OSError(errno.ENOENT, "no mapped directory shows this path")
        # `path` is normalised and inside the mapping: the rest of it, without relpath's two
        # getcwd calls (this is on every path call's way).
        rel = path[len(mapping.guest.rstrip("/")):].lstrip("/") or "."
        return self._open_in(mapping.host, rel, flags, mode)

    def is_mapping_point(self, guest_path: str) -> bool:
        """Whether the path is a mapped directory or a directory above one (a place only
        the mappings make: it cannot be created, removed or renamed)."""
        path = self.absolute(guest_path)
        return any(_inside(m.guest, path) for m in self.mappings)

    def open_parent(self, guest_path: str) -> tuple[int, str]:
        """The directory holding a guest path's last component, opened (O_PATH) beneath its
        mapping, and that component: for calls that act on a name itself (unlink, rename,
        mkdir, readlink, a symlink not followed). The caller owns the descriptor. EBUSY for a
        mapping point."""
        path = self.absolute(guest_path)
        if self.is_mapping_point(path):
            raise OSError(errno.EBUSY, "a mapped directory")
        parent, name = posixpath.split(path)
        return self.open(parent, os.O_PATH | os.O_DIRECTORY), name

    def stat(self, guest_path: str) -> os.stat_result:
        """`stat` of a guest path, symlinks followed as `open` follows them."""
        fd = self.open(guest_path, os.O_PATH)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def is_directory(self, guest_path: str) -> bool:
        """Whether a guest path is a directory the guest can see."""
        path = self.absolute(guest_path)
        if "\0" in path:
            return False
        if any(_inside(m.guest, path) for m in self.mappings):
            return True  # a mapping point, or a directory above one
        try:
            return stat.S_ISDIR(self.stat(path).st_mode)
        except OSError:
            return False

    def open_library(self, guest_path: str) -> int | None:
        """A regular file at the guest path, opened for reading; None if there is none."""
        try:
            return _regular(self.open(guest_path))
        except OSError:
            return None

    def open_host_library(self, index: int, file_name: str) -> int | None:
        """`file_name` (no `/`) in --lib-path directory `index` (from 0); None if absent."""
        host_dir = self.host_library_dirs[index]
        try:
            return _regular(self._open_in(host_dir, file_name, os.O_RDONLY))
        except OSError:
            return None

    def guest_path_of_host(self, host_path: str) -> str | None:
        """Where a host file appears in the guest, if any mapping shows it (for naming the
        main module, a path the user gave)."""
        real = os.path.realpath(host_path)
        for m in sorted(self.mappings, key=lambda m: len(m.host), reverse=True):
            if _inside(real, m.host):
                rel = os.path.relpath(real, m.host)
                return posixpath.normpath(posixpath.join(m.guest, rel.replace(os.sep, "/")))
        return None


def _regular(fd: int) -> int | None:
    """`fd` if it is a regular file, else None (and it is closed)."""
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return fd
    os.close(fd)
    return None
