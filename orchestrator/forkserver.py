"""The coordinator's side of the fork server (worker/zygote.py): worker processes in about a
millisecond instead of a Python start and a wasmtime import (~60-120 ms) each.

`wasmgroup run` forks the server from itself right after its imports (`fork_early`), before
anything has compiled and while it has one thread; the first worker pool of the process takes
it (`claim_early`). A pool without one starts the server as a fresh process (`start`). The
pool that holds a server closes it with itself: the server leaves when its socket closes, as
it does when the coordinator dies. Its workers are children of the coordinator (clone with
CLONE_PARENT), reaped through `ForkedProcess`, and leave when their own socket closes; so are
its spares (workers forked ahead of need, announced by pid): one not handed out by the time
the server is closed is killed and reaped then.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from wasmgroup.shared.errors import WasmgroupError
from wasmgroup.worker import zygote

if TYPE_CHECKING:  # (subprocess is imported where used: `wasmgroup run` forks before it needs it)
    import subprocess

ZYGOTE_COMMAND = (sys.executable, "-m", "wasmgroup.worker.zygote")
ANSWER_TIMEOUT = 60.0  # seconds: a started server imports wasmtime before it answers
CLOSE_GRACE = 1.0  # seconds the server gets to leave once its socket is closed


class ForkServerError(WasmgroupError):
    """The fork server could not start a worker (the message says why)."""


class ForkedProcess:
    """A worker forked by the server: a child of this process, with the subset of
    subprocess.Popen that WorkerProcess uses (pid, returncode, poll, wait, kill)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is None:
                try:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:  # reaped by someone else: nothing to tell
                    pid, status = self.pid, 0
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.0002
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                import subprocess

                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            time.sleep(pause)
            pause = min(pause * 2, 0.01)
        return code

    def kill(self) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


