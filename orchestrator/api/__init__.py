"""wasmgroup: run dynamically linked, multi-threaded WebAssembly programs, one OS process per
wasm thread. This folder is installed as the top-level `wasmgroup` package (see pyproject's
package-dir); the code lives in `wasmgroup.orchestrator`, `wasmgroup.worker`, `wasmgroup.shared`.

    from wasmgroup import Runtime, run, RunResult
"""

from importlib.metadata import version as _version

from wasmgroup.orchestrator.runtime import RunResult, Runtime, UsageError, run

__version__ = _version("wasmgroup")

__all__ = ["RunResult", "Runtime", "UsageError", "__version__", "run"]
