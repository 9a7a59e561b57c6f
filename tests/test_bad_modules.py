"""Bad modules must not exhaust the host: every number a module gives that sizes an allocation
is checked before anything is allocated, invalid modules are refused before the load-time
rewrite (with the validator's offsets in the original file), and each refusal is one line.

The real cases run the real plugin host (`dlopen` of each damaged library: NULL and dlerror,
the program goes on) and the real PIE main (status 125 at start), through worker processes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import mutate
import pytest
import wasmtime
from leaks import assert_nothing_left, open_fds
from wasm_bytes import dylink, mem_info, module, name, section, strings, uleb

from wasmgroup.orchestrator.cache import ModuleCache
from wasmgroup.orchestrator.program import EXIT_RUNTIME_ERROR, run_program
from wasmgroup.shared import dylink as dl
from wasmgroup.shared.engine import ENGINE_SETTINGS, make_engine_config
from wasmgroup.shared.errors import (
    LinkError,
    ModuleNotFound,
    ModuleRefused,
    WasmFormatError,
    one_line,
    printable,
)
from wasmgroup.shared.wasm import TagType, parse_module

WASMGROUP = [sys.executable, "-m", "wasmgroup.orchestrator.cli"]
U32_MAX = 2**32 - 1


def error_of(data: bytes) -> WasmFormatError:
    with pytest.raises(WasmFormatError) as info:
        parse_module(data, source="libx.so")
    return info.value


# ---------------------------------------------------------------- the reader, on made bytes
@pytest.mark.parametrize(("fields", "named"), [
    ((0, 0, 1, 31), "table_align of at most 2^16 (a power of two up to the page size), "
                    "found 2^31"),
    ((0, 0, 1, U32_MAX), f"table_align of at most 2^16 (a power of two up to the page size), "
                         f"found 2^{U32_MAX}"),
    ((16, U32_MAX, 0, 0), f"mem_align of at most 2^16 (a power of two up to the page size), "
                          f"found 2^{U32_MAX}"),
    ((U32_MAX, 4, 0, 0), f"mem_size that fits a 32-bit memory, found {U32_MAX} bytes"),
    ((0, 0, dl.MAX_TABLE_SLOTS + 1, 0), f"table_size of at most {dl.MAX_TABLE_SLOTS} slots"),
])
def test_impossible_mem_info_is_refused_naming_the_field(fields: tuple[int, int, int, int],
                                                        named: str) -> None:
    err = error_of(module(dylink(mem_info(*fields))))
    assert str(err).startswith("libx.so: malformed wasm at offset")
    assert f"dylink.0 {named}" in str(err)
    assert len(str(err)) < 200  # never the 2^(2^32) number itself


def test_largest_real_mem_info_is_accepted() -> None:
    info = parse_module(module(dylink(mem_info(2**32 - 2**16, 16, dl.MAX_TABLE_SLOTS, 16))))
    assert info.dylink is not None
    assert info.dylink.mem_info == dl.MemInfo(2**32 - 2**16, 16, dl.MAX_TABLE_SLOTS, 16)


@pytest.mark.parametrize("data", [
    module(dylink(bytes([dl.NEEDED]) + uleb(6) + uleb(U32_MAX) + b"\x00")),
    module(dylink(bytes([dl.EXPORT_INFO]) + uleb(2) + uleb(1000) + b"\x00")),
    module(section(1, uleb(U32_MAX) + b"\x60\x00\x00")),
    module(section(2, uleb(10**6) + name("env") + name("f") + b"\x00\x00")),
])
def test_vector_counts_beyond_their_section_are_refused(data: bytes) -> None:
    err = error_of(data)
    assert "count that fits its" in err.expected


@pytest.mark.parametrize("path", ["libfo\0.so", ""])
def test_needed_and_runtime_path_entries_must_be_paths(path: str) -> None:
    # A NUL byte in a NEEDED entry reached the locator and ended in a ValueError there.
    for sub_type, what in ((dl.NEEDED, "needed library"), (dl.RUNTIME_PATH, "runtime path")):
        err = error_of(module(dylink(strings(sub_type, path))))
        assert f"a dylink.0 {what} that is a path (not empty, no NUL byte)" in err.expected


def test_indices_outside_their_space_are_refused() -> None:
    # An exported global 3 in a module with one: inspect used to die on it with IndexError.
    exports = section(7, uleb(1) + name("g") + b"\x03" + uleb(3))
    globals_ = section(6, uleb(1) + b"\x7f\x00\x41\x00\x0b")
    err = error_of(module(globals_, exports))
    assert "an index below 1 for global export 'g', found 3" in err.expected
    err = error_of(module(section(3, uleb(1) + uleb(0))))  # a function of type 0, no types
    assert "a type index below 0" in err.expected
    err = error_of(module(section(8, uleb(0))))
    assert "a start function index below 0" in err.expected


def test_defined_and_imported_tags_have_types() -> None:
    data = wasmtime.wat2wasm("""(module (type (func (param i32)))
        (import "env" "__c_longjmp" (tag (type 0))) (tag (export "own") (param i32))
        (export "imported" (tag 0)))""")
    m = parse_module(bytes(data))
    for export in m.exports:
        assert m.export_type(export) == TagType(m.types[0])


def test_every_wasmgroup_error_is_one_line() -> None:
    assert str(LinkError("a\nb\tc\u2028d")) == "a\\nb\\tc\\u2028d"
    assert str(ModuleNotFound("l\nb", ["/lib/l\nb.so"])) == \
        "library 'l\\nb' not found; tried: /lib/l\\nb.so"
    assert printable(printable("x\ny")) == printable("x\ny")  # escaping twice changes nothing


def test_one_line_flattens_caused_by_chains() -> None:
    text = ("failed to parse WebAssembly module\n\nCaused by:\n    0: first\n"
            "    1: second (at offset 0x2)\n")
    assert one_line(text) == "failed to parse WebAssembly module: first: second (at offset 0x2)"
    assert one_line("plain") == "plain"


# ---------------------------------------------------------------- validation before rewriting
def element_count_changed(data: bytes) -> tuple[bytes, str]:
    """The issue's module: element count 1 -> 0, its segment left as trailing bytes; and what
    wasmtime's validator says of it (offsets of this very file)."""
    bad = mutate.vector_count(data, 0, 0, section_id=9)
    engine = wasmtime.Engine(make_engine_config())
    with pytest.raises(wasmtime.WasmtimeError) as info:
        wasmtime.Module.validate(engine, bad)
    return bad, str(info.value).strip()


