"""Seeing link activity from the command line: the --verify-groups summary, --trace (to a
file or stderr, thread events, lock waits), `wasmgroup trace` (summary, Chrome trace-event
JSON, timeline picture), shell completion, and the compile cache commands."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from leaks import processes_marked
from test_cli import WASMGROUP, usage_error, wasmgroup

TOPOLOGY = "dl-concurrent-open-and-spawn"


@pytest.fixture(scope="module")
def traced(guests: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trace of a program that dlopens while 48 threads are spawned."""
    trace = tmp_path_factory.mktemp("trace") / "topology.jsonl"
    threads = guests / "threads"
    proc = wasmgroup("--trace", trace, "--dir", f"{threads}::/", threads / "topology.wasm",
                     TOPOLOGY)
    assert proc.returncode == 0, proc.stderr
    return trace


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_verify_groups_prints_a_summary_at_exit(guests: Path) -> None:
    threads = guests / "threads"
    proc = wasmgroup("--verify-groups", "--dir", f"{threads}::/", threads / "dlopen_spin.wasm")
    assert proc.returncode == 0, proc.stderr
    last = proc.stderr.splitlines()[-1]
    # dlopen_spin: 3 threads spawned (3 checks), 1 dlopen, 2 dlsym'd functions; 4 groups.
    assert last == ("wasmgroup run: verify-groups: 6 checks after link operations, 4 groups, "
                    "all agreed")
    quiet = wasmgroup("-q", "--verify-groups", "--dir", f"{threads}::/",
                      threads / "dlopen_spin.wasm")
    assert quiet.returncode == 0 and "verify-groups" not in quiet.stderr


def test_trace_has_thread_events_and_lock_waits(traced: Path) -> None:
    lines = records(traced)
    starts = [r for r in lines if r["op"] == "thread_start"]
    exits = [r for r in lines if r["op"] == "thread_exit"]
    assert len(starts) == 49
    assert {r["thread"] for r in exits} >= {r["thread"] for r in starts}
    assert all(isinstance(r["pid"], int) and r["pid"] > 0 for r in starts + exits)
    by_thread = {r["thread"]: r["pid"] for r in starts}
    assert all(by_thread.get(r["thread"], r["pid"]) == r["pid"] for r in exits)
    for op in (r for r in lines if r["op"] in ("dlopen", "spawn") and "lock_wait_ms" in r):
        assert op["total_ms"] + 0.01 >= op["lock_wait_ms"] + op.get("plan_ms", 0)
    assert any("lock_wait_ms" in r for r in lines if r["op"] == "dlopen")


def test_trace_to_stderr(guests: Path) -> None:
    proc = wasmgroup("--trace", "-", guests / "cli" / "probe.wasm", "cpus")
    assert proc.returncode == 0
    ops = [json.loads(line)["op"] for line in proc.stderr.splitlines()]
    assert ops == ["trace", "start", "thread_exit"]


def test_a_trace_that_cannot_be_written_stops_alone(guests: Path) -> None:
    """A full disk (/dev/full): one warning, the program runs on and its output is whole."""
    proc = wasmgroup("--trace", "/dev/full", guests / "threads" / "pthreads.wasm")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("cannot write the trace") == 1
    assert "wasmgroup: cannot write the trace ([Errno 28] No space left on device): " \
        "tracing stopped" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.strip(), "the program's output is missing"


def test_a_trace_reader_that_goes_away_stops_nothing(guests: Path) -> None:
    """`--trace - 2>&1 | head -1`: the trace's pipe breaks; the program still ends (it once
    hung: the thread recording a thread's exit died of the broken pipe)."""
    mark = uuid.uuid4().hex
    proc = subprocess.Popen([*WASMGROUP, "--trace", "-", str(guests / "threads" / "pthreads.wasm")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "WASMGROUP_TEST_MARK": mark})
    assert proc.stderr is not None
    proc.stderr.readline()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0
    deadline = time.monotonic() + 10
    while processes_marked(mark) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processes_marked(mark)