class ForkServer:
    def __init__(self, sock: socket.socket, process: subprocess.Popen[bytes] | ForkedProcess
                 ) -> None:
        self.sock = sock
        self.process = process
        self.pid = process.pid
        self._lock = threading.Lock()
        self.broken: str | None = None  # why spawn fails from now on
        self.closed = False
        self.spares: set[int] = set()  # spares announced and not handed out yet
        self._preload: tuple[str, ...] = ()  # compiled modules for spares to deserialize
        self._preload_sent: tuple[str, ...] = ()

    @classmethod
    def start(cls) -> ForkServer | None:
        """A server in a fresh process (None where clone is not available)."""
        import subprocess

        if not zygote.supported():
            return None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # As for workers (workers.py): SIGINT blocked until the server ignores it.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process = subprocess.Popen([*ZYGOTE_COMMAND, str(theirs.fileno())],
                                       pass_fds=[theirs.fileno()], close_fds=True)
        except OSError as err:
            ours.close()
            import logging  # (not before the early fork: the server needs none)

            logging.getLogger("wasmgroup").info("no fork server: %s", err)
            return None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            theirs.close()
        return cls(ours, process)

    @classmethod
    def fork_here(cls) -> ForkServer | None:
        """A server forked from this process, which must have one thread and must not have
        compiled anything yet (see worker/zygote.py); None when that cannot be."""
        if not zygote.supported() or threading.active_count() != 1:
            return None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            ours.close()
            theirs.close()
            return None
        if pid == 0:  # the server: never returns
            code = 0
            try:
                ours.detach()
                zygote.close_other_fds({0, 1, 2, theirs.fileno()})
                zygote.prepare()
                zygote.serve(theirs)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        theirs.close()
        return cls(ours, ForkedProcess(pid))

    def spawn(self, worker_sock: socket.socket) -> int:
        """Fork a worker that serves `worker_sock` (the caller closes its copy); its pid."""
        with self._lock:
            if self.broken is not None:
                raise ForkServerError(self.broken)
            try:
                if self._preload != self._preload_sent:  # before the spare it is for is forked
                    payload = "\n".join(self._preload).encode()
                    self.sock.sendall(bytes([zygote.PRELOAD])
                                      + len(payload).to_bytes(4, "little") + payload)
                    self._preload_sent = self._preload
                socket.send_fds(self.sock, [bytes([zygote.WORKER])], [worker_sock.fileno()])
                self.sock.settimeout(ANSWER_TIMEOUT)
                while True:
                    record = self._record()
                    if record is None:
                        raise ConnectionError("the fork server left")
                    kind, pid = record
                    if kind == zygote.WORKER:
                        break
                    self.spares.add(pid)
            except OSError as err:
                self.broken = f"fork server {self.pid}: {err or 'no answer'}"
                raise ForkServerError(self.broken) from None
            self.spares.discard(pid)  # (a spare handed out: a worker now)
        if pid < 0:
            raise ForkServerError(f"fork server {self.pid}: cannot fork: {os.strerror(-pid)}")
        return pid

    def preload(self, artefacts: Iterable[str]) -> None:
        """Compiled modules (paths) that the spares forked after the next request deserialize
        while they wait: what the program's new threads load. Sent with that request."""
        self._preload = tuple(artefacts)

    def _record(self) -> tuple[int, int] | None:
        """The server's next record (kind, value), or None at end of file."""
        data = b""
        while len(data) < zygote.RECORD.size:
            chunk = self.sock.recv(zygote.RECORD.size - len(data))
            if not chunk:
                return None
            data += chunk
        kind, value = zygote.RECORD.unpack(data)
        return kind, value

    def close(self) -> None:
        """The server leaves (its socket closed); reaped, or killed after a grace period;
        its spare, if any, killed and reaped. Waits for a spawn under way: the worker it
        forks is then its caller's to stop."""
        import subprocess

        spares: list[ForkedProcess] = []
        with self._lock:
            self.closed = True
            self.broken = self.broken or "the fork server is closed"
            spares += _end_spares(self.spares)  # (first: they end while the server does)
            with contextlib.suppress(OSError):
                # End of file for the server, which leaves; a spare it announced meanwhile
                # is read here.
                self.sock.shutdown(socket.SHUT_WR)
                self.sock.settimeout(CLOSE_GRACE)
                while (record := self._record()) is not None:
                    if record[0] == zygote.SPARE:
                        spares += _end_spares({record[1]})
            with contextlib.suppress(OSError):
                self.sock.close()
            self.spares.clear()
        for spare in spares:
            spare.wait()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=CLOSE_GRACE)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _end_spares(pids: set[int]) -> list[ForkedProcess]:
    """Kill spares (they wait for a socket: nothing of theirs is worth keeping); the caller
    reaps them. At a low priority, a killed process may wait for a CPU to end on: they get
    normal priority first."""
    spares = [ForkedProcess(pid) for pid in pids]
    for spare in spares:
        zygote.set_nice(spare.pid, os.getpriority(os.PRIO_PROCESS, 0))
        spare.kill()
    return spares


_early: ForkServer | None = None


# What a worker and the coordinator both import (the rest of each side's modules are its
# own): imported once, before the fork, rather than by both processes after it.
COMMON_MODULES = ("queue", "wasmgroup.shared.plan", "wasmgroup.shared.protocol",
                  "wasmgroup.shared.memory", "wasmgroup.shared.pathcalls",
                  "wasmgroup.shared.closure", "wasmgroup.shared.hostabi", "wasmgroup.shared.cpus")


def fork_early() -> None:
    """For a command line run: fork the server now, while this process is still fit to be
    forked (one thread, wasmtime untouched), unless it was already; the first worker pool
    takes it. The modules both sides import are imported first, once for both; the server
    then imports wasmtime and the worker's modules while this process imports its own and
    links the program (orchestrator/launch.py)."""
    global _early
    if _early is None:
        for name in COMMON_MODULES:
            importlib.import_module(name)
        _early = ForkServer.fork_here()


def claim_early() -> ForkServer | None:
    """The server `fork_early` made, once: its taker owns (and closes) it."""
    global _early
    server, _early = _early, None
    return server


__all__ = ["ForkServer", "ForkServerError", "ForkedProcess", "claim_early", "fork_early"]