def test_invalid_module_is_refused_before_rewrite_with_original_offsets(guests: Path,
                                                                         tmp_path: Path) -> None:
    bad, validator = element_count_changed((guests / "side" / "libfoo.so").read_bytes())
    path = tmp_path / "libfoo.so"
    path.write_bytes(bad)
    cache = ModuleCache(wasmtime.Engine(make_engine_config()), ENGINE_SETTINGS, tmp_path / "c")
    with pytest.raises(ModuleRefused) as info:
        cache.load_file(str(path))
    assert str(info.value) == f"{path}: invalid module: {validator}"  # offsets: the file's
    assert "\n" not in str(info.value) and cache.compiled == 0


def test_valid_module_the_rewrite_cannot_handle_is_refused_in_one_line(tmp_path: Path) -> None:
    # Valid (multi-memory), but the rewrite mediates memory 0 only: a refusal, not a crash.
    path = tmp_path / "two-memories.wasm"
    path.write_bytes(wasmtime.wat2wasm("""(module (import "env" "memory" (memory 1))
        (memory $b 1) (func (export "_start") (drop (i32.load $b (i32.const 0)))))"""))
    proc = subprocess.run([*WASMGROUP, "run", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == EXIT_RUNTIME_ERROR
    assert proc.stderr.startswith(f"wasmgroup run: cannot start: {path}: not supported by "
                                  "wasmgroup's load-time rewrite: expected memory 0")
    assert proc.stderr.count("\n") == 1


def test_static_main_table_beyond_the_limit_is_refused(tmp_path: Path) -> None:
    # The validator allows 10^7 slots; every worker would hold them.
    path = tmp_path / "bigtable.wasm"
    path.write_bytes(wasmtime.wat2wasm("""(module
        (import "env" "__indirect_function_table" (table 5000000 funcref))
        (import "env" "memory" (memory 1 1 shared)) (func (export "_start")))"""))
    fds = open_fds()
    result = run_program(str(path))
    assert_nothing_left(fds)
    assert result.exit_code == EXIT_RUNTIME_ERROR
    assert result.error == (f"cannot start: {path}: the main module's table import: the "
                            f"function table "
                            f"would need 5000000 slots, more than the {dl.MAX_TABLE_SLOTS} a "
                            "program may have")


def test_cache_hit_skips_validation(guests: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    engine = wasmtime.Engine(make_engine_config())
    calls: list[int] = []
    real_validate = wasmtime.Module.validate

    def counting_validate(engine: wasmtime.Engine, data: bytes) -> None:
        calls.append(len(data))
        real_validate(engine, data)

    monkeypatch.setattr(wasmtime.Module, "validate", staticmethod(counting_validate))
    path = str(guests / "side" / "libfoo.so")
    ModuleCache(engine, ENGINE_SETTINGS, tmp_path).load_file(path)
    assert len(calls) == 1  # a miss: the original bytes were validated, then compiled
    again = ModuleCache(engine, ENGINE_SETTINGS, tmp_path)
    again.load_file(path)
    assert len(calls) == 1 and again.compiled == 0  # a hit: checksum checked, nothing else


# ---------------------------------------------------------------- real programs
def plugin_dir(guests: Path, tmp_path: Path, damaged: dict[str, bytes]) -> Path:
    """A plugin directory: the real libmath.so, plus each damaged library under its name."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    shutil.copy(guests / "plugins" / "plugins" / "libmath.so", plugins / "libmath.so")
    for file_name, data in damaged.items():
        (plugins / file_name).write_bytes(data)
    return plugins


def plugin_host_lines(guests: Path, plugins: Path) -> list[str]:
    """The real plugin host run over `plugins` (guest view /plugins): its output lines (it
    exits 0 whatever its dlopens say)."""
    result = run_program(str(guests / "plugins" / "host.wasm"), ["/plugins"],
                         dirs=[f"{guests / 'plugins'}::/", f"{plugins}::/plugins"])
    assert result.exit_code == 0, result.error
    return result.stdout.decode().splitlines()


def failures_by_library(lines: list[str]) -> dict[str, str]:
    """The host's `failed NAME: why` lines, by NAME."""
    return {line.split(":")[0].split()[1]: line for line in lines if line.startswith("failed ")}


def test_dlopen_of_impossible_dylink_fields_fails_without_allocating(guests: Path,
                                                                     tmp_path: Path) -> None:
    """table_align 31 used to grow every worker's table to 2^31 slots (GBs); 2^32-1 broke
    protocol.encode and hung. Now each dlopen returns NULL naming the field, at once."""
    hello = (guests / "plugins" / "plugins" / "libhello.so").read_bytes()
    damaged = {
        "liba.so": mutate.mem_info(hello, "table_align", 31),
        "libb.so": mutate.mem_info(hello, "table_align", U32_MAX),
        "libc.so": mutate.mem_info(hello, "mem_align", U32_MAX),
        "libd.so": mutate.mem_info(hello, "table_size", U32_MAX),
    }
    plugins = plugin_dir(guests, tmp_path, damaged)
    fds = open_fds()
    lines = plugin_host_lines(guests, plugins)
    failed = failures_by_library(lines)
    assert "table_align of at most 2^16" in failed["liba.so"] and "found 2^31" in failed["liba.so"]
    assert f"table_align of at most 2^16 (a power of two up to the page size), found 2^{U32_MAX}" \
        in failed["libb.so"]
    assert "mem_align of at most 2^16" in failed["libc.so"]
    assert "table_size of at most" in failed["libd.so"]
    assert all("/plugins/lib" in line and str(tmp_path) not in line for line in failed.values())
    assert lines[-1] == "1 plugin(s), 4 failure(s)"
    assert_nothing_left(fds)


def test_constructors_of_another_type_or_that_trap_fail_the_dlopen(guests: Path,
                                                                    tmp_path: Path) -> None:
    """__wasm_call_ctors taking an argument, or trapping: the dlopen returns NULL saying so,
    and the host goes on (the call is made through the C API, which checks the type)."""
    def side_module(body: bytes, params: bytes) -> bytes:
        return module(dylink(mem_info(0, 0, 0, 0)),
                      section(1, uleb(1) + b"\x60" + uleb(len(params)) + params + b"\x00"),
                      section(3, uleb(1) + uleb(0)),
                      section(7, uleb(1) + name("__wasm_call_ctors") + b"\x00" + uleb(0)),
                      section(10, uleb(1) + uleb(len(body) + 1) + b"\x00" + body))
    plugins = plugin_dir(guests, tmp_path, {
        "libargs.so": side_module(b"\x0b", b"\x7f"),  # (i32) -> ()
        "libtrap.so": side_module(b"\x00\x0b", b""),  # unreachable
    })
    fds = open_fds()
    lines = plugin_host_lines(guests, plugins)
    failed = failures_by_library(lines)
    assert "/plugins/libargs.so: __wasm_call_ctors must be a function of type () -> ()" \
        in failed["libargs.so"]
    assert "/plugins/libtrap.so: __wasm_call_ctors failed: wasm trap: wasm `unreachable` " \
        "instruction executed" in failed["libtrap.so"]
    assert lines[-1] == "1 plugin(s), 2 failure(s)"
    assert_nothing_left(fds)


def test_control_characters_from_a_module_stay_escaped_in_one_line(guests: Path,
                                                                    tmp_path: Path) -> None:
    """Found by the fuzz test: a newline in a NEEDED entry made a two-line dlerror."""
    bar = (guests / "side" / "libbar.so").read_bytes()
    assert bar.count(b"libfoo.so") == 1
    plugins = plugin_dir(guests, tmp_path, {"libbar.so": bar.replace(b"libfoo.so",
                                                                     b"lib\nfoo.s")})
    fds = open_fds()
    lines = plugin_host_lines(guests, plugins)
    [failed] = [line for line in lines if line.startswith("failed ")]
    assert failed.startswith("failed libbar.so: ")
    assert "library 'lib\\nfoo.s' (needed by /plugins/libbar.so) not found" in failed
    assert lines[-1] == "1 plugin(s), 1 failure(s)"
    # No piece of a message on a line of its own (the tried paths used to break the line).
    assert all(line.startswith(("plugin host ", "failed ", "[math] ", "loaded ", "1 plugin"))
               for line in lines), lines
    assert_nothing_left(fds)


def test_pie_main_with_impossible_mem_align_is_refused_at_start(guests: Path,
                                                                tmp_path: Path) -> None:
    """It used to take 3.2 GB and end in `ValueError: Exceeds the limit (4300 digits)`."""
    main = tmp_path / "main.wasm"
    main.write_bytes(mutate.mem_info((guests / "pie" / "main.wasm").read_bytes(), "mem_align",
                                     U32_MAX))
    proc = subprocess.run([*WASMGROUP, "run", str(main)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == EXIT_RUNTIME_ERROR
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"wasmgroup run: cannot start: {main}: malformed wasm at offset")
    assert "dylink.0 mem_align of at most 2^16" in line
    fds = open_fds()
    result = run_program(str(main))
    assert result.exit_code == EXIT_RUNTIME_ERROR and result.error == line.split(": ", 1)[1]
    assert_nothing_left(fds)


def test_invalid_library_and_main_are_refused_before_rewrite(guests: Path,
                                                              tmp_path: Path) -> None:
    """Used to be accepted after the rewrite and trap later (`uninitialized element`)."""
    bad_lib, validator = element_count_changed(
        (guests / "plugins" / "plugins" / "libhello.so").read_bytes())
    plugins = plugin_dir(guests, tmp_path, {"libhello.so": bad_lib})
    fds = open_fds()
    lines = plugin_host_lines(guests, plugins)
    [failed] = [line for line in lines if line.startswith("failed ")]
    assert failed.endswith(f"/plugins/libhello.so: invalid module: {validator}")
    assert str(tmp_path) not in failed
    assert lines[-1] == "1 plugin(s), 1 failure(s)"
    assert_nothing_left(fds)

    bad_main, validator = element_count_changed((guests / "pie" / "main.wasm").read_bytes())
    main = tmp_path / "main.wasm"
    main.write_bytes(bad_main)
    proc = subprocess.run([*WASMGROUP, "run", str(main)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == EXIT_RUNTIME_ERROR
    assert proc.stderr == f"wasmgroup run: cannot start: {main}: invalid module: {validator}\n"
    fds = open_fds()
    result = run_program(str(main))
    assert result.exit_code == EXIT_RUNTIME_ERROR
    assert result.error == f"cannot start: {main}: invalid module: {validator}"
    assert_nothing_left(fds)


# ---------------------------------------------------------------- inspect
def test_inspect_shows_good_files_and_one_line_per_bad_one(guests: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.so"
    bad.write_bytes(mutate.mem_info((guests / "side" / "libfoo.so").read_bytes(), "mem_align",
                                    U32_MAX))
    good_a, good_b = guests / "side" / "libfoo.so", guests / "pie" / "main.wasm"
    proc = subprocess.run([*WASMGROUP, "inspect", str(good_a), str(tmp_path / "missing.so"),
                           str(bad), str(good_b)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"{good_a}: side module" in proc.stdout and f"{good_b}: main (PIE)" in proc.stdout
    errors = proc.stderr.splitlines()
    assert len(errors) == 2
    assert "missing.so: No such file" in errors[0] and "mem_align" in errors[1]


def test_inspect_of_a_module_with_tags(tmp_path: Path) -> None:
    path = tmp_path / "tags.wasm"
    path.write_bytes(wasmtime.wat2wasm("""(module (type (func (param i32)))
        (import "env" "__c_longjmp" (tag (type 0))) (tag (export "own") (param i32)))"""))
    proc = subprocess.run([*WASMGROUP, "inspect", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "env.__c_longjmp: tag (i32) -> ()" in proc.stdout
    assert "own: tag (i32) -> ()" in proc.stdout


def test_inspect_into_a_closed_pipe_is_quiet(guests: Path) -> None:
    # Enough output to fill the pipe, so the writer meets the closed end.
    files = [str(guests / "plugins" / "host.wasm")] * 100
    proc = subprocess.run(f"{' '.join(WASMGROUP)} inspect {' '.join(files)} | head -1; "
                          "exit ${PIPESTATUS[0]}", shell=True, executable="/bin/bash",
                          capture_output=True, text=True)
    assert proc.stdout.count("\n") == 1
    assert proc.stderr == ""
    assert proc.returncode == 141
