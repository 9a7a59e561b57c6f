"""A worker process: hosts one instance group at a time for the coordinator.

Started by the coordinator as `python -m wasmgroup.worker FD` (a fresh interpreter, never a
fork of a process that has used wasmtime), with FD one end of a Unix socket pair. It creates
its engine, says `ready`, then serves assignments until told to shut down or the coordinator
goes away: its socket closes (as it does when the coordinator dies), and the reader thread
ends the process. (Not the kernel's parent-death signal: that follows the thread that started
the worker, and the pool starts workers from short-lived threads.)

Threads of this process: two take turns (leader/follower) at two roles, and a third ticks.
- The reader reads every frame: operations are queued on the group (and the epoch ticked, and
  a futex sleeper woken, so that they are applied at the next safe point; one that only
  changes table slots, reaching a thread parked at a safe point, is acknowledged at once
  instead and the sleeper left asleep: it applies it before it runs guest code again),
  everything else is the group's work.
- The group's work (apply an assignment, run the entry point, apply link operations while
  idle, reset) is done by one thread at a time, the *working* thread; while it waits inside a
  host call for the coordinator's answer, the reader hands it frames through the inbox and it
  applies link operations meanwhile.
- When the group is idle, nobody works: a frame with work for it is done by the thread that
  read it, which first hands the reader role to the other thread (a wake-up that runs beside
  the work, not before it). So a `run` sent to an idle worker starts guest code on the thread
  that received it, without waiting for another thread to be scheduled (that hand-over cost
  a millisecond or more on a busy machine); done, the thread waits to read again. The main
  thread reads first, once it has taken the baseline (below).
- A thread's group stays after its entry returns or calls pthread_exit (what is broadcast
  meanwhile is held) until the coordinator resets the worker or keeps the group as a standby
  group for a later thread (`rearm`: its side modules' TLS set up again).
- The ticker thread ticks the engine's epoch while operations wait or the program is stopping,
  so that a thread spinning in guest code reaches a safe point (not for a working thread
  that waits at a safe point already: its inbox, or a futex wait, which applies what was
  posted before it returns to guest code).

A worker outlives the programs it serves (a Runtime's pool): after each program the
coordinator sends `reset`, and the worker drops everything of that program (its group: store,
instances, table, memory mapping, cached descriptors, argv and environment; the compiled
modules' names) and compares itself with how it was when it said `ready` (`Baseline`): open
descriptors, mappings of a program's memfds, threads, working directory, environment, private
memory. It answers `clean`; a worker that is not clean is retired, never reused. Compiled
modules stay loaded, keyed by their artefact (content-addressed by the coordinator's cache), so
the next program of the same module deserializes nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import wasmtime

from wasmgroup.shared import protocol
from wasmgroup.shared.cpus import short_gil_turns
from wasmgroup.shared.engine import make_engine_config
from wasmgroup.shared.errors import LinkError, UnsupportedCall, one_line
from wasmgroup.shared.fdtable import GenerationPage
from wasmgroup.shared.memory import SharedRegion
from wasmgroup.shared.plan import (
    ClosurePlan,
    LoadPlan,
    SlotAssignment,
    SymbolAddress,
    TableGrowth,
    from_wire,
    state_to_wire,
)
from wasmgroup.shared.wasm import FuncType
from wasmgroup.worker import perturb
from wasmgroup.worker.epoch import STOP_MESSAGE
from wasmgroup.worker.group import (
    WASM_ERRORS,
    CompiledModule,
    DescribeRequest,
    InstanceGroup,
    PendingOperation,
    PurgeDescriptors,
)
from wasmgroup.worker.host import poll
from wasmgroup.worker.host.descriptors import DescriptorCache
from wasmgroup.worker.host.signals import GuestSignal
from wasmgroup.worker.host.wasix import GuestExit, ProgramStopping, ThreadExit

TICK_SECONDS = 0.005
MAX_LOADED_MODULES = 64  # compiled modules kept between programs (least recently used go)
# Private memory a worker may keep beyond its size at `ready` between programs (Python's heap
# and wasmtime's caches grow a little); more, and the worker is retired rather than reused.
RESET_SLACK_BYTES = 64 << 20
PROGRAM_MEMFDS = ("memfd:wasmgroup-memory", "memfd:wasmgroup-descriptors")
EARLY_REPLY: dict[str, Any] = {"t": "early"}  # next_message: look at the replies set aside
IDLE_WORK = frozenset({"run", "rearm", "reset"})  # frames only an idle group's loop takes
# Operations that only change table slots (nothing fails there that planning did not rule
# out, no guest code runs): a group parked at a safe point acknowledges them when posted.
TABLE_ONLY_OPS = (SlotAssignment, TableGrowth)
MAIN_STACK_BYTES = 8 << 20  # the stack of either thread that may run guest code


def private_resident_bytes() -> int:
    """This process's resident memory that is not shared (RssAnon): from /proc/self/statm."""
    with open("/proc/self/statm", "rb") as f:
        fields = f.read().split()
    return (int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> set[int]:
    """This process's open descriptors (not the one the listing itself used)."""
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            os.fstat(int(name))
            fds.add(int(name))
    return fds


class Baseline:
    """How this worker looked with no program in it, to check that a program left nothing."""

    def __init__(self) -> None:
        poll.wake_fd()  # created once and kept for every group (host/poll.py)
        self.fds = open_fds()
        self.threads = threading.active_count()
        self.cwd = os.getcwd()
        self.environ = dict(os.environ)
        self.private = private_resident_bytes()

    def problem(self) -> str | None:
        """What a program left behind, or None."""
        extra = {}
        for fd in open_fds() - self.fds:
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                # A compiled module kept loaded (wasmtime maps its file) is no program's.
                if not target.endswith(".cwasm"):
                    extra[fd] = target
        if extra:
            return f"descriptors left open: {extra}"
        with open("/proc/self/maps") as maps:
            mapped = [line.split()[-1] for line in maps if "memfd:wasmgroup" in line]
        if any(name.startswith(PROGRAM_MEMFDS) for name in mapped):
            return f"a program's memory still mapped: {sorted(set(mapped))}"
        if threading.active_count() != self.threads:
            return f"{threading.active_count()} threads instead of {self.threads}"
        if os.getcwd() != self.cwd:
            return f"working directory changed to {os.getcwd()}"
        if dict(os.environ) != self.environ:
            return "the environment changed"
        grown = private_resident_bytes() - self.private
        if grown > RESET_SLACK_BYTES:
            return f"{grown >> 20} MiB of private memory more than when it started"
        return None

    def replace_fd(self, old: int, new: int) -> None:
        """Taken before the worker had its socket (a spare, worker/zygote.py): `old` (its
        link to the fork server) is closed since, and `new` is the socket."""
        self.fds.discard(old)
        self.fds.add(new)


class Connection:
    """This worker's end of the socket: sends are serialised across threads."""

    def __init__(self, sock: socket.socket | None) -> None:
        self.sock: socket.socket = sock  # type: ignore[assignment]  # (a spare's: given later)
        self._send_lock = threading.Lock()

    def send(self, kind: str, **fields: Any) -> None:
        frame = protocol.encode(kind, **fields)
        with self._send_lock:
            try:
                protocol.send(self.sock, frame)
            except protocol.ConnectionClosed:
                # The coordinator is gone (killed): leave at once and silently, from whichever
                # thread noticed first (the reader does the same).
                os._exit(0)


class Worker:
    def __init__(self, sock: socket.socket | None) -> None:
        """With `sock` None (a spare, worker/zygote.py), `serve` is given it."""
        self.conn = Connection(sock)
        self.engine = wasmtime.Engine(make_engine_config())
        self.inbox: queue.SimpleQueue[tuple[dict[str, Any], list[int]] | None] = \
            queue.SimpleQueue()
        self.group: InstanceGroup | None = None
        self._group_lock = threading.Lock()  # between posting to the group and retiring it
        self._stop = threading.Event()
        self._tick = threading.Event()
        # Compiled modules by artefact path (one content each for the coordinator's cache's
        # life, which outlives this worker); the program's names for them by host path.
        self._modules: dict[str, CompiledModule] = {}
        self._artefacts: dict[str, str] = {}
        self.baseline: Baseline | None = None
        self._fds: list[int] = []
        self._ids: dict[int, int] = {}  # PendingOperation -> the coordinator's operation id
        # Between an `assign` frame and the group being built, operations broadcast after
        # the coordinator took that group's snapshot of the log are held here, then applied
        # before the group runs anything (the coordinator does not wait for the build).
        self._building = False
        self._held: list[PendingOperation] = []
        self._perturb: dict[str, Any] | None = None  # the assignment's perturbation, if any
        # Frames for the idle loop that came while it waited for a reply (below).
        self._deferred: list[tuple[dict[str, Any], list[int]]] = []
        self._call_ids = itertools.count(1)
        # Replies that came while a request made inside another one (at a safe point, applying
        # an operation) waited for its own: by call id, for the request they answer.
        self._early_replies: dict[int, tuple[dict[str, Any], list[int]]] = {}
        self._waiting_safely = False  # the working thread waits on its inbox at a safe point
        self.in_entry = False  # the working thread runs guest code (not the idle loop)
        # Leader/follower (see the module's docstring): whether a thread does the group's
        # work now, and whether the reader role waits for a thread to take it.
        self._roles = threading.Condition(threading.Lock())
        self._working = False
        self._reader_free = False

    # ------------------------------------------------------------------ threads
    def take_turns(self, reading: bool) -> None:
        """The body of both taking-turns threads: read (if `reading`, else wait to), do the
        group's work when this thread read it while the group was idle, wait to read again."""
        if not reading:
            self._take_reader_role()
        try:
            while True:
                self._read_until_work()
                self._work()
                self._take_reader_role()
        except protocol.ProtocolError as err:  # a frame the idle group cannot take
            print(f"wasmgroup worker {os.getpid()}: {err}", file=sys.stderr, flush=True)
            os._exit(3)

    def _take_reader_role(self) -> None:
        with self._roles:
            while not self._reader_free:
                self._roles.wait()
            self._reader_free = False

    def _read_until_work(self) -> None:
        """Read and dispatch frames; return once this thread has taken the group's work (the
        other thread is reading then)."""
        try:
            while True:
                fds: list[int] = []
                message = protocol.receive(self.conn.sock, fds)
                kind = message["t"]
                if kind == "op":
                    self._post(message)
                elif kind == "purge":
                    self._purge()
                elif kind == "stop":
                    self._stop.set()
                    self._wake()
                elif kind == "shutdown":
                    # Leave from here: the coordinator is closing and waits for this exit
                    # (a hand-over to the working thread cost milliseconds on a loaded
                    # machine).
                    _leave()
                else:
                    if kind == "assign":
                        with self._group_lock:
                            self._building = True
                    self.inbox.put((message, fds))
                if self._claim_work():
                    return
        except protocol.ConnectionClosed:
            os._exit(0)  # the coordinator is gone: nothing here is worth keeping
        except protocol.ProtocolError as err:
            print(f"wasmgroup worker {os.getpid()}: {err}", file=sys.stderr, flush=True)
            os._exit(3)

    def _claim_work(self) -> bool:
        """Whether this (reading) thread takes the work waiting in the inbox: only when no
        thread works (one that does takes it from the inbox); the other thread reads then."""
        with self._roles:
            if self._working or (self.inbox.empty() and not self._deferred):
                return False
            self._working = True
            self._reader_free = True
            self._roles.notify()
        return True

    def _work(self) -> None:
        """Do the group's work in the inbox until there is none (then no thread works)."""
        while True:
            with self._roles:
                if self._deferred:
                    item: tuple[dict[str, Any], list[int]] | None = self._deferred.pop(0)
                else:
                    try:
                        item = self.inbox.get_nowait()
                    except queue.Empty:
                        self._working = False
                        return
            if item is None:
                group = self.group
                if group is not None:
                    try:
                        group.service_pending()
                    except Exception as err:  # guest code of an operation applied while idle
                        self._retire()
                        self.conn.send("exited", **_ending(err))
                continue
            self._handle(*item)

    def _post(self, message: dict[str, Any]) -> None:
        wire = message["op"]
        op = DescribeRequest() if wire.get("op") == "describe" else from_wire(wire)
        if isinstance(op, (LoadPlan, ClosurePlan)):
            self._artefacts.update(wire.get("artefacts", {}))
        pending = PendingOperation(op, message["initialise"], self._ack)
        pending_id = message["id"]
        with self._group_lock:
            group = self.group
            if self._building:
                self._ids[id(pending)] = pending_id
                self._held.append(pending)
                return
            if group is not None:
                self._ids[id(pending)] = pending_id
                group.enqueue(pending)  # woken below (`_wake`), unless it need not be
        if group is None:
            self.conn.send("ack", id=pending_id, error=None, seconds=0.0, state=None, gone=True)
            return
        parked = group.parked_in_futex() or self._waiting_safely
        if parked and isinstance(op, TABLE_ONLY_OPS) and not group.applying:
            # Read after the post above: this group's thread was parked at a safe point
            # then, and it applies what was posted before it runs guest code again, so no
            # guest code of this group can call through the slot before it is filled (the
            # rule the stop-the-world barrier guarantees). Acknowledged now, and the
            # sleeper not woken: it applies the slot when it wakes for its own reasons.
            self._ack(pending)
            return
        # A thread waiting at a safe point applies it when woken; only guest code needs
        # the epoch ticked (a ticker woken for nothing competes for the GIL and a CPU).
        self._wake(tick=not parked)

    def _purge(self) -> None:
        with self._group_lock:
            group = self.group
            if group is not None:
                group.post(PendingOperation(PurgeDescriptors()))
        self._wake()

    def _ack(self, pending: PendingOperation, gone: bool = False) -> None:
        """Answer the coordinator for `pending`, once: an operation acknowledged when posted
        (`_post`) is not answered again when applied or dropped."""
        op_id = self._ids.pop(id(pending), None)  # atomic: the reader or the working thread
        if op_id is None:
            if pending.error is not None and not gone:
                # Acknowledged when posted, then this group could not apply it: its table
                # differs from the others', so its thread ends (a trap, named).
                raise LinkError(f"could not apply a link operation: {pending.error}")
            return
        state = state_to_wire(pending.state) if pending.state is not None else None
        self.conn.send("ack", id=op_id, error=pending.error,
                       seconds=float(pending.seconds), state=state, gone=gone)

    def _wake(self, tick: bool = True) -> None:
        """Bring the working thread to a safe point (its inbox, its futex wait, guest code),
        or, with none working, the reader to the work (_claim_work)."""
        self.inbox.put(None)
        group = self.group
        if group is not None:
            group.nudge()
        if tick:
            self._tick.set()

    def tick(self) -> None:
        while True:
            self._tick.wait()
            self._tick.clear()
            # A tick that lands while the epoch callback already runs is absorbed by it, so
            # keep ticking while work waits.
            while True:
                group = self.group
                if group is None or not (group.has_pending() or self._stop.is_set()):
                    break
                self.engine.increment_epoch()
                time.sleep(TICK_SECONDS)

    # ------------------------------------------------------------------ the main thread
    def next_message(self, stop_aware: bool = False, safe_point: bool = True
                     ) -> tuple[dict[str, Any], list[int]]:
        """The next frame for the working thread (one inside a host call that waits on the
        coordinator). At a `safe_point` it applies link operations meanwhile. With
        `stop_aware` (a guest thread waiting on the coordinator), a stopping program raises
        ProgramStopping instead of waiting on."""
        while True:
            if stop_aware and self._stop.is_set():
                raise ProgramStopping()
            item: tuple[dict[str, Any], list[int]] | None
            if self._deferred and not stop_aware:
                item = self._deferred.pop(0)
            else:
                self._waiting_safely = safe_point
                try:
                    item = self.inbox.get()
                finally:
                    self._waiting_safely = False
            if safe_point and self.group is not None:
                # Also before a message: an operation posted while this thread waited came
                # with no epoch tick (`_post`).
                self.group.service_pending()
            if item is None:
                if stop_aware and self._early_replies:
                    return EARLY_REPLY, []  # a request made meanwhile took a waiting one's
                continue
            return item

    def serve(self, sock: socket.socket | None = None) -> None:
        """Note how this worker looks with no program (unless a spare did before it had
        `sock`), say `ready`, then read first, taking turns with the other thread (never
        returns: the worker leaves with os._exit, told to or when the coordinator is gone).
        Nothing is read before the baseline is taken."""
        if sock is not None:
            self.conn.sock = sock
        if self.baseline is None:
            self.baseline = Baseline()
        self.conn.send("ready", pid=os.getpid())
        self.take_turns(reading=True)

    def _handle(self, message: dict[str, Any], fds: list[int]) -> None:
        """One frame of work for the idle group."""
        kind = message["t"]
        if kind == "shutdown":
            _leave()
        if kind == "reset":
            problem = self._reset()
            self.conn.send("clean", ok=problem is None, problem=problem)
        elif kind == "assign":
            self._assign(message, fds)
        elif kind == "run":
            if self.group is not None:
                self.group.thread_id = message["thread"]  # a standby group gets its id
                if self.group.perturbation is not None:  # and the delays of that id
                    self.group.perturbation = perturb.from_config(
                        self._perturb, message["thread"])
            self._run(message["entry"], message["args"], message["thread"])
        elif kind == "rearm":
            self._rearm(message["thread"])
        elif kind == "reply":
            for fd in fds:  # a reply to a request the program's stop cut short
                os.close(fd)
        else:
            raise protocol.ProtocolError(f"unexpected message {kind!r} for an idle worker")

    def _assign(self, message: dict[str, Any], fds: list[int]) -> None:
        config = message["config"]
        self._stop.clear()
        self._fds = fds
        try:
            self._build_group(message["thread"], message["role"], config, fds)
        except ProgramStopping:
            self._retire()
            self.conn.send("assigned", error="the program is ending")
            return
        except (LinkError, *WASM_ERRORS, OSError, ValueError) as err:
            self._retire()
            self.conn.send("assigned", error=str(err).strip())
            return
        group = self.group
        assert group is not None
        self._apply_held(group)
        self.conn.send("assigned", error=None)
        if config["entry"] is not None:
            entry, args = config["entry"]
            self._run(entry, args, message["thread"])

    def _build_group(self, thread: int, role: str, config: dict[str, Any], fds: list[int]
                     ) -> None:
        self._artefacts.update(config["artefacts"])
        if len(fds) != (2 if config["memory"] is not None else 1):
            raise ValueError(f"an assignment came with {len(fds)} descriptors")
        # The last descriptor is the table's generation page: the cache owns it.
        generations = GenerationPage(self._fds.pop(), owner=False)
        region = None
        memory = config["memory"]
        if memory is not None:
            region = SharedRegion(fds[0], memory["max_pages"], owner=False)
            self._fds.remove(fds[0])  # the region's now: the group closes it
        service = WorkerService(self)
        try:
            group = InstanceGroup(self.engine, self._module, service,
                                  DescriptorCache(generations, service.descriptor_request),
                                  list(config["argv"]), [(k, v) for k, v in config["env"]],
                                  thread_id=thread)
        except BaseException:
            generations.close()
            if region is not None:
                region.close()
            raise
        group.region = region  # closed with the group, even if attaching it fails
        with self._group_lock:
            self.group = group
        group.program_id = config["program_id"]
        self._perturb = config.get("perturb")
        group.perturbation = perturb.from_config(self._perturb, thread)
        if region is None and config.get("max_memory") is not None:
            # A memory of the module's own grows inside wasmtime: bound it there (a shared
            # region's logical size is bounded by the coordinator).
            group.store.set_limits(memory_size=config["max_memory"])
        group.attach_memory(region, bool(memory and memory["shared"]))
        group.create_table(config["table_length"], config["stack_pointer"])
        if role == "thread":
            plans = [from_wire(p) for p in config["plans"]]
            slots = [from_wire(s) for s in config["slots"]]
            group.replay([p for plan in plans if isinstance(plan, LoadPlan)
                          for p in plan.modules],
                         [s for s in slots if isinstance(s, SlotAssignment)],
                         [c for c in map(from_wire, config["closures"])
                          if isinstance(c, ClosurePlan)])

    def _reset(self) -> str | None:
        """Forget the program this worker served; what it left behind, or None."""
        self._retire()
        self._artefacts.clear()
        for _, fds in self._early_replies.values():  # answers to requests a stop cut short
            for fd in fds:
                os.close(fd)
        self._early_replies.clear()
        self._perturb = None
        self._stop.clear()
        if self._ids:
            return f"{len(self._ids)} operations unanswered"
        while len(self._modules) > MAX_LOADED_MODULES:
            del self._modules[next(iter(self._modules))]
        assert self.baseline is not None
        return self.baseline.problem()

    def preload(self, artefacts: list[str], wanted: Callable[[], bool]) -> None:
        """Deserialize compiled modules ahead of need (a spare, worker/zygote.py), until
        `wanted()`; those that fail are left for when a group needs them (a hint)."""
        for artefact in artefacts:
            if wanted():
                return
            if not artefact or artefact in self._modules:
                continue
            try:
                module = CompiledModule(wasmtime.Module.deserialize_file(self.engine, artefact))
            except (wasmtime.WasmtimeError, OSError):
                continue
            module.imports  # noqa: B018  (worked out now: what instantiating it needs)
            self._modules[artefact] = module

    def _module(self, host_path: str) -> CompiledModule:
        artefact = self._artefacts.get(host_path)
        if artefact is None:
            raise LinkError(f"{host_path}: the coordinator sent no compiled module")
        module = self._modules.pop(artefact, None)
        if module is None:
            try:
                module = CompiledModule(wasmtime.Module.deserialize_file(self.engine,
                                                                          artefact))
            except wasmtime.WasmtimeError as err:  # its checksum held: not made by us
                raise LinkError(f"{host_path}: wasmtime refused the compiled module in the "
                                f"compile cache ({one_line(str(err))}); `wasmgroup cache "
                                "clean` removes it") from None
        self._modules[artefact] = module  # last: the most recently used
        return module

    def _run(self, entry: str, args: list[int], thread: int) -> None:
        group = self.group
        ending: dict[str, Any] = {"how": "returned", "code": 0, "message": None}
        if group is None:
            ending = {"how": "failed", "code": 0, "message": "no group to run"}
        else:
            self.in_entry = True
            try:
                group.call_entry(entry, *args)
            except Exception as err:
                ending = _ending(err)
            finally:
                self.in_entry = False
        if thread == 1 or ending["how"] not in ("returned", "thread_exit"):
            self._retire()
        else:
            # The group stays until the coordinator resets the worker or makes the group a
            # standby group (`rearm`); what is broadcast meanwhile is held until then (on a
            # reset it is answered as never applied, as for a group that is gone).
            assert group is not None  # (a group that ran its entry)
            with self._group_lock:
                self._building = True
                # So are those queued before the entry returned and not applied yet: applied
                # now, a request of theirs would reach a coordinator that no longer counts
                # this group among the program's (a dlopen's other groups get it at once).
                for pending in group.drain_pending():
                    if pending.on_done is not None:
                        self._held.append(pending)
                    else:
                        group.post(pending)  # a purge: local, answered to no one
        self.conn.send("exited", **ending)

    def _rearm(self, thread: int) -> None:
        """The group of the thread that exited here becomes standby group `thread`, and
        applies what was held since."""
        group = self.group
        if group is None:
            self.conn.send("assigned", error="no group to keep")
            return
        try:
            group.rearm(thread)
        except LinkError as err:
            self._retire()
            self.conn.send("assigned", error=str(err))
            return
        self._apply_held(group)
        self.conn.send("assigned", error=None)

    def _apply_held(self, group: InstanceGroup) -> None:
        """Operations held while the group was being built (or kept), applied in order."""
        with self._group_lock:
            self._building = False
            held, self._held = self._held, []
            for pending in held:
                group.post(pending)
        if held:
            group.service_pending()

    def _retire(self) -> None:
        """The group is done: answer what it will never apply, release it and its fds."""
        with self._group_lock:
            group, self.group = self.group, None
            self._building = False
            held, self._held = self._held, []
        for pending in held:
            self._ack(pending, gone=True)
        if group is not None:
            for pending in group.drain_pending():
                if pending.on_done is not None:  # a purge has no one to answer
                    self._ack(pending, gone=True)
            group.close()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []


def _leave() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(0)


def _ending(err: Exception) -> dict[str, Any]:
    """How guest code ended, as the fields of an `exited` frame."""
    if isinstance(err, ThreadExit):
        return {"how": "thread_exit", "code": err.code, "message": None}
    if isinstance(err, GuestSignal):
        return {"how": "signal", "code": err.signal, "message": err.name}
    if isinstance(err, (GuestExit, wasmtime.ExitTrap)):
        return {"how": "exit", "code": err.code, "message": None}
    if isinstance(err, ProgramStopping):
        return {"how": "stopped", "code": 0, "message": None}
    if isinstance(err, WASM_ERRORS):
        text = str(err).strip()
        return {"how": "stopped" if STOP_MESSAGE in text else "trap", "code": 0, "message": text}
    # A lazy stub no module serves, or a call wasmgroup provides only so that programs start.
    if isinstance(err, (LinkError, UnsupportedCall)):
        return {"how": "trap", "code": 0, "message": str(err)}
    import traceback  # (a bug of ours: not worth importing at every worker's start)

    text = "".join(traceback.format_exception(err))
    return {"how": "failed", "code": 0, "message": text}


class WorkerService:
    """The `LinkService` of a group in a worker: each call is a request to the coordinator,
    answered while this group keeps applying what other groups broadcast."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def _call(self, name: str, *args: Any, safe_point: bool = True) -> Any:
        """A request; answered while this group applies what others broadcast, unless the
        guest is not at a `safe_point` (memory.grow runs inside malloc, holding its lock:
        a side module's TLS set-up would need that lock) and the answer never waits on
        another group."""
        value, fds = self._call_with_fds(name, *args, safe_point=safe_point)
        for fd in fds:
            os.close(fd)
        return value

    def _call_with_fds(self, name: str, *args: Any, safe_point: bool = True
                       ) -> tuple[Any, list[int]]:
        if safe_point:
            group = self.worker.group
            if group is not None and group.perturbation is not None:
                group.perturbation.pause()  # before a link request races others' for the lock
        worker = self.worker
        call_id = next(worker._call_ids)
        worker.conn.send("call", id=call_id, name=name, args=list(args))
        while True:
            early = worker._early_replies.pop(call_id, None)
            message, fds = early or worker.next_message(stop_aware=True, safe_point=safe_point)
            if message is EARLY_REPLY:
                continue
            if message["t"] == "reply" and message["id"] != call_id:
                worker._early_replies[message["id"]] = (message, fds)  # an outer request's
                continue
            if message["t"] == "shutdown":
                os._exit(0)  # the coordinator is closing down while this group was building
            if message["t"] in IDLE_WORK and not self.worker.in_entry:
                # An idle group applying an operation (its TLS set-up asks for an arena) as
                # the coordinator starts its thread, keeps it as a standby group after its
                # thread exited, or resets its worker: that waits for the idle loop.
                self.worker._deferred.append((message, fds))
                continue
            if message["t"] != "reply":
                for fd in fds:
                    os.close(fd)
                raise protocol.ProtocolError(f"expected a reply to {name!r}, got "
                                             f"{message['t']!r}")
            if message["ok"]:
                return message["value"], fds
            for fd in fds:
                os.close(fd)
            if message["error"] is None:
                raise ProgramStopping()
            raise LinkError(message["error"])

    def descriptor_request(self, name: str, *args: Any) -> tuple[list[Any], int | None]:
        """A request to the program's descriptor table: its answer ([errno, values...]) and
        the OS descriptor that came with it, if one did. Answered at once by the coordinator
        (never waiting on another group), so not a safe point: it may come from anywhere."""
        value, fds = self._call_with_fds(name, *args, safe_point=False)
        if len(fds) > 1 or not isinstance(value, list) or not value \
                or not isinstance(value[0], int):
            for fd in fds:
                os.close(fd)
            raise protocol.ProtocolError(f"a malformed answer to {name!r}")
        return value, fds[0] if fds else None

    def dlopen(self, group: InstanceGroup, name: str, ld_library_path: list[str] | None
               ) -> int:
        return int(self._call("dlopen", name, ld_library_path))

    def dlsym(self, group: InstanceGroup, handle: int, name: str) -> SymbolAddress:
        kind, value, source, own = self._call("dlsym", handle, name)
        if own is not None:
            # A new slot, which every other group has filled by now: this group fills it
            # before its guest goes on (program.py, Program.dlsym).
            slot = from_wire(own)
            if not isinstance(slot, SlotAssignment):
                raise protocol.ProtocolError(f"a dlsym answer came with {type(slot).__name__}")
            try:
                group.apply_slot(slot)
            except LinkError as err:
                raise RuntimeError(f"could not apply a link operation: {err}") from None
        return SymbolAddress(kind, value, source)

    def is_side_module(self, handle: int) -> bool:
        return bool(self._call("is_side_module", handle, safe_point=False))

    def resolve_stub(self, group: InstanceGroup, importer: int, name: str,
                     func_type: FuncType) -> tuple[int, str]:
        handle, export = self._call("resolve_stub", importer, name, list(func_type.params),
                                    list(func_type.results))
        return int(handle), str(export)

    def spawn_thread(self, group: InstanceGroup, start_arg: int) -> int:
        return int(self._call("spawn", start_arg))

    def grow_memory(self, group: InstanceGroup, pages: int) -> int:
        return int(self._call("grow", pages, safe_point=False))

    def tls_arena(self, group: InstanceGroup, minimum: int) -> tuple[int, int]:
        base, size = self._call("tls_arena", minimum, safe_point=False)
        return int(base), int(size)

    def closure_allocate(self, group: InstanceGroup) -> int:
        return int(self._call("closure_allocate"))

    def closure_prepare(self, group: InstanceGroup, slot: int, backing: int, env: int,
                        signature: FuncType) -> None:
        self._call("closure_prepare", slot, backing, env, list(signature.params),
                   list(signature.results))

    def closure_free(self, group: InstanceGroup, slot: int) -> None:
        # At a safe point: the coordinator takes the topology lock, whose holder may be
        # waiting for this group to apply its operation.
        self._call("closure_free", slot)

    def stopping(self) -> bool:
        return self.worker._stop.is_set()

    def cwd(self) -> str:
        return str(self._call("cwd", safe_point=False))

    def change_directory(self, path: str) -> bool:
        return bool(self._call("chdir", path, safe_point=False))


def start_threads(worker: Worker) -> list[threading.Thread]:
    """The worker's other taking-turns thread and its ticker."""
    # Either taking-turns thread may run guest code: give the second the main thread's
    # stack size (8 MiB by default), whatever the system's default for threads is.
    previous = threading.stack_size(MAIN_STACK_BYTES)
    try:
        turns = threading.Thread(target=worker.take_turns, args=(False,),
                                 name="wasmgroup-turns", daemon=True)
        turns.start()
    finally:
        threading.stack_size(previous)
    ticker = threading.Thread(target=worker.tick, name="wasmgroup-ticker", daemon=True)
    ticker.start()
    return [turns, ticker]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    short_gil_turns()
    sock = socket.socket(fileno=int(args[0]))
    worker = Worker(sock)
    with contextlib.suppress(AttributeError, OSError):  # started in the background
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    start_threads(worker)
    worker.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Worker", "main"]
