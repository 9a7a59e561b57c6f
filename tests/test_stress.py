"""`wasmgroup stress`: seeded schedule perturbation finds a planted ordering bug
(stress/lazy_registry.wasm: two threads whose dlopens only a sleep orders), prints the seeds of
the failing runs, and `--seed S --runs 1` replays them; every failure kind, a stress where
every run passes, bad usage, and the perturbation's off path.

The planted bug: thread "ext" sleeps STAGGER ms before its dlopen, thread "core" does not.
Unperturbed, core always takes the topology lock first; with delays of up to 100 ms before each
link request, core's is often late by more than STAGGER, and ext's constructor finds no
registry. A seed fixes every delay; the OS still decides when a thread wakes, so a run whose
delays differ by about STAGGER could go either way: replay is tested as what it is, "most
replays fail again", not "every replay".
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from leaks import assert_nothing_left, open_fds
from test_cli import usage_error, wasmgroup
from test_interrupts import Terminal, assert_gone, wait_for

from wasmgroup import Runtime, UsageError
from wasmgroup.orchestrator.program import EXIT_RUNTIME_ERROR, EXIT_TRAP, RunResult
from wasmgroup.orchestrator.stress import (
    EXIT_STATUS,
    HANG,
    TRAP,
    VERIFY_DIFFERENCE,
    WRONG_OUTPUT,
    StressPlan,
    classify,
    first_difference,
    run_stress,
)
from wasmgroup.worker.perturb import PAUSE_PROBABILITY, Perturbation, from_config

EXPECTED = b"registry: core ext\n"
STAGGER_MS = "20"
FAILURE_LINE = re.compile(r"^run (\d+) \(seed (\d+)\): (.+?): (.*); replay: --seed (\d+) "
                          r"--runs 1$", re.M)


@pytest.fixture(scope="module")
def registry(guests: Path) -> Path:
    return guests / "stress"


def stress(registry: Path, *options: str, stagger: str = STAGGER_MS
           ) -> subprocess.CompletedProcess[str]:
    return wasmgroup("stress", "--dir", f"{registry}::/", *options,
                     registry / "lazy_registry.wasm", "--", stagger, timeout=600)


def test_stress_finds_the_planted_bug_and_its_seed_replays_it(registry: Path,
                                                              tmp_path: Path) -> None:
    expect = tmp_path / "expected.txt"
    expect.write_bytes(EXPECTED)
    found = stress(registry, "--runs", "16", "--jobs", "2", "--seed", "0", "--max-delay",
                   "100ms", "--expect", str(expect))
    assert found.returncode == 1, found.stderr
    failures = FAILURE_LINE.findall(found.stdout)
    assert failures, found.stdout
    for index, seed, kind, what, replay_seed in failures:
        assert int(seed) == int(index) == int(replay_seed)  # run i uses seed 0 + i
        assert kind == WRONG_OUTPUT
        # ext's constructor ran first and found no registry.
        assert what == ("line 1: 'registry: core (lost: ext)' instead of "
                        "'registry: core ext'"), what
    summary = found.stdout.splitlines()[-7:]
    assert summary[0] == (f"stress: 16 runs (seeds 0..15, delays up to 100 ms, "
                          f"--verify-groups), {len(failures)} failed")
    seeds = sorted((f[1] for f in failures), key=int)
    assert re.match(rf"  wrong output +{len(failures)}   seeds {' '.join(seeds[:10])}$",
                    summary[1]), summary
    for line in summary[2:6]:  # verify difference, hang, trap, exit status: none
        assert re.fullmatch(r"  [a-z ]+ +0", line), line
    assert "stress: 16/16 runs" in found.stderr  # progress

    # Replay: each failing seed alone (against the expected output in a file) fails again,
    # in most tries (see the module doc: the seed decides the delays, not the OS's wake-ups).
    seeds = seeds[:3]
    replays = [stress(registry, "--seed", seed, "--runs", "1", "--expect", str(expect),
                      "--max-delay", "100ms", "-q") for seed in seeds]
    again = [seed for seed, replay in zip(seeds, replays, strict=True)
             if replay.returncode == 1 and f"run 0 (seed {seed}): wrong output" in replay.stdout]
    assert len(again) * 2 > len(replays), [r.stdout for r in replays]
    assert all(r.stderr == "" for r in replays)  # -q: no header, no progress


def test_a_stress_where_every_run_passes(registry: Path) -> None:
    # A stagger far beyond every delay: the sleep always orders the loads.
    passed = stress(registry, "--runs", "3", "--jobs", "2", "--seed", "7", "--max-delay", "5ms",
                    "-v", stagger="400")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    lines = passed.stdout.splitlines()
    assert lines[0] == (f"stress: 3 runs of {registry / 'lazy_registry.wasm'} (seeds 7..9, 2 "
                        "at once); expected output: a reference run first")
    for i, line in enumerate(sorted(lines[1:4])):
        assert re.fullmatch(rf"run {i} \(seed {7 + i}\): passed in \d+\.\d\d s", line), line
    assert lines[4] == "stress: 3 runs (seeds 7..9, delays up to 5 ms, --verify-groups), 0 failed"
    assert re.match(r"  per run: p50 \d+\.\d\d s, max \d+\.\d\d s, timeout \d+\.\d s; ",
                    lines[-1])


@pytest.mark.parametrize("args, message", [
    (["--runs", "0"], "argument --runs: 0 is not between 1 and 1000000"),
    (["--runs", "many"], "argument --runs: 'many' is not a whole number"),
    (["--jobs", "0"], "argument --jobs: 0 is not between 1 and 64"),
    (["--seed", "-1"], "argument --seed: -1 is not between 0"),
    (["--max-delay", "2s"], "argument --max-delay: '2s' is more than 1 s"),
    (["--timeout", "soon"], "argument --timeout: 'soon' is not a duration"),
    (["--expect", "/nonexistent/expected.txt"],
     "argument --expect: cannot read '/nonexistent/expected.txt': No such file or directory"),
    (["--cwd", "/nowhere"], "argument --cwd: '/nowhere' is not a directory the guest can see"),
])
def test_bad_usage_is_one_line_and_status_2(registry: Path, args: list[str],
                                            message: str) -> None:
    line = usage_error(wasmgroup("stress", *args, registry / "lazy_registry.wasm"), "stress")
    assert line.startswith(f"wasmgroup stress: error: {message}"), line


def test_a_missing_program_is_bad_usage(tmp_path: Path) -> None:
    line = usage_error(wasmgroup("stress", "--runs", "2"), "stress")
    assert line == ("wasmgroup stress: error: the program to stress is missing: wasmgroup "
                    "stress [OPTIONS] PROG.wasm [-- ARGS]")
    line = usage_error(wasmgroup("stress", tmp_path / "gone.wasm"), "stress")
    assert line == f"wasmgroup stress: error: '{tmp_path / 'gone.wasm'}' is not a file"


def test_a_reference_run_that_fails_stops_the_stress(guests: Path) -> None:
    proc = wasmgroup("stress", "--runs", "5", "--timeout", "1s", guests / "cli" / "probe.wasm",
                     "sleep")
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        "wasmgroup stress: the reference run (unperturbed) failed: timed out after 1 s "
        "(--timeout): every thread stopped")
    assert "runs (seeds" not in proc.stdout  # no summary of runs never made


@pytest.fixture
def ctrl_c_reaches_the_programs() -> Iterator[None]:
    """As in test_interrupts: a test run started in the background by a shell inherits SIGINT
    ignored, and so would the programs it starts."""
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c_reaches_the_programs")
def test_ctrl_c_stops_a_stress_with_130(guests: Path, tmp_path: Path) -> None:
    """At a terminal: no new runs, the runs in flight end (here by their 3 s timeout), one
    line, 130, nothing left."""
    expect = tmp_path / "expected.txt"
    expect.write_bytes(b"sleeping\n")
    terminal = Terminal(["stress", "--runs", "50", "--jobs", "2", "--timeout", "3s",
                         "--expect", str(expect), str(guests / "cli" / "probe.wasm"), "sleep"])
    wait_for(lambda: len(terminal.process.children(recursive=True)) >= 2, timeout=60)
    workers = terminal.process.children(recursive=True)
    terminal.ctrl_c()
    code, lines = terminal.finish(timeout=60)
    assert_gone(workers)
    assert code == 130, lines
    assert lines[-1] == "wasmgroup stress: interrupted", lines
    # No run started after ^C: at most the two in flight end (none is reported once the
    # stress is interrupted).
    assert len([line for line in lines if line.startswith("run ")]) <= 2, lines


@pytest.mark.parametrize("program, args, expect, kind, text", [
    ("cli/probe.wasm", ["sleep"], b"sleeping\n", HANG, "timed out after 2 s"),
    ("threads/thread_faults.wasm", ["trap"], b"", TRAP, "the program trapped in thread 2"),
    ("cli/probe.wasm", ["bogus"], b"", EXIT_STATUS, None),
    ("cli/probe.wasm", ["env", "GREETING"], b"GREETING=bye\n", WRONG_OUTPUT, None),
])
def test_each_failure_kind(guests: Path, program: str, args: list[str], expect: bytes,
                           kind: str, text: str | None) -> None:
    fds = open_fds()
    seen = []
    plan = StressPlan(str(guests / program), tuple(args), runs=2, seed=41, jobs=2,
                      expect=expect, timeout=2 if kind == HANG else 120,
                      run_options={"env": {"GREETING": "hello"}})
    report = run_stress(plan, on_outcome=lambda outcome, _: seen.append(outcome.seed))
    assert sorted(seen) == [41, 42]
    assert [o.kind for o in report.failures] == [kind, kind]
    assert report.by_kind()[kind] == report.failures
    if text is not None:
        assert all(text in (o.result.error or "") for o in report.failures)
    if kind == EXIT_STATUS:
        assert {o.result.exit_code for o in report.failures} == {2}
    assert_nothing_left(fds)


def test_classify_by_the_first_kind_that_applies() -> None:
    assert classify(RunResult(0, b"ok\n"), b"ok\n", 0) is None
    assert classify(RunResult(0, b"ko\n"), b"ok\n", 0) == WRONG_OUTPUT
    assert classify(RunResult(3, b"ok\n"), b"ok\n", 0) == EXIT_STATUS
    assert classify(RunResult(3, b"ok\n"), b"ok\n", 3) is None
    assert classify(RunResult(EXIT_TRAP, b"", error="trapped"), b"ok\n", 0) == TRAP
    difference = RunResult(EXIT_RUNTIME_ERROR, error="--verify-groups: after dlopen: thread 3 "
                                                     "differs from thread 1: table slot 7")
    assert classify(difference, b"ok\n", 0) == VERIFY_DIFFERENCE
    assert classify(RunResult(124, b"ok\n", error="timed out", timed_out=True), b"ok\n",
                    0) == HANG
    assert first_difference(b"a\nb\n", b"a\nc\n") == "line 2: 'b' instead of 'c'"
    assert first_difference(b"a\n", b"a\nc\n") == "line 2: missing ('c' expected)"
    assert first_difference(b"a\nb\n", b"a\n") == "line 2: 'b' not expected"


def test_a_threads_delays_come_from_its_seed_and_id_alone() -> None:
    def draws(seed: int, thread: int) -> list[float]:
        stream = Perturbation(seed, thread, 1.0)._random
        return [stream.random() for _ in range(20)]

    assert draws(5, 2) == draws(5, 2)  # a replay draws the same delays
    assert draws(5, 2) != draws(5, 3) and draws(5, 2) != draws(6, 2)
    assert 0 < PAUSE_PROBABILITY < 1
    assert from_config(None, 1) is None  # no seed: no perturbation at all
    assert from_config({"seed": 5, "max_delay": 0.01}, 2) is not None


def test_perturbation_off_by_default_and_checked(registry: Path) -> None:
    with Runtime(workers=2) as runtime:
        with pytest.raises(UsageError, match="perturb_seed must be a non-negative integer"):
            runtime.submit(registry / "lazy_registry.wasm", perturb_seed=-3)
        with pytest.raises(UsageError, match="perturb_max_delay must be a positive number"):
            runtime.submit(registry / "lazy_registry.wasm", perturb_seed=1,
                           perturb_max_delay=0)
        # Unperturbed, the 20 ms stagger always orders the loads.
        runs = [runtime.submit(registry / "lazy_registry.wasm", [STAGGER_MS],
                               dirs=[f"{registry}::/"], verify_groups=True) for _ in range(2)]
        for run in runs:
            result = run.result()
            assert (result.exit_code, result.error, result.stdout) == (0, None, EXPECTED)


def test_completion_knows_stress() -> None:
    bash = wasmgroup("completion", "bash").stdout
    case = bash[bash.index("        stress)"):]
    assert "--runs" in case.splitlines()[1] and "--dir" in case.splitlines()[2]
