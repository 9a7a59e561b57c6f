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

From the second request on, the server keeps a *spare*: a child forked ahead of need that
does what a worker does before it reads (its engine, its threads, its baseline), then, at a
low CPU priority (SPARE_NICE more, where it may return from it), warms up (worker/group.py,
warm_up), and waits for its socket on a link of its own. A request then hands the spare its
socket (and normal priority) and forks the next spare after answering, so a worker needed now
costs neither the fork (a few milliseconds: page tables, Python's after-fork work) nor that
start-up, and its first group build little more than a used worker's. (Not idle priority for
the warm-up: a busy machine starved it outright. Not a low priority for the start: at load 6
a spare then was often not started when wanted.) An unused spare leaves when the server
does; the coordinator reaps it, or kills it when it closes the server.

Spares forked after a PRELOAD request also deserialize the compiled modules it names while
they wait (the program's, which its new threads load), unless wanted first.

Wire (one request at a time, on the socket FD): the coordinator sends one byte (WORKER) with
the new worker's socket (SCM_RIGHTS), or PRELOAD, the length of a payload (4 bytes,
little-endian) and the payload (newline-separated paths, UTF-8). The server sends records of
8 bytes, two little-endian signed 32-bit numbers (kind, value): WORKER with the pid of the
worker that serves that socket (-errno when the clone failed), the answer; SPARE with the pid
of a spare it forked (after an answer, read with the next one; the coordinator's to reap). A
forked worker costs a millisecond or two of CPU, so unlike a worker started with exec it is
not started at idle priority. End of file on FD (the coordinator closed it, or died): the
server leaves.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import struct
import sys
from collections.abc import Callable
from typing import NoReturn

# clone(2)'s number, and whether the architecture takes (flags, stack, parent_tid, tls,
# child_tid) or (flags, stack, parent_tid, child_tid, tls): with all but flags 0, either.
# (os.uname, not platform: a command line start imports this module, and platform costs ms.)
SYS_CLONE = {"x86_64": 56, "aarch64": 220}.get(os.uname().machine)
CLONE_PARENT = 0x8000
REQUEST_SIZE = 1
RECORD = struct.Struct("<ii")  # (kind, value)
WORKER = 0  # the answer: the pid of the worker that serves the socket sent, or -errno
SPARE = 1  # a spare was forked: its pid
PRELOAD = 1  # a request without an answer: compiled modules for the spares (see below)
SPARE_AFTER = 2  # requests before the server keeps a spare (a program's main worker is one)
SPARE_TOOK = b"\1"  # a spare's answer to the socket it is handed
SPARE_ANSWER_SECONDS = 10.0  # (a spare warms up at nice +10: a busy machine may keep it)
SPARE_NICE = 10


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


class Spare:
    """A worker forked ahead of need (this server's side): its pid and its link."""

    def __init__(self, pid: int, link: socket.socket) -> None:
        self.pid = pid
        self.link = link

    def hand(self, fd: int, lowered: bool) -> bool:
        """Give the spare the socket `fd` it is to serve (and normal priority, to each of its
        threads); False if it is gone. It says it took the socket: a spare killed a moment
        ago may still have a thread ending, which keeps its end of the link open and the
        send succeeding; its end of file then says it is gone. One that does not answer in
        time is killed, never left to serve the socket beside the worker forked instead."""
        try:
            if lowered:
                set_nice(self.pid, os.getpriority(os.PRIO_PROCESS, 0))  # (the server's)
            socket.send_fds(self.link, [b"\0"], [fd])
            self.link.settimeout(SPARE_ANSWER_SECONDS)
            if self.link.recv(1) == SPARE_TOOK:
                return True
        except TimeoutError:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass
        finally:
            self.link.close()
        return False


CAP_SYS_NICE = 23


def can_lower() -> bool:
    """Whether a child of this process may lower its CPU priority and raise it back: raising
    needs CAP_SYS_NICE or an RLIMIT_NICE that allows the nice value. A spare only starts at a
    low priority when it can return to normal priority once it is wanted."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    if soft == resource.RLIM_INFINITY or 20 - os.getpriority(os.PRIO_PROCESS, 0) <= soft:
        return True
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            effective = next(line for line in status if line.startswith("CapEff:"))
        return bool(int(effective.split()[1], 16) >> CAP_SYS_NICE & 1)
    except (OSError, StopIteration, ValueError):
        return False


def set_nice(pid: int, nice: int) -> None:
    """The nice value of every thread of process `pid` (a thread's own on Linux)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return  # gone
    for task in tasks:
        with contextlib.suppress(OSError):  # (a thread ending)
            os.setpriority(os.PRIO_PROCESS, int(task), nice)


def serve(ctrl: socket.socket) -> None:
    """Fork a worker per request until the coordinator closes `ctrl`."""
    # Imported now, so that every child has them (shared copy-on-write) and starts at once.
    from wasmgroup.shared.cpus import short_gil_turns
    from wasmgroup.worker import main as worker_main
    from wasmgroup.worker.group import prepare_link_records

    short_gil_turns()  # (for the workers, forked with it)
    prepared = False
    lowered: bool | None = None  # whether spares start at a low priority (known at the first)
    preload: list[str] = []
    spare: Spare | None = None
    requests = 0
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(ctrl, REQUEST_SIZE, 1)
        except (ConnectionError, OSError):
            return
        if not data:
            return  # the coordinator is gone
        if data[0] == PRELOAD and not fds:
            try:
                preload = _read_exact(ctrl, int.from_bytes(_read_exact(ctrl, 4), "little")
                                      ).decode().split("\n")
            except (ConnectionError, OSError, UnicodeDecodeError):
                return
            continue
        if len(fds) != 1 or data[0] != WORKER:
            for fd in fds:
                os.close(fd)
            return  # not our coordinator's request: stop serving
        requests += 1
        pid = 0
        if spare is not None:
            if spare.hand(fds[0], bool(lowered)):
                pid = spare.pid
            spare = None  # (a dead one: the coordinator reaps it, announced)
        if not pid:
            try:
                pid = _fork_worker(ctrl, fds[0], worker_main)
            except OSError as err:
                pid = -(err.errno or 1)
        os.close(fds[0])
        try:
            ctrl.sendall(RECORD.pack(WORKER, pid))
            if requests >= SPARE_AFTER:
                if lowered is None:  # (after the answer: not on a program's start)
                    lowered = can_lower()
                with contextlib.suppress(OSError):  # (no spare: the next request forks)
                    spare = _fork_spare(ctrl, worker_main, lowered, preload)
                if spare is not None:
                    ctrl.sendall(RECORD.pack(SPARE, spare.pid))
        except OSError:
            return
        if not prepared:  # after the first worker (off the start's path), for the others
            prepared = True
            prepare_link_records()


def _fork_worker(ctrl: socket.socket, fd: int, worker_main: object) -> int:
    gc.freeze()  # the heap so far is never collected in the child: no copy-on-write for it
    pid = fork_sibling()
    if pid == 0:
        _become_worker(ctrl, fd, worker_main)
    return pid


def _read_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the coordinator is gone")
        data += chunk
    return data


def _fork_spare(ctrl: socket.socket, worker_main: object, lowered: bool, preload: list[str]
                ) -> Spare:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    gc.freeze()
    try:
        pid = fork_sibling()
    except OSError:
        ours.close()
        theirs.close()
        raise
    if pid == 0:
        ours.detach()
        _become_spare(ctrl, theirs, worker_main, lowered, preload)
    theirs.close()
    return Spare(pid, ours)


def _leave_after(serve: Callable[[], int]) -> NoReturn:
    """Run a forked child's work to its end and leave with its status, the streams flushed;
    an exception is printed and is status 1. Never returns (os._exit: the server's state,
    copied into the child, is not the child's to tear down)."""
    code = 1
    try:
        code = serve()
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


def _become_spare(ctrl: socket.socket, link: socket.socket, worker_main: object,
                  lowered: bool, preload: list[str]) -> None:
    """In a new spare: do what a worker does before it reads, warm up, wait for the socket
    to serve (end of file: the server is gone, so leave), serve it; never returns."""
    from wasmgroup.worker.group import warm_up

    def serve() -> int:
        ctrl.detach()
        close_other_fds({0, 1, 2, link.fileno()})
        # What any worker does before it reads, at normal priority: the CPU a worker forked
        # when wanted takes, one request earlier (a spare that a busy machine left without
        # it would be no better than that worker).
        worker = worker_main.Worker(None)  # type: ignore[attr-defined]
        worker_main.start_threads(worker)  # type: ignore[attr-defined]
        worker.baseline = worker_main.Baseline()  # type: ignore[attr-defined]

        def wanted() -> bool:
            return bool(select.select([link], [], [], 0)[0])

        # What makes its first group build as cheap as a used worker's: extra work, done at
        # a low priority (this thread; the server raises it when it hands the spare out).
        normal = os.getpriority(os.PRIO_PROCESS, 0)
        if lowered:
            os.setpriority(os.PRIO_PROCESS, 0, min(normal + SPARE_NICE, 19))
        worker.preload(preload, wanted)
        warm_up(worker.engine, wanted)
        _, fds, _, _ = socket.recv_fds(link, REQUEST_SIZE, 1)
        if len(fds) != 1:
            return 0  # the server is gone
        link.sendall(SPARE_TOOK)
        if lowered:  # (the server did, unless it handed the spare out before it was lowered)
            os.setpriority(os.PRIO_PROCESS, 0, normal)
        worker.baseline.replace_fd(link.fileno(), fds[0])
        link.close()
        worker.serve(socket.socket(fileno=fds[0]))
        return 0  # (serve never returns: the worker leaves with os._exit)

    _leave_after(serve)


def _become_worker(ctrl: socket.socket, fd: int, worker_main: object) -> None:
    """In the new child: drop what belongs to the server, then run the worker; never
    returns."""
    def serve() -> int:
        ctrl.detach()
        close_other_fds({0, 1, 2, fd})
        return int(worker_main.main([str(fd)]))  # type: ignore[attr-defined]

    _leave_after(serve)


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
