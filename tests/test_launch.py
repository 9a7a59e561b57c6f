"""The `wasmgroup` command's entry point (orchestrator/launch.py): a run forks its fork server
before importing the command line; other commands fork nothing; a usage error or Ctrl-C right
after the fork leaves no process behind."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import termios
import time
import uuid
from pathlib import Path

import psutil
import pytest
from leaks import processes_marked

from wasmgroup.orchestrator.launch import command_of

# The console script pip made for the project's entry point (not `python -m ...cli`).
WASMGROUP = str(Path(sys.executable).parent / "wasmgroup")


# The two ways in: the entry point forks the server before importing the command line; the
# command line's module, run as a script, forks it in cli._run, after its own imports.
ENTRY_POINTS = {"console script": [WASMGROUP],
                "python -m": [sys.executable, "-m", "wasmgroup.orchestrator.cli"]}


@pytest.mark.parametrize(("argv", "found"), [
    ([], None), (["--help"], None), (["-h"], None), (["--version"], None),
    (["run", "p.wasm", "a"], ("run", ["p.wasm", "a"])),
    (["p.wasm", "--", "a"], ("run", ["p.wasm", "--", "a"])),
    (["--pool", "0", "p.wasm"], ("run", ["--pool", "0", "p.wasm"])),
    (["-v", "inspect", "x"], ("inspect", ["-v", "x"])),
    (["-v", "-q", "run", "p"], ("run", ["-v", "-q", "p"])),
    (["-v"], ("run", ["-v"])),  # a verbosity flag alone: run's usage error
    (["cache", "info"], ("cache", ["info"])),
])
def test_command_of(argv: list[str], found: tuple[str, list[str]] | None) -> None:
    assert command_of(argv) == found


def marked(mark: str) -> dict[str, str]:
    return {**os.environ, "WASMGROUP_TEST_MARK": mark}


def wait_gone(mark: str) -> None:
    deadline = time.monotonic() + 30
    while processes_marked(mark):
        assert time.monotonic() < deadline, f"left behind: {processes_marked(mark)}"
        time.sleep(0.02)


def test_a_run_through_the_entry_point(guests: Path) -> None:
    mark = uuid.uuid4().hex
    done = subprocess.run([WASMGROUP, "-v", "run", str(guests / "pie_threads" / "hello.wasm")],
                          capture_output=True, text=True, timeout=120, env=marked(mark))
    assert (done.returncode, done.stdout) == (0, "hello, world\n"), done.stderr
    assert done.stderr.count("started (needed now)") == 1  # one worker: no thread-spawn import
    wait_gone(mark)


@pytest.mark.parametrize("way", ENTRY_POINTS)
def test_a_usage_error_leaves_nothing(guests: Path, way: str) -> None:
    """Through the entry point, the server was forked before the options were read: it
    leaves with the command (it holds stderr, so the output ends only when it is gone too)."""
    mark = uuid.uuid4().hex
    done = subprocess.run([*ENTRY_POINTS[way], "run", "--pool", "-3",
                           str(guests / "pie_threads" / "hello.wasm")],
                          capture_output=True, text=True, timeout=120, env=marked(mark))
    assert done.returncode == 2
    assert "argument --pool: -3 is not between 0 and 64" in done.stderr
    wait_gone(mark)


def test_other_commands_fork_no_server(guests: Path) -> None:
    mark = uuid.uuid4().hex
    process = psutil.Popen([WASMGROUP, "inspect", str(guests / "pie_threads" / "hello.wasm")],
                           stdout=subprocess.DEVNULL, env=marked(mark))
    children: set[int] = set()
    while process.poll() is None:
        try:
            children |= {c.pid for c in process.children()}
        except psutil.NoSuchProcess:
            break
    assert process.returncode == 0
    assert children == set()


@pytest.mark.parametrize("way", ENTRY_POINTS)
def test_ctrl_c_right_after_the_fork_is_one_line(guests: Path, way: str) -> None:
    """^C as soon as the fork server is forked: by the entry point, which then imports the
    command line, or by the command line, before the coordinator's modules."""
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:  # (a background test run: give its children SIGINT back)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        master, slave = pty.openpty()
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO  # the output is wasmgroup's alone
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        mark = uuid.uuid4().hex
        process = psutil.Popen(["setsid", "--ctty", *ENTRY_POINTS[way], "run",
                                str(guests / "libc" / "interruptible.wasm"), "--", "forever"],
                               stdin=slave, stdout=slave, stderr=slave, env=marked(mark))
        os.close(slave)
        deadline = time.monotonic() + 60
        while not process.children():
            assert time.monotonic() < deadline, "no fork server"
            time.sleep(0.0005)
        os.write(master, b"\x03")
        code = process.wait(60)
        output = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        os.close(master)
    finally:
        signal.signal(signal.SIGINT, previous)
    lines = [line for line in output.decode().splitlines()
             if line.strip() and line.strip() not in ("interruptible: forever",
                                                      "forever: running")]
    assert lines == ["wasmgroup run: interrupted"], output
    assert code == 130
    wait_gone(mark)
