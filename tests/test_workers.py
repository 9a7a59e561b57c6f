"""Worker processes: one per thread, supervision, protocol failures, nothing left behind.

Every test checks with psutil that no worker process (nor a zombie) survives, and that no
descriptor (socket, memfd, pipe) or /dev/shm entry leaked.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import psutil
import pytest
import wasmtime
from leaks import assert_nothing_left, open_fds

from wasmgroup.orchestrator.program import (
    EXIT_RUNTIME_ERROR,
    Program,
    ProgramOptions,
    RunResult,
    run_program,
)
from wasmgroup.orchestrator.workers import WorkerProcess
from wasmgroup.shared import protocol


@pytest.fixture(scope="module", autouse=True)
def warm_runtime(guests: Path) -> None:
    """wasmtime starts its I/O runtime (an epoll, an eventfd, a pipe) once per process."""
    run_program(str(guests / "threads" / "pthreads.wasm"))






def run_in_background(program: Program) -> tuple[threading.Thread, list[RunResult]]:
    results: list[RunResult] = []
    runner = threading.Thread(target=lambda: results.append(program.run()), daemon=True)
    runner.start()
    return runner, results


def wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_n_threads_run_in_n_distinct_worker_processes(guests: Path) -> None:
    fds = open_fds()
    program = Program(str(guests / "threads" / "pthreads.wasm"),
                      ProgramOptions(capture_output=True))
    result = program.run()
    assert result.exit_code == 0, result.error
    assert program.main_worker is not None
    pids = {program.main_worker.pid} | {w.pid for w in program.threads.values()}
    # 8 threads and main, all alive at once (they wait for each other): 9 processes.
    assert len(program.threads) == 8
    assert len(pids) == 9
    assert os.getpid() not in pids
    assert_nothing_left(fds)


def test_a_killed_worker_ends_the_job_with_a_clear_error(guests: Path) -> None:
    fds = open_fds()
    program = Program(str(guests / "threads" / "compute.wasm"),
                      ProgramOptions(args=["2", "100000000000"], capture_output=True))
    runner, results = run_in_background(program)
    wait_for(lambda: 2 in program.groups)
    victim = program.groups[2]
    os.kill(victim.pid, signal.SIGKILL)
    runner.join(30)
    assert not runner.is_alive()
    result = results[0]
    assert result.exit_code == EXIT_RUNTIME_ERROR
    assert result.error == (f"the worker process of thread 2 (pid {victim.pid}) killed by "
                            "SIGKILL")
    assert_nothing_left(fds)


def test_a_killed_main_worker_ends_the_job(tmp_path: Path) -> None:
    fds = open_fds()
    prog = tmp_path / "spin.wasm"
    # It imports thread-spawn (never called), so its pool keeps idle workers too.
    prog.write_bytes(wasmtime.wat2wasm(
        '(module (import "wasi" "thread-spawn" (func (param i32) (result i32)))'
        ' (memory (export "memory") 1) (func (export "_start") (loop (br 0))))'))
    program = Program(str(prog), ProgramOptions(capture_output=True))
    runner, results = run_in_background(program)
    wait_for(lambda: program.main_worker is not None and 1 in program.groups)
    assert program.main_worker is not None
    pid = program.main_worker.pid
    time.sleep(0.2)
    os.kill(pid, signal.SIGTERM)
    runner.join(30)
    assert results[0].exit_code == EXIT_RUNTIME_ERROR
    assert results[0].error == f"the worker process of the main thread (pid {pid}) killed by " \
                               "SIGTERM"
    assert_nothing_left(fds)


class Recorder:
    """A WorkerListener that only records what happened."""

    def __init__(self) -> None:
        self.lost: list[str] = []
        self.messages: list[dict[str, Any]] = []

    def worker_message(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        self.messages.append(message)

    def worker_call(self, worker: WorkerProcess, name: str, args: list[Any]) -> Any:
        return None

    def worker_lost(self, worker: WorkerProcess, reason: str) -> None:
        self.lost.append(reason)


FAKE_WORKER = r"""
import msgpack, socket, struct, sys
sock = socket.socket(fileno=int(sys.argv[-1]))
def frame(message):
    body = msgpack.packb(message)
    sock.sendall(struct.pack(">I", len(body)) + body)
