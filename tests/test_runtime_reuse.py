"""A Runtime's warm workers: a worker whose program ended hosts the next program with nothing
of the old one left in it; a program that times out, exceeds its memory limit or loses its
worker fails alone; many programs at once over one pool; nothing left after close."""

from __future__ import annotations

import json
import mmap
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from leaks import assert_nothing_left, open_fds

from wasmgroup import Runtime
from wasmgroup.orchestrator.program import EXIT_MEMORY
from wasmgroup.worker.main import Baseline

# A main whose table grows by 10 million function references (some 80 MB of the worker's
# private memory, none of it linear memory), then spins.
TABLE_HOG = """(module
  (table $t 1 funcref)
  (func $f)
  (elem declare func $f)
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (table.grow $t (ref.func $f) (i32.const 10000000)))
    (loop $l (br $l))))
"""


def main_worker_pid(trace: Path) -> int:
    """The worker of the main thread, from a run's trace (its `start` line)."""
    for line in trace.read_text().splitlines():
        record = json.loads(line)
        if record["op"] == "start":
            return int(record["pid"])
    raise AssertionError(f"no start line in {trace}")


def wait_until_reusable(runtime: Runtime, pid: int) -> None:
    """Until worker `pid` has been reset after its program and found clean: then it is the
    next worker handed out (the pool hands out the last one given back first)."""
    deadline = time.monotonic() + 30
    while pid not in runtime.parts.pool.idle_pids(ready=True):
        assert time.monotonic() < deadline, f"worker {pid} was not found clean"
        time.sleep(0.01)


def test_a_reused_worker_keeps_nothing_of_the_last_program(guests: Path, tmp_path: Path
                                                           ) -> None:
    """Program B, in the very worker process A ran in, finds none of A's memory contents
    (static data, heap), environment or descriptors."""
    probe = guests / "cli" / "probe.wasm"
    (tmp_path / "root").mkdir()
    fds = open_fds()
    with Runtime(workers=1) as runtime:
        first = runtime.run(probe, ["leave"], dirs=[f"{tmp_path / 'root'}::/"],
                            env={"LEFT": "from the host"}, trace=tmp_path / "a.trace")
        assert (first.exit_code, first.stdout) == (0, b"left fd 4\n"), first.error
        wait_until_reusable(runtime, main_worker_pid(tmp_path / "a.trace"))
        second = runtime.run(probe, ["look"], dirs=[f"{tmp_path / 'root'}::/"],
                             trace=tmp_path / "b.trace")
        assert main_worker_pid(tmp_path / "b.trace") == main_worker_pid(tmp_path / "a.trace")
        assert second.exit_code == 0, second.error
        assert second.stdout.decode().splitlines() == [
            "marker: ''", "heap: zero", "LEFT unset", "open: 3"]  # 3: its own --dir
    assert_nothing_left(fds)


def test_a_worker_stopped_in_guest_code_is_reused_once_clean(guests: Path, tmp_path: Path
                                                             ) -> None:
    probe = guests / "cli" / "probe.wasm"
    with Runtime(workers=1) as runtime:
        runtime.run(probe)  # a worker ready: the timeout then starts with the program
        spun = runtime.run(probe, ["spin"], timeout=1.0, trace=tmp_path / "a.trace")
        assert spun.timed_out and spun.exit_code == 124
        assert spun.stdout == b"spinning\n"
        spun_pid = main_worker_pid(tmp_path / "a.trace")
        wait_until_reusable(runtime, spun_pid)
        after = runtime.run(probe, ["env", "X"], env={"X": "1"}, trace=tmp_path / "b.trace")
        assert (after.exit_code, after.stdout) == (0, b"X=1\n")
        assert main_worker_pid(tmp_path / "b.trace") == spun_pid


def test_memory_limit_bounds_linear_memory_and_worker_memory(guests: Path, tmp_path: Path
                                                              ) -> None:
    hog = tmp_path / "table.wat"
    hog.write_text(TABLE_HOG)
    fds = open_fds()
    with Runtime(workers=1) as runtime:
        grown = runtime.run(guests / "cli" / "probe.wasm", ["grow"], memory_limit=16 << 20)
        assert (grown.exit_code, grown.stdout) == (0, b"grew to 16384 KiB\n")
        hogged = runtime.run(hog, [], memory_limit=32 << 20, timeout=60,
                             trace=tmp_path / "hog.trace")
        assert hogged.exit_code == EXIT_MEMORY and not hogged.timed_out
        assert hogged.error is not None and hogged.error.startswith("memory limit exceeded")
        # Its worker freed the table with the program: reused (or retired, were it not).
        after = runtime.run(guests / "cli" / "probe.wasm", ["env", "A"], env={"A": "ok"})
        assert after.stdout == b"A=ok\n"
    assert_nothing_left(fds)


def test_a_program_whose_worker_is_killed_fails_alone(guests: Path, tmp_path: Path) -> None:
    probe = guests / "cli" / "probe.wasm"
    fds = open_fds()
    with Runtime(workers=3) as runtime:
        trace = tmp_path / "sleep.trace"
        doomed = runtime.submit(probe, ["sleep"], trace=trace)
        others = [runtime.submit(probe, ["env", "N"], env={"N": str(i)}) for i in range(6)]
        deadline = time.monotonic() + 60
        while not (trace.exists() and '"start"' in trace.read_text()):
            assert time.monotonic() < deadline and not doomed.done()
            time.sleep(0.02)
        os.kill(main_worker_pid(trace), signal.SIGKILL)
        result = doomed.result(timeout=60)
        assert result.exit_code == 125
        assert result.error is not None and "\n" not in result.error
        assert "killed by SIGKILL" in result.error
        assert [f.result().stdout for f in others] == [f"N={i}\n".encode() for i in range(6)]
        assert runtime.run(probe, ["env", "N"], env={"N": "after"}).stdout == b"N=after\n"
    assert_nothing_left(fds)


