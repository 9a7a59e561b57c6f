"""Real third-party C code under wasmgroup, compared line by line with a native build.

SQLite (the amalgamation from the npm package better-sqlite3), Lua 5.4 (from the PyPI sdist of
lupa), Zstandard 1.5.4 and XZ Utils 5.4.1 (Debian's source packages) are fetched by
scripts/fetch-sources and built by scripts/build-guests twice: for wasix-libc (build/guests/)
and with the host's C compiler (build/native/). Each test runs both with the same arguments,
each in a fresh directory of its own, and wants the same output.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from leaks import assert_nothing_left, open_fds

import wasmgroup
from wasmgroup.orchestrator.program import RunResult, run_program

ROOT = Path(__file__).resolve().parent.parent
NATIVE = ROOT / "build" / "native"
PROGRAMS = ROOT / "tests" / "programs"
WASMGROUP = [sys.executable, "-m", "wasmgroup.orchestrator.cli"]

@pytest.fixture(scope="module")
def native() -> Path:
    if not (NATIVE / "sqlite" / "sqldrv").exists() or not (NATIVE / "lua" / "lua").exists():
        pytest.fail("native builds missing: run scripts/build-guests (scripts/test does)")
    return NATIVE


def run_native(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def run_wasm(program: Path, args: list[str], dirs: list[str], **kw: object) -> RunResult:
    fds = open_fds()
    result = run_program(str(program), args, dirs=dirs, **kw)  # type: ignore[arg-type]
    assert_nothing_left(fds)
    return result


def fresh(tmp_path: Path, name: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    return d


# ---- SQLite ------------------------------------------------------------------------------------

def sqlite_both(guests: Path, native: Path, tmp_path: Path, *args: str, memory: bool = False,
                **kw: object) -> tuple[list[str], list[str]]:
    """`sqldrv MODE DIR ARGS...` natively and under wasmgroup (DIR mapped at /data), or with
    DIR ":memory:" (an in-memory database) when `memory`."""
    ext = str(native / "sqlite" / "libwgext.so")
    ndir = ":memory:" if memory else str(fresh(tmp_path, "native"))
    nat = run_native([str(native / "sqlite" / "sqldrv"), args[0], ndir,
                      *[a.replace("{ext}", ext) for a in args[1:]]])
    assert nat.returncode == 0, nat.stdout + nat.stderr
    data = fresh(tmp_path, "wasm")
    res = run_wasm(guests / "sqlite" / "sqldrv.wasm",
                   [args[0], ":memory:" if memory else "/data",
                    *[a.replace("{ext}", "/ext/libwgext.so") for a in args[1:]]],
                   [f"{data}::/data", f"{guests / 'sqlite'}::/ext"], **kw)
    out = res.stdout.decode()
    assert res.error is None and res.exit_code == 0, (res.exit_code, res.error, out)
    return nat.stdout.splitlines(), out.splitlines()


def test_sqlite_file_database(guests: Path, native: Path, tmp_path: Path) -> None:
    nat, wasm = sqlite_both(guests, native, tmp_path, "basic")
    assert wasm == nat
    assert nat[-1] == "basic: ok" and "count: n=600 qty=29949 price=1792.50" in nat
    assert any(line.startswith("duplicate: rc=19 UNIQUE constraint failed") for line in nat)
    # The database is a real file in the mapped directory, readable by the native build.
    db = tmp_path / "wasm" / "basic.db"
    assert db.read_bytes()[:16] == b"SQLite format 3\0"
    check = run_native([str(native / "sqlite" / "sqldrv"), "basic", str(tmp_path / "wasm")])
    assert check.returncode == 0


def test_sqlite_loadable_extension_is_a_side_module(guests: Path, native: Path,
                                                    tmp_path: Path) -> None:
    nat, wasm = sqlite_both(guests, native, tmp_path, "ext", "{ext}", verify_groups=True)
    assert wasm == nat
    assert "rot13: r=Uryyb, JroNffrzoyl! rr=abc" in nat
    assert "fib: f10=55 f40=102334155" in nat
    assert "fib(-1): rc=1 fib: negative argument" in nat
    assert "missing library: rc=1 error reported" in nat
    assert "missing entry point: rc=1 named in the error" in nat
    assert nat[-1] == "ext: ok"


@pytest.mark.parametrize("mode", ["threads", "shared"])
def test_sqlite_threads_on_an_in_memory_database(guests: Path, native: Path, tmp_path: Path,
                                                 mode: str) -> None:
    """SQLite's mutexes across threads (one serialized connection; shared cache: a connection
    per thread over one in-memory database), no descriptors involved."""
    nat, wasm = sqlite_both(guests, native, tmp_path, mode, "4", memory=True, verify_groups=True)
    assert nat[-1] == f"{mode}: ok"
    assert "total: n=161 threads=5 sum_n=3120" in nat
    assert wasm == nat


def test_sqlite_threads_share_one_connection(guests: Path, native: Path, tmp_path: Path) -> None:
    nat, wasm = sqlite_both(guests, native, tmp_path, "threads", "4", verify_groups=True)
    assert nat[-1] == "threads: ok"
    assert wasm == nat


def test_sqlite_shared_cache_threads(guests: Path, native: Path, tmp_path: Path) -> None:
    nat, wasm = sqlite_both(guests, native, tmp_path, "shared", "4", verify_groups=True)
    assert nat[-1] == "shared: ok"
    assert wasm == nat


# ---- Lua -------------------------------------------------------------------------------------

def lua_both(guests: Path, native: Path, tmp_path: Path, args: list[str], **kw: object
             ) -> tuple[subprocess.CompletedProcess[str], RunResult]:
    """`lua ARGS...` natively and under wasmgroup. {dir} in ARGS: a fresh directory holding
    wgmod.so (may be written); {src}: tests/programs/lua (the scripts)."""
    ndir, wdir = fresh(tmp_path, "native"), fresh(tmp_path, "wasm")
    shutil.copy(native / "lua" / "wgmod.so", ndir)
    shutil.copy(guests / "lua" / "wgmod.so", wdir)
    nat = run_native([str(native / "lua" / "lua"),
                      *[a.replace("{dir}", str(ndir)).replace("{src}", str(PROGRAMS / "lua"))
                        for a in args]])
    res = run_wasm(guests / "lua" / "lua.wasm",
                   [a.replace("{dir}", "/work").replace("{src}", "/src") for a in args],
                   [f"{wdir}::/work", f"{guests / 'lua'}::/src"], **kw)
    return nat, res


def test_lua_plain_script(guests: Path, native: Path, tmp_path: Path) -> None:
    nat, res = lua_both(guests, native, tmp_path, ["{src}/plain.lua", "{dir}"])
    assert nat.returncode == 0, nat.stderr
    assert res.error is None and res.exit_code == 0, (res.error, res.stderr)
    assert res.stdout.decode().splitlines() == nat.stdout.splitlines()
    assert nat.stdout.splitlines()[-1] == "done" and "counter\t7" in nat.stdout
    assert not (tmp_path / "wasm" / "plain.txt").exists()  # written, read back and removed


def test_lua_require_c_module(guests: Path, native: Path, tmp_path: Path) -> None:
    nat, res = lua_both(guests, native, tmp_path, ["{src}/require.lua", "{dir}"],
                        verify_groups=True)
    assert nat.returncode == 0, nat.stderr
    assert res.error is None and res.exit_code == 0, (res.error, res.stderr)
    lines = nat.stdout.splitlines()
    assert res.stdout.decode().splitlines() == lines
    assert "loaded\twgmod 1.0\tloads\t1" in lines and "sum\t15\t0" in lines
    assert "check error\tfalse\twgmod.check: integer expected, got string" in lines
    assert "parse\t127\tERANGE\tinvalid" in lines  # errno from a side module
    assert "missing\tfalse\ttrue\ttrue" in lines and lines[-1] == "done"


def test_lua_uncaught_error_exits_1_like_native(guests: Path, native: Path,
                                               tmp_path: Path) -> None:
    """A script error ends the interpreter with status 1 and Lua's message, through longjmp."""
    nat, res = lua_both(guests, native, tmp_path,
                        ["-e", "package.cpath='{dir}/?.so' local m = require 'wgmod' "
                               "print(m.sum(1, 2)) m.check(1.5)"])
    assert nat.returncode == 1
    assert res.error is None and res.exit_code == 1
    assert res.stdout.decode() == nat.stdout == "3\n"
    # "PROGNAME: (command line):1: message", then the same traceback; argv[0] differs.
    nat_err = [line.split(": ", 1)[-1] for line in nat.stderr.splitlines()]
    wasm_err = [line.split(": ", 1)[-1] for line in res.stderr.decode().splitlines()]
    assert nat_err[0] == "(command line):1: wgmod.check: integer expected, got number"
    assert wasm_err == nat_err


