"""Load-time rewrites: the result must validate and differ only as documented."""

from __future__ import annotations

import pytest
import wasmtime

from wasmgroup.orchestrator.instrument import export_imported_memory
from wasmgroup.shared.errors import LinkError
from wasmgroup.shared.wasm import parse_module

CASES = {
    "no export section, code after it": """(module (import "env" "memory" (memory 1))
        (func (result i32) i32.const 1))""",
    "export section present": """(module (import "env" "memory" (memory 1 2 shared))
        (func (export "f")) (global (export "g") i32 (i32.const 7)))""",
    "nothing after imports": """(module (import "env" "memory" (memory 1)))""",
    "start and data after": """(module (import "env" "memory" (memory 1)) (func $s)
        (start $s) (data (i32.const 8) "hi"))""",
}


@pytest.mark.parametrize("wat", CASES.values(), ids=CASES.keys())
def test_imported_memory_gets_exported_and_validates(wat: str) -> None:
    data = wasmtime.wat2wasm(wat)
    before = parse_module(data)
    out = export_imported_memory(data, before)
    after = parse_module(out)
    config = wasmtime.Config()
    config.wasm_threads = True
    config.shared_memory = True
    wasmtime.Module.validate(wasmtime.Engine(config), out)
    memory_exports = [e for e in after.exports if e.kind == "memory"]
    assert [(e.name, e.index) for e in memory_exports] == [("memory", 0)]
    assert [e for e in after.exports if e.kind != "memory"] == before.exports
    assert after.imports == before.imports


def test_modules_that_need_nothing_are_unchanged() -> None:
    own = wasmtime.wat2wasm('(module (memory (export "memory") 1))')
    assert export_imported_memory(own, parse_module(own)) == own
    no_memory = wasmtime.wat2wasm("(module (func))")
    assert export_imported_memory(no_memory, parse_module(no_memory)) == no_memory


def test_a_non_memory_named_memory_is_refused() -> None:
    clash = wasmtime.wat2wasm('(module (import "env" "memory" (memory 1)) '
                              '(func (export "memory")))')
    with pytest.raises(LinkError, match="non-memory named 'memory'"):
        export_imported_memory(clash, parse_module(clash))
