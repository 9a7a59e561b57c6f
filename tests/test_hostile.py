"""A hostile guest (tests/programs/hostile/probe.c) against the library locator, through real
worker processes: races that swap a directory for a symlink out of the mapping, NUL bytes in
names, host paths in error texts, huge sparse files. The sandbox must hold, every request must
be answered, and nothing may be left behind."""

from __future__ import annotations

import ctypes
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from leaks import assert_nothing_left, open_fds
from wasm_bytes import custom, dylink, mem_info, module, section, uleb

from wasmgroup.orchestrator.program import EXIT_RUNTIME_ERROR, RunResult, run_program
from wasmgroup.shared import guestfs

WASMGROUP = [sys.executable, "-m", "wasmgroup.orchestrator.cli"]
RACE_ATTEMPTS = 1500  # a few seconds; scripts/race-locator runs longer races
RUN_TIMEOUT = 120.0  # seconds: a hang (an unanswered request) fails the test, not the suite
IN_OPEN, IN_ACCESS = 0x20, 0x01


@pytest.fixture(scope="module", autouse=True)
def warm_runtime(guests: Path) -> None:
    """wasmtime starts its I/O runtime (an epoll, an eventfd, a pipe) once per process."""
    run_program(str(guests / "hostile" / "probe.wasm"), ["open"])


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The coordinator runs in this process: the walk used where openat2 is missing is
    selected by its module switch."""
    monkeypatch.setattr(guestfs, "use_openat2", request.param == "openat2")
    yield request.param
    assert guestfs.use_openat2 == (request.param == "openat2")


def run_bounded(guests: Path, args: list[str], **kw: object) -> RunResult:
    """run_program of the probe, failing (not hanging) if it does not end in time."""
    results: list[RunResult] = []
    runner = threading.Thread(target=lambda: results.append(run_program(
        str(guests / "hostile" / "probe.wasm"), args, **kw)), daemon=True)  # type: ignore[arg-type]
    runner.start()
    runner.join(RUN_TIMEOUT)
    assert results, f"the program did not end within {RUN_TIMEOUT:.0f} s (a request hung?)"
    return results[0]


class OpenWatch:
    """inotify on a directory: did anything open or read it, or a file in it?"""

    def __init__(self, directory: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0
        watch = self._libc.inotify_add_watch(self.fd, os.fsencode(directory),
                                             IN_OPEN | IN_ACCESS)
        assert watch >= 0, os.strerror(ctypes.get_errno())

    def touched(self) -> bool:
        try:
            return bool(os.read(self.fd, 4096))
        except BlockingIOError:
            return False

    def close(self) -> None:
        os.close(self.fd)


def race_world(tmp_path: Path, guests: Path) -> tuple[Path, Path]:
    """/m/d: a directory with lib.so (not a module) and data.txt; /m/out: a symlink to a
    directory outside the mapping holding a loadable decoy lib.so and an OUTSIDE data.txt."""
    mapped, outside = tmp_path / "map", tmp_path / "outside"
    (mapped / "d").mkdir(parents=True)
    (mapped / "d" / "lib.so").write_text("inside: not a module\n")
    (mapped / "d" / "data.txt").write_text("inside\n")
    outside.mkdir()
    shutil.copy(guests / "hostile" / "libdecoy.so", outside / "lib.so")
    (outside / "data.txt").write_text("OUTSIDE\n")
    os.symlink("../outside", mapped / "out")
    return mapped, outside


def race_counts(stdout: bytes) -> dict[str, int]:
    line = next(x for x in stdout.decode().splitlines() if x.startswith("race: "))
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def test_a_directory_swapped_for_a_symlink_never_leads_outside(
        guests: Path, tmp_path: Path, resolver: str) -> None:
    """One thread renames a directory to a symlink out of the mapping and back in a tight
    loop while the main thread dlopens through it and a third opens a file through it: the
    decoy outside is never opened, nothing hangs (the old locator loaded the decoy in most
    attempts, and its request thread died on a FileNotFoundError)."""
    mapped, outside = race_world(tmp_path, guests)
    fds = open_fds()
    watch = OpenWatch(outside)
    try:
        result = run_bounded(guests, ["race", str(RACE_ATTEMPTS)], dirs=[f"{mapped}::/m"])
        assert not watch.touched(), "a file outside the mapping was opened"
    finally:
        watch.close()
    assert result.exit_code == 0, result.error
    counts = race_counts(result.stdout)
    assert counts["escaped"] == 0 and counts["outside_reads"] == 0, counts
    assert counts["other"] == 0, result.stdout.decode()
    # It raced: the lookup found the real directory and found the symlink.
    assert counts["inside"] > 0 and counts["missing"] > 0 and counts["swaps"] > 0, counts
    assert_nothing_left(fds)


def invalid_for_wasmtime() -> bytes:
    """A side module our reader accepts and wasmtime refuses (i32.add on an empty stack)."""
    body = b"\x00\x6a\x0b"
    return module(dylink(mem_info(0, 0, 0, 0)),
                  section(1, uleb(1) + b"\x60\x00\x00"), section(3, uleb(1) + uleb(0)),
                  section(10, uleb(1) + uleb(len(body)) + body))


def test_dlerror_names_guest_paths_only(guests: Path, tmp_path: Path) -> None:
    """Every way a dlopen can fail, as the guest sees it: the text names the guest path or
    the requested name, never where the file lives on the host."""
    mapped, host_lib = tmp_path / "mapped", tmp_path / "hostlib"
    (mapped / "lib").mkdir(parents=True)
    host_lib.mkdir()
    lib = mapped / "lib"
    (lib / "libtext.so").write_text("not a module\n")
    (lib / "libtrunc.so").write_bytes(b"\0asm\x01\0\0\0\x01\x05")
    (lib / "libinvalid.so").write_bytes(invalid_for_wasmtime())
    (lib / "libstatic.so").write_bytes(module())  # valid, but no dylink.0
    shutil.copy(guests / "side" / "libbar.so", lib / "libneedy.so")  # NEEDED libfoo.so
    shutil.copy(guests / "plugins" / "faulty" / "libmissing.so", lib / "libunresolved.so")
    os.mkfifo(lib / "libfifo.so")
    (lib / "libdir.so").mkdir()
    os.symlink(tmp_path, lib / "escape")
    with open(lib / "libhuge.so", "wb") as f:
        f.write(b"\0asm\x01\0\0\0")
        f.truncate(1 << 20)
    (host_lib / "libhostbad.so").write_text("not a module either\n")
    names = ["libtext.so", "libtrunc.so", "libinvalid.so", "libstatic.so", "libneedy.so",
             "libunresolved.so", "libfifo.so", "libdir.so", "libhuge.so", "libhostbad.so",
             "libabsent.so", "/lib/escape/hostlib/libhostbad.so", "/lib/../../x.so"]
    fds = open_fds()
    result = run_bounded(guests, ["open", *names], dirs=[f"{mapped}::/"],
                         lib_paths=[str(host_lib)], max_module_size=1 << 17)
    assert result.exit_code == 0, result.error
    output = result.stdout.decode()
    assert str(tmp_path) not in output and str(guests) not in output, output
    # One record per name (a compiler's message may run over several lines).
    records = re.split(r"\n(?=failed |loaded )", output.strip())
    assert all(r.startswith("failed ") for r in records), records
    by_name = dict(zip(names, records, strict=True))
    assert "/lib/libtext.so: not a valid module" in by_name["libtext.so"]
    assert "/lib/libtrunc.so: not a valid module" in by_name["libtrunc.so"]
    assert "/lib/libinvalid.so: invalid module" in by_name["libinvalid.so"]
    assert "no dylink.0" in by_name["libstatic.so"]
    assert "'libfoo.so' (needed by libneedy.so) not found" in by_name["libneedy.so"]
    assert "more than the module size limit" in by_name["libhuge.so"]
    assert "libhostbad.so: not a valid module" in by_name["libhostbad.so"]
    for absent in ("libfifo.so", "libdir.so", "/lib/escape/hostlib/libhostbad.so",
                   "libabsent.so", "/lib/../../x.so"):
        assert "not found; tried: " in by_name[absent], by_name[absent]
    assert_nothing_left(fds)


def test_nul_bytes_in_a_name_or_library_path_fail_the_dlopen(guests: Path,
                                                             tmp_path: Path) -> None:
    """NULL and a dlerror(), the program goes on (it used to end: 125, malformed request)."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "other").mkdir()
    shutil.copy(guests / "hostile" / "libdecoy.so", tmp_path / "lib" / "libdecoy.so")
    shutil.copy(guests / "hostile" / "libdecoy.so", tmp_path / "other" / "libother.so")
    for args, expected in (
            (["open", "libdecoy%00.so", "/lib/lib%00decoy.so", "libdecoy.so"],
             ["failed libdecoy%00.so: failed to load module: library 'libdecoy\\x00.so': a "
              "library name cannot contain a NUL byte",
              "failed /lib/lib%00decoy.so: failed to load module: library "
              "'/lib/lib\\x00decoy.so': a library name cannot contain a NUL byte",
              "loaded libdecoy.so"]),
            (["ldpath", "/ot%00her:/nowhere", "libother.so"],
             ["failed libother.so: failed to load module: library 'libother.so' not found; "
              "tried: /ot\\0her/libother.so, /ot\\0her/libother.wasm, /nowhere/libother.so"]),
            (["ldpath", "/other", "libother.so"], ["loaded libother.so"])):
        result = run_bounded(guests, args, dirs=[f"{tmp_path}::/"])
        assert result.exit_code == 0, result.error
        lines = result.stdout.decode().splitlines()
        assert [x[:len(e)] for x, e in zip(lines, expected, strict=True)] == expected