def test_lua_cli_run_matches_native(guests: Path, native: Path, tmp_path: Path) -> None:
    """The same Lua program through `wasmgroup run`, with --verify-groups."""
    wdir = fresh(tmp_path, "wasm")
    shutil.copy(guests / "lua" / "wgmod.so", wdir)
    proc = subprocess.run([*WASMGROUP, "run", "--verify-groups", "--dir", f"{wdir}::/work",
                           "--dir", f"{guests / 'lua'}::/src", str(guests / "lua" / "lua.wasm"),
                           "--", "/src/require.lua", "/work"],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ})
    ndir = fresh(tmp_path, "native")
    shutil.copy(native / "lua" / "wgmod.so", ndir)
    nat = run_native([str(native / "lua" / "lua"), str(PROGRAMS / "lua" / "require.lua"),
                      str(ndir)])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == nat.stdout


# ---- real Lua C modules: LPeg and Lua CJSON, each with its own test suite ---------------------
# Debian's sources of both, built by scripts/build-guests as side modules that `require` loads
# (natively: shared objects); each suite runs from its source tree, unchanged.

SOURCES = Path(os.environ.get("WASMGROUP_SOURCES", ROOT / "build" / "sources"))


def lua_suite_both(guests: Path, native: Path, tree: str, cwd: str, lua_path: str,
                   script: str) -> tuple[subprocess.CompletedProcess[bytes], RunResult]:
    """`lua -e "unpack=table.unpack" SCRIPT` (the suites call Lua 5.1's global `unpack`) in
    SOURCES/TREE/CWD, natively and under wasmgroup (the tree at /src, the modules at /mods)."""
    prelude = ["-e", "unpack = unpack or table.unpack"]
    nat = subprocess.run([str(native / "lua" / "lua"), *prelude, script], capture_output=True,
                         timeout=300, check=False, cwd=SOURCES / tree / cwd,
                         env={**os.environ, "LUA_CPATH": str(native / "lua" / "?.so"),
                              "LUA_PATH": f"{SOURCES / tree / lua_path}/?.lua"})
    res = run_wasm(guests / "lua" / "lua.wasm", [*prelude, script],
                   [f"{SOURCES / tree}::/src", f"{guests / 'lua'}::/mods"],
                   cwd=f"/src/{cwd}".rstrip("/"),
                   env={"LUA_CPATH": "/mods/?.so", "LUA_PATH": f"/src/{lua_path}/?.lua"})
    return nat, res


