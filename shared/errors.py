"""One hierarchy for every error wasmgroup raises on purpose.

Each message names the module, symbol, path or message at fault, so a user can act on it
without reading a traceback.
"""

from __future__ import annotations


class WasmgroupError(Exception):
    """Base of every error wasmgroup raises deliberately.

    Its text is one line whatever went into it: control characters that a module or a guest
    put into a name (a newline in a NEEDED entry, an import name, a path) are shown escaped.
    """

    def __str__(self) -> str:
        return printable(super().__str__())


def printable(text: str) -> str:
    """`text` with every non-printable character (newline, tab, other controls, line
    separators) escaped as Python would write it: one line, and idempotent."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


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


class ModuleRefused(WasmgroupError):
    """A module wasmtime or wasmgroup's load-time rewrite refuses: invalid (the validator's
    message, with offsets in the file as given), unsupported, or impossible to compile.
    `reason` is one line; `source` names the file."""

    def __init__(self, reason: str, source: str | None = None) -> None:
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {reason}" if source else reason)

    def with_source(self, source: str) -> ModuleRefused:
        return ModuleRefused(self.reason, source)


def one_line(message: str) -> str:
    """An error text with a `Caused by:` chain (anyhow's format, as wasmtime reports it) as
    one line: each cause after the last, joined by ': ', their `N:` numbering dropped."""
    parts = []
    for line in message.splitlines():
        line = line.strip()
        if not line or line == "Caused by:":
            continue
        number, sep, rest = line.partition(": ")
        parts.append(rest if sep and number.isdigit() else line)
    return ": ".join(parts)


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
