"""The project fuzzing itself: damaged real modules through every part that reads modules.

`mutations()` is a hypothesis strategy over the guest programs of build/guests, damaged by the
mutators of `mutate.py` (stacked 1-3 deep). `check_in_process(data, ...)` runs one example
through the reader, `wasmgroup inspect` (its real `main`, in this process), the compile cache
(validation, load-time rewrite, compile) and the linker's dlopen planning over the real plugin
host, and says how it ended. Each stage must either refuse with a known error whose message is
one line, or accept; anything else (another exception, a traceback, a plan past the limits, a
rewrite that breaks a valid module) fails the example. `run_plugin_host(...)` dlopens a batch
of damaged libraries in one real run of the plugin host (worker processes and all).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import mutate
import wasmtime
from hypothesis import strategies as st

from wasmgroup.orchestrator.cache import ModuleCache
from wasmgroup.orchestrator.cli import main as cli_main
from wasmgroup.orchestrator.linker import PAGE, LinkerState
from wasmgroup.orchestrator.locate import GuestFilesystem
from wasmgroup.orchestrator.program import run_program
from wasmgroup.shared.dylink import MAX_TABLE_SLOTS
from wasmgroup.shared.errors import LinkError, ModuleRefused, WasmFormatError
from wasmgroup.shared.wasm import parse_module

SOURCES = ("side/libfoo.so", "side/libbar.so", "plugins/plugins/libhello.so",
           "plugins/plugins/libmath.so", "tls/libtls.so", "rpath/libbaz.so",
           "pie/main.wasm", "threads/libmtplug.so")
MAX_PAGES = 65536

u32 = st.one_of(st.integers(0, 40), st.sampled_from([16, 17, 31, 32, 2**16, MAX_TABLE_SLOTS,
                                                    MAX_TABLE_SLOTS + 1, 2**31, 2**32 - 1]),
                st.integers(0, 2**32 - 1))
Mutator = Callable[[bytes], bytes]
MUTATORS = [
    st.builds(lambda p, b: lambda d: mutate.bit_flip(d, p, b),
              st.integers(0, 2**20), st.integers(0, 7)),
    st.builds(lambda n: lambda d: mutate.truncate(d, n), st.integers(0, 2**20)),
    st.builds(lambda w, n: lambda d: mutate.section_size(d, w, n), st.integers(0, 30), u32),
    st.builds(lambda w, n: lambda d: mutate.vector_count(d, w, n), st.integers(0, 30), u32),
    st.builds(lambda f, n: lambda d: mutate.mem_info(d, f, n),
              st.sampled_from(mutate.MEM_INFO_FIELDS), u32),
    st.builds(lambda p, v: lambda d: mutate.dylink_byte(d, p, v), st.integers(0, 2**16),
              st.one_of(st.sampled_from([0, 0x2F, 0x2E, 0x80, 0xFF]), st.integers(0, 255))),
]


def apply(data: bytes, mutators: list[Mutator]) -> bytes:
    for m in mutators:
        # An earlier mutation may have left no section structure for this one to change.
        with contextlib.suppress(WasmFormatError):
            data = m(data)
    return data


def mutations(guests: Path, code_flips: bool = True) -> st.SearchStrategy[tuple[str, bytes]]:
    """(source name, damaged bytes). Without `code_flips`, bit flips avoid code sections (a
    flipped branch can make a valid module loop forever, which a real run would wait for)."""
    kinds = MUTATORS if code_flips else MUTATORS[1:]

    @st.composite
    def build(draw: st.DrawFn) -> tuple[str, bytes]:
        source = draw(st.sampled_from(SOURCES))
        data = (guests / source).read_bytes()
        chosen = draw(st.lists(st.one_of(kinds), min_size=1, max_size=3))
        return source, apply(data, chosen)

    return build()


def assert_one_line(text: str) -> None:
    assert text and "\n" not in text.strip(), f"not one line: {text!r}"
    assert "Traceback" not in text


def check_in_process(data: bytes, work: Path, guests: Path, cache: ModuleCache,
                     serial: int) -> str:
    """One damaged module through reader, inspect, cache and linker; the outcome's name."""
    lib_dir = work / "lib"
    lib_dir.mkdir(exist_ok=True)
    name = f"libfuzz{serial}.so"  # a new name each time: the cache keys loaded paths
    path = lib_dir / name
    path.write_bytes(data)

    try:
        parse_module(data, source=name)
    except WasmFormatError as err:
        assert_one_line(str(err))

    for as_json in (False, True):
        out, err_out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err_out):
            status = cli_main(["inspect", *(["--json"] if as_json else []), str(path)])
        if status == 0:
            assert err_out.getvalue() == ""
            if as_json:
                assert json.loads(out.getvalue())[0]["path"] == str(path)
            else:
                assert out.getvalue().startswith(f"{path}: ")
        else:
            assert status == 2 and out.getvalue() in ("", "[]\n")
            assert_one_line(err_out.getvalue())

    try:
        cache.load_file(str(path))
    except ModuleRefused as err:
        assert_one_line(str(err))
        # The original passed validation: the rewrite must keep a valid module valid.
        assert "after wasmgroup's load-time rewrite" not in str(err), str(err)
        return "invalid"
    except (WasmFormatError, LinkError) as err:
        assert_one_line(str(err))
        return "malformed"

    fs = GuestFilesystem.from_specs([f"{guests / 'plugins'}::/", f"{lib_dir}::/lib"])
    pages = [0]

    def grow(n: int) -> int:
        old = pages[0]
        if old + n > MAX_PAGES:
            return -1
        pages[0] += n
        return old

    linker = LinkerState(
        fs, lambda found: cache.load(found.fd, found.host_path, found.guest_path).parsed, grow)
    host = cache.load_file(str(guests / "plugins" / "host.wasm"))[0].parsed
    pages[0] = linker.layout_main(host, 2)
    linker.plan_main(host, "/host.wasm", str(guests / "plugins" / "host.wasm"))
    try:
        pending = linker.plan_load(f"/lib/{name}")
    except LinkError as err:
        assert_one_line(str(err))
        assert str(work) not in str(err)  # guest paths only
        return "refused by the linker"
    assert not isinstance(pending, int)
    assert pending.plan.table_length <= MAX_TABLE_SLOTS
    assert pages[0] <= MAX_PAGES
    for m in pending.plan.modules:
        assert m.memory_base + m.memory_size <= pages[0] * PAGE
    linker.abort(pending)
    return "planned"


