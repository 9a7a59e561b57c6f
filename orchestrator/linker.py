"""The authoritative dynamic-linker state (Wasmer's `LinkerState`), as pure data.

No processes and no wasmtime objects: modules come in as parsed `WasmModule`s through a
`ModuleSource`, and every decision comes out as plain plans (`shared.plan`) that any instance
group can apply. The rules follow the seed (reference/wasix-linker-behaviour.md §1-§2, §5):

- handles: main = 1, side modules from 2 in post-order (dependencies first), never reused,
  keyed by the *requested* name; loading a known name returns its handle and loads nothing;
- memory: side-module data placed by `MemoryAllocator`; `memory_size == 0` gives base 0;
- table: slot 0 null, main at 1, each side module's region aligned, then one fresh slot per
  GOT.func import (resolvable ones first, in load and import order, then the rest), and one
  per dlsym'd function;
- symbols: `env` functions need an exact type match (missing ones become lazy stubs);
  `GOT.mem`/`GOT.func` are searched in main, then side modules in handle order; a missing weak
  GOT symbol is 0, a missing strong one fails the load; dlsym cannot see hidden exports.

Closures (§4): `allocate_closure` hands out a free closure slot, growing the table by a block
of `CLOSURE_BLOCK` null slots (a `TableGrowth` every group applies) when none is free;
`prepare_closure` records the closure now in a slot, so that groups created later replay it;
`free_closure` returns the slot to the pool (its function stays until prepared again).

Planning is transactional, unlike the seed: `plan_load` decides everything before anything is
instantiated and changes no state; `commit` records it after the instigating group applied it
(constructors included); `abort` puts the memory allocator back.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import Any

from wasmgroup.orchestrator.allocator import MemoryAllocator
from wasmgroup.orchestrator.locate import GuestFilesystem, Located, locate
from wasmgroup.shared import hostabi
from wasmgroup.shared.dylink import MAX_TABLE_SLOTS
from wasmgroup.shared.errors import LinkError, ModuleRefused, WasmFormatError
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
    X_FUNC,
    X_OTHER,
    X_TLS,
    Binding,
    ClosurePlan,
    LoadPlan,
    ModulePlan,
    SlotAssignment,
    SymbolAddress,
    TableGrowth,
    type_text,
)
from wasmgroup.shared.records import field, record
from wasmgroup.shared.wasm import Export, FuncType, GlobalType, Import, TagType, WasmModule

MAIN_HANDLE = 1
MAIN_TABLE_BASE = 1
STACK_SIZE = 8 * 1024 * 1024  # what WASIX gives the main thread
STACK_ALIGN = 1024
PAGE = 65536
MAX_NEEDED_DEPTH = 128  # libraries each needing the next; real programs need a handful
CLOSURE_BLOCK = 100  # closure slots added to the table at a time (as the seed)
MAX_CLOSURE_TABLE = 1 << 20  # no closure block takes the table past this many slots

# `env` imports with a fixed meaning; everything else in `env` must be a function.
SPECIAL_ENV = {"memory": B_MEMORY, "__indirect_function_table": B_TABLE,
               "__stack_pointer": B_STACK_POINTER, "__c_longjmp": B_TAG,
               "__cpp_exception": B_TAG}
# Every module of a group gets the group's one tag of each name (as in Wasmer), so that a
# longjmp or C++ exception thrown in one module is caught in another.
EXCEPTION_TAG = TagType(FuncType(("i32",), ()))

# Reads a module from the descriptor the lookup opened (`Located.fd`) -> parsed module. The
# coordinator's version goes through the compile cache; tests read the descriptor.
ModuleSource = Callable[[Located], WasmModule]


@record(frozen=False)
class LoadedModule:
    handle: int
    name: str  # as requested (dlopen string or NEEDED entry); the dedup key
    guest_path: str
    host_path: str
    module: WasmModule
    memory_base: int
    table_base: int


@record(frozen=False)
class PendingLoad:
    """A planned load, between `plan_*` and `commit`/`abort`."""

    plan: LoadPlan
    new: list[LoadedModule]
    names: dict[str, int]
    next_handle: int
    allocator_before: tuple[list[tuple[int, int]], int]


@record(frozen=False)
class _Resolved:
    """One import's resolution before memory bases are final."""

    binding: Binding
    add_base_of: int = 0  # a GOT.mem address relative to this module's __memory_base
    slot_target: tuple[LoadedModule, str] | None = None  # a GOT.func needing a fresh slot

    def final(self, bases: dict[int, int]) -> Binding:
        if not self.add_base_of:
            return self.binding
        b = self.binding
        return Binding(b.module, b.name, b.how, value=b.value + bases[self.add_base_of])


