"""The pure linker state (`orchestrator.linker`) on synthetic modules: no processes, no Store.

Each module is WAT turned into bytes by wasmtime, with a hand-built `dylink.0` section put
first. The files live in a temporary directory mapped at the guest's `/`; the checks follow
reference/wasix-linker-behaviour.md §2.2, §2.4-§2.6, §5 and §9.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import msgpack
import pytest
import wasmtime
from fakes import FakeMemory
from wasm_bytes import HEADER, dylink, mem_info, name, strings, subsection, uleb

from wasmgroup.orchestrator.allocator import PAGE
from wasmgroup.orchestrator.linker import MAX_NEEDED_DEPTH, STACK_SIZE, LinkerState, PendingLoad
from wasmgroup.orchestrator.locate import GuestFilesystem, Located
from wasmgroup.shared import dylink as dl
from wasmgroup.shared.errors import LinkError, ModuleNotFound
from wasmgroup.shared.plan import (
    B_CONST,
    B_FUNC,
    B_HOST,
    B_MEMORY,
    B_STACK_POINTER,
    B_STUB,
    B_TABLE,
    B_TLS,
    Binding,
    LoadPlan,
    LoadUndo,
    SlotAssignment,
    SymbolAddress,
    from_wire,
    to_wire,
)
from wasmgroup.shared.wasm import FuncType, WasmModule, parse_module

I32_I32 = FuncType(("i32",), ("i32",))


def side_module(wat: str, *, mem: tuple[int, int] = (0, 0), table: tuple[int, int] = (0, 0),
                needed: list[str] | None = None, runtime_path: list[str] | None = None,
                export_flags: dict[str, int] | None = None,
                import_flags: dict[tuple[str, str], int] | None = None) -> bytes:
    """`wat` as a dynamic library: a `dylink.0` section right after the 8-byte header.

    `mem` and `table` are (size, log2 alignment), as in MEM_INFO.
    """
    subs = [mem_info(mem[0], mem[1], table[0], table[1])]
    if needed:
        subs.append(strings(dl.NEEDED, *needed))
    if export_flags:
        subs.append(subsection(dl.EXPORT_INFO, uleb(len(export_flags)) + b"".join(
            name(sym) + uleb(flags) for sym, flags in export_flags.items())))
    if import_flags:
        subs.append(subsection(dl.IMPORT_INFO, uleb(len(import_flags)) + b"".join(
            name(mod) + name(sym) + uleb(flags) for (mod, sym), flags in import_flags.items())))
    if runtime_path:
        subs.append(strings(dl.RUNTIME_PATH, *runtime_path))
    body = bytes(wasmtime.wat2wasm(wat))
    assert body[:8] == HEADER
    return body[:8] + dylink(*subs) + body[8:]


def wat(*items: str) -> str:
    return "(module\n" + "\n".join(items) + ")"


def got_mem(sym: str) -> str:
    return f'(import "GOT.mem" "{sym}" (global (mut i32)))'


def got_func(sym: str) -> str:
    return f'(import "GOT.func" "{sym}" (global (mut i32)))'


def env_func(sym: str, sig: str = "(param i32) (result i32)") -> str:
    return f'(import "env" "{sym}" (func {sig}))'


def func(sym: str, sig: str = "(param i32) (result i32)", body: str = "local.get 0") -> str:
    return f'(func (export "{sym}") {sig} {body})'


def data(sym: str, value: int) -> str:
    return f'(global (export "{sym}") i32 (i32.const {value}))'


MEMORY_BASE = '(import "env" "__memory_base" (global i32))'
TABLE_BASE = '(import "env" "__table_base" (global i32))'

# A PIE main: data at 2^4 = 16, two table slots of its own (1 and 2), the stack after its data.
MAIN_MEM = (1000, 4)
MAIN_BASE = 16
STACK_LOW = 1024  # align_up(16 + 1000, 1024)
STACK_HIGH = STACK_LOW + STACK_SIZE
MAIN_PAGES = -(-STACK_HIGH // PAGE)  # 129


def main_wat(*extra_imports: str) -> str:
    return wat(
        '(import "env" "memory" (memory 1))',
        '(import "env" "__indirect_function_table" (table 2 funcref))',
        '(import "env" "__stack_pointer" (global (mut i32)))',
        MEMORY_BASE, TABLE_BASE,
        got_mem("__heap_base"), got_mem("__stack_low"), got_mem("__stack_high"),
        *extra_imports,
        func("mf"), data("mdata", 8), data("shared", 4))


def read_located(located: Located) -> WasmModule:
    # From the descriptor the lookup opened, as the coordinator reads. The host path in the
    # errors is deliberate: the linker must not pass it on.
    data = os.pread(located.fd, os.fstat(located.fd).st_size, 0)
    return parse_module(data, source=located.host_path)


class World:
    """A guest filesystem (tmp dir at `/`, cwd `/app`), a fake memory and a LinkerState."""

    def __init__(self, tmp_path: Path, ld_library_path: list[str] | None = None) -> None:
        self.root = tmp_path / "root"
        self.root.mkdir()
        self.memory = FakeMemory()
        self.fs = GuestFilesystem.from_specs([f"{self.root}::/"], cwd="/app")
        self.linker = LinkerState(self.fs, read_located, self.memory.grow, ld_library_path)

    def add(self, guest_path: str, content: bytes) -> None:
        host = self.root / guest_path.lstrip("/")
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_bytes(content)

    def lib(self, lib_name: str, wat_text: str, **kw: object) -> None:
        self.add(f"/lib/{lib_name}", side_module(wat_text, **kw))  # type: ignore[arg-type]

    def plan_main(self, main: bytes, guest_path: str = "/app/main.wasm") -> PendingLoad:
        self.add(guest_path, main)
        module = parse_module(main)
        self.memory.pages = self.linker.layout_main(module, 1)
        return self.linker.plan_main(module, guest_path, str(self.root / guest_path[1:]))

    def start(self, main: bytes | None = None, guest_path: str = "/app/main.wasm") -> LoadPlan:
        pending = self.plan_main(main if main is not None else main_module(), guest_path)
        self.linker.commit(pending)
        return pending.plan

    def plan(self, lib_name: str, **kw: list[str]) -> PendingLoad:
        pending = self.linker.plan_load(lib_name, **kw)
        assert isinstance(pending, PendingLoad)
        return pending

    def dlopen(self, lib_name: str, **kw: list[str]) -> LoadPlan:
        pending = self.plan(lib_name, **kw)
        self.linker.commit(pending)
        return pending.plan

    def state(self) -> tuple[object, ...]:
        linker = self.linker
        return (dict(linker.by_name), linker.next_handle, dict(linker.modules),
                linker.table_length, linker.allocator.snapshot(), len(linker.log),
                self.memory.pages)


def main_module(needed: list[str] | None = None, runtime_path: list[str] | None = None,
                extra_imports: tuple[str, ...] = ()) -> bytes:
    return side_module(main_wat(*extra_imports), mem=MAIN_MEM, table=(2, 0), needed=needed,
                       runtime_path=runtime_path)


def bindings(plan: LoadPlan, handle: int) -> dict[tuple[str, str], Binding]:
    (module_plan,) = [m for m in plan.modules if m.handle == handle]
    return {(b.module, b.name): b for b in module_plan.bindings}


def module_plan_named(plan: LoadPlan, lib_name: str) -> int:
    (handle,) = [m.handle for m in plan.modules if m.name == lib_name]
    return handle


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    w.start()
    return w


# ---------------------------------------------------------------------- handles (§9.1, §9.3)
def test_main_is_1_and_needed_chain_gets_post_order_handles(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.lib("libA.so", wat(), needed=["libB.so"])
    w.lib("libB.so", wat(), needed=["libC.so"])
    w.lib("libC.so", wat())
    plan = w.start(main_module(needed=["libA.so"]))
    assert [(m.handle, m.name) for m in plan.modules] == [
        (1, "/app/main.wasm"), (2, "libC.so"), (3, "libB.so"), (4, "libA.so")]
    assert plan.modules[1].guest_path == "/lib/libC.so"
    assert w.linker.by_name == {"libC.so": 2, "libB.so": 3, "libA.so": 4}
    assert list(w.linker.modules) == [1, 2, 3, 4]
    # dlopen: the dependency first, handles continue after the committed ones.
    w.lib("libD.so", wat(), needed=["libE.so", "libC.so"])
    w.lib("libE.so", wat())
    plan = w.dlopen("libD.so")
    assert [(m.handle, m.name) for m in plan.modules] == [(5, "libE.so"), (6, "libD.so")]
    assert w.linker.next_handle == 7


def test_shared_dependency_in_one_batch_loads_once(world: World) -> None:
    world.lib("libtop.so", wat(), needed=["libx.so", "liby.so"])
    world.lib("libx.so", wat(), needed=["libz.so"])
    world.lib("liby.so", wat(), needed=["libz.so"])
    world.lib("libz.so", wat())
    plan = world.dlopen("libtop.so")
    assert [m.name for m in plan.modules] == ["libz.so", "libx.so", "liby.so", "libtop.so"]
    assert plan.handles == [2, 3, 4, 5]


def test_redlopen_same_name_returns_handle_and_loads_nothing(world: World) -> None:
    world.lib("libA.so", wat(), mem=(100, 2), needed=["libB.so"])
    world.lib("libB.so", wat(), mem=(100, 2))
    world.dlopen("libA.so")
    before = world.state()
    assert world.linker.plan_load("libA.so") == 3
    # A name first seen as a NEEDED entry is known as well.
    assert world.linker.plan_load("libB.so") == 2
    assert world.state() == before


def test_different_name_for_same_file_loads_a_second_copy(world: World) -> None:
    world.lib("libx.so", wat(MEMORY_BASE), mem=(64, 2))
    first = world.dlopen("libx.so")
    second = world.dlopen("/lib/libx.so")
    assert first.handles == [2] and second.handles == [3]
    assert first.modules[0].host_path == second.modules[0].host_path
    assert first.modules[0].memory_base != second.modules[0].memory_base
    assert world.linker.by_name == {"libx.so": 2, "/lib/libx.so": 3}


def test_needed_cycle_loads_each_once(world: World) -> None:
    world.lib("libA.so", wat(func("af")), needed=["libB.so"])
    world.lib("libB.so", wat(func("bf")), needed=["libA.so"])
    plan = world.dlopen("libA.so")
    assert [(m.handle, m.name) for m in plan.modules] == [(2, "libB.so"), (3, "libA.so")]
    assert world.linker.by_name == {"libB.so": 2, "libA.so": 3}


def test_needed_chain_deeper_than_the_limit_fails_cleanly(world: World) -> None:
    depth = MAX_NEEDED_DEPTH + 1
    for i in range(depth):
        world.lib(f"lib{i}.so", wat(), needed=[f"lib{i + 1}.so"] if i + 1 < depth else None)
    before = world.state()
    with pytest.raises(LinkError, match=rf"lib{MAX_NEEDED_DEPTH}.so \(needed by "
                                        rf"lib{MAX_NEEDED_DEPTH - 1}.so\): a chain of NEEDED "
                                        rf"libraries deeper than {MAX_NEEDED_DEPTH}"):
        world.linker.plan_load("lib0.so")
    assert world.state() == before
    world.dlopen(f"lib{depth - MAX_NEEDED_DEPTH}.so")  # exactly the limit: loads


def test_self_needed_loads_once(world: World) -> None:
    world.lib("libself.so", wat(), needed=["libself.so"])
    assert world.dlopen("libself.so").handles == [2]


def test_plan_load_changes_nothing_until_commit(world: World) -> None:
    world.lib("libA.so", wat(func("af")), table=(1, 0), needed=["libB.so"])
    world.lib("libB.so", wat(), mem=(10, 0))
    names_before = dict(world.linker.by_name)
    pending = world.plan("libA.so")
    assert world.linker.by_name == names_before and list(world.linker.modules) == [1]
    assert world.linker.next_handle == 2
    world.linker.commit(pending)
    assert world.linker.by_name == {"libB.so": 2, "libA.so": 3}
    assert list(world.linker.modules) == [1, 2, 3]
    assert world.linker.modules[3].guest_path == "/lib/libA.so"
    assert world.linker.next_handle == 4
    assert world.linker.table_length == pending.plan.table_length
    assert world.linker.log[-1] is pending.plan


# ---------------------------------------------------------------------- RUNPATH, LD_LIBRARY_PATH
def test_runpath_is_per_module_and_origin_is_its_directory(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.add("/app/deps/libr.so", side_module(wat(), needed=["libs.so"],
                                           runtime_path=["${ORIGIN}/sub"]))
    w.add("/app/deps/sub/libs.so", side_module(wat()))
    w.add("/app/deps/libonly.so", side_module(wat()))
    w.add("/app/deps/sub/libt.so", side_module(wat()))
    plan = w.start(main_module(needed=["libr.so"], runtime_path=["$ORIGIN/deps"]))
    assert [m.guest_path for m in plan.modules[1:]] == ["/app/deps/sub/libs.so",
                                                        "/app/deps/libr.so"]
    # dlopen never uses the caller's RUNPATH.
    with pytest.raises(ModuleNotFound, match=re.escape("libonly.so")):
        w.linker.plan_load("libonly.so")
    # RUNPATH is not inherited: libu.so (next to libr.so) has none, so libt.so is not found.
    w.add("/app/deps/sub/libu.so", side_module(wat(), needed=["libt.so"]))
    with pytest.raises(ModuleNotFound, match=r"'libt.so' \(needed by ./deps/sub/libu.so\)"):
        w.linker.plan_load("./deps/sub/libu.so")


def test_origin_of_main_at_guest_root(tmp_path: Path) -> None:
    app, deps = tmp_path / "app", tmp_path / "deps"
    app.mkdir()
    deps.mkdir()
    (deps / "libr.so").write_bytes(side_module(wat()))
    fs = GuestFilesystem.from_specs([f"{app}::/", f"{deps}::/deps"])
    linker = LinkerState(fs, read_located, FakeMemory().grow)
    main = parse_module(main_module(needed=["libr.so"], runtime_path=["$ORIGIN/deps"]))
    linker.layout_main(main, 1)
    pending = linker.plan_main(main, "/main.wasm", str(app / "main.wasm"))
    assert pending.plan.modules[1].guest_path == "/deps/libr.so"


def test_dlopen_ld_library_path_applies_to_the_whole_tree(world: World) -> None:
    world.add("/opt/l/libl.so", side_module(wat(), needed=["libl2.so"]))
    world.add("/opt/l/libl2.so", side_module(wat()))
    with pytest.raises(ModuleNotFound):
        world.linker.plan_load("libl.so")
    plan = world.dlopen("libl.so", ld_library_path=["/opt/l"])
    assert [m.guest_path for m in plan.modules] == ["/opt/l/libl2.so", "/opt/l/libl.so"]


def test_missing_needed_of_main_fails_and_forgets_main(tmp_path: Path) -> None:
    w = World(tmp_path)
    with pytest.raises(ModuleNotFound, match=r"'libgone.so' \(needed by /app/main.wasm\)"):
        w.plan_main(main_module(needed=["libgone.so"]))
    assert w.linker.modules == {} and w.linker.by_name == {}


# ---------------------------------------------------------------------- memory (§2.4, §9.4)
def test_main_layout_and_well_known_globals(tmp_path: Path) -> None:
    w = World(tmp_path)
    plan = w.start()
    assert w.memory.pages == MAIN_PAGES
    assert (w.linker.stack_low, w.linker.stack_high) == (STACK_LOW, STACK_HIGH)
    assert w.linker.heap_base == STACK_HIGH
    assert (plan.stack_low, plan.stack_high) == (STACK_LOW, STACK_HIGH)
    main = plan.modules[0]
    assert (main.handle, main.memory_base, main.table_base) == (1, MAIN_BASE, 1)
    b = bindings(plan, 1)
    assert b["env", "__memory_base"] == Binding("env", "__memory_base", B_CONST, MAIN_BASE)
    assert b["env", "__table_base"].value == 1
    assert b["GOT.mem", "__heap_base"].value == STACK_HIGH
    assert b["GOT.mem", "__stack_low"].value == STACK_LOW
    assert b["GOT.mem", "__stack_high"].value == STACK_HIGH
    assert b["env", "memory"].how == B_MEMORY
    assert b["env", "__indirect_function_table"].how == B_TABLE
    assert b["env", "__stack_pointer"].how == B_STACK_POINTER
    # Slot 0 null, main's two slots at 1 and 2.
    assert w.linker.table_length == plan.table_length == 3


def test_main_memory_alignment_zero_gives_base_one(tmp_path: Path) -> None:
    w = World(tmp_path)
    plan = w.start(side_module(wat('(import "env" "memory" (memory 1))', MEMORY_BASE),
                               mem=(10, 0)))
    assert plan.modules[0].memory_base == 1
    assert bindings(plan, 1)["env", "__memory_base"].value == 1
    assert w.linker.stack_low == 1024


def test_main_with_dylink_that_defines_its_memory_is_refused(tmp_path: Path) -> None:
    """The seed's MissingMainModuleImport: one memory, imported by main and every library."""
    w = World(tmp_path)
    with pytest.raises(LinkError, match=r"must import its memory as env\.memory"):
        w.start(side_module(wat(MEMORY_BASE, "(memory 1)"), mem=(10, 0)))


