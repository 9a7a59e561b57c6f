"""`wasmgroup batch`: many programs from a job file, over one `Runtime` (or Ray actors), their
results streamed into a results file.

    from wasmgroup.orchestrator.batch import run_batch
    summary = run_batch("jobs.jsonl", "results.jsonl", jobs=4, resume=True)
    summary = run_batch("jobs.jsonl", "results.jsonl", ray="auto")  # over a Ray cluster

Guarantees: the whole job file is checked before any job runs; at most `jobs` programs run at
once; each job's result line is written (and flushed) as it finishes, exactly once; a job that
fails (cannot start, traps, times out, runs out of memory, loses its worker) fails alone and
the batch goes on. With `resume`, jobs whose id is already in the results file are skipped.
The job file's format: `batch_jobs.py`; the results file's: `batch_results.py`.
"""

from __future__ import annotations

import logging
import queue
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from wasmgroup.orchestrator.batch_jobs import Job, JobFileError, parse_jobs
from wasmgroup.orchestrator.batch_results import DEFAULT_INLINE_LIMIT, ResultsFile
from wasmgroup.orchestrator.program import EXIT_RUNTIME_ERROR, RunResult
from wasmgroup.shared.cpus import usable_cpus
from wasmgroup.shared.errors import WasmgroupError

log = logging.getLogger("wasmgroup")
TICK = 0.2  # seconds between progress updates while no job finishes
PLAIN_PROGRESS_EVERY = 10.0  # seconds between progress lines when stderr is not a terminal
SHOWN_FAILURES = 20  # failed jobs listed in the summary; the rest are in the results file


class BatchError(WasmgroupError):
    """The batch cannot run or go on (the message says why); no job result is lost. `status`:
    the command's exit status (2: it could not start; 1: it stopped with jobs left)."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------- what a batch reports
@dataclass
class BatchSummary:
    """What a batch did: counts over the whole job file (jobs done before a resume included)."""
    total: int = 0
    ran: int = 0  # this time
    ok: int = 0  # this time, exit status 0
    skipped: int = 0  # already in the results file
    skipped_failed: int = 0  # of those, not ok
    seconds: float = 0.0
    walls: list[float] = field(default_factory=list)  # of the jobs run this time
    failures: list[tuple[str | int, int, str | None]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return self.ran - self.ok

    @property
    def all_ok(self) -> bool:
        return self.failed == 0 and self.skipped_failed == 0

    @property
    def rate(self) -> float:
        return self.ran / self.seconds if self.seconds > 0 else 0.0

    def lines(self, results: Path) -> list[str]:
        p50, p95 = percentile(self.walls, 50), percentile(self.walls, 95)
        text = [f"{self.ran} jobs in {self.seconds:.2f} s ({self.rate:.1f} jobs/s): "
                f"{self.ok} ok, {self.failed} failed; wall p50 {p50:.3f} s, p95 {p95:.3f} s"]
        if self.skipped:
            text.append(f"{self.skipped} skipped, already in {results} "
                        f"({self.skipped_failed} of them failed)")
        if self.failures:
            text.append("failed:")
            for job_id, code, error in self.failures[:SHOWN_FAILURES]:
                reason = f": {short_error(error)}" if error else ""
                text.append(f"  {job_id}: exit {code}{reason}")
            if len(self.failures) > SHOWN_FAILURES:
                text.append(f"  ... and {len(self.failures) - SHOWN_FAILURES} more")
        text.append(f"results: {results}")
        return text


def short_error(error: str) -> str:
    """One line of a result's error: a trap's first line and its cause, without the
    backtrace between them."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    head = lines[0].split(": error while executing", 1)[0]
    return f"{head}: {lines[-1]}"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank) of `values`; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def is_ok(result: RunResult) -> bool:
    return result.exit_code == 0 and result.error is None


