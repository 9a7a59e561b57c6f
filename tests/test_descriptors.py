"""One descriptor table for the whole program: real guests, real worker processes.

A descriptor opened by any thread works in every other; closes, renumbers and dup2 are seen by
all; offsets are shared; a thread blocked reading a pipe, polling it or reading stdin still
takes part in a dlopen; every failure is a WASI errno, and nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import pty
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import wasmtime
from conftest import ROOT
from leaks import assert_nothing_left, open_fds, processes_marked

from wasmgroup.orchestrator import descriptors
from wasmgroup.orchestrator.descriptors import DescriptorTable
from wasmgroup.orchestrator.locate import GuestFilesystem
from wasmgroup.orchestrator.program import run_program
from wasmgroup.shared import wasi

WASMGROUP = [sys.executable, "-m", "wasmgroup.orchestrator.cli"]
SOURCES = ROOT / "tests" / "programs" / "fdtable"


def _input_bytes(size: int) -> bytes:
    """Runs of every length, and noise: RLE has work to do and chunks to reorder."""
    rng = random.Random(1234)
    out = bytearray()
    while len(out) < size:
        if rng.random() < 0.5:
            out += bytes([rng.randrange(256)]) * rng.randrange(1, 700)
        else:
            out += rng.randbytes(rng.randrange(1, 300))
    return bytes(out[:size])


@pytest.fixture(scope="module")
def native_compress(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same compressor built for the host with clang-19."""
    out = tmp_path_factory.mktemp("native") / "compress"
    subprocess.run(["clang-19", "-O2", "-pthread", str(SOURCES / "compress.c"), "-o", str(out)],
                   check=True)
    return out


@pytest.mark.parametrize(("run", "verify"), [(0, False), (1, False), (2, True)])
def test_parallel_compressor_matches_the_native_build(guests: Path, native_compress: Path,
                                                      tmp_path: Path, run: int,
                                                      verify: bool) -> None:
    data = _input_bytes(300_000 + run * 7777)
    (tmp_path / "in.bin").write_bytes(data)
    native = subprocess.run([str(native_compress), str(tmp_path / "in.bin"),
                             str(tmp_path / "native.out"), "4"],
                            capture_output=True, text=True, check=True)
    before = open_fds()
    result = run_program(str(guests / "fdtable" / "compress.wasm"),
                         ["/in.bin", "/out.bin", "4"], dirs=[f"{tmp_path}::/"],
                         verify_groups=verify)
    assert (result.exit_code, result.error, result.stderr) == (0, None, b"")
    assert result.stdout.decode() == native.stdout
    assert native.stdout.startswith(f"chunks={-(-len(data) // 4000)} in={len(data)} ")
    assert (tmp_path / "out.bin").read_bytes() == (tmp_path / "native.out").read_bytes()
    assert_nothing_left(before)


def test_parallel_compressor_lz_mode_matches_the_native_build(guests: Path,
                                                              native_compress: Path,
                                                              tmp_path: Path) -> None:
    """The mode scripts/bench-scaling times: LZ77 on 64 KiB chunks, workers' compute first."""
    (tmp_path / "in.bin").write_bytes(_input_bytes(400_000))
    args = ["2", "lz", "65536"]
    native = subprocess.run([str(native_compress), str(tmp_path / "in.bin"),
                             str(tmp_path / "native.out"), *args],
                            capture_output=True, text=True, check=True)
    result = run_program(str(guests / "fdtable" / "compress.wasm"),
                         ["/in.bin", "/out.bin", *args], dirs=[f"{tmp_path}::/"])
    assert (result.exit_code, result.error, result.stderr) == (0, None, b"")
    assert result.stdout.decode() == native.stdout
    assert native.stdout.startswith("chunks=7 in=400000 ")
    assert (tmp_path / "out.bin").read_bytes() == (tmp_path / "native.out").read_bytes()
    assert (tmp_path / "out.bin").stat().st_size < 400_000  # it does compress


