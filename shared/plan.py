"""Link plans: what the coordinator decides and every instance group applies.

A plan is plain data (frozen records of ints and strings: shared/records.py) so that it can
cross a process boundary as msgpack (`to_wire`/`from_wire`) and be applied identically by
every group.

- `LoadPlan`: modules to instantiate in load order, with one `Binding` per import, the table
  length afterwards and the GOT.func slots to fill (`SlotAssignment`).
- `SlotAssignment`: put function `export` of module `handle` at table slot `slot` (a GOT.func
  entry, or a dlsym'd function: the seed's `ResolveFunction`).

Plans also carry what a group needs to answer read-only link queries itself, with no round trip
to the coordinator (the seed's groups read the shared linker state): each module's exports as
dlsym sees them (`ModulePlan.exports`), and for a dlsym'd function, the handle dlsym was asked
for (`SlotAssignment.dlsym_handle`), so that the same dlsym later finds its slot.
- `TableGrowth`: grow the table by `size` null slots, which must start at `index` (a block of
  closure slots: the seed's `AllocateFunctionTable`).
- `ClosurePlan`: instantiate the closure module `module` (a generated trampoline, keyed like
  a host path) with its backing slot and env pointer, and put its function at `slot`.
- A dlopen reaches the other groups while its instigator still runs the constructors: they
  apply it `provisional`ly (instantiated, not yet visible to their read-only queries until
  committed), then `LoadUndo` drops it again if the instigator failed; otherwise the next
  operation of any kind commits it (no message of its own: one wake-up less per group).
"""

from __future__ import annotations

from typing import Any

from wasmgroup.shared.records import field, record, record_fields

# How an import is satisfied (Binding.how).
B_MEMORY = "memory"  # the program's linear memory
B_TABLE = "table"  # the group's function table
B_STACK_POINTER = "stack_pointer"  # the group's __stack_pointer global
B_TAG = "tag"  # the group's exception tag of that name (__c_longjmp, __cpp_exception)
B_CONST = "const"  # a global holding `value` (addresses, bases, GOT.func slots, weak 0)
B_TLS = "tls"  # a global holding tls_base(source, in this group) + value
B_FUNC = "func"  # function `export` of module `source`
B_STUB = "stub"  # a lazy stub: resolved by name on first call
B_HOST = "host"  # a function the runtime provides (WASI, WASIX)

BINDING_KINDS = (B_MEMORY, B_TABLE, B_STACK_POINTER, B_TAG, B_CONST, B_TLS, B_FUNC, B_STUB,
                 B_HOST)


@record
class Binding:
    module: str
    name: str
    how: str
    value: int = 0
    source: int = 0
    export: str = ""
    # The import's type as text (`type_text`) where a group makes something of it (a
    # global, a stub, a host function), so that it need not read the compiled module's
    # import types; "" for the rest. The module's, not part of what the import is bound
    # to: left out of comparisons.
    import_type: str = field(default="", compare=False)


NUMBER_TYPES = ("i32", "i64", "f32", "f64")


def type_text(params: tuple[str, ...] | None, results: tuple[str, ...] = (),
              value: str = "", mutable: bool = False) -> str:
    """An import's type as a Binding carries it: a function's "(i32 i32) -> (i64)" (given
    `params`), or an integer global's "i32" / "mut i64" (given `value`); "" for any other
    type (a group reads those from the compiled module)."""
    if params is not None:
        if not all(t in NUMBER_TYPES for t in (*params, *results)):
            return ""
        return f"({' '.join(params)}) -> ({' '.join(results)})"
    if value not in ("i32", "i64"):
        return ""
    return f"mut {value}" if mutable else value


# What a dlsym of an export finds (ModulePlan.exports): a function (it needs a table slot), a
# data address (absolute), a TLS offset (from the thread's TLS base of the module), or
# something only the coordinator can answer (a global without a constant value: an error).
X_FUNC, X_DATA, X_TLS, X_OTHER = "func", "data", "tls", "other"


@record
class SlotAssignment:
    slot: int
    handle: int
    export: str
    dlsym_handle: int = -1  # for a dlsym'd function: the handle it was asked of (0: global)


@record
class TableGrowth:
    index: int
    size: int


@record
class ClosurePlan:
    slot: int
    module: str  # the generated module's key (plans name modules by host path)
    params: tuple[str, ...]
    results: tuple[str, ...]
    backing: int  # table slot of `void backing(values, results, env)`
    env: int

    @property
    def label(self) -> str:
        """How --verify-groups names the function in the slot."""
        return (f"closure({', '.join(self.params)}) -> ({', '.join(self.results)})"
                f" backing {self.backing} env {self.env:#x}")