def _typed(binding: Binding, import_type: object) -> Binding:
    """`binding` with the type of what a group makes of it (a global, a function), so that
    no group reads it from the compiled module."""
    text = ""
    if binding.how in (B_CONST, B_TLS) and isinstance(import_type, GlobalType):
        text = type_text(None, value=import_type.value, mutable=import_type.mutable)
    elif binding.how in (B_FUNC, B_STUB, B_HOST) and isinstance(import_type, FuncType):
        text = type_text(import_type.params, import_type.results)
    if not text:
        return binding
    b = binding
    return Binding(b.module, b.name, b.how, b.value, b.source, b.export, text)


def _global_value(module: WasmModule, export: Export) -> int | None:
    """The constant value of an exported global defined by `module`, if it has one."""
    imported = len(module.imports_of("global"))
    if export.index < imported:
        return None
    return module.globals[export.index - imported].init_value


def _dlsym_export(loaded: LoadedModule, export: Export) -> tuple[str, int]:
    """What dlsym finds for one export of a loaded module (plan.X_* kind, value)."""
    if export.kind == "func":
        return X_FUNC, 0
    value = _global_value(loaded.module, export)
    if value is None:
        return X_OTHER, 0
    info = loaded.module.dylink
    if info is not None and info.is_tls_export(export.name):
        return X_TLS, value
    return X_DATA, value + loaded.memory_base


def _dlsym_exports(loaded: LoadedModule) -> dict[str, list[Any]]:
    """Every export dlsym can see, for the groups' own answers (ModulePlan.exports)."""
    info = loaded.module.dylink
    exports: dict[str, list[Any]] = {}
    for export in loaded.module.exports:
        if export.kind not in ("func", "global") or export.name in exports:
            continue
        if info is not None and info.is_hidden_export(export.name):
            continue
        exports[export.name] = list(_dlsym_export(loaded, export))
    return exports


@record(frozen=False)
class _Batch:
    """One load in progress: nothing here touches the committed state."""

    new: list[LoadedModule] = field(default_factory=list)
    names: dict[str, int] = field(default_factory=dict)
    pending_paths: list[str] = field(default_factory=list)
    next_handle: int = 0


def _align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def _check_table_length(length: int, by: str) -> None:
    """Every worker holds the whole table: refuse one no real program needs, before any grows."""
    if length > MAX_TABLE_SLOTS:
        raise LinkError(f"{by}: the function table would need {length} slots, more than the "
                        f"{MAX_TABLE_SLOTS} a program may have")


MAIN_PIE = "pie"
MAIN_STATIC = "static"
MAIN_STATIC_NEEDED = "static-needed"


def main_shape(main: WasmModule) -> str:
    """How a main module is laid out: MAIN_PIE (position-independent: it imports
    `env.__memory_base`, `__table_base` or `__stack_pointer` and is placed by the linker),
    MAIN_STATIC (no `dylink.0`), or MAIN_STATIC_NEEDED: the `dylink.0` that wasm-ld writes
    into a static (non-PIC) main linked against a `.so` (its NEEDED libraries; no data or
    table of its own to place), with absolute data, its own stack and the table it imports."""
    if main.dylink is None:
        return MAIN_STATIC
    if any(i.module == "env" and i.name in ("__memory_base", "__table_base", "__stack_pointer")
           for i in main.imports_of("global")):
        return MAIN_PIE
    return MAIN_STATIC_NEEDED


def _is_data_global(t: object) -> bool:
    return isinstance(t, GlobalType) and t.value in ("i32", "i64")


