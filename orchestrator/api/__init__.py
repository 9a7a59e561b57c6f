"""wasmgroup: run dynamically linked, multi-threaded WebAssembly programs, one OS process per
wasm thread. This folder is installed as the top-level `wasmgroup` package (see pyproject's
package-dir); the code lives in `wasmgroup.orchestrator`, `wasmgroup.worker`, `wasmgroup.shared`.

    from wasmgroup import Runtime, run, RunResult
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wasmgroup.orchestrator.runtime import RunResult, Runtime, UsageError, run

__all__ = ["RunResult", "Runtime", "UsageError", "__version__", "run"]


def __getattr__(name: str) -> Any:
    # Imported on first use: every `wasmgroup.*` module (a worker's, the CLI's) is imported
    # through this package, and the runtime pulls in wasmtime and the whole coordinator.
    if name == "__version__":
        from wasmgroup.shared.versions import distribution_version

        value: Any = distribution_version("wasmgroup")
    elif name in __all__:
        from wasmgroup.orchestrator import runtime

        value = getattr(runtime, name)
    else:
        raise AttributeError(f"module 'wasmgroup' has no attribute {name!r}")
    globals()[name] = value
    return value