def _fdshare(guests: Path, root: Path, scenario: str, **options: object) -> list[str]:
    result = run_program(str(guests / "fdtable" / "fdshare.wasm"), [scenario],
                         dirs=[f"{root}::/"], **options)  # type: ignore[arg-type]
    assert (result.exit_code, result.error) == (0, None), result.stderr
    return result.stdout.decode().splitlines()


@pytest.mark.parametrize("verify", [False, True])
def test_a_descriptor_opened_in_one_thread_works_in_another(guests: Path, tmp_path: Path,
                                                            verify: bool) -> None:
    before = open_fds()
    assert _fdshare(guests, tmp_path, "cross", verify_groups=verify) == [
        "thread write: 18 ok",  # main's descriptor, written by a thread
        "main pread: 18 hello from thread",
        "main write to thread's fd: 4",  # the thread's descriptor, used by main after join
        "by-thread: FROM thread"]
    assert_nothing_left(before)


def test_a_close_is_seen_by_every_thread(guests: Path, tmp_path: Path) -> None:
    """The thread cached the descriptor; after main closes it the thread gets EBADF, and after
    main reopens the number the thread writes to the new file, never the old one."""
    assert _fdshare(guests, tmp_path, "close") == [
        "thread second write: -1 Bad file descriptor",
        "reopened same number: 1",
        "thread third write: 6 ok",
        "a: one", "b: three"]


def test_dup2_over_a_descriptor_is_seen_by_every_thread(guests: Path, tmp_path: Path) -> None:
    assert _fdshare(guests, tmp_path, "renumber") == [
        "dup2: 1", "thread second write: 4 ok", "thread third write: 6 ok",
        "a: one", "b: two", "three"]


@pytest.mark.parametrize("verify", [False, True])
def test_numbers_reused_across_threads_never_reach_the_wrong_file(guests: Path, tmp_path: Path,
                                                                  verify: bool) -> None:
    assert _fdshare(guests, tmp_path, "churn", verify_groups=verify) == [
        f"churn-{i}: 150 lines, 0 foreign" for i in range(4)]


def test_threads_share_offsets_and_append_mode(guests: Path, tmp_path: Path) -> None:
    assert _fdshare(guests, tmp_path, "append") == [
        "/shared-offset.txt: 6900 bytes", "/appended.txt: 6900 bytes"]  # 300 * (11 + 12)
    for name in ("shared-offset.txt", "appended.txt"):
        lines = (tmp_path / name).read_text().splitlines()
        assert sorted(lines) == sorted([f"first {i:04d}" for i in range(300)]
                                       + [f"second {i:04d}" for i in range(300)])


