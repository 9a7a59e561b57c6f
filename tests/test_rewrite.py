"""The instruction rewrite: same behaviour, every index renumbered (orchestrator/rewrite.py)."""

from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from wasmgroup.orchestrator.rewrite import rewrite_memory_instructions
from wasmgroup.shared.engine import make_engine_config
from wasmgroup.shared.hostabi import HELPER_MODULE
from wasmgroup.shared.wasm import parse_module
from wasmgroup.worker import wasmtime_compat

wasmtime_compat.apply()

PROGRAM = """
(module
  (import "env" "memory" (memory 1 10 shared))
  (import "env" "log" (func $log (param i32)))
  (table 4 funcref)
  (elem (i32.const 0) $double $triple)
  (elem declare func $triple)
  (global $fp (mut funcref) (ref.func $double))
  (global $started (mut i32) (i32.const 0))
  (func $double (param i32) (result i32) (i32.mul (local.get 0) (i32.const 2)))
  (func $triple (param i32) (result i32) (i32.mul (local.get 0) (i32.const 3)))
  (func $crash unreachable)
  (func $start (global.set $started (i32.const 1)) (call $log (i32.const 1)))
  (start $start)
  (func (export "grow_and_size") (result i32)
    (i32.add (i32.mul (memory.grow (i32.const 1)) (i32.const 100)) (memory.size)))
  (func (export "indirect") (param i32) (result i32)
    (call_indirect (param i32) (result i32) (i32.const 5) (local.get 0)))
  (func (export "direct") (result i32) (call $triple (i32.const 7)))
  (func (export "started") (result i32) (global.get $started))
  (func (export "via_ref") (result i32)
    (table.set (i32.const 2) (global.get $fp))
    (call_indirect (param i32) (result i32) (i32.const 21) (i32.const 2)))
  (func (export "wait_mismatch") (result i32)
    (i32.store (i32.const 16) (i32.const 1))
    (memory.atomic.wait32 offset=8 (i32.const 8) (i32.const 0) (i64.const 0)))
  (func (export "wait_timeout") (result i32)
    (i32.store (i32.const 16) (i32.const 1))
    (memory.atomic.wait32 offset=8 (i32.const 8) (i32.const 1) (i64.const 1000)))
  (func (export "wait64_mismatch") (result i32)
    (memory.atomic.wait64 (i32.const 24) (i64.const 5) (i64.const 0)))
  (func (export "notify") (result i32)
    (memory.atomic.notify offset=4 (i32.const 12) (i32.const 1)))
  (func (export "loop_sum") (param i32) (result i32) (local i32)
    (block $out (loop $again
      (br_if $out (i32.eqz (local.get 0)))
      (local.set 1 (i32.add (local.get 1) (call $double (local.get 0))))
      (local.set 0 (i32.sub (local.get 0) (i32.const 1)))
      (br $again)))
    (local.get 1))
  (func (export "boom") (call $crash)))
"""

EXPORTS = ["grow_and_size", "direct", "started", "via_ref", "wait_mismatch", "wait_timeout",
           "wait64_mismatch", "notify", "boom"]


def engine() -> wasmtime.Engine:
    return wasmtime.Engine(make_engine_config())


def instantiate(data: bytes, eng: wasmtime.Engine) -> tuple[wasmtime.Store, Any]:
    store = wasmtime.Store(eng)
    store.set_epoch_deadline(1 << 62)
    module = wasmtime.Module(eng, data)
    memory = wasmtime.SharedMemory(eng, wasmtime.MemoryType(wasmtime.Limits(1, 10), shared=True))
    view = memory.data_ptr()

    def read(address: int, size: int) -> int:
        return int.from_bytes(bytes(view[address:address + size]), "little")

    helpers = {  # reference semantics of the instructions, for one thread
        "memory_size": lambda: memory.data_len() // 65536,
        "memory_grow": lambda n: memory.grow(n),
        "atomic_wait32": lambda a, e, t, o: 1 if read(a + o, 4) != e & 0xFFFFFFFF else 2,
        "atomic_wait64": lambda a, e, t, o: 1 if read(a + o, 8) != e else 2,
        "atomic_notify": lambda a, c, o: 0,
    }
    values: list[Any] = []
    for imp in module.imports:
        if imp.name == "memory":
            values.append(memory)
        elif imp.module == HELPER_MODULE:
            assert isinstance(imp.type, wasmtime.FuncType)
            values.append(wasmtime.Func(store, imp.type, helpers[str(imp.name)]))
        else:
            assert isinstance(imp.type, wasmtime.FuncType)
            values.append(wasmtime.Func(store, imp.type, lambda x: None))
    return store, wasmtime.Instance(store, module, values).exports(store)


def outcome(store: wasmtime.Store, exports: Any, name: str, *args: int) -> object:
    try:
        return exports[name](store, *args)
    except wasmtime.Trap as trap:
        # Code offsets and unnamed functions' indices move; the named frames must not.
        return "trap in " + ",".join(re.findall(r"!([A-Za-z_]\w*)", str(trap)))


def test_rewritten_module_behaves_the_same() -> None:
    original = wasmtime.wat2wasm(PROGRAM)
    rewritten = rewrite_memory_instructions(original, parse_module(original))
    after = parse_module(rewritten)
    assert [i.name for i in after.imports if i.module == HELPER_MODULE] == [
        "memory_size", "memory_grow", "atomic_notify", "atomic_wait32", "atomic_wait64"]
    eng = engine()
    wasmtime.Module.validate(eng, rewritten)
    results = []
    for data in (original, rewritten):
        store, exports = instantiate(data, eng)
        results.append({name: outcome(store, exports, name) for name in EXPORTS}
                       | {"indirect": [outcome(store, exports, "indirect", i) for i in (0, 1)],
                          "loop_sum": outcome(store, exports, "loop_sum", 10)})
    plain, via_host = results
    assert plain["grow_and_size"] == 102 and plain["direct"] == 21 and plain["started"] == 1
    assert plain["wait_mismatch"] == 1 and plain["wait_timeout"] == 2
    assert plain["boom"] == "trap in crash"  # the name section names the trapping function
    assert via_host == plain


def test_modules_without_those_instructions_are_unchanged() -> None:
    data = wasmtime.wat2wasm('(module (func (export "f") (result i32) i32.const 1))')
    assert rewrite_memory_instructions(data, parse_module(data)) is data


BUILT = Path(__file__).resolve().parent.parent / "build" / "guests"
GUESTS = sorted(p for p in glob.glob(f"{BUILT}/**/*", recursive=True)
                if p.endswith((".wasm", ".so")) and not p.endswith("libbroken.so"))


@pytest.mark.parametrize("path", GUESTS, ids=[Path(p).name for p in GUESTS])
def test_every_guest_program_still_validates(path: str) -> None:
    data = Path(path).read_bytes()
    module = parse_module(data)
    rewritten = rewrite_memory_instructions(data, module)
    wasmtime.Module.validate(engine(), rewritten)
    after = parse_module(rewritten)
    assert after.dylink == module.dylink  # linking metadata untouched
    assert [e.name for e in after.exports] == [e.name for e in module.exports]
