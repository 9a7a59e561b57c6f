"""The spawn-latency guest (scripts/bench-spawn) runs and reports in its format.

Correctness only: timings depend on the machine, so no figure is checked beyond its form.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

from leaks import assert_nothing_left, open_fds

from wasmgroup.orchestrator.program import RunResult, run_program

LINE = re.compile(r"spawn_latency: spawns=5 p50_us=(\d+) p90_us=(\d+) max_us=(\d+)")


def test_spawn_latency_reports_its_line(guests: Path) -> None:
    result = run_program(str(guests / "threads" / "spawn_latency.wasm"), ["5"])
    assert result.exit_code == 0, result.error
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 1, lines
    match = LINE.fullmatch(lines[0])
    assert match, lines[0]
    p50, p90, top = (int(v) for v in match.groups())
    assert p50 <= p90 <= top  # sorted figures, not a timing bound


def test_spawn_burst_reports_its_line(guests: Path) -> None:
    result = run_program(str(guests / "threads" / "spawn_latency.wasm"), ["4", "burst"])
    assert result.exit_code == 0, result.error
    lines = result.stdout.decode().splitlines()
    match = re.fullmatch(r"spawn_burst: threads=4 first_us=(\d+) last_us=(\d+)", lines[0])
    assert len(lines) == 1 and match, lines
    first, last = (int(v) for v in match.groups())
    assert 0 < first <= last  # every thread entered after the burst began


def test_a_kept_standby_group_whose_worker_dies_is_forgotten(guests: Path, tmp_path: Path
                                                            ) -> None:
    """The burst program's first thread exits and its group is kept as a standby group
    (trace: `kept`); its worker is killed during the program's 300 ms sleep. No thread was
    running there: the burst's spawns use other workers and the program ends normally, with
    nothing left behind."""
    trace = tmp_path / "trace.jsonl"
    fds = open_fds()
    outcome: list[RunResult] = []
    runner = threading.Thread(target=lambda: outcome.append(run_program(
        str(guests / "threads" / "spawn_latency.wasm"), ["4", "burst"], trace=trace)))
    runner.start()
    deadline = time.monotonic() + 60
    kept = None
    while kept is None and runner.is_alive() and time.monotonic() < deadline:
        if trace.exists():
            for line in trace.read_text().splitlines():
                record = json.loads(line)
                if record["op"] == "thread_exit" and record.get("kept"):
                    kept = int(record["pid"])
        time.sleep(0.005)
    assert kept is not None, "no group was kept"
    os.kill(kept, signal.SIGKILL)
    runner.join(60)
    assert outcome and outcome[0].exit_code == 0, outcome
    assert re.fullmatch(r"spawn_burst: threads=4 first_us=\d+ last_us=\d+\n",
                        outcome[0].stdout.decode())
    starts = [json.loads(line) for line in trace.read_text().splitlines()
              if json.loads(line)["op"] == "thread_start"]
    assert len(starts) == 5 and kept not in [s["pid"] for s in starts[1:]]
    assert_nothing_left(fds)



def test_the_python_api_leaves_its_callers_gil_turns_alone(guests: Path) -> None:
    """`wasmgroup run` and the workers hand the GIL over after 0.5 ms (shared/cpus.py: a
    spawn's or a memory.grow's reply waited up to Python's 5 ms behind a thread that
    computed); a library caller's process keeps its own setting."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    try:
        result = run_program(str(guests / "threads" / "spawn_latency.wasm"), ["2"])
        assert result.exit_code == 0, result.error
        assert sys.getswitchinterval() == 0.005
    finally:
        sys.setswitchinterval(previous)
