"""One instance group: a wasm thread's instances of the main module and every side module.

The group owns a wasmtime Store, its own function table (kept identical to every other
group's by applying the same plans), its stack pointer and TLS bases. It applies `LoadPlan`s
and `SlotAssignment`s decided by the coordinator, and reaches the coordinator only through its
`LinkService` (dlopen, dlsym, stub resolution).

Guarantees of `apply_load(plan, initialise=True)`: on return, every module of the plan is
instantiated in load order, GOT.func slots are filled, and data relocations, TLS relocations
and constructors ran once, in load order. On failure it raises `LinkError` and the new
modules' data regions are zeroed so the coordinator can place other data there.
"""

from __future__ import annotations

import os
import queue
import struct
import threading
import time
from collections.abc import Callable, Container
from typing import Any, Protocol

import wasmtime

from wasmgroup.shared.closure import CLOSURE_EXPORT

# Re-exported where they used to be defined (shared/engine.py keeps them free of wasmtime).
from wasmgroup.shared.engine import ENGINE_SETTINGS as ENGINE_SETTINGS
from wasmgroup.shared.engine import make_engine_config as make_engine_config
from wasmgroup.shared.errors import LinkError
from wasmgroup.shared.fdtable import GenerationPage
from wasmgroup.shared.futex import (
    SPIN_NS,
    Spinner,
    WakeWord,
    futex_waitv_works,
    futex_wake,
)
from wasmgroup.shared.hostabi import HELPER_MODULE, abi_names, abi_signature
from wasmgroup.shared.memory import SharedRegion
from wasmgroup.shared.plan import (
    B_CONST,
    B_FUNC,
    B_HOST,
    B_MEMORY,
    B_STACK_POINTER,
    B_STUB,
    B_TABLE,
    B_TAG,
    B_TLS,
    X_DATA,
    X_TLS,
    Binding,
    ClosurePlan,
    GroupState,
    LoadPlan,
    LoadUndo,
    ModulePlan,
    SlotAssignment,
    SymbolAddress,
    TableGrowth,
)
from wasmgroup.shared.records import prepare, record
from wasmgroup.shared.wasm import FuncType
from wasmgroup.worker import epoch, wasmtime_compat
from wasmgroup.worker.host import native, poll
from wasmgroup.worker.host.clocks import CLOCK_FUNCTIONS, make_clock_functions
from wasmgroup.worker.host.descriptors import DescriptorCache
from wasmgroup.worker.host.memory import make_memory_functions
from wasmgroup.worker.host.poll import make_poll_oneoff
from wasmgroup.worker.host.signals import SignalState
from wasmgroup.worker.host.wasi import WASIX_DESCRIPTOR_CALLS, make_wasi_functions
from wasmgroup.worker.host.wasix import (
    GuestExit,
    ProgramStopping,
    ThreadExit,
    make_unimplemented,
    make_wasi_threads_functions,
    make_wasix_functions,
)
from wasmgroup.worker.memview import GuestMemory
from wasmgroup.worker.perturb import Perturbation
from wasmgroup.worker.wasmtime_compat import (
    call_nullary,
    const_global,
    host_func,
    import_type,
    instance_export,
    module_import_count,
    module_imports,
    new_instance,
    table_grow,
    table_set,
)

wasmtime_compat.apply()

MAIN_HANDLE = 1
# What a wasm call can raise besides the guest exiting: a trap, or an engine error.
WASM_ERRORS = (wasmtime.Trap, wasmtime.WasmtimeError)
WASI_MODULES = ("wasi_snapshot_preview1", "wasi_unstable")


class LinkService(Protocol):
    """What a group asks of the coordinator. Each call names the calling group."""

    def dlopen(self, group: InstanceGroup, name: str, ld_library_path: list[str] | None
               ) -> int: ...
    def dlsym(self, group: InstanceGroup, handle: int, name: str) -> SymbolAddress: ...
    def is_side_module(self, handle: int) -> bool: ...
    def resolve_stub(self, group: InstanceGroup, importer: int, name: str,
                     func_type: FuncType) -> tuple[int, str]: ...
    def spawn_thread(self, group: InstanceGroup, start_arg: int) -> int: ...
    def grow_memory(self, group: InstanceGroup, pages: int) -> int: ...
    def tls_arena(self, group: InstanceGroup, minimum: int) -> tuple[int, int]: ...
    def closure_allocate(self, group: InstanceGroup) -> int: ...
    def closure_prepare(self, group: InstanceGroup, slot: int, backing: int, env: int,
                        signature: FuncType) -> None: ...
    def closure_free(self, group: InstanceGroup, slot: int) -> None: ...
    def stopping(self) -> bool: ...
    def cwd(self) -> str: ...
    def change_directory(self, path: str) -> bool: ...


class CompiledModule:
    """A compiled module as a worker keeps it: the module, and what instantiating it needs
    to know of its imports (worked out once per worker, not once per group and load)."""

    def __init__(self, module: wasmtime.Module) -> None:
        self.module = module
        self._imports: list[tuple[str, str, Any, bool]] | None = None
        self._import_count: int | None = None

    def helpers(self, start: int, made: Container[tuple[str, str]]
                ) -> list[tuple[str, str, Any, bool]]:
        """The imports from `start` on (the load-time rewrite's helpers), without the types
        of those `made` already (a group makes each helper once)."""
        if self._imports is not None:
            return self._imports[start:]
        return module_imports(self.module, start, made)

    @property
    def import_count(self) -> int:
        if self._import_count is None:
            self._import_count = (len(self._imports) if self._imports is not None
                                  else module_import_count(self.module))
        return self._import_count

    @property
    def imports(self) -> list[tuple[str, str, Any, bool]]:
        """(module, name, type, whether a global import is an i64) per import, in order."""
        if self._imports is None:
            self._imports = module_imports(self.module)
        return self._imports


class DescribeRequest:
    """Asks a group for its `GroupState` (for `--verify-groups`), at its own safe point."""