def test_side_memory_bases_follow_the_allocator(world: World) -> None:
    assert world.memory.pages == MAIN_PAGES
    world.lib("libm1.so", wat(MEMORY_BASE), mem=(100, 2))
    world.lib("libm0.so", wat(MEMORY_BASE), mem=(0, 0))
    world.lib("libm2.so", wat(MEMORY_BASE), mem=(64, 5))
    world.lib("libm3.so", wat(MEMORY_BASE), mem=(70000, 3))
    world.lib("libtop.so", wat(MEMORY_BASE), mem=(8, 3),
              needed=["libm1.so", "libm0.so", "libm2.so", "libm3.so"])
    plan = world.dlopen("libtop.so")
    first = MAIN_PAGES * PAGE
    expected = {
        "libm1.so": first,  # grows one page
        "libm0.so": 0,  # memory_size 0: base 0, nothing allocated
        "libm2.so": first + 128,  # 100 rounded up to 32
        "libm3.so": first + PAGE,  # does not fit: grows two pages
        "libtop.so": first + PAGE + 70000,  # best fit: the smaller free tail
    }
    for m in plan.modules:
        assert m.memory_base == expected[m.name], m.name
        assert bindings(plan, m.handle)["env", "__memory_base"].value == expected[m.name]
    assert world.memory.pages == MAIN_PAGES + 3