def test_trace_command_summarises(traced: Path) -> None:
    proc = wasmgroup("trace", traced)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("trace of ") and "link operations, 50 threads" in out
    assert "spawns: 49: " in out and " cold" in out
    table = out.split("\n\n")[1].splitlines()
    assert table[0].split() == ["operation", "count", "failed", "phase", "(ms)", "p50", "p95",
                                "max"]
    kinds = {line.split()[0] for line in table[1:] if not line.startswith(" ")}
    assert kinds == {"start", "dlopen", "dlsym", "spawn"}
    assert "slowest:" in out


def test_trace_command_chrome_format(traced: Path, tmp_path: Path) -> None:
    """Checked against the trace-event format's required fields: a JSON object with a
    `traceEvents` list; every event has name, ph, ts, pid, tid; complete events (X) have a
    non-negative dur; metadata events (M) name a process or thread in args.name; spans on one
    track nest (a child ends within its parent), as the viewers require."""
    out = tmp_path / "chrome.json"
    assert wasmgroup("trace", traced, "--chrome", out).returncode == 0
    document = json.loads(out.read_text())
    events = document["traceEvents"]
    assert isinstance(events, list) and events
    for event in events:
        assert isinstance(event["name"], str) and event["name"]
        assert event["ph"] in ("X", "M")
        assert isinstance(event["ts"], int | float) and event["ts"] >= 0
        assert isinstance(event["pid"], int) and isinstance(event["tid"], int)
        if event["ph"] == "X":
            assert isinstance(event["dur"], int | float) and event["dur"] >= 0
        else:
            assert event["name"] in ("process_name", "thread_name")
            assert isinstance(event["args"]["name"], str)
    named = {e["tid"] for e in events if e["name"] == "thread_name"}
    assert named >= {e["tid"] for e in events if e["ph"] == "X"}
    assert len(named) == 50
    link = [e for e in events if e.get("cat") == "link"]
    assert {e["name"].split()[0] for e in link} == {"start", "dlopen", "dlsym", "spawn"}
    for span in link:
        end = span["ts"] + span["dur"]
        phases = [e for e in events if e.get("cat") == "phase" and e["tid"] == span["tid"]
                  and span["ts"] <= e["ts"] <= end]
        for phase in phases:
            assert phase["ts"] + phase["dur"] <= end + 1  # µs rounding


def test_trace_command_plot(traced: Path, tmp_path: Path) -> None:
    out = tmp_path / "timeline.png"
    proc = wasmgroup("trace", traced, "--plot", out)
    assert proc.returncode == 0, proc.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_trace_command_refuses_what_is_not_a_trace(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"op": "trace", "at_ms": 0}\nnot json\n')
    proc = wasmgroup("trace", bad)
    assert proc.returncode == 2
    assert proc.stderr == f"wasmgroup trace: {bad}:2: not a JSON line (Expecting value)\n"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert wasmgroup("trace", empty).stderr == f"wasmgroup trace: {empty}: empty: no trace lines\n"
    missing = wasmgroup("trace", tmp_path / "missing.jsonl")
    assert missing.returncode == 2 and "No such file or directory" in missing.stderr
    usage_error(wasmgroup("trace", bad, "--chrome", tmp_path / "no" / "x.json"), "trace")
    assert usage_error(wasmgroup("trace", bad, "--plot", "-"), "trace") == (
        "wasmgroup trace: error: argument --plot: give a file name (- is not supported here)")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\n")
    assert wasmgroup("trace", binary).stderr == (f"wasmgroup trace: {binary}:1: not a JSON line "
                                                 "(not UTF-8)\n")


def complete(script: str, line: str) -> list[str]:
    """What bash completes for `line` (a trailing space: a new word) with `script` loaded."""
    program = (f'{script}\nread -ra COMP_WORDS <<<"$LINE"\n'
               '[[ "$LINE" == *" " ]] && COMP_WORDS+=("")\n'
               "COMP_CWORD=$((${#COMP_WORDS[@]} - 1))\n_wasmgroup\n"
               'printf "%s\\n" "${COMPREPLY[@]}"\n')
    proc = subprocess.run(["bash", "-c", program], capture_output=True, text=True,
                          env={"LINE": line, "PATH": "/usr/bin:/bin"}, check=True)
    return proc.stdout.split()