def run_plugin_host(guests: Path, plugins: Path) -> tuple[int, list[str]]:
    """One real run of the plugin host over `plugins`: every library is dlopened by the guest
    (in name order) until one that loads traps. Returns the exit status and the `failed ...`
    and `loaded ...` lines; asserts a clean end."""
    result = run_program(str(guests / "plugins" / "host.wasm"), ["/plugins"],
                         dirs=[f"{guests / 'plugins'}::/", f"{plugins}::/plugins"])
    stdout = result.stdout.decode(errors="replace")
    stderr = result.stderr.decode(errors="replace")
    assert "Traceback" not in stdout + stderr
    # 0/1: the host's own status (some plugin loaded or not); 134: a damaged but valid
    # plugin trapped when called, which is one line naming the trap.
    assert result.exit_code in (0, 1, 134), (result.exit_code, result.error, stdout)
    if result.exit_code == 134:
        assert result.error is not None and "trap" in result.error
    else:
        assert result.error is None, result.error
    lines = [line for line in stdout.splitlines() if line.startswith(("failed ", "loaded "))]
    for line in lines:
        assert str(plugins) not in line, line  # the guest sees guest paths only
    return result.exit_code, lines


def start_main(main: Path, guests: Path) -> str:
    """One real start of a (damaged) PIE main: it runs, or is refused in one line (125)."""
    result = run_program(str(main), [], dirs=[f"{guests}::/"], env={"LD_LIBRARY_PATH": "/side"})
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert "Traceback" not in output
    if result.exit_code == 125:
        assert result.error is not None
        assert_one_line(result.error)
        return "refused"
    if result.exit_code == 134:
        assert result.error is not None and "trap" in result.error
        return "trapped"
    assert result.error is None, result.error
    return "ran"


def progress_every() -> int:
    """Print a progress line every this many examples (scripts/fuzz-modules sets it)."""
    return int(os.environ.get("WASMGROUP_FUZZ_PROGRESS", "0"))


def make_cache(directory: Path) -> ModuleCache:
    from wasmgroup.shared.engine import ENGINE_SETTINGS, make_engine_config
    return ModuleCache(wasmtime.Engine(make_engine_config()), ENGINE_SETTINGS, directory)
