"""Running one program: the coordinator's side of the linker, driving its instance groups.

`Program.run()` lays out and links the main module and its NEEDED tree, applies that plan in
the main thread's group (data relocations and constructors included), runs `_start`, and
returns a `RunResult`. Every wasm thread is its own instance group (its own Store and table,
one shared memory); groups reach `Program` through the `LinkService` protocol.

- dlopen/dlsym/thread spawn take the topology lock (cooperatively: a group waiting for it
  keeps applying operations others broadcast). A dlopen is planned by `LinkerState`, applied
  by the instigating group with its constructors, committed, then posted to every other group,
  which applies it at its next safe point (a host call, a futex-wait slice, or an epoch tick
  inside guest code); the caller returns only when all have. A failing dlopen (missing
  library, bad module, type mismatch, trapping constructor) leaves the linker state as it was
  and the guest's dlopen returns NULL with the reason in dlerror.
- A new thread's group replays the log: every module in handle order (no constructors, TLS
  initialised for the thread), then every table slot, and only then runs `wasi_thread_start`.
- `proc_exit` from any thread, or a trap in any thread, ends the program: the first outcome
  wins and every other group is stopped at its next safe point.

Exit status: the program's own exit code; 134 when it traps; 125 when wasmgroup cannot run it
(bad module, missing import, failed start-up link); 130 when interrupted (Ctrl-C).
"""

from __future__ import annotations

import itertools
import posixpath
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import wasmtime

from wasmgroup.orchestrator.cache import ModuleCache
from wasmgroup.orchestrator.capture import PipeCapture
from wasmgroup.orchestrator.linker import MAIN_HANDLE, LinkerState
from wasmgroup.orchestrator.locate import GuestFilesystem, Located
from wasmgroup.orchestrator.trace import Tracer, ms
from wasmgroup.orchestrator.verify import first_difference
from wasmgroup.shared.errors import LinkError, WasmgroupError
from wasmgroup.shared.plan import LoadPlan, SlotAssignment, SymbolAddress
from wasmgroup.shared.wasm import FuncType, WasmModule
from wasmgroup.worker.epoch import STOP_MESSAGE
from wasmgroup.worker.group import (
    ENGINE_SETTINGS,
    WASM_ERRORS,
    DescribeRequest,
    InstanceGroup,
    PendingOperation,
    make_engine_config,
)
from wasmgroup.worker.host.wasix import EAGAIN, GuestExit, ThreadExit

EXIT_TRAP = 134
EXIT_RUNTIME_ERROR = 125
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class ProgramError(WasmgroupError):
    """wasmgroup could not start the program (the message says why)."""


@dataclass
class RunResult:
    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""
    error: str | None = None  # a trap or start-up failure, as one readable message


@dataclass
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


MAX_THREAD_ID = (1 << 29) - 1  # wasi-threads: thread ids are in [1, 2^29)
JOIN_TIMEOUT = 5.0  # seconds a stopped thread gets to reach a safe point at exit
TICK_INTERVAL = 0.01  # seconds between epoch ticks while waiting on other groups


