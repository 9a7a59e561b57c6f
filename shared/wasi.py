"""WASI preview1 (and WASIX) constants both sides need: errnos, file types, flags, layouts.

`errno_of` turns a host OSError into the WASI errno the guest sees: every failure of a
descriptor or path call reaches the guest as an errno, never as an exception.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable

# WASI errno values, in the order the ABI numbers them (0 is success).
_ERRNO_NAMES = (
    "SUCCESS 2BIG ACCES ADDRINUSE ADDRNOTAVAIL AFNOSUPPORT AGAIN ALREADY BADF BADMSG BUSY "
    "CANCELED CHILD CONNABORTED CONNREFUSED CONNRESET DEADLK DESTADDRREQ DOM DQUOT EXIST FAULT "
    "FBIG HOSTUNREACH IDRM ILSEQ INPROGRESS INTR INVAL IO ISCONN ISDIR LOOP MFILE MLINK MSGSIZE "
    "MULTIHOP NAMETOOLONG NETDOWN NETRESET NETUNREACH NFILE NOBUFS NODEV NOENT NOEXEC NOLCK "
    "NOLINK NOMEM NOMSG NOPROTOOPT NOSPC NOSYS NOTCONN NOTDIR NOTEMPTY NOTRECOVERABLE NOTSOCK "
    "NOTSUP NOTTY NXIO OVERFLOW OWNERDEAD PERM PIPE RANGE ROFS SPIPE SRCH STALE TIMEDOUT TXTBSY "
    "XDEV").split()
WASI_ERRNO: dict[str, int] = {name: value for value, name in enumerate(_ERRNO_NAMES)}
WASI_ERRNO["NOTCAPABLE"] = 76
ESUCCESS, EAGAIN, EBADF, EEXIST = 0, 6, 8, 20
EFAULT, EINVAL, EIO, EISDIR, EMFILE = 21, 28, 29, 31, 33
ENOENT, ENOSYS, ENOTDIR, ENOTSUP, EPERM, ESPIPE = 44, 52, 54, 58, 63, 67
EOVERFLOW, ENOTCAPABLE, ENAMETOOLONG, EILSEQ = 61, 76, 37, 25

_HOST_TO_WASI: dict[int, int] = {}
for _name, _value in WASI_ERRNO.items():
    _host = getattr(errno, "E" + _name, None)
    if isinstance(_host, int) and _name != "SUCCESS":
        _HOST_TO_WASI.setdefault(_host, _value)
_HOST_TO_WASI[errno.EWOULDBLOCK] = EAGAIN
_HOST_TO_WASI[errno.EOPNOTSUPP] = ENOTSUP


class WasiError(Exception):
    """A call fails with this WASI errno."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def errno_of(err: OSError) -> int:
    """The WASI errno for a host error (EIO when the host's has no WASI counterpart)."""
    return _HOST_TO_WASI.get(err.errno or 0, EIO)


# File types (__wasi_filetype_t).
FT_UNKNOWN, FT_BLOCK, FT_CHAR, FT_DIRECTORY, FT_REGULAR = 0, 1, 2, 3, 4
FT_SOCKET_DGRAM, FT_SOCKET_STREAM, FT_SYMLINK = 5, 6, 7


def filetype_of(mode: int) -> int:
    """The WASI file type of a host `st_mode` (pipes and FIFOs have none: unknown)."""
    for test, kind in ((stat.S_ISREG, FT_REGULAR), (stat.S_ISDIR, FT_DIRECTORY),
                       (stat.S_ISCHR, FT_CHAR), (stat.S_ISBLK, FT_BLOCK),
                       (stat.S_ISSOCK, FT_SOCKET_STREAM), (stat.S_ISLNK, FT_SYMLINK)):
        if test(mode):
            return kind
    return FT_UNKNOWN


