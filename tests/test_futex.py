"""shared/futex.py: the wait that a group's own wake word ends (how a link operation reaches a
thread parked in futex_wait without waking every other thread on the guest's futex)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import wasmtime

from wasmgroup.orchestrator.program import run_program
from wasmgroup.shared.futex import (
    Spinner,
    WakeWord,
    futex_wait,
    futex_waitv_works,
    futex_wake,
)
from wasmgroup.worker.host import native

SECOND = 1_000_000_000


def _waiting(target: object, *args: object) -> tuple[threading.Thread, list[str]]:
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(target(*args)))  # type: ignore
    thread.start()
    time.sleep(0.2)  # asleep in the kernel by now (a wake before it sleeps also counts)
    return thread, outcome


@pytest.fixture
def word() -> ctypes.c_uint32:
    return ctypes.c_uint32(7)


def test_a_wake_ends_only_the_waiter_of_its_own_word(word: ctypes.c_uint32) -> None:
    if not futex_waitv_works():
        pytest.skip("no futex_waitv on this kernel")
    address = ctypes.addressof(word)
    mine, other = WakeWord(), WakeWord()
    waiter, outcome = _waiting(mine.wait, address, 7, mine.value, 10 * SECOND)
    bystander, seen = _waiting(other.wait, address, 7, other.value, 10 * SECOND)
    mine.wake()
    waiter.join(5)
    assert outcome == ["wake"]
    assert seen == []  # still asleep: the guest's futex was not woken
    futex_wake(address, 1)
    bystander.join(5)
    assert seen == ["woken"]


def test_a_wake_before_the_wait_is_not_lost(word: ctypes.c_uint32) -> None:
    wake = WakeWord()
    seen = wake.value
    wake.wake()  # between reading the word and sleeping: the kernel sees it changed
    started = time.monotonic()
    outcome = wake.wait(ctypes.addressof(word), 7, seen, SECOND // 2)
    assert outcome == ("wake" if futex_waitv_works() else "timeout")
    if futex_waitv_works():
        assert time.monotonic() - started < 1


def test_the_guest_word_still_decides(word: ctypes.c_uint32) -> None:
    wake = WakeWord()
    address = ctypes.addressof(word)
    assert wake.wait(address, 8, wake.value, SECOND) == "mismatch"
    started = time.monotonic()
    assert wake.wait(address, 7, wake.value, 50_000_000) == "timeout"
    assert 0.04 < time.monotonic() - started < 2


FUTEX_CALLS = """(module
  (import "wasix_32v1" "futex_wait" (func $wait (param i32 i32 i32 i32) (result i32)))
  (import "wasix_32v1" "futex_wake" (func $wake (param i32 i32) (result i32)))
  (import "wasix_32v1" "futex_wake_all" (func $wake_all (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  MEMORY
  (func $expect (param $got i32) (param $want i32) (param $step i32)
    (if (i32.ne (local.get $got) (local.get $want)) (then (call $exit (local.get $step)))))
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 5))  ;; the futex word; results at 8
    ;; pointers outside memory: EMEMVIOLATION (78), nothing waits
    (call $expect (call $wait (i32.const 65534) (i32.const 0) (i32.const 0) (i32.const 8))
                  (i32.const 78) (i32.const 1))
    (call $expect (call $wait (i32.const 0) (i32.const 5) (i32.const 0) (i32.const 65536))
                  (i32.const 78) (i32.const 2))
    (call $expect (call $wait (i32.const 0) (i32.const 5) (i32.const 65536) (i32.const 8))
                  (i32.const 78) (i32.const 3))
    (call $expect (call $wake (i32.const -4) (i32.const 8)) (i32.const 78) (i32.const 4))
    (call $expect (call $wake_all (i32.const 0) (i32.const -1)) (i32.const 78) (i32.const 5))
    ;; the word differs: back at once, "woken"
    (call $expect (call $wait (i32.const 0) (i32.const 6) (i32.const 0) (i32.const 8))
                  (i32.const 0) (i32.const 6))
    (call $expect (i32.load8_u (i32.const 8)) (i32.const 1) (i32.const 7))
    ;; a 1 ms timeout (an option_timestamp at 64: tag 1, nanoseconds at 72): not woken
    (i32.store8 (i32.const 64) (i32.const 1))
    (i64.store (i32.const 72) (i64.const 1000000))
    (call $expect (call $wait (i32.const 0) (i32.const 5) (i32.const 64) (i32.const 8))
                  (i32.const 0) (i32.const 8))
    (call $expect (i32.load8_u (i32.const 8)) (i32.const 0) (i32.const 9))
    ;; a wake with nobody waiting: no one woken
    (i32.store8 (i32.const 8) (i32.const 7))
    (call $expect (call $wake_all (i32.const 0) (i32.const 8)) (i32.const 0) (i32.const 10))
    (call $expect (i32.load8_u (i32.const 8)) (i32.const 0) (i32.const 11))
    (call $exit (i32.const 0))))
