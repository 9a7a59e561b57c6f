"""The `dylink.0` custom section (WebAssembly tool-conventions, DynamicLinking.md).

A module with exactly one such section is dynamically linked: a side module, or a PIE main.
Subsections: MEM_INFO (data and table needs), NEEDED (libraries to load first), EXPORT_INFO and
IMPORT_INFO (symbol flags: weak, hidden, TLS), RUNTIME_PATH (RUNPATH entries, `$ORIGIN`).
Unknown subsection types are skipped, as in Wasmer; a subsection that overruns the section, or
whose contents do not fill it exactly, raises `WasmFormatError`.

Every MEM_INFO number sizes an allocation (memory placement, table growth in every worker), so
each is checked against what can be real before anything is allocated: alignments are powers
of two up to the 64 KiB page (log2 <= 16), the data fits a 32-bit memory, the table needs at
most `MAX_TABLE_SLOTS`. A module asking for more is refused, naming the field.
"""

from __future__ import annotations

from wasmgroup.shared.binary import Reader
from wasmgroup.shared.records import field, record

DYLINK_SECTION = "dylink.0"

MEM_INFO, NEEDED, EXPORT_INFO, IMPORT_INFO, RUNTIME_PATH = 1, 2, 3, 4, 5

# Whole pages are the coarsest placement there is: an alignment beyond one page means nothing.
MAX_ALIGN_LOG2 = 16
MEMORY32_BYTES = 1 << 32
# The most function-table slots a program may have (main, side modules, GOT.func and dlsym
# slots together). Every worker holds a copy of the table, so this bounds what one module can
# make every worker allocate; real programs use thousands.
MAX_TABLE_SLOTS = 1 << 20

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


@record
class MemInfo:
    memory_size: int = 0
    memory_alignment: int = 0  # log2
    table_size: int = 0
    table_alignment: int = 0  # log2


@record(frozen=False)
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
            info.mem_info = _mem_info(sub)
        elif sub_type == NEEDED:
            count = sub.count("needed library count", 1)
            info.needed.extend(_path(sub, "needed library") for _ in range(count))
        elif sub_type == EXPORT_INFO:
            for _ in range(sub.count("export info count", 2)):
                name = sub.name("export info name")
                info.export_flags[name] = sub.u32("export flags")
        elif sub_type == IMPORT_INFO:
            for _ in range(sub.count("import info count", 3)):
                module = sub.name("import info module")
                name = sub.name("import info field")
                info.import_flags[(module, name)] = sub.u32("import flags")
        elif sub_type == RUNTIME_PATH:
            count = sub.count("runtime path count", 1)
            info.runtime_path.extend(_path(sub, "runtime path") for _ in range(count))
        else:
            info.skipped_subsections.append(sub_type)
            sub.pos = sub.end
        sub.expect_end(f"dylink.0 subsection {sub_type}")
    return info


def _mem_info(r: Reader) -> MemInfo:
    """MEM_INFO, each field checked before anyone allocates by it; errors point at the field."""
    offsets: dict[str, int] = {}
    values: dict[str, int] = {}
    for what in ("mem_size", "mem_align", "table_size", "table_align"):
        offsets[what] = r.pos
        values[what] = r.u32(f"dylink.0 {what}")
    for what in ("mem_align", "table_align"):
        if values[what] > MAX_ALIGN_LOG2:
            # Say 2^n, never the number itself: 1 << (2^32 - 1) is a 512 MiB integer.
            raise r.fail(f"dylink.0 {what} of at most 2^{MAX_ALIGN_LOG2} (a power of two up "
                         f"to the page size), found 2^{values[what]}", offsets[what])
    alignment = 1 << values["mem_align"]
    if values["mem_size"] > MEMORY32_BYTES - alignment:
        raise r.fail(f"dylink.0 mem_size that fits a 32-bit memory, found {values['mem_size']} "
                     f"bytes aligned to {alignment}", offsets["mem_size"])
    if values["table_size"] > MAX_TABLE_SLOTS:
        raise r.fail(f"dylink.0 table_size of at most {MAX_TABLE_SLOTS} slots, found "
                     f"{values['table_size']}", offsets["table_size"])
    return MemInfo(values["mem_size"], values["mem_align"], values["table_size"],
                   values["table_align"])


def _path(r: Reader, what: str) -> str:
    """A library name or directory: a file path, so not empty and free of NUL bytes."""
    start = r.pos
    path = r.name(what)
    if not path or "\0" in path:
        raise r.fail(f"a dylink.0 {what} that is a path (not empty, no NUL byte), "
                     f"found {path!r}", start)
    return path
