"""Threaded programs: one instance group per wasm thread over one shared memory.

Every group runs in a worker process of its own. Each program runs several times: thread
interleavings differ between runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from leaks import assert_nothing_left, open_fds

from wasmgroup.orchestrator import program as program_module
from wasmgroup.orchestrator.program import EXIT_TRAP, Program, ProgramOptions, run_program

RUNS = 3


@pytest.fixture(scope="module", autouse=True)
def warm_runtime(guests: Path) -> None:
    """wasmtime starts its I/O runtime (an epoll, an eventfd, a pipe) once per process."""
    run_program(str(guests / "threads" / "pthreads.wasm"))






@pytest.mark.parametrize("run", range(RUNS))
def test_pthreads_mutex_condvar_join(guests: Path, run: int) -> None:
    fds = open_fds()
    result = run_program(str(guests / "threads" / "pthreads.wasm"))
    assert result.exit_code == 0, result.error
    assert result.stdout.decode().splitlines() == [
        "pthreads: 8 threads ready", "counter=80000 joined=8 retsum=36 tls_ok=8"]
    assert_nothing_left(fds)


@pytest.mark.parametrize("run", range(RUNS))
def test_raw_atomic_wait_notify(guests: Path, run: int) -> None:
    result = run_program(str(guests / "threads" / "raw_atomics.wasm"))
    assert result.exit_code == 0, result.error
    assert result.stdout.decode().splitlines()[-1] == "counter=10000 joined=4 tls_ok=4 main_tls=7"


def test_each_thread_has_its_own_group(guests: Path) -> None:
    program = Program(str(guests / "threads" / "pthreads.wasm"),
                      ProgramOptions(capture_output=True))
    spawned: list[int] = []
    original = program.spawn_thread

    def counting_spawn(group: object, start_arg: int) -> int:
        tid = original(group, start_arg)  # type: ignore[arg-type]
        spawned.append(tid)
        return tid

    program.spawn_thread = counting_spawn  # type: ignore[method-assign]
    assert program.run().exit_code == 0
    assert sorted(spawned) == list(range(2, 10))  # 8 threads, 8 new groups
    assert len(program.threads) == 8


@pytest.mark.parametrize("run", range(RUNS))
def test_threads_share_a_plugin_with_per_thread_tls(guests: Path, run: int) -> None:
    result = run_program(str(guests / "threads" / "mt_host.wasm"),
                         dirs=[f"{guests / 'threads'}::/"])
    assert result.exit_code == 0, result.error
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "mt_host: main mtplug_work(5)=26 calls=1"
    assert sorted(lines[1:5]) == [f"thread {i}: sum=332834500 calls=1000 same_handle=1"
                                  for i in range(4)]
    assert lines[5] == "mt_host: joined=4 total=1998005 main_calls=1"


def test_a_standby_group_gets_what_it_missed_when_a_spawn_takes_it(
        guests: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Standby groups are sent the operations broadcast since they were built only once link
    operations pause, or when a spawn takes one: with no pause long enough, every spawn that
    takes one sends it the loads and slots it missed first, and its thread can use them
    (threads dlopen and call each other's libraries while main spawns)."""
    monkeypatch.setattr(program_module, "STANDBY_QUIET", 3600.0)
    sent: list[int] = []
    send_backlog = Program._send_backlog

    def counting(self: Program, standby: Any) -> None:
        sent.append(len(self._standby_backlog.get(standby, [])))
        send_backlog(self, standby)

    monkeypatch.setattr(Program, "_send_backlog", counting)
    result = run_program(str(guests / "threads" / "topology.wasm"),
                         ["dl-concurrent-open-and-spawn"], dirs=[f"{guests / 'threads'}::/"])
    assert result.exit_code == 0, result.error
    assert result.stdout.decode() == "topology dl-concurrent-open-and-spawn ok\n"
    assert any(sent), sent  # spawns took standby groups that had missed link operations


@pytest.mark.parametrize("run", range(RUNS))
def test_dlopen_while_threads_spin_in_guest_code(guests: Path, run: int) -> None:
    """Threads spinning without host calls apply the load and the dlsym'd slot (epoch
    interruption), so they can call the new function through their own tables."""
    fds = open_fds()
    result = run_program(str(guests / "threads" / "dlopen_spin.wasm"),
                         dirs=[f"{guests / 'threads'}::/"])
    assert result.exit_code == 0, result.error
    assert result.stdout.decode().splitlines() == [
        "dlopen_spin: 3 threads spinning",
        "thread 0: mtplug_work(1)=2", "thread 1: mtplug_work(2)=5", "thread 2: mtplug_work(3)=10",
        "dlopen_spin: total=6"]
    assert_nothing_left(fds)


def test_trap_in_a_thread_ends_the_program_naming_it(guests: Path) -> None:
    fds = open_fds()
    result = run_program(str(guests / "threads" / "thread_faults.wasm"), ["trap"])
    assert result.exit_code == EXIT_TRAP
    assert result.error is not None
    assert result.error.startswith("the program trapped in thread 2:")
    assert "thread_faults.wasm!crash_here" in result.error
    assert result.stdout.decode().splitlines() == ["thread_faults: trap"]  # main never resumed
    assert_nothing_left(fds)