def test_lpeg_passes_its_own_test_suite(guests: Path, native: Path) -> None:
    """LPeg 1.0.2's test.lua: patterns, grammars, captures, errors raised from the side
    module through Lua's longjmp, 200 captures deep."""
    nat, res = lua_suite_both(guests, native, "lpeg", "", ".", "test.lua")
    assert nat.returncode == 0, nat.stderr
    assert (res.exit_code, res.error) == (0, None), res.stderr
    assert res.stdout == nat.stdout
    assert nat.stdout.splitlines()[-1] == b"OK"


def test_lua_cjson_runs_its_own_test_suite_as_native(guests: Path, native: Path) -> None:
    """Lua CJSON 2.1.0's tests/test.lua: the same verdicts, line by line (10 of its 104 tests
    fail natively too: it was written for Lua 5.1's messages). NaN signs are left out: the
    sign of a NaN that an operation makes is the platform's (x86 sets it, wasm may not)."""
    nat, res = lua_suite_both(guests, native, "cjson", "tests", "lua", "test.lua")
    assert (res.exit_code, res.error) == (nat.returncode, None), res.stderr
    assert res.stdout.replace(b"-nan", b"nan") == nat.stdout.replace(b"-nan", b"nan")
    assert b"==> Summary: " in nat.stdout


