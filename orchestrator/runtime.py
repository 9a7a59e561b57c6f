"""The public Python API: a `Runtime` that runs many programs, and `run` for one.

A Runtime is the coordinator's long-lived part (orchestrator/runtime_parts.py): one engine,
one compile cache and one pool of warm worker processes, shared by every program it runs. A
program starts on a worker that is already running (no Python start, no engine; its modules
already deserialized if it ran before), and each worker a program used goes back to the pool
once the program ends, reset: it keeps nothing of that program (worker/main.py checks).

    with wasmgroup.Runtime(workers=4) as rt:
        result = rt.run("prog.wasm", ["arg"], dirs=["data::/data"], timeout=10)
        futures = [rt.submit("prog.wasm", [str(i)]) for i in range(100)]

One error model: every failure to run a program (missing or invalid module, a bad `dirs`
entry, a library missing at start, a trap, a timeout, a lost worker) comes back as a
`RunResult` whose `error` is one line (status 125 when wasmgroup could not run it, else the
program's own outcome); only misuse of the API (a closed runtime, an argument of the wrong
type) raises, always `UsageError`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from wasmgroup.orchestrator.cache import DEFAULT_MAX_MODULE_SIZE
from wasmgroup.orchestrator.program import (
    DEFAULT_PERTURB_MAX_DELAY,
    EXIT_RUNTIME_ERROR,
    EXIT_TIMEOUT,
    Program,
    ProgramOptions,
    RunResult,
    cannot_start,
)
from wasmgroup.orchestrator.runtime_parts import RuntimeParts
from wasmgroup.shared.cpus import usable_cpus
from wasmgroup.shared.errors import WasmgroupError

Stdin = bytes | str | os.PathLike[str] | IO[bytes] | None
SPARE_WORKERS = 2  # idle workers a Runtime keeps beyond one per program it runs at once


class UsageError(WasmgroupError, ValueError):
    """The API was misused (the message says how); never raised for a program's failure."""


@dataclass(frozen=True)
class RunRequest:
    """One program to run, checked: what `Runtime.run`/`submit` take as keywords."""
    program: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None
    dirs: tuple[str, ...] = ()  # HOST::GUEST (or HOST) mappings
    lib_paths: tuple[str, ...] = ()
    cwd: str = "/"
    stdin: Stdin = None  # bytes, a host file path, an open binary file, or None (empty)
    timeout: float | None = None  # seconds; then every thread is stopped, timed_out set
    # Bytes the linear memory may reach (memory.grow fails beyond), and the private memory
    # the program may add to its workers (then it is stopped: "memory limit exceeded").
    memory_limit: int | None = None
    # Threads live at once, the main thread included (a spawn beyond gets EAGAIN); None: one
    # per 16 MiB of the machine's memory (orchestrator/program.py, default_max_threads).
    max_threads: int | None = None
    capture_output: bool = True  # else the program writes to this process's stdout/stderr
    verify_groups: bool = False
    trace: Path | None = None
    # Seeded schedule perturbation (`wasmgroup stress`): random delays of at most
    # perturb_max_delay seconds at safe points and before acknowledgements; None: off.
    perturb_seed: int | None = None
    perturb_max_delay: float = DEFAULT_PERTURB_MAX_DELAY