def test_a_huge_sparse_file_is_refused_unread(guests: Path, tmp_path: Path) -> None:
    """3 GB of holes (with the wasm magic, or without): refused by size or magic before a
    byte more is read; the coordinator (this process) stays small."""
    (tmp_path / "lib").mkdir()
    for name, head in (("libmagic.so", b"\0asm\x01\0\0\0"), ("libholes.so", b"")):
        with open(tmp_path / "lib" / name, "wb") as f:
            f.write(head)
            f.truncate(3 << 30)
    rss_before = psutil.Process().memory_info().rss
    result = run_bounded(guests, ["open", "libmagic.so", "libholes.so"], dirs=[f"{tmp_path}::/"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert result.exit_code == 0, result.error
    assert result.stdout.decode().splitlines() == [
        "failed libmagic.so: failed to load module: /lib/libmagic.so: 3221225472 bytes, more "
        "than the module size limit of 268435456 bytes (--max-module-size)",
        "failed libholes.so: failed to load module: /lib/libholes.so: not a valid module: "
        "malformed wasm at offset 0x0: expected the wasm magic \\0asm"]
    # Had either been read whole, this process's peak would have grown by 3 GB.
    assert peak < rss_before + (256 << 20)


def test_max_module_size_option(guests: Path, tmp_path: Path) -> None:
    """The limit is adjustable: a library just over it is refused, one at it loads."""
    (tmp_path / "lib").mkdir()
    padded = (guests / "hostile" / "libdecoy.so").read_bytes() + custom("pad", bytes(100_000))
    (tmp_path / "lib" / "libbig.so").write_bytes(padded)
    result = run_bounded(guests, ["open", "libbig.so"], dirs=[f"{tmp_path}::/"],
                         max_module_size=len(padded) - 1)
    assert result.stdout.decode() == (
        f"failed libbig.so: failed to load module: /lib/libbig.so: {len(padded)} bytes, more "
        f"than the module size limit of {len(padded) - 1} bytes (--max-module-size)\n")
    result = run_bounded(guests, ["open", "libbig.so"], dirs=[f"{tmp_path}::/"],
                         max_module_size=len(padded))
    assert result.stdout.decode() == "loaded libbig.so\n"
    # The command line: a main module over the limit cannot start.
    run = subprocess.run([*WASMGROUP, "run", "--max-module-size", "1K",
                          str(guests / "hostile" / "probe.wasm"), "--", "open"],
                         capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert run.returncode == EXIT_RUNTIME_ERROR
    assert "more than the module size limit of 1024 bytes (--max-module-size)" in run.stderr
    assert "Traceback" not in run.stderr


def test_chdir_resolves_like_the_locator(guests: Path, tmp_path: Path) -> None:
    """chdir goes through the same guest filesystem: symlinks inside the mapping work, one
    leading out (or a file) leaves the working directory as it was."""
    mapped = tmp_path / "mapped"
    (mapped / "sub" / "deeper").mkdir(parents=True)
    (mapped / "file").write_text("not a directory\n")
    os.symlink("sub", mapped / "inlink")
    os.symlink(tmp_path, mapped / "escape")
    result = run_bounded(guests, ["chdir", "/m/inlink", "/m/escape", "deeper",
                                  "/m/sub/../inlink/deeper", "/m/file", "/m/escape/mapped", "/m"],
                         dirs=[f"{mapped}::/m"])
    assert result.exit_code == 0, result.error
    assert result.stdout.decode().splitlines() == [
        "chdir /m/inlink: ok cwd=/m/inlink",
        "chdir /m/escape: failed cwd=/m/inlink",
        "chdir deeper: ok cwd=/m/inlink/deeper",
        "chdir /m/sub/../inlink/deeper: ok cwd=/m/inlink/deeper",
        "chdir /m/file: failed cwd=/m/inlink/deeper",
        "chdir /m/escape/mapped: failed cwd=/m/inlink/deeper",
        "chdir /m: ok cwd=/m"]


# ---- out-of-bounds stores (tests/programs/hostile/oob.c) -----------------------------------

def test_out_of_bounds_store_by_the_main_traps(guests: Path) -> None:
    fds = open_fds()
    result = run_program(str(guests / "hostile" / "oob.wasm"), ["/h/libpoke.so", "main"],
                         dirs=[f"{guests / 'hostile'}::/h"], capture_output=True)
    assert_nothing_left(fds)
    assert result.stdout == b"storing past the end from the main module\n"
    assert result.exit_code == 134
    assert result.error is not None and "out of bounds memory access" in result.error
    assert "oob.wasm!main" in result.error


def test_out_of_bounds_store_by_a_side_module_is_a_readable_failure(guests: Path) -> None:
    """wasmtime 50 aborts the worker rather than trapping (README, "Not yet"): the program
    fails, the message says why it most likely happened, and nothing is left behind."""
    fds = open_fds()
    result = run_program(str(guests / "hostile" / "oob.wasm"), ["/h/libpoke.so", "side"],
                         dirs=[f"{guests / 'hostile'}::/h"], capture_output=True)
    assert_nothing_left(fds)
    assert result.stdout == b"storing past the end from the side module\n"
    assert result.exit_code == EXIT_RUNTIME_ERROR
    assert result.error is not None
    assert re.fullmatch(r"the worker process of the main thread \(pid \d+\) killed by SIGABRT "
                        r"\(an abort in native code, .*out-of-bounds memory access once a side "
                        r"module shares the memory, where it would trap\)", result.error), \
        result.error