class Progress:
    """Done, failed, running, rate and ETA: a bar redrawn in place on a terminal, a plain line
    every `every` seconds otherwise, nothing when `quiet`."""

    def __init__(self, total: int, stream: IO[str] | None = None, quiet: bool = False,
                 every: float | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.terminal = self.stream.isatty()
        self.every = every if every is not None else (TICK if self.terminal
                                                     else PLAIN_PROGRESS_EVERY)
        self.started = time.monotonic()
        self.done = self.failed = self.running = 0
        self._shown = self.started
        self._drawn = False

    def update(self, done: int, failed: int, running: int, force: bool = False) -> None:
        self.done, self.failed, self.running = done, failed, running
        now = time.monotonic()
        if self.quiet or (not force and now - self._shown < self.every):
            return
        self._shown = now
        elapsed = now - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        left = self.total - done
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        figures = (f"{done}/{self.total} done, {failed} failed, {running} running, "
                   f"{rate:.1f} jobs/s, ETA {eta}")
        if self.terminal:
            width = 24
            filled = width * done // self.total if self.total else width
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r[{bar}] {figures}\x1b[K")
            self._drawn = True
        else:
            self.stream.write(f"wasmgroup batch: {figures}\n")
        self.stream.flush()

    def finish(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


# ---------------------------------------------------------------------- running the jobs
@dataclass(frozen=True)
class BatchOptions:
    jobs: int | None = None  # programs at once (None: the CPUs, of each node under Ray)
    timeout: float | None = None  # for jobs that give none
    memory_limit: int | None = None


Finished = Callable[[Job, RunResult, str | None], None]  # (job, result, node)


class Backend(Protocol):
    def run(self, jobs: Sequence[Job], options: BatchOptions, finished: Finished,
            tick: Callable[[int], None]) -> None:
        """Run every job, calling `finished` once per job (in this thread) and `tick(running)`
        at least every TICK seconds."""


def failed_result(error: str) -> RunResult:
    return RunResult(EXIT_RUNTIME_ERROR, error=error)


class LocalBackend:
    """The jobs over one Runtime in this process, `jobs` at once."""

    def run(self, jobs: Sequence[Job], options: BatchOptions, finished: Finished,
            tick: Callable[[int], None]) -> None:
        from wasmgroup.orchestrator.runtime import Runtime

        done: queue.SimpleQueue[tuple[Job, Future[RunResult]]] = queue.SimpleQueue()
        waiting = iter(jobs)
        running = 0
        at_once = options.jobs or usable_cpus()
        runtime = Runtime(workers=at_once)

        def start_next() -> bool:
            job = next(waiting, None)
            if job is None:
                return False
            future: Future[RunResult]
            try:
                future = runtime.submit(job.program, job.args, **job.run_options(
                    options.timeout, options.memory_limit))
            except WasmgroupError as err:  # refused before it started
                future = Future()
                future.set_result(failed_result(f"cannot start: {err}"))

            def report(future: Future[RunResult], job: Job = job) -> None:
                done.put((job, future))

            future.add_done_callback(report)
            return True

        # Interrupted (Ctrl-C), the programs still running are cancelled: their results are
        # not written, and a resume runs them again.
        with runtime:
            while running < at_once and start_next():
                running += 1
            while running:
                try:
                    job, future = done.get(timeout=TICK)
                except queue.Empty:
                    tick(running)
                    continue
                running -= 1
                finished(job, outcome(future), None)
                if start_next():
                    running += 1
                tick(running)


def outcome(future: Future[RunResult]) -> RunResult:
    """The future's result; an exception escaping the Runtime fails that job alone."""
    error = future.exception()
    if error is not None:
        return failed_result(f"internal error: {type(error).__name__}: {error}")
    return future.result()


def run_batch(jobs_file: str | Path, results: str | Path | None = None, *,
              jobs: int | None = None, output_dir: str | Path | None = None,
              inline_limit: int = DEFAULT_INLINE_LIMIT, resume: bool = False,
              timeout: float | None = None, memory_limit: int | None = None,
              ray: str | bool = False, per_node: int | None = None,
              progress: Progress | None = None) -> BatchSummary:
    """Run every job of `jobs_file` not yet in `results` (default: JOBS.results.jsonl beside
    the job file); see the module docstring. `ray`: False for this machine, True (RAY_ADDRESS
    or a new local Ray) or a cluster address for Ray; `per_node` bounds the jobs in flight per
    Ray actor. Raises JobFileError (a bad job file), ResultsFileError or BatchError."""
    jobs_path = Path(jobs_file)
    results_path = Path(results) if results is not None else default_results_path(jobs_path)
    try:
        text = jobs_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise BatchError(f"cannot read {jobs_path}: {reason}") from None
    all_jobs = parse_jobs(text, str(jobs_path.absolute().parent))
    backend: Backend
    if ray is not False:
        from wasmgroup.orchestrator.batch_ray import RayBackend

        backend = RayBackend(None if ray is True else str(ray), per_node=per_node)
    else:
        backend = LocalBackend()
    sink = ResultsFile(results_path, resume=resume,
                       output_dir=None if output_dir is None else Path(output_dir),
                       inline_limit=inline_limit)
    summary = BatchSummary(total=len(all_jobs))
    todo = [job for job in all_jobs if job.key not in sink.done]
    summary.skipped = len(all_jobs) - len(todo)
    summary.skipped_failed = sum(
        1 for job in all_jobs if job.key in sink.done
        and not (sink.done[job.key].get("exit_code") == 0
                 and sink.done[job.key].get("error") is None))
    progress = progress or Progress(len(todo), quiet=True)
    progress.total = len(todo)

    def finished(job: Job, result: RunResult, node: str | None) -> None:
        sink.write(job, result, node)
        summary.ran += 1
        summary.walls.append(result.wall_s)
        if is_ok(result):
            summary.ok += 1
        else:
            summary.failures.append((job.id, result.exit_code, result.error))
        log.info("job %s: exit %d in %.3f s%s", job.id, result.exit_code, result.wall_s,
                 f" on {node}" if node else "")

    def tick(running: int) -> None:
        progress.update(summary.ran, summary.failed, running)

    options = BatchOptions(jobs=jobs, timeout=timeout,
                           memory_limit=memory_limit)
    started = time.monotonic()
    try:
        if todo:
            backend.run(todo, options, finished, tick)
    finally:
        summary.seconds = time.monotonic() - started
        progress.finish()
        sink.close()
    return summary


def default_results_path(jobs_file: Path) -> Path:
    """JOBS.results.jsonl beside JOBS.jsonl."""
    stem = jobs_file.name.removesuffix(".jsonl").removesuffix(".json")
    return jobs_file.with_name(f"{stem}.results.jsonl")


__all__ = ["BatchError", "BatchSummary", "JobFileError", "Progress", "run_batch"]
