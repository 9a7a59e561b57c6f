"""One hierarchy for every error wasmgroup raises on purpose.

Each message names the module, symbol, path or message at fault, so a user can act on it
without reading a traceback.
"""

from __future__ import annotations


class WasmgroupError(Exception):
    """Base of every error wasmgroup raises deliberately."""


class WasmFormatError(WasmgroupError):
    """Bytes that are not a well-formed WebAssembly module (or `dylink.0` section).

    `offset` is the byte offset in the file where reading failed; `expected` says what the
    reader was looking for there; `source` names the file when it is known.
    """

    def __init__(self, offset: int, expected: str, source: str | None = None) -> None:
        self.offset = offset
        self.expected = expected
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}malformed wasm at offset {offset:#x}: expected {expected}")

    def with_source(self, source: str) -> WasmFormatError:
        """The same error, naming the file it came from."""
        return WasmFormatError(self.offset, self.expected, source)


class LinkError(WasmgroupError):
    """A dynamic-linking failure: a library not found, not a dynamic library, a symbol missing
    or of the wrong type, a constructor that trapped. The linker state is left as before."""


class ModuleNotFound(LinkError):
    """No candidate path held the library; `tried` lists every guest path looked at."""

    def __init__(self, name: str, tried: list[str], requested_by: str | None = None) -> None:
        self.name = name
        self.tried = tried
        by = f" (needed by {requested_by})" if requested_by else ""
        paths = ", ".join(tried) if tried else "no candidate paths"
        super().__init__(f"library {name!r}{by} not found; tried: {paths}")


class UnsupportedCall(WasmgroupError):
    """The guest called a host function that wasmgroup provides only so that the program can
    start, and that has no error return to report it with: the program stops, naming it."""
