"""Worker processes, as the coordinator sees them, and the warm pool that keeps them ready.

A `WorkerProcess` is one worker child and its socket: forked by the pool's fork server
(orchestrator/forkserver.py) when it has one, else `python -m wasmgroup.worker` (started with
exec, never a fork of this wasmtime-using process). Its reader thread validates every frame:
acks complete `OperationFuture`s (a broadcast's waiter wakes once, on the last: `AckCount`);
quick requests are answered on it; a link operation is served on it too when the topology
lock is free (it then reads its own worker's frames while it waits for that group's ack:
`pump`), else, like every other request, on a request thread of the worker's own, so that a
long request (a dlopen waiting on a barrier) never stops acks from being read; `assigned`
and `exited` go to the `WorkerListener`. A worker that dies, closes its socket or breaks
the protocol is reported to the listener once (`worker_lost`), and every future it still
owed completes as `gone`.

`WorkerPool` starts `size` workers ahead of need, hands them out (`take`), takes them back
when their thread ends (`give_back`), and stops them all (`close`): at close no child process,
zombie or socket is left. A worker given back is reset first (it drops everything of the
program it served and checks that nothing is left: worker/main.py) and is handed out again
only once it said it is clean; one that is not, or does not answer, is retired. So a pool can
outlive programs: a Runtime's programs share one.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from wasmgroup.orchestrator import forkserver
from wasmgroup.orchestrator.descriptors import REQUESTS as DESCRIPTOR_REQUESTS
from wasmgroup.orchestrator.forkserver import ForkedProcess, ForkServer, ForkServerError
from wasmgroup.shared import protocol
from wasmgroup.shared.errors import WasmgroupError
from wasmgroup.shared.records import field, record

# Requests answered at once on the reader thread: they never wait on another group, and a
# group applying a broadcast operation inside a long request (its dlopen or spawn waiting on
# the topology lock) makes them nested in that request, so they must not queue behind it.
IMMEDIATE_CALLS = frozenset({"grow", "tls_arena", "cwd", "chdir", "is_side_module",
                             *DESCRIPTOR_REQUESTS})
# Link operations and spawns are served on the reader thread too, when the topology lock is
# free (one thread hand-over fewer each way): while it waits for its own group's ack it reads
# the socket itself (`pump`); when serving would wait (the lock is held; a spawn under
# --verify-groups), the listener raises ServeElsewhere and the request goes to the request
# thread, so that no reader ever blocks on another group.
READER_CALLS = frozenset({"dlopen", "dlsym", "resolve_stub", "closure_allocate",
                          "closure_prepare", "closure_free", "spawn"})
READY_TIMEOUT = 60.0  # seconds for a new worker to import wasmtime and create its engine
log = logging.getLogger("wasmgroup")
SHUTDOWN_GRACE = 2.0  # seconds a worker gets to leave on its own before it is killed
READY_SLICE = 0.05  # seconds between checks for a cancelled wait for a worker
RESET_TIMEOUT = 5.0  # seconds an idle worker gets to answer a reset before it is retired
RESET_WAIT = 1.0  # seconds take() waits for a reset under way rather than start a worker
READ_SLICE = 0.05  # seconds between checks for a stopping program while a request pumps


class WorkerStartError(WasmgroupError):
    """A worker process could not be started (the message says why)."""


class WorkerListener(Protocol):
    def worker_message(self, worker: WorkerProcess, message: dict[str, Any]) -> None: ...
    def worker_call(self, worker: WorkerProcess, name: str, args: list[Any]) -> Any: ...
    def worker_lost(self, worker: WorkerProcess, reason: str) -> None: ...


class CallFailed(Exception):
    """A request the coordinator refuses; the text reaches the guest (dlerror)."""


class CallStopped(Exception):
    """The program is ending: the requesting guest thread must stop."""


class ServeElsewhere(Exception):
    """Raised by the listener for a request on a reader thread that would have to wait for
    another request: it is served on the worker's request thread instead."""


_READING = threading.local()  # .worker: the worker whose reader thread this is


@record(frozen=False)
class WithDescriptor:
    """A request's answer with an OS descriptor that travels beside it (SCM_RIGHTS); the
    descriptor is the answer's to close once sent."""

    value: Any
    fd: int


