"""The fork server (zygote): a process that has imported wasmtime and the worker code, and
forks a ready-to-serve worker process on request in about a millisecond.

Either forked from the coordinator right after its imports (`wasmgroup run`), or started as
`python -m wasmgroup.worker.zygote FD` (the Python API). It never compiles, and it has one
thread: forking is safe here. Measured with wasmtime 50 (a child forked from a parent that
had reached each state, then compiling, or deserializing and running, a module): after
`import wasmtime` and after creating an Engine, everything works in the child; once the
parent has compiled a module, a compile in the child hangs (rayon's pool threads are not in
the child) while deserialize + instantiate + call still work. Workers only deserialize, but
the coordinator is multi-threaded once it runs programs, so it is never forked after start.

Each child is created with clone(CLONE_PARENT): a child of the coordinator, not of this
process, so the coordinator reaps it and reads its exit status like any child of its own.
Wire (one request at a time, on the socket FD): the coordinator sends one byte (0) with the
new worker's socket (SCM_RIGHTS); the server answers the pid as 4 bytes, little-endian,
signed (-errno when the clone failed). A forked worker costs a millisecond or two of CPU, so
unlike a worker started with exec it is not started at idle priority. End of file on FD (the
coordinator closed it, or died): the server leaves.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys

# clone(2)'s number, and whether the architecture takes (flags, stack, parent_tid, tls,
# child_tid) or (flags, stack, parent_tid, child_tid, tls): with all but flags 0, either.
# (os.uname, not platform: a command line start imports this module, and platform costs ms.)
SYS_CLONE = {"x86_64": 56, "aarch64": 220}.get(os.uname().machine)
CLONE_PARENT = 0x8000
REQUEST_SIZE = 1


def supported() -> bool:
    return SYS_CLONE is not None and sys.platform == "linux"


def fork_sibling() -> int:
    """fork(), with the new process a child of this one's parent. Python's own before/after
    fork work (import lock, threading state, at-fork hooks) is done as os.fork does it; the
    syscall is made through PyDLL, so the GIL stays held across it."""
    import ctypes  # (in the server, imported already by wasmtime)

    assert SYS_CLONE is not None
    libc = ctypes.PyDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    pid = libc.syscall(ctypes.c_long(SYS_CLONE),
                       ctypes.c_ulong(CLONE_PARENT | signal.SIGCHLD), ctypes.c_void_p(0),
                       ctypes.c_void_p(0), ctypes.c_void_p(0), ctypes.c_void_p(0))
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    error = ctypes.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(error, os.strerror(error))
    return int(pid)


def close_other_fds(keep: set[int]) -> None:
    """Close every descriptor but `keep`: a worker holds its socket and stdio, no other."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):  # the listing's own descriptor, closed already
                os.close(fd)


def serve(ctrl: socket.socket) -> None:
    """Fork a worker per request until the coordinator closes `ctrl`."""
    # Imported now, so that every child has them (shared copy-on-write) and starts at once.
    from wasmgroup.worker import main as worker_main
    from wasmgroup.worker.group import prepare_link_records

    prepared = False
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(ctrl, REQUEST_SIZE, 1)
        except (ConnectionError, OSError):
            return
        if not data:
            return  # the coordinator is gone
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            return  # not our coordinator's request: stop serving
        try:
            pid = fork_sibling()
        except OSError as err:
            os.close(fds[0])
            ctrl.sendall((-(err.errno or 1)).to_bytes(4, "little", signed=True))
            continue
        if pid == 0:
            _become_worker(ctrl, fds[0], worker_main)
        os.close(fds[0])
        try:
            ctrl.sendall(pid.to_bytes(4, "little", signed=True))
        except OSError:
            return
        if not prepared:  # after the first worker (off the start's path), for the others
            prepared = True
            prepare_link_records()


def _become_worker(ctrl: socket.socket, fd: int, worker_main: object) -> None:
    """In the new child: drop what belongs to the server, then run the worker; never
    returns."""
    code = 1
    try:
        ctrl.detach()
        close_other_fds({0, 1, 2, fd})
        code = worker_main.main([str(fd)])  # type: ignore[attr-defined]
    except SystemExit as leave:
        code = leave.code if isinstance(leave.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)


def prepare() -> None:
    """What a server process does first, forked or started: Ctrl-C is the coordinator's
    (SIGINT is blocked by the one that started us; ignoring it discards one pending)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    prepare()
    ctrl = socket.socket(fileno=int(args[0]))
    serve(ctrl)
    # The coordinator waits for this exit: skip the interpreter's teardown.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["fork_sibling", "main", "serve", "supported"]