# fdflags, oflags, lookupflags, fstflags, whence.
FDFLAG_APPEND, FDFLAG_DSYNC, FDFLAG_NONBLOCK, FDFLAG_RSYNC, FDFLAG_SYNC = 1, 2, 4, 8, 16
FDFLAGS_TO_HOST = ((FDFLAG_APPEND, os.O_APPEND), (FDFLAG_DSYNC, os.O_DSYNC),
                   (FDFLAG_NONBLOCK, os.O_NONBLOCK), (FDFLAG_RSYNC, os.O_RSYNC),
                   (FDFLAG_SYNC, os.O_SYNC))
OFLAG_CREAT, OFLAG_DIRECTORY, OFLAG_EXCL, OFLAG_TRUNC = 1, 2, 4, 8
LOOKUP_SYMLINK_FOLLOW = 1
FST_ATIM, FST_ATIM_NOW, FST_MTIM, FST_MTIM_NOW = 1, 2, 4, 8
WHENCE = {0: os.SEEK_SET, 1: os.SEEK_CUR, 2: os.SEEK_END}

# Rights: wasmgroup grants every right of preview1 (WASIX adds socket rights above them);
# fd_fdstat_set_rights may only take some away. Rights bits that matter to a descriptor:
RIGHTS_ALL = (1 << 64) - 1
RIGHT_FD_READ, RIGHT_FD_WRITE = 1 << 1, 1 << 6
RIGHT_FD_SEEK, RIGHT_FD_TELL = 1 << 2, 1 << 5


def rights_of(fd: int, rights: int = RIGHTS_ALL) -> int:
    """`rights` as a descriptor can have them: a terminal cannot seek, which is how wasi-libc's
    isatty() tells it apart from other character devices."""
    return rights & ~(RIGHT_FD_SEEK | RIGHT_FD_TELL) if os.isatty(fd) else rights


def fdflags_from_host(flags: int) -> int:
    """WASI fdflags from a file description's F_GETFL flags (O_SYNC includes O_DSYNC's bit:
    test the wider flag first)."""
    out = 0
    if flags & os.O_SYNC == os.O_SYNC:
        out |= FDFLAG_SYNC
    elif flags & os.O_DSYNC:
        out |= FDFLAG_DSYNC
    if flags & os.O_APPEND:
        out |= FDFLAG_APPEND
    if flags & os.O_NONBLOCK:
        out |= FDFLAG_NONBLOCK
    return out


def fdflags_to_host(fdflags: int) -> int:
    out = 0
    for wasi_flag, host_flag in FDFLAGS_TO_HOST:
        if fdflags & wasi_flag:
            out |= host_flag
    return out


# Layouts: filestat (64 bytes), fdstat (24), prestat (8), dirent header (24), iovec (8).
FILESTAT_FORMAT = "<QQB7xQQQQQ"
FDSTAT_FORMAT = "<BxHxxxxQQ"
DIRENT_FORMAT = "<QQIB3x"


def filestat_fields(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, filetype_of(st.st_mode), st.st_nlink, st.st_size,
            st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns)


def utime_ns(atim: int, mtim: int, fst: int, current: Callable[[], os.stat_result]
             ) -> tuple[int, int] | None:
    """(atime, mtime) in ns as fstflags ask (a time they leave alone keeps its value, read
    with `current` only then); None for contradictory or unknown flags (EINVAL)."""
    if fst & ~(FST_ATIM | FST_ATIM_NOW | FST_MTIM | FST_MTIM_NOW) or (
            fst & FST_ATIM and fst & FST_ATIM_NOW) or (fst & FST_MTIM and fst & FST_MTIM_NOW):
        return None
    now = time.time_ns()
    st = None if fst & (FST_ATIM | FST_ATIM_NOW) and fst & (FST_MTIM | FST_MTIM_NOW) \
        else current()
    atime = atim if fst & FST_ATIM else now if fst & FST_ATIM_NOW else (
        st.st_atime_ns if st else now)
    mtime = mtim if fst & FST_MTIM else now if fst & FST_MTIM_NOW else (
        st.st_mtime_ns if st else now)
    return atime, mtime
