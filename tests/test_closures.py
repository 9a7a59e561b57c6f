"""Closures and dynamic calls (WASIX `closure_*`, `call_dynamic`, `reflect_signature`), and
static mains that NEED libraries.

The linker's part (closure slots, blocks, what a later group replays) and the generated
trampolines are checked without processes; the rest runs real wasix-libc programs
(tests/programs/closures, tests/programs/static_needed) through real worker processes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import msgpack
import pytest
import wasmtime
from leaks import assert_nothing_left, open_fds
from test_linker import World, side_module, wat

from wasmgroup.orchestrator.inspect import describe, format_text
from wasmgroup.orchestrator.linker import (
    CLOSURE_BLOCK,
    MAIN_HANDLE,
    MAIN_PIE,
    MAIN_STATIC,
    MAIN_STATIC_NEEDED,
    MAX_CLOSURE_TABLE,
    main_shape,
)
from wasmgroup.orchestrator.program import EXIT_RUNTIME_ERROR, EXIT_TRAP, run_program
from wasmgroup.shared.closure import decode_types, encode_types, trampoline_module
from wasmgroup.shared.engine import make_engine_config
from wasmgroup.shared.errors import LinkError
from wasmgroup.shared.plan import ClosurePlan, TableGrowth, from_wire, to_wire
from wasmgroup.shared.wasm import FuncType, parse_module
from wasmgroup.worker.wasmtime_compat import value_type_name

ENOTSUP = 58


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    w.start()
    return w


# ---------------------------------------------------------------------- linker state
def test_first_closure_grows_a_block_every_group_must_apply(world: World) -> None:
    before = world.linker.table_length
    slot, growth = world.linker.allocate_closure()
    assert growth == TableGrowth(before, CLOSURE_BLOCK)
    assert slot == before
    assert world.linker.table_length == before + CLOSURE_BLOCK
    slots = [world.linker.allocate_closure() for _ in range(CLOSURE_BLOCK - 1)]
    assert all(g is None for _, g in slots)  # the rest of the block: no new growth
    assert sorted(s for s, _ in slots) == list(range(before + 1, before + CLOSURE_BLOCK))
    slot, growth = world.linker.allocate_closure()
    assert growth == TableGrowth(before + CLOSURE_BLOCK, CLOSURE_BLOCK)
    assert slot == before + CLOSURE_BLOCK


def test_closure_blocks_stop_at_the_table_limit(world: World) -> None:
    world.linker.table_length = MAX_CLOSURE_TABLE - CLOSURE_BLOCK
    slot, growth = world.linker.allocate_closure()
    assert growth is not None and world.linker.table_length == MAX_CLOSURE_TABLE
    for _ in range(CLOSURE_BLOCK - 1):
        world.linker.allocate_closure()
    with pytest.raises(LinkError, match="no free closure slot"):
        world.linker.allocate_closure()
    assert world.linker.table_length == MAX_CLOSURE_TABLE  # unchanged by the refusal
    world.linker.free_closure(slot)
    assert world.linker.allocate_closure() == (slot, None)


def test_freed_slot_is_reused_and_freeing_twice_changes_nothing(world: World) -> None:
    a, _ = world.linker.allocate_closure()
    b, _ = world.linker.allocate_closure()
    assert world.linker.free_closure(a) is True
    assert world.linker.free_closure(a) is False
    assert world.linker.free_closure(12345) is False
    assert world.linker.allocate_closure() == (a, None)
    assert world.linker.allocate_closure()[0] not in (a, b)


def test_only_an_allocated_closure_slot_can_be_prepared(world: World) -> None:
    slot, _ = world.linker.allocate_closure()
    plan = ClosurePlan(slot, "<generated x>", ("i32",), ("i32",), 3, 0x100)
    with pytest.raises(LinkError, match=f"table slot {MAIN_HANDLE} is not an allocated closure"):
        world.linker.prepare_closure(ClosurePlan(MAIN_HANDLE, "m", (), (), 3, 0))
    world.linker.prepare_closure(plan)
    world.linker.free_closure(slot)
    with pytest.raises(LinkError, match="not an allocated closure"):
        world.linker.check_closure_slot(slot)
    assert world.linker.replay_closures() == [plan]  # its function stays in the table


def test_replay_gives_the_latest_closure_of_each_slot_and_the_table_length(
        world: World) -> None:
    a, _ = world.linker.allocate_closure()
    b, _ = world.linker.allocate_closure()
    first = ClosurePlan(b, "m1", ("i64",), (), 5, 0)
    world.linker.prepare_closure(first)
    world.linker.prepare_closure(ClosurePlan(a, "m2", (), ("f32",), 6, 0))
    again = ClosurePlan(b, "m3", ("f64",), ("f64",), 7, 8)
    world.linker.prepare_closure(again)
    assert world.linker.replay_closures() == [ClosurePlan(a, "m2", (), ("f32",), 6, 0), again]


def test_dlsym_after_a_closure_block_gets_a_slot_after_it(world: World) -> None:
    world.lib("libf.so", wat('(func (export "f") (param i32) (result i32) local.get 0)'))
    world.dlopen("libf.so")
    _, growth = world.linker.allocate_closure()
    assert growth is not None
    address, assignment = world.linker.dlsym(0, "f")
    assert assignment is not None and assignment.slot == growth.index + growth.size
    assert address.value == growth.index + growth.size


def test_closure_operations_round_trip_through_msgpack() -> None:
    for op in (TableGrowth(18, 100),
               ClosurePlan(42, "<generated ab>", ("i32", "i64", "f32", "f64"), ("f64",),
                           7, 0xFFFFFFF0)):
        assert from_wire(msgpack.unpackb(msgpack.packb(to_wire(op)))) == op


# ---------------------------------------------------------------------- trampolines
def test_value_type_codes_follow_the_abi() -> None:
    assert decode_types(bytes([0, 1, 2, 3, 4])) == ("i32", "i64", "f32", "f64", "v128")
    assert encode_types(("f64", "i32")) == bytes([3, 0])
    with pytest.raises(ValueError, match="unknown value type 9"):
        decode_types(bytes([0, 9]))


BACKING = """(module
  (import "env" "memory" (memory 1 1 shared))
  ;; values: i32 @0, i64 @4, f32 @12, f64 @16 -> results: f64 (d * 2) @0, i64 (b + a) @8
  (func (export "backing") (param $values i32) (param $results i32) (param $env i32)
    (f64.store align=1 (local.get $results)
      (f64.mul (f64.load offset=16 align=1 (local.get $values)) (f64.const 2)))
    (i64.store offset=8 align=1 (local.get $results)
      (i64.add (i64.load offset=4 align=1 (local.get $values))
               (i64.extend_i32_s (i32.load align=1 (local.get $values)))))
    (i32.store (local.get $env) (i32.add (i32.load (local.get $env)) (i32.const 1)))))"""


def test_trampoline_packs_arguments_and_unpacks_results_on_the_shadow_stack() -> None:
    engine = wasmtime.Engine(make_engine_config())
    store = wasmtime.Store(engine)
    store.set_epoch_deadline(1 << 30)  # the engine interrupts at epochs: none comes here
    memory = wasmtime.SharedMemory(engine, wasmtime.MemoryType(wasmtime.Limits(1, 1),
                                                               shared=True))
    table = wasmtime.Table(store, wasmtime.TableType(wasmtime.ValType.funcref(),
                                                     wasmtime.Limits(4, None)), None)
    sp = wasmtime.Global(store, wasmtime.GlobalType(wasmtime.ValType.i32(), True),
                         wasmtime.Val.i32(4096))
    backing = wasmtime.Instance(store, wasmtime.Module(engine, BACKING), [memory])
    table.set(store, 2, backing.exports(store)["backing"])
    signature = FuncType(("i32", "i64", "f32", "f64"), ("f64", "i64"))
    data = trampoline_module(signature, 1, shared=True)
    parse_module(data)  # our own reader takes it too
    const = wasmtime.GlobalType(wasmtime.ValType.i32(), False)
    instance = wasmtime.Instance(store, wasmtime.Module(engine, data), [
        memory, table, sp, wasmtime.Global(store, const, wasmtime.Val.i32(2)),
        wasmtime.Global(store, const, wasmtime.Val.i32(64))])
    closure = instance.exports(store)["closure"]
    assert closure(store, -3, 1 << 40, 1.5, 0.25) == [0.5, (1 << 40) - 3]
    assert sp.value(store) == 4096  # the frame is given back
    raw = memory.data_ptr()
    assert struct.unpack("<i", bytes(raw[64:68]))[0] == 1  # the env pointer reached it


@pytest.mark.parametrize("params, results", [
    ((), ()), (("i32",), ("i32",)), (("i64", "i64"), ("f32",)), (("f64",) * 20, ("f64",)),
    (("v128", "i32"), ("v128",)), ((), ("i32", "i64", "f32", "f64"))])
def test_trampolines_of_every_value_type_validate(params: tuple[str, ...],
                                                  results: tuple[str, ...]) -> None:
    engine = wasmtime.Engine(make_engine_config())
    for shared in (True, False):
        module = wasmtime.Module(engine, trampoline_module(FuncType(params, results), 17,
                                                           shared))
        exported = module.exports[0].type
        assert isinstance(exported, wasmtime.FuncType)
        # (wasmtime's own str() of a v128 type aborts the process)
        assert tuple(value_type_name(p) for p in exported.params) == params
        assert tuple(value_type_name(r) for r in exported.results) == results


# ---------------------------------------------------------------------- real programs
CLOSURES_OUTPUT = """\
closure in main: 16.00
called from a thread started before: 7.50, after: 64.00
cycles: 300 total=344850 distinct_slots=1
held: 150 sum=33675 span=150
closure from the thread: neg(5)=-5 spun=1 calls>0=1
racing threads: 1830 1890
half(5)=2.50
call_dynamic plain strict: err=0 result=7045
call_dynamic strict, short values: err=28
call_dynamic strict, short results: err=28
call_dynamic lax, only the i32: err=0 result=7000
call_dynamic lax, 2 result bytes: err=0 bytes=851bab
call_dynamic closure: err=0 result=8.00
call_dynamic half: err=0 result=1.50
call_dynamic null slot: err=28
call_dynamic beyond the table: err=28
reflect plain_mix: err=0 cacheable=1 args=4 results=1 types=0123/1
reflect plain_noop: err=0 cacheable=1 args=0 results=0 types=/
reflect closure: err=0 cacheable=0 args=4 results=1 types=0123/3
reflect thread closure: err=0 cacheable=0 args=1 results=1 types=1/1
reflect half: err=0 cacheable=0 args=1 results=1 types=2/2
reflect plain_mix cap 2: err=61 cacheable=1 args=4 results=1 types=9999/9
reflect null: err=28 cacheable=0 args=0 results=0 types=/
reflect beyond: err=28 cacheable=0 args=0 results=0 types=/
reflect v128 closure: err=0 cacheable=0 args=2 results=1 types=40/4
call_dynamic v128: err=28
prepare, bad type: err=28
prepare, freed slot: err=28
prepare, not a closure slot: err=28
prepare, types beyond memory: err=78
prepare, 100000 arguments: err=28
allocate, result beyond memory: err=78
call_dynamic, values beyond memory: err=78
call_dynamic, results beyond memory: err=78
reflect, result beyond memory: err=78
free, unknown slot: err=0
free, twice: err=0
reflect plain_mix after: err=0 cacheable=1 args=4 results=1 types=0123/1
"""


@pytest.mark.parametrize("verify", [False, True])
def test_closures_across_threads_and_dynamic_calls(guests: Path, verify: bool) -> None:
    fds = open_fds()
    result = run_program(str(guests / "closures" / "closures.wasm"), verify_groups=verify)
    assert result.exit_code == 0, result.error
    assert result.stdout.decode() == CLOSURES_OUTPUT
    assert_nothing_left(fds)


def test_closure_blocks_and_preparations_are_link_operations(guests: Path,
                                                             tmp_path: Path) -> None:
    """Traced like dlopen; with --verify-groups every group agreed after each one (a
    disagreement would have stopped the program)."""
    trace = tmp_path / "trace.jsonl"
    result = run_program(str(guests / "closures" / "closures.wasm"), verify_groups=True,
                         trace=trace)
    assert result.exit_code == 0, result.error
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    blocks = [r for r in records if r["op"] == "closure_allocate"]
    assert [r["slots"][1] for r in blocks] == [CLOSURE_BLOCK, CLOSURE_BLOCK]
    assert blocks[1]["slots"][0] == blocks[0]["slots"][0] + CLOSURE_BLOCK
    assert all(r["groups"] == 2 and set(r["group_apply_ms"]) == {"1", "2"} for r in blocks)
    prepares = [r for r in records if r["op"] == "closure_prepare"]
    # main's, the thread's, the cycles, the 150 held, the racing threads', half, v128; then
    # a freed and a foreign slot
    succeeded = 1 + 1 + 300 + 150 + 2 * 60 + 1 + 1
    assert [r["ok"] for r in prepares] == [True] * succeeded + [False, False]
    assert "is not an allocated closure" in prepares[-1]["error"]


def test_a_trap_inside_a_closure_ends_the_program_naming_the_thread(guests: Path) -> None:
    fds = open_fds()
    result = run_program(str(guests / "closures" / "closures.wasm"), ["trap"])
    assert result.exit_code == EXIT_TRAP
    assert result.error is not None
    assert "thread 2" in result.error and "trap_backing" in result.error
    assert "unreachable" in result.error
    assert b"after a trap" not in result.stdout
    assert_nothing_left(fds)


@pytest.mark.parametrize("verify", [False, True])
def test_closure_slots_after_a_failed_dlopen_agree_in_every_thread(guests: Path,
                                                                   verify: bool) -> None:
    """The failed load grew the table (and filled its slots) in the instigator only: the
    slots are nulled again, and the next block of closure slots lines up in every group."""
    fds = open_fds()
    result = run_program(str(guests / "closures" / "closures.wasm"),
                         ["afterfail", "/lib/libctortrap.so"], verify_groups=verify,
                         dirs=[f"{guests / 'plugins' / 'faulty'}::/lib"])
    assert result.exit_code == 0, result.error
    assert result.stdout.decode().splitlines() == [
        "dlopen failed: yes", "closure after a failed dlopen: 21 (in another thread: 21)"]
    assert_nothing_left(fds)


def test_closures_need_the_shared_table_dynamic_calls_take_an_exported_one(
        guests: Path) -> None:
    fds = open_fds()
    result = run_program(str(guests / "closures" / "unlinked.wasm"))
    assert result.exit_code == 0, result.error
    assert result.stdout.decode().splitlines() == [
        f"closure_allocate: {ENOTSUP}", f"closure_prepare: {ENOTSUP}",
        "call_dynamic: 0 result=42", "reflect_signature: 0 args=1 results=1"]
    assert_nothing_left(fds)


# ---------------------------------------------------------------------- static main + NEEDED
def test_main_shapes() -> None:
    static = parse_module(bytes(wasmtime.wat2wasm(wat('(import "env" "memory" (memory 1))'))))
    assert main_shape(static) == MAIN_STATIC
    pie = parse_module(side_module(wat('(import "env" "__memory_base" (global i32))')))
    assert main_shape(pie) == MAIN_PIE
    sp_only = parse_module(side_module(wat(
        '(import "env" "__stack_pointer" (global (mut i32)))')))
    assert main_shape(sp_only) == MAIN_PIE
    needed = parse_module(side_module(wat('(import "env" "memory" (memory 1))'),
                                      needed=["liba.so"]))
    assert main_shape(needed) == MAIN_STATIC_NEEDED


def static_needed_main(table: bool = True) -> bytes:
    items = ['(import "env" "memory" (memory 3))']
    if table:
        items.append('(import "env" "__indirect_function_table" (table 7 funcref))')
    items += ['(global $sp (export "__stack_pointer") (mut i32) (i32.const 5000))',
              '(func (export "_start"))']
    return side_module(wat(*items), mem=(0, 4), table=(6, 0), needed=["libn.so"])


def test_static_main_with_needed_keeps_its_own_layout(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.lib("libn.so", wat('(import "env" "__table_base" (global i32))',
                         '(import "env" "__memory_base" (global i32))'), mem=(64, 3),
          table=(2, 2))
    main = static_needed_main()
    module = parse_module(main)
    pages = w.linker.layout_main(module, 3)
    assert pages == 3  # its own memory size, no PIE stack after data
    assert w.linker.table_length == 7  # as it imports the table, not 1 + table_size
    assert (w.linker.stack_low, w.linker.stack_high, w.linker.heap_base) == (0, 0, 0)
    w.memory.pages = pages
    plan = w.linker.plan_main(module, "/app/main.wasm", str(w.root / "app/main.wasm"))
    by_handle = {m.handle: m for m in plan.plan.modules}
    assert (by_handle[1].memory_base, by_handle[1].table_base) == (0, 0)
    assert by_handle[2].name == "libn.so"
    assert by_handle[2].table_base == 8  # aligned (4) after main's 7 slots
    assert by_handle[2].memory_base >= 3 * 65536  # placed after main's own memory


def test_static_main_with_needed_must_import_its_table(tmp_path: Path) -> None:
    w = World(tmp_path)
    with pytest.raises(LinkError, match=r"must import its table as "
                                        r"env\.__indirect_function_table"):
        w.linker.layout_main(parse_module(static_needed_main(table=False)), 3)


def test_static_main_with_needed_runs_its_library_in_every_thread(guests: Path) -> None:
    fds = open_fds()
    for verify in (False, True):
        result = run_program(str(guests / "static_needed" / "static_main.wasm"),
                             dirs=[f"{guests / 'static_needed'}::/lib"], verify_groups=verify)
        assert result.exit_code == 0, result.error
        assert result.stdout.decode().splitlines() == [
            "static main: local=42 sn_compute(5)=70", "thread: sn_compute(7)=82"]
    assert_nothing_left(fds)


@pytest.mark.parametrize("variant, message", [
    ("static_main_ownmemory", "a main module with dylink.0 must import its memory as env.memory"),
    ("static_main_owntable", "a static main module with NEEDED libraries must import its table"),
])
def test_static_main_with_needed_defining_memory_or_table_is_refused(
        guests: Path, variant: str, message: str) -> None:
    fds = open_fds()
    result = run_program(str(guests / "static_needed" / f"{variant}.wasm"),
                         dirs=[f"{guests / 'static_needed'}::/lib"])
    assert result.exit_code == EXIT_RUNTIME_ERROR
    assert result.error is not None and message in result.error
    assert result.stdout == b""
    assert_nothing_left(fds)


def test_inspect_names_a_static_main_with_needed(guests: Path) -> None:
    path = guests / "static_needed" / "static_main.wasm"
    summary = describe(parse_module(path.read_bytes()), str(path))
    assert summary["kind"] == "static main (NEEDED libsn.so)"
    assert summary["dylink"]["needed"] == ["libsn.so"]
    text = format_text(summary)
    assert "layout: its own" in text and "needs:" not in text
