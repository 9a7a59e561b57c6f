"""`wasmgroup stress`: rerun one program many times under perturbed schedules and report every
run that went wrong, with the seed that replays it.

Every run goes through a `Runtime` with `verify_groups` on (all groups are checked to agree
after every link operation) and a perturbation seed: run i of a stress with base seed B uses
seed B + i, so `--seed B+i --runs 1` replays that run (the same delays in every thread; as far
as the operating system's own timing allows, see worker/perturb.py). The expected output is a
file's contents (exit status 0 expected), or else that of a reference run made first, without
perturbation.

A run fails, by the first that applies: a *hang* (stopped by its timeout), a *verify
difference* (the groups disagreed), a *trap* (status 134: a trap or abort()), another *exit
status* than expected (125 included: could not run), *wrong output* (stdout differs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field

from wasmgroup.orchestrator.program import (
    DEFAULT_PERTURB_MAX_DELAY,
    EXIT_TRAP,
    VERIFY_FAILURE,
    RunResult,
)
from wasmgroup.orchestrator.runtime import Runtime

HANG = "hang"
VERIFY_DIFFERENCE = "verify difference"
TRAP = "trap"
EXIT_STATUS = "exit status"
WRONG_OUTPUT = "wrong output"
FAILURE_KINDS = (WRONG_OUTPUT, VERIFY_DIFFERENCE, HANG, TRAP, EXIT_STATUS)
REFERENCE_TIMEOUT_FACTOR = 10  # without --timeout: runs get this many times the reference's
MIN_DEFAULT_TIMEOUT = 10.0  # ... but at least this many seconds
DEFAULT_TIMEOUT = 60.0  # seconds per run, without a reference run (--expect) or --timeout


@dataclass(frozen=True)
class StressPlan:
    """What to stress: the program, how it runs, how often, from which seed."""
    program: str
    args: tuple[str, ...] = ()
    runs: int = 100
    seed: int = 0  # run i uses seed + i
    jobs: int = 1  # runs at once
    timeout: float | None = None  # per run; None: from the reference run (see module doc)
    expect: bytes | None = None  # expected stdout; None: a reference run's
    max_delay: float = DEFAULT_PERTURB_MAX_DELAY
    run_options: Mapping[str, object] = field(default_factory=dict)  # env, dirs, lib_paths...


@dataclass
class Outcome:
    """One run: its index and seed, its result, and how it failed (None: it passed)."""
    index: int
    seed: int
    result: RunResult
    kind: str | None


@dataclass
class StressReport:
    plan: StressPlan
    expected_stdout: bytes
    expected_exit: int
    timeout: float
    outcomes: list[Outcome] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def failures(self) -> list[Outcome]:
        return sorted((o for o in self.outcomes if o.kind is not None), key=lambda o: o.index)

    def by_kind(self) -> dict[str, list[Outcome]]:
        failures = self.failures
        return {kind: [o for o in failures if o.kind == kind] for kind in FAILURE_KINDS}


class ReferenceFailed(Exception):
    """The unperturbed reference run did not succeed: nothing to compare the runs with."""


def classify(result: RunResult, expected_stdout: bytes, expected_exit: int) -> str | None:
    """How a run failed, by the first kind that applies (see the module doc); None: passed."""
    if result.timed_out:
        return HANG
    if result.error is not None and result.error.startswith(VERIFY_FAILURE):
        return VERIFY_DIFFERENCE
    if result.exit_code == EXIT_TRAP:
        return TRAP
    if result.exit_code != expected_exit:
        return EXIT_STATUS
    if result.stdout != expected_stdout:
        return WRONG_OUTPUT
    return None


def first_difference(got: bytes, expected: bytes) -> str:
    """Where stdout first differs from the expectation, as one line."""
    got_lines, want_lines = got.splitlines(), expected.splitlines()
    for number, (mine, theirs) in enumerate(zip(got_lines, want_lines, strict=False), 1):
        if mine != theirs:
            return f"line {number}: {_shown(mine)} instead of {_shown(theirs)}"
    if len(got_lines) != len(want_lines):
        number = min(len(got_lines), len(want_lines)) + 1
        if len(got_lines) < len(want_lines):
            return f"line {number}: missing ({_shown(want_lines[number - 1])} expected)"
        return f"line {number}: {_shown(got_lines[number - 1])} not expected"
    return "the same lines, other line endings"


def _shown(line: bytes, limit: int = 100) -> str:
    text = line.decode(errors="replace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def failure_text(outcome: Outcome, report: StressReport) -> str:
    """What went wrong in a failed run, as one line."""
    result = outcome.result
    if outcome.kind == WRONG_OUTPUT:
        return first_difference(result.stdout, report.expected_stdout)
    if outcome.kind == EXIT_STATUS and result.error is None:
        return f"status {result.exit_code} instead of {report.expected_exit}"
    return (result.error or f"status {result.exit_code}").splitlines()[0]


def run_stress(plan: StressPlan, on_reference: Callable[[RunResult], None] | None = None,
               on_outcome: Callable[[Outcome, StressReport], None] | None = None
               ) -> StressReport:
    """Run the reference run (unless `plan.expect`), then `plan.runs` perturbed runs, at most
    `plan.jobs` at once; `on_outcome` hears of each run as it ends. Raises ReferenceFailed."""
    started = time.monotonic()
    options = dict(plan.run_options)
    with Runtime(workers=plan.jobs) as runtime:
        expected_exit = 0
        timeout = plan.timeout or DEFAULT_TIMEOUT
        if plan.expect is None:
            reference = runtime.run(plan.program, plan.args, verify_groups=True,
                                    timeout=timeout, **options)
            if on_reference is not None:
                on_reference(reference)
            if reference.error is not None or reference.timed_out:
                raise ReferenceFailed(
                    f"the reference run (unperturbed) failed: "
                    f"{(reference.error or 'timed out').splitlines()[0]}")
            expected_stdout, expected_exit = reference.stdout, reference.exit_code
            if plan.timeout is None:
                timeout = max(MIN_DEFAULT_TIMEOUT, REFERENCE_TIMEOUT_FACTOR * reference.wall_s)
        else:
            expected_stdout = plan.expect
        report = StressReport(plan, expected_stdout, expected_exit, timeout)
        running: dict[Future[RunResult], int] = {}
        submitted = 0
        try:
            while submitted < plan.runs or running:
                # At most `jobs` runs submitted at once: an interrupted stress leaves no queue.
                while submitted < plan.runs and len(running) < plan.jobs:
                    future = runtime.submit(
                        plan.program, plan.args, verify_groups=True, timeout=timeout,
                        perturb_seed=plan.seed + submitted, perturb_max_delay=plan.max_delay,
                        **options)
                    running[future] = submitted
                    submitted += 1
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=running.__getitem__):
                    index = running.pop(future)
                    result = future.result()
                    outcome = Outcome(index, plan.seed + index, result,
                                      classify(result, expected_stdout, expected_exit))
                    report.outcomes.append(outcome)
                    if on_outcome is not None:
                        on_outcome(outcome, report)
        finally:
            report.elapsed = time.monotonic() - started
    return report


def summary_lines(report: StressReport, seeds_shown: int = 10) -> list[str]:
    """The end-of-stress summary: runs, failures by kind (with their seeds), timings."""
    plan = report.plan
    failures = report.failures
    walls = sorted(o.result.wall_s for o in report.outcomes)
    last_seed = plan.seed + plan.runs - 1
    seeds = f"seed {plan.seed}" if plan.runs == 1 else f"seeds {plan.seed}..{last_seed}"
    lines = [f"stress: {len(report.outcomes)} runs ({seeds}, delays up to "
             f"{plan.max_delay * 1000:g} ms, --verify-groups), {len(failures)} failed"]
    for kind, outcomes in report.by_kind().items():
        shown = " ".join(str(o.seed) for o in outcomes[:seeds_shown])
        more = f" (+{len(outcomes) - seeds_shown} more)" if len(outcomes) > seeds_shown else ""
        lines.append(f"  {kind:<18} {len(outcomes):>5}" + (f"   seeds {shown}{more}"
                                                            if outcomes else ""))
    if walls:
        p50 = walls[len(walls) // 2]
        lines.append(f"  per run: p50 {p50:.2f} s, max {walls[-1]:.2f} s, timeout "
                     f"{report.timeout:.1f} s; {len(walls) / max(report.elapsed, 1e-9):.2f} "
                     f"runs/s in {report.elapsed:.1f} s")
    return lines


__all__ = ["EXIT_STATUS", "FAILURE_KINDS", "HANG", "TRAP", "VERIFY_DIFFERENCE", "WRONG_OUTPUT",
           "Outcome", "ReferenceFailed", "StressPlan", "StressReport", "classify",
           "failure_text", "first_difference", "run_stress", "summary_lines"]
