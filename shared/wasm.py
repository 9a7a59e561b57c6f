"""A reader for the WebAssembly binary format: the parts a dynamic linker needs.

`parse_module(data)` returns a `WasmModule` with the module's types, imports, defined functions,
tables, memories, globals, exports, start function and section list, plus its `dylink.0`
metadata when present. Function bodies are located, not decoded.

Every malformed input raises `WasmFormatError` with the byte offset and what was expected there:
a truncated file, a wrong magic or version, an overlong or oversized LEB128, a section or
subsection that overruns its parent, trailing bytes in a section, two `dylink.0` sections, a
vector count its section cannot hold, a type, export or start index outside its index space.
So every index a `WasmModule` holds can be looked up. (Full validation is wasmtime's job.)
"""

from __future__ import annotations

from typing import Literal

from wasmgroup.shared.binary import Reader
from wasmgroup.shared.dylink import DYLINK_SECTION, DylinkInfo, parse_dylink
from wasmgroup.shared.errors import WasmFormatError
from wasmgroup.shared.records import field, record

MAGIC = b"\x00asm"
VERSION = b"\x01\x00\x00\x00"

# Section ids of the core format (and the exception-handling proposal's tag section).
SEC_CUSTOM, SEC_TYPE, SEC_IMPORT, SEC_FUNCTION, SEC_TABLE, SEC_MEMORY = 0, 1, 2, 3, 4, 5
SEC_GLOBAL, SEC_EXPORT, SEC_START, SEC_ELEMENT, SEC_CODE, SEC_DATA = 6, 7, 8, 9, 10, 11
SEC_DATACOUNT, SEC_TAG = 12, 13

SECTION_NAMES = {
    SEC_CUSTOM: "custom", SEC_TYPE: "type", SEC_IMPORT: "import", SEC_FUNCTION: "function",
    SEC_TABLE: "table", SEC_MEMORY: "memory", SEC_GLOBAL: "global", SEC_EXPORT: "export",
    SEC_START: "start", SEC_ELEMENT: "element", SEC_CODE: "code", SEC_DATA: "data",
    SEC_DATACOUNT: "datacount", SEC_TAG: "tag",
}

VALUE_TYPES = {
    0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64", 0x7B: "v128",
    0x70: "funcref", 0x6F: "externref", 0x69: "exnref",
}

ExternKind = Literal["func", "table", "memory", "global", "tag"]
EXTERN_KINDS: dict[int, ExternKind] = {0: "func", 1: "table", 2: "memory", 3: "global", 4: "tag"}


@record
class FuncType:
    params: tuple[str, ...]
    results: tuple[str, ...]

    def __str__(self) -> str:
        return f"({', '.join(self.params)}) -> ({', '.join(self.results)})"


@record
class Limits:
    minimum: int
    maximum: int | None
    shared: bool = False
    is64: bool = False


@record
class TableType:
    element: str
    limits: Limits


@record
class MemoryType:
    limits: Limits


@record
class GlobalType:
    value: str
    mutable: bool


@record
class TagType:
    func_type: FuncType


ExternType = FuncType | TableType | MemoryType | GlobalType | TagType


@record
class Import:
    module: str
    name: str
    kind: ExternKind
    type: ExternType


@record
class Export:
    name: str
    kind: ExternKind
    index: int


@record
class Global:
    type: GlobalType
    # The constant value of a plain `i32.const`/`i64.const` initialiser, else None.
    init_value: int | None


@record
class Section:
    id: int
    offset: int  # of the section's payload
    size: int
    name: str = ""  # custom sections only

    @property
    def kind(self) -> str:
        return SECTION_NAMES.get(self.id, f"unknown({self.id})")


@record(frozen=False)
class WasmModule:
    types: list[FuncType] = field(default_factory=list)
    imports: list[Import] = field(default_factory=list)
    function_type_indices: list[int] = field(default_factory=list)  # defined functions only
    tables: list[TableType] = field(default_factory=list)
    memories: list[MemoryType] = field(default_factory=list)
    globals: list[Global] = field(default_factory=list)
    tags: list[TagType] = field(default_factory=list)
    exports: list[Export] = field(default_factory=list)
    start: int | None = None
    sections: list[Section] = field(default_factory=list)
    dylink: DylinkInfo | None = None

    def imports_of(self, kind: ExternKind) -> list[Import]:
        return [imp for imp in self.imports if imp.kind == kind]

    def space_size(self, kind: ExternKind) -> int:
        """How many items the module's `kind` index space holds (imports first)."""
        defined = {"func": len(self.function_type_indices), "table": len(self.tables),
                   "memory": len(self.memories), "global": len(self.globals),
                   "tag": len(self.tags)}
        return len(self.imports_of(kind)) + defined[kind]

    def function_type(self, func_index: int) -> FuncType:
        """The type of a function in the module's function index space (imports first)."""
        imported = self.imports_of("func")
        if func_index < len(imported):
            t = imported[func_index].type
            assert isinstance(t, FuncType)
            return t
        return self.types[self.function_type_indices[func_index - len(imported)]]

    def global_type(self, global_index: int) -> GlobalType:
        imported = self.imports_of("global")
        if global_index < len(imported):
            t = imported[global_index].type
            assert isinstance(t, GlobalType)
            return t
        return self.globals[global_index - len(imported)].type

    def export_type(self, export: Export) -> ExternType:
        """The type of what an export refers to."""
        if export.kind == "func":
            return self.function_type(export.index)
        if export.kind == "global":
            return self.global_type(export.index)
        spaces: dict[str, list[ExternType]] = {
            "table": [*(i.type for i in self.imports_of("table")), *self.tables],
            "memory": [*(i.type for i in self.imports_of("memory")), *self.memories],
            "tag": [*(i.type for i in self.imports_of("tag")), *self.tags],
        }
        return spaces[export.kind][export.index]

    def export_named(self, name: str) -> Export | None:
        for export in self.exports:
            if export.name == name:
                return export
        return None


