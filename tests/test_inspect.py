"""`wasmgroup inspect` on every built guest program, against what the C sources declare."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from wasmgroup.orchestrator.inspect import KIND_PIE_MAIN, KIND_SIDE, KIND_STATIC_MAIN

WASMGROUP = [sys.executable, "-m", "wasmgroup.orchestrator.cli"]


def inspect_json(*paths: Path) -> list[dict[str, Any]]:
    out = subprocess.run([*WASMGROUP, "inspect", "--json", *map(str, paths)],
                         capture_output=True, text=True, check=True)
    result: list[dict[str, Any]] = json.loads(out.stdout)
    return result


def names(summary: dict[str, Any], group: str) -> set[str]:
    return {e["name"] for e in summary["imports"].get(group, [])}


def flags_of(summary: dict[str, Any], export: str) -> list[str]:
    entry = next(e for e in summary["exports"] if e["name"] == export)
    flags: list[str] = entry.get("flags", [])
    return flags


def test_every_built_program_is_inspectable(guests: Path) -> None:
    files = sorted(p for p in guests.rglob("*") if p.suffix in (".wasm", ".so")
                   and p.name != "libbroken.so")
    assert len(files) >= 15
    kinds = {Path(s["path"]).name: s["kind"] for s in inspect_json(*files)}
    assert kinds["main.wasm"] == KIND_PIE_MAIN
    for static in ("host.wasm", "pthreads.wasm", "mt_host.wasm", "raw_atomics.wasm"):
        assert kinds[static] == KIND_STATIC_MAIN
    for side in ("libfoo.so", "libbar.so", "libbaz.so", "libqux.so", "libtls.so",
                 "libhello.so", "libmath.so", "libmtplug.so"):
        assert kinds[side] == KIND_SIDE


def test_side_module_relocations_and_flags(guests: Path) -> None:
    [foo] = inspect_json(guests / "side" / "libfoo.so")
    assert foo["dylink"]["memory_size"] > 0 and foo["dylink"]["table_size"] == 1
    assert {"foo_counter", "foo_callback_ptr", "maybe_missing"} <= names(foo, "GOT.mem")
    assert names(foo, "GOT.func") == {"host_callback"}
    assert "host_callback" in names(foo, "env")
    assert "__wasm_apply_data_relocs" in {e["name"] for e in foo["exports"]}
    weak = next(e for e in foo["imports"]["GOT.mem"] if e["name"] == "maybe_missing")
    assert "weak" in weak["flags"]
    assert "hidden" in flags_of(foo, "foo_hidden")


def test_needed_and_runtime_path(guests: Path) -> None:
    bar, baz, main = inspect_json(guests / "side" / "libbar.so", guests / "rpath" / "libbaz.so",
                                  guests / "pie" / "main.wasm")
    assert bar["dylink"]["needed"] == ["libfoo.so"]
    assert baz["dylink"]["needed"] == ["libqux.so"]
    assert baz["dylink"]["runtime_path"] == ["$ORIGIN/lib"]
    assert main["dylink"]["needed"] == ["libbar.so"]
    assert main["entry"] == "_start"
    assert {"dlopen", "dlsym"} <= names(main, "WASIX")


def test_tls_side_module(guests: Path) -> None:
    [tls] = inspect_json(guests / "tls" / "libtls.so")
    assert "tls" in flags_of(tls, "tls_counter")
    assert tls["memory"]["shared"] is True


def test_wasix_mains_import_shared_memory_and_threads(guests: Path) -> None:
    pthreads, host = inspect_json(guests / "threads" / "pthreads.wasm",
                                  guests / "plugins" / "host.wasm")
    assert pthreads["memory"]["imported"] and pthreads["memory"]["shared"]
    assert "thread-spawn" in names(pthreads, "WASI")  # wasi-threads is a WASI proposal
    assert {"futex_wait", "futex_wake", "proc_exit2"} <= names(pthreads, "WASIX")
    assert host["table"]["imported"] is True
    exported = {e["name"] for e in host["exports"]}
    assert {"malloc", "free", "host_add", "__stack_pointer"} <= exported


def test_text_output(guests: Path) -> None:
    out = subprocess.run([*WASMGROUP, "inspect", str(guests / "side" / "libbar.so")],
                         capture_output=True, text=True, check=True).stdout
    assert "side module" in out and "needed: libfoo.so" in out
    assert "imports GOT.func" in out


@pytest.mark.parametrize("content", [b"", b"not wasm at all", b"\x00asm\x01\x00\x00\x00\x01\x05"])
def test_not_wasm_is_one_line_and_status_2(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(content)
    proc = subprocess.run([*WASMGROUP, "inspect", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.wasm" in lines[0] and "offset" in lines[0]


def test_missing_file_status_2(tmp_path: Path) -> None:
    proc = subprocess.run([*WASMGROUP, "inspect", str(tmp_path / "nope.wasm")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "No such file" in proc.stderr
