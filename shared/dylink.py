"""The `dylink.0` custom section (WebAssembly tool-conventions, DynamicLinking.md).

A module with exactly one such section is dynamically linked: a side module, or a PIE main.
Subsections: MEM_INFO (data and table needs), NEEDED (libraries to load first), EXPORT_INFO and
IMPORT_INFO (symbol flags: weak, hidden, TLS), RUNTIME_PATH (RUNPATH entries, `$ORIGIN`).
Unknown subsection types are skipped, as in Wasmer; a subsection that overruns the section, or
whose contents do not fill it exactly, raises `WasmFormatError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wasmgroup.shared.binary import Reader

DYLINK_SECTION = "dylink.0"

MEM_INFO, NEEDED, EXPORT_INFO, IMPORT_INFO, RUNTIME_PATH = 1, 2, 3, 4, 5

# Symbol flags (the same bits as the linking section's symbol table).
BINDING_WEAK = 0x01
BINDING_LOCAL = 0x02
VISIBILITY_HIDDEN = 0x04
UNDEFINED = 0x10
EXPORTED = 0x20
EXPLICIT_NAME = 0x40
NO_STRIP = 0x80
TLS = 0x100
ABSOLUTE = 0x200

FLAG_NAMES = {
    BINDING_WEAK: "weak", BINDING_LOCAL: "local", VISIBILITY_HIDDEN: "hidden",
    UNDEFINED: "undefined", EXPORTED: "exported", EXPLICIT_NAME: "explicit-name",
    NO_STRIP: "no-strip", TLS: "tls", ABSOLUTE: "absolute",
}


def flag_names(flags: int) -> list[str]:
    """Readable names of the bits set in a symbol-flags word."""
    names = [name for bit, name in FLAG_NAMES.items() if flags & bit]
    rest = flags & ~sum(FLAG_NAMES)
    if rest:
        names.append(f"{rest:#x}")
    return names


@dataclass(frozen=True)
class MemInfo:
    memory_size: int = 0
    memory_alignment: int = 0  # log2
    table_size: int = 0
    table_alignment: int = 0  # log2


@dataclass
class DylinkInfo:
    mem_info: MemInfo = field(default_factory=MemInfo)
    needed: list[str] = field(default_factory=list)
    export_flags: dict[str, int] = field(default_factory=dict)
    import_flags: dict[tuple[str, str], int] = field(default_factory=dict)
    runtime_path: list[str] = field(default_factory=list)
    skipped_subsections: list[int] = field(default_factory=list)

    def is_weak_import(self, module: str, name: str) -> bool:
        """Weak binding of an import; clang files GOT imports' flags under `env` at times."""
        flags = self.import_flags.get((module, name), self.import_flags.get(("env", name), 0))
        return bool(flags & BINDING_WEAK)

    def is_hidden_export(self, name: str) -> bool:
        return bool(self.export_flags.get(name, 0) & VISIBILITY_HIDDEN)

    def is_tls_export(self, name: str) -> bool:
        return bool(self.export_flags.get(name, 0) & TLS)


def parse_dylink(r: Reader) -> DylinkInfo:
    """Parse the payload of a `dylink.0` section (after its name) up to `r.end`."""
    info = DylinkInfo()
    while not r.at_end:
        sub_type = r.byte("a dylink.0 subsection type")
        size = r.u32("dylink.0 subsection size")
        sub = r.sub(size, f"dylink.0 subsection {sub_type}")
        if sub_type == MEM_INFO:
            info.mem_info = MemInfo(sub.u32("memory size"), sub.u32("memory alignment"),
                                    sub.u32("table size"), sub.u32("table alignment"))
        elif sub_type == NEEDED:
            info.needed.extend(sub.name("needed library") for _ in range(sub.u32("count")))
        elif sub_type == EXPORT_INFO:
            for _ in range(sub.u32("export info count")):
                name = sub.name("export info name")
                info.export_flags[name] = sub.u32("export flags")
        elif sub_type == IMPORT_INFO:
            for _ in range(sub.u32("import info count")):
                module = sub.name("import info module")
                name = sub.name("import info field")
                info.import_flags[(module, name)] = sub.u32("import flags")
        elif sub_type == RUNTIME_PATH:
            info.runtime_path.extend(sub.name("runtime path") for _ in range(sub.u32("count")))
        else:
            info.skipped_subsections.append(sub_type)
            sub.pos = sub.end
        sub.expect_end(f"dylink.0 subsection {sub_type}")
    return info