def _value_type(r: Reader) -> str:
    offset = r.pos
    code = r.byte("a value type")
    try:
        return VALUE_TYPES[code]
    except KeyError:
        raise r.fail(f"a value type, found {code:#04x}", offset) from None


def _limits(r: Reader, what: str) -> Limits:
    offset = r.pos
    flags = r.byte(f"{what} limits flags")
    if flags & ~0x07:
        raise r.fail(f"{what} limits flags 0..7, found {flags:#04x}", offset)
    is64 = bool(flags & 0x04)
    read = r.u64 if is64 else r.u32
    minimum = read(f"{what} minimum")
    maximum = read(f"{what} maximum") if flags & 0x01 else None
    return Limits(minimum, maximum, shared=bool(flags & 0x02), is64=is64)


def _table_type(r: Reader) -> TableType:
    element = _value_type(r)
    return TableType(element, _limits(r, "table"))


def _global_type(r: Reader) -> GlobalType:
    value = _value_type(r)
    offset = r.pos
    mut = r.byte("global mutability")
    if mut > 1:
        raise r.fail(f"global mutability 0 or 1, found {mut}", offset)
    return GlobalType(value, bool(mut))


def _tag_type(r: Reader, types: list[FuncType]) -> TagType:
    offset = r.pos
    attribute = r.byte("tag attribute")
    if attribute != 0:
        raise r.fail(f"tag attribute 0, found {attribute}", offset)
    return TagType(_type_at(r, types))


def _type_at(r: Reader, types: list[FuncType]) -> FuncType:
    return types[_type_index(r, types)]


def _type_index(r: Reader, types: list[FuncType]) -> int:
    offset = r.pos
    index = r.u32("type index")
    if index >= len(types):
        raise r.fail(f"a type index below {len(types)}, found {index}", offset)
    return index


def _const_expr(r: Reader) -> int | None:
    """Skip a constant expression; return its value when it is a single integer constant."""
    value: int | None = None
    count = 0
    while True:
        offset = r.pos
        op = r.byte("a constant-expression opcode")
        if op == 0x0B:
            return value if count == 1 else None
        count += 1
        if op == 0x41:
            value = r.sleb(32, "i32.const immediate")
        elif op == 0x42:
            value = r.sleb(64, "i64.const immediate")
        elif op == 0x43:
            r.bytes(4, "f32.const immediate")
        elif op == 0x44:
            r.bytes(8, "f64.const immediate")
        elif op in (0x23, 0xD2):  # global.get, ref.func
            r.u32("index")
        elif op == 0xD0:  # ref.null
            r.byte("heap type")
        elif op in (0x6A, 0x6B, 0x6C, 0x7C, 0x7D, 0x7E):  # extended-const arithmetic
            pass
        elif op == 0xFD:  # v128.const
            sub = r.u32("SIMD opcode")
            if sub != 12:
                raise r.fail("v128.const in a constant expression", offset)
            r.bytes(16, "v128.const immediate")
        else:
            raise r.fail(f"a constant-expression opcode, found {op:#04x}", offset)


def _read_types(r: Reader, module: WasmModule) -> None:
    for _ in range(r.count("type count", 3)):
        offset = r.pos
        form = r.byte("a type form")
        if form != 0x60:
            raise r.fail(f"function type form 0x60, found {form:#04x}", offset)
        params = tuple(_value_type(r) for _ in range(r.count("parameter count")))
        results = tuple(_value_type(r) for _ in range(r.count("result count")))
        module.types.append(FuncType(params, results))


def _read_imports(r: Reader, module: WasmModule) -> None:
    for _ in range(r.count("import count", 4)):
        mod = r.name("import module name")
        name = r.name("import field name")
        offset = r.pos
        kind_code = r.byte("an import kind")
        kind = EXTERN_KINDS.get(kind_code)
        extern_type: ExternType
        if kind == "func":
            extern_type = _type_at(r, module.types)
        elif kind == "table":
            extern_type = _table_type(r)
        elif kind == "memory":
            extern_type = MemoryType(_limits(r, "memory"))
        elif kind == "global":
            extern_type = _global_type(r)
        elif kind == "tag":
            extern_type = _tag_type(r, module.types)
        else:
            raise r.fail(f"an import kind 0..4, found {kind_code:#04x}", offset)
        module.imports.append(Import(mod, name, kind, extern_type))