class Program:
    def __init__(self, path: str, options: ProgramOptions) -> None:
        self.path = path
        self.options = options
        self.fs = GuestFilesystem.from_specs(options.dirs, options.lib_paths, options.cwd)
        self.engine = wasmtime.Engine(make_engine_config())
        self.cache = ModuleCache(self.engine, ENGINE_SETTINGS, options.cache_dir)
        self._stdout = PipeCapture() if options.capture_output else None
        self._stderr = PipeCapture() if options.capture_output else None
        self.tracer = Tracer(options.trace)
        self._topology = threading.RLock()
        self._stop = threading.Event()
        self._outcome: tuple[int, str | None] | None = None
        self._outcome_lock = threading.Lock()
        self._thread_ids = itertools.count(2)
        self.threads: dict[int, threading.Thread] = {}
        self._created: list[InstanceGroup] = []
        self._main_runner = threading.current_thread()  # runs group 1 (the one calling run())
        self.group = self._new_group(1)
        self.groups: dict[int, InstanceGroup] = {1: self.group}
        lib_path = options.env.get("LD_LIBRARY_PATH", "")
        self.linker = LinkerState(self.fs, self._parsed_module, self.group.grow_memory,
                                  [e for e in lib_path.split(":") if e])

    # ------------------------------------------------------------------ set-up
    def _guest_path_of_main(self) -> str:
        return self.fs.guest_path_of_host(self.path) or posixpath.join(
            self.fs.cwd, Path(self.path).name)

    def _new_group(self, thread_id: int) -> InstanceGroup:
        group = InstanceGroup(self.engine, self._wasmtime_module, self, self._wasi_config(),
                              thread_id=thread_id)
        self._created.append(group)
        return group

    def _wasi_config(self) -> wasmtime.WasiConfig:
        """Each group's WASI context: same arguments, environment, directories and output."""
        wasi = wasmtime.WasiConfig()
        wasi.argv = [self._guest_path_of_main(), *self.options.args]
        wasi.env = list(self.options.env.items())
        for m in self.fs.mappings:
            wasi.preopen_dir(m.host, m.guest)
        if self._stdout is not None and self._stderr is not None:
            wasi.stdout_file = self._stdout.path
            wasi.stderr_file = self._stderr.path
        else:
            wasi.inherit_stdout()
            wasi.inherit_stderr()
        wasi.inherit_stdin()
        return wasi

    def _wasmtime_module(self, host_path: str) -> wasmtime.Module:
        return self.cache.load(host_path).module

    def _parsed_module(self, found: Located) -> WasmModule:
        return self.cache.load(found.host_path).parsed

    # ------------------------------------------------------------------ running
    def start(self) -> None:
        """Link the main module and its NEEDED tree, constructors included."""
        main = self.cache.load(self.path)
        memory_imports = [i for i in main.parsed.imports if i.kind == "memory"]
        limits = getattr(memory_imports[0].type, "limits", None) if memory_imports else None
        pages = self.linker.layout_main(main.parsed, limits.minimum if limits else 0)
        self.group.create_memory_and_table(main.module, pages, self.linker.table_length,
                                           self.linker.stack_high)
        pending = self.linker.plan_main(main.parsed, self._guest_path_of_main(), self.path)
        try:
            self.group.apply_load(pending.plan, initialise=True)
        except LinkError:
            self.linker.abort(pending)
            raise
        self.linker.commit(pending)
        self.tracer.record(op="start", thread=1, groups=1, ok=True, handles=pending.plan.handles)

    def run(self) -> RunResult:
        self._main_runner = threading.current_thread()
        try:
            self.start()
        except (LinkError, ProgramError, OSError) as err:
            message = (f"{err.filename or self.path}: {err.strerror}"
                       if isinstance(err, OSError) else str(err))
            self.finish(EXIT_RUNTIME_ERROR, f"cannot start: {message}")
        except (GuestExit, wasmtime.ExitTrap) as exit_:
            self.finish(exit_.code)
        if not self._stop.is_set():
            if self.linker.modules[MAIN_HANDLE].module.export_named("_start") is None:
                self.finish(0)  # a reactor: linking and _initialize were the whole job
            else:
                self._run_main_thread()
        return self._wind_up()

    def _run_main_thread(self) -> None:
        """`_start` on a thread of its own, so that the calling thread stays free to take
        signals: Ctrl-C (KeyboardInterrupt) stops every group, even one spinning in wasm."""

        def body() -> None:
            self._run_thread(self.group, "_start")
            self.finish(0)  # returning from _start ends the process, as in WASI

        runner = threading.Thread(target=body, name="wasm-thread-1", daemon=True)
        self._main_runner = runner
        runner.start()
        try:
            while runner.is_alive():
                runner.join(0.1)
        except KeyboardInterrupt:
            self.finish(EXIT_INTERRUPTED, "interrupted")
            self._await_thread(runner, time.monotonic() + JOIN_TIMEOUT)

    def _run_thread(self, group: InstanceGroup, entry: str, *args: int) -> None:
        """Run one thread's entry point; an exit or trap ends the whole program."""
        name = "main thread" if group.thread_id == 1 else f"thread {group.thread_id}"
        try:
            group.call_entry(entry, *args)
        except ThreadExit as exit_:
            if group.thread_id == 1:
                self._join_threads(None)  # the main thread left: the last thread's code wins
                self.finish(exit_.code)
        except (GuestExit, wasmtime.ExitTrap) as exit_:
            self.finish(exit_.code)
        except WASM_ERRORS as trap:
            text = str(trap).strip()
            if STOP_MESSAGE not in text:
                self.finish(EXIT_TRAP, f"the program trapped in {name}: {text}")
        except LinkError as err:  # a lazy stub whose function no module exports
            self.finish(EXIT_TRAP, f"the program trapped in {name}: {err}")

    def finish(self, code: int, error: str | None = None) -> None:
        """End the program with this outcome, unless another came first; stop every group."""
        with self._outcome_lock:
            if self._outcome is None:
                self._outcome = (code, error)
        self._stop.set()
        self.engine.increment_epoch()  # running groups stop at their next safe point

    def stopping(self) -> bool:
        return self._stop.is_set()

    def _join_threads(self, timeout: float | None) -> None:
        """Wait for the other threads (all of them within `timeout` seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in list(self.threads.values()):
            if thread is not threading.current_thread():
                self._await_thread(thread, deadline)

    def _await_thread(self, thread: threading.Thread, deadline: float | None) -> None:
        """Join `thread`; once the program is stopping, keep ticking the epoch so that a
        thread inside guest code reaches the safe point where it stops."""
        while thread.is_alive():
            if deadline is not None and time.monotonic() > deadline:
                return
            if self._stop.is_set():
                self.engine.increment_epoch()
            thread.join(TICK_INTERVAL)

    def _wind_up(self) -> RunResult:
        self._join_threads(JOIN_TIMEOUT)
        self.tracer.close()
        for group in self._created:
            runner = self.threads.get(group.thread_id, self._main_runner)
            if group.thread_id == 1 or not runner.is_alive():
                group.close()  # a thread stuck in a host sleep keeps its group until it ends
        assert self._outcome is not None
        code, error = self._outcome
        stdout = self._stdout.collect() if self._stdout else b""
        stderr = self._stderr.collect() if self._stderr else b""
        return RunResult(code, stdout, stderr, error)

    # ------------------------------------------------------------------ the topology lock
    @contextmanager
    def _topology_lock(self, group: InstanceGroup) -> Iterator[None]:
        """Held for every change of link topology. Waiting for it never blocks a broadcast:
        the waiting group keeps applying what the holder posts."""
        while not self._topology.acquire(timeout=0.001):
            group.service_pending()
            if self._stop.is_set():
                raise GuestExit(0)  # the coordinator already holds the program's outcome
        try:
            yield
        finally:
            self._topology.release()

    def _broadcast(self, instigator: InstanceGroup, op: LoadPlan | SlotAssignment | DescribeRequest
                   ) -> dict[int, PendingOperation]:
        """Every other live group applies `op` before the instigator's call returns.
        Returns what each group did with it (timings, and its state for a DescribeRequest)."""
        posted = {tid: g.post(op) for tid, g in self.groups.items() if g is not instigator}
        for tid, pending in posted.items():
            runner = self.threads.get(tid, self._main_runner)
            # Tick until it is applied: a tick that lands while a group's callback is already
            # running is absorbed by it, so a single tick could be lost.
            self.engine.increment_epoch()
            while not pending.done.wait(TICK_INTERVAL):
                if self._stop.is_set() or not runner.is_alive():
                    break  # a group that is gone has nothing left to apply
                self.engine.increment_epoch()
            if pending.error is not None:
                self.finish(EXIT_RUNTIME_ERROR,
                            f"thread {tid} could not apply a link operation: {pending.error}")
                raise GuestExit(EXIT_RUNTIME_ERROR)
        return {tid: p for tid, p in posted.items() if p.done.is_set()}

    def _verify(self, instigator: InstanceGroup, after: str,
                extra: InstanceGroup | None = None) -> float:
        """With --verify-groups: stop the program if any group disagrees. Returns seconds."""
        if not self.options.verify_groups:
            return 0.0
        started = time.perf_counter()
        states = [instigator.describe_state()]
        states += [p.state for p in self._broadcast(instigator, DescribeRequest()).values()
                   if p.state is not None]
        if extra is not None:
            states.append(extra.describe_state())
        difference = first_difference(states)
        if difference is not None:
            self.finish(EXIT_RUNTIME_ERROR, f"--verify-groups: after {after}: {difference}")
            raise GuestExit(EXIT_RUNTIME_ERROR)
        return time.perf_counter() - started

    def _trace_op(self, op: str, group: InstanceGroup, started: float, **fields: object
                  ) -> None:
        if self.tracer.enabled:
            self.tracer.record(op=op, thread=group.thread_id, groups=len(self.groups),
                               total_ms=ms(time.perf_counter() - started), **fields)

    # ------------------------------------------------------------------ LinkService
    def dlopen(self, group: InstanceGroup, name: str, ld_library_path: list[str] | None) -> int:
        started = time.perf_counter()
        with self._topology_lock(group):
            compiled_before = self.cache.compile_seconds
            try:
                outcome = self.linker.plan_load(name, ld_library_path)
            except LinkError as err:
                self._trace_op("dlopen", group, started, name=name, ok=False, error=str(err))
                raise
            planned = time.perf_counter()
            if isinstance(outcome, int):
                self._trace_op("dlopen", group, started, name=name, ok=True, handles=[outcome],
                               loaded=False)
                return outcome
            try:
                group.apply_load(outcome.plan, initialise=True)
            except LinkError as err:
                self.linker.abort(outcome)
                self._trace_op("dlopen", group, started, name=name, ok=False, error=str(err))
                raise
            applied = time.perf_counter()
            self.linker.commit(outcome)
            others = self._broadcast(group, outcome.plan)
            broadcast = time.perf_counter()
            verify_seconds = self._verify(group, f"dlopen {name}")
            self._trace_op(
                "dlopen", group, started, name=name, ok=True, loaded=True,
                handles=outcome.plan.handles, plan_ms=ms(planned - started),
                compile_ms=ms(self.cache.compile_seconds - compiled_before),
                apply_ms=ms(applied - planned), broadcast_ms=ms(broadcast - applied),
                group_apply_ms={str(t): ms(p.seconds) for t, p in others.items()},
                verify_ms=ms(verify_seconds))
            return outcome.names[name]

    def dlsym(self, group: InstanceGroup, handle: int, name: str) -> SymbolAddress:
        with self._topology_lock(group):
            started = time.perf_counter()
            address, assignment = self.linker.dlsym(handle, name)
            if assignment is not None:
                group.apply_slot(assignment)
                others = self._broadcast(group, assignment)
                broadcast = time.perf_counter()
                verify_seconds = self._verify(group, f"dlsym {name}")
                self._trace_op("dlsym", group, started, name=name, ok=True,
                               slot=assignment.slot, broadcast_ms=ms(broadcast - started),
                               group_apply_ms={str(t): ms(p.seconds) for t, p in others.items()},
                               verify_ms=ms(verify_seconds))
            return address

    def cwd(self) -> str:
        return self.fs.cwd

    def change_directory(self, path: str) -> bool:
        """chdir: the new guest directory must be visible (one cwd for the whole program)."""
        target = self.fs.absolute(path)
        if not self.fs.is_directory(target):
            return False
        self.fs.cwd = target
        return True

    def is_side_module(self, handle: int) -> bool:
        return handle != MAIN_HANDLE and handle in self.linker.modules

    def resolve_stub(self, group: InstanceGroup, importer: int, name: str,
                     func_type: FuncType) -> tuple[int, str]:
        with self._topology_lock(group):
            return self.linker.resolve_stub(importer, name, func_type)

    def spawn_thread(self, group: InstanceGroup, start_arg: int) -> int:
        """wasi-threads `thread-spawn`: a new group replays the log, then a thread runs
        `wasi_thread_start(tid, start_arg)` in it. Returns the tid, or -errno."""
        memory = self.group.memory_object
        if not isinstance(memory, wasmtime.SharedMemory):
            return -EAGAIN  # threads need a shared memory
        with self._topology_lock(group):
            tid = next(self._thread_ids)
            if tid > MAX_THREAD_ID:
                return -EAGAIN
            child = self._new_group(tid)
            child.attach(memory, self.linker.table_length)
            plans, slots = self.linker.replay_log()
            main_has_dylink = self.linker.modules[MAIN_HANDLE].module.dylink is not None
            started = time.perf_counter()
            try:
                child.replay(plans, slots, main_has_dylink)
            except LinkError as err:
                self.finish(EXIT_RUNTIME_ERROR, f"cannot start thread {tid}: {err}")
                return -EAGAIN
            replayed = time.perf_counter()
            verify_seconds = self._verify(group, f"spawning thread {tid}", extra=child)
            self.groups[tid] = child
            self._trace_op("spawn", group, started, ok=True, new_thread=tid,
                           replay_ms=ms(replayed - started), verify_ms=ms(verify_seconds))
            thread = threading.Thread(target=self._thread_body, args=(child, start_arg),
                                      name=f"wasm-thread-{tid}", daemon=True)
            self.threads[tid] = thread
            thread.start()
            return tid

    def _thread_body(self, group: InstanceGroup, start_arg: int) -> None:
        try:
            self._run_thread(group, "wasi_thread_start", group.thread_id, start_arg)
        finally:
            # Leave the group set under the lock, so no broadcast waits for this group.
            while not self._topology.acquire(timeout=0.001):
                group.service_pending()
            try:
                self.groups.pop(group.thread_id, None)
            finally:
                self._topology.release()


def run_program(path: str, args: Sequence[str] = (), *, env: dict[str, str] | None = None,
                dirs: Sequence[str] = (), lib_paths: Sequence[str] = (), cwd: str = "/",
                capture_output: bool = True, cache_dir: Path | None = None,
                verify_groups: bool = False, trace: Path | None = None) -> RunResult:
    """Run a WebAssembly program to completion and return its exit code and output.

    `dirs` are `HOST::GUEST` directory mappings (the guest sees nothing else); `lib_paths` are
    host directories searched for libraries after the guest's own library directories. With
    `capture_output` (the default) the program's stdout and stderr come back in the result.
    """
    options = ProgramOptions(args=args, env=dict(env or {}), dirs=dirs, lib_paths=lib_paths,
                             cwd=cwd, capture_output=capture_output, cache_dir=cache_dir,
                             verify_groups=verify_groups, trace=trace)
    return Program(path, options).run()