class PurgeDescriptors:
    """Entries of the descriptor table changed: close the cached copies of those entries
    (fire and forget: no one waits for it)."""


@record(frozen=False)
class PendingOperation:
    """A link operation another group instigated, to apply at this group's next safe point."""

    op: (LoadPlan | SlotAssignment | TableGrowth | ClosurePlan | LoadUndo | DescribeRequest
         | PurgeDescriptors)
    initialise: bool = False  # run data relocations and constructors (the instigator only)
    on_done: Callable[[PendingOperation], None] | None = None
    error: str | None = None
    seconds: float = 0.0  # time this group spent applying it
    state: GroupState | None = None  # the answer to a DescribeRequest

    def finish(self) -> None:
        if self.on_done is not None:
            self.on_done(self)


_U32_AT = struct.Struct("<I").unpack_from
SPINNER = Spinner()  # one per process: its view of the machine's load is shared
FUTEX_SLICE_NS = 20_000_000  # a futex wait re-checks pending work this often at least
SLEEP_SLICE = 0.05  # seconds: a sleep re-checks pending work this often even if never nudged


def _val_type(name: str) -> wasmtime.ValType:
    return {"i32": wasmtime.ValType.i32(), "i64": wasmtime.ValType.i64(),
            "f32": wasmtime.ValType.f32(), "f64": wasmtime.ValType.f64()}[name]


def _wasmtime_functype(t: FuncType) -> wasmtime.FuncType:
    return wasmtime.FuncType([_val_type(p) for p in t.params],
                             [_val_type(r) for r in t.results])


def _our_functype(t: wasmtime.FuncType) -> FuncType:
    return FuncType(tuple(wasmtime_compat.value_type_name(p) for p in t.params),
                    tuple(wasmtime_compat.value_type_name(r) for r in t.results))


def prepare_link_records() -> None:
    """Generate the constructors of the records a group makes when it applies a link
    operation (~0.1 ms each at a record's first instance: a worker forked from a process
    that ran this has them; see zygote.serve)."""
    prepare(LoadPlan, ModulePlan, Binding, SlotAssignment, TableGrowth, LoadUndo, ClosurePlan,
            SymbolAddress, PendingOperation)