def test_many_programs_at_once_share_a_few_workers(guests: Path) -> None:
    """20 programs of three kinds (one-thread, dlopen of plugins, eight threads) through
    three slots: every result right, and the pool starts few workers for them."""
    probe = guests / "cli" / "probe.wasm"
    host = guests / "plugins" / "host.wasm"
    fds = open_fds()
    with Runtime(workers=3) as runtime:
        jobs = []
        for i in range(20):
            if i % 10 == 3:
                jobs.append(("threads", runtime.submit(guests / "threads" / "pthreads.wasm")))
            elif i % 5 == 1:
                jobs.append(("plugins", runtime.submit(
                    host, ["/plugins"], dirs=[f"{guests / 'plugins'}::/"])))
            else:
                jobs.append((str(i), runtime.submit(probe, ["cat"], stdin=f"job {i}".encode())))
        for kind, future in jobs:
            result = future.result(timeout=300)
            assert result.exit_code == 0, (kind, result.error)
            if kind == "threads":
                assert result.stdout.decode().splitlines()[-1] == \
                    "counter=80000 joined=8 retsum=36 tls_ok=8"
            elif kind == "plugins":
                assert "[hello] hello, world!" in result.stdout.decode()
            else:
                assert result.stdout == f"job {kind}".encode(), (kind, result)
        # Programs ran on reused workers: most of the 17 that found the three warm ones
        # taken got one given back and reset (15-18 measured, also at load). How many the
        # pool started is the machine's business: 20-29 quiet, up to 43 at load, when
        # threads' workers are not back in time.
        assert runtime.parts.pool.reused >= 10
    assert_nothing_left(fds)


def test_close_while_programs_run_leaves_nothing(guests: Path) -> None:
    fds = open_fds()
    runtime = Runtime(workers=2)
    futures = [runtime.submit(guests / "cli" / "probe.wasm", ["sleep"], timeout=1.0)
               for _ in range(2)]
    closer = threading.Thread(target=runtime.close)
    closer.start()
    closer.join(timeout=60)
    assert not closer.is_alive()
    assert all(f.result().timed_out for f in futures)
    assert_nothing_left(fds)


def test_cancel_stops_a_running_program_and_a_queued_one(guests: Path) -> None:
    probe = guests / "cli" / "probe.wasm"
    fds = open_fds()
    with Runtime(workers=1) as runtime:
        spinning = runtime.submit(probe, ["spin"])
        queued = runtime.submit(probe, ["env", "X"])  # waits for the one slot
        time.sleep(1.0)  # the first is in guest code by now
        assert runtime.cancel(queued) and queued.cancelled()
        asked = time.monotonic()
        assert runtime.cancel(spinning)
        result = spinning.result(timeout=30)
        assert time.monotonic() - asked < 5
        assert (result.exit_code, result.error, result.stdout) == (130, "cancelled",
                                                                   b"spinning\n")
        assert not runtime.cancel(spinning)  # ended already
        after = runtime.run(probe, ["env", "X"], env={"X": "1"})  # the runtime goes on
        assert (after.exit_code, after.stdout) == (0, b"X=1\n"), after.error
    assert_nothing_left(fds)


def test_leaving_the_with_block_by_an_exception_cancels_its_programs(guests: Path) -> None:
    fds = open_fds()
    asked = 0.0
    with pytest.raises(RuntimeError, match="the caller failed"), Runtime(workers=2) as runtime:
        futures = [runtime.submit(guests / "cli" / "probe.wasm", ["spin"]) for _ in range(3)]
        time.sleep(1.0)
        asked = time.monotonic()
        raise RuntimeError("the caller failed")
    assert time.monotonic() - asked < 10
    assert [f.result().error for f in futures[:2]] == ["cancelled", "cancelled"]
    assert futures[2].cancelled()  # it never started: two slots
    assert_nothing_left(fds)


def test_ctrl_c_in_run_cancels_the_program(guests: Path) -> None:
    """Runtime.run interrupted in the main thread stops its program, then raises."""
    fds = open_fds()
    with Runtime(workers=1) as runtime:
        timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            runtime.run(guests / "cli" / "probe.wasm", ["spin"])
        timer.join()
        asked = time.monotonic()
        again = runtime.run(guests / "cli" / "probe.wasm", ["env", "X"])
        assert again.exit_code == 0 and time.monotonic() - asked < 10  # the slot is free
    assert_nothing_left(fds)


def test_the_reset_check_names_what_a_program_left(tmp_path: Path) -> None:
    """What a worker compares itself with before it is reused (worker/main.py): a descriptor
    or a mapping of a program's memory left behind makes it unclean, named."""
    baseline = Baseline()
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        problem = baseline.problem()
        assert problem is not None and "descriptors left open" in problem
        assert str(tmp_path) in problem
    finally:
        os.close(fd)
    memfd = os.memfd_create("wasmgroup-memory", os.MFD_CLOEXEC)
    os.ftruncate(memfd, 4096)
    view = mmap.mmap(memfd, 4096)
    os.close(memfd)  # the mapping stays (and Python's mmap keeps a descriptor of it)
    try:
        problem = baseline.problem()
        assert problem is not None and "memfd:wasmgroup-memory" in problem
    finally:
        view.close()
