"""Running one program: the coordinator, driving one worker process per instance group.

`Program.run()` lays out and links the main module and its NEEDED tree, creates the program's
shared memory (shared/memory.py), hands the main thread's group to a worker process, which
applies the plan (data relocations and constructors included) and runs `_start`; it returns a
`RunResult` once the program has ended and every worker is gone. Every wasm thread is its own
instance group in its own worker process, over the one memfd-backed linear memory.

- dlopen/dlsym/thread spawn/stub resolution are requests from a worker, served under one
  topology lock. A dlopen is planned by `LinkerState`, applied by the instigating group with
  its constructors, committed, then posted to every other group, each of which applies it at
  its next safe point (a host call, a futex-wait slice, a sleep slice, or an epoch tick inside
  guest code); the caller's dlopen returns only when all have acknowledged. A failing dlopen
  (missing library, bad module, type mismatch, trapping constructor) leaves the linker state as
  it was and the guest's dlopen returns NULL with the reason in dlerror.
- A new thread's worker replays the log: every module in handle order (no constructors, TLS
  initialised for the thread), then every table slot, and only then runs `wasi_thread_start`.
- `proc_exit` from any thread, a trap in any thread, a worker that dies, or Ctrl-C end the
  program: the first outcome wins and every other group is stopped at its next safe point.

Exit status: the program's own exit code; 134 when it traps; 125 when wasmgroup cannot run it
(bad module, missing import, failed start-up link, a worker lost); 130 when interrupted.
"""

from __future__ import annotations

import itertools
import logging
import os
import posixpath
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from wasmgroup.orchestrator import descriptors
from wasmgroup.orchestrator.cache import DEFAULT_MAX_MODULE_SIZE
from wasmgroup.orchestrator.capture import PipeCapture
from wasmgroup.orchestrator.descriptors import DescriptorTable
from wasmgroup.orchestrator.interrupt import watch_interrupts
from wasmgroup.orchestrator.linker import MAIN_HANDLE, LinkerState, PendingLoad
from wasmgroup.orchestrator.locate import GuestFilesystem, Located
from wasmgroup.orchestrator.runtime_parts import RuntimeParts
from wasmgroup.orchestrator.trace import Tracer, ms
from wasmgroup.orchestrator.verify import first_difference
from wasmgroup.orchestrator.workers import (
    SHUTDOWN_GRACE,
    AckCount,
    CallFailed,
    CallStopped,
    OperationFuture,
    ServeElsewhere,
    WithDescriptor,
    WorkerProcess,
    WorkerStartError,
)
from wasmgroup.shared import protocol
from wasmgroup.shared.closure import MAX_VALUES, VALUE_SIZES, trampoline_module
from wasmgroup.shared.cpus import usable_cpus
from wasmgroup.shared.errors import LinkError, WasmgroupError
from wasmgroup.shared.memory import MAX_PAGES_32, PAGE, SharedRegion
from wasmgroup.shared.plan import (
    ClosurePlan,
    LoadPlan,
    LoadUndo,
    ModulePlan,
    SlotAssignment,
    SymbolAddress,
    state_from_wire,
    to_wire,
)
from wasmgroup.shared.records import field, record
from wasmgroup.shared.wasm import FuncType, Limits, WasmModule, parse_module

EXIT_TRAP = 134
EXIT_RUNTIME_ERROR = 125
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TIMEOUT = 124  # as timeout(1)
EXIT_MEMORY = 137  # 128 + SIGKILL, as a shell reports a program the OOM killer ended
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MEMORY_SAMPLE = 0.05  # seconds between looks at the workers' memory, with a limit
VERIFY_FAILURE = "--verify-groups: "  # how a program stopped by a difference's error begins
DEFAULT_PERTURB_MAX_DELAY = 0.02  # seconds: the longest perturbation delay (stress)
EAGAIN = 6
ENOTCAPABLE = 76
SPAWN_IMPORTS = {("wasi", "thread-spawn"), ("wasix_32v1", "thread_spawn_v2")}


class ProgramError(WasmgroupError):
    """wasmgroup could not start the program (the message says why)."""


@record(frozen=False)
class RunResult:
    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""
    error: str | None = None  # a trap or start-up failure, as one readable message
    verify_summary: str | None = None  # with verify_groups: what was checked, if all agreed
    timed_out: bool = False  # stopped by its timeout
    wall_s: float = 0.0  # seconds from submission to the result (Runtime runs)


def default_pool_size() -> int:
    """Enough idle workers for the main thread and one thread per core, at most 8."""
    return max(2, min(8, usable_cpus() + 1))


# A worker process costs ~5 MiB of private memory idle (measured: 200 sleeping threads, 4.8 MiB
# USS each) and more once it runs: live threads are capped so that a guest spawning without
# end gets EAGAIN from pthread_create, as from a thread limit, before it exhausts the machine.
WORKER_MEMORY_ESTIMATE = 16 << 20


def default_max_threads() -> int:
    """As many live threads as the machine's memory holds workers, at least 64."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 1024
    return max(64, memory // WORKER_MEMORY_ESTIMATE)


@record(frozen=False)
class ProgramOptions:
    args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    dirs: Sequence[str] = ()  # HOST::GUEST specs
    lib_paths: Sequence[str] = ()  # host directories searched for libraries last
    cwd: str = "/"
    capture_output: bool = False  # else the program writes to this process's stdout/stderr
    cache_dir: Path | None = None
    verify_groups: bool = False  # after every link operation, check all groups agree
    trace: Path | None = None  # one JSON line per link operation, with phase timings
    pool_size: int = field(default_factory=default_pool_size)  # idle workers kept ready
    max_threads: int = field(default_factory=default_max_threads)  # live ones, main included
    max_module_size: int = DEFAULT_MAX_MODULE_SIZE  # bytes; larger module files are refused
    timeout: float | None = None  # seconds: then stop every thread, status 124
    max_memory: int | None = None  # bytes the linear memory may reach (memory.grow fails)
    # Bytes of private memory the program may add to its workers (beyond what each had when
    # it was taken: instances, tables, host buffers); then it is stopped, status 137.
    max_worker_memory: int | None = None
    stdin_fd: int | None = 0  # host descriptor the guest's fd 0 duplicates (None: closed)
    # `wasmgroup stress`: seeded random delays in every group at safe points and before
    # acknowledgements (worker/perturb.py), each at most perturb_max_delay seconds; None: off.
    perturb_seed: int | None = None
    perturb_max_delay: float = DEFAULT_PERTURB_MAX_DELAY


log = logging.getLogger("wasmgroup")

MAX_THREAD_ID = (1 << 29) - 1  # wasi-threads: thread ids are in [1, 2^29)
TLS_ARENA_BYTES = 4096  # a group's TLS arena (asked for when first needed; more on demand)
JOIN_TIMEOUT = 5.0  # seconds stopped threads get to reach a safe point at exit
# After Ctrl-C a person waits: threads that have not left guest code by then (blocked in a
# read of the terminal, say) are killed sooner.
INTERRUPT_GRACE = 0.5
WAIT_SLICE = 0.05  # seconds between checks for a stopping program while waiting on workers
STANDBY_QUIET = 0.01  # seconds without link operations before standby groups catch up
# Standby groups kept ready once a program on workers of its own has spawned more than once
# (one before, and in a Runtime): a spawn-and-join loop or a burst of pthread_creates finds
# the next group replayed.
STANDBY_GROUPS = 2


# The requests a group's host functions make, with their arguments' types ("strs": a list of
# strings; "strs?": that or None). Checked before anything is served.
REQUEST_ARGS: dict[str, tuple[type | str, ...]] = {
    "dlopen": (str, "strs?"), "dlsym": (int, str), "is_side_module": (int,),
    "resolve_stub": (int, str, "strs", "strs"), "spawn": (int,), "grow": (int,),
    "tls_arena": (int,), "cwd": (), "chdir": (str,),
    **descriptors.REQUESTS,
    "closure_allocate": (), "closure_prepare": (int, int, int, "strs", "strs"),
    "closure_free": (int,),
}


def _malformed(name: str, spec: tuple[type | str, ...], args: object) -> str | None:
    """What is wrong with a request's arguments, or None."""
    if not isinstance(args, list) or len(args) != len(spec):
        return f"a malformed {name!r} request: {len(spec)} arguments expected"
    for position, (want, value) in enumerate(zip(spec, args, strict=True), start=1):
        if want in ("strs", "strs?"):
            ok = (value is None and want == "strs?") or (
                isinstance(value, list) and all(isinstance(v, str) for v in value))
        else:
            ok = isinstance(value, want) and not isinstance(value, bool)  # type: ignore[arg-type]
        if not ok:
            return f"a malformed {name!r} request: argument {position} is not {want}"
    return None


