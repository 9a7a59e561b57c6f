"""--verify-groups (all groups agree after every link operation) and --trace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from wasmgroup.orchestrator.program import EXIT_RUNTIME_ERROR, Program, ProgramOptions
from wasmgroup.orchestrator.verify import first_difference
from wasmgroup.orchestrator.workers import AckCount, OperationFuture, WorkerProcess
from wasmgroup.shared.plan import GroupState


def state(tid: int, table: tuple[str, ...] = ("null", "main:f"), handles: tuple[int, ...] = (1, 2),
          got: tuple[tuple[str, int], ...] = (("libx:GOT.mem.a", 16),)) -> GroupState:
    return GroupState(tid, handles, table, got)


def test_first_difference_names_what_differs() -> None:
    assert first_difference([state(1), state(2), state(3)]) is None
    assert first_difference([state(1)]) is None
    assert first_difference([state(1), state(2, handles=(1,))]) == \
        "thread 2 differs from thread 1: modules [1] vs [1, 2]"
    assert first_difference([state(1), state(2, table=("null",))]) == \
        "thread 2 differs from thread 1: table length 1 vs 2"
    assert first_difference([state(1), state(2, table=("null", "libx:g"))]) == \
        "thread 2 differs from thread 1: table slot 1 holds libx:g vs main:f"
    assert first_difference([state(1), state(2, got=(("libx:GOT.mem.a", 32),))]) == \
        "thread 2 differs from thread 1: libx:GOT.mem.a = 0x20 vs 16"


@pytest.mark.parametrize("scenario", ["dl-concurrent-open-and-spawn",
                                      "spawn-under-nanosleep-worker"])
def test_verify_groups_passes_on_real_programs(guests: Path, scenario: str) -> None:
    program = Program(str(guests / "threads" / "topology.wasm"), ProgramOptions(
        args=[scenario], dirs=[f"{guests / 'threads'}::/"], capture_output=True,
        verify_groups=True))
    result = program.run()
    assert result.exit_code == 0, result.error
    assert result.stdout.decode() == f"topology {scenario} ok\n"


def test_verify_groups_catches_a_planted_difference(guests: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Thread 2's worker is told to put the wrong function in the slot dlsym assigned: the
    checker must stop the program naming the thread, the slot and both functions."""
    original = WorkerProcess.post

    def planted(self: WorkerProcess, op: dict[str, Any] | bytes, initialise: bool = False,
                count: AckCount | None = None) -> OperationFuture:
        wire = msgpack.unpackb(op) if isinstance(op, bytes) else op  # a broadcast packs once
        if self.thread_id == 2 and wire.get("export") == "mtplug_work":
            op = {**wire, "export": "mtplug_total"}
        return original(self, op, initialise, count)

    monkeypatch.setattr(WorkerProcess, "post", planted)
    program = Program(str(guests / "threads" / "dlopen_spin.wasm"), ProgramOptions(
        dirs=[f"{guests / 'threads'}::/"], capture_output=True, verify_groups=True))
    result = program.run()
    assert result.exit_code == EXIT_RUNTIME_ERROR
    assert result.error is not None
    assert result.error.startswith("--verify-groups: after dlsym mtplug_work: thread ")
    assert "holds /libmtplug.so:mtplug_total vs /libmtplug.so:mtplug_work" in result.error \
        or "holds /libmtplug.so:mtplug_work vs /libmtplug.so:mtplug_total" in result.error


def test_trace_has_one_line_per_link_operation(guests: Path, tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    program = Program(str(guests / "threads" / "dlopen_spin.wasm"), ProgramOptions(
        dirs=[f"{guests / 'threads'}::/"], capture_output=True, trace=trace))
    assert program.run().exit_code == 0
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    ops = [r["op"] for r in records]
    assert ops[:2] == ["trace", "start"]  # the header, then the main module's link
    assert ops.count("spawn") == 3
    assert ops.count("dlopen") == 1
    assert ops.count("dlsym") == 2  # mtplug_work and mtplug_total: two new table slots
    dlopen = next(r for r in records if r["op"] == "dlopen")
    assert dlopen["ok"] and dlopen["loaded"] and dlopen["name"] == "/libmtplug.so"
    assert dlopen["groups"] == 4
    assert set(dlopen["group_apply_ms"]) == {"2", "3", "4"}
    for phase in ("plan_ms", "compile_ms", "apply_ms", "broadcast_ms", "total_ms"):
        assert dlopen[phase] >= 0
    assert dlopen["total_ms"] >= dlopen["apply_ms"]