# ---- a parallel compressor -------------------------------------------------------------------

def pcomp_both(guests: Path, native: Path, tmp_path: Path, io: str) -> tuple[list[str], list[str]]:
    nat = run_native([str(native / "pcomp" / "pcomp"), str(fresh(tmp_path, "native")), "4", io])
    assert nat.returncode == 0, nat.stdout + nat.stderr
    res = run_wasm(guests / "pcomp" / "pcomp.wasm", ["/data", "4", io],
                   [f"{fresh(tmp_path, 'wasm')}::/data"], verify_groups=True)
    assert res.error is None, res.error
    return nat.stdout.splitlines(), res.stdout.decode().splitlines()


def test_parallel_compressor_with_io_in_main(guests: Path, native: Path, tmp_path: Path) -> None:
    """Main reads the input and writes the output; four worker threads compress."""
    nat, wasm = pcomp_both(guests, native, tmp_path, "main")
    assert nat[-2:] == ["roundtrip ok", "pcomp: ok"]
    assert wasm == nat
    assert (tmp_path / "wasm" / "output.rle").read_bytes() \
        == (tmp_path / "native" / "output.rle").read_bytes()


def test_parallel_compressor_reader_and_writer_threads(guests: Path, native: Path,
                                                       tmp_path: Path) -> None:
    """A reader and a writer thread use the input and output descriptors main opened."""
    nat, wasm = pcomp_both(guests, native, tmp_path, "threads")
    assert nat[-2:] == ["roundtrip ok", "pcomp: ok"]
    assert wasm == nat


# ---- Zstandard ---------------------------------------------------------------------------------
# The real `zstd` command (Debian's libzstd 1.5.4 sources): -T2 runs two compression threads and,
# multi-threaded, reads and writes the files main opened from asynchronous I/O threads. Its
# output does not depend on the thread count, so the native and the wasm output are the same.

ZSTD_JOB = ["-T2", "-B1MiB", "-3"]  # 1 MiB jobs: both compression threads have work