def _check_request(program: object, args: object, options: dict[str, Any]) -> RunRequest:
    if not isinstance(program, str | os.PathLike):
        raise UsageError(f"program must be a path, not {type(program).__name__}")
    if isinstance(args, str | bytes) or not isinstance(args, Sequence) or not all(
            isinstance(a, str) for a in args):
        raise UsageError("args must be a sequence of strings")
    known = set(RunRequest.__dataclass_fields__) - {"program", "args"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(f"unknown run option {unknown[0]!r} (known: {', '.join(sorted(known))})")
    for name in ("dirs", "lib_paths"):
        value = options.get(name, ())
        if isinstance(value, str | bytes) or not all(isinstance(v, str | os.PathLike)
                                                     for v in value):
            raise UsageError(f"{name} must be a sequence of strings")
        options[name] = tuple(os.fspath(v) for v in value)
    env = options.get("env")
    if env is not None and not (isinstance(env, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        raise UsageError("env must map strings to strings")
    seed = options.get("perturb_seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise UsageError(f"perturb_seed must be a non-negative integer, not {seed!r}")
    for name in ("timeout", "memory_limit", "perturb_max_delay"):
        value = options.get(name)
        if value is not None and (not isinstance(value, int | float) or value <= 0):
            raise UsageError(f"{name} must be a positive number, not {value!r}")
    threads = options.get("max_threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise UsageError(f"max_threads must be a positive integer, not {threads!r}")
    stdin = options.get("stdin")
    if stdin is not None and not isinstance(stdin, bytes | str | os.PathLike) and not hasattr(
            stdin, "fileno"):
        raise UsageError("stdin must be bytes, a file path or an open file")
    if options.get("trace") is not None:
        options["trace"] = Path(options["trace"])
    return RunRequest(os.fspath(program), tuple(args), **options)


class _StdinSource:
    """The host descriptor the guest's fd 0 duplicates, for one run."""

    def __init__(self, stdin: Stdin) -> None:
        self._owned: int | None = None
        self.fd: int | None
        if stdin is None or stdin == b"":
            self._owned = os.open(os.devnull, os.O_RDONLY)  # as a shell's `< /dev/null`
        elif isinstance(stdin, bytes):
            # A file of the bytes, as a shell's `< file`: reads see them, then end-of-file.
            # In memory (a memfd), opened again read-only for the guest.
            data = os.memfd_create("wasmgroup-stdin", os.MFD_CLOEXEC)
            try:
                view = memoryview(stdin)
                while view:
                    view = view[os.write(data, view):]
                self._owned = os.open(f"/proc/self/fd/{data}", os.O_RDONLY)
            finally:
                os.close(data)
        elif isinstance(stdin, str | os.PathLike):
            self._owned = os.open(stdin, os.O_RDONLY)
        else:
            self.fd = stdin.fileno()
            return
        self.fd = self._owned

    def close(self) -> None:
        if self._owned is not None:
            os.close(self._owned)
            self._owned = None


CANCELLED = "cancelled"  # the error of a program a Runtime's cancel stopped


class _Cancel:
    """Stops one run of a Runtime, whether it has not started, is starting or runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._program: Program | None = None
        self.cancelled = False

    def attach(self, program: Program) -> None:
        with self._lock:
            self._program = program
            if self.cancelled:
                program.interrupt(CANCELLED)  # Program.run then never starts it

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            if self._program is not None:
                self._program.interrupt(CANCELLED)


def _run_request(request: RunRequest, cache_dir: Path | None, max_module_size: int,
                 parts: RuntimeParts | None, cancel: _Cancel | None = None) -> RunResult:
    """Run one request; with `parts` on a Runtime's warm workers, else on its own."""
    started = time.monotonic()
    stdin: _StdinSource | None = None
    program: Program | None = None
    try:
        stdin = _StdinSource(request.stdin)
        options = ProgramOptions(
            args=request.args, env=dict(request.env or {}), dirs=request.dirs,
            lib_paths=request.lib_paths, cwd=request.cwd,
            capture_output=request.capture_output, cache_dir=cache_dir,
            verify_groups=request.verify_groups, trace=request.trace,
            pool_size=0,  # one-shot: workers started as threads need them
            max_module_size=max_module_size, timeout=request.timeout,
            max_memory=request.memory_limit, max_worker_memory=request.memory_limit,
            stdin_fd=stdin.fd, perturb_seed=request.perturb_seed,
            perturb_max_delay=request.perturb_max_delay)
        if request.max_threads is not None:
            options.max_threads = request.max_threads
        program = Program(request.program, options, parts)
        if cancel is not None:
            cancel.attach(program)
        result = program.run()
        if result.error is None:
            result.verify_summary = program.verify_summary()
    except (WasmgroupError, OSError) as err:
        result = RunResult(EXIT_RUNTIME_ERROR,
                           error=cannot_start(err, request.program).splitlines()[0])
    finally:
        if program is not None:
            program.close()
        if stdin is not None:
            stdin.close()
    result.timed_out = result.exit_code == EXIT_TIMEOUT and request.timeout is not None \
        and result.error is not None and "timed out" in result.error
    result.wall_s = time.monotonic() - started
    return result


class Runtime:
    """Runs many programs, at most `workers` at once (default: the usable cores), over one
    warm pool of worker processes; thread-safe.

    `run` waits for a program's `RunResult`; `submit` returns a `Future` of it. A program that
    kills its worker, traps, hangs past its timeout or exceeds its memory limit fails alone.
    `close` (or leaving the `with` block) waits for submitted programs and stops every worker
    process: none is left, nor any shared-memory file or descriptor. `cancel` stops one
    program, `close(cancel=True)` all of them, as does leaving the `with` block by an exception
    (Ctrl-C included): a program that had not started never does (its future is cancelled), a
    running one ends at once with status 130 and the error "cancelled".
    """

    def __init__(self, workers: int | None = None, cache_dir: str | os.PathLike[str] | None = None,
                 *, max_module_size: int = DEFAULT_MAX_MODULE_SIZE) -> None:
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise UsageError(f"workers must be a positive integer, not {workers!r}")
        self.workers = workers or usable_cpus()
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.max_module_size = max_module_size
        # A main thread's worker per program running, and a few for their threads, ready.
        self.parts = RuntimeParts(self.workers + SPARE_WORKERS, self.cache_dir,
                                  max_module_size, keep=2 * (self.workers + SPARE_WORKERS),
                                  urgent=self.workers)
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="wasmgroup-run")
        self._lock = threading.Lock()
        self._closed = False
        self._runs: dict[Future[RunResult], _Cancel] = {}  # submitted, not yet done

    def submit(self, program: str | os.PathLike[str], args: Sequence[str] = (),
               **options: Any) -> Future[RunResult]:
        """Start running `program` (as soon as a slot is free); the future's result is its
        RunResult. Options: see `RunRequest`."""
        request = _check_request(program, args, options)
        cancel = _Cancel()
        with self._lock:
            if self._closed:
                raise UsageError("this Runtime is closed")
            future = self._executor.submit(_run_request, request, self.cache_dir,
                                           self.max_module_size, self.parts, cancel)
            self._runs[future] = cancel
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future[RunResult]) -> None:
        with self._lock:
            self._runs.pop(future, None)

    def run(self, program: str | os.PathLike[str], args: Sequence[str] = (),
            **options: Any) -> RunResult:
        """Run `program` to its end and return its RunResult. Interrupted while it waits
        (Ctrl-C), it cancels the program before the KeyboardInterrupt goes on."""
        future = self.submit(program, args, **options)
        try:
            return future.result()
        except BaseException:
            self.cancel(future)
            raise

    def cancel(self, future: Future[RunResult]) -> bool:
        """Stop the program of `future` (one `submit` returned): not started, it never starts
        (the future is cancelled); running, it ends at once (status 130, error "cancelled").
        False when it had already ended (or is not this Runtime's)."""
        with self._lock:
            cancel = self._runs.get(future)
        if cancel is None:
            return False
        if future.cancel():
            return True
        cancel.cancel()
        return True

    def close(self, cancel: bool = False) -> None:
        """Wait for submitted programs (with `cancel`, stop them first), then release every
        worker (idempotent)."""
        with self._lock:
            first, self._closed = not self._closed, True
            runs = list(self._runs) if cancel else []
        for future in runs:
            self.cancel(future)
        self._executor.shutdown(wait=True)
        if first:
            self.parts.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(cancel=exc_type is not None)


def run(program: str | os.PathLike[str], args: Sequence[str] = (), **options: Any) -> RunResult:
    """Run one program on workers of its own, started for it (one per thread, when the
    thread starts) and stopped after it (see `Runtime.run` for the options)."""
    request = _check_request(program, args, options)
    return _run_request(request, None, DEFAULT_MAX_MODULE_SIZE, None)


__all__ = ["CANCELLED", "RunRequest", "RunResult", "Runtime", "UsageError", "run"]