class LinkerState:
    """Handles, name map, memory and table layout, and the operation log of one program."""

    def __init__(self, fs: GuestFilesystem, source: ModuleSource,
                 grow_memory: Callable[[int], int], ld_library_path: list[str] | None = None
                 ) -> None:
        self.fs = fs
        self._source = source
        self.allocator = MemoryAllocator(grow_memory)
        self.ld_library_path = list(ld_library_path or [])
        self.modules: dict[int, LoadedModule] = {}  # handle order = insertion order
        self.by_name: dict[str, int] = {}
        self.next_handle = MAIN_HANDLE + 1
        self.table_length = 0
        self.heap_base = 0
        self.stack_low = self.stack_high = 0
        self._main_memory_base = 0
        self.log: list[LoadPlan | SlotAssignment] = []
        # dlsym results, keyed by (handle, or 0 for the global search; name).
        self.dlsym_cache: dict[tuple[int, str], SymbolAddress] = {}
        # Lazy stubs resolved so far: (importing handle, name) -> (exporting handle, name).
        self.stub_bindings: dict[tuple[int, str], tuple[int, str]] = {}
        # Closure slots (the seed's allocated/available_closure_functions): slot -> in use.
        self.closure_slots: dict[int, bool] = {}
        self.free_closures: list[int] = []  # popped from the end: lowest slot first
        self.closures: dict[int, ClosurePlan] = {}  # what each prepared slot holds now

    @property
    def main_imports_stack_pointer(self) -> bool:
        """A PIE main imports `env.__stack_pointer`: every group then makes its own (a static
        main defines one, exported for its side modules)."""
        main = self.modules.get(MAIN_HANDLE)
        return main is not None and any(
            i.module == "env" and i.name == "__stack_pointer"
            for i in main.module.imports_of("global"))

    # ------------------------------------------------------------------ start-up
    def layout_main(self, main: WasmModule, memory_pages: int) -> int:
        """Lay out the main module; returns the memory size (pages) it needs at start.

        A PIE main gets `__memory_base = 2^align`, the table from slot 1, and an 8 MiB stack
        right after its data (`__heap_base = __stack_high`). A static main brings its own
        layout (data at 0, its own stack, the table as it imports it); so does a static main
        with NEEDED libraries (`main_shape`), of which only the libraries are loaded.
        """
        dylink = main.dylink
        if dylink is not None and not any(i.module == "env" and i.name == "memory"
                                           for i in main.imports_of("memory")):
            # The seed's rule (MissingMainModuleImport): one memory, given to every module.
            raise LinkError("a main module with dylink.0 must import its memory as env.memory "
                            "(link it with --import-memory)")
        shape = main_shape(main)
        if shape == MAIN_PIE:
            assert dylink is not None
            self._main_memory_base = 1 << dylink.mem_info.memory_alignment
            self.stack_low = _align_up(self._main_memory_base + dylink.mem_info.memory_size,
                                       STACK_ALIGN)
            self.stack_high = self.stack_low + STACK_SIZE
            self.heap_base = self.stack_high
            self.table_length = MAIN_TABLE_BASE + dylink.mem_info.table_size
            _check_table_length(self.table_length, "the main module")
            return max(memory_pages, -(-self.stack_high // PAGE))
        self._main_memory_base = 0
        table_imports = main.imports_of("table")
        if shape == MAIN_STATIC_NEEDED and dylink is not None and dylink.needed \
                and not any(i.module == "env" and i.name == "__indirect_function_table"
                            for i in table_imports):
            # Its libraries' function pointers are slots of the table every module imports.
            raise LinkError("a static main module with NEEDED libraries must import its table "
                            "as env.__indirect_function_table (link it with --import-table)")
        limits = getattr(table_imports[0].type, "limits", None) if table_imports else None
        self.table_length = limits.minimum if limits else 0
        _check_table_length(self.table_length, "the main module's table import")
        return memory_pages

    def plan_main(self, main: WasmModule, guest_path: str, host_path: str) -> PendingLoad:
        """Plan the main module and its NEEDED tree (after `layout_main`).

        NEEDED entries of main use main's RUNPATH; main's `$ORIGIN` is its guest directory.
        """
        dylink = main.dylink
        table_base = MAIN_TABLE_BASE if main_shape(main) == MAIN_PIE else 0
        self.modules[MAIN_HANDLE] = LoadedModule(MAIN_HANDLE, guest_path, guest_path,
                                                 host_path, main, self._main_memory_base,
                                                 table_base)
        batch = _Batch(next_handle=self.next_handle)
        origin = posixpath.dirname(guest_path) or self.fs.cwd
        try:
            for needed in (dylink.needed if dylink else []):
                self._load_tree(batch, needed, dylink.runtime_path if dylink else [], origin,
                                requested_by=guest_path)
            return self._plan_batch(batch, main_first=True)
        except LinkError:
            del self.modules[MAIN_HANDLE]
            raise

    # ------------------------------------------------------------------ dlopen
    def plan_load(self, name: str, ld_library_path: list[str] | None = None
                  ) -> PendingLoad | int:
        """Plan `dlopen(name)`. Returns the existing handle when `name` was loaded before.

        dlopen never uses the caller's RUNPATH; only the loaded modules' own NEEDED entries
        use theirs. Raises `LinkError` (state unchanged) when the load cannot succeed.
        """
        if name in self.by_name:
            return self.by_name[name]
        batch = _Batch(next_handle=self.next_handle)
        lib_path = self.ld_library_path if ld_library_path is None else ld_library_path
        self._load_tree(batch, name, [], None, requested_by=None, ld_library_path=lib_path)
        return self._plan_batch(batch, main_first=False)

    def _load_tree(self, batch: _Batch, name: str, runtime_path: list[str],
                   origin: str | None, requested_by: str | None,
                   ld_library_path: list[str] | None = None) -> None:
        if name in self.by_name or name in batch.names:
            return
        lib_path = self.ld_library_path if ld_library_path is None else ld_library_path
        found = locate(self.fs, name, ld_library_path=lib_path, runtime_path=runtime_path,
                       origin=origin, requested_by=requested_by)
        with found:  # the module is read from the descriptor the lookup opened
            if found.host_path in batch.pending_paths:
                return  # a cycle: the module is already being loaded further up
            if len(batch.pending_paths) >= MAX_NEEDED_DEPTH:
                # Deeper would end in a RecursionError: a guest can write such chains.
                raise LinkError(f"{name} (needed by {requested_by}): a chain of NEEDED "
                                f"libraries deeper than {MAX_NEEDED_DEPTH}")
            try:
                module = self._source(found)
            except WasmFormatError as err:
                # Name the guest path: the guest must not learn where its files live on the host.
                raise LinkError(f"{found.guest_path}: not a valid module: "
                                f"{WasmFormatError(err.offset, err.expected)}") from None
            except ModuleRefused as err:
                raise LinkError(f"{found.guest_path}: {err.reason}") from None
            except OSError as err:
                raise LinkError(f"{name}: cannot read {found.guest_path}: "
                                f"{err.strerror}") from None
        if module.dylink is None:
            raise LinkError(f"{name} ({found.guest_path}) is not a dynamic library: "
                            "it has no dylink.0 section")
        batch.pending_paths.append(found.host_path)
        for needed in module.dylink.needed:
            self._load_tree(batch, needed, module.dylink.runtime_path,
                            posixpath.dirname(found.guest_path), requested_by=name,
                            ld_library_path=lib_path)
        batch.pending_paths.pop()
        handle = batch.next_handle
        batch.next_handle += 1
        batch.names[name] = handle
        batch.new.append(LoadedModule(handle, name, found.guest_path, found.host_path,
                                      module, 0, 0))

    # ------------------------------------------------------------------ resolution
    def _plan_batch(self, batch: _Batch, main_first: bool) -> PendingLoad:
        committed = list(self.modules.values())
        everything = [*committed, *batch.new]  # main, then side modules in handle order
        planned = ([self.modules[MAIN_HANDLE]] if main_first else []) + batch.new
        table_length = self.table_length
        slots: list[SlotAssignment] = []
        deferred: list[tuple[list[_Resolved], int, LoadedModule, str]] = []
        resolved: dict[int, list[_Resolved]] = {}
        problems: list[str] = []
        for position, loaded in enumerate(planned):
            # What exists when this module is instantiated: the seed resolves GOT.func to a
            # fresh slot at once for those, and after the whole batch for the rest.
            visible = {m.handle for m in (committed if not main_first else [])}
            visible |= {m.handle for m in planned[:position]}
            info = loaded.module.dylink
            if info is not None and loaded.handle != MAIN_HANDLE and info.mem_info.table_size:
                loaded.table_base = _align_up(table_length, 1 << info.mem_info.table_alignment)
                table_length = loaded.table_base + info.mem_info.table_size
                _check_table_length(table_length, loaded.name)
            out: list[_Resolved] = []
            for imp in loaded.module.imports:
                try:
                    r = self._resolve_import(loaded, imp, everything)
                except LinkError as err:
                    problems.append(str(err))
                    r = _Resolved(Binding(imp.module, imp.name, B_CONST))
                if r.slot_target is not None:
                    target, export_name = r.slot_target
                    if target.handle in visible:
                        r = _Resolved(Binding(imp.module, imp.name, B_CONST, value=table_length))
                        slots.append(SlotAssignment(table_length, target.handle, export_name))
                        table_length += 1
                    else:
                        deferred.append((out, len(out), target, export_name))
                out.append(r)
            resolved[loaded.handle] = out
        if problems:
            raise LinkError("; ".join(problems))
        for out, index, target, export_name in deferred:
            b = out[index].binding
            out[index] = _Resolved(Binding(b.module, b.name, B_CONST, value=table_length))
            slots.append(SlotAssignment(table_length, target.handle, export_name))
            table_length += 1
        _check_table_length(table_length, ", ".join(m.name for m in planned))  # GOT.func slots

        # Memory last: the one step with a side effect (growing memory), undone on failure.
        saved = self.allocator.snapshot()
        try:
            for loaded in batch.new:
                info = loaded.module.dylink
                assert info is not None
                if info.mem_info.memory_size:
                    loaded.memory_base = self.allocator.allocate(
                        info.mem_info.memory_size, 1 << info.mem_info.memory_alignment)
        except LinkError:
            self.allocator.restore(saved)
            raise
        bases = {m.handle: m.memory_base for m in everything}
        module_plans = []
        for loaded in planned:
            bindings = [_typed(r.final(bases), imp.type)
                        for r, imp in zip(resolved[loaded.handle], loaded.module.imports,
                                          strict=True)]
            info = loaded.module.dylink
            module_plans.append(ModulePlan(
                handle=loaded.handle, name=loaded.name, guest_path=loaded.guest_path,
                host_path=loaded.host_path, memory_base=loaded.memory_base,
                table_base=loaded.table_base,
                table_size=info.mem_info.table_size if info else 0,
                memory_size=info.mem_info.memory_size if info else 0, bindings=bindings,
                exports=_dlsym_exports(loaded),
                thread_tls=any(loaded.module.export_named(n) is not None
                               for n in ("__wasm_init_tls", "__wasix_init_tls"))))
        plan = LoadPlan(modules=module_plans, table_length=table_length, slots=slots,
                        stack_high=self.stack_high, stack_low=self.stack_low)
        # The table is the plan's from now on, whatever comes of it (tables only grow): a
        # dlsym from one of its constructors gets a slot after it, not inside it.
        self.table_length = max(self.table_length, table_length)
        return PendingLoad(plan, list(batch.new), dict(batch.names), batch.next_handle, saved)

    def _resolve_import(self, loaded: LoadedModule, imp: Import,
                        everything: list[LoadedModule]) -> _Resolved:
        who = loaded.name
        if imp.module not in ("env", "GOT.mem", "GOT.func"):
            if not isinstance(imp.type, FuncType):
                raise LinkError(f"{who}: import {imp.module}.{imp.name} is a {imp.kind}; only "
                                "functions can come from the runtime")
            missing = hostabi.check(imp.module, imp.name, imp.type)
            if missing:
                raise LinkError(f"{who}: {missing}")
            return _Resolved(Binding(imp.module, imp.name, B_HOST))

        if imp.module == "env":
            if imp.name == "__memory_base":  # final once data is placed, after resolution
                return _Resolved(Binding(imp.module, imp.name, B_CONST),
                                 add_base_of=loaded.handle)
            if imp.name == "__table_base":
                return _Resolved(Binding(imp.module, imp.name, B_CONST, value=loaded.table_base))
            if imp.name in SPECIAL_ENV:
                how = SPECIAL_ENV[imp.name]
                if how == B_TAG and imp.type != EXCEPTION_TAG:
                    what = (f"a tag of type {imp.type.func_type}"
                            if isinstance(imp.type, TagType) else f"a {imp.kind}")
                    raise LinkError(f"{who}: import env.{imp.name} must be a tag of type "
                                    f"{EXCEPTION_TAG.func_type}, found {what}")
                return _Resolved(Binding(imp.module, imp.name, how))
            if not isinstance(imp.type, FuncType):
                raise LinkError(f"{who}: import env.{imp.name} must be a function, "
                                f"found a {imp.kind}")
            found = self._find_export(everything, imp.name, exclude=loaded)
            if found is None:
                return _Resolved(Binding(imp.module, imp.name, B_STUB))
            source, export = found
            actual = source.module.export_type(export)
            if actual != imp.type:
                raise LinkError(
                    f"{who}: imports function {imp.name} as {imp.type}, but {source.name} "
                    f"exports it as {actual if isinstance(actual, FuncType) else export.kind}")
            return _Resolved(Binding(imp.module, imp.name, B_FUNC, source=source.handle,
                                     export=imp.name))

        # GOT.mem / GOT.func: a mutable integer global holding an address or a table slot.
        if not _is_data_global(imp.type):
            raise LinkError(f"{who}: import {imp.module}.{imp.name} must be an i32/i64 "
                            f"global, found {imp.kind}")
        if loaded.handle == MAIN_HANDLE and imp.module == "GOT.mem":
            layout = {"__stack_high": self.stack_high, "__stack_low": self.stack_low,
                      "__heap_base": self.heap_base}
            if imp.name in layout and main_shape(loaded.module) == MAIN_PIE:
                return _Resolved(Binding(imp.module, imp.name, B_CONST, value=layout[imp.name]))
        found = self._find_export(everything, imp.name, exclude=None)
        weak = loaded.module.dylink is not None and loaded.module.dylink.is_weak_import(
            imp.module, imp.name)
        want = "func" if imp.module == "GOT.func" else "global"
        if found is None or found[1].kind != want:
            if weak:
                return _Resolved(Binding(imp.module, imp.name, B_CONST, value=0))
            what = "function" if want == "func" else "data symbol"
            detail = "" if found is None else f" ({found[0].name} exports it as a {found[1].kind})"
            raise LinkError(f"{who}: undefined {what} {imp.name}{detail}")
        source, export = found
        if imp.module == "GOT.func":
            return _Resolved(Binding(imp.module, imp.name, B_CONST), slot_target=(source, imp.name))
        return self._data_symbol(imp, source, export)

    def _data_symbol(self, imp: Import, source: LoadedModule, export: Export) -> _Resolved:
        value = _global_value(source.module, export)
        if value is None:
            raise LinkError(f"{source.name}: exported global {export.name} has no constant "
                            "value, so it cannot be used as a data address")
        info = source.module.dylink
        if info is not None and info.is_tls_export(export.name):
            if source.module.export_named("__tls_base") is None:
                raise LinkError(f"{imp.name} is a TLS symbol of {source.name}, which does not "
                                "export __tls_base")
            return _Resolved(Binding(imp.module, imp.name, B_TLS, value=value,
                                     source=source.handle))
        return _Resolved(Binding(imp.module, imp.name, B_CONST, value=value),
                         add_base_of=source.handle)

    @staticmethod
    def _find_export(order: list[LoadedModule], name: str, exclude: LoadedModule | None,
                     allow_hidden: bool = True) -> tuple[LoadedModule, Export] | None:
        for loaded in order:
            if loaded is exclude:
                continue
            export = loaded.module.export_named(name)
            if export is None or export.kind not in ("func", "global"):
                continue
            if not allow_hidden and loaded.module.dylink is not None \
                    and loaded.module.dylink.is_hidden_export(name):
                continue
            return loaded, export
        return None

    # ------------------------------------------------------------------ commit / abort
    def commit(self, pending: PendingLoad) -> None:
        """Record a load that the instigating group applied successfully (ctors included)."""
        for loaded in pending.new:
            self.modules[loaded.handle] = loaded
        self.by_name.update(pending.names)
        self.next_handle = max(self.next_handle, pending.next_handle)
        self.table_length = max(self.table_length, pending.plan.table_length)
        self.log.append(pending.plan)

    def abort(self, pending: PendingLoad) -> None:
        """Forget a load whose application failed: memory placement goes back as it was.

        The table keeps the length the failed attempt grew it to (tables cannot shrink), so
        the next plan starts after it and every group's table stays identical.
        """
        self.allocator.restore(pending.allocator_before)
        self.table_length = max(self.table_length, pending.plan.table_length)
        if pending.plan.modules and pending.plan.modules[0].handle == MAIN_HANDLE:
            self.modules.pop(MAIN_HANDLE, None)

    def replay_log(self) -> tuple[list[ModulePlan], list[SlotAssignment]]:
        """What a group created now must apply to match every other group: each loaded
        module's plan in handle order, then every table slot in the order it was assigned."""
        plans: dict[int, ModulePlan] = {}
        slots: list[SlotAssignment] = []
        for entry in self.log:
            if isinstance(entry, SlotAssignment):
                slots.append(entry)
            else:
                plans.update((m.handle, m) for m in entry.modules)
                slots.extend(entry.slots)
        return [plans[h] for h in sorted(plans)], slots

    # ------------------------------------------------------------------ dlsym and stubs
    def dlsym(self, handle: int, name: str) -> tuple[SymbolAddress, SlotAssignment | None]:
        """Resolve `dlsym(handle, name)`; handle 0 searches main, then side modules in handle
        order. Hidden exports are invisible. A function not seen before gets a fresh table
        slot, returned as the `SlotAssignment` every group must apply.
        """
        key = (handle, name)
        if key in self.dlsym_cache:
            return self.dlsym_cache[key], None
        if handle == 0:
            order = list(self.modules.values())
        elif handle in self.modules:
            order = [self.modules[handle]]
        else:
            raise LinkError(f"invalid handle {handle}")
        found = self._find_export(order, name, exclude=None, allow_hidden=False)
        if found is None:
            where = "any loaded module" if handle == 0 else self.modules[handle].name
            raise LinkError(f"symbol {name!r} not found in {where}")
        source, export = found
        assignment: SlotAssignment | None = None
        if export.kind == "func":
            assignment = SlotAssignment(self.table_length, source.handle, name, handle)
            result = SymbolAddress("function", self.table_length, source.handle)
            self.table_length += 1
            self.log.append(assignment)
        else:
            kind, value = _dlsym_export(source, export)
            if kind == X_OTHER:
                raise LinkError(f"{source.name}: global {name} has no constant value")
            result = SymbolAddress("tls" if kind == X_TLS else "data", value, source.handle)
        self.dlsym_cache[key] = result
        return result, assignment

    def resolve_stub(self, importer: int, name: str, func_type: FuncType) -> tuple[int, str]:
        """Bind a lazy stub on its first call: the first exported function `name` of exactly
        `func_type` (main first, then handle order). Recorded, so every group binds alike."""
        key = (importer, name)
        if key in self.stub_bindings:
            return self.stub_bindings[key]
        found = self._find_export(list(self.modules.values()), name, exclude=None)
        importer_name = self.modules[importer].name if importer in self.modules else "?"
        if found is None or found[1].kind != "func":
            raise LinkError(f"unresolved function {name} (imported by {importer_name}) "
                            "was called, but no loaded module exports it")
        source, export = found
        actual = source.module.export_type(export)
        if actual != func_type:
            raise LinkError(f"function {name} called from {importer_name} as {func_type}, "
                            f"but {source.name} exports it as {actual}")
        self.stub_bindings[key] = (source.handle, name)
        return source.handle, name

    # ------------------------------------------------------------------ closures
    def allocate_closure(self) -> tuple[int, TableGrowth | None]:
        """A free closure slot, now in use. When none is free, a new block of slots at the
        end of the table: the `TableGrowth` every group must apply before the slot is used."""
        growth = None
        if not self.free_closures:
            if self.table_length + CLOSURE_BLOCK > MAX_CLOSURE_TABLE:
                raise LinkError(f"no free closure slot, and the table cannot grow past "
                                f"{MAX_CLOSURE_TABLE} slots")
            growth = TableGrowth(self.table_length, CLOSURE_BLOCK)
            self.table_length += CLOSURE_BLOCK
            block = range(growth.index, growth.index + growth.size)
            self.closure_slots.update((slot, False) for slot in block)
            self.free_closures.extend(reversed(block))
        slot = self.free_closures.pop()
        self.closure_slots[slot] = True
        return slot, growth

    def check_closure_slot(self, slot: int) -> None:
        """LinkError unless `slot` is a closure slot handed out and not freed since: a guest
        cannot overwrite a module's or a dlsym'd function this way."""
        if not self.closure_slots.get(slot, False):
            raise LinkError(f"table slot {slot} is not an allocated closure")

    def prepare_closure(self, plan: ClosurePlan) -> None:
        """Record the closure the groups are about to put in `plan.slot`."""
        self.check_closure_slot(plan.slot)
        self.closures[plan.slot] = plan

    def free_closure(self, slot: int) -> bool:
        """Give a closure slot back; False (and nothing changes) when it is not in use. Its
        function stays in the table (calling it is undefined, as in the seed)."""
        if not self.closure_slots.get(slot, False):
            return False
        self.closure_slots[slot] = False
        self.free_closures.append(slot)
        return True

    def replay_closures(self) -> list[ClosurePlan]:
        """What a group created now puts in closure slots (after `replay_log`)."""
        return [self.closures[slot] for slot in sorted(self.closures)]
