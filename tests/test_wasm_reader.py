"""The wasm binary reader and dylink.0 parser, on hand-made bytes (fast, no processes)."""

from __future__ import annotations

import pytest
import wasmtime
from wasm_bytes import (
    HEADER,
    custom,
    dylink,
    mem_info,
    module,
    name,
    section,
    strings,
    subsection,
    uleb,
)

from wasmgroup.shared import dylink as dl
from wasmgroup.shared.errors import WasmFormatError, WasmgroupError
from wasmgroup.shared.wasm import FuncType, GlobalType, MemoryType, TableType, parse_module


def error_of(data: bytes) -> WasmFormatError:
    with pytest.raises(WasmFormatError) as info:
        parse_module(data, source="x.wasm")
    return info.value


def test_empty_module_parses() -> None:
    m = parse_module(HEADER)
    assert m.imports == [] and m.exports == [] and m.dylink is None


@pytest.mark.parametrize("data", [b"", b"\x00as", b"\x7fELF\x02\x01\x01\x00", b"hello world"])
def test_wrong_or_truncated_magic(data: bytes) -> None:
    err = error_of(data)
    assert err.offset == 0
    assert "magic" in str(err) and "x.wasm" in str(err)
    assert isinstance(err, WasmgroupError)


def test_wrong_version_and_truncated_version() -> None:
    err = error_of(b"\x00asm\x02\x00\x00\x00")
    assert err.offset == 4 and "version 1" in err.expected
    err = error_of(b"\x00asm\x01\x00")
    assert err.offset == 6 and "version" in err.expected


def test_truncated_section_body() -> None:
    data = HEADER + bytes([1]) + uleb(10) + b"\x01\x60"
    err = error_of(data)
    assert err.offset == 10 and "type section of 10 bytes" in err.expected


def test_overlong_leb128_section_size() -> None:
    data = HEADER + bytes([1]) + b"\x80\x80\x80\x80\x80\x00"
    err = error_of(data)
    assert err.offset == 9 and "overlong" in err.expected


def test_leb128_too_large_for_u32() -> None:
    data = HEADER + bytes([1]) + b"\xff\xff\xff\xff\x1f"
    err = error_of(data)
    assert err.offset == 9 and "32 bits" in err.expected


def test_leb128_truncated_at_end_of_input() -> None:
    err = error_of(HEADER + bytes([1]) + b"\x80")
    assert "end of input" in err.expected


def test_trailing_bytes_in_section() -> None:
    data = module(section(1, uleb(0) + b"\x00"))
    err = error_of(data)
    assert "trailing" in err.expected and "type section" in err.expected


def test_sections_out_of_order() -> None:
    data = module(section(3, uleb(0)), section(1, uleb(0)))
    err = error_of(data)
    assert "in order" in err.expected and err.offset == 11


def test_unknown_section_id() -> None:
    err = error_of(module(section(42, b"")))
    assert "section id" in err.expected and err.offset == 8


def test_imports_exports_and_types_from_wat() -> None:
    wasm = wasmtime.wat2wasm("""
        (module
          (import "env" "memory" (memory 1 16 shared))
          (import "env" "__indirect_function_table" (table 2 funcref))
          (import "env" "__stack_pointer" (global (mut i32)))
          (import "env" "f" (func (param i32 i64) (result f32)))
          (func (export "g") (param i32) (result i32) local.get 0)
          (global (export "data_sym") i32 (i32.const 1234))
          (export "h" (func 0)))
    """)
    m = parse_module(wasm)
    kinds = [(i.module, i.name, i.kind) for i in m.imports]
    assert kinds == [("env", "memory", "memory"), ("env", "__indirect_function_table", "table"),
                     ("env", "__stack_pointer", "global"), ("env", "f", "func")]
    mem = m.imports[0].type
    assert isinstance(mem, MemoryType)
    assert (mem.limits.minimum, mem.limits.maximum, mem.limits.shared) == (1, 16, True)
    table = m.imports[1].type
    assert isinstance(table, TableType) and table.element == "funcref"
    assert m.imports[2].type == GlobalType("i32", True)
    assert m.imports[3].type == FuncType(("i32", "i64"), ("f32",))
    exports = {e.name: e for e in m.exports}
    assert m.export_type(exports["g"]) == FuncType(("i32",), ("i32",))
    assert m.export_type(exports["h"]) == FuncType(("i32", "i64"), ("f32",))
    assert m.export_type(exports["data_sym"]) == GlobalType("i32", False)
    assert m.globals[0].init_value == 1234


def test_dylink_section_all_subsections() -> None:
    weak_hidden_tls = dylink(
        mem_info(24, 2, 3, 0),
        strings(dl.NEEDED, "libfoo.so", "libbar.so"),
        subsection(dl.EXPORT_INFO, uleb(2) + name("tls_var") + uleb(dl.TLS)
                   + name("secret") + uleb(dl.VISIBILITY_HIDDEN)),
        subsection(dl.IMPORT_INFO, uleb(1) + name("env") + name("maybe") + uleb(dl.BINDING_WEAK)),
        strings(dl.RUNTIME_PATH, "$ORIGIN/lib"),
        subsection(99, b"future stuff"),
    )
    m = parse_module(module(weak_hidden_tls))
    info = m.dylink
    assert info is not None
    assert info.mem_info == dl.MemInfo(24, 2, 3, 0)
    assert info.needed == ["libfoo.so", "libbar.so"]
    assert info.runtime_path == ["$ORIGIN/lib"]
    assert info.is_tls_export("tls_var") and not info.is_hidden_export("tls_var")
    assert info.is_hidden_export("secret")
    # Clang files GOT imports' flags under "env": the lookup falls back to it.
    assert info.is_weak_import("GOT.mem", "maybe") and info.is_weak_import("env", "maybe")
    assert not info.is_weak_import("GOT.mem", "other")
    assert info.skipped_subsections == [99]


def test_missing_mem_info_means_zeros() -> None:
    m = parse_module(module(dylink(strings(dl.NEEDED, "a.so"))))
    assert m.dylink is not None and m.dylink.mem_info == dl.MemInfo()


def test_two_dylink_sections_rejected() -> None:
    first = dylink(mem_info(0, 0, 0, 0))
    err = error_of(module(first, dylink(mem_info(1, 0, 0, 0))))
    assert "at most one dylink.0" in err.expected
    assert err.offset == len(HEADER) + len(first)


def test_dylink_subsection_overrunning_section() -> None:
    # A NEEDED subsection that claims 50 bytes in a section that holds 6.
    payload = bytes([dl.NEEDED]) + uleb(50) + uleb(1) + name("ab")
    err = error_of(module(custom("dylink.0", payload)))
    assert "dylink.0 subsection 2 of 50 bytes" in err.expected


def test_dylink_subsection_with_trailing_bytes() -> None:
    err = error_of(module(dylink(subsection(dl.MEM_INFO, b"\x00\x00\x00\x00\x00"))))
    assert "end of dylink.0 subsection 1" in err.expected


def test_dylink_name_overrunning_subsection() -> None:
    bad = subsection(dl.NEEDED, uleb(1) + uleb(9) + b"abc")
    err = error_of(module(dylink(bad)))
    assert "needed library" in err.expected


def test_flag_names() -> None:
    assert dl.flag_names(dl.BINDING_WEAK | dl.TLS) == ["weak", "tls"]
    assert dl.flag_names(0x8000) == ["0x8000"]


def test_other_custom_sections_are_recorded_not_parsed() -> None:
    m = parse_module(module(custom("name", b"\xff\xff"), custom("producers", b"")))
    assert [s.name for s in m.sections] == ["name", "producers"]
