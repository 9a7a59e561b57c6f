"""The fork server: workers forked from it are the coordinator's children, hold no descriptor
but their socket and stdio, are reaped, and nothing outlives the coordinator, killed or not."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import wasmtime
from leaks import assert_nothing_left, open_fds, processes_marked

from wasmgroup.orchestrator.program import run_program
from wasmgroup.orchestrator.workers import WorkerPool

# Forks the server from a fresh interpreter as `wasmgroup run` does (one thread, after the
# imports, before any compile), with a stray descriptor open, then reports on two workers.
EARLY_FORK = """
import json, os, sys
import psutil
from wasmgroup.orchestrator import forkserver
from wasmgroup.orchestrator.workers import WorkerPool
stray = os.open(sys.argv[1], os.O_RDONLY)  # inheritable: a fork keeps it, exec or not
os.set_inheritable(stray, True)
forkserver.fork_early()
pool = WorkerPool(0)
server = pool.fork_server
workers = [pool.take() for _ in range(2)]
report = {"me": os.getpid(), "server": server.pid if server else None,
          "server_parent": psutil.Process(server.pid).ppid() if server else None,
          "server_command": psutil.Process(server.pid).cmdline() if server else None,
          "workers": [{"pid": w.pid, "parent": psutil.Process(w.pid).ppid(),
                       "fds": sorted(os.readlink(f"/proc/{w.pid}/fd/{fd}")
                                     for fd in os.listdir(f"/proc/{w.pid}/fd"))}
                      for w in workers],
          "stray": os.readlink(f"/proc/self/fd/{stray}")}
pool.close()
report["left"] = [p.pid for p in psutil.Process().children(recursive=True)]
print(json.dumps(report))
"""


def test_early_fork_server_workers_are_our_children_with_only_their_socket(
        tmp_path: Path) -> None:
    stray = tmp_path / "stray.txt"
    stray.write_text("not for workers")
    done = subprocess.run([sys.executable, "-c", EARLY_FORK, str(stray)], capture_output=True,
                          text=True, timeout=120, check=True)
    report = json.loads(done.stdout)
    assert report["server"] is not None, "no fork server was forked"
    assert report["server_parent"] == report["me"]
    assert "wasmgroup.worker.zygote" not in report["server_command"]  # forked, not started
    for worker in report["workers"]:
        assert worker["parent"] == report["me"]  # clone(CLONE_PARENT): ours to reap
        assert str(stray) not in worker["fds"]
        # stdio (whatever the test runner gave), the worker's own socket and its wake-up
        # eventfd (worker/host/poll.py, made at start so a reset finds it there), nothing else
        sockets = [f for f in worker["fds"] if f.startswith("socket:")]
        own = [f for f in worker["fds"] if f == "anon_inode:[eventfd]"]
        assert len(own) <= 1, worker["fds"]
        assert len(worker["fds"]) - len(sockets) - len(own) <= 3, worker["fds"]
        assert 1 <= len(sockets) <= 4, worker["fds"]  # its socket (+ stdio sockets)
    assert report["left"] == []


def test_a_pool_and_its_fork_server_leave_nothing_behind() -> None:
    fds = open_fds()
    pool = WorkerPool(2)
    assert pool.fork_server is not None
    server = pool.fork_server.pid
    workers = [pool.take() for _ in range(3)]  # two from the pool, one forked on demand
    assert {psutil.Process(w.pid).ppid() for w in workers} == {os.getpid()}
    os.kill(workers[0].pid, signal.SIGKILL)  # one dies: still reaped, no zombie
    pool.close()
    assert not psutil.pid_exists(server) or psutil.Process(server).status() != "zombie"
    assert_nothing_left(fds)


def test_a_dead_fork_server_falls_back_to_starting_workers(
        caplog: pytest.LogCaptureFixture) -> None:
    """The server killed (the OOM killer, a stray kill): workers are started the slow way,
    with one warning naming what happened."""
    fds = open_fds()
    pool = WorkerPool(0)
    assert pool.fork_server is not None
    pool.fork_server.process.kill()
    pool.fork_server.process.wait()
    with caplog.at_level(logging.WARNING, logger="wasmgroup"):
        worker = pool.take()
    assert worker.process.poll() is None
    assert any("fork server" in r.message and "starting workers without it" in r.message
               for r in caplog.records), caplog.records
    pool.close()
    assert_nothing_left(fds)


def test_a_threaded_program_runs_on_forked_workers(guests: Path) -> None:
    fds = open_fds()
    result = run_program(str(guests / "threads" / "pthreads.wasm"), pool_size=0)
    assert result.exit_code == 0, result.error
    assert_nothing_left(fds)


def test_nothing_outlives_a_killed_coordinator(tmp_path: Path) -> None:
    """SIGKILL `wasmgroup run` while its threads run: the fork server and every worker
    (spinning, idle, or a standby group) leave on their own."""
    prog = tmp_path / "spin.wasm"
    prog.write_bytes(wasmtime.wat2wasm(
        '(module (import "wasi" "thread-spawn" (func (param i32) (result i32)))'
        ' (memory (export "memory") 1) (func (export "_start") (loop (br 0))))'))
    mark = uuid.uuid4().hex
    coordinator = psutil.Popen([sys.executable, "-m", "wasmgroup.orchestrator.cli", "run",
                                str(prog)], env={**os.environ, "WASMGROUP_TEST_MARK": mark})
    try:
        deadline = time.monotonic() + 60
        while len(coordinator.children()) < 3:  # the server, the main worker, idle ones
            assert time.monotonic() < deadline, "the program's processes never started"
            time.sleep(0.05)
        assert len(processes_marked(mark)) >= 4
    finally:
        coordinator.kill()
        coordinator.wait()
    deadline = time.monotonic() + 15
    while processes_marked(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_marked(mark) == []
    assert not [n for n in os.listdir("/dev/shm") if "wasmgroup" in n]


@pytest.fixture(autouse=True)
def pools_closed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every pool a test makes is closed after it, also when an assertion failed first:
    its workers and spare would otherwise fail every later test's check for leftovers."""
    made: list[WorkerPool] = []

    class Tracked(WorkerPool):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(sys.modules[__name__], "WorkerPool", Tracked)
    yield
    for pool in made:
        pool.close()


