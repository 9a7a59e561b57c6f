"""Every call of the WASI/WASIX ABI can be imported: implemented, ENOSYS, or stopping the
program with a message when called; imports outside the ABI still fail at start. Also
setjmp/longjmp built with wasm exception handling, across modules and threads."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import wasmtime
from leaks import assert_nothing_left, open_fds

from wasmgroup.orchestrator.program import EXIT_RUNTIME_ERROR, EXIT_TRAP, run_program
from wasmgroup.shared import hostabi, hostabi_table
from wasmgroup.shared.wasm import FuncType, parse_module
from wasmgroup.worker.host.wasi import WASIX_DESCRIPTOR_CALLS
from wasmgroup.worker.host.wasix import make_wasix_functions

ROOT = Path(__file__).resolve().parent.parent
WASMGROUP = [sys.executable, "-m", "wasmgroup.orchestrator.cli"]


def load_generator() -> ModuleType:
    path = ROOT / "scripts" / "gen-hostabi"
    loader = importlib.machinery.SourceFileLoader("gen_hostabi", str(path))
    spec = importlib.util.spec_from_loader("gen_hostabi", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def sysroot() -> Path:
    root = Path(os.environ.get("WASIX_SYSROOT") or ROOT / "build" / "sysroots" / "wasix")
    if not (root / "usr" / "include" / "wasm32-wasi" / "wasi" / "api_wasix.h").exists():
        pytest.fail(f"no wasix sysroot at {root}: run scripts/fetch-wasix-sysroot")
    return root


def test_checked_in_table_is_what_the_headers_generate() -> None:
    generator = load_generator()
    assert generator.render(sysroot()) == (ROOT / "shared" / "hostabi_table.py").read_text()


def test_table_covers_every_call_wasix_libc_can_import() -> None:
    listed = (sysroot() / "usr" / "lib" / "wasm32-wasi" / "libc.imports").read_text().split()
    names = {line.removeprefix("__imported_wasix_32v1_") for line in listed}
    assert names and names == set(hostabi_table.WASIX_32V1)
    assert len(hostabi_table.WASI_SNAPSHOT_PREVIEW1) == 46


def test_header_lowering_of_strings_64_bit_values_and_no_return() -> None:
    assert hostabi_table.WASIX_32V1["chdir"] == ("i32 i32", "i32")  # const char *
    assert hostabi_table.WASIX_32V1["thread_sleep"] == ("i64", "i32")
    assert hostabi_table.WASIX_32V1["stack_restore"] == ("i32 i64", "")
    assert hostabi_table.WASI_SNAPSHOT_PREVIEW1["proc_exit"] == ("i32", "")


def test_generator_refuses_a_header_it_cannot_lower(tmp_path: Path) -> None:
    include = tmp_path / "usr" / "include" / "wasm32-wasi" / "wasi"
    include.mkdir(parents=True)
    (include / "api_wasi.h").write_text(
        "typedef struct __wasi_pair_t { int a; int b; } __wasi_pair_t;\n"
        "__wasi_errno_t __wasi_swap(__wasi_pair_t pair);\n")
    (include / "api_wasix.h").write_text("typedef uint16_t __wasi_errno_t;\n")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-hostabi"), "--check",
                             str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == "gen-hostabi: swap: cannot lower parameter '__wasi_pair_t pair'"


def test_implemented_calls_have_the_abi_signatures() -> None:
    for name, func_type in hostabi.WASIX_32V1.items():
        assert hostabi.abi_signature("wasix_32v1", name) == func_type, name
    provided = make_wasix_functions(None)  # type: ignore[arg-type]  # only names are read
    # the descriptor calls are the program-wide WASI's (worker/host/wasi.py)
    assert set(provided) | set(WASIX_DESCRIPTOR_CALLS) == set(hostabi.WASIX_32V1)


@pytest.mark.parametrize(("module", "name", "expected"), [
    ("wasix_32v1", "dlopen", hostabi.IMPLEMENTED),
    ("wasi_snapshot_preview1", "fd_write", hostabi.IMPLEMENTED),
    ("wasi", "thread-spawn", hostabi.IMPLEMENTED),
    ("wasix_32v1", "proc_spawn2", hostabi.ENOSYS),
    ("wasix_32v1", "sock_open", hostabi.ENOSYS),
    ("wasix_32v1", "stack_checkpoint", hostabi.STOPS),  # has an errno, but setjmp traps on it
    ("wasix_32v1", "proc_exec", hostabi.STOPS),  # no errno to return
    ("wasix_32v1", "teleport", hostabi.UNKNOWN),
    ("wasix_64v1", "dlopen", hostabi.UNKNOWN),
])
def test_status_of_each_kind_of_call(module: str, name: str, expected: str) -> None:
    func_type = hostabi.abi_signature(module, name) or FuncType((), ())
    assert hostabi.status(module, name, func_type) == expected


def test_status_of_a_known_call_with_another_signature_is_unknown() -> None:
    assert hostabi.status("wasix_32v1", "proc_join", FuncType(("i32",), ("i32",))) == \
        hostabi.UNKNOWN
    assert hostabi.check("wasix_32v1", "proc_join", FuncType(("i32",), ("i32",))) == (
        "imports wasix_32v1.proc_join as (i32) -> (i32); the runtime provides "
        "(i32, i32, i32) -> (i32)")


# ---- real programs ------------------------------------------------------------------------------

def test_program_importing_process_calls_runs_when_it_never_calls_them(guests: Path) -> None:
    before = open_fds()
    result = run_program(str(guests / "abi" / "system.wasm"))
    assert (result.exit_code, result.error) == (0, None)
    assert result.stdout.decode() == "system: not called\n"
    assert_nothing_left(before)


def test_unimplemented_calls_return_enosys_and_the_program_goes_on(guests: Path) -> None:
    before = open_fds()
    result = run_program(str(guests / "abi" / "system.wasm"), ["run"])
    assert (result.exit_code, result.error) == (0, None)
    assert result.stdout.decode().splitlines() == [
        "system: -1, errno 52 (Function not implemented)",  # proc_spawn2: ENOSYS
        "popen: NULL, errno 52 (Function not implemented)",  # fd_pipe works; proc_spawn2
    ]
    assert_nothing_left(before)


def test_asyncify_setjmp_stops_the_program_saying_how_to_build_it(guests: Path) -> None:
    before = open_fds()
    result = subprocess.run([*WASMGROUP, "run", str(guests / "abi" / "setjmp_asyncify.wasm")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_TRAP
    assert result.stdout == "setjmp_asyncify: before setjmp\n"
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("wasmgroup run: the program trapped in main thread: "
                                    "wasix_32v1.stack_checkpoint is not supported: ")
    assert "asyncify" in result.stderr
    assert "-mllvm -wasm-enable-sjlj -mllvm -wasm-use-legacy-eh=false" in result.stderr
    assert_nothing_left(before)


def test_imports_outside_the_abi_fail_at_start_naming_them(tmp_path: Path) -> None:
    prog = tmp_path / "outside.wasm"
    prog.write_bytes(wasmtime.wat2wasm(
        '(module (import "wasix_32v1" "proc_join" (func (param i32) (result i32)))'
        ' (import "wasix_32v1" "teleport" (func)) (memory (export "memory") 1)'
        ' (func (export "_start")))'))
    before = open_fds()
    result = run_program(str(prog))
    assert result.exit_code == EXIT_RUNTIME_ERROR
    assert result.error is not None and "\n" not in result.error
    assert "wasix_32v1.proc_join as (i32) -> (i32); the runtime provides (i32, i32, i32)" \
        in result.error
    assert "wasix_32v1.teleport, which the runtime does not provide" in result.error
    assert_nothing_left(before)


def test_a_noreturn_call_wasmgroup_lacks_stops_the_program_naming_it(tmp_path: Path) -> None:
    prog = tmp_path / "exec.wasm"
    prog.write_bytes(wasmtime.wat2wasm(
        '(module (import "wasix_32v1" "proc_exec" (func $exec (param i32 i32 i32 i32)))'
        ' (memory (export "memory") 1)'
        ' (func (export "_start") (call $exec (i32.const 0) (i32.const 0) (i32.const 0)'
        ' (i32.const 0))))'))
    before = open_fds()
    result = run_program(str(prog))
    assert result.exit_code == EXIT_TRAP
    assert result.error == (
        "the program trapped in main thread: wasix_32v1.proc_exec is not supported: the call "
        "has no error return and wasmgroup does not implement it")
    assert_nothing_left(before)


SJLJ_EXPECTED = """\
main thread: round trip 175 (expect 175)
thread 1: 50/50 round trips right
thread 2: 50/50 round trips right
main thread, second copy: round trip 175 (expect 175)
"""


@pytest.mark.parametrize("verify", [False, True])
def test_setjmp_longjmp_with_exceptions_across_modules_and_threads(guests: Path,
                                                                   verify: bool) -> None:
    before = open_fds()
    # The second name loads a second copy, in thread 1 (main and thread 2 apply it).
    result = run_program(str(guests / "abi" / "sjlj_main.wasm"),
                         ["/abi/libsjlj.so", "abi/libsjlj.so"], dirs=[f"{guests}::/"],
                         verify_groups=verify)
    assert (result.exit_code, result.error) == (0, None)
    assert result.stdout.decode() == SJLJ_EXPECTED
    assert_nothing_left(before)


# ---- inspect ------------------------------------------------------------------------------------

def test_inspect_marks_what_each_runtime_import_does(guests: Path, tmp_path: Path) -> None:
    prog = tmp_path / "marks.wasm"
    prog.write_bytes(wasmtime.wat2wasm(
        '(module (import "wasix_32v1" "proc_join" (func (param i32) (result i32)))'
        ' (import "wasix_32v1" "teleport" (func)) (import "elsewhere" "f" (func))'
        ' (import "wasix_32v1" "proc_exec" (func (param i32 i32 i32 i32))))'))
    out = subprocess.run([*WASMGROUP, "inspect", "--json", str(guests / "abi" / "system.wasm"),
                          str(guests / "abi" / "setjmp_asyncify.wasm"), str(prog)],
                         capture_output=True, text=True, check=True)
    marks = {(Path(s["path"]).name, e["name"]): e.get("abi")
             for s in json.loads(out.stdout) for entries in s["imports"].values()
             for e in entries}
    assert marks[("system.wasm", "fd_write")] == "implemented"
    assert marks[("system.wasm", "futex_wait")] == "implemented"
    assert marks[("system.wasm", "proc_spawn2")] == "enosys"
    assert marks[("system.wasm", "proc_join")] == "enosys"
    assert marks[("setjmp_asyncify.wasm", "stack_checkpoint")] == "stops"
    assert marks[("marks.wasm", "proc_join")] == "unknown"  # another signature
    assert marks[("marks.wasm", "teleport")] == "unknown"
    assert marks[("marks.wasm", "f")] == "unknown"
    assert marks[("marks.wasm", "proc_exec")] == "stops"
    assert marks[("system.wasm", "memory")] is None  # env imports come from modules

    text = subprocess.run([*WASMGROUP, "inspect", str(prog)], capture_output=True, text=True,
                          check=True).stdout
    assert "wasix_32v1.proc_join: func (i32) -> (i32) (unknown: the program cannot start)" \
        in text
    assert "wasix_32v1.proc_exec: func (i32, i32, i32, i32) -> () (stops the program if " \
        "called)" in text
    text = subprocess.run([*WASMGROUP, "inspect", str(guests / "abi" / "system.wasm")],
                          capture_output=True, text=True, check=True).stdout
    assert "wasix_32v1.proc_spawn2: func (" in text
    assert "wasix_32v1.proc_join: func (i32, i32, i32) -> (i32) (returns ENOSYS)" in text
    assert "wasi_snapshot_preview1.fd_write: func (i32, i32, i32, i32) -> (i32) " \
        "(implemented)" in text


@pytest.mark.parametrize(("imported", "found"), [
    ("(func)", "a func"), ("(tag (param i64))", "a tag of type (i64) -> ()"),
    ("(global i32)", "a global")])
def test_a_longjmp_tag_of_another_kind_or_type_is_refused_at_start(
        tmp_path: Path, imported: str, found: str) -> None:
    prog = tmp_path / "tag.wasm"
    prog.write_bytes(wasmtime.wat2wasm(
        f'(module (import "env" "__c_longjmp" {imported}) (memory (export "memory") 1)'
        ' (func (export "_start")))'))
    before = open_fds()
    result = run_program(str(prog))
    assert result.exit_code == EXIT_RUNTIME_ERROR
    assert result.error == ("cannot start: /tag.wasm: import env.__c_longjmp must be a tag of "
                            f"type (i32) -> (), found {found}")
    assert_nothing_left(before)


def archive_members(data: bytes) -> dict[str, bytes]:
    """The members of a `ar` archive (GNU format, as llvm-ar writes it), by name."""
    assert data.startswith(b"!<arch>\n")
    members, pos, names = {}, 8, b""
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name, size = header[:16].decode().rstrip(), int(header[48:58])
        body = data[pos + 60:pos + 60 + size]
        if name == "//":
            names = body
        elif name.startswith("/") and name[1:].isdigit():  # a long name, in the "//" member
            start = int(name[1:])
            members[names[start:names.index(b"/\n", start)].decode()] = body
        else:
            members[name.rstrip("/")] = body
        pos += 60 + size + size % 2
    return members


def test_table_agrees_with_the_imports_wasix_libc_was_compiled_with() -> None:
    """The header lowering, checked against what clang emitted for libc's own import
    declarations (every call, with its wasm type)."""
    libc = sysroot() / "usr" / "lib" / "wasm32-wasi" / "libc.a"
    members = archive_members(libc.read_bytes())
    seen = 0
    for member in ("__wasilibc_real.o", "__wasixlibc_real.o"):
        for imp in parse_module(members[member], member).imports:
            if imp.module in ("wasi_snapshot_preview1", "wasix_32v1"):
                assert hostabi.abi_signature(imp.module, imp.name) == imp.type, imp.name
                seen += 1
    assert seen == len(hostabi_table.WASI_SNAPSHOT_PREVIEW1) + len(hostabi_table.WASIX_32V1)
