"""Real programs, compiled from tests/programs by scripts/build-guests, run through the linker.

Each runs in one instance group (in this process through the Python API, or in a child
process through the CLI) and must print exactly what its C source says.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import wasmtime

from wasmgroup.orchestrator.program import (
    EXIT_RUNTIME_ERROR,
    EXIT_TRAP,
    Program,
    ProgramOptions,
    run_program,
)

WASMGROUP = [sys.executable, "-m", "wasmgroup.orchestrator.cli"]

PIE_EXPECTED = """\
pie main: start
foo_counter=1005
foo_ctor_ran=1
bar(4)=2104
bar_call_foo_fp(10)=1015
foo_twice_via_ptr(21)=42
foo_has_maybe_missing=0
foo_name=libfoo
main_fps[0](2)=23
main_fps[1](1)=1006
bar_bump(10)=1015
bar_read_counter=1015
main_counter_ptr=1015
baz(5)=122
baz_magic=4242
foo_bump via dlsym(1)=1016
dlsym foo_hidden: not found (expected)
""".splitlines()

PLUGINS_EXPECTED = """\
plugin host wasmgroup-demo 1.0: scanning /plugins
[hello] hello, world! (host wasmgroup-demo 1.0, x=21)
loaded libhello.so (hello: greets through the host's libc) run(21)=66
[math] sum(1..21)=231 squares=3311
loaded libmath.so (math: sums with a malloc'ed table) run(21)=3542
2 plugin(s), 1 failure(s)
""".splitlines()


def replace_file(path: Path, data: bytes) -> None:
    fresh = path.with_name(path.name + ".new")
    fresh.write_bytes(data)
    os.replace(fresh, path)


def run_pie(guests: Path, *args: str) -> tuple[int, list[str]]:
    result = run_program(str(guests / "pie" / "main.wasm"), args, dirs=[f"{guests}::/"],
                         env={"LD_LIBRARY_PATH": "/side"})
    assert result.error is None, result.error
    return result.exit_code, result.stdout.decode().splitlines()


def test_pie_main_needed_chain_runpath_and_dlsym(guests: Path) -> None:
    code, lines = run_pie(guests, "/rpath/libbaz.so")
    assert code == 0
    assert [line for line in lines if not line.startswith("  error:")][:len(PIE_EXPECTED)] \
        == PIE_EXPECTED
    # The hidden export is invisible to dlsym; the missing library fails and the program goes on.
    assert "  error: symbol 'foo_hidden' not found in libfoo.so" in lines
    missing = lines.index("dlopen libdoesnotexist.so: failed (expected)")
    assert "not found; tried: /side/libdoesnotexist.so" in lines[missing + 1]
    assert lines[-1] == "pie main: done"


def test_pie_main_relative_path_dlopen_against_cwd(guests: Path) -> None:
    # The default argument "../rpath/libbaz.so" is relative with a slash: resolved from cwd.
    result = run_program(str(guests / "pie" / "main.wasm"), [], dirs=[f"{guests}::/"],
                         env={"LD_LIBRARY_PATH": "/side"}, cwd="/pie")
    assert result.exit_code == 0, result.stdout
    assert "baz(5)=122" in result.stdout.decode().splitlines()


def test_plugin_host_dlopens_every_plugin(guests: Path) -> None:
    result = run_program(str(guests / "plugins" / "host.wasm"), ["/plugins"],
                         dirs=[f"{guests / 'plugins'}::/"])
    assert result.exit_code == 0, result.error
    lines = result.stdout.decode().splitlines()
    assert [line for line in lines if not line.startswith("failed ")] == PLUGINS_EXPECTED
    [failed] = [line for line in lines if line.startswith("failed ")]
    assert failed.startswith("failed libbroken.so: failed to load module: /plugins/libbroken.so")
    assert "expected the wasm magic" in failed
    assert str(guests) not in failed  # the guest never learns host paths


def test_failed_dlopens_leave_the_linker_as_it_was(guests: Path) -> None:
    """A trapping constructor, a type mismatch and a missing symbol: each dlopen returns NULL
    with a reason, and the good plugin loaded between them gets handle 2 and the memory it
    would get alone. (Table slots grown by the failed attempt stay, null: tables only grow.)"""
    faulty = Program(str(guests / "plugins" / "host.wasm"),
                     ProgramOptions(args=["/faulty"], dirs=[f"{guests / 'plugins'}::/"],
                                    capture_output=True))
    result = faulty.run()
    assert result.exit_code == 0, result.error
    lines = result.stdout.decode().splitlines()
    failures = {line.split(":")[0]: line for line in lines if line.startswith("failed ")}
    assert "__wasm_call_ctors failed: wasm trap" in failures["failed libctortrap.so"]
    assert "libctortrap.so!explode" in failures["failed libctortrap.so"]
    assert ("imports function host_add as (i32) -> (i32), but /host.wasm exports it as "
            "(i32, i32) -> (i32)") in failures["failed libmismatch.so"]
    assert "undefined data symbol no_such_data" in failures["failed libmissing.so"]
    assert "loaded libhello.so (hello: greets through the host's libc) run(21)=66" in lines
    assert lines[-1] == "1 plugin(s), 3 failure(s)"

    alone = Program(str(guests / "plugins" / "host.wasm"),
                    ProgramOptions(args=["/only-hello"], dirs=[
                        f"{guests / 'plugins'}::/",
                        f"{guests / 'plugins' / 'plugins'}::/only-hello"],
                        capture_output=True))
    # Same program, a directory holding only libhello.so's sibling plugins: compare layouts.
    alone.run()
    hello_faulty = faulty.linker.modules[faulty.linker.by_name["/faulty/libhello.so"]]
    assert hello_faulty.handle == 2
    assert sorted(faulty.linker.by_name) == ["/faulty/libhello.so"]
    first_alone = alone.linker.modules[2]
    assert hello_faulty.memory_base == first_alone.memory_base
    assert hello_faulty.table_base >= first_alone.table_base


@pytest.mark.parametrize("verify", [False, True])
def test_constructor_calling_dlsym_and_dlopen_during_its_load(guests: Path, verify: bool
                                                                 ) -> None:
    """dlsym from a constructor works (its slot lands after the new module's table region);
    a dlopen from a constructor fails cleanly instead of deadlocking the load."""
    result = run_program(str(guests / "plugins" / "host.wasm"), ["/ctordl"],
                         dirs=[f"{guests / 'plugins'}::/"], verify_groups=verify)
    assert result.exit_code == 0, result.error
    assert result.stdout.decode().splitlines()[1:] == [
        "[ctordl] nested dlopen refused: failed to load module: cannot load "
        "/plugins/libhello.so from a constructor of a library being loaded (dlopen inside "
        "dlopen)",
        "loaded libctordl.so (ctordl: dlsym and dlopen in its constructor) run(21)=1211",
        "1 plugin(s), 0 failure(s)"]


def test_same_name_twice_gives_same_handle_and_loads_once(guests: Path) -> None:
    program = Program(str(guests / "pie" / "main.wasm"),
                      ProgramOptions(args=["/rpath/libbaz.so"], dirs=[f"{guests}::/"],
                                     env={"LD_LIBRARY_PATH": "/side"}, capture_output=True))
    assert program.run().exit_code == 0
    modules_before = dict(program.linker.modules)
    handle = program.dlopen(program.main_worker, "/rpath/libbaz.so", None)  # type: ignore[arg-type]
    assert handle == program.linker.by_name["/rpath/libbaz.so"]
    assert program.linker.modules == modules_before
    # libbar and libfoo came in through NEEDED (post-order: libfoo first), then libbaz, libqux.
    assert program.linker.by_name["libfoo.so"] == 2
    assert program.linker.by_name["libbar.so"] == 3
    assert program.linker.by_name["libqux.so"] < program.linker.by_name["/rpath/libbaz.so"]


def test_call_to_unresolved_function_traps_naming_it(guests: Path) -> None:
    """The plugin loads (its missing import is a lazy stub); calling it ends the program."""
    result = run_program(str(guests / "plugins" / "host.wasm"), ["/stubcall"],
                         dirs=[f"{guests / 'plugins'}::/"])
    assert result.exit_code == EXIT_TRAP
    assert result.error == (
        "the program trapped in main thread: unresolved function no_such_function "
        "(imported by /stubcall/libcallsmissing.so) was called, but no loaded module exports it")


def test_missing_needed_library_fails_at_start(guests: Path) -> None:
    result = run_program(str(guests / "pie" / "main.wasm"), [], dirs=[f"{guests}::/"])
    assert result.exit_code == EXIT_RUNTIME_ERROR
    assert result.error is not None
    assert "library 'libbar.so' (needed by /pie/main.wasm) not found" in result.error
    assert "/usr/local/lib/libbar.wasm" in result.error


def test_a_trap_is_one_readable_error_with_backtrace(tmp_path: Path) -> None:
    prog = tmp_path / "trap.wasm"
    prog.write_bytes(wasmtime.wat2wasm(
        '(module (func $inner unreachable) (func (export "_start") call $inner))'))
    result = run_program(str(prog))
    assert result.exit_code == EXIT_TRAP
    assert result.error is not None
    assert "the program trapped" in result.error and "unreachable" in result.error
    assert "!inner" in result.error  # the wasm backtrace


def test_unprovided_import_fails_at_start_naming_it(tmp_path: Path) -> None:
    prog = tmp_path / "needs.wasm"
    prog.write_bytes(wasmtime.wat2wasm(
        '(module (import "wasi_snapshot_preview1" "fd_frobnicate" (func (param i32)))'
        ' (import "wasix_32v1" "teleport" (func)) (func (export "_start")))'))
    result = run_program(str(prog))
    assert result.exit_code == EXIT_RUNTIME_ERROR
    assert result.error is not None
    assert "wasi_snapshot_preview1.fd_frobnicate" in result.error
    assert "wasix_32v1.teleport" in result.error


def test_exit_code_is_the_programs(tmp_path: Path) -> None:
    prog = tmp_path / "exit.wasm"
    prog.write_bytes(wasmtime.wat2wasm(
        '(module (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))'
        ' (memory (export "memory") 1) (func (export "_start") (call $exit (i32.const 7))))'))
    assert run_program(str(prog)).exit_code == 7


def test_compile_cache_hits_and_rebuilds_corrupt_entries(guests: Path, tmp_path: Path) -> None:
    def run() -> Program:
        program = Program(str(guests / "pie" / "main.wasm"), ProgramOptions(
            args=["/rpath/libbaz.so"], dirs=[f"{guests}::/"], env={"LD_LIBRARY_PATH": "/side"},
            capture_output=True, cache_dir=tmp_path))
        assert program.run().exit_code == 0
        return program

    assert run().cache.compiled == 5  # main, libbar, libfoo, libbaz, libqux
    assert run().cache.compiled == 0
    artefacts = sorted(tmp_path.glob("*.cwasm"))
    assert len(artefacts) == 5
    # Corrupt copies replace the files (a new inode, as any writer but an in-place one
    # makes): truncating in place would pull pages from under this process's live mmap.
    replace_file(artefacts[0], artefacts[0].read_bytes()[:100])  # truncated
    replace_file(tmp_path / (artefacts[1].stem + ".sha256"), b"0" * 64)  # checksum mismatch
    assert run().cache.compiled == 2


def test_a_cached_module_wasmtime_refuses_is_one_line(guests: Path, tmp_path: Path) -> None:
    """An artefact whose checksum holds but that wasmtime refuses (not one wasmgroup wrote:
    entries are keyed by wasmtime version, settings and host CPU) is refused in the worker
    that deserializes it (the coordinator does not deserialize a cache hit): 125, one line
    naming the module and how to remove it."""
    hello = str(guests / "pie_threads" / "hello.wasm")
    assert run_program(hello, cache_dir=tmp_path).exit_code == 0
    [artefact] = tmp_path.glob("*.cwasm")
    forged = b"\x7fELF" + bytes(200)
    replace_file(artefact, forged)
    replace_file(artefact.with_suffix(".sha256"), hashlib.sha256(forged).hexdigest().encode())
    result = run_program(hello, cache_dir=tmp_path)
    assert result.exit_code == 125
    assert result.error is not None and "\n" not in result.error
    assert result.error.startswith(f"cannot start: {hello}: wasmtime refused the compiled "
                                   "module in the compile cache (")
    assert result.error.endswith("`wasmgroup cache clean` removes it")


def test_cli_run_exit_status_and_errors(guests: Path) -> None:
    ok = subprocess.run([*WASMGROUP, "run", "--dir", f"{guests}::/", "--env",
                         "LD_LIBRARY_PATH=/side", str(guests / "pie" / "main.wasm"), "--",
                         "/rpath/libbaz.so"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[-1] == "pie main: done"
    missing = subprocess.run([*WASMGROUP, "run", str(guests / "nope.wasm")],
                             capture_output=True, text=True)
    assert missing.returncode == EXIT_RUNTIME_ERROR
    assert "nope.wasm: No such file or directory" in missing.stderr
    bad_env = subprocess.run([*WASMGROUP, "run", "--env", "=VALUE", "x.wasm"],
                             capture_output=True, text=True)
    assert bad_env.returncode == 2 and "KEY=VALUE" in bad_env.stderr
    bad_dir = subprocess.run([*WASMGROUP, "run", "--dir", "/definitely/not/here::/",
                              str(guests / "pie" / "main.wasm")], capture_output=True, text=True)
    assert bad_dir.returncode == 2 and "not a directory" in bad_dir.stderr  # checked first


def test_bundled_example_runs_from_cli() -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "plugin-host"
    proc = subprocess.run([*WASMGROUP, "run", "--dir", f"{example}::/", str(example / "host.wasm"),
                           "--", "/plugins"], capture_output=True, text=True,
                          env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "2 plugin(s), 1 failure(s)"


def test_guest_cannot_open_libraries_outside_its_view(guests: Path, tmp_path: Path) -> None:
    program = Program(str(guests / "pie" / "main.wasm"), ProgramOptions(
        args=["/rpath/libbaz.so"], dirs=[f"{guests / 'pie'}::/", f"{guests / 'side'}::/side"],
        env={"LD_LIBRARY_PATH": "/side"}, capture_output=True))
    program.start()
    os.symlink(guests / "rpath" / "libbaz.so", guests / "side" / "escape.so")
    try:
        for attempt in ("/../rpath/libbaz.so", "../../rpath/libbaz.so", "/side/escape.so"):
            with pytest.raises(Exception, match="not found"):
                program.dlopen(program.main_worker, attempt, None)  # type: ignore[arg-type]
    finally:
        os.unlink(guests / "side" / "escape.so")
        program.close()


def test_everyday_posix_calls(guests: Path, tmp_path: Path) -> None:
    """Sleeps, sysconf, getpid, files and directories by absolute path, chdir/getcwd."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "input.txt").write_text("hello\n")
    result = run_program(str(guests / "libc" / "posix.wasm"), dirs=[f"{tmp_path}::/"])
    assert result.exit_code == 0, result.error
    source = (Path(__file__).parent / "programs" / "libc" / "posix.c").read_text()
    header = source.split("Expected stdout:\n", 1)[1].split("*/", 1)[0]
    expected = [line.removeprefix(" *   ") for line in header.splitlines() if line.strip(" *")]
    assert result.stdout.decode().splitlines() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.txt", "sub"]  # cleaned up


@pytest.mark.parametrize("memory", ["(memory (export \"memory\") 1)",
                                    "(import \"env\" \"memory\" (memory 1 10 shared))"])
def test_memory_grow_and_size_with_own_or_imported_memory(tmp_path: Path, memory: str) -> None:
    """A module's memory.grow/size work whether it defines its memory or imports the
    program's (where the load-time rewrite turns them into host calls)."""
    prog = tmp_path / "grow.wasm"
    prog.write_bytes(wasmtime.wat2wasm(f"""
        (module
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          {memory}
          (func (export "_start")
            (drop (memory.grow (i32.const 2)))
            (call $exit (i32.add (i32.mul (memory.size) (i32.const 10))
                                 (memory.grow (i32.const 0))))))"""))
    assert run_program(str(prog)).exit_code == 33  # size 3 pages, grow(0) returns 3


@pytest.mark.parametrize(("call", "errno"), [
    ("(call $pipe (i32.const 0) (i32.const 4))", 0),
    ("(call $dup (i32.const 1) (i32.const 0))", 0),
    ("(call $dup (i32.const 77) (i32.const 0))", 8),  # EBADF: no such descriptor
    ("(call $dup (i32.const -1) (i32.const 0))", 8),
    ("(call $pipe (i32.const 65535) (i32.const 4))", 21),  # EFAULT: outside memory
])
def test_descriptor_calls_of_a_freestanding_main(tmp_path: Path, call: str,
                                                 errno: int) -> None:
    prog = tmp_path / "fds.wasm"
    prog.write_bytes(wasmtime.wat2wasm(f"""
        (module
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (import "wasix_32v1" "fd_pipe" (func $pipe (param i32 i32) (result i32)))
          (import "wasix_32v1" "fd_dup" (func $dup (param i32 i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "_start") (call $exit {call})))"""))
    assert run_program(str(prog)).exit_code == errno


def test_importing_asyncify_setjmp_alone_does_not_stop_a_program(tmp_path: Path) -> None:
    """Only calling it does (tests/test_hostabi.py), as with Wasmer."""
    prog = tmp_path / "jmp.wasm"
    prog.write_bytes(wasmtime.wat2wasm(
        '(module (import "wasix_32v1" "stack_checkpoint" (func (param i32 i32) (result i32)))'
        ' (memory (export "memory") 1) (func (export "_start")))'))
    result = run_program(str(prog))
    assert (result.exit_code, result.error) == (0, None)


def test_ctrl_c_stops_a_program_spinning_in_guest_code(tmp_path: Path) -> None:
    prog = tmp_path / "spin.wasm"
    prog.write_bytes(wasmtime.wat2wasm(
        '(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))'))
    proc = subprocess.Popen([*WASMGROUP, "run", str(prog)], stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # well into the loop (Python start-up and compiling come first)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert "interrupted" in stderr