"""


@pytest.mark.parametrize("memory", ['(memory (export "memory") 1 1)',
                                    '(import "env" "memory" (memory 1 1 shared))'])
def test_futex_calls_check_every_pointer(tmp_path: Path, memory: str) -> None:
    """The wasix futex calls against the main's own memory and the program's shared one:
    a pointer outside memory fails the call (EMEMVIOLATION) before anything waits; a word
    that differs returns at once; a timeout ends the wait not woken. The program exits
    with the number of the first step that went wrong."""
    program = tmp_path / "futex_calls.wat"
    program.write_text(FUTEX_CALLS.replace("MEMORY", memory))
    result = run_program(str(program))
    assert (result.exit_code, result.error) == (0, None), result.stderr


# ---------------------------------------------------------------- the spin before a sleep
def _loadavg(tmp_path: Path, running: int) -> str:
    path = tmp_path / f"loadavg-{running}"
    path.write_text(f"0.52 0.58 0.59 {running}/312 4242\n")  # the kernel's format
    return str(path)


def _view(word: ctypes.c_uint32) -> memoryview:
    return memoryview((ctypes.c_char * 4).from_address(ctypes.addressof(word))).cast("B")


def _later(seconds: float, action: object) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(seconds), action()))  # type: ignore
    thread.start()
    return thread


def test_a_spin_sees_the_word_change(tmp_path: Path, word: ctypes.c_uint32) -> None:
    spinner = Spinner(budget_ns=10 * SECOND, loadavg=_loadavg(tmp_path, 1), cpus=2)
    wake = WakeWord()
    setter = _later(0.01, lambda: setattr(word, "value", 8))
    started = time.monotonic()
    assert spinner.until_changed(_view(word), 0, 7, wake, wake.value)
    assert time.monotonic() - started < 5
    setter.join()
    assert spinner.until_changed(_view(word), 0, 7, wake, wake.value)  # changed already


def test_a_spin_ends_at_its_budget_or_the_wake_word(tmp_path: Path,
                                                     word: ctypes.c_uint32) -> None:
    spinner = Spinner(budget_ns=30_000_000, loadavg=_loadavg(tmp_path, 2), cpus=2)
    wake = WakeWord()
    started = time.monotonic()
    assert not spinner.until_changed(_view(word), 0, 7, wake, wake.value)
    assert time.monotonic() - started >= 0.03
    long = Spinner(budget_ns=10 * SECOND, loadavg=_loadavg(tmp_path, 1), cpus=2)
    waker = _later(0.01, wake.wake)  # work for this thread: it stops watching
    started = time.monotonic()
    assert not long.until_changed(_view(word), 0, 7, wake, wake.value)
    assert time.monotonic() - started < 5
    waker.join()
    assert word.value == 7


def test_no_spin_without_a_spare_cpu(tmp_path: Path, word: ctypes.c_uint32) -> None:
    """More runnable threads than CPUs (or no budget, an unreadable count, one CPU: the
    thread waited for cannot run meanwhile): the caller sleeps at once, whatever the word
    does."""
    wake = WakeWord()
    for spinner in (Spinner(budget_ns=10 * SECOND, loadavg=_loadavg(tmp_path, 3), cpus=2),
                    Spinner(budget_ns=0, loadavg=_loadavg(tmp_path, 1), cpus=2),
                    Spinner(budget_ns=10 * SECOND, loadavg=str(tmp_path / "none"), cpus=2),
                    Spinner(budget_ns=10 * SECOND, loadavg=_loadavg(tmp_path, 1), cpus=1)):
        started = time.monotonic()
        assert not spinner.until_changed(_view(word), 0, 7, wake, wake.value)
        assert time.monotonic() - started < 1


def test_the_machine_is_looked_at_again_after_a_while(tmp_path: Path) -> None:
    path = _loadavg(tmp_path, 1)
    spinner = Spinner(loadavg=path, cpus=2, every_ns=50_000_000)
    now = time.perf_counter_ns()
    assert spinner.spare_cpu(now)
    Path(path).write_text("4.00 3.00 2.00 5/312 4242\n")
    assert spinner.spare_cpu(now + 1_000_000)  # the count is a few ms old at most
    assert not spinner.spare_cpu(now + 60_000_000)


# ---------------------------------------------------------------- the wake calls in C
WAKE_CALLER = """(module
  (import "wasix_32v1" "futex_wake" (func $wake (param i32 i32) (result i32)))
  (import "wasix_32v1" "futex_wake_all" (func $wake_all (param i32 i32) (result i32)))
  (func (export "wake") (param i32 i32) (result i32) (call $wake (local.get 0) (local.get 1)))
  (func (export "wake_all") (param i32 i32) (result i32)
    (call $wake_all (local.get 0) (local.get 1))))"""


@pytest.fixture(scope="module")
def native_library(tmp_path_factory: pytest.TempPathFactory) -> object:
    """futexcalls.c built here as scripts/setup-venv builds it (whether or not the checkout
    has its own build)."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler: the Python futex calls serve")
    built = tmp_path_factory.mktemp("native") / "_futexcalls.so"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(built), str(native.SOURCE)],
                   check=True)
    lib = native.load(built)
    assert lib is not None
    return lib


