"""`wasmgroup inspect`: what a module is and what it needs, as plain data.

`describe(module)` returns a JSON-ready dict; `format_text(summary)` renders it for people.
"""

from __future__ import annotations

from typing import Any

from wasmgroup.orchestrator.linker import MAIN_STATIC_NEEDED, main_shape
from wasmgroup.shared import hostabi
from wasmgroup.shared.dylink import flag_names
from wasmgroup.shared.wasm import (
    Export,
    FuncType,
    GlobalType,
    Import,
    MemoryType,
    TableType,
    TagType,
    WasmModule,
)

WASI_MODULES = ("wasi_snapshot_preview1", "wasi_unstable", "wasi")
WASIX_MODULES = ("wasix_32v1", "wasix_64v1")
IMPORT_GROUPS = ("env", "GOT.mem", "GOT.func", "WASI", "WASIX", "other")

KIND_PIE_MAIN = "main (PIE)"
KIND_STATIC_MAIN = "static main"
KIND_STATIC_MAIN_NEEDED = "static main (NEEDED {})"  # with the libraries' names
KIND_SIDE = "side module"

ENTRY_POINTS = ("_start", "_initialize")

# How `format_text` marks each import the runtime provides: what it does under wasmgroup.
ABI_MARKS = {hostabi.IMPLEMENTED: "implemented", hostabi.ENOSYS: "returns ENOSYS",
             hostabi.STOPS: "stops the program if called",
             hostabi.UNKNOWN: "unknown: the program cannot start"}


def module_kind(module: WasmModule) -> str:
    """PIE main, static main or side module, from dylink.0 and the entry-point exports.

    A module with `dylink.0` and an entry point (`_start`/`_initialize`) is a PIE main; with
    `dylink.0` and no entry point, a side module; without `dylink.0`, a static main (which a
    dynamic program uses when its libc is not PIC: it imports memory and table and exports its
    symbols). A static main linked against a `.so` has a `dylink.0` that only lists what it
    NEEDs: "static main (NEEDED libx.so)" (`linker.main_shape` says how it is told apart).
    """
    if module.dylink is None:
        return KIND_STATIC_MAIN
    if not any(module.export_named(name) for name in ENTRY_POINTS):
        return KIND_SIDE
    if main_shape(module) == MAIN_STATIC_NEEDED:
        return KIND_STATIC_MAIN_NEEDED.format(", ".join(module.dylink.needed) or "nothing")
    return KIND_PIE_MAIN


def import_group(module_name: str) -> str:
    if module_name in ("env", "GOT.mem", "GOT.func"):
        return module_name
    if module_name in WASI_MODULES:
        return "WASI"
    if module_name in WASIX_MODULES:
        return "WASIX"
    return "other"


def type_text(t: FuncType | TableType | MemoryType | GlobalType | TagType) -> str:
    if isinstance(t, FuncType):
        return str(t)
    if isinstance(t, GlobalType):
        return f"{'mut ' if t.mutable else ''}{t.value}"
    if isinstance(t, TagType):
        return str(t.func_type)  # the kind, printed beside it, already says "tag"
    limits = t.limits
    prefix = f"{t.element} " if isinstance(t, TableType) else ""
    maximum = "" if limits.maximum is None else f"..{limits.maximum}"
    extras = "".join([" shared" if limits.shared else "", " i64" if limits.is64 else ""])
    return f"{prefix}{limits.minimum}{maximum}{extras}"


def _limits_dict(t: MemoryType | TableType) -> dict[str, Any]:
    return {"minimum": t.limits.minimum, "maximum": t.limits.maximum,
            "shared": t.limits.shared, "is64": t.limits.is64}


def _import_entry(module: WasmModule, imp: Import) -> dict[str, Any]:
    entry: dict[str, Any] = {"module": imp.module, "name": imp.name, "kind": imp.kind,
                             "type": type_text(imp.type)}
    if module.dylink and (imp.module, imp.name) in module.dylink.import_flags:
        entry["flags"] = flag_names(module.dylink.import_flags[(imp.module, imp.name)])
    elif module.dylink and ("env", imp.name) in module.dylink.import_flags:
        entry["flags"] = flag_names(module.dylink.import_flags[("env", imp.name)])
    if import_group(imp.module) in ("WASI", "WASIX", "other"):  # what the runtime provides
        func_type = imp.type if isinstance(imp.type, FuncType) else None
        entry["abi"] = hostabi.status(imp.module, imp.name, func_type)
    return entry


