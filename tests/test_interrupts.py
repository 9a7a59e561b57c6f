"""Ctrl-C, a killed coordinator and signals a program sends itself, as a person sees them.

The Ctrl-C tests run `wasmgroup run` on a real pseudo-terminal whose foreground process group
it leads, and type ^C: the line discipline sends SIGINT to the whole group, workers included,
at many points of a run (start-up, threads running, wind-up). Every time the person must see
one line, `wasmgroup run: interrupted`, status 130, no traceback, and no process left.
"""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import psutil
import pytest
from leaks import assert_nothing_left, open_fds

from wasmgroup.orchestrator.program import run_program


@pytest.fixture(autouse=True, scope="module")
def ctrl_c_reaches_the_programs() -> Iterator[None]:
    """A test run a shell started in the background inherits SIGINT ignored, and so would
    every program it starts (an ignored disposition survives exec), so Ctrl-C could not
    reach them: these tests are about Ctrl-C, so give this process (and, through exec, its
    children) the default disposition back."""
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)

WASMGROUP = [sys.executable, "-m", "wasmgroup.orchestrator.cli"]
FOREVER_LINES = ["interruptible: forever", "forever: running"]


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def started_up(pid: int) -> bool:
    """The coordinator is inside wasmgroup's own code: it has forked its fork server, which
    it does before importing most of its modules (or later). (Not "it has loaded wasmtime":
    with every module in the compile cache, the coordinator never does.)"""
    try:
        return bool(psutil.Process(pid).children())
    except psutil.NoSuchProcess:
        return False


class Terminal:
    """`wasmgroup ARGS` on a new pseudo-terminal, as the session leader and foreground group."""

    def __init__(self, args: list[str]) -> None:
        master, slave = pty.openpty()
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO  # the output is the program's and wasmgroup's alone
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        self.master = master
        # setsid --ctty: a new session whose controlling terminal is stdin (this pty); it
        # execs in place (the child of Popen is no group leader), so the pid is wasmgroup's.
        self.process = psutil.Popen(["setsid", "--ctty", *WASMGROUP, *args], stdin=slave,
                                    stdout=slave, stderr=slave, close_fds=True)
        os.close(slave)
        self._output = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:  # EIO: every process holding the terminal has closed it
                return
            if not data:
                return
            self._output += data

    def text(self) -> str:
        return self._output.decode(errors="replace")

    def ctrl_c(self) -> None:
        os.write(self.master, b"\x03")

    def finish(self, timeout: float = 30.0) -> tuple[int, list[str]]:
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        os.close(self.master)
        return code, [line.strip() for line in self.text().splitlines() if line.strip()]


def assert_gone(processes: list[psutil.Process]) -> None:
    # Generous: workers still starting run at idle CPU priority, which a loaded machine starves.
    _gone, alive = psutil.wait_procs(processes, timeout=60)
    assert alive == [], f"left behind: {alive}"


# Where ^C lands: seconds after the coordinator forks its fork server (its own start-up,
# the pool's workers mid-import at idle priority, compiling, the main group starting), or
# after both threads run; the second number, if any, is a second ^C during the wind-up.
CTRL_C_POINTS = [("start", 0.0, None), ("start", 0.1, None), ("start", 0.3, None),
                 ("running", 0.0, None), ("running", 0.1, 0.02), ("running", 0.0, 0.3)]


@pytest.mark.parametrize(("phase", "delay", "again"), CTRL_C_POINTS)
def test_ctrl_c_at_a_terminal_prints_one_line_and_exits_130(
        guests: Path, phase: str, delay: float, again: float | None) -> None:
    term = Terminal(["run", str(guests / "libc" / "interruptible.wasm"), "--", "forever"])
    try:
        if phase == "start":
            wait_for(lambda: started_up(term.process.pid))
        else:
            wait_for(lambda: "forever: running" in term.text())
        time.sleep(delay)
        workers = term.process.children(recursive=True)
        term.ctrl_c()
        if again is not None:
            time.sleep(again)
            term.ctrl_c()
        code, lines = term.finish()
    finally:
        if term.process.poll() is None:
            term.process.kill()
    assert [line for line in lines if line not in FOREVER_LINES] == \
        ["wasmgroup run: interrupted"], "\n".join(lines)
    assert code == 130
    assert_gone(workers)


def test_ctrl_c_does_not_wait_for_a_thread_blocked_reading_the_terminal(guests: Path) -> None:
    """A thread in a read never reaches a safe point: after Ctrl-C its worker is killed
    within a fraction of a second instead of after the usual 5 + 2 s of grace."""
    term = Terminal(["run", str(guests / "libc" / "interruptible.wasm"), "--", "read"])
    try:
        wait_for(lambda: "read: waiting" in term.text())
        workers = term.process.children(recursive=True)
        started = time.monotonic()
        term.ctrl_c()
        code, lines = term.finish()
        seconds = time.monotonic() - started
    finally:
        if term.process.poll() is None:
            term.process.kill()
    assert lines == ["interruptible: read", "read: waiting", "wasmgroup run: interrupted"]
    assert code == 130
    assert seconds < 4.0
    assert_gone(workers)