def test_shell_completion_comes_from_the_parser() -> None:
    bash = wasmgroup("completion", "bash")
    assert bash.returncode == 0
    script = bash.stdout
    assert complete(script, "wasmgroup run --ti") == ["--timeout"]
    assert complete(script, "wasmgroup run --max-me") == ["--max-memory"]
    assert complete(script, "wasmgroup ca") == ["cache"]
    assert complete(script, "wasmgroup cache ") == ["info", "clean"]
    assert complete(script, "wasmgroup trace x --c") == ["--chrome"]
    assert set(complete(script, "wasmgroup --ver")) == {"--version", "--verbose",
                                                         "--verify-groups"}
    zsh = wasmgroup("completion", "zsh").stdout
    assert "bashcompinit" in zsh and "complete -o filenames -F _wasmgroup wasmgroup" in zsh
    usage_error(wasmgroup("completion", "fish"), "completion")


def cache_info(env: dict[str, str]) -> dict[str, str]:
    proc = wasmgroup("cache", "info", env=env)
    assert proc.returncode == 0, proc.stderr
    return {k.strip(): v.strip() for k, v in
            (line.split(":", 1) for line in proc.stdout.splitlines())}


def test_cache_location_info_clean_and_size_limit(guests: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WASMGROUP_CACHE")
    xdg = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    probe = guests / "cli" / "probe.wasm"
    assert wasmgroup(probe, "cpus", env=xdg).returncode == 0
    info = cache_info(xdg)
    assert info["directory"] == str(tmp_path / "xdg" / "wasmgroup")
    assert info["entries"] == "1" and info["limit"] == "1024.0 MiB (WASMGROUP_CACHE_SIZE)"
    size = (tmp_path / "xdg" / "wasmgroup").glob("*.cwasm").__next__().stat().st_size
    # A limit that holds one entry: running a second program evicts the first.
    limited = {**xdg, "WASMGROUP_CACHE_SIZE": str(size + 1)}
    assert wasmgroup(guests / "libc" / "posix.wasm", env=limited).returncode == 0
    assert cache_info(limited)["entries"] == "1"
    cleaned = wasmgroup("cache", "clean", env=xdg)
    assert cleaned.returncode == 0
    assert cleaned.stdout.startswith("removed 1 entries (")
    assert cache_info(xdg)["entries"] == "0"
    bad = wasmgroup(probe, "cpus", env={**xdg, "WASMGROUP_CACHE_SIZE": "lots"})
    assert bad.returncode == 125
    assert bad.stderr == ("wasmgroup run: WASMGROUP_CACHE_SIZE='lots': expected bytes, or a "
                          "number with K, M or G\n")
    bad_info = wasmgroup("cache", "info", env={**xdg, "WASMGROUP_CACHE_SIZE": "lots"})
    assert bad_info.returncode == 2 and bad_info.stderr.startswith(
        "wasmgroup cache: WASMGROUP_CACHE_SIZE='lots'")


def test_a_running_program_survives_cache_clean(guests: Path, tmp_path: Path) -> None:
    """Another program's eviction or `cache clean` removes the files of a program still
    running: its next thread's worker must still load the compiled main module."""
    root = tmp_path / "root"
    root.mkdir()
    env = {"WASMGROUP_CACHE": str(tmp_path / "cache")}
    mark = uuid.uuid4().hex
    running = subprocess.Popen(
        [*WASMGROUP, "--pool", "0", "--dir", f"{root}::/", guests / "cli" / "probe.wasm",
         "late-thread"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **env, "WASMGROUP_TEST_MARK": mark})
    try:
        assert running.stdout is not None
        assert running.stdout.readline() == "waiting for /go\n"
        cleaned = wasmgroup("cache", "clean", env=env)
        assert cleaned.stdout.startswith("removed 1 entries")
        (root / "go").write_text("")
        out, err = running.communicate(timeout=60)
    finally:
        running.kill()
        running.wait()
    assert running.returncode == 0, err
    assert out == "thread ran\n" and err == ""
    deadline = time.monotonic() + 10
    while processes_marked(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_marked(mark) == []