def _export_entry(module: WasmModule, export: Export) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": export.name, "kind": export.kind,
                             "type": type_text(module.export_type(export))}
    if module.dylink and export.name in module.dylink.export_flags:
        entry["flags"] = flag_names(module.dylink.export_flags[export.name])
    return entry


def describe(module: WasmModule, path: str) -> dict[str, Any]:
    """A JSON-ready summary of one module."""
    entry = next((name for name in ENTRY_POINTS if module.export_named(name)), None)
    summary: dict[str, Any] = {"path": path, "kind": module_kind(module), "entry": entry}

    memory_imports = [i for i in module.imports if i.kind == "memory"]
    table_imports = [i for i in module.imports if i.kind == "table"]
    memory = memory_imports[0].type if memory_imports else (
        module.memories[0] if module.memories else None)
    table = table_imports[0].type if table_imports else (
        module.tables[0] if module.tables else None)
    assert memory is None or isinstance(memory, MemoryType)
    assert table is None or isinstance(table, TableType)
    summary["memory"] = None if memory is None else {
        "imported": bool(memory_imports), **_limits_dict(memory)}
    summary["table"] = None if table is None else {
        "imported": bool(table_imports), "element": table.element, **_limits_dict(table)}

    dylink = module.dylink
    summary["dylink"] = None if dylink is None else {
        "memory_size": dylink.mem_info.memory_size,
        "memory_alignment": 1 << dylink.mem_info.memory_alignment,
        "table_size": dylink.mem_info.table_size,
        "table_alignment": 1 << dylink.mem_info.table_alignment,
        "needed": list(dylink.needed),
        "runtime_path": list(dylink.runtime_path),
    }

    groups: dict[str, list[dict[str, Any]]] = {group: [] for group in IMPORT_GROUPS}
    for imp in module.imports:
        groups[import_group(imp.module)].append(_import_entry(module, imp))
    summary["imports"] = {group: entries for group, entries in groups.items() if entries}
    summary["exports"] = [_export_entry(module, e) for e in module.exports]
    return summary


def format_text(summary: dict[str, Any]) -> str:
    """A human-readable rendering of `describe`'s output."""
    lines = [f"{summary['path']}: {summary['kind']}"
             + (f", entry {summary['entry']}" if summary["entry"] else "")]
    dylink = summary["dylink"]
    if dylink is not None:
        if summary["kind"] in (KIND_PIE_MAIN, KIND_SIDE):
            lines.append(f"  needs: {dylink['memory_size']} bytes of data "
                         f"(align {dylink['memory_alignment']}), {dylink['table_size']} table "
                         f"slots (align {dylink['table_alignment']})")
        else:  # a static main: its dylink.0 only names its libraries
            lines.append("  layout: its own (data, stack and table are not placed)")
        lines.append(f"  needed: {', '.join(dylink['needed']) or '-'}")
        lines.append(f"  runtime path: {', '.join(dylink['runtime_path']) or '-'}")
    for label in ("memory", "table"):
        info = summary[label]
        if info is None:
            continue
        maximum = "none" if info["maximum"] is None else info["maximum"]
        unit = " pages" if label == "memory" else " slots"
        how = "imported" if info["imported"] else "defined"
        extras = ", shared" if info["shared"] else ""
        lines.append(f"  {label}: {how}, min {info['minimum']}{unit}, max {maximum}{extras}")
    for group, entries in summary["imports"].items():
        lines.append(f"  imports {group} ({len(entries)}):")
        for e in entries:
            flags = f" [{', '.join(e['flags'])}]" if e.get("flags") else ""
            abi = f" ({ABI_MARKS[e['abi']]})" if "abi" in e else ""
            lines.append(f"    {e['module']}.{e['name']}: {e['kind']} {e['type']}{flags}{abi}")
    lines.append(f"  exports ({len(summary['exports'])}):")
    for e in summary["exports"]:
        flags = f" [{', '.join(e['flags'])}]" if e.get("flags") else ""
        lines.append(f"    {e['name']}: {e['kind']} {e['type']}{flags}")
    return "\n".join(lines)
