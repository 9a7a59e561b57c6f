"""The public Python API (`from wasmgroup import Runtime, run, RunResult`): one error model
(a failure to run a program is a RunResult with status 125 and a one-line error; only misuse
raises UsageError), stdin, timeouts, many programs at once."""

from __future__ import annotations

from pathlib import Path

import pytest

import wasmgroup
from wasmgroup import RunResult, Runtime, UsageError


def test_top_level_names() -> None:
    assert wasmgroup.__version__
    assert {"Runtime", "run", "RunResult", "UsageError"} <= set(wasmgroup.__all__)


def test_run_echoes_stdin_bytes(guests: Path) -> None:
    result = wasmgroup.run(guests / "cli" / "probe.wasm", ["cat"], stdin=b"abc\n" * 1000)
    assert (result.exit_code, result.error) == (0, None)
    assert result.stdout == b"abc\n" * 1000
    assert result.stderr == b"read 4000 bytes\n"
    assert result.wall_s > 0 and not result.timed_out


def test_stdin_from_a_file_and_empty_by_default(guests: Path, tmp_path: Path) -> None:
    data = tmp_path / "in.txt"
    data.write_bytes(b"from a file")
    with Runtime(workers=2) as runtime:
        from_file = runtime.submit(guests / "cli" / "probe.wasm", ["cat"], stdin=str(data))
        empty = runtime.submit(guests / "cli" / "probe.wasm", ["cat"])
        assert from_file.result().stdout == b"from a file"
        assert empty.result().stderr == b"read 0 bytes\n"


@pytest.mark.parametrize("program, options, error", [
    ("missing.wasm", {}, "missing.wasm: No such file or directory"),
    (__file__, {}, "expected the wasm magic"),
    ("probe", {"dirs": ["/nonexistent-dir::/x"]}, "is not a directory"),
])
def test_every_failure_to_run_is_a_result(guests: Path, tmp_path: Path, program: str,
                                          options: dict[str, object], error: str) -> None:
    path = guests / "cli" / "probe.wasm" if program == "probe" else tmp_path / program \
        if program == "missing.wasm" else Path(program)
    result = wasmgroup.run(path, ["env"], **options)
    assert isinstance(result, RunResult)
    assert result.exit_code == 125
    assert result.error is not None and error in result.error and "\n" not in result.error


def test_timeout_is_reported(guests: Path) -> None:
    result = wasmgroup.run(guests / "cli" / "probe.wasm", ["spin"], timeout=0.5)
    assert result.exit_code == 124 and result.timed_out
    assert result.stdout == b"spinning\n"


@pytest.mark.parametrize("call", [
    lambda rt: rt.run(42),
    lambda rt: rt.run("p.wasm", "not-a-list"),
    lambda rt: rt.run("p.wasm", [], no_such_option=1),
    lambda rt: rt.run("p.wasm", [], env={"A": 1}),
    lambda rt: rt.run("p.wasm", [], timeout=-1),
    lambda rt: rt.run("p.wasm", [], dirs="a::b"),
    lambda rt: rt.run("p.wasm", [], max_threads=0),
    lambda rt: rt.run("p.wasm", [], max_threads=True),
])
def test_misuse_raises_usage_error(call: object) -> None:
    with Runtime(workers=1) as runtime, pytest.raises(UsageError):
        call(runtime)  # type: ignore[operator]


def test_closed_runtime_refuses_work(guests: Path) -> None:
    runtime = Runtime(workers=1)
    runtime.close()
    with pytest.raises(UsageError, match="closed"):
        runtime.submit(guests / "cli" / "probe.wasm")
    with pytest.raises(UsageError):
        Runtime(workers=0)


def test_many_programs_at_once(guests: Path) -> None:
    with Runtime(workers=2) as runtime:
        futures = [runtime.submit(guests / "cli" / "probe.wasm", ["env", f"N{i}"],
                                  env={f"N{i}": str(i)}) for i in range(6)]
        for i, future in enumerate(futures):
            assert future.result().stdout == f"N{i}={i}\n".encode()


def test_max_threads_through_a_runtime(guests: Path) -> None:
    """The live-thread cap as a run option: the spawn beyond gets EAGAIN, the program goes on,
    and the runtime's workers serve the next program."""
    with Runtime(workers=2) as runtime:
        capped = runtime.run(guests / "threads" / "spawn_until_refused.wasm", max_threads=3)
        assert (capped.exit_code, capped.error) == (0, None)
        assert capped.stdout == b"created 2 threads, then: Resource temporarily unavailable\n"
        after = runtime.run(guests / "threads" / "spawn_until_refused.wasm", ["4"])
        assert after.stdout == b"created 4 threads, then: stopped\n"
