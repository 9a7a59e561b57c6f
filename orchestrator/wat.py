"""WebAssembly text (`.wat`) where a binary module is expected, as wasmtime accepts it.

A file is read as text when its name ends in `.wat` or it does not start with the binary
magic but with `(` or a comment; anything else is left for the binary reader to reject.
"""

from __future__ import annotations

from wasmgroup.shared.errors import LinkError
from wasmgroup.shared.wasm import MAGIC

TEXT_STARTS = (b"(", b";;", b"(;")


def wasm_bytes(data: bytes, source: str) -> bytes:
    """The binary module in `data` (converted from text if it is text)."""
    if data.startswith(MAGIC):
        return data
    if not (source.endswith(".wat") or data.lstrip().startswith(TEXT_STARTS)):
        return data
    import wasmtime  # only for text: a binary module needs no wasmtime here

    try:
        text = data.decode("utf-8")
        return bytes(wasmtime.wat2wasm(text))
    except (UnicodeDecodeError, wasmtime.WasmtimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LinkError(f"{source}: invalid WebAssembly text: {first}") from None