@record
class ModulePlan:
    handle: int
    name: str
    guest_path: str
    host_path: str
    memory_base: int
    table_base: int
    table_size: int
    memory_size: int
    bindings: list[Binding]
    # Exports dlsym can see (hidden ones left out): name -> [X_* kind, value].
    exports: dict[str, list[Any]] = field(default_factory=dict)
    # Whether it exports a TLS initialiser (`__wasm_init_tls`, `__wasix_init_tls`): each
    # other group sets up a block for its thread; without one it looks for none.
    thread_tls: bool = True


@record
class SymbolAddress:
    """A dlsym result: a table slot (function), an address, or a TLS offset (per thread)."""

    kind: str  # "function" | "data" | "tls"
    value: int  # slot, absolute address, or offset from the TLS base of `handle`
    handle: int


@record
class GroupState:
    """What one group has linked (see orchestrator/verify.py)."""

    thread_id: int
    handles: tuple[int, ...]
    table: tuple[str, ...]
    got: tuple[tuple[str, int], ...]  # ("handle:GOT.mem.name", value), sorted


@record(frozen=False)
class LoadPlan:
    modules: list[ModulePlan]
    table_length: int  # every group's table length once applied
    slots: list[SlotAssignment]
    stack_low: int = 0
    stack_high: int = 0
    provisional: bool = False  # applied beside the instigator: a LoadUndo may follow

    @property
    def handles(self) -> list[int]:
        return [m.handle for m in self.modules]


@record
class LoadUndo:
    """The provisional load of `handles` failed in its instigator: drop it."""

    handles: tuple[int, ...]


Operation = LoadPlan | SlotAssignment | TableGrowth | ClosurePlan | LoadUndo


def to_wire(obj: Operation) -> dict[str, Any]:
    """A msgpack-ready dict of a plan (tuples become lists)."""
    if isinstance(obj, TableGrowth):
        return {"op": "allocate_function_table", "index": obj.index, "size": obj.size}
    if isinstance(obj, ClosurePlan):
        return {"op": "prepare_closure", "slot": obj.slot, "module": obj.module,
                "params": list(obj.params), "results": list(obj.results),
                "backing": obj.backing, "env": obj.env}
    if isinstance(obj, SlotAssignment):
        return {"op": "resolve_function", "slot": obj.slot, "handle": obj.handle,
                "export": obj.export, "dlsym_handle": obj.dlsym_handle}
    if isinstance(obj, LoadUndo):
        return {"op": "undo_load", "handles": list(obj.handles)}
    return {
        "op": "load_modules",
        "modules": [{**{k: getattr(m, k) for k in record_fields(ModulePlan)
                        if k != "bindings"},
                     "bindings": [[b.module, b.name, b.how, b.value, b.source, b.export,
                                   b.import_type] for b in m.bindings]}
                    for m in obj.modules],
        "table_length": obj.table_length,
        "slots": [[s.slot, s.handle, s.export, s.dlsym_handle] for s in obj.slots],
        "stack_low": obj.stack_low,
        "stack_high": obj.stack_high,
        "provisional": obj.provisional,
    }


def from_wire(data: dict[str, Any]) -> Operation:
    if data["op"] == "allocate_function_table":
        return TableGrowth(data["index"], data["size"])
    if data["op"] == "prepare_closure":
        return ClosurePlan(data["slot"], data["module"], tuple(data["params"]),
                           tuple(data["results"]), data["backing"], data["env"])
    if data["op"] == "resolve_function":
        return SlotAssignment(data["slot"], data["handle"], data["export"],
                              data.get("dlsym_handle", -1))
    if data["op"] == "undo_load":
        return LoadUndo(tuple(int(h) for h in data["handles"]))
    modules = [ModulePlan(**{**m, "bindings": [Binding(*b) for b in m["bindings"]]})
               for m in data["modules"]]
    return LoadPlan(modules=modules, table_length=data["table_length"],
                    slots=[SlotAssignment(*s) for s in data["slots"]],
                    stack_low=data["stack_low"],
                    stack_high=data["stack_high"],
                    provisional=bool(data.get("provisional", False)))


def state_to_wire(state: GroupState) -> list[Any]:
    return [state.thread_id, list(state.handles), list(state.table),
            [list(entry) for entry in state.got]]


def state_from_wire(data: list[Any]) -> GroupState:
    thread_id, handles, table, got = data
    return GroupState(thread_id, tuple(handles), tuple(table),
                      tuple((str(k), int(v)) for k, v in got))