def test_path_calls_stay_inside_the_mapping(guests: Path, tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("no")
    root = tmp_path / "root"
    root.mkdir()
    (root / "d-escape").symlink_to(tmp_path / "outside")
    assert _fdshare(guests, root, "fs") == [
        "mkdir: 0", "mkdir again: File exists", "rename: 0", "symlink: 0", "readlink: 3 two",
        "stat link: 0 regular=1", "lstat link: 0 symlink=1", "entries: 4",
        "escape: refused", "symlink escape: Capabilities insufficient", "unlink: 0 0", "rmdir: 0",
        "stat gone: No such file or directory", "bad fd: Bad file descriptor"]
    assert sorted(os.listdir(root)) == ["d-escape"]


def test_path_calls_take_no_round_trip(guests: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """stat, mkdir, rmdir, unlink, rename, symlink and readlink are served by the worker
    itself, beneath descriptors of the mappings it fetched once (every mapping: here a
    second one); only opening a path still asks the coordinator, whose table gives the
    number."""
    served: list[str] = []
    real_serve = descriptors.serve

    def counting(table: DescriptorTable, name: str, args: list[object]) -> object:
        served.append(name)
        return real_serve(table, name, args)  # type: ignore[arg-type]

    monkeypatch.setattr(descriptors, "serve", counting)
    root = tmp_path / "root"
    root.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    (root / "d-escape").symlink_to(tmp_path)
    result = run_program(str(guests / "fdtable" / "fdshare.wasm"), ["fs"],
                         dirs=[f"{root}::/", f"{other}::/elsewhere"])
    assert (result.exit_code, result.error) == (0, None), result.stderr
    assert "escape: refused" in result.stdout.decode().splitlines()
    assert "path_call" not in served
    assert served.count("fs_mapping") == 3  # two mappings, then the end of the list
    assert sorted(os.listdir(root)) == ["d-escape"]
    assert os.listdir(other) == []


def _with_plugin(guests: Path, tmp_path: Path) -> Path:
    (tmp_path / "lib").mkdir()
    shutil.copy(guests / "fdtable" / "libfdplug.so", tmp_path / "lib")
    return tmp_path


@pytest.mark.parametrize("scenario", ["pipe", "poll"])
def test_a_thread_blocked_on_a_pipe_takes_part_in_a_dlopen(guests: Path, tmp_path: Path,
                                                           scenario: str) -> None:
    """Without taking part, the dlopen would wait for the blocked thread forever; with it,
    the reader still gets every byte written afterwards."""
    before = open_fds()
    lines = _fdshare(guests, _with_plugin(guests, tmp_path), scenario, verify_groups=True)
    expected = ["dlopened: 42"]
    if scenario == "poll":
        expected.append("poll: 1 revents_in=1")
    assert lines == [*expected, "reader got 10000 bytes"]
    assert_nothing_left(before)


def test_a_thread_blocked_writing_a_full_pipe_takes_part_in_a_dlopen(guests: Path,
                                                                     tmp_path: Path) -> None:
    lines = _fdshare(guests, _with_plugin(guests, tmp_path), "pipewrite")
    assert lines[0] == "dlopened: 42"
    assert sorted(lines[1:]) == ["reader got 100000 bytes", "writer wrote 100000 bytes"]


def test_a_thread_blocked_reading_stdin_takes_part_in_a_dlopen(guests: Path,
                                                               tmp_path: Path) -> None:
    """stdin is read by the guest only: what arrives after the dlopen all reaches it."""
    root = _with_plugin(guests, tmp_path)
    proc = subprocess.Popen([*WASMGROUP, "run", "--dir", f"{root}::/",
                             str(guests / "fdtable" / "fdshare.wasm"), "--", "stdin"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == b"dlopened: 42\n"  # while the reader is blocked
        proc.stdin.write(b"y" * 5000)
        proc.stdin.close()
        assert proc.stdout.read() == b"reader got 5000 bytes\n"
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()


def test_a_terminal_is_a_terminal_and_dev_null_is_not(guests: Path, tmp_path: Path) -> None:
    """stdout on a pseudo-terminal, stdin /dev/null (a character device too), stderr a pipe."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([*WASMGROUP, "run", str(guests / "fdtable" / "fdshare.wasm"),
                               "--", "isatty"], stdin=subprocess.DEVNULL, stdout=follower,
                              stderr=subprocess.PIPE, timeout=120)
        os.close(follower)
        follower = -1
        output = b""
        with contextlib.suppress(OSError):  # EIO once the terminal is drained and closed
            while chunk := os.read(leader, 4096):
                output += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert proc.returncode == 0, proc.stderr
    assert output.replace(b"\r\n", b"\n") == b"isatty: 0 1 0\n"


def _errnos_module(body: str) -> bytes:
    """A freestanding guest calling WASI directly; exits with the errno of the checked call."""
    return wasmtime.wat2wasm(f"""
        (module
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (import "wasi_snapshot_preview1" "fd_write"
            (func $write (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
          (import "wasi_snapshot_preview1" "fd_seek"
            (func $seek (param i32 i64 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "fd_pread"
            (func $pread (param i32 i32 i32 i64 i32) (result i32)))
          (import "wasi_snapshot_preview1" "fd_renumber"
            (func $renumber (param i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "path_open"
            (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 100) "a\\00b")
          (data (i32.const 200) "../../etc/passwd")
          (data (i32.const 300) "caf\\e9")
          (func (export "_start") (call $exit {body})))""")


@pytest.mark.parametrize(("body", "errno"), [
    ("(call $close (i32.const 99))", wasi.EBADF),
    ("(call $close (i32.const -1))", wasi.EBADF),
    ("(call $renumber (i32.const 1) (i32.const 70000))", wasi.EBADF),
    ("(call $renumber (i32.const 55) (i32.const 1))", wasi.EBADF),
    # an iovec array outside memory, an iovec pointing outside memory
    ("(call $write (i32.const 1) (i32.const 65530) (i32.const 2) (i32.const 0))", wasi.EFAULT),
    ("(i32.store (i32.const 0) (i32.const 65000)) (i32.store (i32.const 4) (i32.const 9999))"
     " (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))", wasi.EFAULT),
    # more iovecs than IOV_MAX (1024), a count near 2^31: writev's EINVAL, nothing allocated
    ("(call $write (i32.const 1) (i32.const 0) (i32.const 1025) (i32.const 9000))", wasi.EINVAL),
    ("(call $write (i32.const 1) (i32.const 0) (i32.const 0x7fffffff) (i32.const 8))",
     wasi.EINVAL),
    # a seek with no such whence, before the start; a read at a negative offset
    ("(call $seek (i32.const 1) (i64.const 0) (i32.const 9) (i32.const 8))", wasi.EINVAL),
    ("(call $seek (i32.const 3) (i64.const 0) (i32.const 0) (i32.const 8))", wasi.EISDIR),
    ("(i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const 4))"
     " (call $pread (i32.const 3) (i32.const 0) (i32.const 1) (i64.const -5) (i32.const 8))",
     wasi.EINVAL),
    # a NUL byte in a path, a path leading out of its directory's mapping (/data), a
    # "directory" that is stdout
    ("(call $open (i32.const 3) (i32.const 1) (i32.const 100) (i32.const 3) (i32.const 0)"
     " (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 8))", wasi.EINVAL),
    ("(call $open (i32.const 3) (i32.const 1) (i32.const 200) (i32.const 16) (i32.const 0)"
     " (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 8))", wasi.ENOTCAPABLE),
    ("(call $open (i32.const 1) (i32.const 1) (i32.const 200) (i32.const 1) (i32.const 0)"
     " (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 8))", wasi.ENOTDIR),
    # a path that is not UTF-8 (Latin-1 "café")
    ("(call $open (i32.const 3) (i32.const 1) (i32.const 300) (i32.const 4) (i32.const 1)"
     " (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 8))", wasi.EILSEQ),
])
def test_bad_descriptor_calls_return_errnos(tmp_path: Path, body: str, errno: int) -> None:
    (tmp_path / "root").mkdir()
    prog = tmp_path / "calls.wasm"
    prog.write_bytes(_errnos_module(body))
    before = open_fds()
    result = run_program(str(prog), dirs=[f"{tmp_path / 'root'}::/data"])
    assert (result.exit_code, result.error) == (errno, None)
    assert_nothing_left(before)


def test_the_table_bumps_a_generation_for_every_change(tmp_path: Path) -> None:
    """Process-free: what workers compare their caches against."""
    with GuestFilesystem.from_specs([f"{tmp_path}::/"]) as fs:
        table = DescriptorTable(fs, [None, None, None])
        try:
            generations = table.generations
            assert table.fd_prestat(3) == [0, "/"]
            opened = table.path_open(3, 1, "f", wasi.OFLAG_CREAT, wasi.RIGHT_FD_WRITE, 0, 0)
            assert opened == [0, 0]  # the lowest free number: stdio was closed
            start = generations.get(0)
            assert table.fd_dup(0, 10) == [0, 10]
            assert table.fd_renumber(10, 0) == [0]
            assert generations.get(0) != start and generations.get(10) != 0
            assert table.fd_close(0) == [0]
            with pytest.raises(wasi.WasiError):
                table.fetch(0)
        finally:
            table.close()


def test_a_guest_out_of_descriptors_gets_emfile_and_still_works(guests: Path,
                                                                 tmp_path: Path) -> None:
    """A guest opening files without end, under a low descriptor limit: EMFILE at the table's
    capacity (the limit less the coordinator's reserve), and then stdout, a new thread and
    the reuse of a closed number all work; nothing is left behind."""
    import resource

    (tmp_path / "f.txt").write_text("x")
    limit = 400

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(
            resource.RLIMIT_NOFILE)[1]))

    mark = f"emfile-{os.getpid()}"
    proc = subprocess.run([*WASMGROUP, "run", "--dir", f"{tmp_path}::/d",
                           str(guests / "fdtable" / "open_until_refused.wasm"), "/d/f.txt"],
                          capture_output=True, text=True, timeout=120, check=False,
                          preexec_fn=low_limit, env={**os.environ, "WASMGROUP_TEST_MARK": mark})
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stdout
    capacity = limit - 256  # the reserve: max(256, limit // 4)
    assert proc.stdout.splitlines() == [
        f"opened {capacity - 4}, then: No file descriptors available",  # 0-2 and /d were taken
        "a new thread runs: yes", "after closing one: its number again"]
    assert processes_marked(mark) == []


def test_the_table_hands_out_the_lowest_free_number(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Process-free: the lowest free number after closes anywhere, dup's minimum honoured,
    EMFILE at the capacity (found from a number kept as the search's start)."""
    monkeypatch.setattr(descriptors, "guest_capacity", lambda: 12)
    with GuestFilesystem.from_specs([f"{tmp_path}::/"]) as fs:
        table = DescriptorTable(fs, [None, None, None])
        try:
            def open_one() -> int:
                answer = table.path_open(3, 1, "f", wasi.OFLAG_CREAT, wasi.RIGHT_FD_READ, 0, 0)
                return int(answer[1])

            assert [open_one() for _ in range(5)] == [0, 1, 2, 4, 5]  # 3 is the preopen
            assert table.fd_close(1) == [0] and table.fd_close(4) == [0]
            assert [open_one(), open_one(), open_one()] == [1, 4, 6]
            assert table.fd_dup(0, 9) == [0, 9]
            assert [open_one(), open_one()] == [7, 8]
            assert table.fd_dup(0, 0) == [0, 10]
            assert open_one() == 11  # 12 entries now: the capacity
            with pytest.raises(wasi.WasiError) as refused:
                open_one()
            assert refused.value.code == wasi.EMFILE
            assert table.fd_close(5) == [0]
            assert open_one() == 5
        finally:
            table.close()


def test_threads_started_after_1100_files_are_open_can_dlopen(guests: Path,
                                                             tmp_path: Path) -> None:
    """Their workers' sockets have numbers past 1024 in the coordinator: serving their
    dlopens must not select() on them (select refuses numbers past FD_SETSIZE)."""
    (tmp_path / "f.txt").write_text("x")
    fds = open_fds()
    result = run_program(str(guests / "fdtable" / "many_files_then_dlopen.wasm"),
                         ["1100", "/d/f.txt", "6", "/h/libpoke.so"],
                         dirs=[f"{tmp_path}::/d", f"{guests / 'hostile'}::/h"])
    assert (result.exit_code, result.error) == (0, None)
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "1100 files open"
    assert sorted(lines[1:]) == [f"thread {i}: 7" for i in range(6)]
    assert_nothing_left(fds)
