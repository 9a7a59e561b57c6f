"""The spawn-latency guest (scripts/bench-spawn) runs and reports in its format.

Correctness only: timings depend on the machine, so no figure is checked beyond its form.
"""

from __future__ import annotations

import re
from pathlib import Path

from wasmgroup.orchestrator.program import run_program

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