def test_exit_from_a_thread_ends_the_program_with_its_code(guests: Path) -> None:
    fds = open_fds()
    result = run_program(str(guests / "threads" / "thread_faults.wasm"), ["exit"])
    assert result.exit_code == 3, result.error
    assert result.error is None
    assert result.stdout.decode().splitlines() == ["thread_faults: exit"]
    assert_nothing_left(fds)


def test_memory_malloced_in_one_thread_is_freed_by_another(guests: Path) -> None:
    result = run_program(str(guests / "threads" / "thread_faults.wasm"), ["malloc"])
    assert result.exit_code == 0, result.error
    assert result.stdout.decode().splitlines()[-1] == \
        "malloc: 1000 blocks checked and freed by main"


@pytest.mark.parametrize("run", range(2))
@pytest.mark.parametrize("scenario", ["dl-concurrent-open-and-spawn",
                                      "dl-spawn-under-dlsym-worker",
                                      "spawn-under-nanosleep-worker"])
def test_seed_topology_scenarios(guests: Path, scenario: str, run: int) -> None:
    fds = open_fds()
    program = Program(str(guests / "threads" / "topology.wasm"), ProgramOptions(
        args=[scenario], dirs=[f"{guests / 'threads'}::/"], capture_output=True))
    result = program.run()
    assert result.exit_code == 0, (result.stdout, result.error)
    assert result.stdout.decode() == f"topology {scenario} ok\n"
    if scenario == "dl-concurrent-open-and-spawn":
        # 8 distinct names for one file: 8 real loads, each replayed by later threads.
        assert len(program.linker.modules) == 1 + 8
        assert len(program.threads) == 49
        # Each thread placed 8 TLS blocks, in arenas that ended threads hand on: a few
        # arenas in all (as many as threads were alive at once), not one per thread.
        arenas = program._free_arenas + [a for group in program._arenas.values() for a in group]
        assert 1 <= len(arenas) <= 8
    del program
    assert_nothing_left(fds)


def test_dlopen_with_parked_groups(guests: Path) -> None:
    """The latency benchmark's program, for correctness only: 4 groups, 5 real loads, every
    parked group applies each load (checked by --verify-groups)."""
    program = Program(str(guests / "threads" / "dlopen_latency.wasm"), ProgramOptions(
        args=["4", "5"], dirs=[f"{guests / 'threads'}::/"], capture_output=True,
        verify_groups=True))
    result = program.run()
    assert result.exit_code == 0, result.error
    assert result.stdout.decode().startswith("dlopen_latency: groups=4 rounds=5 p50_us=")
    assert len(program.linker.modules) == 1 + 5


def test_standby_groups_follow_every_link_operation(guests: Path, tmp_path: Path) -> None:
    """Threads started from a standby group (replayed ahead of the spawn, then kept current
    by every broadcast) call into libraries loaded after the standby was built."""
    trace = tmp_path / "trace.jsonl"
    result = run_program(str(guests / "threads" / "topology.wasm"),
                         ["dl-concurrent-open-and-spawn"], dirs=[f"{guests / 'threads'}::/"],
                         trace=trace)
    assert result.exit_code == 0, (result.stdout, result.error)
    assert result.stdout.decode() == "topology dl-concurrent-open-and-spawn ok\n"
    spawns = [json.loads(line) for line in trace.read_text().splitlines()
              if json.loads(line)["op"] == "spawn"]
    assert len(spawns) == 49  # the opener thread and 48 more
    # Not every one: a spawn that finds the standby still being built while an idle worker
    # is ready builds a fresh group beside it (20-24 of 49 from a standby on a loaded machine).
    assert sum(1 for s in spawns if s.get("standby")) >= 12


def test_a_kept_group_gives_the_next_thread_fresh_tls(guests: Path, tmp_path: Path) -> None:
    """Threads started one after another: the group of one that exited is kept as the next
    thread's standby group (trace: `kept`), and that thread still finds the plugin's and the
    main module's thread-locals at their initial values (the program checks every round)."""
    trace = tmp_path / "trace.jsonl"
    fds = open_fds()
    result = run_program(str(guests / "threads" / "tls_reuse.wasm"), ["16"],
                         dirs=[f"{guests / 'threads'}::/"], trace=trace)
    assert result.exit_code == 0, (result.stdout, result.error)
    assert result.stdout.decode() == "tls_reuse: rounds=16 plugin_calls=1 main_tls=8\n"
    exits = [json.loads(line) for line in trace.read_text().splitlines()
             if json.loads(line)["op"] == "thread_exit"]
    assert any(e.get("kept") for e in exits), exits
    assert_nothing_left(fds)


def test_spawns_beyond_max_threads_get_eagain(guests: Path, caplog: pytest.LogCaptureFixture
                                              ) -> None:
    """A guest that spawns without end meets the live-thread cap (the main thread counts):
    pthread_create returns EAGAIN, the program goes on, and its sleeping threads' workers are
    all reaped when it exits."""
    fds = open_fds()
    with caplog.at_level("WARNING", logger="wasmgroup"):
        result = run_program(str(guests / "threads" / "spawn_until_refused.wasm"),
                             max_threads=6)
    assert (result.exit_code, result.error) == (0, None)
    assert result.stdout == b"created 5 threads, then: Resource temporarily unavailable\n"
    assert [r.getMessage() for r in caplog.records] == [
        "thread limit reached (--max-threads 6, the main thread included): a thread spawn "
        "gets EAGAIN"]
    assert_nothing_left(fds)