def _spare_of(pool: WorkerPool, known: set[int]) -> int:
    """The pid of the spare the pool's server forked: our child that is neither the server
    nor a worker we know."""
    assert pool.fork_server is not None
    deadline = time.monotonic() + 30
    while True:
        others = {p.pid for p in psutil.Process().children()} - known - {pool.fork_server.pid}
        if others:
            assert len(others) == 1, others
            return others.pop()
        assert time.monotonic() < deadline, "no spare was forked"
        time.sleep(0.01)


def test_a_spare_serves_at_normal_priority_with_only_its_socket() -> None:
    """From the second worker on, the server keeps a spare (forked and warmed up ahead of
    need, at a low priority where it can return from it): the next worker is that spare, every
    thread of it at normal priority, holding nothing of the server's."""
    fds = open_fds()
    pool = WorkerPool(0)
    first = [pool.take() for _ in range(2)]
    spare = _spare_of(pool, {w.pid for w in first})
    third = pool.take()
    assert third.pid == spare
    third.wait_ready()
    tasks = [int(t) for t in os.listdir(f"/proc/{spare}/task")]
    assert len(tasks) == 3  # its main thread, the other taking-turns thread, the ticker
    nice = {t: os.getpriority(os.PRIO_PROCESS, t) for t in tasks}
    assert set(nice.values()) == {os.getpriority(os.PRIO_PROCESS, 0)}, nice
    assert {os.sched_getscheduler(t) for t in tasks} == {os.SCHED_OTHER}
    held = [os.readlink(f"/proc/{spare}/fd/{fd}") for fd in os.listdir(f"/proc/{spare}/fd")]
    assert len([f for f in held if f.startswith("socket:")]) <= 4, held  # its own (+ stdio)
    assert len(held) <= 5, held  # stdio, its socket, its wake-up eventfd
    pool.close()
    assert_nothing_left(fds)


def test_a_dead_spare_is_replaced_by_a_forked_worker_and_reaped() -> None:
    """The spare killed before it is wanted: the next worker is forked then, and the dead
    spare is reaped (no zombie) when the pool closes; so is an unused one."""
    fds = open_fds()
    pool = WorkerPool(0)
    first = [pool.take() for _ in range(2)]
    spare = _spare_of(pool, {w.pid for w in first})
    os.kill(spare, signal.SIGKILL)
    while psutil.Process(spare).status() != psutil.STATUS_ZOMBIE:  # (gone: its link closed)
        time.sleep(0.01)
    third = pool.take()
    assert third.pid != spare
    third.wait_ready()
    assert third.process.poll() is None
    assert pool.fork_server is not None and spare in pool.fork_server.spares
    _spare_of(pool, {w.pid for w in first} | {third.pid, spare})  # the next one, unused
    pool.close()
    assert_nothing_left(fds)


def test_spares_deserialize_the_modules_the_coordinator_names(guests: Path,
                                                            private_cache: Path) -> None:
    """The coordinator names the program's compiled modules (PRELOAD): a spare forked after
    that deserializes them while it waits (its process maps the artefact), one name that is
    no artefact costing it nothing; the worker it becomes serves as any other."""
    result = run_program(str(guests / "threads" / "pthreads.wasm"))  # (fills the cache)
    assert result.exit_code == 0, result.error
    artefacts = sorted(str(p) for p in private_cache.glob("*.cwasm"))
    assert artefacts
    fds = open_fds()
    pool = WorkerPool(0)
    assert pool.fork_server is not None
    pool.fork_server.preload([str(private_cache / "not-an-artefact.cwasm"), *artefacts])
    first = [pool.take() for _ in range(2)]  # the second request forks the first spare
    spare = _spare_of(pool, {w.pid for w in first})
    deadline = time.monotonic() + 30
    while not all(a in Path(f"/proc/{spare}/maps").read_text() for a in artefacts):
        assert time.monotonic() < deadline, "the spare never deserialized the modules"
        time.sleep(0.02)
    third = pool.take()
    assert third.pid == spare
    third.wait_ready()
    assert third.process.poll() is None
    pool.close()
    assert_nothing_left(fds)
