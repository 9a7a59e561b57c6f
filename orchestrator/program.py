"""Running one program: the coordinator's side of the linker, driving its instance group.

`Program.run()` lays out and links the main module and its NEEDED tree, applies that plan in
the group (data relocations and constructors included), runs `_start`, and returns a
`RunResult`. The program's dlopen/dlsym reach `Program` through the `LinkService` protocol;
each dlopen is planned by `LinkerState`, applied by the group, and only then committed, so a
failing dlopen (missing library, bad module, type mismatch, trapping constructor) leaves the
linker state as it was and the guest's dlopen returns NULL with the reason in dlerror.

Exit status: the program's own exit code; 134 when it traps; 125 when wasmgroup cannot run it
(bad module, missing import, failed start-up link).
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import wasmtime

from wasmgroup.orchestrator.cache import ModuleCache
from wasmgroup.orchestrator.linker import MAIN_HANDLE, LinkerState
from wasmgroup.orchestrator.locate import GuestFilesystem, Located
from wasmgroup.shared.errors import LinkError, WasmgroupError
from wasmgroup.shared.plan import SymbolAddress
from wasmgroup.shared.wasm import FuncType, WasmModule
from wasmgroup.worker.group import (
    ENGINE_SETTINGS,
    WASM_ERRORS,
    InstanceGroup,
    make_engine_config,
)
from wasmgroup.worker.host.wasix import GuestExit

EXIT_TRAP = 134
EXIT_RUNTIME_ERROR = 125


class ProgramError(WasmgroupError):
    """wasmgroup could not start the program (the message says why)."""


@dataclass
class RunResult:
    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""
    error: str | None = None  # a trap or start-up failure, as one readable message


@dataclass
class ProgramOptions:
    args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    dirs: Sequence[str] = ()  # HOST::GUEST specs
    lib_paths: Sequence[str] = ()  # host directories searched for libraries last
    cwd: str = "/"
    capture_output: bool = False  # else the program writes to this process's stdout/stderr
    cache_dir: Path | None = None


class Program:
    def __init__(self, path: str, options: ProgramOptions) -> None:
        self.path = path
        self.options = options
        self.fs = GuestFilesystem.from_specs(options.dirs, options.lib_paths, options.cwd)
        self.engine = wasmtime.Engine(make_engine_config())
        self.cache = ModuleCache(self.engine, ENGINE_SETTINGS, options.cache_dir)
        self._capture_dir: tempfile.TemporaryDirectory[str] | None = None
        lib_path = options.env.get("LD_LIBRARY_PATH", "")
        self.group = InstanceGroup(self.engine, self._wasmtime_module, self, self._wasi_config(),
                                   cwd=self.fs.cwd)
        self.linker = LinkerState(self.fs, self._parsed_module, self.group.grow_memory,
                                  [e for e in lib_path.split(":") if e])

    # ------------------------------------------------------------------ set-up
    def _guest_path_of_main(self) -> str:
        return self.fs.guest_path_of_host(self.path) or posixpath.join(
            self.fs.cwd, Path(self.path).name)

    def _wasi_config(self) -> wasmtime.WasiConfig:
        wasi = wasmtime.WasiConfig()
        wasi.argv = [self._guest_path_of_main(), *self.options.args]
        wasi.env = list(self.options.env.items())
        for m in self.fs.mappings:
            wasi.preopen_dir(m.host, m.guest)
        if self.options.capture_output:
            # Files, not wasmtime's custom-output callbacks: those run on a runtime thread
            # and abort the process if it is still writing while Python shuts down.
            self._capture_dir = tempfile.TemporaryDirectory(prefix="wasmgroup-out-")
            wasi.stdout_file = os.path.join(self._capture_dir.name, "stdout")
            wasi.stderr_file = os.path.join(self._capture_dir.name, "stderr")
        else:
            wasi.inherit_stdout()
            wasi.inherit_stderr()
        wasi.inherit_stdin()
        return wasi

    def _wasmtime_module(self, host_path: str) -> wasmtime.Module:
        return self.cache.load(host_path).module

    def _parsed_module(self, found: Located) -> WasmModule:
        return self.cache.load(found.host_path).parsed

    # ------------------------------------------------------------------ running
    def start(self) -> None:
        """Link the main module and its NEEDED tree, constructors included."""
        main = self.cache.load(self.path)
        memory_imports = [i for i in main.parsed.imports if i.kind == "memory"]
        limits = getattr(memory_imports[0].type, "limits", None) if memory_imports else None
        pages = self.linker.layout_main(main.parsed, limits.minimum if limits else 0)
        self.group.create_memory_and_table(main.module, pages, self.linker.table_length,
                                           self.linker.stack_high)
        pending = self.linker.plan_main(main.parsed, self._guest_path_of_main(), self.path)
        try:
            self.group.apply_load(pending.plan, initialise=True)
        except LinkError:
            self.linker.abort(pending)
            raise
        self.linker.commit(pending)

    def run(self) -> RunResult:
        try:
            self.start()
        except (LinkError, ProgramError, OSError) as err:
            message = (f"{err.filename or self.path}: {err.strerror}"
                       if isinstance(err, OSError) else str(err))
            return self._result(EXIT_RUNTIME_ERROR, f"cannot start: {message}")
        except GuestExit as exit_:
            return self._result(exit_.code)
        except wasmtime.ExitTrap as exit_trap:
            return self._result(exit_trap.code)
        if self.linker.modules[MAIN_HANDLE].module.export_named("_start") is None:
            return self._result(0)  # a reactor: linking and _initialize were the whole job
        try:
            self.group.call_entry("_start")
        except GuestExit as exit_:
            return self._result(exit_.code)
        except wasmtime.ExitTrap as exit_trap:
            return self._result(exit_trap.code)
        except WASM_ERRORS as trap:
            return self._result(EXIT_TRAP, f"the program trapped: {str(trap).strip()}")
        except LinkError as err:  # a lazy stub whose function no module exports
            return self._result(EXIT_TRAP, f"the program trapped: {err}")
        return self._result(0)

    def _result(self, code: int, error: str | None = None) -> RunResult:
        stdout = stderr = b""
        if self._capture_dir is not None:
            out_dir = Path(self._capture_dir.name)
            stdout = (out_dir / "stdout").read_bytes() if (out_dir / "stdout").exists() else b""
            stderr = (out_dir / "stderr").read_bytes() if (out_dir / "stderr").exists() else b""
            self._capture_dir.cleanup()
            self._capture_dir = None
        return RunResult(code, stdout, stderr, error)

    # ------------------------------------------------------------------ LinkService
    def dlopen(self, name: str, ld_library_path: list[str] | None) -> int:
        outcome = self.linker.plan_load(name, ld_library_path)
        if isinstance(outcome, int):
            return outcome
        try:
            self.group.apply_load(outcome.plan, initialise=True)
        except LinkError:
            self.linker.abort(outcome)
            raise
        self.linker.commit(outcome)
        return outcome.names[name]

    def dlsym(self, handle: int, name: str) -> SymbolAddress:
        address, assignment = self.linker.dlsym(handle, name)
        if assignment is not None:
            self.group.apply_slot(assignment)
        return address

    def is_side_module(self, handle: int) -> bool:
        return handle != MAIN_HANDLE and handle in self.linker.modules

    def resolve_stub(self, importer: int, name: str, func_type: FuncType) -> tuple[int, str]:
        return self.linker.resolve_stub(importer, name, func_type)


def run_program(path: str, args: Sequence[str] = (), *, env: dict[str, str] | None = None,
                dirs: Sequence[str] = (), lib_paths: Sequence[str] = (), cwd: str = "/",
                capture_output: bool = True, cache_dir: Path | None = None) -> RunResult:
    """Run a WebAssembly program to completion and return its exit code and output.

    `dirs` are `HOST::GUEST` directory mappings (the guest sees nothing else); `lib_paths` are
    host directories searched for libraries after the guest's own library directories. With
    `capture_output` (the default) the program's stdout and stderr come back in the result.
    """
    options = ProgramOptions(args=args, env=dict(env or {}), dirs=dirs, lib_paths=lib_paths,
                             cwd=cwd, capture_output=capture_output, cache_dir=cache_dir)
    return Program(path, options).run()
