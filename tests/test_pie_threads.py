"""The program shape Wasmer runs: a freestanding PIE main (dylink.0, imported memory, table and
__stack_pointer) whose threads dlopen (tests/programs/pie_threads/).

Each new thread of a PIE main gets its own `__stack_pointer`, set by its `wasi_thread_start`;
threads dlopen different libraries at once, call each other's dlsym'd pointers, and stay parked
(host futex, raw atomic.wait32, a spinning loop, thread_sleep) while main dlopens.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from leaks import assert_nothing_left, open_fds
from wasm_bytes import dylink, mem_info, module, name, section, uleb

from wasmgroup.orchestrator.program import EXIT_RUNTIME_ERROR, Program, run_program
from wasmgroup.orchestrator.workers import ServeElsewhere, WorkerProcess

WAITS = ("futex", "atomic", "spin", "sleep")


def run_pie_threads(guests: Path, variant: str, *args: str, verify: bool = False):
    folder = guests / "pie_threads"
    return run_program(str(folder / f"main_{variant}.wasm"), args, dirs=[f"{folder}::/"],
                       verify_groups=verify)


def expected_lines(threads: int, wait: str) -> list[str]:
    return [f"pie_threads: {threads} threads, {wait}",
            f"phase 1: {threads} libraries loaded by {threads} threads, pointers ok",
            f"phase 2: libpt{threads}.so loaded while threads {wait}, {threads} sums ok",
            "pie_threads: done"]


@pytest.mark.parametrize("variant", ["v2", "wasi"])
@pytest.mark.parametrize("wait", WAITS)
def test_pie_threads_dlopen_while_others_wait(guests: Path, variant: str, wait: str) -> None:
    fds = open_fds()
    result = run_pie_threads(guests, variant, wait, "4")
    assert result.exit_code == 0, (result.error, result.stdout)
    assert result.stdout.decode().splitlines() == expected_lines(4, wait)
    assert_nothing_left(fds)


@pytest.mark.parametrize("wait", WAITS)
def test_pie_threads_verify_groups_eight_threads(guests: Path, wait: str) -> None:
    result = run_pie_threads(guests, "v2", wait, "8", verify=True)
    assert result.exit_code == 0, (result.error, result.stdout)
    assert result.stdout.decode().splitlines() == expected_lines(8, wait)


@pytest.mark.parametrize("run", range(3))
def test_pie_threads_again_and_again(guests: Path, run: int) -> None:
    result = run_pie_threads(guests, "wasi", "futex", "6")
    assert result.exit_code == 0, (result.error, result.stdout)
    assert result.stdout.decode().splitlines() == expected_lines(6, "futex")


def test_spawn_without_wasi_thread_start_fails_with_notcapable(guests: Path) -> None:
    """As in Wasmer: the spawn call returns errno 76 and the program goes on."""
    fds = open_fds()
    result = run_pie_threads(guests, "nostart")
    assert result.exit_code == 0, result.error
    assert result.stdout.decode().splitlines() == ["spawn: errno=76", "pie_threads: done"]
    assert_nothing_left(fds)


def test_pie_main_defining_its_own_memory_is_refused(guests: Path) -> None:
    fds = open_fds()
    result = run_pie_threads(guests, "ownmemory")
    assert result.exit_code == EXIT_RUNTIME_ERROR
    assert result.error is not None and "\n" not in result.error
    assert result.error.endswith("main_ownmemory.wasm: a main module with dylink.0 must import "
                                 "its memory as env.memory (link it with --import-memory)")
    assert result.stdout == b""
    assert_nothing_left(fds)


def test_a_load_failing_in_its_instigator_is_undone_in_every_other_group(
        guests: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The other groups apply a dlopen beside its instigator, provisionally; when the
    instigator's constructor traps, they drop it again (checked by --verify-groups right
    after the undo) and the guest gets NULL with the trap."""
    folder = tmp_path / "pie_threads"
    shutil.copytree(guests / "pie_threads", folder)
    body = b"\x00\x0b"  # unreachable
    (folder / "lib" / "libpt1.so").write_bytes(module(
        dylink(mem_info(8, 2, 0, 0)), section(1, uleb(1) + b"\x60\x00\x00"),
        section(3, uleb(1) + uleb(0)),
        section(7, uleb(1) + name("__wasm_call_ctors") + b"\x00" + uleb(0)),
        section(10, uleb(1) + uleb(len(body) + 1) + b"\x00" + body)))
    undo = Program._undo_load
    undone: list[list[int]] = []

    def checked_undo(self: Program, pending: Any, exclude: Any) -> None:
        undo(self, pending, exclude)
        undone.append(pending.plan.handles)
        self._verify("the undo")  # every group as the instigator: the module gone

    monkeypatch.setattr(Program, "_undo_load", checked_undo)
    fds = open_fds()
    result = run_program(str(folder / "bench.wasm"), ["2", "2", "0"], verify_groups=True,
                         env={"LD_LIBRARY_PATH": "/lib"}, dirs=[f"{folder}::/"])
    assert result.exit_code == 1 and result.error is None, result.error
    last = result.stdout.decode().splitlines()[-1]
    assert last.startswith("bench: FAIL dlopen: ") and "__wasm_call_ctors failed" in last
    assert undone == [[3]]
    assert_nothing_left(fds)


@pytest.mark.parametrize("idle", [0, 2])
def test_read_only_link_queries_take_no_round_trip(guests: Path, idle: int,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """dlsym of data and dlopen of a loaded name are answered by the group itself, from its
    replica of the committed link state; only a dlopen that loads and a dlsym that needs a new
    table slot reach the coordinator (bench.c: per library, dlopen, dlsym of a function, dlsym
    of data, dlopen of the same name again)."""
    asked: list[str] = []
    serve = Program.worker_call

    def counting(self: Program, worker: object, name: str, args: list) -> object:
        try:
            value = serve(self, worker, name, args)  # type: ignore[arg-type]
        except ServeElsewhere:  # the same request, served on the request thread instead
            raise
        except Exception:
            asked.append(name)
            raise
        asked.append(name)
        return value

    monkeypatch.setattr(Program, "worker_call", counting)
    folder = guests / "pie_threads"
    result = run_program(str(folder / "bench.wasm"), [str(idle), "3", "0"],
                         dirs=[f"{folder}::/"])
    assert result.exit_code == 0, (result.error, result.stdout)
    assert result.stdout.decode().splitlines()[-1] == "bench: ok"
    assert asked.count("dlopen") == 3 and asked.count("dlsym") == 3


def test_a_slot_reaches_groups_parked_in_futex_wait_without_waking_them(
        guests: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dlsym's new slot is acknowledged by a group parked in futex_wait as soon as its
    worker reads it (applied 0 s so far), not after that group woke up and applied it; the
    group fills the slot before it runs guest code again: released, every thread calls main's
    new pointers (phase 2 of main.c), and the program checks their sums."""
    applied: list[float] = []
    complete = WorkerProcess._complete

    def recording(self: WorkerProcess, message: dict[str, Any]) -> None:
        applied.append(message["seconds"])
        complete(self, message)

    monkeypatch.setattr(WorkerProcess, "_complete", recording)
    result = run_pie_threads(guests, "v2", "futex", "4")
    assert result.exit_code == 0, (result.error, result.stdout)
    assert result.stdout.decode().splitlines() == expected_lines(4, "futex")
    # Main's three dlsyms of functions in phase 2 reach four threads parked in futex_wait
    # (one that has not parked again since applying main's dlopen applies it as before).
    assert applied.count(0.0) > 0, applied