def _read_exports(r: Reader, module: WasmModule) -> None:
    seen: set[str] = set()
    sizes = {kind: module.space_size(kind) for kind in EXTERN_KINDS.values()}
    for _ in range(r.count("export count", 3)):
        offset = r.pos
        name = r.name("export name")
        if name in seen:
            raise r.fail(f"unique export names, found {name!r} twice", offset)
        seen.add(name)
        kind_offset = r.pos
        kind_code = r.byte("an export kind")
        kind = EXTERN_KINDS.get(kind_code)
        if kind is None:
            raise r.fail(f"an export kind 0..4, found {kind_code:#04x}", kind_offset)
        index_offset = r.pos
        index = r.u32("export index")
        if index >= sizes[kind]:
            raise r.fail(f"an index below {sizes[kind]} for {kind} export "
                         f"{name!r}, found {index}", index_offset)
        module.exports.append(Export(name, kind, index))


def _read_section(sec_id: int, r: Reader, module: WasmModule) -> None:
    if sec_id == SEC_TYPE:
        _read_types(r, module)
    elif sec_id == SEC_IMPORT:
        _read_imports(r, module)
    elif sec_id == SEC_FUNCTION:
        module.function_type_indices = [
            _type_index(r, module.types) for _ in range(r.count("function count"))]
    elif sec_id == SEC_TABLE:
        module.tables = [_table_type(r) for _ in range(r.count("table count", 3))]
    elif sec_id == SEC_MEMORY:
        count = r.count("memory count", 2)
        module.memories = [MemoryType(_limits(r, "memory")) for _ in range(count)]
    elif sec_id == SEC_GLOBAL:
        for _ in range(r.count("global count", 3)):
            gtype = _global_type(r)
            module.globals.append(Global(gtype, _const_expr(r)))
    elif sec_id == SEC_EXPORT:
        _read_exports(r, module)
    elif sec_id == SEC_START:
        offset = r.pos
        module.start = r.u32("start function index")
        if module.start >= module.space_size("func"):
            raise r.fail(f"a start function index below {module.space_size('func')}, "
                         f"found {module.start}", offset)
    elif sec_id == SEC_TAG:
        module.tags = [_tag_type(r, module.types) for _ in range(r.count("tag count", 2))]
    else:
        # Element, code, data and datacount sections are located but not decoded here.
        r.pos = r.end
    r.expect_end(f"{SECTION_NAMES.get(sec_id, 'unknown')} section")


def parse_module(data: bytes, source: str | None = None) -> WasmModule:
    """Read a wasm binary. Raises `WasmFormatError` (naming `source`) on any malformation."""
    try:
        return _parse(data)
    except WasmFormatError as err:
        raise (err.with_source(source) if source else err) from None


def read_module_file(path: str) -> WasmModule:
    """`parse_module` of a file's bytes, with the path in any error."""
    with open(path, "rb") as f:
        return parse_module(f.read(), source=path)


def _parse(data: bytes) -> WasmModule:
    r = Reader(data)
    if r.end < 4 or data[:4] != MAGIC:
        raise r.fail("the wasm magic \\0asm", 0)
    r.pos = 4
    if data[4:8] != VERSION:
        if r.end < 8:
            raise r.fail("a 4-byte version, found end of input", r.end)
        raise r.fail(f"version 1, found {data[4:8].hex()}", 4)
    r.pos = 8
    module = WasmModule()
    last_id = 0
    while not r.at_end:
        header = r.pos
        sec_id = r.byte("a section id")
        size = r.u32("section size")
        body = r.sub(size, f"{SECTION_NAMES.get(sec_id, 'unknown')} section")
        if sec_id == SEC_CUSTOM:
            name = body.name("custom section name")
            module.sections.append(Section(sec_id, body.pos, body.end - body.pos, name))
            if name == DYLINK_SECTION:
                if module.dylink is not None:
                    raise r.fail("at most one dylink.0 section, found a second", header)
                module.dylink = parse_dylink(body)
            continue
        if sec_id not in SECTION_NAMES:
            raise r.fail(f"a known section id, found {sec_id}", header)
        # Sections must come once each, in order (datacount before code, tag after memory).
        order = {SEC_DATACOUNT: 9.5, SEC_TAG: 5.5}
        rank = order.get(sec_id, sec_id)
        if rank <= order.get(last_id, last_id) and last_id != 0:
            raise r.fail(f"sections in order, found {SECTION_NAMES[sec_id]} after "
                         f"{SECTION_NAMES[last_id]}", header)
        last_id = sec_id
        module.sections.append(Section(sec_id, body.pos, size))
        _read_section(sec_id, body, module)
    return module