class InstanceGroup:
    def __init__(self, engine: wasmtime.Engine, load_module: Callable[[str], CompiledModule],
                 service: LinkService, descriptors: DescriptorCache,
                 args: list[str], env: list[tuple[str, str]], thread_id: int = 1) -> None:
        self.engine = engine
        self.store = wasmtime.Store(engine)
        self._load_module = load_module
        self.service = service
        self.thread_id = thread_id
        self.descriptors = descriptors  # the program's descriptor table, as cached here
        self.args = args
        self.env = env
        self._wasi = make_wasi_functions(self)
        self._wasix = make_wasix_functions(self)
        self._wasi_threads = make_wasi_threads_functions(self)
        self._memory_helpers = make_memory_functions(self)
        self._clocks = make_clock_functions(self)
        self.memory_object: wasmtime.Memory | wasmtime.SharedMemory | None = None
        self.region: SharedRegion | None = None
        self.program_id = os.getpid()  # what proc_id (getpid) returns: the coordinator's pid
        self.signals = SignalState()  # raise/abort/kill(getpid()) (host/signals.py)
        self._tls_arena = [0, 0]  # [next free byte, end] of this group's TLS arena
        self._memory: GuestMemory | None = None
        self.table: wasmtime.Table | None = None
        self.stack_pointer: wasmtime.Global | None = None
        self._tags: dict[str, wasmtime.Tag] = {}
        self._host_funcs: dict[tuple[str, str], wasmtime.Func] = {}
        self.instances: dict[int, wasmtime.Instance] = {}
        self._exports: dict[tuple[int, str], Any] = {}  # (handle, name) -> export, as found
        self._plans: dict[int, ModulePlan] = {}
        # The committed link state as far as this group has applied it, for answering
        # read-only queries without a round trip: handles in order, loaded names, and every
        # dlsym answer known (dlsym'd function slots come with their SlotAssignment).
        self._linked: list[int] = []
        self._names: dict[str, int] = {}
        self._dlsym_known: dict[tuple[int, str], SymbolAddress] = {}
        self._tls_bases: dict[int, int] = {}
        # Provisional loads (applied beside their instigator): handles -> the table length
        # before, until a LoadUndo drops them or the next operation commits them.
        self._provisional: dict[tuple[int, ...], int] = {}
        self._thread_tls: dict[int, int] = {}  # side modules' TLS blocks placed by this group
        self._pending: queue.SimpleQueue[PendingOperation] = queue.SimpleQueue()
        self._servicing = False  # applying an operation that runs no constructors
        self._got: dict[str, wasmtime.Global] = {}  # non-TLS GOT globals, for verification
        self.closures: dict[int, ClosurePlan] = {}  # closure slot -> what was prepared there
        self._closure_labels: dict[int, str] = {}  # function identity -> label (describe)
        self._waiting_on: int | None = None  # host address this group's futex_wait sleeps on
        self._wake_word = WakeWord()  # what nudge() wakes it with
        self._spun: tuple[int, int] | None = None  # the futex word a spin last saw change
        self._native: native.NativeCalls | None = None  # C host functions, made on first use
        # Seeded delays at safe points and before acknowledgements (`wasmgroup stress`);
        # None, and so no work anywhere, unless the program was started with a seed.
        self.perturbation: Perturbation | None = None
        self._wakeup = threading.Event()  # set by nudge(): a sleeping thread has work to do
        self._epoch_hooks = epoch.install(self.store, self._on_tick)

    # ------------------------------------------------------------------ accessors
    @property
    def memory(self) -> GuestMemory:
        if self._memory is None:
            raise LinkError("the program's memory does not exist yet")
        return self._memory

    def export(self, handle: int, name: str) -> Any:
        value = self._exports.get((handle, name))
        if value is not None:
            return value
        if handle not in self.instances:
            raise LinkError(f"module {handle} is not instantiated in this group")
        value = self.find_export(handle, name)
        if value is None:
            plan = self._plans.get(handle)
            raise LinkError(f"{plan.name if plan else handle} does not export {name}")
        return value

    def find_export(self, handle: int, name: str) -> Any:
        """Export `name` of instantiated module `handle`, or None."""
        value = self._exports.get((handle, name))
        if value is None:
            value = instance_export(self.store, self.instances[handle], name)
            if value is not None:
                self._exports[(handle, name)] = value
        return value

    def program_table(self, shared_only: bool = False) -> wasmtime.Table | None:
        """The table the program's function pointers index: this group's (kept identical in
        every group) when the main module imports it; else, unless `shared_only`, the one
        the main module defines and exports; else None."""
        main = self._plans.get(MAIN_HANDLE)
        if main is None:
            return None
        if any(b.how == B_TABLE for b in main.bindings):
            return self.table
        if shared_only or MAIN_HANDLE not in self.instances:
            return None
        own = self.find_export(MAIN_HANDLE, "__indirect_function_table")
        return own if isinstance(own, wasmtime.Table) else None

    def tls_base(self, handle: int) -> int:
        if handle not in self._tls_bases:
            base = self.export(handle, "__tls_base")
            self._tls_bases[handle] = int(base.value(self.store))
        return self._tls_bases[handle]

    # ------------------------------------------------------------------ start-up
    def add_tls_arena(self, base: int, size: int) -> None:
        self._tls_arena = [base, base + size]

    def _allocate_tls(self, size: int, align: int) -> int:
        """A zeroed TLS block from this group's arena (a new arena when it is used up)."""
        if align & (align - 1):
            raise LinkError(f"TLS alignment {align} is not a power of two")
        size = max(size, 1)
        cursor, end = self._tls_arena
        block = -(-cursor // align) * align
        if block + size > end:
            base, length = self.service.tls_arena(self, size + align)
            self.add_tls_arena(base, length)
            return self._allocate_tls(size, align)
        self._tls_arena[0] = block + size
        self.memory.fill(block, size)  # the arena may have served a thread that ended
        return block

    def attach_memory(self, region: SharedRegion | None, shared: bool) -> None:
        """The program's memory: a wasmtime memory at the region's full size, with the
        region's shared bytes mapped over it (shared/memory.py says why the full size)."""
        self.region = region
        if region is None:
            return  # the main module defines its own memory: one group only
        pages = region.max_pages
        mem_type = wasmtime.MemoryType(wasmtime.Limits(pages, pages), shared=shared)
        memory: wasmtime.Memory | wasmtime.SharedMemory
        if shared:
            memory = wasmtime.SharedMemory(self.engine, mem_type)
        else:
            memory = wasmtime.Memory(self.store, mem_type)
        self.memory_object = memory
        self._memory = GuestMemory(memory, self.store, fixed=True)
        base, length = self._memory.extent()
        region.map_over(base, length)

    def create_table(self, table_length: int, stack_pointer: int | None) -> None:
        """This group's table (of the current length, all null until plans fill it) and,
        unless `stack_pointer` is None (a main that defines its own), the `__stack_pointer`
        global every module of the group imports, with that start value (a PIE main's
        thread: 0, then `wasi_thread_start` sets it from the thread's start argument)."""
        table_type = wasmtime.TableType(wasmtime.ValType.funcref(),
                                        wasmtime.Limits(table_length, None))
        self.table = wasmtime.Table(self.store, table_type, None)
        if stack_pointer is not None:
            self.stack_pointer = wasmtime.Global(
                self.store, wasmtime.GlobalType(wasmtime.ValType.i32(), True),
                wasmtime.Val.i32(stack_pointer))

    def replay(self, plans: list[ModulePlan], slots: list[SlotAssignment],
               closures: list[ClosurePlan]) -> None:
        """Instantiate every loaded module in handle order, initialise each side module's TLS
        for this thread, then fill every GOT.func and dlsym slot and every prepared closure:
        no data relocations and no constructors (they ran once, in the group that loaded each
        module)."""
        for module_plan in plans:
            self._plans[module_plan.handle] = module_plan
            self._grow_table_to(module_plan.table_base + module_plan.table_size)
            self._instantiate(module_plan)
            if module_plan.handle != MAIN_HANDLE:
                self._init_thread_tls(module_plan)
        for slot in slots:
            self.apply_slot(slot)
        for closure in closures:
            self.apply_closure(closure)
        self._now_linked(plans)

    def _now_linked(self, plans: list[ModulePlan]) -> None:
        for plan in plans:
            self._linked.append(plan.handle)
            if plan.handle != MAIN_HANDLE:
                self._names[plan.name] = plan.handle

    # ------------------------------------------------------------------ read-only queries
    def loaded_handle(self, name: str) -> int | None:
        """The handle of a library loaded under `name` (as dlopen requested it), if any."""
        return self._names.get(name)

    def is_linked_side_module(self, handle: int) -> bool:
        return handle != MAIN_HANDLE and handle in self._names.values()

    def known_dlsym(self, handle: int, name: str) -> SymbolAddress | None:
        """dlsym answered from this group's replica of the linker state: a data or TLS
        symbol, or a function dlsym has given a slot before; None when only the coordinator
        can answer (a function needing a new slot, an error)."""
        known = self._dlsym_known.get((handle, name))
        if known is not None:
            return known
        if handle == 0:
            order = self._linked  # main, then side modules in handle order, as the seed
        elif handle in self._linked:
            order = [handle]
        else:
            return None
        for source in order:
            entry = self._plans[source].exports.get(name)
            if entry is None:
                continue
            kind, value = entry
            if kind not in (X_DATA, X_TLS):
                return None
            known = SymbolAddress("data" if kind == X_DATA else "tls", int(value), source)
            self._dlsym_known[(handle, name)] = known
            return known
        return None

    def remember_dlsym(self, handle: int, name: str, address: SymbolAddress) -> None:
        """An answer of the coordinator's: dlsym results never change (handles and slots are
        never reused)."""
        self._dlsym_known[(handle, name)] = address

    def _init_thread_tls(self, plan: ModulePlan) -> None:
        """This thread's TLS block of a side module loaded by another group.

        wasix-libc's `__wasix_init_tls` takes the block from the guest's `aligned_alloc`, so
        running it at a safe point inside guest code (an epoch tick, or memory.grow inside
        malloc) could wait on the malloc lock this very thread holds. So where the module
        exports its TLS layout, the block comes from the coordinator's allocator instead and
        only the lock-free `__wasm_init_tls` (and `__wasm_apply_tls_relocs`) run in the guest.
        """
        if not plan.thread_tls:  # (the plan says whether it exports an initialiser)
            return
        size, align = (self.find_export(plan.handle, "__tls_size"),
                       self.find_export(plan.handle, "__tls_align"))
        init = self.find_export(plan.handle, "__wasm_init_tls")
        try:
            if isinstance(size, wasmtime.Global) and isinstance(align, wasmtime.Global) \
                    and isinstance(init, wasmtime.Func):
                block = self._allocate_tls(int(size.value(self.store)),
                                           max(int(align.value(self.store)), 4))
                init(self.store, block)
                relocs = self.find_export(plan.handle, "__wasm_apply_tls_relocs")
                if isinstance(relocs, wasmtime.Func):
                    relocs(self.store)
                self._tls_bases[plan.handle] = block
                self._thread_tls[plan.handle] = block
                return
            wasix_init = self.find_export(plan.handle, "__wasix_init_tls")
            if isinstance(wasix_init, wasmtime.Func):
                self._tls_bases[plan.handle] = int(wasix_init(self.store))
        except WASM_ERRORS as err:
            raise LinkError(f"{plan.name}: TLS initialisation failed: {_trap_text(err)}"
                            ) from None

    def rearm(self, thread_id: int) -> None:
        """Make this group, whose thread exited, ready for another thread (`wasi_thread_start`
        sets the stack pointer and the main module's TLS): each side module's TLS block is
        initialised again, in place; the signal callback is forgotten. LinkError if a block
        cannot be (this group loaded the module, or the block came from the guest's
        allocator): such a group is not reused."""
        self.thread_id = thread_id
        self.signals = SignalState()
        for handle, instance in self.instances.items():
            if handle == MAIN_HANDLE or not self._plans[handle].thread_tls:
                continue  # (no TLS initialiser: nothing to set up again)
            exports = instance.exports(self.store)
            init = exports.get("__wasm_init_tls")
            block = self._thread_tls.get(handle)
            if isinstance(init, wasmtime.Func) and block is not None:
                try:
                    init(self.store, block)
                    relocs = exports.get("__wasm_apply_tls_relocs")
                    if isinstance(relocs, wasmtime.Func):
                        relocs(self.store)
                except WASM_ERRORS as err:
                    raise LinkError(f"{self._plans[handle].name}: TLS initialisation failed: "
                                    f"{_trap_text(err)}") from None
            elif isinstance(init, wasmtime.Func) \
                    or isinstance(exports.get("__wasix_init_tls"), wasmtime.Func):
                # This group loaded it (its TLS is where the load put it), or its block
                # came from the guest's allocator.
                raise LinkError(f"{self._plans[handle].name}: its TLS block cannot be set "
                                "up again")

    def memory_pages(self) -> int:
        """memory.size as the guest sees it: the program's logical size."""
        if self.region is not None:
            return self.region.pages
        if isinstance(self.memory_object, wasmtime.Memory):
            return int(self.memory_object.size(self.store))
        return 0

    def grow_memory(self, pages: int) -> int:
        """memory.grow: the old size in pages, or -1 (the coordinator keeps the size)."""
        if self.region is None:
            return -1
        return self.service.grow_memory(self, pages)

    # ------------------------------------------------------------------ applying plans
    def apply_load(self, plan: LoadPlan, initialise: bool) -> None:
        table = self.table
        assert table is not None
        new: list[int] = []
        length_before = table.size(self.store)
        try:
            for module_plan in plan.modules:
                self._plans[module_plan.handle] = module_plan
                end = module_plan.table_base + module_plan.table_size
                self._grow_table_to(max(end, table.size(self.store)))
                self._instantiate(module_plan)
                new.append(module_plan.handle)
                if not initialise and module_plan.handle != MAIN_HANDLE:
                    self._init_thread_tls(module_plan)
            self._grow_table_to(plan.table_length)
            for slot in plan.slots:
                self.apply_slot(slot)
            if initialise:
                self._initialise(new)
            if plan.provisional and not initialise:
                self._provisional[tuple(plan.handles)] = length_before
            else:
                self._now_linked(plan.modules)
        except (GuestExit, wasmtime.ExitTrap):
            raise
        except (*WASM_ERRORS, LinkError) as err:
            self._forget(new)
            for module_plan in plan.modules:
                if module_plan.handle != MAIN_HANDLE and module_plan.memory_size:
                    self.memory.fill(module_plan.memory_base, module_plan.memory_size)
            # The grown slots stay (tables cannot shrink) but hold nothing, as in every other
            # group, which never saw this load.
            for index in range(length_before, table.size(self.store)):
                table_set(self.store, table, index, None)
            if isinstance(err, LinkError):
                raise
            raise LinkError(_trap_text(err)) from None

    def commit_loads(self) -> None:
        """Provisional loads are linked once any later operation comes: the coordinator
        sends a LoadUndo before anything else when a load fails."""
        for handles in list(self._provisional):
            del self._provisional[handles]
            self._now_linked([self._plans[h] for h in handles])

    def undo_load(self, undo: LoadUndo) -> None:
        """A provisional load's instigator failed: forget its instances and empty the slots
        it filled (the instigator's own failure path, but for memory, which the coordinator
        zeroes once every group has undone it)."""
        length_before = self._provisional.pop(undo.handles, None)
        if length_before is None:
            return
        self._forget(list(undo.handles))
        table = self.table
        assert table is not None
        for index in range(length_before, table.size(self.store)):
            table_set(self.store, table, index, None)

    def _forget(self, handles: list[int]) -> None:
        for handle in handles:
            self.instances.pop(handle, None)
            self._tls_bases.pop(handle, None)
            for export in [k for k in self._exports if k[0] == handle]:
                del self._exports[export]
            plan = self._plans.get(handle)
            if plan is not None:
                prefix = f"{plan.name}:"
                for got in [k for k in self._got if k.startswith(prefix)]:
                    del self._got[got]

    def apply_slot(self, slot: SlotAssignment) -> None:
        table = self.table
        assert table is not None
        self._grow_table_to(slot.slot + 1)
        func = self.export(slot.handle, slot.export)
        table_set(self.store, table, slot.slot, func)
        if slot.dlsym_handle >= 0:
            self._dlsym_known[(slot.dlsym_handle, slot.export)] = SymbolAddress(
                "function", slot.slot, slot.handle)

    def apply_growth(self, growth: TableGrowth) -> None:
        """A block of null closure slots at `growth.index`. A table shorter than that (slots a
        failed dlopen grew in its instigator only) is padded with nulls; a longer one would
        mean the block overlaps slots in use here."""
        table = self.table
        assert table is not None
        current = table.size(self.store)
        if current > growth.index:
            raise LinkError(f"closure slots at {growth.index}, but this group's table has "
                            f"{current} slots")
        try:
            self._grow_table_to(growth.index + growth.size)
        except wasmtime.WasmtimeError as err:
            raise LinkError(f"cannot add {growth.size} closure slots: {err}") from None

    def apply_closure(self, plan: ClosurePlan) -> None:
        """Instantiate the closure's trampoline over this group's memory, table and stack
        pointer, and put it in its slot."""
        table = self.table
        assert table is not None
        if self.memory_object is None or self.stack_pointer is None:
            raise LinkError("closures need an imported memory and a __stack_pointer")
        const = wasmtime.GlobalType(wasmtime.ValType.i32(), False)
        imports = [self.memory_object, table, self.stack_pointer,
                   wasmtime.Global(self.store, const, wasmtime.Val.i32(_signed32(plan.backing))),
                   wasmtime.Global(self.store, const, wasmtime.Val.i32(_signed32(plan.env)))]
        try:
            instance = new_instance(self.store, self._load_module(plan.module).module, imports)
        except WASM_ERRORS as err:
            raise LinkError(f"{plan.label}: cannot instantiate: {_trap_text(err)}") from None
        func = instance.exports(self.store)[CLOSURE_EXPORT]
        assert isinstance(func, wasmtime.Func)
        self._grow_table_to(plan.slot + 1)
        table_set(self.store, table, plan.slot, func)
        self.closures[plan.slot] = plan
        self._closure_labels[_func_identity(func)] = plan.label

    def _grow_table_to(self, length: int) -> None:
        table = self.table
        assert table is not None
        current = table.size(self.store)
        if length > current:
            table_grow(self.store, table, length - current)

    def _initialise(self, handles: list[int]) -> None:
        """Data relocations and TLS relocations for all, then constructors (side modules),
        in load order: once per program, in the group that loaded the modules."""
        for handle in handles:
            for name in ("__wasm_apply_data_relocs", "__wasm_apply_tls_relocs"):
                self._call_init(handle, name)
        for handle in handles:
            if handle != MAIN_HANDLE:
                self._call_init(handle, "__wasm_call_ctors")
        if MAIN_HANDLE in handles:
            self._call_init(MAIN_HANDLE, "_initialize")

    def _call_init(self, handle: int, name: str) -> None:
        func = self.find_export(handle, name)
        if func is None:
            return
        plan = self._plans[handle]
        wrong_type = LinkError(f"{plan.name}: {name} must be a function of type () -> ()")
        if not isinstance(func, wasmtime.Func):
            raise wrong_type
        try:
            call_nullary(self.store, func)  # wasmtime checks the type
        except (GuestExit, wasmtime.ExitTrap):
            raise
        except WASM_ERRORS as err:
            if not isinstance(err, wasmtime.Trap):
                func_type = func.type(self.store)
                if func_type.params or func_type.results:
                    raise wrong_type from None
            raise LinkError(f"{plan.name}: {name} failed: {_trap_text(err)}") from None

    def _instantiate(self, plan: ModulePlan) -> None:
        compiled = self._load_module(plan.host_path)
        # The plan covers the module's own imports; the load-time rewrite appends host
        # helpers (orchestrator/rewrite.py) after them. The compiled module's import types
        # (~10 µs an import to read) are read only when a binding needs one the plan does
        # not carry, or for the helpers.
        count = compiled.import_count
        if count < len(plan.bindings):
            raise LinkError(f"{plan.name}: the compiled module does not match its plan")
        imports = [self._import_value(plan, binding, compiled, index)
                   for index, binding in enumerate(plan.bindings)]
        if count > len(plan.bindings):
            helpers = compiled.helpers(len(plan.bindings), self._host_funcs)
            if any(module != HELPER_MODULE for module, _, _, _ in helpers):
                raise LinkError(f"{plan.name}: the compiled module does not match its plan")
            imports += [self._helper(plan, name, ty) for _, name, ty, _ in helpers]
        try:
            self.instances[plan.handle] = new_instance(self.store, compiled.module, imports)
        except WASM_ERRORS as err:
            raise LinkError(f"{plan.name}: cannot instantiate: {_trap_text(err)}") from None
        if plan.handle == MAIN_HANDLE and self._memory is None:
            # A main that defines its own memory (one group only): host calls use that.
            own = self.find_export(plan.handle, "memory")
            if isinstance(own, (wasmtime.Memory, wasmtime.SharedMemory)):
                self.memory_object = own
                self._memory = GuestMemory(own, self.store)
        if plan.handle == MAIN_HANDLE and self.stack_pointer is None:
            sp = self.find_export(plan.handle, "__stack_pointer")
            if isinstance(sp, wasmtime.Global):
                self.stack_pointer = sp

    def _import_value(self, plan: ModulePlan, binding: Any, compiled: CompiledModule,
                      index: int) -> Any:
        how = binding.how
        if how == B_MEMORY:
            return self.memory_object
        if how == B_TABLE:
            return self.table
        if how == B_STACK_POINTER:
            if self.stack_pointer is None:
                raise LinkError(f"{plan.name} imports env.__stack_pointer, but the main module "
                                "neither imports nor exports __stack_pointer")
            return self.stack_pointer
        if how == B_TAG:
            if binding.name not in self._tags:
                self._tags[binding.name] = wasmtime.Tag(
                    self.store, wasmtime.TagType(wasmtime.FuncType([wasmtime.ValType.i32()], [])))
            return self._tags[binding.name]
        if how in (B_CONST, B_TLS):
            ty, is_i64 = self._import_type(binding, compiled, index)
            if not isinstance(ty, wasmtime.GlobalType):
                raise LinkError(f"{plan.name}: {binding.module}.{binding.name} is not a global")
            value = binding.value
            if how == B_TLS:
                value += self.tls_base(binding.source)
            if not is_i64:
                value = _signed32(value)
            created = const_global(self.store, ty, is_i64, value)  # the type is copied
            if binding.module.startswith("GOT.") and how == B_CONST:
                self._got[f"{plan.name}:{binding.module}.{binding.name}"] = created
            return created
        if how == B_FUNC and binding.source in self.instances:
            return self.export(binding.source, binding.export)
        if how == B_HOST:
            made = self._host_funcs.get((binding.module, binding.name))
            if made is not None:
                return made
        ty = self._import_type(binding, compiled, index)[0]
        if not isinstance(ty, wasmtime.FuncType):
            raise LinkError(f"{plan.name}: {binding.module}.{binding.name} is not a function")
        if how == B_FUNC:
            return self._forwarder(ty, binding.source, binding.export)
        if how == B_STUB:
            return self._stub(ty, plan, binding.name)
        if how == B_HOST:
            return self._host_function(binding.module, binding.name, ty)
        raise LinkError(f"{plan.name}: unknown binding {how!r} for {binding.module}.{binding.name}")

    @staticmethod
    def _import_type(binding: Binding, compiled: CompiledModule, index: int
                     ) -> tuple[Any, bool]:
        """The type of import `index` (a global's, a function's) and whether it is an i64
        global: from the plan (wasmtime checks it against the module's at instantiation),
        else read from the compiled module."""
        if binding.import_type:
            return import_type(binding.import_type)
        _, _, ty, is_i64 = compiled.imports[index]
        return ty, is_i64

    def _forwarder(self, ty: wasmtime.FuncType, handle: int, name: str) -> wasmtime.Func:
        """A function of a module later in the same load: bound when first called."""
        target: list[wasmtime.Func] = []

        def call(*args: Any) -> Any:
            if not target:
                target.append(self.export(handle, name))
            return target[0](self.store, *args)

        return wasmtime.Func(self.store, ty, call)

    def _stub(self, ty: wasmtime.FuncType, plan: ModulePlan, name: str) -> wasmtime.Func:
        """A lazy stub: the first call asks the coordinator which module exports `name`."""
        target: list[wasmtime.Func] = []

        def call(*args: Any) -> Any:
            if not target:
                handle, export = self.service.resolve_stub(self, plan.handle, name,
                                                           _our_functype(ty))
                target.append(self.export(handle, export))
            return target[0](self.store, *args)

        return wasmtime.Func(self.store, ty, call)

    def _helper(self, plan: ModulePlan, name: str, ty: wasmtime.FuncType | None
                ) -> wasmtime.Func:
        """A host helper the load-time rewrite imports (one type per name): made once per
        group, shared by every module that imports it."""
        key = (HELPER_MODULE, name)
        func = self._host_funcs.get(key)
        if func is None:
            if not isinstance(ty, wasmtime.FuncType) or name not in self._memory_helpers:
                raise LinkError(f"{plan.name}: the compiled module does not match its plan")
            func = self._host_funcs[key] = host_func(self.store, ty, self._memory_helpers[name])
        return func

    def _host_function(self, module: str, name: str, ty: wasmtime.FuncType) -> Any:
        """A WASI/WASIX call, made once per group and shared by every module that imports it
        (the linker let each import it only with the ABI's signature)."""
        key = (module, name)
        func = self._host_funcs.get(key)
        if func is None:
            func = self._host_funcs[key] = self._make_host_function(module, name, ty)
        return func

    def _make_host_function(self, module: str, name: str, ty: wasmtime.FuncType) -> Any:
        function: Callable[..., Any] | None
        if module in WASI_MODULES:
            function = (self._clocks.get(name) if name in CLOCK_FUNCTIONS
                        else make_poll_oneoff(self) if name == "poll_oneoff"
                        else self._wasi.get(name))
        elif module == "wasix_32v1" and name in WASIX_DESCRIPTOR_CALLS:
            function = self._wasi[name]
        else:
            function = {"wasix_32v1": self._wasix, "wasi": self._wasi_threads}[module].get(name)
        if module == "wasix_32v1" and name in native.NATIVE_CALLS:
            calls = self._native_calls()
            if calls is not None:
                return calls.func(self.store, ty, name)
        signature = abi_signature(module, name)
        names = None if signature is None else (signature.params, signature.results)
        return host_func(self.store, ty, function or make_unimplemented(module, name), names)

    def _native_calls(self) -> native.NativeCalls | None:
        """The C host functions (host/native.py) over the program's fixed memory, when
        built; None otherwise (a memory of the main's own, which may move, included)."""
        if self._native is None:
            lib, memory = native.library(), self._memory
            if lib is None or memory is None or memory.view is None:
                return None
            self._native = native.NativeCalls(lib, *memory.extent())
        return self._native

    # ------------------------------------------------------------------ blocking and threads
    def post(self, pending: PendingOperation) -> None:
        """Queue an operation for this group's next safe point (called from other threads)."""
        self._pending.put(pending)
        self.nudge()

    def enqueue(self, pending: PendingOperation) -> None:
        """Queue an operation without waking this group's thread (the caller nudges it, or
        leaves it to apply the operation at its next safe point)."""
        self._pending.put(pending)

    def nudge(self) -> None:
        """Parked in futex_wait: wake it now rather than at the end of its wait slice (this
        thread alone, through its wake word; where the kernel lacks futex_waitv, everyone on
        the guest's futex: a spurious wake-up, which futex users tolerate); asleep: wake it
        too."""
        waiting_on = self._waiting_on
        if waiting_on is None:  # parked in futex_wait, the wake word is enough (it applies
            self._wakeup.set()  # what was posted before it returns to guest code)
            poll.nudge()  # a blocking read or poll
        self._wake_word.wake()
        if waiting_on is not None and not futex_waitv_works():
            futex_wake(waiting_on, 0x7FFFFFFF)

    def parked_in_futex(self) -> bool:
        """Whether this group's thread sleeps in futex_wait: an operation posted now is
        applied when its wake word wakes it, or before it returns to guest code, so it
        needs no epoch tick."""
        return self._waiting_on is not None

    @property
    def applying(self) -> bool:
        """Applying an operation that runs guest code of its own (a start function, TLS
        set-up) but no constructors: a safe point reached meanwhile applies nothing."""
        return self._servicing

    def has_pending(self) -> bool:
        return not self._pending.empty()

    def drain_pending(self) -> list[PendingOperation]:
        """Take every queued operation without applying it (the group is ending)."""
        taken = []
        while True:
            try:
                taken.append(self._pending.get_nowait())
            except queue.Empty:
                return taken

    def service_pending(self) -> None:
        """A safe point: apply every operation other groups are waiting on, in order. Not
        while one that runs no constructors is being applied: the guest code it does run (a
        start function, TLS set-up) reaches safe points too, and the next operation (queued
        behind it on a standby group, say a slot in the module being instantiated) must
        wait until it is complete. (Constructors are the program's code, which may wait for
        another thread that waits for this group.)"""
        # Only this group's thread takes from the queue: once it is not empty, get_nowait
        # succeeds (and every host call passes here, so the empty case costs no exception).
        if self._servicing:
            return
        while not self._pending.empty():
            pending = self._pending.get_nowait()
            if self._provisional and not isinstance(pending.op, (LoadUndo, PurgeDescriptors)):
                self.commit_loads()
            perturbation = self.perturbation if pending.on_done is not None else None
            if perturbation is not None:
                perturbation.pause()  # before applying: other groups run on meanwhile
            started = time.perf_counter()
            self._servicing = not pending.initialise
            try:
                if isinstance(pending.op, SlotAssignment):
                    self.apply_slot(pending.op)
                elif isinstance(pending.op, TableGrowth):
                    self.apply_growth(pending.op)
                elif isinstance(pending.op, ClosurePlan):
                    self.apply_closure(pending.op)
                elif isinstance(pending.op, LoadUndo):
                    self.undo_load(pending.op)
                elif isinstance(pending.op, DescribeRequest):
                    pending.state = self.describe_state()
                elif isinstance(pending.op, PurgeDescriptors):
                    self.descriptors.purge()
                else:
                    self.apply_load(pending.op, initialise=pending.initialise)
            except LinkError as err:
                pending.error = str(err)
            finally:
                self._servicing = False
                pending.seconds = time.perf_counter() - started
                if perturbation is not None:
                    perturbation.pause()  # before acknowledging: the instigator waits on
                pending.finish()

    def _on_tick(self) -> bool:
        self.service_pending()
        return not self.service.stopping()

    def futex_wait(self, offset: int, expected: int, timeout_ns: int | None) -> str:
        """Wait while the guest's u32 at `offset` (bounds checked by the caller) holds
        `expected`, in slices, so that a pending operation or a stop never waits on a
        sleeper. A word that differs already is a "mismatch" with no syscall; before the
        first sleep the word is watched for a few µs while the machine has a CPU to spare
        (shared/futex.py `Spinner`; a change seen then is "woken")."""
        address = self.memory.address + offset
        deadline = None if timeout_ns is None else time.monotonic_ns() + timeout_ns
        wake_word = self._wake_word
        view = self.memory.view
        expected &= 0xFFFFFFFF
        if view is not None and _U32_AT(view, offset)[0] != expected:
            self.service_pending()  # the kernel would say so too, for a syscall's cost
            return "mismatch"
        spin = timeout_ns is None or timeout_ns > SPIN_NS
        while True:
            if not self._pending.empty():
                self.service_pending()
            if self.service.stopping():
                self.raise_stopped()
            slice_ns = FUTEX_SLICE_NS
            if deadline is not None:
                slice_ns = min(slice_ns, deadline - time.monotonic_ns())
                if slice_ns <= 0:
                    return "timeout"
            wake_seen = wake_word.value  # before the check: a later post changes it
            if spin and view is not None:
                spin = False  # once per call: a slice that ends sleeps on
                if (offset, expected) == self._spun:
                    # Back on the word and value a spin just saw change: the guest's retry
                    # (a mutex taken by another thread first); spinning again would loop.
                    self._spun = None
                elif SPINNER.until_changed(view, offset, expected, wake_word, wake_seen):
                    self._spun = (offset, expected)
                    self.service_pending()
                    return "woken"
            self._waiting_on = address
            try:
                if not self._pending.empty():
                    continue  # posted between the check above and now: apply it first
                outcome = wake_word.wait(address, expected, wake_seen, slice_ns)
            finally:
                self._waiting_on = None
            if outcome == "wake":
                continue  # an operation or a stop for this group: the guest sleeps on after
            # Without futex_waitv, a wake-up for a link operation reaches the guest as a
            # spurious one, which every futex user re-checks; the operation is applied at the
            # guest's next safe point.
            if outcome != "timeout":
                # Posted while this group was parked: no epoch tick came for it (see
                # `parked_in_futex`), so apply it before the guest runs on.
                self.service_pending()
                return outcome

    def sleep_until(self, deadline_ns: int) -> None:
        """Sleep until the monotonic clock reaches `deadline_ns`, applying link operations
        as soon as they are posted and leaving at once when the program stops."""
        while True:
            self.service_pending()
            if self.service.stopping():
                self.raise_stopped()
            left = deadline_ns - time.monotonic_ns()
            if left <= 0:
                return
            self._wakeup.clear()
            if self.has_pending() or self.service.stopping():
                continue  # posted between the checks above and the clear
            self._wakeup.wait(min(left / 1e9, SLEEP_SLICE))

    def raise_stopped(self) -> None:
        """Leave guest code because the program is ending (the coordinator has its outcome)."""
        raise ProgramStopping()

    def thread_exit(self, code: int) -> None:
        raise ThreadExit(code)

    def spawn_thread(self, start_arg: int) -> int:
        self.service_pending()
        return self.service.spawn_thread(self, start_arg)

    def spawn_thread_v2(self, start: int, ret_tid: int) -> int:
        tid = self.spawn_thread(start)
        if tid < 0:
            return -tid
        self.memory.write_u32(ret_tid, tid)
        return 0

    def describe_state(self) -> GroupState:
        """Handles, what sits in each table slot, and non-TLS GOT values, as plain data.
        Only on this group's own thread (or while it runs no wasm)."""
        labels: dict[int, str] = dict(self._closure_labels)
        for handle, instance in self.instances.items():
            name = self._plans[handle].name if handle in self._plans else str(handle)
            for export, value in instance.exports(self.store).items():
                if isinstance(value, wasmtime.Func):
                    labels.setdefault(_func_identity(value), f"{name}:{export}")
        table = self.table
        assert table is not None
        slots = []
        for slot in range(table.size(self.store)):
            entry = table.get(self.store, slot)
            if not isinstance(entry, wasmtime.Func):
                slots.append("null")
                continue
            owner = next((p.name for p in self._plans.values()
                          if p.table_base <= slot < p.table_base + p.table_size), "?")
            slots.append(labels.get(_func_identity(entry), f"{owner}:<unexported>"))
        got = sorted((key, int(g.value(self.store)) & 0xFFFFFFFFFFFFFFFF)
                     for key, g in self._got.items())
        return GroupState(self.thread_id, tuple(sorted(self.instances)), tuple(slots),
                          tuple(got))

    # ------------------------------------------------------------------ running
    def close(self) -> None:
        """Release the Store, the memory (its mapping of the program's memfd goes with the
        last reference to the wasmtime memory) and this group's cached descriptors. Only once
        its thread has left wasm; the group is unusable afterwards."""
        self.instances.clear()
        self._exports.clear()
        self._plans.clear()
        self._got.clear()
        self._tags.clear()
        self.closures.clear()
        self.descriptors.close()
        self.table = self.stack_pointer = None
        self._memory = None
        self.memory_object = None
        self.store.close()
        if self.region is not None:
            self.region.close()
            self.region = None

    def call_entry(self, name: str, *args: int) -> None:
        func = self.export(MAIN_HANDLE, name)
        func(self.store, *args)


def warm_up(engine: wasmtime.Engine, wanted: Callable[[], bool]) -> None:
    """Build a throwaway group with every host function of the ABI, then drop it. A spare
    worker (worker/zygote.py) does this before it is wanted: CPython specializes a function's
    bytecode in place at its first runs (work and copy-on-write faults in a forked process),
    and ctypes and wasmtime-py make their per-signature objects once, so its first real group
    build runs warm code instead of paying for that on a spawn's path. Stops early once
    `wanted()` says the worker is wanted now."""
    if wanted():
        return
    page = GenerationPage.create()
    group = InstanceGroup(engine, _no_module, _NO_SERVICE, DescriptorCache(page, _no_request),
                          [], [])
    try:
        group.create_table(1, None)
        seen: set[tuple[str, FuncType]] = set()
        for module in ("wasi_snapshot_preview1", "wasix_32v1", "wasi"):
            for name in abi_names(module):
                signature = abi_signature(module, name)
                assert signature is not None
                if (module, signature) in seen:  # (their objects are made per signature)
                    continue
                if wanted():
                    return
                seen.add((module, signature))
                ty = wasmtime.FuncType([_val_type(p) for p in signature.params],
                                       [_val_type(r) for r in signature.results])
                group._host_function(module, name, ty)
    finally:
        group.close()


def _no_module(host_path: str) -> CompiledModule:
    raise LinkError(f"{host_path}: no modules while warming up")


def _no_request(name: str, *args: Any) -> tuple[list[Any], int | None]:
    raise LinkError(f"{name}: no requests while warming up")


_NO_SERVICE: Any = object()  # (no guest code runs in that group: nothing asks it anything)


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _func_identity(func: wasmtime.Func) -> int:
    """The same number for the same function of one store, however it was reached (an
    export lookup or a table read): the address of its function reference."""
    # getattr, not `._func.__private`: inside a class body that name would be mangled.
    return int(getattr(func._func, "__private"))


def _trap_text(err: wasmtime.Trap | wasmtime.WasmtimeError) -> str:
    """One line: the cause, and the innermost wasm frame (dlerror buffers are short)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    cause = lines[-1] if lines else type(err).__name__
    frame = next((line.split(" - ", 1)[1] for line in lines if " - " in line), None)
    return f"{cause} (in {frame})" if frame else cause