@pytest.mark.parametrize("delay", [0.0, 0.15, 0.5])
def test_sigint_to_the_coordinator_alone_at_any_point(guests: Path, delay: float) -> None:
    """kill -INT of the coordinator only (its workers get nothing): the same one line."""
    with tempfile.TemporaryFile() as err:
        process = psutil.Popen([*WASMGROUP, "run", str(guests / "libc" / "interruptible.wasm"),
                                "--", "forever"], stdout=subprocess.DEVNULL, stderr=err)
        wait_for(lambda: started_up(process.pid))
        time.sleep(delay)
        workers = process.children(recursive=True)
        process.send_signal(signal.SIGINT)
        code = process.wait(30)
        assert_gone(workers)
        err.seek(0)
        assert err.read().decode() == "wasmgroup run: interrupted\n"
    assert code == 130


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2])
def test_sigint_while_a_finished_program_winds_up(guests: Path, delay: float) -> None:
    """The first outcome wins: a program that has ended keeps its status, or Ctrl-C came
    first; either way one consistent ending, never a traceback or a status of -2."""
    process = psutil.Popen([*WASMGROUP, "run", str(guests / "libc" / "interruptible.wasm"),
                            "--", "done"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if line == "done: exiting\n":
            break
    time.sleep(delay)
    workers = process.children(recursive=True)
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=30)
    assert_gone(workers)
    assert (process.returncode, err) in [(0, ""), (130, "wasmgroup run: interrupted\n")]


API_SCRIPT = """
import sys
from wasmgroup.orchestrator.program import run_program
result = run_program(sys.argv[1], ["forever"])
print("result", result.exit_code, result.error, result.stdout.decode().splitlines())
"""


def test_run_program_interrupted_returns_130(guests: Path) -> None:
    """The Python API, called from the main thread: Ctrl-C makes it return, never raise."""
    process = psutil.Popen([sys.executable, "-c", API_SCRIPT,
                            str(guests / "libc" / "interruptible.wasm")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(process.children()) >= 2)  # workers are starting
    time.sleep(0.2)
    workers = process.children(recursive=True)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert_gone(workers)
    assert err == ""
    assert out.startswith("result 130 interrupted [")
    assert process.returncode == 0


@pytest.mark.parametrize("when", ["workers starting", "workers idle", "threads running"])
def test_workers_of_a_killed_coordinator_leave_silently(guests: Path, when: str) -> None:
    """SIGKILL the coordinator (no clean-up runs): its workers, which share its stderr, exit
    without a word, whatever they were doing."""
    with tempfile.TemporaryFile() as out:
        process = psutil.Popen([*WASMGROUP, "run", str(guests / "libc" / "interruptible.wasm"),
                                "--", "forever"], stdout=out, stderr=out)
        try:
            if when == "workers starting":
                wait_for(lambda: len(process.children()) >= 2)
            elif when == "workers idle":
                wait_for(lambda: len(process.children()) >= 2)
                time.sleep(1.0)
            else:
                wait_for(lambda: b"forever: running" in _read_all(out))
            workers = process.children(recursive=True)
        finally:
            process.kill()
            process.wait()
        assert_gone(workers)
        text = _read_all(out).decode(errors="replace")
    assert [line for line in text.splitlines() if line not in FOREVER_LINES] == [], text


def _read_all(file: IO[bytes]) -> bytes:
    return Path(f"/proc/self/fd/{file.fileno()}").read_bytes()


@pytest.mark.parametrize(("mode", "code", "message"), [
    ("abort-thread", 134, "the program aborted (SIGABRT) in thread 2"),
    ("handled-abort", 134, "the program aborted (SIGABRT) in main thread"),
    ("term", 143, "the program was terminated by SIGTERM in main thread"),
    ("kill-usr1", 138, "the program was terminated by SIGUSR1 in main thread"),
])
def test_a_signal_the_program_sends_itself_ends_it_as_a_shell_reports(
        guests: Path, mode: str, code: int, message: str) -> None:
    fds = open_fds()
    result = run_program(str(guests / "libc" / "signals.wasm"), [mode])
    assert (result.exit_code, result.error) == (code, message)
    assert result.stdout.decode() == f"signals: {mode}\n"
    # wasix-libc's own default handler says its piece first once sigaction has been used.
    libc = "Program recieved fatal signal: Aborted\n" if mode == "handled-abort" else ""
    assert result.stderr.decode() == libc
    assert_nothing_left(fds)


def test_abort_at_the_command_line(guests: Path) -> None:
    process = subprocess.run([*WASMGROUP, "run", str(guests / "libc" / "signals.wasm"), "--",
                              "abort"], capture_output=True, text=True, timeout=60)
    assert process.stdout == "signals: abort\n"
    assert process.stderr == "wasmgroup run: the program aborted (SIGABRT) in main thread\n"
    assert process.returncode == 134


def test_signal_handlers_run_and_ignored_signals_do_nothing(guests: Path) -> None:
    result = run_program(str(guests / "libc" / "signals.wasm"), ["handled"])
    assert (result.exit_code, result.error) == (0, None)
    assert result.stdout.decode().splitlines() == [
        "signals: handled", "handled: raise SIGUSR1 -> handler got 10",
        "handled: kill SIGTERM -> handler got 15", "handled: SIGINT ignored",
        "handled: SIGCHLD ignored", "handled: done"]