class AckCount:
    """The acks one broadcast still waits for: the reader thread that completes the last
    sets `done`, so the waiting thread wakes once, not once per group."""

    def __init__(self, count: int) -> None:
        self._left = count
        self._lock = threading.Lock()
        self.done = threading.Event()
        if count <= 0:
            self.done.set()

    def one_done(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self.done.set()


@record(frozen=False)
class OperationFuture:
    """One link operation posted to one worker, completed by its ack."""

    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    seconds: float = 0.0
    state: list[Any] | None = None
    gone: bool = False  # the group ended (or the worker died) before applying it
    count: AckCount | None = None  # the broadcast it belongs to, told when it completes

    def complete(self) -> None:
        self.done.set()
        if self.count is not None:
            self.count.one_done()


# What a worker that aborted most likely met. wasmtime (50) registers a shared memory once more
# for every instance that imports it, and an out-of-bounds access then finds the faulting
# address in more than one memory and aborts the process (store.rs: `assert!(fault.is_none())`)
# instead of trapping, once a side module shares the memory: README, "Not yet".
WASMTIME_ABORT = ("an abort in native code, whose message is above: wasmtime aborts on an "
                  "out-of-bounds memory access once a side module shares the memory, where "
                  "it would trap")


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode == -signal.SIGABRT:
        return f"killed by SIGABRT ({WASMTIME_ABORT})"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


WORKER_COMMAND = (sys.executable, "-m", "wasmgroup.worker")
_ANY = object()  # send(): to whoever holds the worker


class WorkerProcess:
    def __init__(self, command: Sequence[str] = WORKER_COMMAND, background: bool = False,
                 fork_server: ForkServer | None = None) -> None:
        """Fork a worker from `fork_server`, or (without one, or when it fails) start
        `command` with one more argument: the number of its socket's descriptor. A
        `background` worker started so starts at idle CPU priority (worker/__main__.py)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.process: subprocess.Popen[bytes] | ForkedProcess
        if fork_server is not None:
            try:
                self.process = ForkedProcess(fork_server.spawn(theirs))
            except ForkServerError as err:
                if fork_server.closed:
                    ours.close()
                    theirs.close()
                    raise WorkerStartError("the worker pool is closed") from None
                log.warning("%s; starting workers without it", err)
                fork_server = None
            else:
                theirs.close()
        if fork_server is None:
            self.process = self._start(command, background, ours, theirs)
        self.sock = ours
        self.pid = self.process.pid
        self.thread_id = 0  # the wasm thread it hosts, once assigned
        self.listener: WorkerListener | None = None
        self._send_lock = threading.Lock()
        self._ready = threading.Event()
        self._ids = itertools.count(1)
        self._futures: dict[int, OperationFuture] = {}
        self._futures_lock = threading.Lock()
        self._requests: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self.lost: str | None = None  # why the worker is gone, once it is
        self._read_ended = False  # the connection ended while a request pumped frames
        self._readable: select.poll | None = None  # for `pump`: is a frame there?
        self._busy = False  # a request of this worker is being served
        self._closing = False
        # Told when a reset is answered (clean or not, with the problem) and when the worker
        # is lost: the pool that owns it.
        self.on_clean: Callable[[WorkerProcess, bool, str | None], None] | None = None
        self.resets = 0  # programs (or threads) this worker served and was reset after
        self.reset_at = 0.0  # time.monotonic() of the last reset
        # The request thread is started by the reader at the first request that needs it:
        # Thread.start() waits until the new thread runs, a wait (a millisecond or more on a
        # busy machine) a worker's start, on a cold spawn's path, need not make.
        self._request_thread: threading.Thread | None = None
        threading.Thread(target=self._read, name=f"wasmgroup-read-{self.pid}",
                         daemon=True).start()

    @staticmethod
    def _start(command: Sequence[str], background: bool, ours: socket.socket,
               theirs: socket.socket) -> subprocess.Popen[bytes]:
        env = {**os.environ, "WASMGROUP_WORKER_BACKGROUND": "1" if background else "0"}
        # Ctrl-C reaches the whole foreground process group: the child starts with SIGINT
        # blocked (the mask of this thread survives fork and exec) until it ignores it
        # (worker/__main__.py), so no worker is ever interrupted, even mid-import.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            return subprocess.Popen(
                [*command, str(theirs.fileno())], pass_fds=[theirs.fileno()], close_fds=True,
                env=env)
        except OSError as err:
            ours.close()
            raise WorkerStartError(f"cannot start a worker process: {err}") from None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            theirs.close()

    # ------------------------------------------------------------------ sending
    def send(self, kind: str, fds: list[int] | None = None, lease: object = _ANY,
             **fields: Any) -> None:
        """Send a frame; with `lease`, only while that listener still holds the worker."""
        frame = protocol.encode(kind, **fields)
        # A lost connection is noticed and reported by the reader.
        with self._send_lock, contextlib.suppress(protocol.ConnectionClosed, OSError):
            if lease is _ANY or self.listener is lease:
                protocol.send(self.sock, frame, fds)

    def post(self, op: dict[str, Any] | bytes, initialise: bool = False,
             count: AckCount | None = None) -> OperationFuture:
        """Send a link operation (a dict, or bytes `protocol.pack_op` made of it once for
        a broadcast); its ack completes the future (and counts down `count`)."""
        future = OperationFuture(count=count)
        packed = op if isinstance(op, bytes) else protocol.pack_op(op)
        with self._futures_lock:
            if self.lost is not None:
                future.gone = True
                future.complete()
                return future
            op_id = next(self._ids)
            self._futures[op_id] = future
        frame = protocol.encode_op(op_id, packed, initialise)
        with self._send_lock, contextlib.suppress(protocol.ConnectionClosed, OSError):
            protocol.send(self.sock, frame)  # a lost connection is noticed by the reader
        return future

    def wait_ready(self, timeout: float = READY_TIMEOUT,
                   cancelled: Callable[[], bool] | None = None) -> None:
        """Until the worker has said `ready`; raises WorkerStartError if it does not (killed
        then), or at once when `cancelled()` turns true (the worker is left as it is)."""
        deadline = time.monotonic() + timeout
        while not self._ready.wait(min(READY_SLICE, max(0.0, deadline - time.monotonic()))):
            if cancelled is not None and cancelled():
                raise WorkerStartError("the program is ending")
            if time.monotonic() >= deadline:
                break
        if not self._ready.is_set() or self.lost is not None:
            reason = self.lost or f"no answer within {timeout:.0f} s"
            self.kill()
            raise WorkerStartError(f"worker process {self.pid} did not start: {reason}")

    # ------------------------------------------------------------------ reading
    @staticmethod
    def reading_here() -> WorkerProcess | None:
        """The worker whose reader thread the caller runs on, if any."""
        worker: WorkerProcess | None = getattr(_READING, "worker", None)
        return worker

    def _read(self) -> None:
        _READING.worker = self
        reason = self._receive(None, None)
        if not self._read_ended:  # else a request pumping frames saw the end, and said so
            self._end(reason or "closed its connection")

    def pump(self, until: threading.Event, stopping: Callable[[], bool]) -> None:
        """On this worker's reader thread, serving one of its requests: read and handle its
        frames until `until` is set (its ack came), the connection ends, or `stopping()`."""
        reason = self._receive(until, stopping)
        if reason is not None and not self._read_ended:
            self._read_ended = True
            self._end(reason)

    def _receive(self, until: threading.Event | None, stopping: Callable[[], bool] | None
                 ) -> str | None:
        """Read and dispatch frames (until `until` is set, if given); why the connection
        ended, or None."""
        try:
            while not self._read_ended:
                if until is not None:
                    if until.is_set() or (stopping is not None and stopping()):
                        return None
                    if self._readable is None:  # (poll, not select: the socket's number
                        self._readable = select.poll()  # may be past FD_SETSIZE's 1024)
                        self._readable.register(self.sock, select.POLLIN)
                    if not self._readable.poll(READ_SLICE * 1000):
                        continue
                self._dispatch(protocol.receive(self.sock))
        except protocol.ConnectionClosed:
            return "closed its connection"
        except protocol.ProtocolError as err:
            return f"broke the protocol: {err}"
        except (OSError, ValueError) as err:  # ValueError: a closed socket
            return f"connection failed: {err}"
        return None

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["t"]
        if kind == "ready":
            self._ready.set()
        elif kind == "ack":
            self._complete(message)
        elif kind == "call" and message["name"] in IMMEDIATE_CALLS:
            self._answer(message)
        elif kind == "call" and self._busy:
            # Made while the worker's own request is under way (a constructor's dlsym
            # during its dlopen): answered beside it, or neither could finish.
            threading.Thread(target=self._answer, args=(message,), daemon=True).start()
        elif kind == "call" and message["name"] in READER_CALLS:
            self._busy = True
            try:
                if not self._answer(message, inline=True):
                    self._queue_request(message)  # the request thread clears _busy
                    return
            except BaseException:
                self._busy = False
                raise
            self._busy = False
        elif kind == "call":
            self._busy = True
            self._queue_request(message)
        elif kind in ("assigned", "exited") and self.listener is not None:
            self.listener.worker_message(self, message)
        elif kind == "clean" and self.on_clean is not None:
            self.on_clean(self, message["ok"], message["problem"])
        else:
            raise protocol.ProtocolError(f"unexpected message {kind!r} from worker "
                                         f"{self.pid}")

    def _queue_request(self, message: dict[str, Any]) -> None:
        """For the request thread (started at the first request that needs it)."""
        if self._request_thread is None:
            self._request_thread = threading.Thread(
                target=self._serve_requests, name=f"wasmgroup-req-{self.pid}", daemon=True)
            self._request_thread.start()
        self._requests.put(message)

    def _end(self, reason: str) -> None:
        if not self._closing:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=1.0)
            if self.process.returncode is not None:
                reason = describe_exit(self.process.returncode)
        self._lose(reason)

    def _complete(self, message: dict[str, Any]) -> None:
        with self._futures_lock:
            future = self._futures.pop(message["id"], None)
        if future is None:
            raise protocol.ProtocolError(f"ack for unknown operation {message['id']}")
        future.error, future.seconds = message["error"], message["seconds"]
        future.state, future.gone = message["state"], message["gone"]
        future.complete()

    def _lose(self, reason: str) -> None:
        with self._futures_lock:
            self.lost = reason
            futures, self._futures = self._futures, {}
        for future in futures.values():
            future.gone = True
            future.complete()
        self._ready.set()
        self._requests.put(None)
        listener = self.listener
        if listener is not None and not self._closing:
            listener.worker_lost(self, reason)
        on_clean = self.on_clean
        if on_clean is not None and not self._closing:
            on_clean(self, False, reason)

    def _serve_requests(self) -> None:
        while True:
            message = self._requests.get()
            if message is None:
                return
            try:
                self._answer(message)
            finally:
                self._busy = False

    def _answer(self, message: dict[str, Any], inline: bool = False) -> bool:
        """Serve one request and always reply (the listener turns every failure into
        CallFailed or CallStopped), unless the worker went back to a pool meanwhile (the
        reply then belongs to no one: its thread is gone); a lost connection is the reader's
        to notice. `inline` (on the reader thread): only if the listener does not say it
        must be served elsewhere; whether it was served."""
        listener = self.listener
        fds: list[int] = []
        try:
            if listener is None:
                raise CallFailed("this worker hosts no thread")
            try:
                value = listener.worker_call(self, message["name"], message["args"])
            except ServeElsewhere:
                if inline:
                    return False
                raise CallFailed("internal error: a request bounced twice") from None
            if isinstance(value, WithDescriptor):
                value, fds = value.value, [value.fd]
            reply: dict[str, Any] = {"ok": True, "value": value, "error": None}
        except CallFailed as err:
            reply = {"ok": False, "value": None, "error": str(err)}
        except CallStopped:
            reply = {"ok": False, "value": None, "error": None}
        try:
            self.send("reply", fds=fds, lease=listener, id=message["id"], **reply)
        except (protocol.ProtocolError, OverflowError, TypeError, ValueError) as err:
            # A value the wire cannot carry: the guest gets a failure, not silence.
            self.send("reply", lease=listener, id=message["id"], ok=False, value=None,
                      error=f"cannot reply: {err}")
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        return True

    # ------------------------------------------------------------------ ending
    def kill(self) -> None:
        self._closing = True
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait()
        with contextlib.suppress(OSError):
            self.sock.close()

    def reset(self) -> None:
        """Ask the worker (done with its program: its thread exited, or it never ran one) to
        forget the program; it answers `clean` (to `on_clean`). Frames already sent reach it
        first, so nothing of the old program arrives after the reset."""
        with self._send_lock:  # no reply of the old program's goes out after this
            self.listener = None
        self.thread_id = 0
        self._ready.clear()
        self.resets += 1
        self.send("reset")

    def shutdown(self) -> None:
        """Ask the worker to leave; kill it if it has not within the grace period."""
        self._closing = True
        self.send("shutdown")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=SHUTDOWN_GRACE)
        self.kill()


class WorkerPool:
    """Idle workers kept ready (interpreter started, wasmtime imported, engine created), so a
    new wasm thread does not wait for a Python start. `size` are started ahead of need and
    topped up as they are taken; up to `keep` (default twice `size`) idle ones are kept
    when given back. Workers are forked by the pool's fork server: the one `wasmgroup run`
    forked early, else one started now (`fork_server=False`: none, every worker a Python
    start of its own, those started ahead of need at idle CPU priority)."""

    def __init__(self, size: int, keep: int | None = None, urgent: int = 0,
                 fork_server: bool = True) -> None:
        self.size = max(size, 0)
        self.keep = 2 * self.size if keep is None else keep
        self._idle: list[WorkerProcess] = []
        self._all: list[WorkerProcess] = []
        self._lock = threading.Lock()
        self._cleaned_now = threading.Condition(self._lock)  # a reset was answered
        self._starting = 0  # workers being started now (close waits for them)
        self._settled = threading.Condition(self._lock)
        self._closed = False
        self.started = 0  # worker processes this pool started (the Runtime's tests read it)
        self.reused = 0  # workers handed out again after a reset (the Runtime's tests read it)
        self.fork_server = (forkserver.claim_early() or ForkServer.start()) if fork_server \
            else None
        if self.size:
            # From a thread: a fork server started just now answers once it has imported
            # wasmtime, and the caller has its own start-up to get on with meanwhile.
            threading.Thread(target=self._fill, args=(urgent,), name="wasmgroup-pool-fill",
                             daemon=True).start()

    def _fill(self, urgent: int) -> None:
        # The first `urgent` are wanted at once (a Runtime's first programs): at normal
        # priority, so a busy machine cannot starve them.
        for started in range(self.size):
            with self._lock:
                if self._closed or len(self._idle) >= self.size:
                    return
            try:
                self._start_one(background=started >= urgent)
            except (WorkerStartError, OSError):
                return

    def _start_one(self, background: bool = False) -> WorkerProcess:
        with self._lock:
            if self._closed:
                raise WorkerStartError("the worker pool is closed")
            self._starting += 1
        try:
            server = self.fork_server
            # Once the server has failed (said once, by WorkerProcess): started with exec.
            worker = WorkerProcess(background=background,
                                   fork_server=server if server and not server.broken else None)
            worker.on_clean = self._cleaned
            log.info("worker %d started (%s)", worker.pid, "idle, in the pool" if background
                     else "needed now")
            with self._lock:
                closed = self._closed
                if not closed:
                    self.started += 1
                    self._all.append(worker)
                    # First in the idle list, so handed out last: a worker given back (its
                    # modules deserialized) goes before one a top-up started meanwhile.
                    self._idle.insert(0, worker)
            if closed:  # a background top-up that lost the race with close()
                worker.kill()
                raise WorkerStartError("the worker pool is closed")
            return worker
        finally:
            with self._lock:
                self._starting -= 1
                self._settled.notify_all()

    def take(self, cancelled: Callable[[], bool] | None = None) -> WorkerProcess:
        """A ready worker: an idle one if one is ready, else a new one started now at normal
        priority (workers still starting in the background stay in the pool). Gives up
        (WorkerStartError) when `cancelled()` turns true; close() stops that worker. A worker
        just forked is not waited for: it reads what it is sent once ready, a millisecond
        later, and one that dies first is reported lost like any other."""
        worker = self.take_ready() or self._take_reset()
        if worker is None:
            worker = self._start_one()
            with self._lock:
                self._idle.remove(worker)
            if isinstance(worker.process, ForkedProcess):
                return worker
        worker.wait_ready(cancelled=cancelled)
        return worker

    def has_ready(self) -> bool:
        """Whether an idle worker is ready now."""
        with self._lock:
            return any(w._ready.is_set() and w.lost is None for w in self._idle)

    def _take_reset(self) -> WorkerProcess | None:
        """A worker given back moments ago, once its reset is answered (a millisecond or
        so: far sooner than a new worker starts); None if none is being reset."""
        deadline = time.monotonic() + RESET_WAIT
        with self._cleaned_now:
            while True:
                # Done as soon as any worker is ready (one whose reset was just answered),
                # not once every reset is: in a busy Runtime some reset is always under way.
                if any(w._ready.is_set() and w.lost is None for w in self._idle):
                    break
                resetting = [w for w in self._idle if w.resets and not w._ready.is_set()
                             and w.lost is None]
                if not resetting:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cleaned_now.wait(remaining):
                    break
        return self.take_ready()

    def take_ready(self) -> WorkerProcess | None:
        """An idle worker that is ready now, or None (never waits)."""
        now = time.monotonic()
        with self._lock:
            ready = [w for w in self._idle if w._ready.is_set() and w.lost is None]
            # A reset that goes unanswered: the worker is stuck, not idle.
            stuck = [w for w in self._idle if w.resets and not w._ready.is_set()
                     and now - w.reset_at > RESET_TIMEOUT]
            for worker in stuck:
                self._idle.remove(worker)
            if ready:
                self._idle.remove(ready[-1])
                self.reused += ready[-1].resets > 0
            short = len(self._idle) < self.size
        for worker in stuck:
            log.info("worker %d did not answer its reset: retired", worker.pid)
            threading.Thread(target=self._retire, args=(worker,), daemon=True).start()
        if short:
            threading.Thread(target=self._top_up, daemon=True).start()
        return ready[-1] if ready else None

    def _top_up(self) -> None:
        with self._lock:
            if self._closed or len(self._idle) >= self.size:
                return
        with contextlib.suppress(WorkerStartError, OSError):
            self._start_one(background=True)

    def give_back(self, worker: WorkerProcess) -> None:
        """A worker done with its thread (exited, or never run): reset and idle again (up to
        `keep` of them, so that a program spawning and joining threads in turn, or one
        program after another, reuses the same few workers), unless the pool is closed."""
        worker.listener = None
        with self._lock:
            keep = not self._closed and worker.lost is None and len(self._idle) < self.keep \
                and worker in self._all
            if keep:
                worker.reset_at = time.monotonic()
                self._idle.append(worker)
                worker.reset()
        if not keep:
            self._retire(worker)

    def _cleaned(self, worker: WorkerProcess, ok: bool, problem: str | None) -> None:
        """A worker answered its reset, or was lost."""
        if ok:
            worker._ready.set()
            with self._cleaned_now:
                self._cleaned_now.notify_all()
            return
        if worker.lost is None:
            log.info("worker %d retired: %s", worker.pid, problem)
        with self._lock:
            if worker in self._idle:
                self._idle.remove(worker)
            self._cleaned_now.notify_all()  # a waiter stops waiting for this one
        self._retire(worker)
        self._top_up()

    def discard(self, worker: WorkerProcess) -> None:
        """A worker that must not be reused (stuck in a program's guest code): killed now."""
        worker.listener = None
        worker.kill()
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)
            if worker in self._idle:
                self._idle.remove(worker)

    def idle_pids(self, ready: bool = False) -> list[int]:
        """The idle workers' pids, in the order they are handed out last to first (only
        those ready now, with `ready`: reset and clean)."""
        with self._lock:
            return [w.pid for w in self._idle if w._ready.is_set() or not ready]

    def _retire(self, worker: WorkerProcess) -> None:
        worker.shutdown()
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)

    def close(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Ask every worker to leave; kill those still there after `grace` seconds."""
        with self._lock:
            self._closed = True
            workers, self._all, self._idle = list(self._all), [], []
        for worker in workers:
            worker._closing = True
            worker.send("shutdown")
        with self._lock:  # a start under way ends by killing its worker
            self._settled.wait_for(lambda: self._starting == 0)
        if self.fork_server is not None:
            self.fork_server.close()
        deadline = time.monotonic() + grace  # one grace period for all of them
        for worker in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            worker.kill()


__all__ = [
    "AckCount",
    "CallFailed",
    "CallStopped",
    "OperationFuture",
    "ServeElsewhere",
    "WithDescriptor",
    "WorkerPool",
    "WorkerProcess",
    "WorkerStartError",
    "describe_exit",
]