frame({"v": VERSION, "t": "ready", "pid": 1})
frame({"v": VERSION, "t": "exited", "how": "returned", "message": None})  # no "code"
sock.recv(1)
""".replace("VERSION", str(protocol.PROTOCOL_VERSION))


def test_a_malformed_frame_from_a_worker_is_named_and_ends_it() -> None:
    fds = open_fds()
    worker = WorkerProcess(command=[sys.executable, "-c", FAKE_WORKER])
    recorder = Recorder()
    worker.listener = recorder
    worker.wait_ready()
    wait_for(lambda: recorder.lost)
    assert recorder.lost == ["broke the protocol: message 'exited' lacks field 'code'"]
    assert recorder.messages == []
    worker.kill()
    assert_nothing_left(fds)


def test_a_malformed_frame_to_a_worker_ends_it_naming_the_message(
        capfd: pytest.CaptureFixture[str]) -> None:
    fds = open_fds()
    worker = WorkerProcess()
    recorder = Recorder()
    worker.listener = recorder
    worker.wait_ready()
    body = msgpack.packb({"v": protocol.PROTOCOL_VERSION, "t": "bogus"})
    worker.sock.sendall(struct.pack(">I", len(body)) + body)
    wait_for(lambda: recorder.lost)
    assert recorder.lost == ["exited with status 3"]
    assert "unknown message type 'bogus'" in capfd.readouterr().err
    worker.kill()
    assert_nothing_left(fds)


def test_a_worker_that_never_starts_fails_clearly() -> None:
    fds = open_fds()
    worker = WorkerProcess(command=[sys.executable, "-c", "import sys; sys.exit(7)"])
    with pytest.raises(Exception, match=r"did not start: exited with status 7"):
        worker.wait_ready(timeout=30)
    assert_nothing_left(fds)


def test_exit_during_start_up_ends_the_program_with_its_code(tmp_path: Path) -> None:
    """proc_exit inside `_initialize`, applied while the main worker is not yet running
    `_start`: the program's code, not a lost worker."""
    fds = open_fds()
    prog = tmp_path / "init_exit.wasm"
    prog.write_bytes(wasmtime.wat2wasm("""(module
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (import "env" "memory" (memory 1))
      (func (export "_initialize") (call $exit (i32.const 7)))
      (func (export "_start")))"""))
    result = run_program(str(prog))
    assert (result.exit_code, result.error) == (7, None)
    assert_nothing_left(fds)


def test_threads_share_one_process_id_and_one_monotonic_clock(guests: Path) -> None:
    """Each thread is its own OS process, but the guest sees one program: getpid() and
    CLOCK_MONOTONIC agree across threads."""
    result = run_program(str(guests / "threads" / "thread_faults.wasm"), ["ids"])
    assert result.exit_code == 0, result.error
    assert result.stdout.decode().splitlines()[-1] == "ids: pid same, clock ordered"


def test_workers_leave_when_the_coordinator_dies(tmp_path: Path) -> None:
    """SIGKILL the coordinator (no clean-up runs): its workers notice the closed socket and
    exit, spinning guest code or idle."""
    prog = tmp_path / "spin.wasm"
    # It imports thread-spawn (never called), so its pool keeps idle workers too.
    prog.write_bytes(wasmtime.wat2wasm(
        '(module (import "wasi" "thread-spawn" (func (param i32) (result i32)))'
        ' (memory (export "memory") 1) (func (export "_start") (loop (br 0))))'))
    coordinator = psutil.Popen([sys.executable, "-m", "wasmgroup.orchestrator.cli", "run",
                                str(prog)])
    try:
        wait_for(lambda: len(coordinator.children()) >= 2)  # the main worker and idle ones
        time.sleep(0.5)
        workers = coordinator.children()
    finally:
        coordinator.kill()
        coordinator.wait()
    _gone, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == []


def test_a_request_made_while_another_waits_takes_only_its_own_reply() -> None:
    """A group waiting for a reply at a safe point applies an operation that makes a request
    of its own (a TLS arena): the first reply to arrive may be the waiting request's, which
    the inner one must set aside (replies carry their call's id), not take as its own."""
    from wasmgroup.worker.main import EARLY_REPLY, Worker, WorkerService

    coordinator, theirs = socket.socketpair()
    worker = Worker(theirs)
    service = WorkerService(worker)
    try:
        for call_id, value in ((2, "the outer request's answer"), (1, [4096, 64])):
            worker.inbox.put(({"v": protocol.PROTOCOL_VERSION, "t": "reply", "id": call_id,
                               "ok": True, "value": value, "error": None}, []))
        assert service._call("tls_arena", 64, safe_point=False) == [4096, 64]  # call 1
        assert list(worker._early_replies) == [2]
        worker.inbox.put(None)  # the waiting request's next look at its inbox ...
        assert worker.next_message(stop_aware=True, safe_point=False)[0] is EARLY_REPLY
        # ... finds its answer set aside, without waiting for another frame.
        assert service._call("spawn", 7) == "the outer request's answer"  # call 2
        sent = [protocol.receive(coordinator) for _ in range(2)]
        assert [(m["id"], m["name"]) for m in sent] == [(1, "tls_arena"), (2, "spawn")]
    finally:
        coordinator.close()
        theirs.close()
