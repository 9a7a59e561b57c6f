"""The command line as users coming from wasmtime and wasmer type it: every option through the
real `wasmgroup` process, real guests and workers; after each run no process of that run is
left (found by a marker in their environment) and nothing in /dev/shm."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from leaks import processes_marked

from wasmgroup.orchestrator.cache import WASMGROUP_VERSION, WASMTIME_VERSION

WASMGROUP = [sys.executable, "-m", "wasmgroup.orchestrator.cli"]
HELLO_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from wat\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 15))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


def wasmgroup(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 120,
              prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run the CLI; afterwards, assert that nothing it started is left."""
    mark = uuid.uuid4().hex
    proc = subprocess.run([*prefix, *WASMGROUP, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, **(env or {}), "WASMGROUP_TEST_MARK": mark})
    deadline = time.monotonic() + 10
    while processes_marked(mark) and time.monotonic() < deadline:
        time.sleep(0.1)  # workers leave when the coordinator's sockets close
    assert processes_marked(mark) == []
    assert not [n for n in os.listdir("/dev/shm") if "wasmgroup" in n]
    return proc


@pytest.fixture(scope="module")
def probe(guests: Path) -> Path:
    return guests / "cli" / "probe.wasm"


def usage_error(proc: subprocess.CompletedProcess[str], command: str = "run") -> str:
    """A usage error: status 2, the subcommand's own usage, then one line; that line."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith(f"usage: wasmgroup {command} ")
    assert lines[-1].startswith(f"wasmgroup {command}: error: ")
    return lines[-1]


def test_version_everywhere(probe: Path, tmp_path: Path) -> None:
    proc = wasmgroup("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"wasmgroup {WASMGROUP_VERSION} (wasmtime {WASMTIME_VERSION})"
    summary = json.loads(wasmgroup("inspect", "--json", probe).stdout)
    assert summary[0]["wasmgroup"] == WASMGROUP_VERSION
    trace = tmp_path / "t.jsonl"
    assert wasmgroup("--trace", trace, probe, "cpus").returncode == 0
    header = json.loads(trace.read_text().splitlines()[0])
    assert header["op"] == "trace" and header["wasmgroup"] == WASMGROUP_VERSION
    assert header["wasmtime"] == WASMTIME_VERSION


def test_a_program_runs_without_the_run_command(probe: Path) -> None:
    for args in (("run", probe), (probe,), ("-q", probe)):
        proc = wasmgroup(*args, "env", "X", env={"X": "host"})
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "X unset\n"  # the host environment is not passed by itself
    # The program's own options after its name are its own, not wasmgroup's.
    proc = wasmgroup(probe, "env", "--timeout")
    assert proc.stdout == "--timeout unset\n"
    assert wasmgroup("run", probe, "--", "env", "A").stdout == "A unset\n"


def test_env_without_a_value_passes_the_hosts(probe: Path) -> None:
    proc = wasmgroup("--env", "FOO", "--env", "BAR=set=here", "--env", "EMPTY=", "--env", "GONE",
                     probe, "env", "FOO", "BAR", "EMPTY", "GONE", env={"FOO": "from host"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["FOO=from host", "BAR=set=here", "EMPTY=",
                                        "GONE unset"]
    assert proc.stderr == "wasmgroup: --env GONE: not set on the host, not passed to the guest\n"
    quiet = wasmgroup("-q", "--env", "GONE", probe, "env", "GONE")
    assert quiet.returncode == 0 and quiet.stderr == ""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "input.txt").write_text("hello\n")
    return root


@pytest.mark.parametrize("option", ["--dir {h}::/", "--mapdir /:{h}", "--mapdir /::{h}",
                                    "--volume {h}:/"])
def test_wasmer_directory_forms(guests: Path, tree: Path, option: str) -> None:
    flag, value = option.split(" ")
    proc = wasmgroup(flag, value.format(h=tree), guests / "libc" / "posix.wasm")
    assert proc.returncode == 0, proc.stderr
    assert "read /input.txt: hello" in proc.stdout.splitlines()


def test_one_colon_dir_says_what_was_meant(probe: Path, tree: Path) -> None:
    line = usage_error(wasmgroup("--dir", f"{tree}:/data", probe))
    assert line == (f"wasmgroup run: error: argument --dir: '{tree}:/data' is not a directory "
                    f"(wasmgroup maps with two colons: did you mean --dir {tree}::/data, or "
                    f"wasmer's --mapdir /data:{tree}?)")


@pytest.mark.parametrize(("args", "message"), [
    (["--pool", "-3"], "argument --pool: -3 is not between 0 and 64"),
    (["--pool", "many"], "argument --pool: 'many' is not a whole number"),
    (["--max-threads", "0"], "argument --max-threads: 0 is not between 1 and 536870911"),
    (["--timeout", "0"], "argument --timeout: '0' must be more than zero"),
    (["--timeout", "soon"], "argument --timeout: 'soon' is not a duration"),
    (["--max-memory", "12"], "argument --max-memory: '12' is less than one wasm page"),
    (["--max-memory", "5Q"], "argument --max-memory: '5Q' is not a size"),
    (["--dir", "/definitely/not/here::/"],
     "argument --dir: '/definitely/not/here' is not a directory"),
    (["--mapdir", "/guest-only"], "argument --mapdir: '/guest-only': expected GUEST:HOST"),
    (["--volume", "nocolon"], "argument --volume: 'nocolon': expected HOST:GUEST"),
    (["--env", "=v"], "argument --env: '=v': expected KEY=VALUE or KEY"),
    (["--lib-path", "/definitely/not/here"],
     "argument --lib-path: '/definitely/not/here' is not a directory"),
    (["--cwd", "relative"], "argument --cwd: 'relative' is not an absolute guest path"),
    (["--cwd", "/nope"], "argument --cwd: '/nope' is not a directory the guest can see"),
    (["--trace", "/definitely/not/here/t.jsonl"],
     "argument --trace: cannot write '/definitely/not/here/t.jsonl'"),
    (["-W", "fuel=10"], "argument -W/-S: 'fuel=10': wasmgroup understands timeout=S, "
                        "max-memory-size=SIZE and threads, shared-memory, bulk-memory"),
    (["-W", "timeout=never"], "argument -W/-S: 'never' is not a duration"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    ([], "the program to run is missing"),
])
def test_every_option_is_checked_with_one_line_naming_it(
        args: list[str], message: str) -> None:
    probe = str(Path(__file__).resolve())  # never reached: options are checked first
    program = [] if not args or args == ["--bogus"] else [probe]
    line = usage_error(wasmgroup("run", *args, *program, *(["x.wasm"] if args == ["--bogus"]
                                                          else [])))
    assert line.startswith(f"wasmgroup run: error: {message}"), line


def test_usage_errors_of_other_commands_show_their_own_usage() -> None:
    usage_error(wasmgroup("cache", "shrink"), "cache")
    usage_error(wasmgroup("inspect"), "inspect")


@pytest.mark.parametrize("mode", ["sleep", "spin"])
def test_timeout_stops_every_thread_with_124(probe: Path, mode: str) -> None:
    started = time.monotonic()
    proc = wasmgroup("--timeout", "1.5s", probe, mode)
    assert proc.returncode == 124
    assert proc.stdout == ("sleeping\n" if mode == "sleep" else "spinning\n")
    assert proc.stderr == "wasmgroup run: timed out after 1.5 s (--timeout): every thread stopped\n"
    assert 1.5 <= time.monotonic() - started < 15


def test_wasmtime_forms_of_the_limits(probe: Path) -> None:
    proc = wasmgroup("-S", "threads", "-W", "threads=y", "-W", "timeout=1s", probe, "sleep")
    assert proc.returncode == 124
    grown = wasmgroup("-W", "max-memory-size=1048576", probe, "grow")
    assert grown.stdout == "grew to 1024 KiB\n"


def test_a_program_that_ends_in_time_keeps_its_status(probe: Path) -> None:
    proc = wasmgroup("--timeout", "60", probe, "cpus")
    assert proc.returncode == 0 and proc.stderr == ""


def test_max_memory_makes_memory_grow_fail(probe: Path) -> None:
    unlimited = wasmgroup(probe, "grow")
    assert unlimited.stdout == "grew to 65536 KiB\n"  # the module's declared maximum
    assert wasmgroup("--max-memory", "8MiB", probe, "grow").stdout == "grew to 8192 KiB\n"
    assert wasmgroup("--max-memory", "200000", probe, "grow").stdout == "grew to 192 KiB\n"
    assert wasmgroup("--max-memory", "8MiB", probe, "malloc").stdout == "malloc: 7 MiB\n"
    too_small = wasmgroup("--max-memory", "64KiB", probe, "cpus")
    assert too_small.returncode == 125
    assert too_small.stderr == ("wasmgroup run: cannot start: the program needs 131072 bytes "
                                "of memory at start, more than --max-memory 65536\n")


def test_max_memory_bounds_a_memory_the_module_defines(tmp_path: Path) -> None:
    """A main with a memory of its own (grown inside wasmtime, not through the coordinator):
    it grows a page at a time until memory.grow fails and exits with its size in pages."""
    wat = tmp_path / "grow.wat"
    wat.write_text("""
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1 100)
  (func (export "_start")
    (loop (br_if 0 (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    (call $exit (memory.size))))
""")
    assert wasmgroup(wat).returncode == 100
    assert wasmgroup("--max-memory", "640KiB", wat).returncode == 10


def test_wat_text_modules_run_and_inspect(tmp_path: Path) -> None:
    wat = tmp_path / "hello.wat"
    wat.write_text(HELLO_WAT)
    proc = wasmgroup(wat)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello from wat\n"
    assert wasmgroup("inspect", wat).stdout.startswith(f"{wat}: static main, entry _start\n")
    broken = tmp_path / "broken.wat"
    broken.write_text("(module (func (export \"_start\") (i32.add)))x")
    failed = wasmgroup(broken)
    assert failed.returncode == 125
    assert failed.stderr.startswith(f"wasmgroup run: cannot start: {broken}: invalid "
                                    "WebAssembly text: ")
    assert len(failed.stderr.splitlines()) == 1


def test_wat_side_module_loads_with_dlopen(guests: Path, tmp_path: Path) -> None:
    """libbaz.so printed as text (its dylink.0 as an annotation) and dlopen'd by that name;
    its RUNPATH dependency is still found."""
    shutil.copytree(guests / "rpath" / "lib", tmp_path / "rpath" / "lib")
    shutil.copytree(guests / "side", tmp_path / "side")
    wasm_tools = Path(sys.executable).parent / "wasm-tools"
    text = subprocess.run([str(wasm_tools), "print", str(guests / "rpath" / "libbaz.so")],
                          capture_output=True, text=True, check=True).stdout
    assert "(@dylink.0" in text
    (tmp_path / "rpath" / "libbaz.wat").write_text(text)
    proc = wasmgroup("--dir", f"{tmp_path}::/", "--env", "LD_LIBRARY_PATH=/side",
                     guests / "pie" / "main.wasm", "/rpath/libbaz.wat")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "baz(5)=122" in proc.stdout.splitlines()


def test_verbose_says_what_the_coordinator_decides(probe: Path) -> None:
    proc = wasmgroup("-v", "--pool", "1", probe, "cpus")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert "wasmgroup: pool of 1 idle workers" in lines
    assert any(line.startswith("wasmgroup: worker ") and " started " in line for line in lines)
    assert any(line.startswith(f"wasmgroup: linked {probe}: modules [1], main thread in worker")
               for line in lines)
    assert wasmgroup("-q", probe, "cpus").stderr == ""
    before = wasmgroup("-v", "run", "--pool", "1", probe, "cpus")
    assert "wasmgroup: pool of 1 idle workers" in before.stderr.splitlines()
    assert wasmgroup(probe, "cpus").stderr == ""


def test_cpu_count_follows_the_affinity_mask(probe: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two usable CPUs to see the difference")
    pinned = wasmgroup("-v", probe, "cpus", prefix=("taskset", "-c", "0"))
    assert pinned.stdout == "cpus: 1\n"
    assert "wasmgroup: pool of 2 idle workers" in pinned.stderr.splitlines()
    free = wasmgroup(probe, "cpus")
    assert free.stdout == f"cpus: {len(os.sched_getaffinity(0))}\n"