def test_memory_exhaustion_fails_and_leaves_state_unchanged(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.start()
    w.memory.maximum = MAIN_PAGES + 1
    w.lib("libok.so", wat(), mem=(100, 0))
    w.lib("libhuge.so", wat(), mem=(3 * PAGE, 0), needed=["libok.so"])
    with pytest.raises(LinkError, match="cannot grow linear memory by 3 pages"):
        w.linker.plan_load("libhuge.so")
    assert w.linker.by_name == {} and w.linker.next_handle == 2
    assert list(w.linker.modules) == [1] and w.linker.table_length == 3
    # The page grown for libok before the failure is free space again, not lost.
    assert w.memory.pages == MAIN_PAGES + 1
    assert w.dlopen("libok.so").modules[0].memory_base == MAIN_PAGES * PAGE
    assert w.memory.pages == MAIN_PAGES + 1


# ---------------------------------------------------------------------- table (§2.6, §9.5)
def test_side_table_regions_are_aligned(world: World) -> None:
    world.lib("liba.so", wat(TABLE_BASE), table=(3, 3))
    world.lib("libz.so", wat(TABLE_BASE), table=(0, 4))
    world.lib("libb.so", wat(TABLE_BASE), table=(1, 2), needed=["liba.so", "libz.so"])
    plan = world.dlopen("libb.so")
    bases = {m.name: (m.table_base, m.table_size) for m in plan.modules}
    # Main ends at 3: liba aligned to 8, libz has no region (base 0), libb aligned to 4.
    assert bases == {"liba.so": (8, 3), "libz.so": (0, 0), "libb.so": (12, 1)}
    for m in plan.modules:
        assert bindings(plan, m.handle)["env", "__table_base"].value == m.table_base
    assert plan.table_length == world.linker.table_length == 13


def test_got_func_slots_resolvable_first_then_the_rest(world: World) -> None:
    # libB (2) is instantiated before libA (3): it can see main but not libA or itself.
    world.lib("libB.so", wat(got_func("mf"), got_func("af"), got_func("bf"), func("bf")),
              table=(2, 0))
    world.lib("libA.so", wat(got_func("bf"), got_func("mf"), got_func("af"), func("af")),
              table=(1, 0), needed=["libB.so"])
    plan = world.dlopen("libA.so")
    assert [(m.handle, m.table_base) for m in plan.modules] == [(2, 3), (3, 6)]
    assert plan.slots == [
        SlotAssignment(5, 1, "mf"),  # libB's resolvable one, right after its region
        SlotAssignment(7, 2, "bf"),  # libA's region is 6; then its resolvable ones
        SlotAssignment(8, 1, "mf"),
        SlotAssignment(9, 3, "af"),  # after the batch, in load and import order
        SlotAssignment(10, 2, "bf"),
        SlotAssignment(11, 3, "af"),
    ]
    b, a = bindings(plan, 2), bindings(plan, 3)
    assert [b["GOT.func", s].value for s in ("mf", "af", "bf")] == [5, 9, 10]
    assert [a["GOT.func", s].value for s in ("bf", "mf", "af")] == [7, 8, 11]
    assert all(x.how == B_CONST for x in [*a.values(), *b.values()])
    assert plan.table_length == world.linker.table_length == 12
    # Later slots come after these.
    address, assignment = world.linker.dlsym(2, "bf")
    assert address == SymbolAddress("function", 12, 2)
    assert assignment == SlotAssignment(12, 2, "bf", dlsym_handle=2)


def test_main_got_func_is_filled_after_the_batch(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.lib("libs.so", wat(got_func("mf"), func("sf")), table=(1, 0))
    plan = w.start(main_module(needed=["libs.so"], extra_imports=(got_func("sf"), got_func("mf"))))
    # libs sees main: its slot comes at once; main's own imports are pending until the end.
    assert plan.slots == [SlotAssignment(4, 1, "mf"), SlotAssignment(5, 2, "sf"),
                          SlotAssignment(6, 1, "mf")]
    assert bindings(plan, 1)["GOT.func", "sf"].value == 5


# ---------------------------------------------------------------------- symbols (§2.6, §9.6)
def test_got_mem_is_export_value_plus_exporter_base(world: World) -> None:
    world.lib("libdata.so", wat(data("adata", 40), data("dup", 12), data("hid", 20)),
              mem=(64, 2), export_flags={"hid": dl.VISIBILITY_HIDDEN})
    world.lib("libdata2.so", wat(data("dup", 24), data("shared", 1)), mem=(64, 2))
    world.lib("libuser.so",
              wat(got_mem("adata"), got_mem("mdata"), got_mem("udata"), got_mem("dup"),
                  got_mem("shared"), got_mem("hid"), data("udata", 4)),
              mem=(16, 2), needed=["libdata.so", "libdata2.so"])
    plan = world.dlopen("libuser.so")
    base = {m.name: m.memory_base for m in plan.modules}
    assert all(base.values())
    got = {name_: b.value for (_, name_), b in bindings(plan, 4).items()}
    assert got == {
        "adata": 40 + base["libdata.so"],
        "mdata": 8 + MAIN_BASE,
        "udata": 4 + base["libuser.so"],  # its own export
        "dup": 12 + base["libdata.so"],  # the lower handle wins
        "shared": 4 + MAIN_BASE,  # main first
        "hid": 20 + base["libdata.so"],  # visibility is not checked at import time
    }


def test_got_mem_of_a_tls_export(world: World) -> None:
    tls_base = '(global (export "__tls_base") (mut i32) (i32.const 0))'
    world.lib("libtls.so", wat(data("tvar", 8), tls_base), mem=(64, 2),
              export_flags={"tvar": dl.TLS})
    world.lib("libtlsuser.so", wat(got_mem("tvar")), needed=["libtls.so"])
    plan = world.dlopen("libtlsuser.so")
    assert bindings(plan, 3)["GOT.mem", "tvar"] == Binding("GOT.mem", "tvar", B_TLS, 8, 2)
    world.lib("libnotb.so", wat(data("tv2", 8)), export_flags={"tv2": dl.TLS})
    world.lib("libtlsuser2.so", wat(got_mem("tv2")), needed=["libnotb.so"])
    with pytest.raises(LinkError, match=r"tv2 is a TLS symbol of libnotb\.so.*__tls_base"):
        world.linker.plan_load("libtlsuser2.so")


def test_env_function_exact_type_binds_to_exporter(world: World) -> None:
    world.lib("libexp.so", wat(func("ef"), func("eg", "(param i32)", "")))
    world.lib("libimp.so", wat(env_func("ef"), env_func("mf"), env_func("nothere")),
              needed=["libexp.so"])
    plan = world.dlopen("libimp.so")
    b = bindings(plan, 3)
    assert b["env", "ef"] == Binding("env", "ef", B_FUNC, source=2, export="ef")
    assert b["env", "mf"] == Binding("env", "mf", B_FUNC, source=1, export="mf")
    assert b["env", "nothere"] == Binding("env", "nothere", B_STUB)


def test_env_function_type_mismatch_names_both_modules(world: World) -> None:
    world.lib("libexp.so", wat(func("eg", "(param i32)", "")))
    world.lib("libbad.so", wat(env_func("eg", "(param i64)")), needed=["libexp.so"])
    before = world.state()
    with pytest.raises(LinkError) as info:
        world.linker.plan_load("libbad.so")
    message = str(info.value)
    assert "libbad.so" in message and "libexp.so" in message and "eg" in message
    assert "(i64) -> ()" in message and "(i32) -> ()" in message
    assert world.state() == before


def test_env_import_that_is_not_a_function_fails(world: World) -> None:
    world.lib("libg.so", wat('(import "env" "someglobal" (global i32))'))
    expected = re.escape("libg.so: import env.someglobal must be a function")
    with pytest.raises(LinkError, match=expected):
        world.linker.plan_load("libg.so")


def test_missing_strong_got_fails_and_leaves_state_unchanged(world: World) -> None:
    world.lib("libok.so", wat(func("okf")), mem=(100, 2), table=(4, 2))
    world.lib("libneedsx.so", wat(got_mem("nope")), mem=(10, 0), needed=["libok.so"])
    world.lib("libneedsf.so", wat(got_func("nofunc")), needed=["libok.so"])
    world.lib("libkind.so", wat(got_mem("mf")), needed=["libok.so"])
    before = world.state()
    with pytest.raises(LinkError, match=re.escape("libneedsx.so: undefined data symbol nope")):
        world.linker.plan_load("libneedsx.so")
    assert world.state() == before
    with pytest.raises(LinkError, match=re.escape("libneedsf.so: undefined function nofunc")):
        world.linker.plan_load("libneedsf.so")
    with pytest.raises(LinkError, match=r"undefined data symbol mf \(/app/main.wasm exports "
                                        "it as a func\\)"):
        world.linker.plan_load("libkind.so")
    assert world.state() == before
    # Nothing was half-registered: the dependency loads normally afterwards.
    assert world.dlopen("libok.so").handles == [2]


def test_missing_weak_got_is_zero(world: World) -> None:
    world.lib("libweak.so", wat(got_mem("wx"), got_func("wf"), got_mem("envweak")),
              import_flags={("GOT.mem", "wx"): dl.BINDING_WEAK,
                            ("GOT.func", "wf"): dl.BINDING_WEAK,
                            ("env", "envweak"): dl.BINDING_WEAK})
    plan = world.dlopen("libweak.so")
    b = bindings(plan, 2)
    assert [(x.how, x.value) for x in b.values()] == [(B_CONST, 0)] * 3
    assert plan.slots == []


def test_unknown_runtime_import_fails_naming_it(world: World) -> None:
    world.lib("libwasi.so", wat(
        '(import "wasi_snapshot_preview1" "fd_write" '
        "(func (param i32 i32 i32 i32) (result i32)))"))
    plan = world.dlopen("libwasi.so")
    assert bindings(plan, 2)["wasi_snapshot_preview1", "fd_write"].how == B_HOST
    world.lib("libbogus.so", wat(
        '(import "wasi_snapshot_preview1" "bogus_call" (func (param i32) (result i32)))'))
    expected = re.escape("libbogus.so: imports wasi_snapshot_preview1.bogus_call")
    with pytest.raises(LinkError, match=expected):
        world.linker.plan_load("libbogus.so")
    world.lib("libwrong.so", wat('(import "wasix_32v1" "dlopen" (func (param i32)))'))
    with pytest.raises(LinkError, match=re.escape("libwrong.so: imports wasix_32v1.dlopen as")):
        world.linker.plan_load("libwrong.so")


# ---------------------------------------------------------------------- bad files
def test_module_without_dylink_is_not_a_dynamic_library(world: World) -> None:
    world.add("/lib/libplain.so", bytes(wasmtime.wat2wasm(wat(func("pf")))))
    with pytest.raises(LinkError, match=r"libplain.so \(/lib/libplain.so\) is not a dynamic "
                                        "library"):
        world.linker.plan_load("libplain.so")


def test_corrupt_file_names_guest_path_not_host_path(world: World, tmp_path: Path) -> None:
    world.add("/lib/libbad.so", HEADER + b"\x01\x05\x01")
    before = world.state()
    with pytest.raises(LinkError) as info:
        world.linker.plan_load("libbad.so")
    message = str(info.value)
    assert "/lib/libbad.so" in message and "malformed wasm" in message
    assert str(tmp_path) not in message
    assert world.state() == before


# ---------------------------------------------------------------------- dlsym (§5)
@pytest.fixture
def loaded(world: World) -> World:
    tls_base = '(global (export "__tls_base") (mut i32) (i32.const 0))'
    world.lib("libsym.so", wat(func("sf"), func("mf"), data("shared", 8), data("sdata", 12),
                               func("secret"), data("tvar", 4), tls_base),
              mem=(64, 2), table=(1, 0),
              export_flags={"secret": dl.VISIBILITY_HIDDEN, "tvar": dl.TLS})
    world.dlopen("libsym.so")
    return world


def test_dlsym_data_global_search_is_main_first(loaded: World) -> None:
    linker = loaded.linker
    side_base = linker.modules[2].memory_base
    assert linker.dlsym(0, "shared") == (SymbolAddress("data", 4 + MAIN_BASE, 1), None)
    assert linker.dlsym(2, "shared") == (SymbolAddress("data", 8 + side_base, 2), None)
    assert linker.dlsym(0, "sdata") == (SymbolAddress("data", 12 + side_base, 2), None)
    with pytest.raises(LinkError, match=re.escape("'sdata' not found in /app/main.wasm")):
        linker.dlsym(1, "sdata")


def test_dlsym_function_gets_a_fresh_cached_slot(loaded: World) -> None:
    linker = loaded.linker
    first = linker.table_length
    log_length = len(linker.log)
    address, assignment = linker.dlsym(2, "sf")
    assert address == SymbolAddress("function", first, 2)
    # It says which dlsym made it, so that every group can answer that dlsym again itself.
    assert assignment == SlotAssignment(first, 2, "sf", dlsym_handle=2)
    assert linker.table_length == first + 1 and linker.log[-1] == assignment
    assert linker.dlsym(2, "sf") == (address, None)
    assert linker.table_length == first + 1 and len(linker.log) == log_length + 1
    # The global search is another cache entry; main's mf wins there.
    address, assignment = linker.dlsym(0, "mf")
    assert address == SymbolAddress("function", first + 1, 1)
    assert assignment == SlotAssignment(first + 1, 1, "mf", dlsym_handle=0)


def test_plans_carry_what_dlsym_sees_of_each_module(loaded: World) -> None:
    """ModulePlan.exports: groups answer dlsym of data, of TLS and of a function that has a
    slot themselves, so every export dlsym can see is there, resolved as the coordinator does."""
    linker = loaded.linker
    (plan,) = [m for p in linker.log if isinstance(p, LoadPlan) for m in p.modules
               if m.handle == 2]
    assert "secret" not in plan.exports  # hidden: dlsym cannot see it
    assert plan.exports["sf"] == ["func", 0]
    for symbol in ("shared", "sdata", "tvar"):
        address, _ = linker.dlsym(2, symbol)
        assert plan.exports[symbol] == [address.kind, address.value]
    assert plan.exports["tvar"][0] == "tls"


def test_dlsym_hidden_export_is_invisible(loaded: World) -> None:
    for handle in (0, 2):
        with pytest.raises(LinkError, match="'secret' not found"):
            loaded.linker.dlsym(handle, "secret")


def test_dlsym_tls_export_is_an_offset(loaded: World) -> None:
    assert loaded.linker.dlsym(2, "tvar") == (SymbolAddress("tls", 4, 2), None)


def test_dlsym_invalid_handle(loaded: World) -> None:
    with pytest.raises(LinkError, match="invalid handle 99"):
        loaded.linker.dlsym(99, "sf")


# ---------------------------------------------------------------------- abort, stubs
def test_abort_restores_the_allocator(world: World) -> None:
    world.lib("libA.so", wat(MEMORY_BASE), mem=(100, 2), table=(5, 0), needed=["libB.so"])
    world.lib("libB.so", wat(MEMORY_BASE), mem=(200, 3))
    world.lib("libC.so", wat(MEMORY_BASE), mem=(50, 2))
    world.dlopen("libC.so")  # leaves a free tail on its page
    names, handle = dict(world.linker.by_name), world.linker.next_handle
    regions, _ = world.linker.allocator.snapshot()
    pending = world.plan("libA.so")
    assert world.linker.allocator.snapshot()[0] != regions
    pages = world.memory.pages
    world.linker.abort(pending)
    # The free regions are back; memory grown by the failed attempt (none here: both fit
    # in libC's page) would stay as extra free space.
    assert world.linker.allocator.snapshot()[0] == regions
    assert world.linker.by_name == names and world.linker.next_handle == handle
    assert list(world.linker.modules) == [1, 2]
    # The table never shrinks: the next attempt starts after the failed one.
    assert world.linker.table_length == pending.plan.table_length
    again = world.dlopen("libA.so")
    assert again.handles == [3, 4]
    assert [m.memory_base for m in again.modules] == [m.memory_base
                                                      for m in pending.plan.modules]
    assert again.modules[1].table_base == pending.plan.table_length
    assert world.memory.pages == pages


def test_abort_keeps_grown_memory_for_the_retry(world: World) -> None:
    world.lib("libbig.so", wat(MEMORY_BASE), mem=(2 * PAGE, 0))
    pending = world.plan("libbig.so")
    assert world.memory.pages == MAIN_PAGES + 2
    world.linker.abort(pending)
    again = world.dlopen("libbig.so")
    assert again.modules[0].memory_base == pending.plan.modules[0].memory_base
    assert world.memory.pages == MAIN_PAGES + 2


def test_abort_of_main_forgets_main(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.lib("libs.so", wat(), mem=(10, 0))
    pending = w.plan_main(main_module(needed=["libs.so"]))
    w.linker.abort(pending)
    assert w.linker.modules == {} and w.linker.by_name == {}
    # Nothing allocated before: the one page grown for libs.so is all free again.
    assert w.linker.allocator.snapshot()[0] == [(MAIN_PAGES * PAGE, PAGE)]


def test_resolve_stub_binds_to_a_later_exporter(world: World) -> None:
    world.lib("libcaller.so", wat(env_func("later"), env_func("gone")))
    plan = world.dlopen("libcaller.so")
    assert bindings(plan, 2)["env", "later"].how == B_STUB
    world.lib("libprovider.so", wat(func("later")))
    world.dlopen("libprovider.so")
    linker = world.linker
    assert linker.resolve_stub(2, "later", I32_I32) == (3, "later")
    assert linker.stub_bindings == {(2, "later"): (3, "later")}
    assert linker.resolve_stub(2, "later", I32_I32) == (3, "later")
    expected = re.escape("unresolved function gone (imported by libcaller.so)")
    with pytest.raises(LinkError, match=expected):
        linker.resolve_stub(2, "gone", I32_I32)
    with pytest.raises(LinkError, match=re.escape("libprovider.so exports it as")):
        linker.resolve_stub(1, "later", FuncType(("i64",), ()))
    assert (2, "gone") not in linker.stub_bindings


# ---------------------------------------------------------------------- wire format
def test_load_plan_round_trips_through_msgpack(world: World) -> None:
    tls_base = '(global (export "__tls_base") (mut i32) (i32.const 0))'
    world.lib("libw.so", wat(MEMORY_BASE, TABLE_BASE, got_func("mf"), got_func("wf"),
                             got_mem("mdata"), got_mem("tvar"), env_func("mf"),
                             env_func("missing"), func("wf"), data("tvar", 4), tls_base),
              mem=(32, 2), table=(2, 1), export_flags={"tvar": dl.TLS})
    plan = world.dlopen("libw.so")
    kinds = {b.how for m in plan.modules for b in m.bindings}
    assert kinds == {B_CONST, B_FUNC, B_STUB, B_TLS}
    wire = msgpack.unpackb(msgpack.packb(to_wire(plan)))
    assert from_wire(wire) == plan
    main_plan = world.linker.log[0]
    assert isinstance(main_plan, LoadPlan)
    assert from_wire(msgpack.unpackb(msgpack.packb(to_wire(main_plan)))) == main_plan
    _, assignment = world.linker.dlsym(2, "wf")
    assert assignment is not None
    assert from_wire(msgpack.unpackb(msgpack.packb(to_wire(assignment)))) == assignment
    provisional = LoadPlan(plan.modules, plan.table_length, plan.slots, plan.stack_low,
                           plan.stack_high, provisional=True)
    for op in (provisional, LoadUndo((2, 3))):
        assert from_wire(msgpack.unpackb(msgpack.packb(to_wire(op)))) == op


def test_dlsym_during_a_pending_load_gets_a_slot_after_its_table(loaded: World) -> None:
    """A constructor of a library being loaded calls dlsym: the fresh slot must not fall in
    the table region the pending plan gave the new module."""
    loaded.lib("libctor.so", wat(func("cf")), table=(4, 0))
    pending = loaded.plan("libctor.so")
    (module_plan,) = pending.plan.modules
    address, assignment = loaded.linker.dlsym(0, "mf")
    assert assignment is not None
    assert address.value >= module_plan.table_base + module_plan.table_size
    assert address.value >= pending.plan.table_length
    loaded.linker.commit(pending)
    assert loaded.linker.table_length == address.value + 1