def _for_guest(message: str) -> str:
    """An error text for the guest's dlerror(): a NUL byte would end it early."""
    return message.replace("\0", "\\0")


@record(frozen=False)
class _Assignment:
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    # A standby group started as this thread before its build ended: a failed build ends
    # the program as soon as it is reported (before the worker's `exited` for its run).
    started_as: int | None = None
    # A standby group's: one that failed before a spawn took it is given back.
    standby: WorkerProcess | None = None
    kept: bool = False  # a kept group's `rearm`, which may be refused (a spawn waits for it)
    fresh: tuple[int, float] | None = None  # a spawned thread's: (tid, perf_counter at spawn)


class Program:
    """One program's run: its linker state, memory region, descriptor table and groups.

    With `parts` (a Runtime's) it borrows their engine, cache and warm worker pool, and at
    close gives back every worker it used (reset: worker/main.py), except those still in
    guest code, which are killed. Without, it makes its own and closes them with itself."""

    def __init__(self, path: str, options: ProgramOptions,
                 parts: RuntimeParts | None = None) -> None:
        self.path = path
        self.options = options
        self.fs = GuestFilesystem.from_specs(options.dirs, options.lib_paths, options.cwd)
        self._own_parts = parts is None
        if parts is None:
            # A program whose main cannot start threads needs just the one worker its main
            # thread takes.
            parts = RuntimeParts(options.pool_size if _may_spawn(path, options.max_module_size)
                                 else 0, options.cache_dir, options.max_module_size)
            self.cache = parts.cache
        else:
            self.cache = parts.cache.view()
            self.cache.max_module_size = options.max_module_size
        self.pool = parts.pool
        self._taken: set[WorkerProcess] = set()  # every worker this program holds
        self._memory_base: dict[WorkerProcess, int] = {}  # private bytes when taken
        self._stdout = PipeCapture() if options.capture_output else None
        self._stderr = PipeCapture() if options.capture_output else None
        # One descriptor table for every thread: stdio, the --dir mappings from 3, and all
        # the program opens.
        self.descriptors = DescriptorTable(
            self.fs, [None if options.stdin_fd is None else _valid_fd(options.stdin_fd),
                      self._stdout.write_fd if self._stdout else _valid_fd(1),
                      self._stderr.write_fd if self._stderr else _valid_fd(2)],
            on_close=self._purge_descriptors)
        self.tracer = Tracer(options.trace, path)
        log.info("pool of %d idle workers", options.pool_size)
        self._timer: threading.Timer | None = None
        self.verify_checks = 0  # --verify-groups: checks made, and the groups they covered
        self._verified_groups: set[int] = set()
        self._topology = threading.Lock()
        self._topology_holder: WorkerProcess | None = None
        self._loading: WorkerProcess | None = None  # the group applying a dlopen's constructors
        self._groups_lock = threading.Lock()
        self._memory_lock = threading.RLock()  # tls_arena may grow memory
        self._arenas: dict[int, list[tuple[int, int]]] = {}  # thread id -> its TLS arenas
        self._free_arenas: list[tuple[int, int]] = []
        self._arena_pages = (0, 0)  # (base, bytes) left of the pages grown for TLS arenas
        self._stop = threading.Event()
        self._interrupted = False
        self._outcome: tuple[int, str | None] | None = None
        self._outcome_lock = threading.Lock()
        self._thread_ids = itertools.count(2)
        self._thread_limit_warned = False
        self.threads: dict[int, WorkerProcess] = {}  # every thread ever spawned (tid > 1)
        self.groups: dict[int, WorkerProcess] = {}  # the live instance groups, by thread id
        self._assignments: dict[int, _Assignment] = {}  # worker pid -> its pending assign
        self.main_worker: WorkerProcess | None = None
        self.region: SharedRegion | None = None
        self._shared_memory = False
        self._closed = False
        # Standby groups: replayed and kept current like any group, waiting to become the
        # next thread (a spawn then only names the thread); their ids are negative.
        self._standby: list[WorkerProcess] = []
        self._standby_ids = itertools.count(-1, -1)
        self._standby_wanted: threading.Event | None = None
        self._standby_pending: dict[WorkerProcess, list[OperationFuture]] = {}
        # Operations not yet sent to a standby group (packed), and when the last came: they
        # go once link operations pause (STANDBY_QUIET), or when a spawn takes the group, so
        # that its work does not compete with the program's link operations for a CPU.
        self._standby_backlog: dict[WorkerProcess, list[bytes]] = {}
        self._backlog_since = 0.0
        self._backlog_due = threading.Event()
        self._standby_builds: dict[WorkerProcess, _Assignment] = {}  # still being built
        self._spawning = 0  # spawns answered whose group is not registered yet
        self._spawns: queue.SimpleQueue[tuple[int, int, float]] | None = None  # their queue
        lib_path = options.env.get("LD_LIBRARY_PATH", "")
        self.linker = LinkerState(self.fs, self._parsed_module, self.grow_memory,
                                  [e for e in lib_path.split(":") if e])

    # ------------------------------------------------------------------ set-up
    def _guest_path_of_main(self) -> str:
        return self.fs.guest_path_of_host(self.path) or posixpath.join(
            self.fs.cwd, Path(self.path).name)

    def _parsed_module(self, found: Located) -> WasmModule:
        return self.cache.load(found.fd, found.host_path, found.guest_path).parsed

    def _artefacts(self, modules: Iterable[ModulePlan]) -> dict[str, str]:
        return {m.host_path: self.cache.loaded(m.host_path).shared_path for m in modules}

    def _preload(self, modules: Iterable[ModulePlan]) -> None:
        """Tell the fork server what the program's new threads load: its spare workers
        deserialize it while they wait (a hint; a spare without it loads it when built)."""
        server = self.pool.fork_server
        if server is not None:
            server.preload(self._artefacts(modules).values())

    def _load_op(self, plan: LoadPlan) -> dict[str, Any]:
        return {**to_wire(plan), "artefacts": self._artefacts(plan.modules)}

    def grow_memory(self, pages: int) -> int:
        """memory.grow for the whole program: the old size in pages, or -1."""
        with self._memory_lock:
            region = self.region
            if region is None:
                return -1
            old = region.pages
            if old + pages > min(region.max_pages, self._page_limit()):
                return -1
            region.set_pages(old + pages)
            return old

    def _page_limit(self) -> int:
        """--max-memory in wasm pages (no limit: the memory's own maximum decides)."""
        limit = self.options.max_memory
        return MAX_PAGES_32 if limit is None else limit // PAGE

    def tls_arena(self, thread_id: int, minimum: int = TLS_ARENA_BYTES) -> list[int]:
        """Memory from which a group places its own TLS blocks of side modules that other
        groups loaded: [base, size]. Arenas of ended threads are reused (their worker zeroes
        each block before use), so a program spawning many threads does not grow memory for
        each. Asked for at any time (a new thread's group is built without the topology
        lock), so arenas come from pages grown for them, never from the linker's allocator,
        whose free list a failing dlopen puts back as it was before its plan."""
        with self._memory_lock:
            reusable = [a for a in self._free_arenas if a[1] >= minimum]
            if reusable:
                arena = min(reusable, key=lambda a: a[1])
                self._free_arenas.remove(arena)
            else:
                size = -(-max(minimum, TLS_ARENA_BYTES) // 16) * 16
                base, left = self._arena_pages
                if size > left:
                    pages = -(-size // PAGE)
                    old = self.grow_memory(pages)
                    if old < 0:
                        raise LinkError(f"cannot grow linear memory by {pages} pages for a "
                                        "thread's TLS blocks")
                    base, left = old * PAGE, pages * PAGE
                arena = (base, size)
                self._arena_pages = (base + size, left - size)
            self._arenas.setdefault(thread_id, []).append(arena)
            return list(arena)

    def _release_arenas(self, thread_id: int) -> None:
        with self._memory_lock:
            self._free_arenas += self._arenas.pop(thread_id, [])

    def _create_memory(self, main: WasmModule) -> int:
        """The shared region for main's imported memory; returns the start size in pages."""
        memory_imports = [i for i in main.imports if i.kind == "memory"]
        limits = getattr(memory_imports[0].type, "limits", None) if memory_imports else None
        try:
            pages = self.linker.layout_main(main, limits.minimum if limits else 0)
        except LinkError as err:
            raise LinkError(f"{self.path}: {err}") from None
        if not isinstance(limits, Limits):
            return pages
        if limits.is64:
            raise ProgramError(f"{self.path}: 64-bit memories are not supported")
        maximum = MAX_PAGES_32 if limits.maximum is None else limits.maximum
        if pages > maximum:
            raise LinkError(f"the program needs {pages} pages of memory but its memory import "
                            f"allows at most {maximum}")
        if pages > self._page_limit():
            raise ProgramError(f"the program needs {pages * PAGE} bytes of memory at start, "
                               f"more than --max-memory {self.options.max_memory}")
        self.region = SharedRegion.create(maximum, pages)
        self._shared_memory = limits.shared
        return pages

    def _base_config(self) -> tuple[dict[str, Any], list[int]]:
        """What every group's worker gets: WASI arguments and environment, the memory and
        the descriptor table's generation page (the fds travel beside the frame)."""
        fds: list[int] = []
        memory = None
        if self.region is not None:
            memory = {"max_pages": self.region.max_pages, "shared": self._shared_memory}
            fds.append(self.region.fd)
        fds.append(self.descriptors.generations.fd)
        config = {
            "argv": [self._guest_path_of_main(), *self.options.args],
            "env": [[k, v] for k, v in self.options.env.items()],
            "memory": memory,
            "table_length": self.linker.table_length,
            "stack_pointer": None,  # the group's own __stack_pointer start value, if any
            "artefacts": {},
            "plans": [],
            "slots": [],
            "closures": [],
            "entry": None,  # [name, args]: run it as soon as the group exists
            "program_id": os.getpid(),  # the guest's process id, in every thread
            "max_memory": self.options.max_memory,  # bytes, for a memory the module defines
            "perturb": None if self.options.perturb_seed is None else {
                "seed": self.options.perturb_seed, "max_delay": self.options.perturb_max_delay},
        }
        return config, fds

    def _assign(self, worker: WorkerProcess, thread_id: int, role: str,
                config: dict[str, Any], fds: list[int]) -> None:
        """Give `worker` the group of `thread_id`; raises LinkError if it cannot build it."""
        self._await_assignment(worker, self._send_assign(worker, thread_id, role, config, fds))

    def _send_assign(self, worker: WorkerProcess, thread_id: int, role: str,
                     config: dict[str, Any], fds: list[int]) -> _Assignment:
        """Ask `worker` to build the group of `thread_id` from `config`. Operations
        broadcast from now on reach it too: it applies them once built (worker/main.py)."""
        assignment = _Assignment()
        self._assignments[worker.pid] = assignment
        worker.thread_id = thread_id
        worker.listener = self
        worker.send("assign", fds=fds, thread=thread_id, role=role, config=config)
        return assignment

    def _await_assignment(self, worker: WorkerProcess, assignment: _Assignment) -> None:
        """Until `worker` has built its group; raises LinkError if it could not."""
        while not assignment.done.wait(WAIT_SLICE):
            if worker.lost is not None:
                raise LinkError(f"its worker process {worker.pid} {worker.lost}")
            if self._closed:  # the worker went back to the pool
                raise LinkError("the program is ending")
        if assignment.error is not None:
            raise LinkError(assignment.error)

    def start(self) -> None:
        """Link the main module and its NEEDED tree, constructors included."""
        started = time.perf_counter()
        main, host_path = self.cache.load_file(self.path)
        self._create_memory(main.parsed)
        pending = self.linker.plan_main(main.parsed, self._guest_path_of_main(), host_path)
        self._preload(pending.plan.modules)
        worker = self._take()
        # The timeout counts from here: compiling and waiting for a worker to start (seconds
        # on a busy machine) are not the program's time; its constructors are.
        self._arm_timeout()
        self.main_worker = worker
        config, fds = self._base_config()
        if self.linker.main_imports_stack_pointer:
            config["stack_pointer"] = self.linker.stack_high
        with self._groups_lock:
            self.groups[1] = worker
        try:
            self._assign(worker, 1, "main", config, fds)
            self._apply_first(worker, pending)
        except (LinkError, CallStopped):  # nothing left to wait for at wind-up
            with self._groups_lock:
                self.groups.pop(1, None)
            raise
        self.tracer.record(op="start", thread=1, groups=1, ok=True, handles=pending.plan.handles,
                           pid=worker.pid, total_ms=ms(time.perf_counter() - started))
        log.info("linked %s: modules %s, main thread in worker %d", self.path,
                 pending.plan.handles, worker.pid)

    def _arm_timeout(self) -> None:
        seconds = self.options.timeout
        if seconds is None or self._timer is not None:
            return
        self._timer = threading.Timer(seconds, self.finish, args=(
            EXIT_TIMEOUT, f"timed out after {seconds:g} s (--timeout): every thread stopped"))
        self._timer.daemon = True
        self._timer.start()

    def _apply_first(self, worker: WorkerProcess, pending: PendingLoad) -> None:
        """The instigating group applies a load with its initialisation; commit or abort."""
        future = worker.post(self._load_op(pending.plan), initialise=True)
        self._loading = worker
        try:
            self._await(future, own=future)
        except CallStopped:
            self.linker.abort(pending)
            raise
        finally:
            self._loading = None
        if future.gone or future.error is not None:
            self.linker.abort(pending)
            if future.gone:
                raise CallStopped()
            raise LinkError(future.error or "")
        self.linker.commit(pending)

    # ------------------------------------------------------------------ running
    def run(self) -> RunResult:
        try:
            try:
                if not self._stop.is_set():  # interrupted while the coordinator started
                    self.start()
            except (WasmgroupError, OSError) as err:
                self.finish(EXIT_RUNTIME_ERROR, cannot_start(err, self.path))
            except CallStopped:
                pass  # the outcome is already set (the main group exited in a constructor)
            if self._stop.is_set():
                # Stopped while starting (a timeout, Ctrl-C): a main group built meanwhile
                # never runs, and wind-up has nothing to wait for.
                with self._groups_lock:
                    self.groups.pop(1, None)
            else:
                if self.linker.modules[MAIN_HANDLE].module.export_named("_start") is None:
                    self.finish(0)  # a reactor: linking and _initialize were the whole job
                else:
                    assert self.main_worker is not None
                    self.main_worker.send("run", entry="_start", args=[], thread=1)
                    if self._own_parts:
                        # In a Runtime a program's first thread takes a warm worker; a
                        # standby group would hold one more for programs that never spawn.
                        self._replenish_standby_later()
            slice_ = 0.1 if self.options.max_worker_memory is None else MEMORY_SAMPLE
            while not self._stop.wait(slice_):
                self._check_memory()
        except KeyboardInterrupt:
            self.interrupt()
        return self._wind_up()

    def interrupt(self, reason: str = "interrupted") -> None:
        """Ctrl-C (or a Runtime's cancel): end the program, unless it has ended already, with
        status 130 and `reason`, and wind up promptly."""
        self._interrupted = True
        self.finish(EXIT_INTERRUPTED, reason)

    def finish(self, code: int, error: str | None = None) -> None:
        """End the program with this outcome, unless another came first; stop every group."""
        with self._outcome_lock:
            if self._outcome is None:
                self._outcome = (code, error)
        self._stop.set()
        # Sent under the lock: a worker leaves `groups` (under it) before it goes back to a
        # pool, so no frame of this program reaches it after its reset.
        with self._groups_lock:
            for worker in self.groups.values():
                worker.send("stop")

    def stopping(self) -> bool:
        return self._stop.is_set()

    def _wind_up(self) -> RunResult:
        started = time.monotonic()
        while self.groups and time.monotonic() < started + (
                INTERRUPT_GRACE if self._interrupted else JOIN_TIMEOUT):
            time.sleep(0.002)  # stopped groups report their exit at their next safe point
        self.close()
        assert self._outcome is not None
        code, error = self._outcome
        stdout = self._stdout.collect() if self._stdout else b""
        stderr = self._stderr.collect() if self._stderr else b""
        return RunResult(code, stdout, stderr, error)

    def close(self) -> None:
        """Stop every worker process and release the shared memory (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()
        # Link operations under way see the stop (or the close) and leave within a wait
        # slice; none may start a group once its worker went back to the pool.
        locked = self._topology.acquire(timeout=SHUTDOWN_GRACE)
        try:
            if self._own_parts:
                self.pool.close(INTERRUPT_GRACE if self._interrupted else SHUTDOWN_GRACE)
            else:
                self._release_workers()
            self.cache.close()
        finally:
            if locked:
                self._topology.release()
        self.descriptors.close()
        self.fs.close()
        self.tracer.close()
        if self.region is not None:
            self.region.close()

    # ------------------------------------------------------------------ workers
    def _take(self) -> WorkerProcess:
        """A worker from the pool for one of this program's groups (started now if none is
        ready)."""
        return self._hold(self.pool.take(cancelled=self._stop.is_set))

    def _take_ready(self) -> WorkerProcess | None:
        """A worker that is ready now, or None (never waits)."""
        worker = self.pool.take_ready()
        return None if worker is None else self._hold(worker)

    def _hold(self, worker: WorkerProcess) -> WorkerProcess:
        with self._groups_lock:
            self._taken.add(worker)
        if self.options.max_worker_memory is not None:
            self._memory_base[worker] = private_bytes(worker.pid) or 0
        return worker

    def _give_back(self, worker: WorkerProcess) -> None:
        """A worker done with this program (its thread exited, or it never ran one)."""
        with self._groups_lock:
            if worker not in self._taken:
                return
            self._taken.discard(worker)
        self.pool.give_back(worker)

    def _release_workers(self) -> None:
        """At close, in a Runtime: every worker back to the pool (reset there), but those
        still hosting a group that never left guest code, which are killed."""
        with self._groups_lock:
            hosting = set(self.groups.values())
            taken, self._taken = self._taken, set()
        for worker in taken:
            if worker in hosting:
                log.info("worker %d did not leave guest code: killed", worker.pid)
                self.pool.discard(worker)
            else:
                self.pool.give_back(worker)

    def _check_memory(self) -> None:
        """With a worker memory limit: stop the program once its workers' private memory
        grew by more than the limit since they were taken."""
        limit = self.options.max_worker_memory
        if limit is None:
            return
        with self._groups_lock:
            workers = [w for w in self._taken if w.lost is None]
        grown = sum(max(0, (private_bytes(w.pid) or 0) - self._memory_base.get(w, 0))
                    for w in workers)
        if grown > limit:
            self.finish(EXIT_MEMORY, f"memory limit exceeded: the program's workers took "
                                     f"{grown >> 20} MiB beyond their own, more than "
                                     f"{limit >> 20} MiB")

    def __enter__(self) -> Program:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        for capture in (self._stdout, self._stderr):
            if capture is not None:
                capture.collect()

    # ------------------------------------------------------------------ WorkerListener
    def worker_message(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        if message["t"] == "assigned":
            assignment = self._assignments.pop(worker.pid, None)
            if assignment is not None:
                assignment.error = message["error"]
                if assignment.error is not None and assignment.started_as is not None:
                    self.finish(EXIT_RUNTIME_ERROR, f"cannot start thread "
                                                    f"{assignment.started_as}: {assignment.error}")
                elif assignment.error is not None and assignment.standby is not None:
                    self._drop_standby(assignment.standby)
                elif assignment.fresh is not None:
                    self._fresh_built(worker, assignment)
                assignment.done.set()
            return
        self._thread_ended(worker, message["how"], message["code"], message["message"])

    def _thread_ended(self, worker: WorkerProcess, how: str, code: int, text: str | None
                      ) -> None:
        tid = worker.thread_id
        name = "main thread" if tid == 1 else f"thread {tid}"
        with self._groups_lock:
            self.groups.pop(tid, None)
            others_left = bool(self.groups)
            # Kept as a standby group in the same step, so that no broadcast misses it and no
            # spawn takes it before its `rearm` is sent.
            kept = tid != 1 and how in ("returned", "thread_exit") and self._keep_as_standby(
                worker, tid)
        self.tracer.record(op="thread_exit", thread=tid, pid=worker.pid, how=how, code=code,
                           **({"kept": True} if kept else {}))
        log.debug("%s (worker %d) ended: %s %s", name, worker.pid, how, code)
        if how == "trap":
            self.finish(EXIT_TRAP, f"the program trapped in {name}: {text}")
        elif how == "exit":
            self.finish(code)
        elif how == "signal":  # a default action that terminates, as a shell reports it
            what = "aborted (SIGABRT)" if text == "SIGABRT" else f"was terminated by {text}"
            self.finish(128 + code, f"the program {what} in {name}")
        elif how == "failed":
            self.finish(EXIT_RUNTIME_ERROR, f"{name} failed inside wasmgroup: {text}")
        elif tid == 1 and how == "returned":
            self.finish(0)  # returning from _start ends the process, as in WASI
        elif tid == 1 and how == "thread_exit":
            # The main thread left with pthread_exit: the program ends with the last thread.
            if others_left:
                threading.Thread(target=self._finish_after_threads, args=(code,),
                                 daemon=True).start()
            else:
                self.finish(code)
        if tid != 1 and not kept:
            self._release_arenas(tid)
            self._give_back(worker)

    def _finish_after_threads(self, code: int) -> None:
        while (self.groups or self._spawning) and not self._stop.is_set():
            time.sleep(0.01)
        self.finish(code)

    def worker_lost(self, worker: WorkerProcess, reason: str) -> None:
        tid = worker.thread_id
        with self._groups_lock:
            hosted = self.groups.pop(tid, None) is worker
            if worker in self._standby:
                self._standby.remove(worker)
            self._standby_pending.pop(worker, None)
            self._standby_backlog.pop(worker, None)
            self._standby_builds.pop(worker, None)
        assignment = self._assignments.pop(worker.pid, None)
        if assignment is not None:
            assignment.error = f"its worker process {worker.pid} {reason}"
            assignment.done.set()
        if hosted:
            self.tracer.record(op="thread_exit", thread=tid, pid=worker.pid, how="lost",
                               code=None)
        if hosted and not self._stop.is_set():
            name = "the main thread" if tid == 1 else f"thread {tid}"
            self.finish(EXIT_RUNTIME_ERROR,
                        f"the worker process of {name} (pid {worker.pid}) {reason}")

    def worker_call(self, worker: WorkerProcess, name: str, args: list[Any]) -> Any:
        """A request from a group's host function. Raises CallFailed (the guest sees the
        error) or CallStopped (the program is ending). Never anything else: whatever goes
        wrong while serving becomes one of the two, so no request goes unanswered. On the
        worker's reader thread (workers.READER_CALLS), raises ServeElsewhere rather than wait
        (for the topology lock, or a spawn's group with --verify-groups)."""
        if self._stop.is_set():
            raise CallStopped()
        spec = REQUEST_ARGS.get(name)
        problem = (f"an unknown request {name!r}" if spec is None
                   else _malformed(name, spec, args))
        if problem is not None:
            self.finish(EXIT_RUNTIME_ERROR, f"thread {worker.thread_id} sent {problem}")
            raise CallStopped()
        try:
            if name == "spawn" and self.options.verify_groups \
                    and WorkerProcess.reading_here() is worker:
                raise ServeElsewhere()
            return self._serve(worker, name, args)
        except LinkError as err:
            raise CallFailed(_for_guest(str(err))) from None
        except OSError as err:
            # A file changed under a lookup (a guest renaming while another thread loads):
            # the request fails; the message names no host path.
            raise CallFailed(f"{name} failed: {err.strerror or err}") from None
        except (CallFailed, CallStopped, ServeElsewhere):
            raise
        except Exception as err:  # a bug must end the program, not kill this thread
            self.finish(EXIT_RUNTIME_ERROR, f"internal error serving {name!r} for thread "
                                            f"{worker.thread_id}: {type(err).__name__}: {err}")
            raise CallStopped() from None

    def _serve(self, worker: WorkerProcess, name: str, args: list[Any]) -> Any:
        """Carry out a request whose arguments `REQUEST_ARGS` checked."""
        if name == "dlopen":
            return self.dlopen(worker, args[0], args[1])
        if name == "dlsym":
            address, own = self.dlsym(worker, args[0], args[1])
            return [address.kind, address.value, address.handle,
                    None if own is None else to_wire(own)]
        if name == "is_side_module":
            return self.is_side_module(args[0])
        if name == "resolve_stub":
            func_type = FuncType(tuple(args[2]), tuple(args[3]))
            return list(self.resolve_stub(worker, args[0], args[1], func_type))
        if name == "spawn":
            return self.spawn_thread(worker, args[0])
        if name == "grow":
            return self.grow_memory(args[0])
        if name == "tls_arena":
            return self.tls_arena(worker.thread_id, args[0])
        if name in descriptors.REQUESTS:
            answer, fd = descriptors.serve(self.descriptors, name, args)
            return answer if fd is None else WithDescriptor(answer, fd)
        if name == "cwd":
            return self.fs.cwd
        if name == "closure_allocate":
            return self.closure_allocate(worker)
        if name == "closure_prepare":
            signature = FuncType(tuple(args[3]), tuple(args[4]))
            return self.closure_prepare(worker, args[0], args[1], args[2], signature)
        if name == "closure_free":
            with self._topology_lock(worker):
                return self.linker.free_closure(args[0])
        assert name == "chdir"
        return self.change_directory(args[0])

    # ------------------------------------------------------------------ the barrier
    @contextmanager
    def _topology_lock(self, requester: WorkerProcess | None) -> Iterator[float]:
        """Held for every change of link topology. The groups waiting for it keep applying
        what the holder broadcasts (their worker services operations while it waits). It is
        held for a group, not a thread: a request the holder's group makes while its own
        operation runs (dlsym or a lazy stub in a constructor) goes through. Yields the
        seconds spent waiting for it (--trace's `lock_wait_ms`). On the requester's reader
        thread, raises ServeElsewhere if it is held."""
        if requester is not None and self._topology_holder is requester:
            yield 0.0
            return
        started = time.perf_counter()
        if requester is not None and WorkerProcess.reading_here() is requester:
            # On a reader thread, which must never wait for another group.
            if not self._topology.acquire(blocking=False):
                raise ServeElsewhere()
        else:
            while not self._topology.acquire(timeout=WAIT_SLICE):
                if self._stop.is_set():
                    raise CallStopped()
        self._topology_holder = requester
        try:
            yield time.perf_counter() - started
        finally:
            self._topology_holder = None
            self._topology.release()

    def _await(self, future: OperationFuture | AckCount, own: OperationFuture | None = None
               ) -> None:
        """Until `future` is done. `own`: a future of the worker whose reader thread this may
        be (serving its request), which then reads that worker's frames itself meanwhile."""
        reader = WorkerProcess.reading_here()
        if own is not None and reader is not None:
            reader.pump(own.done, self._stop.is_set)
        while not future.done.wait(WAIT_SLICE):
            if self._stop.is_set():
                raise CallStopped()

    def _broadcast(self, op: dict[str, Any], exclude: WorkerProcess | None = None
                   ) -> dict[int, OperationFuture]:
        """Every live group (but `exclude`) applies `op` before this returns. Returns what
        each group reported (timings, and its state for a describe)."""
        posted, count = self._post_all(op, exclude)
        reader = WorkerProcess.reading_here()
        own = next((f for tid, f in posted.items() if self.groups.get(tid) is reader), None)
        self._await(count, own)  # one wake-up, when the last group has acknowledged
        return self._acknowledged(posted)

    def _post_all(self, op: dict[str, Any], exclude: WorkerProcess | None, live: bool = True,
                  standby: bool = True) -> tuple[dict[int, OperationFuture], AckCount]:
        """Send `op` to every `live` group but `exclude`, and to the `standby` groups; what
        the live groups will acknowledge, and its count."""
        packed = protocol.pack_op(op)  # once, for every group
        with self._groups_lock:
            targets = {tid: w for tid, w in self.groups.items()
                       if w is not exclude and live}
            # Standby groups run no guest code: nothing waits for them here; a spawn that
            # takes one first waits for what it still has to apply.
            for group in self._standby if standby else ():
                self._standby_backlog.setdefault(group, []).append(packed)
            if standby and self._standby:
                self._backlog_since = time.monotonic()
                self._backlog_due.set()
            count = AckCount(len(targets))
            posted = {tid: w.post(packed, count=count)  # see finish()
                      for tid, w in targets.items()}
        return posted, count

    def _acknowledged(self, posted: dict[int, OperationFuture]) -> dict[int, OperationFuture]:
        """The acks of an operation every group applied; a group that could not ends the
        program. Returns what each group reported."""
        for tid, future in posted.items():
            if future.error is not None:
                self.finish(EXIT_RUNTIME_ERROR,
                            f"thread {tid} could not apply a link operation: {future.error}")
                raise CallStopped()
        return {tid: f for tid, f in posted.items() if not f.gone}

    def _undo_load(self, pending: PendingLoad, exclude: WorkerProcess) -> None:
        """A load failed in its instigator after the other groups applied it provisionally:
        they drop it, then its memory is zeroed again (a module's start function may have
        run in any group) and the linker forgets it."""
        try:
            self._broadcast(to_wire(LoadUndo(tuple(pending.plan.handles))), exclude=exclude)
        finally:
            self.linker.abort(pending)
            if self.region is not None:
                for module in pending.plan.modules:
                    if module.handle != MAIN_HANDLE and module.memory_size:
                        os.pwrite(self.region.fd, bytes(module.memory_size),
                                  module.memory_base)

    def _verify(self, after: str) -> float:
        """With --verify-groups: stop the program if any group disagrees. Returns seconds."""
        if not self.options.verify_groups:
            return 0.0
        started = time.perf_counter()
        answers = self._broadcast({"op": "describe"})
        states = [state_from_wire(f.state) for f in answers.values() if f.state is not None]
        difference = first_difference(sorted(states, key=lambda s: s.thread_id))
        if difference is not None:
            self.finish(EXIT_RUNTIME_ERROR, f"{VERIFY_FAILURE}after {after}: {difference}")
            raise CallStopped()
        self.verify_checks += 1
        self._verified_groups.update(s.thread_id for s in states)
        return time.perf_counter() - started

    def verify_summary(self) -> str | None:
        """With --verify-groups, what was checked (for a program that was not stopped)."""
        if not self.options.verify_groups:
            return None
        return (f"verify-groups: {self.verify_checks} checks after link operations, "
                f"{len(self._verified_groups)} groups, all agreed")

    def _trace_op(self, op: str, worker: WorkerProcess, started: float, **fields: object
                  ) -> None:
        total = ms(time.perf_counter() - started)
        if self.tracer.enabled:
            self.tracer.record(op=op, thread=worker.thread_id, groups=len(self.groups),
                               total_ms=total, **fields)
        if log.isEnabledFor(logging.INFO):
            what = fields.get("name") or fields.get("new_thread", "")
            outcome = "ok" if fields.get("ok") else f"failed: {fields.get('error')}"
            log.info("%s %s by thread %d: %s, %.1f ms, %d groups", op, what, worker.thread_id,
                     outcome, total, len(self.groups))

    # ------------------------------------------------------------------ link operations
    def dlopen(self, worker: WorkerProcess, name: str, ld_library_path: list[str] | None
               ) -> int:
        """Load `name` (and what it needs) in every group; its handle. Raises LinkError."""
        started = time.perf_counter()
        if self._loading is worker:
            raise LinkError(f"cannot load {name} from a constructor of a library being loaded "
                            "(dlopen inside dlopen)")
        with self._topology_lock(worker) as waited:
            locked = time.perf_counter()
            compiled_before = self.cache.compile_seconds
            try:
                outcome = self.linker.plan_load(name, ld_library_path)
                if not isinstance(outcome, int):
                    self._artefacts(outcome.plan.modules)  # compiled before anything runs
            except LinkError as err:
                self._trace_op("dlopen", worker, started, name=name, ok=False, error=str(err),
                               lock_wait_ms=ms(waited))
                raise
            planned = time.perf_counter()
            if isinstance(outcome, int):
                self._trace_op("dlopen", worker, started, name=name, ok=True,
                               handles=[outcome], loaded=False)
                return outcome
            # The instigator runs data relocations and constructors while every other group
            # instantiates beside it, provisionally: invisible to their read-only queries
            # until committed (by their next operation), and undone if the instigator fails.
            load_op = self._load_op(outcome.plan)
            future = worker.post(load_op, initialise=True)
            # (Not the standby groups: they apply at their own pace, and one still applying
            # when a failed load's memory is zeroed again could run its start function then.)
            posted, count = self._post_all({**load_op, "provisional": True}, exclude=worker,
                                           standby=False)
            self._loading = worker
            try:
                self._await(future, own=future)
                applied = time.perf_counter()
                self._await(count)
            except CallStopped:
                self.linker.abort(outcome)
                raise
            finally:
                self._loading = None
            broadcast = time.perf_counter()
            if future.gone or future.error is not None:
                self._undo_load(outcome, exclude=worker)
                if future.gone:
                    raise CallStopped()
                self._trace_op("dlopen", worker, started, name=name, ok=False,
                               error=future.error)
                raise LinkError(future.error or "")
            self.linker.commit(outcome)  # the other groups' next operation commits it there
            self._post_all(load_op, exclude=worker, live=False)  # to the standby groups
            others = self._acknowledged(posted)
            verify_seconds = self._verify(f"dlopen {name}")
            self._trace_op(
                "dlopen", worker, started, name=name, ok=True, loaded=True,
                handles=outcome.plan.handles, lock_wait_ms=ms(waited),
                plan_ms=ms(planned - locked),
                compile_ms=ms(self.cache.compile_seconds - compiled_before),
                apply_ms=ms(applied - planned), broadcast_ms=ms(broadcast - applied),
                **_apply_times(others), verify_ms=ms(verify_seconds))
            return outcome.names[name]

    def dlsym(self, worker: WorkerProcess, handle: int, name: str
              ) -> tuple[SymbolAddress, SlotAssignment | None]:
        """The address; and a new slot the caller's group fills itself before its guest goes
        on (every other group has filled it when this returns), or None. With
        --verify-groups the caller's group fills it here too, so that the check sees it."""
        started = time.perf_counter()
        with self._topology_lock(worker) as waited:
            address, assignment = self.linker.dlsym(handle, name)
            own = None
            if assignment is not None:
                # One op frame and its ack fewer on the caller's path: the slot comes back
                # with the answer.
                own = None if self.options.verify_groups else assignment
                others = self._broadcast(to_wire(assignment),
                                         exclude=None if own is None else worker)
                broadcast = time.perf_counter()
                verify_seconds = self._verify(f"dlsym {name}")
                self._trace_op("dlsym", worker, started, name=name, ok=True,
                               slot=assignment.slot, lock_wait_ms=ms(waited),
                               broadcast_ms=ms(broadcast - started - waited),
                               **_apply_times(others), verify_ms=ms(verify_seconds))
            return address, own

    def closure_allocate(self, worker: WorkerProcess) -> int:
        """A closure slot; a new block of them, in every group, when none is free."""
        with self._topology_lock(worker):
            started = time.perf_counter()
            slot, growth = self.linker.allocate_closure()
            if growth is not None:
                others = self._broadcast(to_wire(growth))
                broadcast = time.perf_counter()
                verify_seconds = self._verify(f"closure_allocate (slots {growth.index}.."
                                              f"{growth.index + growth.size - 1})")
                self._trace_op("closure_allocate", worker, started, ok=True,
                               slots=[growth.index, growth.size],
                               broadcast_ms=ms(broadcast - started), **_apply_times(others),
                               verify_ms=ms(verify_seconds))
            return slot

    def closure_prepare(self, worker: WorkerProcess, slot: int, backing: int, env: int,
                        signature: FuncType) -> None:
        """Put a closure of `signature` calling `backing` with `env` in `slot`, in every
        group. Its trampoline is compiled once per signature (shared/closure.py)."""
        if self.region is None:
            raise LinkError("closures need a program that imports its memory")
        if not all(t in VALUE_SIZES for t in (*signature.params, *signature.results)) \
                or max(len(signature.params), len(signature.results)) > MAX_VALUES:
            raise LinkError(f"closure signature {signature} is not supported")
        with self._topology_lock(worker):
            started = time.perf_counter()
            try:
                self.linker.check_closure_slot(slot)
            except LinkError as err:
                self._trace_op("closure_prepare", worker, started, ok=False, slot=slot,
                               error=str(err))
                raise
            data = trampoline_module(signature, self.region.max_pages, self._shared_memory)
            name, cached = self.cache.generated(data, parse_module(data, source="closure"))
            plan = ClosurePlan(slot, name, signature.params, signature.results,
                               backing & 0xFFFFFFFF, env & 0xFFFFFFFF)
            compiled = time.perf_counter()
            others = self._broadcast({**to_wire(plan),
                                      "artefacts": {name: str(cached.artefact)}})
            self.linker.prepare_closure(plan)
            broadcast = time.perf_counter()
            verify_seconds = self._verify(f"closure_prepare (slot {slot})")
            self._trace_op("closure_prepare", worker, started, ok=True, slot=slot,
                           plan_ms=ms(compiled - started), broadcast_ms=ms(broadcast - compiled),
                           **_apply_times(others), verify_ms=ms(verify_seconds))

    def change_directory(self, path: str) -> bool:
        """chdir: the new guest directory must be visible (one cwd for the whole program)."""
        target = self.fs.absolute(path)
        if not self.fs.is_directory(target):
            return False
        self.fs.cwd = target
        return True

    def _purge_descriptors(self) -> None:
        """Entries of the descriptor table were closed: every group drops its copies."""
        with self._groups_lock:  # see finish()
            for worker in self.groups.values():
                worker.send("purge")

    def is_side_module(self, handle: int) -> bool:
        return handle != MAIN_HANDLE and handle in self.linker.modules

    def resolve_stub(self, worker: WorkerProcess, importer: int, name: str,
                     func_type: FuncType) -> tuple[int, str]:
        with self._topology_lock(worker):
            return self.linker.resolve_stub(importer, name, func_type)

    def _thread_config(self) -> tuple[dict[str, Any], list[int]]:
        """A new thread's group: the log to replay (modules in handle order, then slots)."""
        plans, slots = self.linker.replay_log()
        closures = self.linker.replay_closures()
        self._preload(plans)
        config, fds = self._base_config()
        config.update(
            artefacts={**self._artefacts(plans),
                       **{c.module: str(self.cache.loaded(c.module).artefact)
                          for c in closures}},
            plans=[to_wire(LoadPlan(modules=plans, table_length=self.linker.table_length,
                                    slots=[]))],
            slots=[to_wire(s) for s in slots],
            closures=[to_wire(c) for c in closures],
            # A new thread of a main importing its stack pointer gets its own, set by
            # wasi_thread_start from the start argument before any C code runs.
            stack_pointer=0 if self.linker.main_imports_stack_pointer else None)
        return config, fds

    def spawn_thread(self, spawner: WorkerProcess, start_arg: int) -> int:
        """wasi-threads `thread-spawn`: a new group, in a worker of its own, replays the log,
        then runs `wasi_thread_start(tid, start_arg)`. Returns the tid, or -errno.

        The spawner waits for neither the worker nor the build: a standby group is told to
        run (its worker applies what it still has to, in order, first), and otherwise a
        worker is taken and given the log in the background. Either way the new group has
        every library loaded before the spawn, and a build that fails ends the program.
        On the spawner's reader thread, raises ServeElsewhere rather than wait for the
        topology lock."""
        if self.region is None or not self._shared_memory:
            return -EAGAIN  # threads need a shared memory
        if self.linker.modules[MAIN_HANDLE].module.export_named("wasi_thread_start") is None:
            return -ENOTCAPABLE  # as Wasmer: nothing to start the thread with
        started = time.perf_counter()
        with self._topology_lock(spawner) as waited:
            with self._groups_lock:  # (a spawn answered but not started yet counts)
                live = len(self.groups) + self._spawning
            if live >= self.options.max_threads:
                self._warn_thread_limit()
                return -EAGAIN
            tid = next(self._thread_ids)
            if tid > MAX_THREAD_ID:
                return -EAGAIN
            standby = self._take_standby()
            if standby is not None:
                built = self._standby_built(standby)
                self._start_standby(standby, tid, start_arg)
                self._trace_op("spawn", spawner, started, ok=True, new_thread=tid,
                               standby=True, built=built, pid=standby.pid,
                               lock_wait_ms=ms(waited))
            else:
                self._spawn_fresh(spawner, tid, start_arg, started, waited)
        self._replenish_standby_later()
        return tid

    def _warn_thread_limit(self) -> None:
        if not self._thread_limit_warned:
            self._thread_limit_warned = True
            log.warning("thread limit reached (--max-threads %d, the main thread included): "
                        "a thread spawn gets EAGAIN", self.options.max_threads)

    def _take_standby(self) -> WorkerProcess | None:
        """The standby group that has come furthest (built, else the oldest being built), or
        None. A dead one is forgotten; a kept one not yet rearmed is left (its worker may
        refuse: worker/group.py, InstanceGroup.rearm)."""
        with self._groups_lock:
            alive = [w for w in self._standby if w.lost is None]
            built = [w for w in alive if self._standby_built(w)]
            building = [w for w in alive if not self._standby_builds[w].kept] \
                if not built else []
            if not built and not building:
                return None
            chosen = (built or building)[0]
            self._standby.remove(chosen)
        return chosen

    def _standby_built(self, standby: WorkerProcess) -> bool:
        building = self._standby_builds.get(standby)
        return building is None or building.done.is_set()

    def _start_standby(self, child: WorkerProcess, tid: int, start_arg: int) -> None:
        """Make a standby group thread `tid` and start it: its worker reads the `run` after
        its build and the operations posted to it so far, and applies them first."""
        with self._memory_lock:
            if child.thread_id in self._arenas:
                self._arenas[tid] = self._arenas.pop(child.thread_id)
        building = self._standby_builds.pop(child, None)
        with self._groups_lock:
            self._send_backlog(child)  # before the run: the worker applies them first
        pending = self._standby_pending.pop(child, [])
        if building is not None:
            building.started_as = tid
        child.thread_id = tid
        with self._groups_lock:
            self.groups[tid] = child
        self.threads[tid] = child
        child.send("run", entry="wasi_thread_start", args=[tid, start_arg], thread=tid)
        self.tracer.record(op="thread_start", thread=tid, pid=child.pid, standby=True)
        if building is not None and building.done.is_set() and building.error is not None:
            self.finish(EXIT_RUNTIME_ERROR, f"cannot start thread {tid}: {building.error}")
        elif not all(f.done.is_set() for f in pending):
            threading.Thread(target=self._check_applied, args=(tid, pending),
                             name=f"wasmgroup-standby-{tid}", daemon=True).start()
        else:
            self._check_applied(tid, pending)

    def _check_applied(self, tid: int, pending: list[OperationFuture]) -> None:
        """A started standby group failed none of the operations it had still to apply, or
        the program ends (as when any group fails one)."""
        for future in pending:
            try:
                self._await(future)
            except CallStopped:
                return
            if future.error is not None:
                self.finish(EXIT_RUNTIME_ERROR,
                            f"thread {tid} could not apply a link operation: {future.error}")
                return

    def _spawn_fresh(self, spawner: WorkerProcess, tid: int, start_arg: int,
                     started: float, waited: float) -> None:
        if not self.options.verify_groups:
            # The worker is taken, given the log and starts the thread in the background
            # (applying what is broadcast meanwhile first): the spawner goes on, so the
            # pthread_creates of a burst neither wait for a worker nor for a build.
            with self._groups_lock:
                self._spawning += 1
            self._trace_op("spawn", spawner, started, ok=True, new_thread=tid,
                           lock_wait_ms=ms(waited))
            if self._spawns is None:
                # One thread for them all, started once: Thread.start() waits until the new
                # thread runs, a wait this spawn (on the reader thread) should not make.
                self._spawns = queue.SimpleQueue()
                threading.Thread(target=self._spawn_in_background, args=(self._spawns,),
                                 name="wasmgroup-spawns", daemon=True).start()
            self._spawns.put((tid, start_arg, time.perf_counter()))
            return
        try:
            child = self._take()
        except WorkerStartError as err:
            self.finish(EXIT_RUNTIME_ERROR, f"cannot start thread {tid}: {err}")
            raise CallStopped() from None
        config, fds = self._thread_config()
        with self._groups_lock:
            self.groups[tid] = child
        self.threads[tid] = child
        try:
            self._assign(child, tid, "thread", config, fds)
        except LinkError as err:
            self._spawn_failed(child, tid, err)
            raise CallStopped() from None
        replayed = time.perf_counter()
        verify_seconds = self._verify(f"spawning thread {tid}")
        self._trace_op("spawn", spawner, started, ok=True, new_thread=tid, pid=child.pid,
                       lock_wait_ms=ms(waited), replay_ms=ms(replayed - started - waited),
                       verify_ms=ms(verify_seconds))
        child.send("run", entry="wasi_thread_start", args=[tid, start_arg], thread=tid)
        self.tracer.record(op="thread_start", thread=tid, pid=child.pid, standby=False)

    def _spawn_in_background(self, spawns: queue.SimpleQueue[tuple[int, int, float]]
                             ) -> None:
        """For each spawn answered without a group: a worker taken, the group registered
        (under the topology lock: from then on it gets every broadcast) and sent to be built
        and started (worker_message follows it); or the program ends."""
        while not self._stop.is_set():  # then a spawn still queued has nothing to start
            try:
                tid, start_arg, sent = spawns.get(timeout=WAIT_SLICE)
            except queue.Empty:
                continue
            try:
                self._start_fresh(tid, start_arg, sent)
            finally:
                with self._groups_lock:
                    self._spawning -= 1

    def _start_fresh(self, tid: int, start_arg: int, sent: float) -> None:
        try:
            child = self._take()
        except WorkerStartError as err:
            self.finish(EXIT_RUNTIME_ERROR, f"cannot start thread {tid}: {err}")
            return
        try:
            with self._topology_lock(None):
                if self._stop.is_set():
                    raise CallStopped()
                config, fds = self._thread_config()
                config["entry"] = ["wasi_thread_start", [tid, start_arg]]
                with self._groups_lock:
                    self.groups[tid] = child
                self.threads[tid] = child
                assignment = self._send_assign(child, tid, "thread", config, fds)
                assignment.fresh = (tid, sent)
        except CallStopped:
            self._give_back(child)

    def _fresh_built(self, child: WorkerProcess, assignment: _Assignment) -> None:
        """A spawned thread's group is built (its thread then starts) or the program ends."""
        assert assignment.fresh is not None
        tid, sent = assignment.fresh
        if assignment.error is not None:
            self._spawn_failed(child, tid, LinkError(assignment.error))
            return
        self.tracer.record(op="thread_start", thread=tid, pid=child.pid, standby=False,
                           build_ms=ms(time.perf_counter() - sent))

    def _spawn_failed(self, child: WorkerProcess, tid: int, err: LinkError) -> None:
        with self._groups_lock:
            self.groups.pop(tid, None)
        self._give_back(child)
        self.finish(EXIT_RUNTIME_ERROR, f"cannot start thread {tid}: {err}")

    def _keep_as_standby(self, worker: WorkerProcess, tid: int) -> bool:
        """Whether the group of a thread that exited is kept as a standby group (under the
        groups lock): up to one more than are wanted (the spawn that took a standby started
        another one's build). Its worker has it still, current (it applies what is
        broadcast until told otherwise): a spawn-and-join loop soon rebuilds nothing."""
        if self._stop.is_set() or not self._shared_memory or self.options.verify_groups \
                or worker.lost is not None or not self.pool.keep \
                or len(self._standby) > self._standby_wanted_count():
            return False  # (a pool that keeps no idle worker, `--pool 0`, keeps no group)
        # Its worker sets up the side modules' TLS blocks again, for the next thread, in the
        # arenas it has.
        worker.thread_id = next(self._standby_ids)
        with self._memory_lock:
            if tid in self._arenas:
                self._arenas[worker.thread_id] = self._arenas.pop(tid)
        assignment = _Assignment(standby=worker, kept=True)
        self._standby_builds[worker] = assignment
        self._assignments[worker.pid] = assignment
        self._standby.append(worker)
        worker.send("rearm", thread=worker.thread_id)
        return True

    def _replenish_standby_later(self) -> None:
        """Prepare the next threads' groups in the background (threaded programs only; not
        with --verify-groups, whose checks at each spawn want the group built then)."""
        if not self._shared_memory or self.options.verify_groups \
                or len(self._standby) >= self._standby_wanted_count():
            return
        if self._standby_wanted is None:
            self._standby_wanted = threading.Event()
            threading.Thread(target=self._keep_standby, args=(self._standby_wanted,),
                             name="wasmgroup-standby", daemon=True).start()
        self._standby_wanted.set()

    def _standby_wanted_count(self) -> int:
        # In a Runtime the pool's workers are every program's: one standby each.
        return STANDBY_GROUPS if self._own_parts and len(self.threads) >= 2 else 1

    def _keep_standby(self, wanted: threading.Event) -> None:
        threading.Thread(target=self._deliver_backlog, name="wasmgroup-standby-backlog",
                         daemon=True).start()
        while not self._stop.is_set():
            if wanted.wait(WAIT_SLICE):
                wanted.clear()
                while self._replenish_standby():
                    pass

    def _deliver_backlog(self) -> None:
        """Send the standby groups what was broadcast, once link operations pause."""
        while not self._stop.is_set():
            if not self._backlog_due.wait(WAIT_SLICE):
                continue
            quiet = self._backlog_since + STANDBY_QUIET - time.monotonic()
            if quiet > 0:
                time.sleep(quiet)
                continue
            self._backlog_due.clear()
            with self._groups_lock:
                for standby in list(self._standby_backlog):
                    self._send_backlog(standby)

    def _send_backlog(self, standby: WorkerProcess) -> None:
        """Post what a standby group has not been sent yet, in order (the caller holds
        `_groups_lock`, as every broadcast does while it posts)."""
        for packed in self._standby_backlog.pop(standby, []):
            self._standby_pending.setdefault(standby, []).append(standby.post(packed))

    def _replenish_standby(self) -> bool:
        """Start building one more standby group, if one is wanted and an idle worker is
        ready; whether it did."""
        try:
            with self._topology_lock(None):
                if len(self._standby) >= self._standby_wanted_count() or self._stop.is_set():
                    return False
                child = self._take_ready()
                if child is None:
                    return False  # no idle worker ready: the next spawn builds its group
                config, fds = self._thread_config()
                with self._groups_lock:
                    self._standby.append(child)
                assignment = self._send_assign(child, next(self._standby_ids), "thread",
                                               config, fds)
                assignment.standby = child
                self._standby_builds[child] = assignment
        except CallStopped:
            return False
        # Built without the lock (what is broadcast meanwhile is applied once built): a
        # spawn or dlopen need not wait for it. One that fails before a spawn took it is
        # given back; one a spawn took ends the program (both in worker_message).
        return True

    def _drop_standby(self, child: WorkerProcess) -> None:
        """A standby group that could not be built (or kept): given back, unless a spawn
        took it meanwhile."""
        with self._groups_lock:
            taken = child not in self._standby
            if not taken:
                self._standby.remove(child)
        if not taken:
            self._standby_builds.pop(child, None)
            self._standby_pending.pop(child, None)
            self._standby_backlog.pop(child, None)
            self._release_arenas(child.thread_id)
            self._give_back(child)


def private_bytes(pid: int) -> int | None:
    """A process's resident memory that is not shared (RssAnon: the linear memory, a memfd,
    is not in it), from /proc/PID/statm; None when it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            fields = f.read().split()
    except OSError:
        return None
    return (int(fields[1]) - int(fields[2])) * PAGE_SIZE


def cannot_start(err: WasmgroupError | OSError, path: str) -> str:
    """Why a program could not start, as its result's error says it."""
    message = f"{err.filename or path}: {err.strerror}" if isinstance(err, OSError) else str(err)
    return f"cannot start: {message}"


def _valid_fd(fd: int) -> int | None:
    """`fd` if this process has it open (a closed stdio stream stays closed in the guest)."""
    try:
        os.fstat(fd)
    except OSError:
        return None
    return fd


def _may_spawn(path: str, size_limit: int) -> bool:
    """Whether the main module at `path` imports a call that starts a thread (wasix-libc's
    pthread_create does), from a quick look at its imports; True when it cannot tell (start()
    reports what is wrong with the file). A side module may import such a call too: then its
    threads' workers start cold, as with `--pool 0`."""
    try:
        if os.stat(path).st_size > size_limit:
            return True
        with open(path, "rb") as f:
            main = parse_module(f.read(), source=path)
    except (OSError, WasmgroupError):
        return True
    return any((i.module, i.name) in SPAWN_IMPORTS for i in main.imports_of("func"))


def _apply_times(applied: dict[int, OperationFuture]) -> dict[str, Any]:
    """Trace field: each thread's time to apply the operation."""
    return {"group_apply_ms": {str(t): ms(f.seconds) for t, f in applied.items()}}


def run_program(path: str, args: Sequence[str] = (), *, env: dict[str, str] | None = None,
                dirs: Sequence[str] = (), lib_paths: Sequence[str] = (), cwd: str = "/",
                capture_output: bool = True, cache_dir: Path | None = None,
                verify_groups: bool = False, trace: Path | None = None,
                pool_size: int | None = None, timeout: float | None = None,
                max_memory: int | None = None, max_threads: int | None = None,
                max_module_size: int = DEFAULT_MAX_MODULE_SIZE) -> RunResult:
    """Run a WebAssembly program to completion and return its exit code and output.

    `dirs` are `HOST::GUEST` directory mappings (the guest sees nothing else); `lib_paths` are
    host directories searched for libraries after the guest's own library directories. With
    `capture_output` (the default) the program's stdout and stderr come back in the result.
    Every wasm thread runs in a worker process of its own; `pool_size` idle workers are kept
    ready for new threads. After `timeout` seconds the program is stopped (status 124);
    `max_memory` bytes bound the linear memory (memory.grow beyond it fails); with
    `max_threads` threads live (the main thread included; default: as many workers as the
    machine's memory holds) a thread spawn fails with EAGAIN. A module file over
    `max_module_size` bytes is refused unread.

    Ctrl-C (SIGINT), when called from the main thread, raises no KeyboardInterrupt: at any
    point (start-up included) it stops the program, every worker is reaped, and the result
    says `exit_code` 130, `error` "interrupted", with the output so far. (From another thread
    SIGINT stays the main thread's business.)
    """
    options = ProgramOptions(args=args, env=dict(env or {}), dirs=dirs, lib_paths=lib_paths,
                             cwd=cwd, capture_output=capture_output, cache_dir=cache_dir,
                             verify_groups=verify_groups, trace=trace, timeout=timeout,
                             max_memory=max_memory, max_module_size=max_module_size)
    if pool_size is not None:
        options.pool_size = pool_size
    if max_threads is not None:
        options.max_threads = max_threads
    with watch_interrupts() as watch:
        program = Program(path, options)
        try:
            watch.set_target(program.interrupt)
            result = program.run()
            if result.error is None:
                result.verify_summary = program.verify_summary()
            return result
        finally:
            program.close()


__all__ = ["EXIT_INTERRUPTED", "EXIT_RUNTIME_ERROR", "EXIT_TIMEOUT", "EXIT_TRAP", "Program",
           "ProgramOptions", "RunResult", "run_program"]