def test_the_c_wake_calls_wake_check_pointers_and_report(native_library: object) -> None:
    """futex_wake / futex_wake_all in C over a memory (here a buffer of this process): a
    sleeper on the word is woken and the result byte says so; with nobody asleep it says
    0; a word or result pointer outside the memory is EMEMVIOLATION (78) and wakes nobody."""
    memory = (ctypes.c_uint32 * 64)()
    base = ctypes.addressof(memory)
    store = wasmtime.Store(wasmtime.Engine())
    calls = native.NativeCalls(native_library, base, ctypes.sizeof(memory))  # type: ignore
    i32 = wasmtime.ValType.i32()
    ty = wasmtime.FuncType([i32, i32], [i32])
    imports = [calls.func(store, ty, "futex_wake"), calls.func(store, ty, "futex_wake_all")]
    exports = wasmtime.Instance(store, wasmtime.Module(store.engine, WAKE_CALLER),
                                imports).exports(store)
    result = ctypes.cast(base + 8, ctypes.POINTER(ctypes.c_uint8))
    for name in ("wake", "wake_all"):
        memory[0] = 7
        sleeper, outcome = _waiting(futex_wait, base, 7, 10 * SECOND)
        assert exports[name](store, 0, 8) == 0
        sleeper.join(5)
        assert outcome == ["woken"]
        assert result[0] == 1
        assert exports[name](store, 0, 8) == 0
        assert result[0] == 0  # nobody asleep
        result[0] = 9
        assert exports[name](store, 64 * 4 - 3, 8) == 78  # the word runs past the end
        assert exports[name](store, -4, 8) == 78
        assert exports[name](store, 0, 64 * 4) == 78
        assert exports[name](store, 0, -1) == 78
        assert result[0] == 9  # nothing written


def test_the_c_wake_calls_are_not_used_when_turned_off_or_stale(
        native_library: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert native.load(tmp_path / "missing.so") is None
    monkeypatch.setenv("WASMGROUP_NATIVE_FUTEX", "0")
    assert native.load(native.SOURCE) is None
