"""worker/wasmtime_compat.py `host_func`: the short way of integer host calls (arguments read
and the result written straight at the values array's address) against real wasm callers."""

from __future__ import annotations

import pytest
import wasmtime

from wasmgroup.worker import wasmtime_compat

wasmtime_compat.apply()

WAT = """(module
  (import "h" "add" (func $add (param i32 i64) (result i32)))
  (import "h" "wide" (func $wide (param i32) (result i64)))
  (import "h" "none" (func $none (param i32)))
  (func (export "add") (param i32 i64) (result i32) (call $add (local.get 0) (local.get 1)))
  (func (export "wide") (param i32) (result i64) (call $wide (local.get 0)))
  (func (export "none") (param i32) (call $none (local.get 0)))
  (func (export "loop") (param $n i32) (result i32) (local $sum i32)
    (loop $l
      (local.set $sum (i32.add (local.get $sum) (call $add (local.get $n) (i64.const 1))))
      (local.tee $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $l))
    (local.get $sum)))"""


def _instance(add, wide, none):  # type: ignore[no-untyped-def]
    store = wasmtime.Store(wasmtime.Engine())
    module = wasmtime.Module(store.engine, WAT)
    i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
    funcs = [wasmtime_compat.host_func(store, wasmtime.FuncType([i32, i64], [i32]), add),
             wasmtime_compat.host_func(store, wasmtime.FuncType([i32], [i64]), wide),
             wasmtime_compat.host_func(store, wasmtime.FuncType([i32], []), none)]
    exports = wasmtime.Instance(store, module, funcs).exports(store)
    return store, exports


def test_arguments_arrive_signed_and_results_wrap_to_their_width() -> None:
    seen: list[tuple[int, ...]] = []

    def add(a: int, b: int) -> int:
        seen.append((a, b))
        return a + b

    store, exports = _instance(add, lambda a: a, lambda a: None)
    assert exports["add"](store, -1, -2) == -3
    assert seen == [(-1, -2)]
    assert exports["add"](store, 0x7FFFFFFF, 1) == -0x80000000  # 2**31 wraps to i32
    assert exports["wide"](store, -5) == -5
    assert exports["none"](store, 3) is None


def test_unsigned_results_reach_the_guest_as_the_same_bits() -> None:
    store, exports = _instance(lambda a, b: 0xFFFFFFFF, lambda a: 2**64 - 1, lambda a: None)
    assert exports["add"](store, 0, 0) == -1
    assert exports["wide"](store, 0) == -1


def test_an_exception_in_a_host_function_reaches_the_caller() -> None:
    def add(a: int, b: int) -> int:
        raise ValueError(f"refused {a}")

    def none(a: int) -> int:
        return a  # a result where the type has none

    store, exports = _instance(add, lambda a: None, none)
    with pytest.raises(ValueError, match="refused 7"):
        exports["add"](store, 7, 0)
    with pytest.raises(TypeError):  # None is no i64
        exports["wide"](store, 1)
    with pytest.raises(wasmtime.WasmtimeError, match="produced results"):
        exports["none"](store, 1)


def test_many_calls_in_a_row() -> None:
    store, exports = _instance(lambda a, b: a + b, lambda a: a, lambda a: None)
    assert exports["loop"](store, 10_000) == sum(n + 1 for n in range(1, 10_001))