@pytest.fixture(scope="module")
def text_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 MiB of seeded pseudo-text (compressible, but not trivially): zstd's and xz's input."""
    rng = random.Random(7)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(2000)]
    text = " ".join(rng.choice(words) for _ in range(1_100_000)).encode()[:6 << 20]
    path = tmp_path_factory.mktemp("zstd") / "input.txt"
    path.write_bytes(text)
    return path


def command_both(command: str, guests: Path, native: Path, tmp_path: Path, args: list[str],
                 files: dict[str, Path]
                 ) -> tuple[subprocess.CompletedProcess[str], RunResult, Path, Path]:
    """The real `command ARGS` (zstd, xz) natively and under wasmgroup, each in a fresh
    directory holding `files` (guest view: /data); {d} in ARGS is that directory."""
    ndir, wdir = fresh(tmp_path, "native"), fresh(tmp_path, "wasm")
    for name, source in files.items():
        shutil.copy2(source, ndir / name)  # (with its times: xz gives them to its output)
        shutil.copy2(source, wdir / name)
    nat = run_native([str(native / command / command),
                      *[a.replace("{d}", str(ndir)) for a in args]])
    res = run_wasm(guests / command / f"{command}.wasm", [a.replace("{d}", "/data") for a in args],
                   [f"{wdir}::/data"])
    return nat, res, ndir, wdir


def test_zstd_threads_compress_as_native_and_round_trip(guests: Path, native: Path,
                                                        tmp_path: Path, text_input: Path) -> None:
    nat, res, ndir, wdir = command_both("zstd", guests, native, tmp_path, [
        "-q", *ZSTD_JOB, "-f", "{d}/input.txt", "-o", "{d}/input.txt.zst"],
        {"input.txt": text_input})
    assert nat.returncode == 0, nat.stderr
    assert (res.exit_code, res.error, res.stderr) == (0, None, b"")
    packed = (wdir / "input.txt.zst").read_bytes()
    assert packed == (ndir / "input.txt.zst").read_bytes()
    assert len(packed) < text_input.stat().st_size // 2
    (wdir / "input.txt").unlink()
    back = run_wasm(guests / "zstd" / "zstd.wasm",
                    ["-q", "-d", "-T2", "/data/input.txt.zst", "-o", "/data/back.txt"],
                    [f"{wdir}::/data"])
    assert (back.exit_code, back.error) == (0, None), back.stderr
    assert (wdir / "back.txt").read_bytes() == text_input.read_bytes()


def test_zstd_threads_from_stdin_to_stdout(guests: Path, native: Path, text_input: Path) -> None:
    """A pipe: the I/O threads read fd 0 and write fd 1, the descriptors the program started
    with."""
    with text_input.open("rb") as stdin:
        nat = subprocess.run([str(native / "zstd" / "zstd"), "-q", *ZSTD_JOB, "-c"],
                             stdin=stdin, capture_output=True, timeout=120, check=False)
    assert nat.returncode == 0, nat.stderr
    fds = open_fds()
    res = wasmgroup.run(guests / "zstd" / "zstd.wasm", ["-q", *ZSTD_JOB, "-c"],
                        stdin=text_input)
    assert_nothing_left(fds)
    assert (res.exit_code, res.error, res.stderr) == (0, None, b"")
    assert res.stdout == nat.stdout


def test_zstd_damaged_input_fails_as_native(guests: Path, native: Path, tmp_path: Path,
                                            text_input: Path) -> None:
    packed = tmp_path / "good.zst"
    subprocess.run([str(native / "zstd" / "zstd"), "-q", *ZSTD_JOB, str(text_input), "-o",
                    str(packed)], check=True, timeout=120)
    data = bytearray(packed.read_bytes())
    for at in range(len(data) // 2, len(data) // 2 + 64):
        data[at] ^= 0x5A
    damaged = tmp_path / "bad.zst"
    damaged.write_bytes(bytes(data))
    nat, res, _, wdir = command_both("zstd", guests, native, tmp_path, [
        "-d", "-T2", "-f", "{d}/bad.zst", "-o", "{d}/out.txt"], {"bad.zst": damaged})
    assert nat.returncode != 0
    assert res.exit_code == nat.returncode and res.error is None
    # (zstd shortens a long file name to its end: the names are left out)
    assert re.sub(r"\S*bad\.zst", "FILE", res.stderr.decode()) \
        == re.sub(r"\S*bad\.zst", "FILE", nat.stderr)
    assert "Data corruption detected" in nat.stderr
    assert not (wdir / "out.txt").exists()  # zstd removes its half-written output, as natively


# ---- XZ Utils ----------------------------------------------------------------------------------
# The real `xz` command (Debian's xz-utils 5.4.1 sources, configured by its own autotools): -T2
# compresses blocks in liblzma's pool of threads, whose output depends on the block size, not
# on the thread count. On files it works as a file tool: the output gets the input's times, the
# input is removed, an existing output is refused. (Not its mode: WASI files have none, and
# wasix-libc's fchmod changes nothing, as under Wasmer.)

XZ_JOB = ["-T2", "--block-size=1MiB", "-6"]  # 1 MiB blocks: both threads have work


def test_xz_threads_compress_files_as_native_and_round_trip(guests: Path, native: Path,
                                                            tmp_path: Path, text_input: Path
                                                            ) -> None:
    source = tmp_path / "input.txt"
    shutil.copy(text_input, source)
    mtime_ns = 1_700_000_000_987_654_321
    os.utime(source, ns=(1_600_000_000_123_456_789, mtime_ns))
    nat, res, ndir, wdir = command_both("xz", guests, native, tmp_path,
                                        [*XZ_JOB, "{d}/input.txt"], {"input.txt": source})
    assert nat.returncode == 0, nat.stderr
    assert (res.exit_code, res.error, res.stderr) == (0, None, b"")
    packed = (wdir / "input.txt.xz").read_bytes()
    assert packed == (ndir / "input.txt.xz").read_bytes()
    assert len(packed) < text_input.stat().st_size // 2
    assert not (wdir / "input.txt").exists() and not (ndir / "input.txt").exists()
    assert (wdir / "input.txt.xz").stat().st_mtime_ns == mtime_ns
    assert (ndir / "input.txt.xz").stat().st_mtime_ns == mtime_ns
    back = run_wasm(guests / "xz" / "xz.wasm", ["-d", "-T2", "/data/input.txt.xz"],
                    [f"{wdir}::/data"])
    assert (back.exit_code, back.error, back.stderr) == (0, None, b"")
    assert (wdir / "input.txt").read_bytes() == text_input.read_bytes()
    assert (wdir / "input.txt").stat().st_mtime_ns == mtime_ns
    assert not (wdir / "input.txt.xz").exists()


def test_xz_threads_from_stdin_to_stdout(guests: Path, native: Path, text_input: Path) -> None:
    with text_input.open("rb") as stdin:
        nat = subprocess.run([str(native / "xz" / "xz"), *XZ_JOB, "-c"], stdin=stdin,
                             capture_output=True, timeout=120, check=False)
    assert nat.returncode == 0, nat.stderr
    fds = open_fds()
    res = wasmgroup.run(guests / "xz" / "xz.wasm", [*XZ_JOB, "-c"], stdin=text_input)
    assert_nothing_left(fds)
    assert (res.exit_code, res.error, res.stderr) == (0, None, b"")
    assert res.stdout == nat.stdout


def xz_message(stderr: str | bytes, program: str) -> str:
    """A message of xz without the parts that differ by where it ran: its name (argv[0]) and
    the directory of the files."""
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    return re.sub(r"\S*/(\w+\.txt)", r"\1", text.replace(program, "xz"))


def test_xz_refuses_an_existing_output_as_native(guests: Path, native: Path, tmp_path: Path,
                                                 text_input: Path) -> None:
    older = tmp_path / "older.xz"
    older.write_bytes(b"not overwritten")
    nat, res, ndir, wdir = command_both("xz", guests, native, tmp_path, [
        *XZ_JOB, "{d}/input.txt"], {"input.txt": text_input, "input.txt.xz": older})
    assert nat.returncode == 1
    assert (res.exit_code, res.error) == (1, None)
    assert "File exists" in nat.stderr
    program = res.stderr.decode().split(":")[0]
    assert xz_message(res.stderr, program) == xz_message(nat.stderr, str(native / "xz" / "xz"))
    for d in (ndir, wdir):
        assert (d / "input.txt.xz").read_bytes() == b"not overwritten"
        assert (d / "input.txt").read_bytes() == text_input.read_bytes()


def test_xz_skips_links_as_native(guests: Path, native: Path, tmp_path: Path) -> None:
    """Without --keep, xz will not remove a symbolic link or a file with more hard links
    (lstat/fstat through the guest's view): it skips them, with the native messages."""
    dirs = {"native": fresh(tmp_path, "native"), "wasm": fresh(tmp_path, "wasm")}
    for d in dirs.values():
        (d / "a.txt").write_text("text\n" * 1000)
        (d / "link.txt").symlink_to("a.txt")
        os.link(d / "a.txt", d / "hard.txt")
    nat = run_native([str(native / "xz" / "xz"), *[str(dirs["native"] / n)
                                                   for n in ("link.txt", "hard.txt")]])
    res = run_wasm(guests / "xz" / "xz.wasm", ["/data/link.txt", "/data/hard.txt"],
                   [f"{dirs['wasm']}::/data"])
    assert nat.returncode == 2 and (res.exit_code, res.error) == (2, None)
    assert "Is a symbolic link, skipping" in nat.stderr
    assert "more than one hard link, skipping" in nat.stderr
    program = res.stderr.decode().split(":")[0]
    assert xz_message(res.stderr, program) == xz_message(nat.stderr, str(native / "xz" / "xz"))
    for d in dirs.values():
        assert sorted(p.name for p in d.iterdir()) == ["a.txt", "hard.txt", "link.txt"]


def test_xz_damaged_input_fails_as_native(guests: Path, native: Path, tmp_path: Path,
                                          text_input: Path) -> None:
    packed = tmp_path / "good.xz"
    with text_input.open("rb") as stdin, packed.open("wb") as out:
        subprocess.run([str(native / "xz" / "xz"), *XZ_JOB, "-c"], stdin=stdin, stdout=out,
                       check=True, timeout=120)
    data = bytearray(packed.read_bytes())
    for at in range(len(data) // 2, len(data) // 2 + 64):
        data[at] ^= 0x5A
    damaged = tmp_path / "bad.txt.xz"
    damaged.write_bytes(bytes(data))
    nat, res, _, wdir = command_both("xz", guests, native, tmp_path, [
        "-d", "-T2", "{d}/bad.txt.xz"], {"bad.txt.xz": damaged})
    assert nat.returncode == 1
    assert (res.exit_code, res.error) == (1, None)
    assert "Compressed data is corrupt" in nat.stderr
    program = res.stderr.decode().split(":")[0]
    assert xz_message(res.stderr, program) == xz_message(nat.stderr, str(native / "xz" / "xz"))
    assert not (wdir / "bad.txt").exists()  # xz removes its half-written output, as natively
    assert (wdir / "bad.txt.xz").exists()


# ---- scripts/fetch-sources -------------------------------------------------------------------

@pytest.mark.parametrize("name, what", [("sqlite", "better-sqlite3 12.11.1 from npm"),
                                        ("lua54", "lupa 2.8 from pypi")])
def test_fetch_sources_offline_is_one_clear_line(tmp_path: Path, name: str, what: str) -> None:
    """No cached archive and no registry: one error line naming the package, nothing left."""
    nowhere = "http://127.0.0.1:9/"  # nothing listens on the discard port
    env = {**os.environ, "WASMGROUP_SOURCES": str(tmp_path / "src"),
           "WASMGROUP_SOURCES_CACHE": str(tmp_path / "cache"),
           "npm_config_registry": nowhere, "npm_config_fetch_retries": "0",
           "npm_config_cache": str(tmp_path / "npm-cache"), "npm_config_offline": "false",
           "PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": nowhere, "PIP_RETRIES": "0",
           "PIP_NO_CACHE_DIR": "1"}
    for key in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"):
        env.pop(key, None)
    proc = subprocess.run([str(ROOT / "scripts" / "fetch-sources"), name], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"fetch-sources: error: could not fetch {what} "
                               "(offline, or that version is gone)")
    assert not (tmp_path / "src" / name).exists()
    assert os.listdir(tmp_path / "cache") == []


def test_fetch_sources_debian_failure_is_one_clear_line(tmp_path: Path) -> None:
    """apt-get cannot fetch the source package: one line with apt's reason, nothing left."""
    bindir = fresh(tmp_path, "bin")
    apt = bindir / "apt-get"
    apt.write_text('#!/bin/sh\ncase "$*" in *update*) exit 0 ;; esac\n'
                   'echo "E: Failed to fetch libzstd_1.5.4+dfsg2.orig.tar.xz  404  Not Found"\n'
                   'exit 100\n')
    apt.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}",
           "WASMGROUP_SOURCES": str(tmp_path / "src"),
           "WASMGROUP_SOURCES_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([str(ROOT / "scripts" / "fetch-sources"), "zstd"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "fetch-sources: error: could not fetch libzstd 1.5.4+dfsg2-5 from debian (offline, or "
        "that version is gone): E: Failed to fetch libzstd_1.5.4+dfsg2.orig.tar.xz  404  Not Found"]
    assert not (tmp_path / "src" / "zstd").exists()
    assert os.listdir(tmp_path / "cache") == []


def test_fetch_sources_refuses_an_archive_with_another_hash(tmp_path: Path) -> None:
    """The registry client hands over an archive whose sha256 is not the pinned one."""
    bindir = fresh(tmp_path, "bin")
    impostor = bindir / "npm"
    # `npm pack` that writes a different tarball under the expected name.
    impostor.write_text("#!/bin/sh\necho impostor | gzip > better-sqlite3-12.11.1.tgz\n")
    impostor.chmod(0o755)
    cache = fresh(tmp_path, "cache")
    (cache / "better-sqlite3-12.11.1.tgz").write_bytes(b"tampered")  # refetched, not trusted
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}",
           "WASMGROUP_SOURCES": str(tmp_path / "src"), "WASMGROUP_SOURCES_CACHE": str(cache)}
    proc = subprocess.run([str(ROOT / "scripts" / "fetch-sources"), "sqlite"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1
    assert "better-sqlite3-12.11.1.tgz from npm has sha256 " in proc.stderr
    assert "refusing it" in proc.stderr
    assert not (tmp_path / "src" / "sqlite").exists()
    assert sorted(os.listdir(cache)) == ["better-sqlite3-12.11.1.tgz"]
